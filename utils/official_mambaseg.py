"""The released MambaSeg checkpoints ("official format") and our state dicts, both ways.

The official trainer saves ``torch.save({'epoch': e, 'state_dict': model.state_dict()})``. Our MambaSeg keeps the
official module names and parameter shapes (:mod:`models.mambaseg`, :mod:`models.vmamba`), so the keys map one to
one; the official files' keys and shapes are listed in ``tests/assets/mambaseg_state_dict_manifests.json``.
Only the order differs, inside the SSM modules: VMamba's SS2D and MambaSeg's Temporal_SSM register
``x_proj_weight, A_logs, Ds, dt_projs_weight, dt_projs_bias`` and then ``out_norm, in_proj, conv2d, out_proj``;
:func:`official_key_order` gives the official order, in which :func:`ours_to_official` writes.
Both directions are strict: every missing key, unexpected key and shape mismatch is listed, all at once.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Mapping

import torch
import torch.nn as nn

from models.mambaseg import TemporalSSM
from models.ss2d import SS2D
from utils.checkpoint import DDP_PREFIX, CheckpointError, check_keys_and_shapes

__all__ = ["is_mambaseg_checkpoint", "is_mambaseg_state_dict", "official_key_order", "official_to_ours",
           "ours_to_official", "check_config", "default_config_name"]

logger = logging.getLogger(__name__)

STATE_KEY = "state_dict"
# the official order of the entries of an SSM module (own parameters first, then its submodules)
SSM_ORDER = ("x_proj_weight", "A_logs", "Ds", "dt_projs_weight", "dt_projs_bias", "out_norm", "in_proj", "conv2d",
             "out_proj")
# semseg classes -> the config of the released model (configs/<name>.yml)
CONFIGS = {6: "mambaseg_ddd17", 11: "mambaseg_dsec"}
CLASSIFIER = "decoder.linear_pred.weight"


def _strip(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Without a ``module.`` prefix on every key (a DataParallel-wrapped save)."""
    if state_dict and all(k.startswith(DDP_PREFIX) for k in state_dict):
        return {k.removeprefix(DDP_PREFIX): v for k, v in state_dict.items()}
    return dict(state_dict)


def is_mambaseg_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether a state dict is MambaSeg's (both encoders and the DDIMs)."""
    keys = _strip(state_dict)
    return any(k.startswith("encoder_ev.") for k in keys) and any(k.startswith("ccbs.") for k in keys)


def is_mambaseg_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    """Whether ``checkpoint`` is an official MambaSeg file: ``{'epoch': e, 'state_dict': MambaSeg state dict}``."""
    sd = checkpoint.get(STATE_KEY)
    return isinstance(sd, Mapping) and is_mambaseg_state_dict(sd)


def official_key_order(model: nn.Module) -> list[str]:
    """``model.state_dict()`` keys in the official order: ours, with every SSM module's entries in ``SSM_ORDER``.

    Works on a model on the meta device.
    """
    keys = list(model.state_dict(keep_vars=True))
    for name, module in model.named_modules():
        if isinstance(module, (SS2D, TemporalSSM)):
            prefix = f"{name}."
            span = [i for i, k in enumerate(keys) if k.startswith(prefix)]          # contiguous in a state dict
            rank = {part: i for i, part in enumerate(SSM_ORDER)}
            unknown = [keys[i] for i in span if keys[i].removeprefix(prefix).split(".")[0] not in rank]
            if unknown:
                raise CheckpointError(f"no official position for {unknown} (official SSM entries: {SSM_ORDER})")
            keys[span[0]:span[-1] + 1] = sorted(keys[span[0]:span[-1] + 1],
                                               key=lambda k: rank[k.removeprefix(prefix).split(".")[0]])
    return keys


def _check(state_dict: Mapping[str, torch.Tensor], model: nn.Module, context: str) -> None:
    """Raise :class:`CheckpointError` listing every missing, unexpected and mis-shaped key."""
    check_keys_and_shapes(state_dict, model.state_dict(), context)


def official_to_ours(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """An official checkpoint (the file's dict or its ``'state_dict'``) as a state dict of ``model``, strictly, in
    ``model.state_dict()`` order; the tensors are the checkpoint's own."""
    sd = _strip(checkpoint[STATE_KEY] if is_mambaseg_checkpoint(checkpoint) else checkpoint)
    _check(sd, model, "official MambaSeg checkpoint vs this model")
    return {k: sd[k] for k in model.state_dict(keep_vars=True)}


def ours_to_official(state_dict: Mapping[str, torch.Tensor], model: nn.Module,
                     epoch: int = 0) -> dict[str, Any]:
    """A state dict of ``model`` in the official format ``{'epoch': epoch, 'state_dict': OrderedDict}``, keys in the
    official order (:func:`official_key_order`), as the official trainer saves it."""
    sd = _strip(state_dict)
    _check(sd, model, "state dict vs this model")
    return {"epoch": epoch, STATE_KEY: OrderedDict((k, sd[k]) for k in official_key_order(model))}


def default_config_name(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``mambaseg_ddd17`` or ``mambaseg_dsec``, from the number of classes of a MambaSeg state dict."""
    sd = _strip(state_dict)
    classes = int(sd[CLASSIFIER].shape[0]) if CLASSIFIER in sd else None
    if classes not in CONFIGS:
        released = ", ".join(f"{n} classes: {c}" for n, c in CONFIGS.items())
        raise CheckpointError(f"a MambaSeg state dict with {classes} classes ({CLASSIFIER}) matches no released "
                              f"model ({released}); pass --config_exp")
    return CONFIGS[classes]


def check_config(cfg: Any, checkpoint: Mapping[str, Any]) -> None:
    """An official MambaSeg checkpoint needs ``model.name: mambaseg`` and the dataset's number of classes."""
    if cfg.model.name != "mambaseg":
        raise CheckpointError(f"the checkpoint is an official MambaSeg checkpoint but the config has model.name="
                              f"{cfg.model.name!r}; use configs/mambaseg_ddd17.yml or configs/mambaseg_dsec.yml")
    sd = _strip(checkpoint[STATE_KEY])
    classes = int(sd[CLASSIFIER].shape[0]) if CLASSIFIER in sd else None
    wanted = cfg.TASKS.NUM_OUTPUT.get("semseg")
    if classes is not None and classes != wanted:
        raise CheckpointError(f"the MambaSeg checkpoint predicts {classes} classes, the config's dataset "
                              f"{cfg.train_db_name} has {wanted}; use configs/{CONFIGS.get(classes, 'mambaseg_*')}.yml")

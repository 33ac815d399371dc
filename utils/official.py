"""The released MTMamba / MTMamba++ checkpoints ("official format") and our state dicts, both ways.

The official files (``mtmamba_{nyud,pascal,cityscapes}.pth.tar``, ``mtmamba_plus_{nyud,pascal,cityscapes}.pth.tar``)
are ``{'model': state_dict}`` saved from the DDP-wrapped model of the official code, so every key starts with
``module.``. The backbone is mmseg's Swin (``module.backbone.<mmseg name>``, with the persistent
``relative_position_index`` buffers), the decoder has the official module names (PERFORMANCE.md §1.4, MODELS.md
§1.8; every key and shape of the four NYUD/PASCAL files is listed in tests/assets/official_state_dict_manifests.json,
and the two Cityscapes files (673 and 663 keys, semseg + depth) follow from the NYUD lists, CITYSCAPES.md §3).

The mapping is the official key layout of a built model, :func:`official_layout`: one ``(official key, our key)``
pair per official entry, in the official order. Backbone names go through the mmseg <-> timm Swin conversion of
:mod:`models.encoders` (PatchMerging ``4C`` permutation included); decoder and head names follow the official
module tree, walked per decoder below. Conversions are strict both ways: every missing or unmapped key and every
shape mismatch is reported, all at once. The 24 ``relative_position_index`` buffers have no counterpart among
our persistent entries (timm keeps them non-persistent): on import they must equal our index for the block's
window, on export they are recomputed from it.
"""
from __future__ import annotations

import copy
import logging
import re
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn as nn
from timm.models.swin_transformer import get_relative_position_index

from models.attention import WindowMSA
from models.blocks import CTM, STM
from models.encoders import SwinEncoder, mmseg_to_original_state_dict, timm_to_mmseg_state_dict
from models.heads import MultiTaskModel, TaskHead
from models.mtmamba import MTMambaStage
from models.mtmamba_plus import LiteHead, MTMambaPlusStage
from models.ss2d import SS2D
from utils import official_mambaseg, official_pamm
from utils.checkpoint import (DDP_PREFIX, CheckpointError, check_keys_and_shapes, ddp_state_dict, is_ddp_state_dict,
                              raise_key_mismatches)

__all__ = ["OFFICIAL_MODELS", "is_official_checkpoint", "official_model_name", "official_tasks", "official_layout",
           "official_to_ours", "ours_to_official", "config_for_checkpoint", "checkpoint_model_state"]

logger = logging.getLogger(__name__)

# model.name -> the official model class
OFFICIAL_MODELS = {"mtmamba": "MTMamba", "mtmamba_plus": "MTMamba_plus"}
INDEX_SUFFIX = "relative_position_index"
# a converted checkpoint records the window order its weights were trained with under this key
PAD_MODE_KEY = "swin_pad_mode"
# submodule order of the official SS2D / CSS2D (their own SSM parameters come first)
_SS2D_CHILDREN = ("in_proj", "in_proj_cross", "conv2d", "out_norm", "out_proj")


# --------------------------------------------------------------------------------------------------------
# Detection


def is_official_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    """Whether ``checkpoint`` is an official file: ``{'model': sd}`` with every key ``module.*`` and a backbone."""
    return is_ddp_state_dict(checkpoint) and any(k.startswith(DDP_PREFIX + "backbone.") for k in checkpoint["model"])


def _strip(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The official state dict without the ``module.`` prefix (accepts the file's dict or its ``'model'``)."""
    return ddp_state_dict(checkpoint, "an official checkpoint")


def official_model_name(checkpoint: Mapping[str, Any]) -> str:
    """``"mtmamba"`` or ``"mtmamba_plus"`` (our ``model.name``) for an official checkpoint or state dict."""
    keys = _strip(checkpoint)
    if any(k.startswith("block_ctm.") for k in keys):
        return "mtmamba_plus"
    if any(k.startswith("block_3.") for k in keys):
        return "mtmamba"
    raise CheckpointError("official checkpoint of an unknown model: neither MTMamba's block_3.* (CTM) nor "
                          "MTMamba++'s block_ctm.* (S-CTM) keys")


def official_tasks(checkpoint: Mapping[str, Any]) -> list[str]:
    """The tasks of an official checkpoint, in its order (one ``final_project.<task>`` head each)."""
    return [m.group(1) for k in _strip(checkpoint) if (m := re.fullmatch(r"final_project\.(\w+)\.weight", k))]


# --------------------------------------------------------------------------------------------------------
# Layout: (official key, our key) pairs


def _official_kind(model: nn.Module) -> str:
    """The official model ``model`` has the architecture of, or a :class:`CheckpointError`."""
    stages = list(getattr(getattr(model, "decoder", None), "stages", None) or [])
    if isinstance(model, MultiTaskModel) and isinstance(model.encoder, SwinEncoder) and stages \
            and all(isinstance(s, MTMambaStage) for s in stages):
        heads = list(model.heads.values())
        two_stms = all(len(b) == 2 and all(isinstance(m, STM) for m in b)
                       for s in stages for b in s.task_blocks.values())
        plain = not any(isinstance(m, WindowMSA) for m in model.decoder.modules())
        if two_stms and plain and all(isinstance(s, MTMambaPlusStage) for s in stages) \
                and all(isinstance(h, LiteHead) for h in heads):
            return "mtmamba_plus"
        if two_stms and plain and all(type(s) is MTMambaStage and isinstance(s.ctm, CTM) and s.ctm.fusion == "adaptive"
                                      for s in stages) and all(isinstance(h, TaskHead) for h in heads):
            return "mtmamba"
    raise CheckpointError(
        f"this {type(model).__name__} has no official checkpoint format: only model.name mtmamba or mtmamba_plus with "
        "the paper's architecture (stm_blocks 2, block mamba, ctm true, ctm_fusion adaptive, mfe ss2d, gate linear)")


def _shared_prefixes(model: nn.Module) -> tuple[list[str], range, list[tuple[str, str]]]:
    """Tasks, stages and the (official, our) prefixes of ECR/expand and concat layers, as both decoders have them."""
    tasks, stages = model.decoder.tasks, range(len(model.decoder.stages))
    pairs = [(f"expand_layers.{t}_{s}", f"decoder.expand.{s}.{t}") for t in tasks for s in stages]
    pairs += [(f"concat_layers.{t}_{s}", f"decoder.fuse.{s}.{t}") for t in tasks for s in stages]
    return tasks, stages, pairs


def _mtmamba_prefixes(model: nn.Module) -> list[tuple[str, str]]:
    """MTMamba (official ``MTMamba.py``): block_1 / block_2 are the STMs, block_3 the CTM of each stage."""
    tasks, stages, pairs = _shared_prefixes(model)
    for b in (0, 1):
        pairs += [(f"block_{b + 1}.{t}_{s}", f"decoder.stages.{s}.task_blocks.{t}.{b}") for t in tasks for s in stages]
    pairs += [(f"final_project.{t}", f"heads.{t}.project") for t in tasks]
    pairs += [(f"final_expand.{t}", f"heads.{t}.expand") for t in tasks]
    for s in stages:
        official, ours = f"block_3.{s}", f"decoder.stages.{s}.ctm"
        for off_name, our_name in (("norm", "norm"), ("op", "mfe"), ("in_proj", "gate"), ("out_proj", "out_proj")):
            pairs += [(f"{official}.{off_name}.{t}", f"{ours}.{our_name}.{t}") for t in tasks]
        pairs += [(f"{official}.norm_share", f"{ours}.norm_shared"), (f"{official}.op_share", f"{ours}.mfe_shared")]
    return pairs


def _mtmamba_plus_prefixes(model: nn.Module) -> list[tuple[str, str]]:
    """MTMamba++ (official ``MTMamba_plus.py``): block_stm holds both STMs, block_ctm.<s>.0 the S-CTM."""
    tasks, stages, pairs = _shared_prefixes(model)
    pairs += [(f"block_stm.{t}_{s}", f"decoder.stages.{s}.task_blocks.{t}") for t in tasks for s in stages]
    pairs += [(f"final_project.{t}", f"heads.{t}.project") for t in tasks]
    pairs += [(f"final_expand.{t}", f"heads.{t}.conv") for t in tasks]
    for s in stages:
        official, ours = f"block_ctm.{s}.0", f"decoder.stages.{s}.sctm"
        pairs += [(f"{official}.norm_share", f"{ours}.norm_shared"),
                  (f"{official}.conv_share.0", f"{ours}.reduce_shared"),
                  (f"{official}.conv_share.1", f"{ours}.conv_shared")]
        pairs += [(f"{official}.norm.{t}", f"{ours}.norm.{t}") for t in tasks]
        pairs += [(f"{official}.op.{t}", f"{ours}.css2d.{t}") for t in tasks]
    return pairs


_DECODER_PREFIXES: dict[str, Callable[[nn.Module], list[tuple[str, str]]]] = {
    "mtmamba": _mtmamba_prefixes, "mtmamba_plus": _mtmamba_plus_prefixes}


def _module_entries(module: nn.Module, official: str, ours: str,
                    keys: list[str] | None = None) -> Iterator[tuple[str, str]]:
    """Every state-dict entry of ``module`` (``keys``: its state-dict keys) under both prefixes, in the official order.

    Our submodules carry the official names below the prefixes; only the SS2D / CSS2D submodules are registered
    in another order than the official ones (``_SS2D_CHILDREN``).
    """
    keys = list(module.state_dict(keep_vars=True)) if keys is None else keys
    for name in keys:
        if "." not in name:                                       # own parameters and buffers come first
            yield f"{official}.{name}", f"{ours}.{name}"
    children = dict(module.named_children())
    names = sorted(children, key=_SS2D_CHILDREN.index) if isinstance(module, SS2D) else list(children)
    for name in names:
        sub = [k.removeprefix(f"{name}.") for k in keys if k.startswith(f"{name}.")]
        yield from _module_entries(children[name], f"{official}.{name}", f"{ours}.{name}", sub)


def _backbone_entries(encoder: SwinEncoder) -> Iterator[tuple[str, str]]:
    """mmseg Swin keys of our encoder, in mmseg's order, with a ``relative_position_index`` after each table."""
    for name, value in encoder.state_dict(keep_vars=True).items():
        if name.startswith("swin."):   # the mmseg name of a timm key (a meta tensor carries the shape for the rules)
            mmseg = next(iter(timm_to_mmseg_state_dict(
                {name.removeprefix("swin."): torch.empty(value.shape, device="meta")})))
        else:                          # the output norms norm0..norm3 have mmseg's names already
            mmseg = name
        yield f"backbone.{mmseg}", f"encoder.{name}"
        if name.endswith("relative_position_bias_table"):
            yield (f"backbone.{mmseg.removesuffix('relative_position_bias_table')}{INDEX_SUFFIX}",
                   f"encoder.{name.removesuffix('relative_position_bias_table')}{INDEX_SUFFIX}")


def official_layout(model: nn.Module) -> list[tuple[str, str]]:
    """``(official key without "module.", our key)`` for every entry of the official state dict, in its order.

    For the ``relative_position_index`` buffers our key names our (non-persistent) buffer; every other our key is
    an entry of ``model.state_dict()``, each exactly once. Works on a model on the meta device.
    """
    pairs = list(_backbone_entries(model.encoder))
    for official, ours in _DECODER_PREFIXES[_official_kind(model)](model):
        pairs += _module_entries(model.get_submodule(ours), official, ours)
    return pairs


def _index_for(model: nn.Module, our_key: str) -> torch.Tensor:
    """The relative-position index of the attention that owns ``our_key``, for its window (as mmseg computes it)."""
    attn = model.get_submodule(our_key.removesuffix("." + INDEX_SUFFIX))
    return get_relative_position_index(*attn.window_size)


def _single(convert: Callable[[dict], dict], key: str, value: torch.Tensor) -> torch.Tensor:
    """The value of ``key`` after a Swin state-dict conversion (renames; permutes PatchMerging tensors)."""
    return next(iter(convert({key: value}).values()))


# --------------------------------------------------------------------------------------------------------
# Conversion


def official_to_ours(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """An official checkpoint (the file's dict or its ``'model'``) as a state dict of ``model``, strictly.

    Checks that the checkpoint is of ``model``'s kind, that its keys are exactly the official layout of
    ``model`` with the same shapes (one error lists every missing key, unmapped key and shape mismatch), and that
    its ``relative_position_index`` buffers equal ours. Returns ``{our key: tensor}`` in ``model.state_dict()``
    order, the PatchMerging tensors permuted to timm's order; the other tensors are the checkpoint's own.
    """
    sd = _strip(checkpoint)
    kind, ours_kind = official_model_name(checkpoint), _official_kind(model)
    if kind != ours_kind:
        raise CheckpointError(f"the checkpoint is an official {OFFICIAL_MODELS[kind]} checkpoint but the model is "
                              f"model.name={ours_kind!r}; use model.name={kind!r} (e.g. configs/{kind}_nyud.yml)")
    own = dict(model.state_dict()) | dict(model.named_buffers())
    layout = official_layout(model)
    missing = [DDP_PREFIX + off for off, _ in layout if off not in sd]
    mapped = {off for off, _ in layout}
    unexpected = [DDP_PREFIX + k for k in sd if k not in mapped]
    problems = [f"{DDP_PREFIX}{off} {tuple(sd[off].shape)} -> {ours} {tuple(own[ours].shape)}"
                for off, ours in layout if off in sd and sd[off].shape != own[ours].shape]
    problems += [f"{DDP_PREFIX}{off} differs from the relative-position index of window "
                 f"{tuple(model.get_submodule(ours.removesuffix('.' + INDEX_SUFFIX)).window_size)}"
                 for off, ours in layout if off.endswith(INDEX_SUFFIX) and off in sd
                 and sd[off].shape == own[ours].shape and not torch.equal(sd[off].cpu(), _index_for(model, ours))]
    raise_key_mismatches(f"official {OFFICIAL_MODELS[kind]} checkpoint vs this model", missing, unexpected, problems,
                         "unmapped")

    converted = {}
    for off, ours in layout:
        if off.endswith(INDEX_SUFFIX):
            continue
        value = sd[off]
        if off.startswith("backbone."):
            value = _single(mmseg_to_original_state_dict, off.removeprefix("backbone."), value)
        converted[ours] = value
    return {k: converted[k] for k in model.state_dict()}


def ours_to_official(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """A state dict of ``model`` in the official format ``{'model': {"module.<key>": tensor}}``, in the official
    order, as the official code saves and loads it (``strict=True``). ``state_dict`` must hold exactly
    ``model``'s keys and shapes; the ``relative_position_index`` buffers are recomputed for each block's window."""
    given = {k.removeprefix(DDP_PREFIX): v for k, v in state_dict.items()}
    check_keys_and_shapes(given, model.state_dict(), "state dict vs this model", "unmapped")

    out = {}
    for off, ours in official_layout(model):
        if off.endswith(INDEX_SUFFIX):
            value = _index_for(model, ours)
        elif ours.startswith("encoder.swin."):
            value = _single(timm_to_mmseg_state_dict, ours.removeprefix("encoder.swin."), given[ours])
        else:
            value = given[ours]
        out[DDP_PREFIX + off] = value
    return {"model": out}


# --------------------------------------------------------------------------------------------------------
# Evaluation of a checkpoint file (main.py --run_mode infer)


def config_for_checkpoint(cfg: Any, checkpoint: Mapping[str, Any]) -> Any:
    """The config to build the model that ``checkpoint`` is loaded into (a copy when anything changes).

    * Every weight comes from the checkpoint, so no ImageNet weights are loaded (``model.pretrained`` false).
    * An official MambaSeg checkpoint must be of ``model.name: mambaseg`` and the dataset's classes.
    * An official checkpoint must be of ``model.name``'s model and tasks; it and checkpoints converted from one
      (which record ``swin_pad_mode``) need the window order they were trained with: ``model.swin_pad_mode`` is
      switched to ``mmseg`` (pad, then shift), with a log line.
    * An official PAMM checkpoint gets the released model's switches (:mod:`utils.official_pamm`), with a log line.
    """
    if official_pamm.is_pamm_checkpoint(checkpoint):
        return official_pamm.config_for_checkpoint(cfg, checkpoint)
    if official_mambaseg.is_mambaseg_checkpoint(checkpoint):
        official_mambaseg.check_config(cfg, checkpoint)
    official = is_official_checkpoint(checkpoint)
    pad_mode = "mmseg" if official else checkpoint.get(PAD_MODE_KEY)
    if official:
        kind, tasks = official_model_name(checkpoint), official_tasks(checkpoint)
        if kind != cfg.model.name:
            raise CheckpointError(f"the checkpoint is an official {OFFICIAL_MODELS[kind]} checkpoint but the config "
                                  f"has model.name={cfg.model.name!r}; use a config with model.name={kind!r}, e.g. "
                                  f"configs/{kind}_nyud.yml, configs/{kind}_pascal.yml or "
                                  f"configs/{kind}_cityscapes.yml")
        if set(tasks) != set(cfg.TASKS.NAMES):
            raise CheckpointError(f"the official checkpoint was trained for tasks {tasks}, the config selects "
                                  f"{list(cfg.TASKS.NAMES)} (train_db_name={cfg.train_db_name})")
    if not cfg.model.pretrained and cfg.model.pretrained_path is None and pad_mode in (None, cfg.model.swin_pad_mode):
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.model.pretrained, cfg.model.pretrained_path = False, None
    if pad_mode is not None and pad_mode != cfg.model.swin_pad_mode:
        logger.info("%s checkpoint: switching model.swin_pad_mode from %r to %r (the window order its Swin weights "
                    "were trained with)", "official" if official else "converted", cfg.model.swin_pad_mode, pad_mode)
        cfg.model.swin_pad_mode = pad_mode
    return cfg


def checkpoint_model_state(checkpoint: Mapping[str, Any], model: nn.Module) -> Mapping[str, torch.Tensor]:
    """The model state dict held by ``checkpoint``: converted from the official format, else its ``'model'``."""
    if official_pamm.is_pamm_checkpoint(checkpoint):
        return official_pamm.checkpoint_model_state(checkpoint, model)
    if official_mambaseg.is_mambaseg_checkpoint(checkpoint):
        logger.info("official MambaSeg checkpoint (epoch %s): official names, loaded as they are",
                    checkpoint.get("epoch"))
        return official_mambaseg.official_to_ours(checkpoint, model)
    if is_official_checkpoint(checkpoint):
        logger.info("official %s checkpoint: converted to this model's keys (mmseg Swin -> timm, official decoder "
                    "names -> ours)", OFFICIAL_MODELS[official_model_name(checkpoint)])
        return official_to_ours(checkpoint, model)
    return checkpoint.get("model", checkpoint)

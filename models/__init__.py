"""Models: ``build_model(cfg)`` builds the variant named by ``cfg.model.name``."""
from __future__ import annotations

import torch.nn as nn

from . import bim  # noqa: F401  (registers "bim")
from . import mambaseg  # noqa: F401  (registers "mambaseg")
from . import mtmamba  # noqa: F401  (registers "mtmamba")
from . import mtmamba_plus  # noqa: F401  (registers "mtmamba_plus")
from . import pame  # noqa: F401  (registers "pame_vit", "pame_swin")
from .execution import enable_grad_checkpointing, set_exec_mode
from .registry import MODEL_REGISTRY, batch_inputs, model_inputs, register_model

__all__ = ["MODEL_REGISTRY", "build_model", "register_model", "model_inputs", "batch_inputs"]


def build_model(cfg) -> nn.Module:
    """Build the multi-task model described by a loaded config, set to its execution mode (``model.exec``) and
    gradient checkpointing (``model.grad_ckpt``), its predictions at the label size (``LABEL_SCALE``, null: the
    input size). ``model.compile`` is applied by the caller, on the device."""
    name = cfg.model.name
    if name not in MODEL_REGISTRY:
        raise KeyError(f"model.name={name!r} is not a registered model; valid: {sorted(MODEL_REGISTRY)}")
    model = MODEL_REGISTRY[name](cfg)
    if cfg.get("LABEL_SCALE"):
        model.output_size = tuple(int(v) for v in cfg.LABEL_SCALE)
    model = set_exec_mode(model, cfg.model.exec)
    return enable_grad_checkpointing(model, cfg.model.grad_ckpt) if cfg.model.grad_ckpt else model

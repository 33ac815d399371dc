"""Models: ``build_model(cfg)`` builds the variant named by ``cfg.model.name``."""
from __future__ import annotations

import torch.nn as nn

from . import mtmamba  # noqa: F401  (registers "mtmamba")
from .registry import MODEL_REGISTRY, register_model

__all__ = ["MODEL_REGISTRY", "build_model", "register_model"]


def build_model(cfg) -> nn.Module:
    """Build the multi-task model described by a loaded config."""
    name = cfg.model.name
    if name not in MODEL_REGISTRY:
        raise KeyError(f"model.name={name!r} is not a registered model; valid: {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[name](cfg)

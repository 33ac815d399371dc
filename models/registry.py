"""The registry of decoder variants: ``model.name`` in the config -> builder."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

__all__ = ["MODEL_REGISTRY", "register_model"]

MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    """Register ``fn(cfg) -> nn.Module`` under ``name``."""
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODEL_REGISTRY:
            raise KeyError(f"model {name!r} is registered twice")
        MODEL_REGISTRY[name] = fn
        return fn
    return wrap

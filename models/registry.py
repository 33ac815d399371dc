"""The registry of decoder variants: ``model.name`` in the config -> builder, and the input sizes each accepts."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

__all__ = ["MODEL_REGISTRY", "MODEL_INPUT_MULTIPLE", "register_model"]

MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
# model.name -> every input side (TRAIN.SCALE, TEST.SCALE) must be a multiple of this
MODEL_INPUT_MULTIPLE: dict[str, int] = {}


def register_model(name: str, input_multiple: int = 1) -> Callable:
    """Register ``fn(cfg) -> nn.Module`` under ``name``; the model takes inputs whose sides are multiples of
    ``input_multiple`` (e.g. 32 for a Swin encoder feeding a decoder that mirrors its four stages)."""
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODEL_REGISTRY:
            raise KeyError(f"model {name!r} is registered twice")
        MODEL_REGISTRY[name] = fn
        MODEL_INPUT_MULTIPLE[name] = input_multiple
        return fn
    return wrap

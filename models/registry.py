"""The registry of decoder variants: ``model.name`` in the config -> builder, the input sizes each accepts, and the
batch keys each model's ``forward`` takes (:func:`model_inputs`)."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from utils.checkpoint import unwrap_model

__all__ = ["MODEL_REGISTRY", "MODEL_INPUT_MULTIPLE", "DEFAULT_INPUTS", "register_model", "model_inputs",
           "batch_inputs"]

MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
# model.name -> every input side (TRAIN.SCALE, TEST.SCALE) must be a multiple of this
MODEL_INPUT_MULTIPLE: dict[str, int] = {}
# the batch keys forward() takes when a model does not declare ``inputs`` (every image-only model)
DEFAULT_INPUTS: tuple[str, ...] = ("image",)


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


def model_inputs(model: nn.Module) -> tuple[str, ...]:
    """The batch keys ``model.forward`` takes, in order: the model's ``inputs`` attribute (e.g. MambaSeg's
    ``("image", "events")``), else :data:`DEFAULT_INPUTS`; DDP wrappers are looked through."""
    return tuple(getattr(unwrap_model(model), "inputs", DEFAULT_INPUTS))


def batch_inputs(model: nn.Module, batch: Mapping[str, Any], device: torch.device) -> list[torch.Tensor]:
    """The positional arguments of ``model`` taken from a collated batch, on ``device``, so that every model is
    called as ``model(*batch_inputs(model, batch, device))``. A key the batch lacks is an error naming both."""
    keys = model_inputs(model)
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"{type(unwrap_model(model)).__name__} takes the inputs {list(keys)}, but the batch has no "
                       f"{missing} (batch keys: {sorted(batch)}); the dataset must supply them")
    return [batch[k].to(device, non_blocking=True) for k in keys]

"""Parameter and FLOP counting under the MTMamba paper's convention (MODELS.md, FLOP section).

FLOPs = fvcore ``FlopCountAnalysis`` with its default op handles (multiply-adds; LayerNorm 5 per
element; bilinear upsampling 4 per output element) plus VMamba's selective-scan handle
``9·B·L·D·N + B·D·L`` for the opaque scan op, at batch 1, reported in units of 1e9 and truncated
(not rounded) to two decimals. This reproduces the paper's FLOPs column digit for digit.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Sequence

import torch
import torch.nn as nn

from models.execution import exec_mode
from models.ops.selective_scan import SCAN_FUNCTION_NAMES, shapes_only

__all__ = ["count_params", "count_flops", "truncate", "scan_flops"]


def count_params(model: nn.Module) -> int:
    """Number of registered parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def truncate(value: float, digits: int = 2) -> float:
    """Truncate toward zero to ``digits`` decimals, as the paper prints #Param and FLOPs."""
    scale = 10 ** digits
    return math.floor(value * scale) / scale


def scan_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for the selective scan: u is (B, D, L), A is (D, N); 9·B·L·D·N + B·D·L (D-skip)."""
    from fvcore.nn.jit_handles import get_shape

    b, d, length = get_shape(inputs[0])
    n = get_shape(inputs[2])[1]
    return 9 * b * length * d * n + b * d * length


def _fvcore_total(module: nn.Module, inputs: tuple, compute_scans: bool) -> int:
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    for name in SCAN_FUNCTION_NAMES:
        analysis.set_op_handle(f"prim::PythonOp.{name}", scan_flops)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad(), warnings.catch_warnings(), (contextlib.nullcontext() if compute_scans else shapes_only()):
        warnings.simplefilter("ignore", torch.jit.TracerWarning)   # shape checks seen by the tracer
        return int(analysis.total())


class _Decode(nn.Module):
    """The model after its encoder, as a module fvcore can trace: features -> predictions."""

    def __init__(self, model: nn.Module, size: Sequence[int]) -> None:
        super().__init__()
        self.model, self.size = model, tuple(size)

    def forward(self, *features: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.decode(list(features), self.size)


_encoder_cache: dict[tuple, tuple[int, list[torch.Size]]] = {}


def _encoder_flops(encoder: nn.Module, input_size: tuple[int, int], compute_scans: bool) -> tuple[int, list]:
    """FLOPs and output shapes of the encoder, memoised per architecture and input size."""
    key = (tuple((n, tuple(p.shape)) for n, p in encoder.named_parameters()),
           tuple(type(m).__name__ for m in encoder.modules()), input_size)
    if key not in _encoder_cache:
        shapes = []
        hook = encoder.register_forward_hook(lambda m, i, out: shapes.__setitem__(slice(None), [f.shape for f in out]))
        try:
            flops = _fvcore_total(encoder, (torch.zeros(1, 3, *input_size),), compute_scans)
        finally:
            hook.remove()
        _encoder_cache[key] = (flops, shapes)
    return _encoder_cache[key]


def count_flops(model: nn.Module, input_size: Sequence[int], compute_scans: bool = False) -> int:
    """Total FLOPs (multiply-adds) of one forward pass on a (1, 3, H, W) input, in eval mode, on the CPU.

    The encoder and the rest are traced separately (their counts add up to the whole model's, since fvcore
    counts op by op), and the encoder's count is memoised per architecture and size: the rows of an ablation
    table share it. The scan op is counted by its handle from its input shapes, so by default it runs
    shape-only while fvcore traces (:func:`shapes_only`); ``compute_scans=True`` runs the real op and gives
    the same count. The model is traced in its reference execution (the official code's operations); the fast
    execution computes the same function. A model with several inputs (``example_inputs``, e.g. MambaSeg's frame and
    events) is traced whole, on its own example inputs of ``input_size``. Predictions are resized to the model's
    ``output_size`` when it has one (Cityscapes: to 1024×2048), and that upsampling is counted.
    """
    model = model.eval()
    size = tuple(input_size)
    if hasattr(model, "example_inputs"):
        if size != tuple(model.img_size):
            raise ValueError(f"{type(model).__name__} is built for {tuple(model.img_size)} inputs; FLOPs at {size} "
                             f"need a model built for that size (TRAIN.SCALE)")
        with exec_mode(model, "reference"):
            return _fvcore_total(model, model.example_inputs(), compute_scans)
    encoder_flops, shapes = _encoder_flops(model.encoder, size, compute_scans)
    features = tuple(torch.zeros(s) for s in shapes)
    with exec_mode(model, "reference"):
        out_size = getattr(model, "output_size", None) or size
        return encoder_flops + _fvcore_total(_Decode(model, out_size), features, compute_scans)

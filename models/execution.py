"""How a built model executes, without changing what it computes or its parameters (PERFORMANCE.md).

* ``exec_mode``: ``"reference"`` runs the decoder the way the official code does (a loop over tasks, the four scan
  directions built from transpose/flip/cat copies); ``"fast"`` runs the same function with the task-specific blocks of
  a stage batched into one computation and one gather per scan direction set (:mod:`models.task_batched`). Both give
  the same outputs and gradients (tests/test_execution.py) and the same state-dict keys.
* gradient checkpointing per decoder stage: the stage's activations are recomputed in the backward pass.
* ``torch.compile`` of the decoder stages (the glue around the scans; the scan itself stays an opaque op), with
  ``mode="reduce-overhead"`` for CUDA graphs of the fixed-shape stages.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn as nn

__all__ = ["EXEC_MODES", "COMPILE_MODES", "set_exec_mode", "exec_mode", "enable_grad_checkpointing",
           "compile_decoder"]

EXEC_MODES = ("reference", "fast")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune")


def _exec_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "exec_mode")]


def set_exec_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch every module of ``model`` that has an execution mode to ``mode``; returns ``model``."""
    if mode not in EXEC_MODES:
        raise ValueError(f"model.exec={mode!r} is not valid; valid: {list(EXEC_MODES)}")
    for m in _exec_modules(model):
        m.exec_mode = mode
    return model


@contextlib.contextmanager
def exec_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Run a block of code with ``model`` in ``mode``, restoring each module's previous mode afterwards."""
    modules = _exec_modules(model)
    before = [m.exec_mode for m in modules]
    set_exec_mode(model, mode)
    try:
        yield model
    finally:
        for m, b in zip(modules, before):
            m.exec_mode = b


def enable_grad_checkpointing(model: nn.Module, enable: bool = True) -> nn.Module:
    """Recompute each decoder stage in the backward pass (``model.grad_ckpt``); returns ``model``."""
    decoders = [m for m in model.modules() if hasattr(m, "grad_ckpt")]
    if enable and not decoders:
        raise ValueError(f"model.grad_ckpt=true: {type(model).__name__} has no decoder that supports gradient "
                         "checkpointing (a module with a grad_ckpt attribute)")
    for m in decoders:
        m.grad_ckpt = enable
    return model


def compile_decoder(model: nn.Module, mode: str | None) -> nn.Module:
    """``torch.compile`` every decoder stage in place (state-dict keys unchanged); ``None`` leaves the model as is."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"model.compile={mode!r} is not valid; valid: {list(COMPILE_MODES)}")
    if mode is not None:
        import torch._dynamo
        # the grouped-block functions are shared by all stages and run with T and T+1 groups: one graph per
        # (stage, group count, grad mode), more than dynamo's default of 8 per function
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        stages = getattr(model.decoder, "stages", None) or [model.decoder]
        for stage in stages:
            stage.compile(mode=mode, dynamic=False)
    return model

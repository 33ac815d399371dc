"""Optimizers and learning-rate schedules of the recipes, and the check of their config keys.

The official recipes train every parameter in one group (weight decay on everything) with AdamW or Adam and a
poly schedule stepped once per iteration (MambaSeg: a constant learning rate). ``optimizer_kwargs`` are passed to the
optimizer; :func:`check_optimizer_kwargs` rejects a key the optimizer does not take or a value of the wrong type before
anything is built.
"""
from __future__ import annotations

import inspect
import numbers
from typing import Any, Mapping

import torch
import torch.nn as nn

__all__ = ["OPTIMIZERS", "SCHEDULERS", "check_optimizer_kwargs", "build_optimizer", "build_scheduler",
           "optimizer_arguments", "optimizer_kwargs"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
SCHEDULERS = ("poly", "constant")


def optimizer_arguments(name: str) -> dict[str, Any]:
    """The keyword arguments of optimizer ``name`` with their defaults (``params`` excluded)."""
    signature = inspect.signature(OPTIMIZERS[name].__init__)
    return {k: p.default for k, p in signature.parameters.items() if k not in ("self", "params")}


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_optimizer_kwargs(name: str, kwargs: Mapping[str, Any]) -> str | None:
    """None when ``kwargs`` suit optimizer ``name``, else a message naming the first bad key and what is allowed.

    Keys must be arguments of the optimizer; ``lr`` and ``eps`` positive numbers, ``weight_decay`` a number >= 0,
    ``betas`` two numbers in [0, 1); an argument whose default is a bool or a number takes a bool or a number.
    """
    valid = optimizer_arguments(name)
    for key, value in kwargs.items():
        where = f"optimizer_kwargs.{key}={value!r}"
        if key not in valid:
            return f"{where}: {OPTIMIZERS[name].__name__} has no argument {key!r}; valid: {sorted(valid)}"
        if key in ("lr", "eps"):
            if not _is_number(value) or value <= 0:
                return f"{where} must be a positive number"
        elif key == "weight_decay":
            if not _is_number(value) or value < 0:
                return f"{where} must be a number >= 0"
        elif key == "betas":
            if not (isinstance(value, (list, tuple)) and len(value) == 2
                    and all(_is_number(b) and 0 <= b < 1 for b in value)):
                return f"{where} must be two numbers in [0, 1), e.g. [0.9, 0.999]"
        elif isinstance(valid[key], bool):
            if not isinstance(value, bool):
                return f"{where} must be true or false"
        elif _is_number(valid[key]) and not _is_number(value):
            return f"{where} must be a number"
    return None


def optimizer_kwargs(cfg: Any) -> dict[str, Any]:
    """``cfg.optimizer_kwargs`` as the optimizer takes them (``betas`` a tuple)."""
    kwargs = dict(cfg.optimizer_kwargs)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return kwargs


def build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over all parameters in one group, as the official recipes do (weight decay on everything)."""
    return OPTIMIZERS[cfg.optimizer](model.parameters(), **optimizer_kwargs(cfg))


def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """``cfg.scheduler``, stepped once per iteration: ``poly``: lr · (1 − it / max_iter)^power; ``constant``: lr
    (MambaSeg's ``fixed`` schedule, MAMBASEG.md §6). A LambdaLR either way, so checkpoints hold the same state."""
    if cfg.scheduler == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    if cfg.scheduler != "poly":
        raise ValueError(f"scheduler={cfg.scheduler!r} is not valid; valid: {list(SCHEDULERS)}")
    max_iter, power = int(cfg.max_iter), float(cfg.scheduler_kwargs.power)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: max(0.0, 1 - it / max_iter) ** power)

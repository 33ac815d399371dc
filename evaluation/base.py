"""Meter interface shared by every dense-prediction metric (EVALUATION.md §1).

A meter accumulates *sufficient statistics* (confusion counts, error sums, histograms) pooled over the whole split;
it never averages per image. ``state()`` exposes those statistics as a dict of tensors so that a distributed run can
all-reduce them (sum) and hand the result to ``merge()`` on one rank; ``compute()`` turns them into metrics.
"""
from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch

__all__ = ["Meter", "as_tensor"]


def as_tensor(x: Any) -> torch.Tensor:
    """Accept a torch tensor or a numpy array (no copy for tensors) and detach it."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.as_tensor(np.asarray(x))


class Meter(abc.ABC):
    """Pooled metric accumulator: ``reset`` → ``update``* → (``state`` / ``merge``) → ``compute``."""

    def __init__(self) -> None:
        self.reset()

    @abc.abstractmethod
    def reset(self) -> None:
        """Zero all statistics."""

    @abc.abstractmethod
    def update(self, pred: Any, gt: Any) -> None:
        """Add one batch. Shapes and value conventions are given by each subclass."""

    @abc.abstractmethod
    def state(self) -> dict[str, torch.Tensor]:
        """The sufficient statistics (CPU tensors, summable element-wise across ranks)."""

    @abc.abstractmethod
    def compute(self) -> dict[str, float]:
        """Metrics from the pooled statistics."""

    def merge(self, state: dict[str, torch.Tensor]) -> None:
        """Add another meter's ``state()`` (e.g. the all-reduced statistics of other ranks) to this one."""
        own = self.state()
        if set(own) != set(state):
            raise ValueError(f"{type(self).__name__}.merge: state keys {sorted(state)} != {sorted(own)}")
        for key, value in state.items():
            value = as_tensor(value).to(own[key].device, own[key].dtype)
            if value.shape != own[key].shape:
                raise ValueError(f"{type(self).__name__}.merge: {key!r} has shape {tuple(value.shape)}, "
                                 f"expected {tuple(own[key].shape)}")
            own[key] += value

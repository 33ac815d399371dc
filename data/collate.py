"""Batch collation with the ``collate_mil`` rules of DATA.md §4.3.

Tensors and arrays are stacked; dicts are collated key by key (keys containing ``idx`` are dropped);
strings stay lists; ints become a LongTensor; tuples and lists are kept **per sample**, so
``meta['img_size']`` is a list of B LongTensors ``[H, W]`` and ``meta['img_name']`` a list of B strings.
"""
from __future__ import annotations

import collections.abc
import numbers
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["collate_mil"]


def _per_sample(seq: Any) -> Any:
    """One sample's tuple/list: numeric → tensor, anything else kept as a list."""
    if all(isinstance(v, numbers.Number) for v in seq):
        return torch.as_tensor(list(seq))
    return list(seq)


def collate_mil(batch: Sequence[Any]) -> Any:
    """Collate a list of samples (see the module docstring for the rules)."""
    elem = batch[0]
    if isinstance(elem, torch.Tensor):
        return torch.stack(list(batch), 0)
    if isinstance(elem, np.ndarray):
        return torch.stack([torch.from_numpy(np.ascontiguousarray(b)) for b in batch], 0)
    if isinstance(elem, bool):
        return torch.tensor(batch, dtype=torch.bool)
    if isinstance(elem, int):
        return torch.tensor(batch, dtype=torch.long)
    if isinstance(elem, float):
        return torch.tensor(batch, dtype=torch.float64)
    if isinstance(elem, str):
        return list(batch)
    if isinstance(elem, collections.abc.Mapping):
        return {key: collate_mil([d[key] for d in batch]) for key in elem if "idx" not in key}
    if isinstance(elem, collections.abc.Sequence):
        return [_per_sample(b) for b in batch]
    raise TypeError(f"collate_mil: cannot collate elements of type {type(elem).__name__}")

"""Joint multi-task serialisations: T task maps of H×W tokens read as one sequence of T·H·W tokens.

BIM's BI-Scan (Cao et al., ICCV 2025; MODELS.md §2.1 and §2.3) models all tasks in one sequence, in two modes:

- ``task_first``: every task map is serialised by a spatial pattern U_1 (a scan order of
  :mod:`models.ops.scan_orders`, raster by default) and the T sub-sequences are concatenated in task order,
  ``[t1: p1..pL, t2: p1..pL, ...]`` (S_1 = O_1(U_1(F_1, ..., F_T)), length T·H·W);
- ``position_first``: the same positions, but the tokens of all tasks at one position are adjacent,
  ``[p1: t1..tT, p2: t1..tT, ...]``;

and the reversed (flipped) sequence of each, ``task_first_rev`` / ``position_first_rev``, for the backward scan.

Layout. The "stacked" layout of T task maps is the (T·L,) axis with token index ``t·L + p``, p the raster
position of the H×W map (L = H·W); a channels-first tensor (B, K, D, T·L) holds one stacked copy per k. An order
is a permutation ``perm`` of that axis: ``seq[i] = stacked[perm[i]]``; its inverse ``inv`` maps back,
``stacked[j] = seq[inv[j]]``. With the raster pattern, task-first and position-first are the raster and the
column-major reading of the T×L grid of tokens. Index maps are cached per (name, T, H, W, pattern, device).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence

import torch

from .scan_orders import scan_order

__all__ = ["TASK_ORDERS", "task_order", "task_scan", "task_rescan", "task_merge"]


def _task_first(n_tasks: int, spatial: torch.Tensor) -> torch.Tensor:
    # i = t·L + j  ->  stacked token (t, spatial[j])
    length = spatial.numel()
    return (torch.arange(n_tasks).view(-1, 1) * length + spatial.view(1, -1)).reshape(-1)


def _position_first(n_tasks: int, spatial: torch.Tensor) -> torch.Tensor:
    # i = j·T + t  ->  stacked token (t, spatial[j])
    length = spatial.numel()
    return (spatial.view(-1, 1) + torch.arange(n_tasks).view(1, -1) * length).reshape(-1)


TASK_ORDERS: dict[str, Callable[[int, torch.Tensor], torch.Tensor]] = {
    "task_first": _task_first,
    "position_first": _position_first,
    "task_first_rev": lambda n, s: _task_first(n, s).flip(0),
    "position_first_rev": lambda n, s: _position_first(n, s).flip(0),
}


@lru_cache(maxsize=None)
def _order_cpu(name: str, n_tasks: int, h: int, w: int, pattern: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name not in TASK_ORDERS:
        raise KeyError(f"unknown task order {name!r}; valid orders: {list(TASK_ORDERS)}")
    if n_tasks < 1:
        raise ValueError(f"a joint task sequence needs at least one task, got n_tasks={n_tasks}")
    perm = TASK_ORDERS[name](n_tasks, scan_order(pattern, h, w)[0])
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return perm, inv


@lru_cache(maxsize=None)
def _stacked(names: tuple[str, ...], n_tasks: int, h: int, w: int, pattern: str,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    perms, invs = zip(*(_order_cpu(n, n_tasks, h, w, pattern) for n in names))
    return torch.stack(perms).to(device), torch.stack(invs).to(device)


@lru_cache(maxsize=None)
def _rescan_index(src: tuple[str, ...], dst: tuple[str, ...], n_tasks: int, h: int, w: int, pattern: str,
                  device: torch.device) -> torch.Tensor:
    # seq_dst[i] = stacked[perm_dst[i]] = seq_src[inv_src[perm_dst[i]]]
    _, inv_src = _stacked(src, n_tasks, h, w, pattern, device)
    perm_dst, _ = _stacked(dst, n_tasks, h, w, pattern, device)
    return torch.gather(inv_src, 1, perm_dst)


def task_order(name: str, n_tasks: int, h: int, w: int, device: torch.device | str = "cpu",
               pattern: str = "raster") -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(perm, inv)`` of one joint order, each a (T·H·W,) int64 tensor on ``device``."""
    perm, inv = _stacked((name,), n_tasks, h, w, pattern, torch.device(device))
    return perm[0], inv[0]


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    b, k, d, length = x.shape
    if index.shape != (k, length):
        raise ValueError(f"a (B, K, D, T·L) tensor of shape {tuple(x.shape)} does not match {index.shape[0]} "
                         f"order(s) over {index.shape[1]} tokens")
    return torch.gather(x, 3, index.view(1, k, 1, length).expand(b, k, d, length))


def task_scan(x: torch.Tensor, orders: Sequence[str], n_tasks: int, hw: tuple[int, int],
              pattern: str = "raster") -> torch.Tensor:
    """Serialise stacked maps, copy k in ``orders[k]``: (B, K, D, T·L) -> (B, K, D, T·L)."""
    perm, _ = _stacked(tuple(orders), n_tasks, *hw, pattern, x.device)
    return _gather(x, perm)


def task_rescan(y: torch.Tensor, src: Sequence[str], dst: Sequence[str], n_tasks: int, hw: tuple[int, int],
                pattern: str = "raster") -> torch.Tensor:
    """Re-serialise sequences read in ``src[k]`` into ``dst[k]`` with one gather: (B, K, D, T·L) -> same."""
    return _gather(y, _rescan_index(tuple(src), tuple(dst), n_tasks, *hw, pattern, y.device))


def task_merge(y: torch.Tensor, orders: Sequence[str], n_tasks: int, hw: tuple[int, int],
               pattern: str = "raster") -> torch.Tensor:
    """Map sequences read in ``orders[k]`` back to the stacked layout: (B, K, D, T·L) -> (B, K, D, T·L)."""
    _, inv = _stacked(tuple(orders), n_tasks, *hw, pattern, y.device)
    return _gather(y, inv)

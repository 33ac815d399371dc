"""Event representation: the 10-bin voxel grid that MambaSeg, EISNet and ESS feed their event encoders.

MAMBASEG.md §5. For a window of events (x, y, t, p), in the order they were recorded:

    t̂_k = (B − 1) · (t_k − t_first) / (t_last − t_first)      (the denominator is 1 when it would be 0)
    i_k = ⌊t̂_k⌋,  δ_k = t̂_k − i_k,  s_k = +1 if p_k = 1 else −1
    V[i_k,   y_k, x_k] += s_k · (1 − δ_k)
    V[i_k+1, y_k, x_k] += s_k · δ_k                              (only when i_k + 1 < B)

with x_k, y_k truncated toward zero to integers (the official ``astype(int32)``; DSEC's rectified coordinates are
floats, so −0.5 lands in column 0) and events outside the H×W grid or with t̂ outside [0, B) dropped. No
normalisation. Timestamps are normalised in float64, exactly as the reference does; the grid is float32.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

__all__ = ["NUM_BINS", "voxel_grid"]

NUM_BINS = 10  # MambaSeg: 10 time bins on DDD17 and DSEC

ArrayLike = Union[np.ndarray, torch.Tensor]


def _tensor(a: ArrayLike) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    a = np.asarray(a)
    if a.dtype in (np.uint16, np.uint32, np.uint64):  # torch has no arithmetic on these
        a = a.astype(np.int64)
    return torch.from_numpy(a)


def voxel_grid(x: ArrayLike, y: ArrayLike, t: ArrayLike, p: ArrayLike, height: int, width: int,
               num_bins: int = NUM_BINS) -> torch.Tensor:
    """The voxel grid of one event window (module docstring), without a Python loop over the events.

    Args:
        x, y: pixel coordinates (N,), integer or float (floats are truncated toward zero).
        t: timestamps (N,) in recording order, integer (ns, µs) or float.
        p: polarities (N,); 1 counts +1, anything else −1 (the data holds 0/1).
        height, width: grid size H, W.
        num_bins: B.

    Returns:
        float32 (B, H, W). Its memory is channels-last (a permuted view of an H×W×B buffer), so both bins of an
        event are adjacent in memory and ``grid.permute(1, 2, 0)`` is the contiguous H×W×B array the sample
        transforms take. An empty window gives a zero grid.
    """
    x, y, t, p = (_tensor(a) for a in (x, y, t, p))
    n = t.numel()
    if not (x.numel() == y.numel() == p.numel() == n):
        raise ValueError(f"voxel_grid: x, y, t, p must have the same length, got {x.numel()}, {y.numel()}, "
                         f"{n}, {p.numel()}")
    cells = height * width * num_bins
    grid = torch.zeros(cells + 1, dtype=torch.float32)  # the last cell collects dropped contributions
    if n:
        xi, yi = x.to(torch.int64), y.to(torch.int64)  # truncation toward zero
        span = t[-1] - t[0]
        span = float(span) if span != 0 else 1.0
        tn = (num_bins - 1) * (t - t[0]).to(torch.float64) / span  # t̂ in [0, B−1] for time-ordered events
        bins = tn.to(torch.int64)                                  # ⌊t̂⌋ (t̂ ≥ 0 where it matters)
        frac = tn - bins                                           # δ
        valid = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height) & (tn >= 0) & (tn < num_bins)
        left = torch.where(valid, (yi * width + xi) * num_bins + bins, cells)      # H×W×B memory order
        right = torch.where(valid & (bins + 1 < num_bins), left + 1, cells)
        sign = torch.where(p == 1, 1.0, -1.0).to(torch.float64)
        weights = torch.cat([sign * (1.0 - frac), sign * frac]).to(torch.float32)
        grid.scatter_add_(0, torch.cat([left, right]), weights)
    return grid[:cells].view(height, width, num_bins).permute(2, 0, 1)

"""The event voxel grid (MAMBASEG.md §5) against a float64 per-event loop written here."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data.events import voxel_grid


def loop_voxel_grid(x, y, t, p, height, width, num_bins):
    """Reference: one event at a time, float64, the rules of MAMBASEG.md §5 spelled out."""
    grid = np.zeros((num_bins, height, width), dtype=np.float64)
    if len(t) == 0:
        return grid
    exact = int if np.issubdtype(np.asarray(t).dtype, np.integer) else float  # ns since the epoch need ints
    t0 = exact(t[0])
    span = float(exact(t[-1]) - t0) or 1.0
    for xk, yk, tk, pk in zip(x, y, t, p):
        col, row = math.trunc(float(xk)), math.trunc(float(yk))   # toward zero: -0.7 -> 0
        tn = (num_bins - 1) * float(exact(tk) - t0) / span
        if not (0 <= col < width and 0 <= row < height and 0 <= tn < num_bins):
            continue
        b = math.trunc(tn)
        frac = tn - b
        s = 1.0 if pk == 1 else -1.0
        grid[b, row, col] += s * (1.0 - frac)
        if b + 1 < num_bins:
            grid[b + 1, row, col] += s * frac
    return grid


@pytest.mark.parametrize("kind", ["rectified_float_us", "integer_ns"])
def test_voxel_grid_equals_loop(kind):
    rng = np.random.default_rng(7)
    h, w, bins, n = 6, 9, 10, 400
    if kind == "rectified_float_us":   # DSEC: float coordinates (some negative or past the edge), uint32 µs
        x = rng.uniform(-1.5, w + 0.5, n).astype(np.float32)
        y = rng.uniform(-1.5, h + 0.5, n).astype(np.float32)
        t = np.sort(rng.integers(0, 50_000, n)).astype(np.uint32)
    else:                              # DDD17: int16 pixels, int64 ns since the epoch, repeated timestamps
        x = rng.integers(0, w, n).astype(np.int16)
        y = rng.integers(0, h, n).astype(np.int16)
        t = 1_487_000_000_000_000_000 + np.sort(rng.integers(0, 50_000_000, n // 4)).repeat(4).astype(np.int64)
    p = rng.integers(0, 2, n).astype(np.uint8)
    out = voxel_grid(x, y, t, p, h, w, num_bins=bins)
    ref = loop_voxel_grid(x, y, t, p, h, w, bins)
    assert out.shape == (bins, h, w) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=2e-5)
    assert out.permute(1, 2, 0).is_contiguous()   # channels-last memory: the H×W×B array of the transforms


def test_voxel_grid_rules_on_hand_built_events():
    t = np.array([0, 0, 45, 90, 90])          # B = 10: t̂ = 0, 0, 4.5, 9, 9
    x = np.array([-0.7, 3.99, 1.0, 2.0, 4.0], dtype=np.float32)
    y = np.array([0.0, 1.0, 2.0, 2.0, 1.0], dtype=np.float32)
    p = np.array([1, 0, 1, 0, 1])
    g = voxel_grid(x, y, t, p, height=3, width=4, num_bins=10).numpy()
    assert g[0, 0, 0] == 1.0                   # x = -0.7 truncates to column 0, polarity 1 -> +1
    assert g[4, 2, 1] == 0.5 and g[5, 2, 1] == 0.5   # bilinear in time
    assert g[9, 2, 2] == -1.0                  # the last event: all its weight in the last bin; p = 0 -> -1
    assert np.count_nonzero(g) == 5            # x = 3.99 -> column 3 (kept); x = 4.0 -> column 4, dropped
    assert g[0, 1, 3] == -1.0


def test_voxel_grid_degenerate_windows():
    empty = voxel_grid(np.zeros(0), np.zeros(0), np.zeros(0, np.int64), np.zeros(0), 2, 3, num_bins=10)
    assert empty.shape == (10, 2, 3) and not empty.any()
    same_t = voxel_grid(np.array([0, 1]), np.array([0, 0]), np.array([5, 5]), np.array([1, 1]), 2, 3, num_bins=10)
    assert same_t[0, 0, :2].tolist() == [1.0, 1.0] and same_t.abs().sum() == 2   # span 0 -> every event in bin 0
    with pytest.raises(ValueError, match="same length"):
        voxel_grid(np.zeros(2), np.zeros(3), np.zeros(2), np.zeros(2), 2, 3)

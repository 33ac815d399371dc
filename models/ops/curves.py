"""Space-filling-curve scan orders: PAMM's Multi-Directional Hilbert Scanning (MDHS) and its Z / S variants.

PAMM (Yu et al., "Parameter Aware Mamba Model for Multi-task Dense Prediction") reads every task map along four
rotations of a Hilbert curve (MODELS.md §3.2, "MDHS"). For an H×W map:

1. p = ceil(log2(max(H, W))) (at least 1), M = 2^p;
2. the Hilbert index d(i, j) of every cell of the M×M square (Skilling's transpose algorithm, 2-D, p bits) gives
   the value grid Q[r, c] = d(c, r);
3. rotation k = 0..3 is Q_k = rot90(Q, k) (counter-clockwise) on the whole square;
4. the top-left H×W window of Q_k, flattened row-major, is sorted: ``perm_k = argsort(values)`` visits the map
   along the (cropped) curve.

The Z order (Morton: bit interleaving) and the S order (boustrophedon: rows read alternately left-to-right and
right-to-left) are the alternatives of the released code (``Scan: z | s``, its ``get_z_order_4`` /
``get_s_order_4``). They follow the same recipe with their own value grid, on a square of side M = max(H, W)
(MODELS.md §3.6 item 4): only the Hilbert curve needs the power of two. The orders are registered in
``models.ops.scan_orders.SCAN_ORDERS`` as ``<curve>_rot<k>`` and get the cached permutation / inverse machinery of
that module.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch

__all__ = ["CURVES", "CURVE_ORDERS", "curve_orders", "hilbert_index", "morton_index", "boustrophedon_index"]

CURVES = ("hilbert", "z", "s")
ROTATIONS = 4


def _bits(side: int) -> int:
    """p: the smallest power of two 2^p ≥ ``side``, at least 2 (MODELS.md §3.2 step 1)."""
    return max(1, math.ceil(math.log2(side)))


def hilbert_index(x: torch.Tensor, y: torch.Tensor, bits: int) -> torch.Tensor:
    """Hilbert index of the points (x, y) on a 2^bits square (Skilling, "Programming the Hilbert curve", 2004).

    ``AxestoTranspose`` turns the coordinates into the curve's "transposed" index, whose bits are then interleaved
    with x's bit first at every level. Element-wise over integer tensors of any shape.
    """
    x, y = x.clone().long(), y.clone().long()
    # inverse undo: walk the bit levels from the top, reflecting / exchanging the lower bits
    q = 1 << (bits - 1)
    while q > 1:
        p = q - 1
        # axis 0 (x): either invert x's low bits, or "exchange" x with itself (a no-op)
        x = torch.where((x & q) != 0, x ^ p, x)
        # axis 1 (y): invert x's low bits, or exchange the low bits of x and y
        y_set = (y & q) != 0
        t = (x ^ y) & p
        x, y = torch.where(y_set, x ^ p, x ^ t), torch.where(y_set, y, y ^ t)
        q >>= 1
    # Gray encode
    y = y ^ x
    t = torch.zeros_like(x)
    q = 1 << (bits - 1)
    while q > 1:
        t = torch.where((y & q) != 0, t ^ (q - 1), t)
        q >>= 1
    x, y = x ^ t, y ^ t
    # interleave the transposed bits, x's bit before y's at every level
    d = torch.zeros_like(x)
    for b in range(bits - 1, -1, -1):
        d = (d << 2) | (((x >> b) & 1) << 1) | ((y >> b) & 1)
    return d


def morton_index(x: torch.Tensor, y: torch.Tensor, bits: int) -> torch.Tensor:
    """Z-order (Morton) index: the bits of x and y interleaved, x's bit before y's at every level."""
    d = torch.zeros_like(x, dtype=torch.long)
    for b in range(bits - 1, -1, -1):
        d = (d << 2) | (((x >> b) & 1) << 1) | ((y >> b) & 1)
    return d


def boustrophedon_index(x: torch.Tensor, y: torch.Tensor, side: int) -> torch.Tensor:
    """S-order index on a ``side``×``side`` square: line x is read along y, forwards on even x, backwards on odd x."""
    return x * side + torch.where(x % 2 == 0, y, side - 1 - y)


# curve -> (side of its square for an H×W map, value grid Q[r, c] of that square from the row / column index grids).
# Hilbert: the power-of-two square, Q[r, c] = d(c, r) as in the released code (MODELS.md §3.2 step 2). Z and S: the
# max(H, W) square of get_z_order_4 / get_s_order_4, Q[r, c] = index(r, c), so that rotation 0 starts along row 0.
_SQUARES: dict[str, tuple[Callable[[int], int], Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]]] = {
    "hilbert": (lambda m: 1 << _bits(m), lambda r, c, side: hilbert_index(c, r, _bits(side))),
    "z": (lambda m: m, lambda r, c, side: morton_index(r, c, _bits(side))),
    "s": (lambda m: m, boustrophedon_index),
}


def _curve_perm(curve: str, rotation: int, h: int, w: int) -> torch.Tensor:
    """Scan order ``perm`` (H·W,) of ``curve`` in ``rotation`` for an H×W map (module docstring, steps 1-4)."""
    square, value_grid = _SQUARES[curve]
    side = square(max(h, w))
    r, c = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    values = value_grid(r, c, side)                                     # Q[r, c]
    window = torch.rot90(values, rotation, dims=(0, 1))[:h, :w]         # rotate the square, crop top-left
    return torch.argsort(window.reshape(-1))


# name -> fn(h, w) -> perm, the interface of scan_orders.SCAN_ORDERS
CURVE_ORDERS: dict[str, Callable[[int, int], torch.Tensor]] = {
    f"{curve}_rot{k}": partial(_curve_perm, curve, k) for curve in CURVES for k in range(ROTATIONS)}


def curve_orders(curve: str) -> tuple[str, ...]:
    """The four scan-order names of ``curve`` ("hilbert", "z" or "s"), rotations 0..3."""
    if curve not in CURVES:
        raise ValueError(f"unknown curve {curve!r}; valid: {list(CURVES)}")
    return tuple(f"{curve}_rot{k}" for k in range(ROTATIONS))

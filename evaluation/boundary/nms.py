"""SEISM's per-image prediction preprocessing: orientation from a smoothed copy, then non-maximum suppression of
the raw map (``read_one_cont_png`` → ``edgesNmsMex``; EVALUATION.md §7.2 steps 1–4, §10.2).

Everything runs in float32 like the MATLAB original. The NMS kernel is our numba port of the §7.2 rule.
"""
from __future__ import annotations

import numba
import numpy as np
from scipy import ndimage

__all__ = ["conv_tri", "orientation", "nms_kernel", "edge_nms", "NMS_RADIUS", "NMS_BORDER", "NMS_MULT"]

CONV_TRI_RADIUS = 4      # §7.2 step 1
NMS_RADIUS = 1           # §7.2 step 4: r
NMS_BORDER = 5           # s
NMS_MULT = 1.01          # m
ORIENTATION_EPS = 1e-5   # step 3: added to Oxx everywhere


def conv_tri(img: np.ndarray, r: int = CONV_TRI_RADIUS) -> np.ndarray:
    """Separable triangle filter [1, 2, …, r+1, …, 2, 1] / (r+1)² with symmetric padding (mirror including the
    edge pixel, ``numpy.pad(mode="symmetric")`` = scipy's ``reflect``). Returns float32."""
    k = np.concatenate([np.arange(1, r + 2), np.arange(r, 0, -1)]).astype(np.float64) / (r + 1) ** 2
    out = ndimage.convolve1d(np.asarray(img, dtype=np.float32), k, axis=0, mode="reflect")
    return ndimage.convolve1d(out, k, axis=1, mode="reflect")


def orientation(edges: np.ndarray) -> np.ndarray:
    """O = mod(atan(Oyy·sign(−Oxy) / (Oxx + 1e-5)), π) of convTri(E, 4) (§7.2 steps 1–3); float32 in [0, π)."""
    s = conv_tri(edges)
    oy, ox = np.gradient(s)             # gradient2: central inside, one-sided at the borders; (d/dy, d/dx)
    oxx = np.gradient(ox, axis=1)       # d/dx of Ox
    oyy, oxy = np.gradient(oy)          # d/dy and d/dx of Oy
    o = np.arctan(oyy * np.sign(-oxy) / (oxx + np.float32(ORIENTATION_EPS)))
    return np.mod(o, np.float32(np.pi)).astype(np.float32)


@numba.njit(cache=True, nogil=True)
def _interp(img: np.ndarray, h: int, w: int, x: np.float32, y: np.float32) -> np.float32:
    # bilinear sample with coordinates clamped to [0, w−1.001] × [0, h−1.001]
    x = max(np.float32(0.0), min(x, np.float32(w - 1.001)))
    y = max(np.float32(0.0), min(y, np.float32(h - 1.001)))
    x0, y0 = int(x), int(y)
    dx0, dy0 = np.float32(x - x0), np.float32(y - y0)
    dx1, dy1 = np.float32(1.0) - dx0, np.float32(1.0) - dy0
    return np.float32(img[y0, x0] * dx1 * dy1 + img[y0, x0 + 1] * dx0 * dy1
                      + img[y0 + 1, x0] * dx1 * dy0 + img[y0 + 1, x0 + 1] * dx0 * dy0)


@numba.njit(cache=True, nogil=True)
def nms_kernel(edges: np.ndarray, orient: np.ndarray, r: int, s: int, m: float) -> np.ndarray:
    """edgesNmsMex (§7.2 step 4) on float32 H×W arrays; x is the column, y the row.

    A pixel e > 0 is zeroed if e·m is below E sampled at (x ± d·cos O, y ± d·sin O), d = 1..r. Then columns at
    distance k < s from the left/right border are multiplied by k/s, then rows likewise (corners twice).
    """
    h, w = edges.shape
    out = np.zeros((h, w), np.float32)
    mm = np.float32(m)
    for y in range(h):
        for x in range(w):
            e = edges[y, x]
            out[y, x] = e
            if e == 0:
                continue
            e = e * mm
            co = np.float32(np.cos(orient[y, x]))
            so = np.float32(np.sin(orient[y, x]))
            for d in range(-r, r + 1):
                if d == 0:
                    continue
                e0 = _interp(edges, h, w, np.float32(x + d * co), np.float32(y + d * so))
                if e < e0:
                    out[y, x] = 0
                    break
    s = min(s, w // 2, h // 2)
    for x in range(s):
        f = np.float32(x) / np.float32(s)
        for y in range(h):
            out[y, x] *= f
            out[y, w - 1 - x] *= f
    for y in range(s):
        f = np.float32(y) / np.float32(s)
        for x in range(w):
            out[y, x] *= f
            out[h - 1 - y, x] *= f
    return out


def edge_nms(edges: np.ndarray) -> np.ndarray:
    """Full §7.2 steps 1–4 on a float32 map E in [0, 1]: orientation from convTri(E, 4), NMS of the raw E."""
    edges = np.ascontiguousarray(edges, dtype=np.float32)
    return nms_kernel(edges, orientation(edges), NMS_RADIUS, NMS_BORDER, NMS_MULT)

"""Boundary maps from label maps: Laplacian ≠ 0, then morphological thinning (DATA.md §3.5).

The thinning is the two-subiteration parallel algorithm of Guo & Hall ("A2"; Lam, Lee & Suen 1992,
conditions G1, G2, G3 / G3'), the same definition ``skimage.morphology.thin`` implements. It is written
here so that scikit-image is not a dependency.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["label_edges", "thin"]

# Neighbour x_k (k = 1..8, counter-clockwise from East) is bit k-1 of the neighbourhood code.
# (row offset, col offset) of x1..x8: E, NE, N, NW, W, SW, S, SE.
_NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def _build_luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion look-up tables for the two subiterations, indexed by the 8-bit neighbourhood code."""
    first = np.zeros(256, dtype=bool)
    second = np.zeros(256, dtype=bool)
    for code in range(256):
        x = [(code >> k) & 1 for k in range(8)]          # x[0] = x1 ... x[7] = x8
        xi = lambda k: x[(k - 1) % 8]                     # 1-based, cyclic (x9 = x1)
        # G1: crossing number X_H(p) == 1
        xh = sum(1 for i in range(1, 5) if not xi(2 * i - 1) and (xi(2 * i) or xi(2 * i + 1)))
        # G2: 2 <= min(n1, n2) <= 3
        n1 = sum(xi(2 * k - 1) or xi(2 * k) for k in range(1, 5))
        n2 = sum(xi(2 * k) or xi(2 * k + 1) for k in range(1, 5))
        g12 = xh == 1 and 2 <= min(n1, n2) <= 3
        # G3: (x2 ∨ x3 ∨ ¬x8) ∧ x1 == 0 ; G3': (x6 ∨ x7 ∨ ¬x4) ∧ x5 == 0
        g3 = ((xi(2) or xi(3) or not xi(8)) and xi(1)) == 0
        g3p = ((xi(6) or xi(7) or not xi(4)) and xi(5)) == 0
        first[code] = g12 and g3
        second[code] = g12 and g3p
    return first, second


_LUT_FIRST, _LUT_SECOND = _build_luts()


def _codes(img: np.ndarray) -> np.ndarray:
    """8-bit neighbourhood code of every pixel of a 0/1 uint8 image (outside the image counts as 0)."""
    padded = np.pad(img, 1)
    h, w = img.shape
    code = np.zeros((h, w), dtype=np.uint8)
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        code |= padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] << bit
    return code


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin a binary mask to 1-pixel-wide curves; returns a bool array of the same shape."""
    skel = (np.asarray(mask) != 0).astype(np.uint8)
    while True:
        before = int(skel.sum())
        for lut in (_LUT_FIRST, _LUT_SECOND):
            skel[lut[_codes(skel)] & (skel == 1)] = 0
        if int(skel.sum()) == before:
            return skel.astype(bool)


def label_edges(label_map: np.ndarray) -> np.ndarray:
    """Edges of a class-id map: thin(Laplacian(label) ≠ 0), as float32 {0, 1} H×W×1 (DATA.md §3.5)."""
    lap = cv2.Laplacian(np.ascontiguousarray(label_map), cv2.CV_64F)
    return thin(lap != 0).astype(np.float32)[..., None]

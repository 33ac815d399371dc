"""Pixel correspondence between a thinned prediction and the GT boundary map (EVALUATION.md §7.3, §10.4).

Both back-ends take (pred_bool, gt_bool, max_dist) with ``max_dist`` a fraction of the image diagonal, and return
(cntR, cntP): matched GT pixels and matched predicted pixels.

- ``hk`` (fast, deterministic): maximum bipartite matching by Hopcroft–Karp (numba, dead-end marking) on the graph
  of pairs whose integer offset lies inside the disc du² + dv² ≤ d_max². The matching is one-to-one, so
  cntR = cntP = k. CSA can only lose matches to its random sparse outlier graph, so k_HK ≥ k_CSA (§10.4).
- ``csa`` (exact): BSDS ``correspondPixels`` through the optional ``pyEdgeEval`` package, imported lazily and never
  vendored (its matcher is GPL-2.0). Not deterministic (time-seeded outlier graph, §7.3).
"""
from __future__ import annotations

import math
from typing import Callable

import numba
import numpy as np

__all__ = ["Matcher", "MATCHERS", "get_matcher", "match_hk", "match_csa", "disc_offsets", "max_dist_pixels"]

Matcher = Callable[[np.ndarray, np.ndarray, float], "tuple[int, int]"]


def max_dist_pixels(max_dist: float, shape: tuple[int, int]) -> float:
    """d_max in pixels: the fraction ``max_dist`` of the diagonal of the *original* image (§7.3, §12)."""
    return max_dist * math.hypot(shape[0], shape[1])


def disc_offsets(d_max: float) -> np.ndarray:
    """All integer (dy, dx) with dy² + dx² ≤ d_max², in raster order; shape (K, 2) int64."""
    r = int(math.ceil(d_max))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    keep = (dy ** 2 + dx ** 2).ravel() <= d_max * d_max
    return np.stack([dy.ravel()[keep], dx.ravel()[keep]], axis=1).astype(np.int64)


@numba.njit(cache=True, nogil=True)
def _build_graph(left: np.ndarray, right: np.ndarray, offsets: np.ndarray):
    # CSR adjacency from every left pixel (raster order) to the right pixels (ids in raster order) within the
    # disc; offsets come in raster order so that the id map is read row by row
    h, w = right.shape
    right_id = np.full((h, w), -1, np.int32)
    n_right = 0
    n_left = 0
    for y in range(h):
        for x in range(w):
            if right[y, x]:
                right_id[y, x] = n_right
                n_right += 1
            if left[y, x]:
                n_left += 1
    ys = np.empty(n_left, np.int64)
    xs = np.empty(n_left, np.int64)
    i = 0
    for y in range(h):
        for x in range(w):
            if left[y, x]:
                ys[i] = y
                xs[i] = x
                i += 1
    start = np.zeros(n_left + 1, np.int64)
    for i in range(n_left):  # pass 1: degrees
        deg = 0
        for o in range(offsets.shape[0]):
            yy, xx = ys[i] + offsets[o, 0], xs[i] + offsets[o, 1]
            if 0 <= yy < h and 0 <= xx < w and right_id[yy, xx] >= 0:
                deg += 1
        start[i + 1] = start[i] + deg
    adj = np.empty(start[n_left], np.int64)
    for i in range(n_left):  # pass 2: neighbours
        j = start[i]
        for o in range(offsets.shape[0]):
            yy, xx = ys[i] + offsets[o, 0], xs[i] + offsets[o, 1]
            if 0 <= yy < h and 0 <= xx < w and right_id[yy, xx] >= 0:
                adj[j] = right_id[yy, xx]
                j += 1
    return start, adj, n_right


@numba.njit(cache=True, nogil=True)
def _hopcroft_karp(start: np.ndarray, adj: np.ndarray, n_right: int) -> int:
    n_left = start.shape[0] - 1
    inf = np.iinfo(np.int64).max
    match_l = np.full(n_left, -1, np.int64)
    match_r = np.full(n_right, -1, np.int64)
    size = 0
    for u in range(n_left):  # greedy start: first free partner
        for j in range(start[u], start[u + 1]):
            if match_r[adj[j]] < 0:
                match_l[u] = adj[j]
                match_r[adj[j]] = u
                size += 1
                break
    dist = np.empty(n_left, np.int64)
    queue = np.empty(n_left, np.int64)
    it = np.empty(n_left, np.int64)
    stack = np.empty(n_left, np.int64)
    while True:
        # BFS layers from the free left vertices over alternating paths
        head = tail = 0
        for u in range(n_left):
            if match_l[u] < 0:
                dist[u] = 0
                queue[tail] = u
                tail += 1
            else:
                dist[u] = inf
        found = False
        while head < tail:
            u = queue[head]
            head += 1
            for j in range(start[u], start[u + 1]):
                w = match_r[adj[j]]
                if w < 0:
                    found = True
                elif dist[w] == inf:
                    dist[w] = dist[u] + 1
                    queue[tail] = w
                    tail += 1
        if not found:
            return size
        # iterative DFS along the layers; a vertex that fails is marked dead (dist = inf)
        for u in range(n_left):
            it[u] = start[u]
        for root in range(n_left):
            if match_l[root] >= 0:
                continue
            top = 0
            stack[0] = root
            while top >= 0:
                u = stack[top]
                pushed = False
                augmented = False
                while it[u] < start[u + 1]:
                    w = match_r[adj[it[u]]]
                    if w < 0:
                        augmented = True
                        break
                    if dist[w] != inf and dist[w] == dist[u] + 1:
                        top += 1
                        stack[top] = w
                        pushed = True
                        break
                    it[u] += 1
                if augmented:
                    for i in range(top, -1, -1):  # flip the path root → … → u → free right vertex
                        a = stack[i]
                        v = adj[it[a]]
                        match_l[a] = v
                        match_r[v] = a
                    size += 1
                    break
                if not pushed:
                    dist[u] = inf
                    top -= 1
                    if top >= 0:
                        it[stack[top]] += 1


def match_hk(pred: np.ndarray, gt: np.ndarray, max_dist: float) -> tuple[int, int]:
    """Maximum one-to-one matching within d_max (deterministic); returns (cntR, cntP) = (k, k)."""
    if pred.shape != gt.shape:
        raise ValueError(f"match_hk: prediction {pred.shape} and GT {gt.shape} differ in size")
    n_pred, n_gt = np.count_nonzero(pred), np.count_nonzero(gt)
    if n_pred == 0 or n_gt == 0:
        return 0, 0
    # the matching is symmetric: put the sparser map on the left, so the graph is built from fewer pixels
    left, right = (pred, gt) if n_pred <= n_gt else (gt, pred)
    start, adj, n_right = _build_graph(np.ascontiguousarray(left, dtype=np.bool_),
                                       np.ascontiguousarray(right, dtype=np.bool_),
                                       disc_offsets(max_dist_pixels(max_dist, gt.shape)))
    k = int(_hopcroft_karp(start, adj, n_right))
    return k, k


def _correspond_pixels() -> Callable:
    try:
        from pyEdgeEval import correspond_pixels
    except ImportError as err:
        raise ImportError("the 'csa' matcher needs the optional package pyEdgeEval (GPL-2.0 C++ inside, not "
                          "vendored here): `pip install pyEdgeEval` (needs a C++ compiler, Cython and numpy); "
                          "or use --matcher hk") from err
    return correspond_pixels


def match_csa(pred: np.ndarray, gt: np.ndarray, max_dist: float) -> tuple[int, int]:
    """BSDS correspondPixels (CSA, outlier cost 100) via pyEdgeEval; returns (cntR, cntP)."""
    correspond_pixels = _correspond_pixels()
    if pred.shape != gt.shape:
        raise ValueError(f"match_csa: prediction {pred.shape} and GT {gt.shape} differ in size")
    if not pred.any() or not gt.any():
        return 0, 0
    match1, match2, _, _ = correspond_pixels(np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool),
                                             max_dist=max_dist, outlier_cost=100)
    return int((match2 > 0).sum()), int((match1 > 0).sum())


MATCHERS: dict[str, Matcher] = {"hk": match_hk, "csa": match_csa}


def get_matcher(name: str) -> Matcher:
    """The matcher called ``name``; for ``csa`` this also checks now that pyEdgeEval can be imported."""
    if name not in MATCHERS:
        raise ValueError(f"matcher {name!r} is not supported; valid: {sorted(MATCHERS)}")
    if name == "csa":
        _correspond_pixels()
    return MATCHERS[name]

"""SEISM per-image counting and aggregation into odsF / oisF / AP (EVALUATION.md §7.2 step 5 – §7.5, §10.5).

Counts per (image, threshold) are ``[cntR, sumR, cntP, sumP]`` (§7.3): matched GT pixels, GT pixels, matched
predicted pixels, predicted pixels after thinning.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from evaluation.boundary.match import Matcher, match_hk
from evaluation.boundary.nms import edge_nms
from evaluation.boundary.thin import thin

__all__ = ["HED_THRESHOLDS", "PROXY_THRESHOLDS", "MAX_DIST", "eval_image", "image_prf", "aggregate",
           "BoundaryScores"]

# seism/parameters/HED.txt: 0.001, 0.01, 0.02, …, 0.99, 0.999 (101 values), §7.2 step 5
HED_THRESHOLDS: np.ndarray = np.concatenate([[0.001], np.arange(1, 100) / 100.0, [0.999]])
# validation proxy grid 0.05 … 0.95 (19 values), §10 "Modes"
PROXY_THRESHOLDS: np.ndarray = np.arange(1, 20) / 20.0
# maxDist as a fraction of the original image diagonal, §0 / §7.3
MAX_DIST: dict[str, float] = {"nyud": 0.011, "pascal": 0.0075}


def eval_image(pred_u8: np.ndarray, gt: np.ndarray, max_dist: float, thresholds: np.ndarray = HED_THRESHOLDS,
               matcher: Matcher = match_hk, timings: dict[str, float] | None = None) -> np.ndarray:
    """Counts of one image for every threshold (§7.2 – §7.3).

    Args:
        pred_u8: uint8 H×W prediction as saved by InvPT/MTMamba (floor(255·sigmoid), original size).
        gt: bool H×W boundary GT from :func:`evaluation.boundary.gt.build_gt`.
        max_dist: fraction of the diagonal (``MAX_DIST``).
        thresholds: HED_THRESHOLDS for reported numbers, PROXY_THRESHOLDS for validation.
        matcher: ``match_hk`` or ``match_csa``.
        timings: if given, seconds spent in ``nms``, ``thin`` and ``match`` are added to it.
    Returns:
        (T, 4) int64 array of [cntR, sumR, cntP, sumP].
    """
    if pred_u8.dtype != np.uint8 or pred_u8.ndim != 2:
        raise ValueError(f"eval_image: expected a 2-D uint8 prediction, got {pred_u8.dtype} {pred_u8.shape}")
    if pred_u8.shape != gt.shape:
        raise ValueError(f"eval_image: prediction {pred_u8.shape} and GT {gt.shape} differ; predictions must be "
                         "centre-cropped back to the original image size (§1)")
    t0 = time.perf_counter()
    edges = pred_u8.astype(np.float32) / np.float32(255.0)  # im2single
    nms = edge_nms(edges)
    t1 = time.perf_counter()
    sum_r = int(gt.sum())
    counts = np.zeros((len(thresholds), 4), dtype=np.int64)
    t_thin = t_match = 0.0
    for i, t in enumerate(thresholds):
        # strict '>' (§7.2 step 5); MATLAB compares a single map with a double threshold in single precision
        a = time.perf_counter()
        b = thin(nms > np.float32(t))
        c = time.perf_counter()
        cnt_r, cnt_p = matcher(b, gt, max_dist)
        t_thin += c - a
        t_match += time.perf_counter() - c
        counts[i] = (cnt_r, sum_r, cnt_p, int(b.sum()))
    if timings is not None:
        for key, value in (("nms", t1 - t0), ("thin", t_thin), ("match", t_match)):
            timings[key] = timings.get(key, 0.0) + value
    return counts


def image_prf(counts: np.ndarray) -> np.ndarray:
    """Per-image (…, 3) [P, R, F] with ``eval_cont``'s rules (§7.4); ``counts`` is (…, 4)."""
    cnt_r, sum_r, cnt_p, sum_p = (counts[..., i].astype(np.float64) for i in range(4))
    if np.any((sum_r == 0) & (cnt_p != 0)):
        raise ValueError("image_prf: matched predictions on an image without GT boundaries (cntP ≠ 0, sumR = 0)")
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(sum_r == 0, 0.0, np.where(sum_p == 0, 1.0, cnt_p / sum_p))
        r = np.where(sum_r == 0, 1.0, np.where(sum_p == 0, 0.0, cnt_r / sum_r))
    return np.stack([p, r, _f(p, r)], axis=-1)


def _f(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p + r > 0, 2 * p * r / (p + r), 0.0)


def _pooled_pr(cnt_r, sum_r, cnt_p, sum_p) -> tuple[np.ndarray, np.ndarray]:
    # §7.5 gather_measure rules, first matching rule wins; anything else stays P = R = 0
    cnt_r, sum_r, cnt_p, sum_p = (np.asarray(a, dtype=np.float64) for a in (cnt_r, sum_r, cnt_p, sum_p))
    p, r = np.zeros_like(cnt_r), np.zeros_like(cnt_r)
    no_gt = (sum_r == 0) & (cnt_p == 0)
    no_pred = ~no_gt & (sum_p == 0) & (cnt_r == 0)
    normal = ~no_gt & ~no_pred & (sum_p != 0) & (cnt_r != 0)
    r[no_gt], p[no_gt] = 1.0, 0.0
    r[no_pred], p[no_pred] = 0.0, 1.0
    r[normal] = cnt_r[normal] / sum_r[normal]
    p[normal] = cnt_p[normal] / sum_p[normal]
    return p, r


@dataclass(frozen=True)
class BoundaryScores:
    """SEISM outputs as fractions (papers print 100·odsF)."""
    ods_f: float
    ods_p: float
    ods_r: float
    ods_threshold: float
    ois_f: float
    ois_p: float
    ois_r: float
    ap: float
    num_images: int


def _average_precision(p: np.ndarray, r: np.ndarray) -> float:
    # §7.5 general_ap: one point per distinct recall (precision of its first = lowest-threshold occurrence),
    # ordered by recall, P linearly interpolated at R = 0, 0.01, …, 1 inside the observed range, sum / 100
    r_unique, first = np.unique(r, return_index=True)
    p_unique = p[first]
    grid = np.arange(101) / 100.0
    inside = (grid >= r_unique[0]) & (grid <= r_unique[-1])
    return float(np.interp(grid[inside], r_unique, p_unique).sum() / 100.0)


def aggregate(counts: np.ndarray, thresholds: np.ndarray) -> BoundaryScores:
    """odsF / oisF / AP from per-image counts (N, T, 4) (§7.5): no interpolation, first maximum on ties."""
    counts = np.asarray(counts)
    if counts.ndim != 3 or counts.shape[1:] != (len(thresholds), 4):
        raise ValueError(f"aggregate: counts must be (N, {len(thresholds)}, 4), got {counts.shape}")
    if counts.shape[0] == 0:
        raise ValueError("aggregate: no image")
    tot = counts.sum(axis=0)  # (T, 4)
    p, r = _pooled_pr(tot[:, 0], tot[:, 1], tot[:, 2], tot[:, 3])
    f = _f(p, r)
    best = int(np.argmax(f))  # argmax returns the first maximum = lowest threshold
    per_image_f = image_prf(counts)[..., 2]  # (N, T)
    pick = np.argmax(per_image_f, axis=1)
    ois = counts[np.arange(counts.shape[0]), pick].sum(axis=0)
    ois_p, ois_r = _pooled_pr(*ois)
    return BoundaryScores(ods_f=float(f[best]), ods_p=float(p[best]), ods_r=float(r[best]),
                          ods_threshold=float(thresholds[best]), ois_f=float(_f(ois_p, ois_r)),
                          ois_p=float(ois_p), ois_r=float(ois_r), ap=_average_precision(p, r),
                          num_images=int(counts.shape[0]))

#!/usr/bin/env python
"""Benchmark the per-image SEISM boundary evaluation on synthetic 425×560 maps (NYUD size), one core
(EVALUATION.md §9 "Speed", §10). Prints seconds per image split into NMS (convTri, orientation, NMS kernel),
thinning (one call per threshold) and matching, for 101 HED thresholds (and the 19-threshold proxy grid).

    python scripts/bench_boundary.py                 # hk, 5 images
    python scripts/bench_boundary.py --images 10 --matcher csa   # needs the optional pyEdgeEval

Synthetic images: a label map of random rectangles gives GT = thin(seg2bmap(relabel4(L))); the prediction is
0.9·exp(−d²/8) of the distance d to the GT plus uniform noise in [0, 0.2), quantised as floor(255·p), so low
thresholds keep dense noise (the expensive case) and high ones the clean boundary.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from evaluation.boundary.gt import build_gt  # noqa: E402
from evaluation.boundary.match import get_matcher  # noqa: E402
from evaluation.boundary.seism import HED_THRESHOLDS, MAX_DIST, PROXY_THRESHOLDS, eval_image  # noqa: E402

H, W = 425, 560


def synthetic(seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(prediction uint8, GT bool, seconds to build the GT) for one synthetic image."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((H, W), np.int32)
    for k in range(12):
        y, x = rng.integers(0, H), rng.integers(0, W)
        labels[max(0, y - 60):y + 60, max(0, x - 80):x + 80] = k + 1
    t = time.perf_counter()
    gt = build_gt(labels, relabel=True)
    t_gt = time.perf_counter() - t
    d = ndimage.distance_transform_edt(~gt)
    prob = 0.9 * np.exp(-d ** 2 / 8) + 0.2 * rng.random((H, W))
    return np.floor(255 * np.clip(prob, 0, 1)).astype(np.uint8), gt, t_gt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--matcher", choices=["hk", "csa"], default="hk")
    args = parser.parse_args()
    matcher = get_matcher(args.matcher)
    data = [synthetic(i) for i in range(args.images)]
    eval_image(data[0][0], data[0][1], MAX_DIST["nyud"], PROXY_THRESHOLDS[:2], matcher)  # JIT warm-up
    print(f"{args.matcher} matcher, {args.images} synthetic {H}x{W} images, maxDist {MAX_DIST['nyud']}, one core; "
          "seconds per image")
    print(f"{'grid':<10}{'GT build':>10}{'NMS':>10}{'thinning':>10}{'matching':>10}{'total':>10}")
    for name, grid in (("HED101", HED_THRESHOLDS), ("PROXY19", PROXY_THRESHOLDS)):
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        for pred, gt, _ in data:
            eval_image(pred, gt, MAX_DIST["nyud"], grid, matcher, timings=timings)
        total = (time.perf_counter() - t0) / len(data)
        gt_s = sum(d[2] for d in data) / len(data)
        n = len(data)
        print(f"{name:<10}{gt_s:>10.3f}{timings['nms'] / n:>10.3f}{timings['thin'] / n:>10.3f}"
              f"{timings['match'] / n:>10.3f}{total:>10.3f}")
    print("total = NMS + thinning + matching (+ thresholding); GT build is once per image and not included")
    return 0


if __name__ == "__main__":
    sys.exit(main())

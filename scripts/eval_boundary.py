#!/usr/bin/env python
"""Boundary odsF / oisF / AP with the SEISM protocol of InvPT/MTMamba (EVALUATION.md §7, §10).

    python scripts/eval_boundary.py --dataset nyud --pred_dir RUN/results --db_root /data/NYUDv2 --workers 16
    python scripts/eval_boundary.py --dataset pascal --pred_dir RUN/results/edge --db_root /data/PASCALContext \
        --image_list seism/gt_sets/PASCALContext/test_new.txt --matcher csa --workers 16

``--pred_dir`` holds ``<id>.png`` (uint8, floor(255·sigmoid), original size) directly or in ``edge/``, as the
official InvPT/MTMamba code saves them. Modes: ``exact`` (csa matcher, needs pyEdgeEval) and ``fast`` (hk matcher)
use the 101 HED thresholds; ``proxy`` (hk, 19 thresholds) is for validation only. ``--matcher csa`` implies
``exact``, ``--matcher hk`` implies ``fast``. For PASCAL, the published protocol scores only the 2498 ids of SEISM's
``gt_sets/PASCALContext/test_new.txt`` (pass it with ``--image_list``; its count and sha256 are checked); without it
all 5105 val images are scored and the output says this is not the published protocol. Per-image results go to
``OUT_DIR/per_image`` and are reused when the run is repeated with the same settings.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.boundary.runner import MODES, evaluate_boundaries, mode_for  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=["nyud", "pascal"])
    parser.add_argument("--pred_dir", required=True, help="folder of <id>.png edge maps, or a save folder with edge/")
    parser.add_argument("--db_root", required=True, help="dataset root (NYUDv2/ or PASCALContext/)")
    parser.add_argument("--matcher", choices=["hk", "csa"], default=None, help="hk: fast, csa: exact (pyEdgeEval)")
    parser.add_argument("--mode", choices=sorted(MODES), default=None, help="default: from --matcher (hk → fast)")
    parser.add_argument("--image_list", default=None, help="id list; PASCAL: SEISM test_new.txt (2498 ids)")
    parser.add_argument("--workers", type=int, default=1, help="processes")
    parser.add_argument("--out_dir", default=None, help="default: PRED_DIR/boundary_eval")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        mode = mode_for(args.matcher, args.mode)
    except ValueError as err:
        parser.error(str(err))
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.pred_dir) / "boundary_eval"
    result = evaluate_boundaries(args.dataset, args.db_root, out_dir, pred_dir=args.pred_dir, mode=mode,
                                 image_list=args.image_list, workers=args.workers)
    s = result["scores"]
    print(f"mode: {mode} ({result['mode_description']})")
    print(f"protocol: {result['protocol']}")
    print(f"images: {s['num_images']} ({result['image_list']['source']})")
    print(f"odsF: {s['ods_f']:.4f} (P {s['ods_p']:.4f}, R {s['ods_r']:.4f}, threshold {s['ods_threshold']:g})")
    print(f"oisF: {s['ois_f']:.4f}   AP: {s['ap']:.4f}")
    print(f"written: {out_dir}/boundary_{mode}.json, .txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())

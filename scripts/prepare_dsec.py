#!/usr/bin/env python
"""Make the DSEC ``ev_inf`` frames: the rectified left frames warped into the rectified left event view.

    python scripts/prepare_dsec.py /data/DSEC                          # every sequence under train/ and test/
    python scripts/prepare_dsec.py /data/DSEC --sequences zurich_city_13_a

The aligned frames MambaSeg and EISNet train on are not in the DSEC download. Per sequence this reads
``calibration/cam_to_cam.yaml``, forms the rotation-only homography K_r1 · R_rect1 · R_10 · R_rect0ᵀ · K_r0⁻¹
(MAMBASEG.md §5) and writes ``images/left/ev_inf/<name>.png`` (480×640, bicubic) for every
``images/left/rectified/<name>.png``. Resumable: existing frames are skipped.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.dsec import make_ev_inf  # noqa: E402
from data.io import DatasetError  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the DSEC folder (holds train/ and test/)")
    parser.add_argument("--sequences", nargs="+", default=None, help="only these sequences (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        counts = make_ev_inf(args.root, args.sequences, progress=not args.no_progress)
    except DatasetError as exc:
        sys.exit(f"prepare_dsec: {exc}")
    print(f"prepare_dsec: {sum(counts.values())} ev_inf frames in {len(counts)} sequences under {args.root}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Extract the DDD17 frames that the ESS archive ships only as videos (MAMBASEG.md §5).

    python scripts/prepare_ddd17.py /data/DDD17        # the folder holding dir0 .. dir6

Writes ``dir*/imgs/img_%08d.png`` (grey, numbered from 1, as ``ffmpeg -i video.mp4 imgs/img_%08d.png`` would) from
every ``dir*/video.mp4`` with OpenCV. Resumable: run it again after an interruption and it continues; finished
recordings are skipped.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.ddd17 import extract_frames  # noqa: E402
from data.io import DatasetError  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the DDD17 folder (holds dir0 .. dir6)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        counts = extract_frames(args.root, progress=not args.no_progress)
    except DatasetError as exc:
        sys.exit(f"prepare_ddd17: {exc}")
    print(f"prepare_ddd17: {sum(counts.values())} frames in {len(counts)} recordings under {args.root}")


if __name__ == "__main__":
    main()

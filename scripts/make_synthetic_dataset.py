#!/usr/bin/env python
"""Write a miniature NYUDv2 or PASCAL-Context dataset in the released formats (DATA.md §6).

    python scripts/make_synthetic_dataset.py --dataset nyud --out /tmp/mtl_data
    python scripts/make_synthetic_dataset.py --dataset pascal --out /tmp/mtl_data --n-train 8 --size 150x200

The dataset lands in ``<out>/NYUDv2`` or ``<out>/PASCALContext``; point ``db_root`` (or ``MTL_DATA_ROOT``)
at ``<out>``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import DATASET_FOLDERS  # noqa: E402
from data.synthetic import NYUD_DEFAULT_SIZE, PASCAL_DEFAULT_SIZE, write_nyud, write_pascal  # noqa: E402

# --dataset -> the folder it is written to
FOLDERS = {"nyud": DATASET_FOLDERS["NYUD"], "pascal": DATASET_FOLDERS["PASCALContext"]}


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like HxW (e.g. 85x112), got {text!r}") from None
    if h < 6 or w < 6:
        raise argparse.ArgumentTypeError(f"--size {text}: both sides must be at least 6")
    return h, w


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of images, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: a split needs at least 1 image")
    return n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=tuple(FOLDERS))
    parser.add_argument("--out", required=True, type=Path, help="folder that will hold NYUDv2/ or PASCALContext/")
    parser.add_argument("--n-train", type=_count, default=4, help="training images (>= 1)")
    parser.add_argument("--n-val", type=_count, default=2, help="validation images (>= 1)")
    parser.add_argument("--force", action="store_true", help="overwrite a dataset that already exists under --out")
    parser.add_argument("--size", type=_size, default=None,
                        help=f"HxW (default {NYUD_DEFAULT_SIZE[0]}x{NYUD_DEFAULT_SIZE[1]} for nyud, "
                             f"{PASCAL_DEFAULT_SIZE[0]}x{PASCAL_DEFAULT_SIZE[1]} for pascal, alternating orientation)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    target = args.out / FOLDERS[args.dataset]
    if target.exists() and not args.force:
        parser.error(f"{target} already exists; pass --force to overwrite it, or choose another --out")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.dataset == "nyud":
        root = write_nyud(args.out, args.n_train, args.n_val, args.size or NYUD_DEFAULT_SIZE, args.seed)
    else:
        root = write_pascal(args.out, args.n_train, args.n_val, args.size or PASCAL_DEFAULT_SIZE, args.seed)
    print(root)


if __name__ == "__main__":
    main()

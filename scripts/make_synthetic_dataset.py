#!/usr/bin/env python
"""Write a miniature NYUDv2, PASCAL-Context or Cityscapes dataset in the released formats (DATA.md §6).

    python scripts/make_synthetic_dataset.py --dataset nyud --out /tmp/mtl_data
    python scripts/make_synthetic_dataset.py --dataset pascal --out /tmp/mtl_data --n-train 8 --size 150x200
    python scripts/make_synthetic_dataset.py --dataset cityscapes --out /tmp/mtl_data

The dataset lands in ``<out>/NYUDv2``, ``<out>/PASCALContext`` or ``<out>/cityscapes_all``; point ``db_root`` (or
``MTL_DATA_ROOT``) at ``<out>``. Synthetic Cityscapes images are small (64x128 by default): train on them with
``TRAIN.SCALE=[32,64] TEST.SCALE=[32,64] LABEL_SCALE=[64,128]``, the released 1024x2048 -> 512x1024 ratio.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.synthetic import (CITYSCAPES_DEFAULT_SIZE, NYUD_DEFAULT_SIZE, PASCAL_DEFAULT_SIZE,  # noqa: E402
                            write_cityscapes, write_nyud, write_pascal)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like HxW (e.g. 85x112), got {text!r}") from None
    if h < 6 or w < 6:
        raise argparse.ArgumentTypeError(f"--size {text}: both sides must be at least 6")
    return h, w


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=("nyud", "pascal", "cityscapes"))
    parser.add_argument("--out", required=True, type=Path, help="folder that will hold NYUDv2/, PASCALContext/ or cityscapes_all/")
    parser.add_argument("--n-train", type=int, default=4)
    parser.add_argument("--n-val", type=int, default=2)
    parser.add_argument("--size", type=_size, default=None,
                        help=f"HxW (default {NYUD_DEFAULT_SIZE[0]}x{NYUD_DEFAULT_SIZE[1]} for nyud, "
                             f"{PASCAL_DEFAULT_SIZE[0]}x{PASCAL_DEFAULT_SIZE[1]} for pascal, alternating orientation, "
                             f"{CITYSCAPES_DEFAULT_SIZE[0]}x{CITYSCAPES_DEFAULT_SIZE[1]} for cityscapes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    writers = {"nyud": (write_nyud, NYUD_DEFAULT_SIZE), "pascal": (write_pascal, PASCAL_DEFAULT_SIZE),
               "cityscapes": (write_cityscapes, CITYSCAPES_DEFAULT_SIZE)}
    write, default_size = writers[args.dataset]
    root = write(args.out, args.n_train, args.n_val, args.size or default_size, args.seed)
    print(root)


if __name__ == "__main__":
    main()

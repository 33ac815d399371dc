#!/usr/bin/env python
"""Write a miniature NYUDv2, PASCAL-Context, Cityscapes, DDD17 or DSEC-Semantic dataset in the released formats
(DATA.md §6, CITYSCAPES.md §1, MAMBASEG.md §5).

    python scripts/make_synthetic_dataset.py --dataset nyud --out /tmp/mtl_data
    python scripts/make_synthetic_dataset.py --dataset pascal --out /tmp/mtl_data --n-train 8 --size 150x200
    python scripts/make_synthetic_dataset.py --dataset cityscapes --out /tmp/mtl_data
    python scripts/make_synthetic_dataset.py --dataset ddd17 --out /tmp/mtl_data --frames 12
    python scripts/make_synthetic_dataset.py --dataset dsec --out /tmp/mtl_data --labels 9

The dataset lands in ``<out>/<folder>`` (NYUDv2, PASCALContext, cityscapes_all, DDD17 or DSEC); point ``db_root`` (or
``MTL_DATA_ROOT``) at ``<out>``. Synthetic Cityscapes images are small (64x128 by default): train on them with
``TRAIN.SCALE=[32,64] TEST.SCALE=[32,64] LABEL_SCALE=[64,128]``, the released 1024x2048 -> 512x1024 ratio. Like the
released archives, DDD17 comes without its frames and DSEC without its ``ev_inf`` frames: run
``scripts/prepare_ddd17.py`` / ``scripts/prepare_dsec.py`` on it. An existing dataset is only overwritten with
``--force``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import DATASET_FOLDERS  # noqa: E402
from data.synthetic import (CITYSCAPES_DEFAULT_SIZE, NYUD_DEFAULT_SIZE, PASCAL_DEFAULT_SIZE,  # noqa: E402
                            write_cityscapes, write_nyud, write_pascal)

# --dataset -> train_db_name (its folder is DATASET_FOLDERS[name])
DATASETS = {"nyud": "NYUD", "pascal": "PASCALContext", "cityscapes": "Cityscapes", "ddd17": "DDD17", "dsec": "DSEC"}
# --dataset -> (writer, default size) of the image datasets
IMAGE_WRITERS = {"nyud": (write_nyud, NYUD_DEFAULT_SIZE), "pascal": (write_pascal, PASCAL_DEFAULT_SIZE),
                 "cityscapes": (write_cityscapes, CITYSCAPES_DEFAULT_SIZE)}


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
    parser.add_argument("--dataset", required=True, choices=tuple(DATASETS))
    parser.add_argument("--out", required=True, type=Path, help="folder that will hold the dataset folder")
    parser.add_argument("--n-train", type=_count, default=4, help="training images (>= 1; nyud, pascal, cityscapes)")
    parser.add_argument("--n-val", type=_count, default=2, help="validation images (>= 1; nyud, pascal, cityscapes)")
    parser.add_argument("--size", type=_size, default=None,
                        help=f"HxW (default {NYUD_DEFAULT_SIZE[0]}x{NYUD_DEFAULT_SIZE[1]} for nyud, "
                             f"{PASCAL_DEFAULT_SIZE[0]}x{PASCAL_DEFAULT_SIZE[1]} for pascal, alternating orientation, "
                             f"{CITYSCAPES_DEFAULT_SIZE[0]}x{CITYSCAPES_DEFAULT_SIZE[1]} for cityscapes)")
    parser.add_argument("--frames", type=_count, default=6, help="ddd17: frames per recording (masks from the 3rd)")
    parser.add_argument("--labels", type=_count, default=7,
                        help="dsec: labels per sequence (the loader drops 6 and keeps every 2nd)")
    parser.add_argument("--events", type=_count, default=None,
                        help="events per frame (ddd17, default 400) or per label (dsec, default 3000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite a dataset that already exists under --out")
    args = parser.parse_args(argv)
    target = args.out / DATASET_FOLDERS[DATASETS[args.dataset]]
    if target.exists() and not args.force:
        parser.error(f"{target} already exists; pass --force to overwrite it, or choose another --out")
    if args.dataset not in IMAGE_WRITERS and args.size is not None:
        parser.error("--size applies to nyud, pascal and cityscapes; DDD17 and DSEC keep their sensor sizes")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.dataset == "ddd17":
        from data.synthetic_events import write_ddd17
        root = write_ddd17(args.out, n_frames=args.frames, events_per_frame=args.events or 400, seed=args.seed)
    elif args.dataset == "dsec":
        from data.synthetic_events import write_dsec
        root = write_dsec(args.out, n_labels=args.labels, events_per_label=args.events or 3000, seed=args.seed)
    else:
        write, default_size = IMAGE_WRITERS[args.dataset]
        root = write(args.out, args.n_train, args.n_val, args.size or default_size, args.seed)
    print(root)


if __name__ == "__main__":
    main()

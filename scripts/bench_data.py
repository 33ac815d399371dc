#!/usr/bin/env python
"""Loader throughput of the NYUD training pipeline (DATA.md §4.1) on synthetic 425×560 images.

    python scripts/bench_data.py                       # 0 and 2 workers, 48 samples each
    python scripts/bench_data.py --workers 0 4 --samples 96 --batch 2

Writes a synthetic NYUDv2 (all four tasks) to a temporary folder, then times ``--samples`` samples through
``NYUDv2`` + ``train_transforms((448, 576))`` + ``collate_mil`` after one warm-up batch, and prints one line
per worker count: samples per second.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data import fork_safe_opencv, seed_worker  # noqa: E402
from data.collate import collate_mil  # noqa: E402
from data.nyud import NYUD_TASKS, NYUDv2  # noqa: E402
from data.synthetic import write_nyud  # noqa: E402
from data.transforms import train_transforms  # noqa: E402


def measure(root: Path, workers: int, samples: int, batch: int) -> float:
    """Samples per second over ``samples`` samples (after one warm-up batch)."""
    ds = NYUDv2(root, "train", NYUD_TASKS, transform=train_transforms((448, 576), seed=0))
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=samples + batch,
                                             generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                         collate_fn=collate_mil, worker_init_fn=seed_worker, drop_last=True)
    if workers > 0:
        fork_safe_opencv()
    batches = iter(loader)
    next(batches)  # warm-up: worker start, first decode
    start, n = time.perf_counter(), 0
    for b in batches:
        n += b["image"].shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--n-images", type=int, default=8, help="distinct synthetic images")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_nyud(tmp, n_train=args.n_images, n_val=1, size=(425, 560))
        for w in args.workers:
            rate = measure(root, w, args.samples, args.batch)
            print(f"bench_data: NYUD train pipeline 425x560 -> 448x576, all tasks, batch {args.batch}, "
                  f"workers {w}: {rate:.1f} samples/s")


if __name__ == "__main__":
    main()

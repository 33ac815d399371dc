#!/usr/bin/env python
"""Data benchmarks: the event voxel grid, and loader throughput of the NYUD, DDD17 and DSEC training pipelines.

    python scripts/bench_data.py                                   # everything, 0 and 2 workers, 48 samples each
    python scripts/bench_data.py --datasets nyud --workers 0 4 --samples 96 --batch 2
    python scripts/bench_data.py --datasets voxel                  # the voxel grid only

voxel: one thread, 100k events (rectified float coordinates, µs timestamps) into a 10×480×640 grid, best and median
wall time of ``--repeats`` runs (and the median CPU time of the thread, less sensitive to a busy machine), for ``data.events.voxel_grid`` and, beside it, a plain version that scatters with
``index_put_(accumulate=True)`` (the same arithmetic, a (bin, y, x) index per bin side).

Loaders (synthetic data in the released formats, in a temporary folder; timed after one warm-up batch, one line
per worker count, samples per second): NYUD 425×560 through ``train_transforms((448, 576))`` with all tasks;
DDD17 (about 30k events per 50 ms window) and DSEC (100k-event windows) through ``event_train_transforms``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data import fork_safe_opencv, seed_worker  # noqa: E402
from data.collate import collate_mil  # noqa: E402
from data.events import voxel_grid  # noqa: E402

DATASETS = ("voxel", "nyud", "ddd17", "dsec")


def voxel_grid_index_put(x, y, t, p, height: int, width: int, num_bins: int = 10) -> torch.Tensor:
    """The straightforward scatter: two masked ``index_put_(accumulate=True)`` calls into a (B, H, W) grid."""
    x, y = torch.from_numpy(x).long(), torch.from_numpy(y).long()
    t, p = torch.from_numpy(t.astype(np.int64)), torch.from_numpy(p)
    grid = torch.zeros(num_bins, height, width)
    tn = (num_bins - 1) * (t - t[0]).double() / float(t[-1] - t[0])
    bins = tn.long()
    frac = tn - bins
    sign = torch.where(p == 1, 1.0, -1.0).double()
    valid = (x >= 0) & (x < width) & (y >= 0) & (y < height) & (tn >= 0) & (tn < num_bins)
    m = valid
    grid.index_put_((bins[m], y[m], x[m]), (sign * (1 - frac))[m].float(), accumulate=True)
    m = valid & (bins + 1 < num_bins)
    grid.index_put_((bins[m] + 1, y[m], x[m]), (sign * frac)[m].float(), accumulate=True)
    return grid


def bench_voxel(repeats: int) -> None:
    rng = np.random.default_rng(0)
    n, (h, w) = 100_000, (480, 640)
    x = rng.uniform(-1, w + 1, n).astype(np.float32)
    y = rng.uniform(-1, h + 1, n).astype(np.float32)
    t = np.sort(rng.integers(0, 50_000, n)).astype(np.uint32)
    p = rng.integers(0, 2, n).astype(np.uint8)
    ours, plain = voxel_grid(x, y, t, p, h, w), voxel_grid_index_put(x, y, t, p, h, w)
    diff = float((ours - plain).abs().max())
    for name, fn in (("voxel_grid (scatter_add_, channels-last)", voxel_grid),
                     ("plain index_put_(accumulate=True)", voxel_grid_index_put)):
        times, cpu = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.thread_time()
            fn(x, y, t, p, h, w)
            times.append(time.perf_counter() - start)
            cpu.append(time.thread_time() - start_cpu)
        print(f"bench_data: voxel grid 100k events -> 10x480x640, 1 thread, {name}: best {1e3 * min(times):.1f} ms, "
              f"median {1e3 * float(np.median(times)):.1f} ms (CPU time median {1e3 * float(np.median(cpu)):.1f} ms)")
    print(f"bench_data: voxel grid max |difference| between the two: {diff:.2e}")


def measure(ds, workers: int, samples: int, batch: int) -> float:
    """Samples per second over ``samples`` samples (after one warm-up batch)."""
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


def build(name: str, tmp: str, n_images: int):
    """(dataset, description) of a synthetic training set."""
    if name == "nyud":
        from data.nyud import NYUD_TASKS, NYUDv2
        from data.synthetic import write_nyud
        from data.transforms import train_transforms
        root = write_nyud(tmp, n_train=n_images, n_val=1, size=(425, 560))
        return (NYUDv2(root, "train", NYUD_TASKS, transform=train_transforms((448, 576), seed=0)),
                "NYUD train pipeline 425x560 -> 448x576, all tasks")
    from data.event_transforms import event_train_transforms
    if name == "ddd17":
        from data.ddd17 import DDD17, extract_frames
        from data.synthetic_events import write_ddd17
        root = write_ddd17(tmp, n_frames=4, first_label=2, events_per_frame=60_000)
        extract_frames(root, progress=False)
        return (DDD17(root, "train", transform=event_train_transforms("DDD17", seed=0)),
                "DDD17 train pipeline (~30k events / 50 ms) -> 200x346")
    from data.dsec import SEQUENCES, DSECSemantic, make_ev_inf
    from data.synthetic_events import write_dsec
    seqs = SEQUENCES["train"][:2]
    root = write_dsec(tmp, sequences=seqs, n_labels=10, events_per_label=20_000)  # >= 120k events before a label
    make_ev_inf(root, progress=False)
    return (DSECSemantic(root, "train", transform=event_train_transforms("DSEC", seed=0), sequences=seqs),
            "DSEC train pipeline (100k events, rectified) -> 440x640")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--n-images", type=int, default=8, help="distinct synthetic NYUD images")
    parser.add_argument("--repeats", type=int, default=30, help="voxel grid timings")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if "voxel" in args.datasets:
        bench_voxel(args.repeats)
    for name in (d for d in args.datasets if d != "voxel"):
        with tempfile.TemporaryDirectory() as tmp:
            ds, what = build(name, tmp, args.n_images)
            for w in args.workers:
                rate = measure(ds, w, args.samples, args.batch)
                print(f"bench_data: {what}, batch {args.batch}, workers {w}: {rate:.1f} samples/s")


if __name__ == "__main__":
    main()

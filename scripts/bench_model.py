#!/usr/bin/env python
"""Benchmark a whole model, A/B: execution modes and precisions side by side, on the same weights, in one process.

    python scripts/bench_model.py --config_exp configs/mtmamba_nyud.yml --mode train --exec reference,fast \\
        --amp fp32,bf16 --batch 8                                          # H100: the performance targets
    python scripts/bench_model.py --config_exp configs/mtmamba_nyud.yml --mode train --exec reference,fast \\
        --opts model.backbone=swin_tiny --size 224 288 --batch 1           # CPU, reduced input
    python scripts/bench_model.py ... --grad_ckpt off,on                   # peak memory with/without checkpointing
    python scripts/bench_model.py ... --scan_backend torch,triton          # selective-scan backends side by side
    python scripts/bench_model.py ... --profile                            # share of the step spent in the scan

Every combination of ``--exec`` x ``--amp`` x ``--grad_ckpt`` x ``--scan_backend`` is one row (without
``--scan_backend``, the config's ``model.scan_backend``). After ``--warmup`` iterations of every row,
the rows are timed in turn, ``--iters`` iterations each, and that round is repeated ``--repeats`` times (A/B
interleaved, so drifts of clock or load hit all rows alike); the table shows the median round. A training iteration
is forward + backward of the sum of the mean squared outputs (a stand-in for the task losses, same graph) + an AdamW
step; inference is a forward pass under ``torch.inference_mode``. Inputs are random, weights random (no download).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` per row; on the CPU the peak resident set above the
resident set before the row (the kernel's peak counter is reset through /proc/self/clear_refs, Linux only). Memory
that the C allocator keeps after an earlier row is not counted again, so on the CPU only the first row's figure is an
absolute peak; compare CPU memory with one row per run.
Every loss is checked to be finite.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models import build_model  # noqa: E402
from models.execution import compile_decoder, enable_grad_checkpointing, set_exec_mode  # noqa: E402
from models.ops.selective_scan import BACKENDS, SCAN_FUNCTION_NAMES  # noqa: E402
from utils.config import load_config  # noqa: E402

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _csv(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: valid values are {list(choices)}")
        return items
    return parse


class PeakMemory:
    """Peak memory of a block of work, in MB: CUDA allocator peak, or the CPU resident-set peak above its start."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu_ok = Path("/proc/self/clear_refs").exists()

    @staticmethod
    def _status_kb(field: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE).group(1))

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.cpu_ok:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base_kb = self._status_kb("VmRSS")

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return (self._status_kb("VmHWM") - self.base_kb) / 1024 if self.cpu_ok else float("nan")


class Row:
    """One benchmarked configuration of the shared model."""

    def __init__(self, exec_mode: str, amp: str, grad_ckpt: str, scan_backend: str | None) -> None:
        self.exec_mode, self.amp, self.grad_ckpt, self.scan_backend = exec_mode, amp, grad_ckpt, scan_backend
        self.times: list[float] = []
        self.peak = 0.0

    @property
    def name(self) -> str:
        return f"{self.exec_mode:<9} {self.amp:<4} ckpt={self.grad_ckpt} scan={self.scan_backend or 'config'}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_step(model, optimizer, image: torch.Tensor, mode: str, device: torch.device):
    """A function running one iteration of ``row`` and returning the loss (train) or None (infer)."""
    scan_modules = [m for m in model.modules() if hasattr(m, "scan_backend")]

    def step(row: Row):
        set_exec_mode(model, row.exec_mode)
        enable_grad_checkpointing(model, row.grad_ckpt == "on")
        for m in scan_modules if row.scan_backend else ():
            m.scan_backend = row.scan_backend
        dtype = AMP_DTYPES[row.amp]
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        if mode == "infer":
            with torch.inference_mode(), autocast:
                model(image)
            return None
        with autocast:
            preds = model(image)
        loss = sum(p.float().square().mean() for p in preds.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def scan_share(step, row: Row, device: torch.device) -> float:
    """Fraction of one iteration's device (CUDA) or CPU time spent inside the selective-scan autograd functions."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        with torch.profiler.record_function("bench_step"):
            step(row)
        _sync(device)
    scan_ops = {*SCAN_FUNCTION_NAMES, *(f"{n}Backward" for n in SCAN_FUNCTION_NAMES)}
    events = prof.key_averages()
    if device.type == "cuda":   # device time of all kernels vs of the kernels the scan ops launched
        total = sum(e.self_device_time_total for e in events)
        scan = sum(e.device_time_total for e in events if e.key in scan_ops)
    else:
        total = next(e.cpu_time_total for e in events if e.key == "bench_step")
        scan = sum(e.cpu_time_total for e in events if e.key in scan_ops)
    return scan / total if total else float("nan")


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_exp", required=True, help="experiment YAML")
    parser.add_argument("--opts", nargs="*", default=[], help="dotted overrides, e.g. model.backbone=swin_tiny")
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--exec", type=_csv(("reference", "fast")), default=["reference", "fast"])
    parser.add_argument("--amp", type=_csv(tuple(AMP_DTYPES)), default=["fp32"])
    parser.add_argument("--grad_ckpt", type=_csv(("off", "on")), default=["off"])
    parser.add_argument("--scan_backend", type=_csv(BACKENDS), default=[None],
                        help="selective-scan backends, one row each (default: the config's model.scan_backend)")
    parser.add_argument("--batch", type=int, default=None, help="images per iteration (default: the config's trBatch)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: TRAIN.SCALE)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per row before timing")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per row and round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the table reports the median round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--compile", default=None, help="torch.compile mode of the decoder stages")
    parser.add_argument("--profile", action="store_true", help="report the scan's share of an iteration")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = [f"TRAIN.SCALE=[{args.size[0]},{args.size[1]}]", f"TEST.SCALE=[{args.size[0]},{args.size[1]}]"] \
        if args.size else []
    cfg = load_config(args.config_exp, [*args.opts, *sizes, "model.pretrained=false", "model.pretrained_path=null"])
    size = tuple(cfg.TRAIN.SCALE)
    batch = args.batch or cfg.trBatch
    torch.manual_seed(0)
    model = compile_decoder(build_model(cfg).to(device), args.compile)
    model.train(args.mode == "train")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6) if args.mode == "train" else None
    image = torch.randn(batch, 3, *size, device=device)
    step = build_step(model, optimizer, image, args.mode, device)
    rows = [Row(*combo) for combo in itertools.product(args.exec, args.amp, args.grad_ckpt, args.scan_backend)]
    memory = PeakMemory(device)

    print(f"# {args.config_exp} {' '.join(args.opts)} | {args.mode} | batch {batch} | {size[0]}x{size[1]} | "
          f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})"
          f" | torch {torch.__version__} | compile={args.compile}")
    step(rows[0])                                                        # one-time allocations (optimizer state)
    for row in rows:                                                     # warm-up and peak memory per row
        memory.start()
        for _ in range(args.warmup):
            loss = step(row)
            if loss is not None and not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss in warm-up of {row.name}")
        _sync(device)
        row.peak = memory.peak_mb()
    for _ in range(args.repeats):                                        # interleaved timed rounds
        for row in rows:
            _sync(device)
            start = time.perf_counter()
            for _ in range(args.iters):
                loss = step(row)
            _sync(device)
            row.times.append((time.perf_counter() - start) / args.iters)
            if loss is not None and not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss in {row.name}")

    base = statistics.median(rows[0].times)
    print(f"{'exec':<9} {'amp':<4} {'ckpt':<4} {'scan':<9} | {'img/s':>8} | {'ms/iter':>9} | {'peak MB':>9} | "
          f"{'speedup':>7}" + (" | scan share" if args.profile else ""))
    for row in rows:
        ms = statistics.median(row.times)
        line = (f"{row.exec_mode:<9} {row.amp:<4} {row.grad_ckpt:<4} {row.scan_backend or 'config':<9} | "
                f"{batch / ms:8.3g} | {1000 * ms:9.1f} | {row.peak:9.0f} | {base / ms:6.2f}x")
        if args.profile:
            line += f" | {scan_share(step, row, device):9.1%}"
        print(line)
    return rows


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Benchmark the selective scan at the MTMamba decoder's scan shapes, forward and forward+backward.

CPU (default): the torch backend against autograd through the sequential ``unbind`` loop (``selective_scan_ref``),
one thread, time and peak memory:

    python scripts/bench_scan.py                                 # the decoder's three stages (NYUD 448x576)
    python scripts/bench_scan.py --quick                         # reduced sizes, a smoke run
    python scripts/bench_scan.py --sizes 3072x4032,1536x16128 --repeats 3

GPU: any backends side by side (default: triton and torch, and cuda when mamba-ssm's kernel is installed), at the
three decoder stages and MambaSeg's largest TSSM scan, with the achieved bandwidth and the distance to the floor of
PERFORMANCE.md §4.2:

    python scripts/bench_scan.py --device cuda --backends triton,torch,cuda
    python scripts/bench_scan.py --device cuda --dtype bf16 --batch 8

Sizes are ``dim x L`` (K·D channels, sequence length) with G groups of B/C and N=16 states: the decoder stages at
448x576 input (strides 16/8/4) are 6144x1008, 3072x4032 and 1536x16128 with G=4 (the four scan directions); MambaSeg's
TSSM at DSEC 440x640, stage 0 scans the 2C = 192 channels of each of the 110·160 positions in 2 directions:
35200x192 with G=2. ``--sizes`` takes ``dimxL`` or ``dimxLxG``. Inputs are built like an SS2D layer at init
(A = -[1..N], softplus(dt bias) log-uniform in [1e-3, 0.1], delta ~ 0.1·N(0,1), u = silu(N(0,1)), B, C ~ 0.5·N(0,1)),
with D, delta_bias and delta_softplus=True and no z, as SS2D calls the scan. "fwd" is a training forward (inputs
require grad, the output is kept); "fwd+bwd" adds the backward for a given output gradient.

CPU time: the best of ``--repeats`` runs; peak memory: every measurement runs in a fresh process ("spawn"), which
builds its inputs, resets the kernel's peak-RSS counter (/proc/self/clear_refs, Linux) and reports VmHWM minus the
VmRSS before running: the peak above the inputs.

GPU time: the median of ``--repeats`` timed runs (CUDA events) after ``--warmup`` runs, which include Triton's
compilation. GB/s: the bytes a fused kernel must move divided by the time: forward u, delta in and y out per
element, B and C per (group, step); backward u, delta, dy in and du, d delta out per element, B, C in and dB, dC out
per (group, step). The floor (§4.2) of a pass is the larger of its memory time and its exp time: forward 12 B and N
exps per element (fp32), backward 20 B and 2N exps, at ``--peak_gbps`` (H100 SXM: 3350; H200: 4800) and
``--peak_texp`` exp/s (H100: 4e12). "floor" is floor time / measured time: 100 % is the floor, 33 % is 3x above it.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models.ops.selective_scan import available_backends, selective_scan  # noqa: E402

FULL_SIZES = ((6144, 1008), (3072, 4032), (1536, 16128))  # decoder stages 0-2 at 448x576
QUICK_SIZES = ((384, 252), (768, 1008))
GPU_SHAPES = {"stage0": (6144, 1008, 4), "stage1": (3072, 4032, 4), "stage2": (1536, 16128, 4),
              "tssm": (35200, 192, 2)}
GROUPS, STATES = 4, 16
METHODS = {"torch": "torch", "loop": "reference"}  # CPU column name -> selective_scan backend
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE).group(1))


def _make_inputs(dim: int, L: int, seed: int = 0, batch: int = 1, groups: int = GROUPS, device: str = "cpu",
                 dtype: torch.dtype = torch.float32) -> tuple[list[torch.Tensor], torch.Tensor]:
    """SS2D-at-init scan inputs (u, delta, A, B, C, D, delta_bias), and an output gradient; u, delta, B, C and the
    gradient in ``dtype``, the parameters A, D, delta_bias in float32."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.empty(dim).uniform_(math.log(1e-3), math.log(0.1), generator=g))
    delta_bias = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
    inputs = [
        F.silu(torch.randn(batch, dim, L, generator=g)).to(dtype),
        (0.1 * torch.randn(batch, dim, L, generator=g)).to(dtype),
        -torch.arange(1, STATES + 1, dtype=torch.float32).repeat(dim, 1),
        (0.5 * torch.randn(batch, groups, STATES, L, generator=g)).to(dtype),
        (0.5 * torch.randn(batch, groups, STATES, L, generator=g)).to(dtype),
        torch.ones(dim),
        delta_bias,
    ]
    dout = torch.randn(batch, dim, L, generator=g).to(dtype)
    return [t.to(device).requires_grad_() for t in inputs], dout.to(device)


def _measure(backend: str, dim: int, L: int, backward: bool, repeats: int) -> tuple[float, float]:
    """(best seconds, peak MB above the inputs) of one pass on the CPU; runs in a fresh process."""
    torch.set_num_threads(1)
    (u, delta, A, B, C, D, delta_bias), dout = _make_inputs(dim, L)
    inputs = (u, delta, A, B, C, D, delta_bias)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base_kb = _proc_status_kb("VmRSS")
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = selective_scan(u, delta, A, B, C, D, None, delta_bias, True, backend=backend)
        if backward:
            out.backward(dout)
        best = min(best, time.perf_counter() - start)
        del out
        for t in inputs:
            t.grad = None
    return best, (_proc_status_kb("VmHWM") - base_kb) / 1024


def bench_cpu(sizes, repeats: int) -> None:
    context = multiprocessing.get_context("spawn")
    print(f"selective scan, CPU, 1 thread, batch 1, K={GROUPS}, N={STATES}, float32; best of {repeats}; "
          "memory = peak RSS above the inputs")
    print()
    print("| K·D | L | pass | torch s | loop s | speedup | torch MB | loop MB | memory torch/loop |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for dim, L in sizes:
        for backward in (False, True):
            result = {}
            for name, backend in METHODS.items():
                with context.Pool(1) as pool:  # a fresh process per measurement
                    result[name] = pool.apply(_measure, (backend, dim, L, backward, repeats))
            (t_torch, m_torch), (t_loop, m_loop) = result["torch"], result["loop"]
            print(f"| {dim} | {L} | {'fwd+bwd' if backward else 'fwd'} | {t_torch:.2f} | {t_loop:.2f} | "
                  f"{t_loop / t_torch:.2f}x | {m_torch:.0f} | {m_loop:.0f} | {m_torch / m_loop:.3f} |", flush=True)


def required_bytes(batch: int, dim: int, L: int, groups: int, itemsize: int, backward: bool) -> int:
    """Bytes a fused kernel must move in the forward pass, or in forward plus backward (see the docstring)."""
    elements, steps = batch * dim * L, batch * groups * L
    fwd = elements * 3 * itemsize + steps * 2 * STATES * itemsize
    bwd = elements * 5 * itemsize + steps * 2 * STATES * (itemsize + 4)
    return fwd + bwd if backward else fwd


def floor_seconds(batch: int, dim: int, L: int, itemsize: int, backward: bool, peak_gbps: float,
                  peak_texp: float) -> float:
    """The §4.2 floor: per pass the larger of its memory time (3 / 5 values per element: 12 B / 20 B in fp32) and
    its exp time (N / 2N exps per element)."""
    elements = batch * dim * L
    passes = [(3, STATES)] + ([(5, 2 * STATES)] if backward else [])
    return sum(max(elements * values * itemsize / (peak_gbps * 1e9), elements * exps / (peak_texp * 1e12))
               for values, exps in passes)


def time_gpu(backend: str, batch: int, dim: int, L: int, groups: int, dtype: torch.dtype, backward: bool,
             warmup: int, repeats: int) -> tuple[float, float]:
    """(median seconds, peak MB above the inputs) of one pass on the current CUDA device."""
    (u, delta, A, B, C, D, delta_bias), dout = _make_inputs(dim, L, batch=batch, groups=groups, device="cuda",
                                                              dtype=dtype)
    inputs = (u, delta, A, B, C, D, delta_bias)

    def run() -> None:
        out = selective_scan(u, delta, A, B, C, D, None, delta_bias, True, backend=backend)
        if backward:
            out.backward(dout)
        for t in inputs:
            t.grad = None

    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times), (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_gpu(shapes: dict[str, tuple[int, int, int]], backends: list[str], batch: int, dtype_name: str,
              warmup: int, repeats: int, peak_gbps: float, peak_texp: float) -> None:
    dtype = DTYPES[dtype_name]
    print(f"selective scan, {torch.cuda.get_device_name()}, batch {batch}, N={STATES}, inputs {dtype_name} "
          f"(A, D, delta_bias fp32), output {dtype_name}; median of {repeats} after {warmup} warm-up runs; "
          f"floor: {peak_gbps:.0f} GB/s, {peak_texp:.1f}e12 exp/s (PERFORMANCE.md §4.2); torch {torch.__version__}")
    print()
    print("| shape | dim | L | G | pass | backend | ms | GB/s | floor | vs torch | peak MB |")
    print("|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|")
    for name, (dim, L, groups) in shapes.items():
        for backward in (False, True):
            label = "fwd+bwd" if backward else "fwd"
            nbytes = required_bytes(batch, dim, L, groups, dtype.itemsize, backward)
            floor = floor_seconds(batch, dim, L, dtype.itemsize, backward, peak_gbps, peak_texp)
            results = {}
            for backend in backends:
                try:
                    results[backend] = time_gpu(backend, batch, dim, L, groups, dtype, backward, warmup, repeats)
                except torch.cuda.OutOfMemoryError:
                    results[backend] = None
                torch.cuda.empty_cache()
            for backend, result in results.items():
                if result is None:
                    print(f"| {name} | {dim} | {L} | {groups} | {label} | {backend} | out of memory | | | | |")
                    continue
                seconds, peak = result
                torch_s = results.get("torch")
                speedup = f"{torch_s[0] / seconds:.1f}x" if torch_s else "-"
                print(f"| {name} | {dim} | {L} | {groups} | {label} | {backend} | {1000 * seconds:.3f} | "
                      f"{nbytes / seconds / 1e9:.0f} | {floor / seconds:.0%} | {speedup} | {peak:.0f} |", flush=True)


def _backends(text: str | None) -> list[str]:
    if text is None:
        return ["triton", "torch", *(["cuda"] if "cuda" in available_backends() else [])]
    names = [t.strip() for t in text.split(",") if t.strip()]
    missing = [n for n in names if n not in available_backends()]
    if missing:
        raise SystemExit(f"--backends: {missing} not usable here; available: {list(available_backends())}")
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--backends", help="GPU: comma-separated backends (default triton,torch[,cuda])")
    parser.add_argument("--sizes", help="comma-separated dimxL or dimxLxG, e.g. 3072x4032,35200x192x2 "
                                        "(default: decoder stages; on the GPU also MambaSeg's TSSM)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (CPU default 1: best; GPU 10: median)")
    parser.add_argument("--quick", action="store_true", help=f"CPU: reduced sizes {QUICK_SIZES} for a smoke run")
    parser.add_argument("--batch", type=int, default=8, help="GPU batch (default 8, the training batch)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="GPU input dtype")
    parser.add_argument("--warmup", type=int, default=3, help="GPU: untimed runs first (compilation, caches)")
    parser.add_argument("--peak_gbps", type=float, default=3350.0, help="HBM bandwidth of the floor (H100 SXM)")
    parser.add_argument("--peak_texp", type=float, default=4.0, help="exp throughput of the floor, 1e12/s (H100)")
    args = parser.parse_args(argv)
    sizes = None
    if args.sizes:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]

    if args.device == "cpu":
        if args.backends:
            parser.error("--backends is for --device cuda; on the CPU the bench compares torch with the loop")
        bench_cpu([s[:2] for s in sizes] if sizes else (QUICK_SIZES if args.quick else FULL_SIZES),
                  args.repeats or 1)
        return
    if not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    shapes = {f"{s[0]}x{s[1]}": (*s[:2], s[2] if len(s) > 2 else GROUPS) for s in sizes} if sizes else GPU_SHAPES
    bench_gpu(shapes, _backends(args.backends), args.batch, args.dtype, args.warmup,
              args.repeats or 10, args.peak_gbps, args.peak_texp)


if __name__ == "__main__":
    main()

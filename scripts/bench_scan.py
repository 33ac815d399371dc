#!/usr/bin/env python
"""Benchmark the CPU selective scan, one thread: the torch backend against autograd through the sequential
``unbind`` loop (``selective_scan_ref``), forward and forward+backward, at the MTMamba decoder's scan shapes.

    python scripts/bench_scan.py                                 # the decoder's three stages (NYUD 448x576)
    python scripts/bench_scan.py --quick                         # reduced sizes, a smoke run
    python scripts/bench_scan.py --sizes 3072x4032,1536x16128 --repeats 3

Sizes are ``K·D x L`` at batch 1, K=4 groups, N=16. Inputs are built like an SS2D layer at init (A = -[1..N],
softplus(dt bias) log-uniform in [1e-3, 0.1], delta ~ 0.1·N(0,1), u = silu(N(0,1)), B, C ~ 0.5·N(0,1)), in float32,
with D, delta_bias and delta_softplus=True and no z, as SS2D calls the scan. "fwd" is a training forward (inputs
require grad, the output is kept); "fwd+bwd" adds the backward for a given output gradient. Time: the best of
``--repeats`` runs.

Peak memory: every measurement runs in a fresh process (multiprocessing "spawn"). The process builds its inputs and
the output gradient, resets the kernel's peak-RSS counter (writes "5" to /proc/self/clear_refs, Linux), then reports
VmHWM (peak resident set) minus the VmRSS read just before running, both from /proc/self/status: the peak memory
above the inputs, over all repeats.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models.ops.selective_scan import selective_scan  # noqa: E402

FULL_SIZES = ((6144, 1008), (3072, 4032), (1536, 16128))  # decoder stages 0-2 at 448x576
QUICK_SIZES = ((384, 252), (768, 1008))
GROUPS, STATES = 4, 16
METHODS = {"torch": "torch", "loop": "reference"}  # column name -> selective_scan backend


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE).group(1))


def _make_inputs(dim: int, L: int, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """SS2D-at-init scan inputs (u, delta, A, B, C, D, delta_bias) at batch 1, and an output gradient."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.empty(dim).uniform_(math.log(1e-3), math.log(0.1), generator=g))
    delta_bias = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
    inputs = [
        F.silu(torch.randn(1, dim, L, generator=g)),
        0.1 * torch.randn(1, dim, L, generator=g),
        -torch.arange(1, STATES + 1, dtype=torch.float32).repeat(dim, 1),
        0.5 * torch.randn(1, GROUPS, STATES, L, generator=g),
        0.5 * torch.randn(1, GROUPS, STATES, L, generator=g),
        torch.ones(dim),
        delta_bias,
    ]
    return [t.requires_grad_() for t in inputs], torch.randn(1, dim, L, generator=g)


def _measure(backend: str, dim: int, L: int, backward: bool, repeats: int) -> tuple[float, float]:
    """(best seconds, peak MB above the inputs) of one pass; runs in a fresh process."""
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", help="comma-separated KDxL, e.g. 3072x4032,1536x16128 (default: decoder stages)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement; the best time is kept")
    parser.add_argument("--quick", action="store_true", help=f"reduced sizes {QUICK_SIZES} for a smoke run")
    args = parser.parse_args(argv)
    if args.sizes:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    else:
        sizes = QUICK_SIZES if args.quick else FULL_SIZES

    context = multiprocessing.get_context("spawn")
    print(f"selective scan, CPU, 1 thread, batch 1, K={GROUPS}, N={STATES}, float32; best of {args.repeats}; "
          "memory = peak RSS above the inputs")
    print()
    print("| K·D | L | pass | torch s | loop s | speedup | torch MB | loop MB | memory torch/loop |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for dim, L in sizes:
        for backward in (False, True):
            result = {}
            for name, backend in METHODS.items():
                with context.Pool(1) as pool:  # a fresh process per measurement
                    result[name] = pool.apply(_measure, (backend, dim, L, backward, args.repeats))
            (t_torch, m_torch), (t_loop, m_loop) = result["torch"], result["loop"]
            print(f"| {dim} | {L} | {'fwd+bwd' if backward else 'fwd'} | {t_torch:.2f} | {t_loop:.2f} | "
                  f"{t_loop / t_torch:.2f}x | {m_torch:.0f} | {m_loop:.0f} | {m_torch / m_loop:.3f} |", flush=True)


if __name__ == "__main__":
    main()

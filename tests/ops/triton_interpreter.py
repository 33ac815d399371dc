"""Runs the Triton selective-scan kernels under Triton's CPU interpreter, in a process of its own.

``TRITON_INTERPRET=1`` must be set before the kernels are first built (when ``models.ops.selective_scan_triton`` is
imported) and would send every Triton kernel of the process to the interpreter, so
tests/ops/test_selective_scan_triton.py starts this module as a subprocess and only asserts on the numbers it returns:

    TRITON_INTERPRET=1 python -m tests.ops.triton_interpreter < cases.json > results.json

A case is {"kind": "kernel", ...} (the scan and all its gradients against the float64 reference), {"kind": "model",
...} (a tiny model's outputs with ``model.scan_backend: triton`` against the torch backend) or {"kind": "scan_check"}
(:func:`vectorised_scan` against the interpreter's own element-by-element scan).

The interpreter evaluates a ``tl.associative_scan`` with a custom combine one element at a time in Python (about a
millisecond per element); :func:`vectorised_scan` replaces that loop by the Hillis-Steele scan over whole arrays
(log2(length) calls of the same combine function), which the "scan_check" case verifies.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") != "1":
    raise ImportError("tests.ops.triton_interpreter runs only with TRITON_INTERPRET=1 (see its docstring)")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

import models.ops.selective_scan_triton as st  # noqa: E402
from models.ops.selective_scan import selective_scan  # noqa: E402
from tests.ops.test_selective_scan import make_inputs, rel_err, run, tensors  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ELEMENTWISE_SCAN = interpreter.ScanOps.generic_scan  # Triton's own


def vectorised_scan(self, inputs):
    """Drop-in for ``ScanOps.generic_scan`` of Triton's interpreter: the inclusive scan along ``self.axis`` with
    ``self.combine_fn`` (combine(earlier, later), as the element-by-element loop calls it), computed by doubling:
    at step k every position i >= k combines the aggregate ending at i - k with its own. Works on full-length
    arrays (Triton blocks have power-of-two shapes) and keeps positions < k."""
    dtypes = [t.dtype for t in inputs]
    acc = [np.moveaxis(t.handle.data, self.axis, 0).copy() for t in inputs]
    k = 1
    while k < acc[0].shape[0]:
        earlier = [self.to_tensor(np.roll(a, k, axis=0), dt) for a, dt in zip(acc, dtypes)]
        later = [self.to_tensor(a, dt) for a, dt in zip(acc, dtypes)]
        with np.errstate(all="ignore"):  # the wrapped-around rows (< k) are discarded
            out = self.combine_fn.fn(*earlier, *later)
        for a, o in zip(acc, out if isinstance(out, tuple) else (out,)):
            a[k:] = o.handle.data[k:]
        k *= 2
    return [self.to_tensor(np.moveaxis(a, 0, self.axis), dt) for a, dt in zip(acc, dtypes)]


@triton.jit
def _scans_kernel(a_ptr, x_ptr, out_ptr):
    """The kernel's three scans on a (2, 4, 8) float64 tile; out: (7, 2, 4, 8) = p, h, p, h, e, q, G."""
    offs = (tl.arange(0, 2)[:, None, None] * 4 + tl.arange(0, 4)[None, :, None]) * 8 + tl.arange(0, 8)[None, None, :]
    a = tl.load(a_ptr + offs)
    x = tl.load(x_ptr + offs)
    p, h = tl.associative_scan((a, x), 2, st._scan_combine)
    tl.store(out_ptr + offs, p)
    tl.store(out_ptr + 64 + offs, h)
    p, h, e = tl.associative_scan((a, x, tl.zeros_like(a)), 2, st._forward_combine)
    tl.store(out_ptr + 128 + offs, p)
    tl.store(out_ptr + 192 + offs, h)
    tl.store(out_ptr + 256 + offs, e)
    q, _, v = tl.associative_scan((tl.full(a.shape, 1.0, tl.float64), a, x), 2, st._adjoint_combine, reverse=True)
    tl.store(out_ptr + 320 + offs, q)
    tl.store(out_ptr + 384 + offs, v)


def _scan_check(case: dict) -> dict:
    """Max abs difference between the vectorised and the element-by-element interpreter scans of the kernel's three
    combine functions (forward and reverse), and of the vectorised results from the recurrences, in float64."""

    g = torch.Generator().manual_seed(0)
    a, x = torch.rand(2, 4, 8, generator=g, dtype=torch.float64), torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
    outs = {}
    for name, impl in (("vectorised", vectorised_scan), ("elementwise", ELEMENTWISE_SCAN)):
        interpreter.ScanOps.generic_scan = impl
        outs[name] = torch.empty(7, 2, 4, 8, dtype=torch.float64)
        _scans_kernel[(1,)](a, x, outs[name])
    interpreter.ScanOps.generic_scan = vectorised_scan
    # the recurrences the combines stand for, step by step: h_t = a_t h_{t-1} + x_t, e_t = a_t h_{t-1},
    # G_t = a_{t+1} G_{t+1} + x_t
    h, hs, es = torch.zeros(2, 4, dtype=torch.float64), [], []
    for t in range(8):
        es.append(a[..., t] * h)
        h = a[..., t] * h + x[..., t]
        hs.append(h)
    adj, gs = x[..., 7], [x[..., 7]]
    for t in range(6, -1, -1):
        adj = a[..., t + 1] * adj + x[..., t]
        gs.insert(0, adj)
    expected = {1: hs, 3: hs, 4: es, 6: gs}
    v = outs["vectorised"]
    return {"max_diff": (v - outs["elementwise"]).abs().max().item(),
            "recurrence_err": max((v[i] - torch.stack(seq, -1)).abs().max().item() for i, seq in expected.items())}


@contextlib.contextmanager
def launch_settings(settings: dict):
    """Override launch-configuration constants of the kernel module (MAX_CHUNK, MAX_BLOCK_D, ...) for a case."""
    saved = {name: getattr(st, name) for name in settings}
    try:
        st.__dict__.update(settings)
        yield
    finally:
        st.__dict__.update(saved)


def _kernel_case(case: dict) -> dict:
    """Relative errors of the triton backend's output and gradients against the float64 reference, given the same
    (dtype-rounded) inputs; A, D and delta_bias stay float32 parameters for 16-bit inputs, as in SS2D."""
    with launch_settings(case.get("settings", {})):  # e.g. a smaller MAX_BLOCK_D: several blocks per group
        return _compare_kernel(case)


def _compare_kernel(case: dict) -> dict:
    dtype = getattr(torch, case["dtype"])
    inputs = make_inputs(case["layout"], case["chans"], case["N"], case["L"], tuple(case["options"]),
                         batch=case.get("batch", 2), groups=case.get("groups", 4), stress=case.get("stress", False))
    if case.get("above_threshold"):
        inputs["delta"][:, :, ::3] += 25.0
    params = ("A", "D", "delta_bias")
    low = dtype in (torch.bfloat16, torch.float16)
    inputs = {**inputs, **{k: v.to(torch.float32 if low and k in params else dtype).double()
                           for k, v in tensors(inputs).items()}}
    dout = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(1)).to(dtype).double()
    ref = run(inputs, torch.float64, "oracle", dout)
    leaves = {k: v.to(torch.float32 if low and k in params else dtype).requires_grad_()
              for k, v in tensors(inputs).items()}
    out = selective_scan(**{**inputs, **leaves}, backend="triton")
    out.backward(dout.to(dtype))
    got = {"out": out, **{k: v.grad for k, v in leaves.items()}}
    groups = case.get("groups", 4) if case["layout"] in ("grouped", "mixed") else 1
    blocks = st.launch_config(case.get("batch", 2), groups, case["chans"], case["L"], case["N"], out.device)
    return {"errors": {k: rel_err(got[k].double(), ref[k]) for k in ref},
            "dtypes_ok": all(got[k].dtype == leaves[k].dtype for k in leaves) and out.dtype == dtype,
            "finite": all(bool(torch.isfinite(v).all()) for v in got.values()),
            "grid": {**blocks, "chunks": -(-case["L"] // blocks["chunk"]),
                     "blocks_per_group": -(-case["chans"] // blocks["block_bwd"])}}


def _model_case(case: dict) -> dict:
    """Relative errors of a tiny model's outputs built with ``model.scan_backend: triton``, against the same model
    (same weights) run with the torch backend; eval mode, no gradient."""
    with launch_settings(case.get("settings", {})):
        return _compare_model(case)


@contextlib.contextmanager
def gpu_data_movement(enabled: bool):
    """The fast execution's GPU path on the CPU: one scan call for all layers of a stage, one gather per direction
    set (as tests/test_execution.py does)."""
    import models.ops.scan_orders as orders
    import models.task_batched as batched

    saved = batched.scan_calls, orders.structured_layout
    try:
        if enabled:
            batched.scan_calls = lambda x, groups: 1
            orders.structured_layout = lambda scan_orders, device: False
        yield
    finally:
        batched.scan_calls, orders.structured_layout = saved


def _compare_model(case: dict) -> dict:
    with gpu_data_movement(case.get("gpu_data_movement", False)):
        return _model_outputs_error(case)


def _model_outputs_error(case: dict) -> dict:
    from models import build_model
    from utils.config import load_config

    h, w = case["size"]
    cfg = load_config(REPO / case["config"], [*case["opts"], f"TRAIN.SCALE=[{h},{w}]", f"TEST.SCALE=[{h},{w}]",
                                              "model.scan_backend=triton"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    generator = torch.Generator().manual_seed(1)
    shapes = [x.shape for x in model.example_inputs(1)] if hasattr(model, "example_inputs") else [(1, 3, h, w)]
    inputs = [torch.randn(shape, generator=generator) for shape in shapes]     # e.g. MambaSeg's frame and events
    scan_modules = [m for m in model.modules() if hasattr(m, "scan_backend")]
    outs = {}
    for backend in ("triton", "torch"):
        for m in scan_modules:
            m.scan_backend = backend
        with torch.no_grad():
            outs[backend] = model(*inputs)
    rel = {t: ((outs["triton"][t] - outs["torch"][t]).norm() / outs["torch"][t].norm()).item() for t in outs["torch"]}
    return {"errors": rel, "scan_modules": len(scan_modules), "built_backend": cfg.model.scan_backend}


def main() -> None:
    torch.set_num_threads(1)
    interpreter.ScanOps.generic_scan = vectorised_scan
    handlers = {"kernel": _kernel_case, "model": _model_case, "scan_check": _scan_check}
    results = []
    for case in json.loads(sys.stdin.read()):
        start, cpu = time.perf_counter(), time.process_time()
        result = handlers[case["kind"]](case)
        results.append({**result, "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu})
    print(json.dumps(results))


if __name__ == "__main__":
    main()

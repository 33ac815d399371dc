"""selective_scan: the torch backend against the float64 sequential reference (forward and every gradient), gradcheck,
channel blocking, dispatch and its errors, dtypes, tracing to a single op, and CUDA parity (skipped without the kernel).
"""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import models.ops.selective_scan as scan_ops
from models.ops.selective_scan import SCAN_FUNCTION_NAMES, available_backends, selective_scan, selective_scan_ref

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# B/C layouts: grouped (batch, G, N, L); 3d (batch, N, L); const (dim, N); mixed: grouped B with a time-invariant C
LAYOUTS = ("grouped", "3d", "const", "mixed")
OPTIONS = list(itertools.product((True, False), repeat=4))  # (D, z, delta_bias, delta_softplus)
HAS_KERNEL = scan_ops.selective_scan_cuda is not None


def make_inputs(layout, chans, N, L, options=(True,) * 4, batch=2, groups=4, stress=False, seed=0):
    """float64 scan inputs (kwargs of selective_scan) built like an SS2D layer at init.

    A = -[1..N]; softplus(delta_bias) log-uniform in [1e-3, 0.1] (up to 2 with ``stress``, like a trained model);
    delta ~ 0.1·N(0,1); u = silu(N(0,1)); B, C ~ 0.5·N(0,1). ``chans`` channels per group; 3d/const have one group.
    Without softplus, delta is made positive (softplus applied here) so that every decay is ≤ 1.
    """
    use_D, use_z, use_bias, softplus = options
    groups = 1 if layout in ("3d", "const") else groups
    dim = groups * chans
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    dt_max = 2.0 if stress else 0.1
    dt = torch.exp(torch.empty(dim, dtype=torch.float64).uniform_(math.log(1e-3), math.log(dt_max), generator=g))
    bias = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
    delta = (0.5 if stress else 0.1) * randn(batch, dim, L)
    if not softplus:
        delta, bias = F.softplus(delta + bias[:, None]), 1e-3 * torch.rand(dim, generator=g, dtype=torch.float64)
    grouped, three_d, const = (batch, groups, N, L), (batch, N, L), (dim, N)
    B_shape, C_shape = {"grouped": (grouped, grouped), "3d": (three_d, three_d), "const": (const, const),
                        "mixed": (grouped, const)}[layout]
    return dict(
        u=F.silu(randn(batch, dim, L)),
        delta=delta,
        A=-torch.arange(1, N + 1, dtype=torch.float64).repeat(dim, 1),
        B=0.5 * randn(*B_shape),
        C=0.5 * randn(*C_shape),
        D=1 + 0.1 * randn(dim) if use_D else None,
        z=randn(batch, dim, L) if use_z else None,
        delta_bias=bias if use_bias else None,
        delta_softplus=softplus,
    )


def tensors(inputs):
    return {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}


def run(inputs, dtype, backend, dout, device="cpu"):
    """Output and the gradients of all tensor inputs, computed in ``dtype``, returned in float64 on the CPU."""
    leaves = {k: v.to(device, dtype, copy=True).requires_grad_() for k, v in tensors(inputs).items()}
    kwargs = {**inputs, **leaves}
    if backend == "oracle":
        out = selective_scan_ref(**kwargs)
    else:
        out = selective_scan(**kwargs, backend=backend)
    out.backward(dout.to(device, dtype))
    return {"out": out.double().cpu(), **{k: v.grad.double().cpu() for k, v in leaves.items()}}


def rel_err(x, ref):
    """‖x - ref‖ / ‖ref‖ (absolute when ref is exactly zero, e.g. dA at L = 1)."""
    diff = (x - ref).norm().item()
    return diff / ref.norm().item() if ref.norm() > 0 else diff


def assert_close(got, ref, tol):
    """Every tensor's relative error within ``tol`` (a float, or a dict by name)."""
    assert got.keys() == ref.keys()
    tol = tol if isinstance(tol, dict) else dict.fromkeys(ref, tol)
    errors = {k: rel_err(got[k], ref[k]) for k in ref}
    assert all(torch.isfinite(got[k]).all() for k in got), errors
    assert all(errors[k] <= tol[k] for k in ref), (errors, tol)


def compare_with_reference(inputs, dtype, backend="torch", tol=None):
    """``backend`` in ``dtype`` against the float64 reference, both given the same (dtype-rounded) values.

    Default tolerance (TOL): 1e-10 in float64; 1e-5 in float32 for the output and each gradient, except where fp32
    arithmetic cannot reach it (cancellation in a short sum, e.g. dD of a single channel at L = 1): there within 10x
    the error of plain fp32 autograd through the reference loop.
    """
    inputs = {**inputs, **{k: v.to(dtype).double() for k, v in tensors(inputs).items()}}
    dout = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(1)).to(dtype).double()
    ref = run(inputs, torch.float64, "oracle", dout)
    if tol is None:
        tol = TOL[dtype]
        if dtype == torch.float32:
            fp32_loop = run(inputs, dtype, "oracle", dout)
            tol = {k: max(tol, 10 * rel_err(fp32_loop[k], ref[k])) for k in ref}
    assert_close(run(inputs, dtype, backend, dout), ref, tol)


TOL = {torch.float32: 1e-5, torch.float64: 1e-10}

# every layout x channels per group x N x short L, cycling through the 16 option combinations
SHORT_CASES = [
    (layout, chans, N, L, OPTIONS[i % len(OPTIONS)])
    for i, (layout, chans, N, L) in enumerate(itertools.product(LAYOUTS, (1, 7, 64), (1, 16), (1, 2, 63)))
]
# L = 1000: fewer combinations (batch 1)
LONG_CASES = [
    ("grouped", 64, 16, (True, False, True, True), False),
    ("grouped", 7, 16, (True, True, True, True), True),
    ("3d", 7, 1, (False, False, False, False), False),
    ("const", 1, 16, (True, True, True, True), False),
    ("mixed", 7, 16, (False, True, True, True), True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("layout,chans,N,L,options", SHORT_CASES)
def test_torch_matches_reference(layout, chans, N, L, options, dtype):
    compare_with_reference(make_inputs(layout, chans, N, L, options), dtype)


@pytest.mark.parametrize("layout,chans,N,options,stress", LONG_CASES)
def test_torch_matches_reference_long(layout, chans, N, options, stress):
    inputs = make_inputs(layout, chans, N, 1000, options, batch=1, stress=stress)
    compare_with_reference(inputs, torch.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_stress_dt_matches_reference(layout):
    compare_with_reference(make_inputs(layout, 7, 16, 63, stress=True), torch.float32)


def test_softplus_threshold_matches_reference():
    inputs = make_inputs("grouped", 7, 4, 63)
    inputs["delta"][:, :, ::3] += 25.0  # above F.softplus's threshold (20): identity, gradient 1
    compare_with_reference(inputs, torch.float64)


@pytest.mark.parametrize("backend", ["oracle", "torch", "reference"])
def test_matches_hand_computation(backend):
    # L = 2, N = 1: h0 = Δ0 B0 u0; h1 = exp(Δ1 A) h0 + Δ1 B1 u1; y_t = C_t h_t + D u_t
    inputs = dict(
        u=torch.tensor([[[0.5, -1.0]]]),
        delta=torch.tensor([[[0.2, 0.3]]]),
        A=torch.tensor([[-2.0]]),
        B=torch.tensor([[[1.5, -0.5]]]),
        C=torch.tensor([[[0.7, 2.0]]]),
        D=torch.tensor([3.0]),
    )
    h0 = 0.2 * 1.5 * 0.5
    h1 = math.exp(0.3 * -2.0) * h0 + 0.3 * -0.5 * -1.0
    expected = torch.tensor([[[0.7 * h0 + 3.0 * 0.5, 2.0 * h1 + 3.0 * -1.0]]])
    out = selective_scan_ref(**inputs) if backend == "oracle" else selective_scan(**inputs, backend=backend)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("options", [(True,) * 4, (False,) * 4], ids=["all", "none"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_gradcheck(layout, options, monkeypatch):
    monkeypatch.setattr(scan_ops, "_BLOCK_BYTES", 1)  # one channel per block: exercises the block loop
    inputs = make_inputs(layout, 3, 3, 7, options, groups=2)  # L = 7: T = 3, padded to 9
    names = list(tensors(inputs))
    leaves = [inputs[k].clone().requires_grad_() for k in names]

    def scan(*tensors):
        return selective_scan(**{**inputs, **dict(zip(names, tensors))}, backend="torch")

    assert torch.autograd.gradcheck(scan, leaves)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_channel_blocking_gives_same_result(layout, monkeypatch):
    inputs = make_inputs(layout, 7, 16, 63)
    dout = torch.randn(inputs["u"].shape, dtype=torch.float64)
    whole = run(inputs, torch.float64, "torch", dout)
    layout_ = scan_ops._ChunkedScan(*(inputs[k] for k in NAMES))
    channel_bytes = (layout_.nC * layout_.T + 1) * layout_.batch * layout_.G * layout_.N * 8
    monkeypatch.setattr(scan_ops, "_BLOCK_BYTES", 3 * channel_bytes)  # 3 of the 7 channels per block
    assert [b.stop - b.start for b in scan_ops._ChunkedScan(*(inputs[k] for k in NAMES)).blocks] == [3, 3, 1]
    assert_close(run(inputs, torch.float64, "torch", dout), whole, 1e-12)


def test_three_dim_bc_equals_one_group():
    inputs = make_inputs("3d", 7, 16, 63)
    grouped = {**inputs, "B": inputs["B"].unsqueeze(1), "C": inputs["C"].unsqueeze(1)}
    torch.testing.assert_close(selective_scan(**inputs, backend="torch"), selective_scan(**grouped, backend="torch"))


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_output_and_gradient_dtypes(backend, dtype):
    inputs = make_inputs("grouped", 2, 4, 5)
    leaves = {k: v.to(dtype, copy=True).requires_grad_() for k, v in tensors(inputs).items()}
    leaves["A"] = inputs["A"].float().requires_grad_()  # A, D, delta_bias are float32 parameters in SS2D
    out = selective_scan(**{**inputs, **leaves}, backend=backend)
    assert out.dtype == dtype and out.shape == inputs["u"].shape
    out.float().sum().backward()
    for name, leaf in leaves.items():
        assert leaf.grad.dtype == leaf.dtype and leaf.grad.shape == leaf.shape, name


def test_reference_backend_matches_reference_function():
    compare_with_reference(make_inputs("mixed", 7, 16, 63), torch.float64, "reference", tol=1e-12)


def test_auto_uses_torch_on_cpu(monkeypatch):
    monkeypatch.delenv(scan_ops.BACKEND_ENV, raising=False)
    inputs = make_inputs("grouped", 2, 4, 5)
    inputs["u"].requires_grad_()
    assert type(selective_scan(**inputs).grad_fn).__name__ == "SelectiveScanTorchFnBackward"


def test_environment_overrides_auto(monkeypatch):
    inputs = make_inputs("grouped", 2, 4, 5)
    inputs["u"].requires_grad_()
    monkeypatch.setenv(scan_ops.BACKEND_ENV, "reference")
    assert type(selective_scan(**inputs).grad_fn).__name__ == "SelectiveScanRefFnBackward"
    assert type(selective_scan(**inputs, backend="torch").grad_fn).__name__ == "SelectiveScanTorchFnBackward"
    monkeypatch.setenv(scan_ops.BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match=scan_ops.BACKEND_ENV):
        selective_scan(**inputs)


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError) as info:
        selective_scan(**make_inputs("grouped", 2, 4, 5), backend="fast")
    assert all(name in str(info.value) for name in ("auto", "cuda", "triton", "torch", "reference"))


@pytest.mark.skipif(HAS_KERNEL, reason="selective_scan_cuda is installed")
def test_cuda_backend_without_kernel_says_how_to_install():
    assert "cuda" not in available_backends()
    with pytest.raises(RuntimeError, match="requirements-cuda.txt"):
        selective_scan(**make_inputs("grouped", 2, 4, 5), backend="cuda")


def test_available_backends():
    assert {"torch", "reference"} <= set(available_backends()) <= {"cuda", "triton", "torch", "reference"}
    assert ("cuda" in available_backends()) == HAS_KERNEL


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit.trace` is deprecated")
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_traces_to_a_single_op(backend):
    """The FLOP counter sees one prim::PythonOp and reads (batch, dim, L) from input 0 and (dim, N) from input 2."""
    inputs = make_inputs("grouped", 3, 4, 6, options=(True, False, True, True))
    graph = torch.jit.trace(
        lambda u, delta, A, B, C: selective_scan(u, delta, A, B, C, inputs["D"], None, inputs["delta_bias"],
                                                 True, backend=backend),
        tuple(inputs[k] for k in ("u", "delta", "A", "B", "C")),
    ).graph
    ops = [node for node in graph.nodes() if node.kind() == "prim::PythonOp"]
    assert len(ops) == 1 and ops[0].pyname() in SCAN_FUNCTION_NAMES
    args = list(ops[0].inputs())
    assert args[0].type().sizes() == list(inputs["u"].shape)
    assert args[2].type().sizes() == list(inputs["A"].shape)


@pytest.mark.skipif(not (HAS_KERNEL and torch.cuda.is_available()), reason="needs CUDA and selective_scan_cuda")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("L", [63, 4100])  # the kernel works in chunks of 2048 steps
@pytest.mark.parametrize("N", [1, 16])     # d_state 1: VMamba-T's encoder blocks
def test_cuda_matches_torch(layout, L, N):
    inputs = make_inputs(layout, 16, N, L, batch=2)
    dout = torch.randn(inputs["u"].shape, dtype=torch.float64)
    # norm-relative: well inside mamba-ssm's own elementwise fp32 tolerance (the kernel is built with fast math)
    assert_close(run(inputs, torch.float32, "cuda", dout, "cuda"), run(inputs, torch.float32, "torch", dout, "cuda"),
                 1e-4)

"""Selective scan (S6) from Mamba (Gu & Dao, 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", Alg. 2), with exactly the semantics of mamba-ssm's ``selective_scan_fn`` (real A, no last state).

For batch b, channel d in group g = d // (dim // G), state n and time t (h_{-1} = 0):

    Δ_t = softplus(delta_t + delta_bias[d])              softplus only if delta_softplus (F.softplus, threshold 20)
    h_t = exp(Δ_t A[d, n]) h_{t-1} + Δ_t B[b, g, n, t] u_t      Eq. (2a); B is discretised as Δ·B, not ZOH (Eq. 4)
    y_t = Σ_n C[b, g, n, t] h_t[n] + D[d] u_t                    Eq. (2b) plus the skip D
    out = y · silu(z)                                            if z is given

The output has u's dtype; the scan runs in float32 (float64 when an input is float64).

Backends, picked by ``selective_scan(..., backend=...)``:
* ``"cuda"``: mamba-ssm's compiled kernel ``selective_scan_cuda`` (optional, ``requirements-cuda.txt``);
* ``"triton"``: Triton kernels compiled at run time (:mod:`models.ops.selective_scan_triton`, imported on first use):
  the fast GPU scan without any build step; CPU tensors only under Triton's interpreter (``TRITON_INTERPRET=1``);
* ``"torch"``: a chunked pure-PyTorch scan with a hand-written backward (CPU, or GPU without the kernel);
* ``"reference"``: the sequential loop ``selective_scan_ref`` under autograd (tests and debugging).
Each backend is one ``torch.autograd.Function`` whose input 0 is u and input 2 is A, so a traced model shows the scan as
a single ``prim::PythonOp.<name>`` node (names in ``SCAN_FUNCTION_NAMES``) for the FLOP counter.
"""
import contextlib
import functools
import importlib
import itertools
import logging
import math
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

try:  # optional; installed by requirements-cuda.txt
    import selective_scan_cuda
except ImportError:
    selective_scan_cuda = None

__all__ = ["selective_scan", "selective_scan_ref", "available_backends", "shapes_only", "SCAN_FUNCTION_NAMES", "BACKENDS"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "cuda", "triton", "torch", "reference")
BACKEND_ENV = "MTL_SCAN_BACKEND"  # replaces backend="auto", e.g. MTL_SCAN_BACKEND=reference for debugging
SOFTPLUS_THRESHOLD = 20.0  # F.softplus default, and what the CUDA kernel uses
# torch backend: bytes per work buffer (one (L, batch, G, dblk, N) state tensor). CPU: small blocks stay cache-friendly;
# a GPU is launch-bound, so fewer, larger blocks (10x faster than 32 MB on an H100 at the decoder's sizes, <= 2 GB peak)
_BLOCK_BYTES = 32 * 2**20
_GPU_BLOCK_BYTES = 256 * 2**20


def _compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """float64 when any given tensor is float64, else float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _num_groups(B: Tensor, C: Tensor, dim: int) -> int:
    """G of the input-dependent B/C: (batch, G, N, L) -> G, (batch, N, L) -> 1; 1 when both are time-invariant."""
    groups = {int(x.shape[1]) if x.dim() == 4 else 1 for x in (B, C) if x.dim() > 2}  # int(): traced sizes
    if len(groups) > 1:
        raise ValueError(f"B and C must have the same number of groups, got {sorted(groups)}")
    G = groups.pop() if groups else 1
    if dim % G:
        raise ValueError(f"dim={dim} is not divisible by the number of B/C groups G={G}")
    return G


def _discretise_dt(raw: Tensor, delta_softplus: bool) -> Tensor:
    """Δ = softplus(delta + delta_bias) when delta_softplus, else delta + delta_bias (given as ``raw``)."""
    return F.softplus(raw, threshold=SOFTPLUS_THRESHOLD) if delta_softplus else raw


# ----------------------------------------------------------------------------------------------------------------------
# Reference: the sequential loop (test oracle)
# ----------------------------------------------------------------------------------------------------------------------
def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Sequential S6 scan under plain autograd; float64-capable. The oracle for the other backends.

    Shapes: u, delta, z (batch, dim, L); A (dim, N); B, C each (dim, N) time-invariant, (batch, N, L), or grouped
    (batch, G, N, L) where channel d uses group d // (dim // G); D, delta_bias (dim,). Returns (batch, dim, L) in
    u.dtype. Per step (Mamba Eq. 2a/2b): h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t;  y_t = C_t h_t + D u_t.

    The loop takes its per-step slices with ``unbind``: indexing a precomputed (L, ...) tensor as ``x[t]`` makes the
    backward quadratic in L (every step's backward materialises a full-size zero gradient).
    """
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, L = u.shape
    G = _num_groups(B, C, dim)
    uf = u.to(dtype)
    raw = delta.to(dtype) if delta_bias is None else delta.to(dtype) + delta_bias.to(dtype)[:, None]
    dt = _discretise_dt(raw, delta_softplus)

    k = dim // G  # channel d is channel d % k of group d // k

    def per_step(x: Tensor) -> Tensor:  # (batch, dim, L) -> (L, batch, G, k, 1), time-major
        return x.reshape(batch, G, k, L).permute(3, 0, 1, 2).contiguous().unsqueeze(-1)

    def state_param(M: Tensor) -> Tensor:  # B or C: (dim, N) -> (G, k, N); (batch, [G,] N, L) -> (L, batch, G, 1, N)
        M = M.to(dtype)
        return M.reshape(G, k, -1) if M.dim() == 2 else M.reshape(batch, G, 1, -1, L).permute(4, 0, 1, 2, 3)

    decay = torch.exp(per_step(dt) * A.to(dtype).reshape(G, k, -1))  # exp(Δ A): (L, batch, G, k, N)
    inputs = per_step(dt * uf) * state_param(B)  # Δ B u: (L, batch, G, k, N)
    C_g = state_param(C)
    C_steps = C_g.unbind(0) if C_g.dim() == 5 else itertools.repeat(C_g, L)

    h = uf.new_zeros(decay.shape[1:])
    ys = []
    for a_t, x_t, c_t in zip(decay.unbind(0), inputs.unbind(0), C_steps):
        h = a_t * h + x_t  # Eq. (2a)
        ys.append((h * c_t).sum(-1))  # Eq. (2b)
    y = torch.stack(ys, dim=-1).reshape(batch, dim, L)
    if D is not None:
        y = y + D.to(dtype)[:, None] * uf
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype)


class SelectiveScanRefFn(torch.autograd.Function):
    """``selective_scan_ref`` as one opaque autograd node (the "reference" backend).

    forward builds the loop's graph on detached inputs; backward differentiates it with ``torch.autograd.grad``.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        inputs = [
            None if t is None else t.detach().requires_grad_(needs)
            for t, needs in zip((u, delta, A, B, C, D, z, delta_bias), ctx.needs_input_grad)
        ]
        with torch.enable_grad():
            out = selective_scan_ref(*inputs, delta_softplus=delta_softplus)
        ctx.graph = (inputs, out)
        return out.detach()

    @staticmethod
    def backward(ctx, dout):
        inputs, out = ctx.graph
        del ctx.graph
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, dout))
        return (*(next(grads) if t is not None and t.requires_grad else None for t in inputs), None)


# ----------------------------------------------------------------------------------------------------------------------
# Torch backend: two-level chunked in-place scan, channel blocking, closed-form backward
# ----------------------------------------------------------------------------------------------------------------------
def _scan_(x: Tensor, a: Tensor, reverse: bool = False) -> Tensor:
    """Linear recurrence over chunked time, in place in x; x, a: (nC, T, ...), time t = c·T + i.

    forward: x_t <- a_t x_{t-1} + x_t (x_{-1} = 0); reverse: x_t <- a_t x_{t+1} + x_t (x_{nC·T} = 0).
    Level 1 scans inside all chunks at once (T steps); level 2 carries the chunk-end states across chunks (nC steps)
    with the chunk decay products; a T-step correction then adds (running decay product) · (carried-in state) to the
    other steps of every chunk. Only products of decays are formed, never their inverses.
    """
    nC, T = x.shape[:2]
    step = -1 if reverse else 1
    first, last = (T - 1, 0) if reverse else (0, T - 1)
    inner = range(T - 2, -1, -1) if reverse else range(1, T)
    x_steps, a_steps = x.unbind(1), a.unbind(1)  # views, one call (cheaper than indexing in the loops)
    for t in inner:  # level 1: x_t += a_t x_{t-step} within every chunk
        x_steps[t].addcmul_(a_steps[t], x_steps[t - step])
    if nC == 1:
        return x
    ends, chunk_decay = x_steps[last].unbind(0), a.prod(1).unbind(0)
    for c in range(nC - 2, -1, -1) if reverse else range(1, nC):  # level 2: carry chunk-end states
        ends[c].addcmul_(chunk_decay[c], ends[c - step])
    own, prev = (slice(0, nC - 1), slice(1, nC)) if reverse else (slice(1, nC), slice(0, nC - 1))
    carry = x_steps[last][prev]  # the true state entering each chunk `own`
    x_own, a_own = x[own].unbind(1), a[own].unbind(1)
    decay = a_own[first].clone()
    for t in (first, *inner[:-1]):  # correction of every step but `last`
        x_own[t].addcmul_(decay, carry)
        decay.mul_(a_own[t + step])
    return x


class _ChunkedScan:
    """Layout and work buffers shared by forward and backward of ``SelectiveScanTorchFn``.

    Channels are viewed as (G, dg), dg = dim // G. A block takes channels ``sl`` (at most k) of every group and lays
    them out time-major: (L, batch, G, k) for per-channel sequences and (Lp, batch, G, k, N) for states, where
    Lp = nC·T, T = ceil(sqrt(L)), nC = ceil(L / T). k is chosen so that one work buffer, (Lp + 1, batch, G, k, N),
    stays within ``_BLOCK_BYTES`` (``_GPU_BLOCK_BYTES`` off the CPU); the buffers are allocated once per call and
    reused by every block.
    Input-dependent B, C are kept as (L, batch, G, N), time-invariant ones as (G, dg, N).
    """

    def __init__(
        self,
        u: Tensor,
        delta: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Optional[Tensor],
        z: Optional[Tensor],
        delta_bias: Optional[Tensor],
    ) -> None:
        self.dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
        self.batch, self.dim, self.L = u.shape
        self.N = A.shape[1]
        self.G = _num_groups(B, C, self.dim)
        self.dg = self.dim // self.G
        self.T = math.isqrt(self.L - 1) + 1
        self.nC = -(-self.L // self.T)
        self.A = self.per_channel(A)
        self.B, self.C = self.bc_layout(B), self.bc_layout(C)
        self.D = None if D is None else self.per_channel(D)
        self.delta_bias = None if delta_bias is None else self.per_channel(delta_bias)
        budget = _BLOCK_BYTES if u.device.type == "cpu" else _GPU_BLOCK_BYTES
        channel_bytes = (self.nC * self.T + 1) * self.batch * self.G * self.N * self.dtype.itemsize
        n_blocks = -(-self.dg // max(1, budget // channel_bytes))
        self.k = -(-self.dg // n_blocks)
        self.blocks = [slice(j, min(j + self.k, self.dg)) for j in range(0, self.dg, self.k)]

    def per_channel(self, x: Tensor) -> Tensor:
        """(dim, ...) -> (G, dg, ...) in the compute dtype."""
        return x.to(self.dtype).reshape(self.G, self.dg, *x.shape[1:])

    def bc_layout(self, M: Tensor) -> Tensor:
        """(dim, N) -> (G, dg, N); (batch, [G,] N, L) -> (L, batch, G, N) contiguous."""
        if M.dim() == 2:
            return self.per_channel(M)
        M = M.reshape(self.batch, self.G, self.N, self.L).permute(3, 0, 1, 2)
        return M.to(self.dtype, memory_format=torch.contiguous_format)

    def grouped(self, x: Tensor) -> Tensor:
        """(batch, dim, L) -> (batch, G, dg, L), a view when possible."""
        return x.reshape(self.batch, self.G, self.dg, self.L)

    def time_major(self, x: Tensor, sl: slice) -> Tensor:
        """Block of a grouped (batch, G, dg, L) tensor -> (L, batch, G, k) contiguous, compute dtype."""
        return x[:, :, sl].permute(3, 0, 1, 2).to(self.dtype, memory_format=torch.contiguous_format)

    def work_buffers(self, count: int, like: Tensor) -> list[Tensor]:
        """``count`` flat buffers, each holding one (Lp + 1, batch, G, k, N) tensor of the largest block."""
        numel = (self.nC * self.T + 1) * self.batch * self.G * self.k * self.N
        return [like.new_empty(numel, dtype=self.dtype) for _ in range(count)]

    def state_view(self, buf: Tensor, rows: int, dt: Tensor) -> Tensor:
        """A contiguous (rows, batch, G, k_block, N) view at the start of a work buffer (dt: (L, batch, G, k_block))."""
        shape = (rows, *dt.shape[1:], self.N)
        return buf[: math.prod(shape)].view(shape)

    def block_bc(self, M: Tensor, sl: slice) -> Tensor:
        """B or C of a block, broadcastable against (L, batch, G, k, N)."""
        return M.unsqueeze(3) if M.dim() == 4 else M[:, sl]

    def contract_state(self, X: Tensor, M: Tensor, sl: slice) -> Tensor:
        """Σ_n X[..., n] M[..., n]: (L, batch, G, k, N) with B or C -> (L, batch, G, k)."""
        if M.dim() == 4:
            return torch.einsum("lbgkn,lbgn->lbgk", X, M)
        return torch.einsum("lbgkn,gkn->lbgk", X, M[:, sl])

    def reduce_channels(self, X: Tensor, w: Tensor, M: Tensor) -> Tensor:
        """Gradient w.r.t. B or C from one block: Σ_k X·w -> (L, batch, G, N), or Σ_{L,batch} X·w -> (G, k, N)
        when M (the parameter) is time-invariant. X: (L, batch, G, k, N); w: (L, batch, G, k)."""
        if M.dim() == 4:
            return torch.einsum("lbgkn,lbgk->lbgn", X, w)
        return torch.einsum("lbgkn,lbgk->gkn", X, w)

    def block_dt(self, delta: Tensor, sl: slice, delta_softplus: bool) -> tuple[Tensor, Tensor]:
        """(delta + delta_bias, Δ) of a block, both (L, batch, G, k)."""
        raw = self.time_major(delta, sl)
        if self.delta_bias is not None:
            raw = raw + self.delta_bias[:, sl]
        return raw, _discretise_dt(raw, delta_softplus)

    def states(
        self, dt: Tensor, dtu: Tensor, sl: slice, decay_buf: Tensor, state_buf: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Decays and states of one block (Eq. 2a), from Δ and Δ·u (L, batch, G, k), in the given work buffers.

        Returns decay (Lp + 1, batch, G, k, N) = exp(Δ_t A) at rows t < L and 1 below, and the states
        H (Lp, batch, G, k, N) (rows >= L are padding).
        """
        L, Lp = self.L, self.nC * self.T
        decay = self.state_view(decay_buf, Lp + 1, dt)
        torch.mul(dt.unsqueeze(-1), self.A[:, sl], out=decay[:L]).exp_()
        decay[L:].fill_(1.0)
        H = self.state_view(state_buf, Lp, dt)
        torch.mul(dtu.unsqueeze(-1), self.block_bc(self.B, sl), out=H[:L])
        H[L:].zero_()
        chunked = (self.nC, self.T, *H.shape[1:])
        _scan_(H.view(chunked), decay[:Lp].view(chunked))
        return decay, H


class SelectiveScanTorchFn(torch.autograd.Function):
    """The "torch" backend: chunked in-place scan per channel block; saves only the inputs.

    backward recomputes each block's states h_t, runs the reverse scan for the adjoint
    G_t = exp(Δ_{t+1} A) G_{t+1} + C_t dy_t, and forms every gradient in closed form; B and C sum over the channels d
    of their group, the per-channel parameters over (b, t):
    dC_t = Σ_d dy_t h_t;  dB_t = Σ_d G_t Δ_t u_t;  du_t = Δ_t Σ_n G_t B_t + D dy_t;
    dΔ_t = Σ_n G_t (A exp(Δ_t A) h_{t-1} + B_t u_t);  dA = Σ_{b,t} G_t exp(Δ_t A) h_{t-1} Δ_t;
    d delta = dΔ · softplus'(delta + bias);  d bias = Σ_{b,t} d delta;  dD = Σ_{b,t} dy_t u_t;
    with z: dy = dout · silu(z) and dz = dout · y · silu'(z).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.delta_softplus = delta_softplus
        s = _ChunkedScan(u, delta, A, B, C, D, z, delta_bias)
        u_g, delta_g = s.grouped(u), s.grouped(delta)
        buffers = s.work_buffers(2, u)
        y = u.new_empty(s.batch, s.G, s.dg, s.L, dtype=s.dtype)
        for sl in s.blocks:
            ub = s.time_major(u_g, sl)
            dt = s.block_dt(delta_g, sl, delta_softplus)[1]
            H = s.states(dt, dt * ub, sl, *buffers)[1]
            y_blk = s.contract_state(H[: s.L], s.C, sl)  # Eq. (2b)
            if s.D is not None:
                y_blk.addcmul_(s.D[:, sl], ub)
            y[:, :, sl] = y_blk.permute(1, 2, 3, 0)
        y = y.view(s.batch, s.dim, s.L)
        if z is not None:
            y.mul_(F.silu(z.to(s.dtype)))
        return y.to(u.dtype)

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        s = _ChunkedScan(u, delta, A, B, C, D, z, delta_bias)
        L, Lp = s.L, s.nC * s.T
        u_g, delta_g, dout_g = s.grouped(u), s.grouped(delta), s.grouped(dout)
        z_g = None if z is None else s.grouped(z)
        decay_buf, state_buf, adj_buf = s.work_buffers(3, u)
        per_step = functools.partial(u.new_empty, (s.batch, s.G, s.dg, L), dtype=s.dtype)
        du, ddelta, dz = per_step(), per_step(), None if z is None else per_step()
        dA = u.new_empty(s.G, s.dg, s.N, dtype=s.dtype)
        dD, ddelta_bias = u.new_empty(s.G, s.dg, dtype=s.dtype), u.new_empty(s.G, s.dg, dtype=s.dtype)
        dB = u.new_zeros(s.B.shape, dtype=s.dtype)  # input-dependent B, C: summed over blocks
        dC = u.new_zeros(s.C.shape, dtype=s.dtype)
        for sl in s.blocks:
            ub = s.time_major(u_g, sl)
            raw, dt = s.block_dt(delta_g, sl, ctx.delta_softplus)
            dtu = dt * ub
            dy = s.time_major(dout_g, sl)
            decay, H = s.states(dt, dtu, sl, decay_buf, state_buf)
            H_L = H[:L]
            if z is not None:  # out = y·silu(z)
                zb = s.time_major(z_g, sl)
                y = s.contract_state(H_L, s.C, sl)
                if s.D is not None:
                    y.addcmul_(s.D[:, sl], ub)
                sig = torch.sigmoid(zb)
                dz[:, :, sl] = (dy * y * sig * (1 + zb * (1 - sig))).permute(1, 2, 3, 0)
                dy = dy * zb * sig
            grad_C = s.reduce_channels(H_L, dy, s.C)

            # adjoint G_t = exp(Δ_{t+1} A) G_{t+1} + C_t dy_t: the reverse scan with the decays shifted by one step
            adj = s.state_view(adj_buf, Lp, dt)
            torch.mul(dy.unsqueeze(-1), s.block_bc(s.C, sl), out=adj[:L])
            adj[L:].zero_()
            chunked = (s.nC, s.T, *adj.shape[1:])
            _scan_(adj.view(chunked), decay[1:].view(chunked), reverse=True)
            adj_L = adj[:L]
            grad_B = s.reduce_channels(adj_L, dtu, s.B)
            adj_B = s.contract_state(adj_L, s.B, sl)  # Σ_n G·B
            du_blk = dt * adj_B

            # M = G_t·exp(Δ_t A)·h_{t-1}, in the decay buffer; M·A goes to the (now free) state buffer
            M = decay[:L]
            M[1:].mul_(H_L[:-1])
            M[0].zero_()
            M.mul_(adj_L)
            ddt = torch.mul(M, s.A[:, sl], out=H_L).sum(-1).addcmul_(ub, adj_B)
            dA[:, sl] = M.mul_(dt.unsqueeze(-1)).sum((0, 1))
            if ctx.delta_softplus:  # F.softplus backward: sigmoid below the threshold, 1 above
                ddt = torch.where(raw > SOFTPLUS_THRESHOLD, ddt, ddt * torch.sigmoid(raw))
            if s.D is not None:
                du_blk.addcmul_(s.D[:, sl], dy)
                dD[:, sl] = (dy * ub).sum((0, 1))
            ddelta_bias[:, sl] = ddt.sum((0, 1))
            du[:, :, sl] = du_blk.permute(1, 2, 3, 0)
            ddelta[:, :, sl] = ddt.permute(1, 2, 3, 0)
            for grad, acc, param in ((grad_B, dB, B), (grad_C, dC, C)):
                if param.dim() == 2:
                    acc[:, sl] = grad
                else:
                    acc += grad

        def back(grad: Tensor, like: Optional[Tensor]) -> Optional[Tensor]:
            return None if like is None else grad.reshape(like.shape).to(like.dtype)

        def bc_back(grad: Tensor, like: Tensor) -> Tensor:  # undo _ChunkedScan.bc_layout
            return back(grad if like.dim() == 2 else grad.permute(1, 2, 3, 0), like)

        return (
            back(du, u),
            back(ddelta, delta),
            back(dA, A),
            bc_back(dB, B),
            bc_back(dC, C),
            back(dD, D),
            back(dz, z),
            back(ddelta_bias, delta_bias),
            None,
        )


# ----------------------------------------------------------------------------------------------------------------------
# CUDA backend: mamba-ssm's kernel
# ----------------------------------------------------------------------------------------------------------------------
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_CUDA_INSTALL_HINT = (
    "the 'cuda' selective-scan backend needs mamba-ssm's compiled extension `selective_scan_cuda`, which did not "
    "import. Install it with `pip install -r requirements-cuda.txt` (it holds mamba-ssm; build it against the "
    "installed torch with `MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation mamba-ssm`), or use "
    "backend='torch'."
)


def _last_dim_contiguous(x: Optional[Tensor]) -> Optional[Tensor]:
    """x with unit stride on its last dim, as the kernel requires (None stays None)."""
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


class SelectiveScanCudaFn(torch.autograd.Function):
    """The "cuda" backend: ``selective_scan_cuda.fwd/bwd``, called as mamba-ssm's ``SelectiveScanFn`` does.

    The kernel wants u, delta, z and input-dependent B/C in one dtype (u's), A, D, delta_bias and time-invariant B/C
    in float32, 4-D B/C ((batch, N, L) becomes one group) and unit stride on the last dim; inputs are converted to
    that, and the gradients back to each input's shape and dtype.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        ctx.like = [None if t is None else (t.shape, t.dtype) for t in (u, delta, A, B, C, D, z, delta_bias)]
        ctx.delta_softplus = delta_softplus

        def bc(M: Tensor) -> Tensor:
            if M.dim() == 2:
                return _last_dim_contiguous(M.float())
            return _last_dim_contiguous(M.to(u.dtype).reshape(M.shape[0], -1, *M.shape[-2:]))

        u = _last_dim_contiguous(u)
        delta = _last_dim_contiguous(delta.to(u.dtype))
        A, B, C = A.float().contiguous(), bc(B), bc(C)
        D = None if D is None else D.float().contiguous()
        z = None if z is None else _last_dim_contiguous(z.to(u.dtype))
        delta_bias = None if delta_bias is None else delta_bias.float().contiguous()
        out, x, *rest = selective_scan_cuda.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        if z is not None:  # the kernel also returns the gated output; backward needs the ungated one
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, x, out)
            return rest[0]
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, x, None)
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias, x, out = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = selective_scan_cuda.bwd(
            u, delta, A, B, C, D, z, delta_bias, _last_dim_contiguous(dout), x, out, None, ctx.delta_softplus, False
        )
        dz = rest[0] if z is not None else None
        grads = (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)
        return (
            *(None if like is None else g.reshape(like[0]).to(like[1]) for g, like in zip(grads, ctx.like)),
            None,
        )


# ----------------------------------------------------------------------------------------------------------------------
# Dispatcher
# ----------------------------------------------------------------------------------------------------------------------
class SelectiveScanShapeFn(torch.autograd.Function):
    """Stands in for the scan inside :func:`shapes_only`: returns zeros of the output's shape and dtype."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        return torch.zeros_like(u)


_FUNCTIONS = {"cuda": SelectiveScanCudaFn, "torch": SelectiveScanTorchFn, "reference": SelectiveScanRefFn}
SCAN_FUNCTION_NAMES = (*(fn.__name__ for fn in (*_FUNCTIONS.values(), SelectiveScanShapeFn)), "SelectiveScanTritonFn")
_TRITON_MODULE = ".selective_scan_triton"
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_shapes_only = False


@contextlib.contextmanager
def shapes_only():
    """Within this context every scan returns zeros of its output's shape and dtype instead of computing.

    For FLOP counting: the counter charges the op from its input shapes alone, and tracing a full-size model
    then takes seconds instead of minutes of CPU scans. The op still traces as one ``prim::PythonOp``.
    """
    global _shapes_only
    previous, _shapes_only = _shapes_only, True
    try:
        yield
    finally:
        _shapes_only = previous


def _triton_module():
    """The Triton backend's module, imported on first use (ImportError when triton is not installed). Importing it
    builds the kernels, for the GPU or, when ``TRITON_INTERPRET=1`` is set at that moment, for Triton's interpreter."""
    return importlib.import_module(_TRITON_MODULE, __package__)


def _triton_unavailable(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Why the "triton" backend cannot run on inputs of this device and dtype, or None when it can."""
    try:
        module = _triton_module()
    except ImportError as error:
        return (f"the triton package did not import ({error}); it ships with PyTorch's CUDA wheels on Linux, "
                "else `pip install triton`")
    if dtype not in _TRITON_DTYPES:
        return f"it takes float32, bfloat16, float16 or float64 inputs, got {dtype}"
    if device.type == "cuda" or (module.INTERPRETED and device.type == "cpu"):
        return None
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return ("TRITON_INTERPRET=1 was set after models.ops.selective_scan_triton had been imported, so its kernels "
                "were built for the GPU; set it before the first import to run them on the CPU")
    if device.type == "cpu":
        return ("the inputs are CPU tensors: Triton compiles for the GPU; set TRITON_INTERPRET=1 before the first "
                "import to run its kernels on the CPU through Triton's interpreter (slow; for tests)")
    return f"the inputs are on {device.type}; Triton runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1)"


def available_backends() -> tuple[str, ...]:
    """Backends usable in this environment: "cuda" when mamba-ssm's extension imported, "triton" when triton imports
    and there is a CUDA GPU (or the kernels run in Triton's interpreter)."""
    names = [name for name in _FUNCTIONS if name != "cuda" or selective_scan_cuda is not None]
    if _triton_unavailable(torch.device("cuda" if torch.cuda.is_available() else "cpu"), torch.float32) is None:
        names.insert(names.index("torch"), "triton")
    return tuple(names)


@functools.lru_cache(maxsize=None)
def _log_auto_choice(backend: str, reason: str) -> None:
    logger.info("selective_scan: backend 'auto' uses %r (%s)", backend, reason)


def _auto_backend(u: Tensor) -> tuple[str, str]:
    """(backend, reason) of backend="auto": the CUDA extension, else Triton for CUDA tensors, else torch."""
    if not u.is_cuda:
        return "torch", f"inputs on {u.device.type}"
    if selective_scan_cuda is not None and u.dtype in _CUDA_DTYPES:
        return "cuda", "selective_scan_cuda installed"
    why_not_triton = _triton_unavailable(u.device, u.dtype)
    if why_not_triton is None:
        return "triton", "selective_scan_cuda not installed" if selective_scan_cuda is None else f"inputs in {u.dtype}"
    return "torch", f"no selective_scan_cuda, and no Triton: {why_not_triton}"


def _resolve_backend(backend: str, u: Tensor) -> str:
    source = "backend"
    if backend == "auto" and os.environ.get(BACKEND_ENV):
        backend, source = os.environ[BACKEND_ENV], f"${BACKEND_ENV}"
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r} (from {source}); choose one of {BACKENDS}")
    if backend == "auto":
        backend, reason = _auto_backend(u)
        _log_auto_choice(backend, reason)
    if backend == "cuda" and selective_scan_cuda is None:
        raise RuntimeError(_CUDA_INSTALL_HINT)
    if backend == "triton" and (why_not := _triton_unavailable(u.device, u.dtype)):
        raise RuntimeError(f"the 'triton' selective-scan backend (from {source}) cannot run here: {why_not}. "
                           "Use backend='torch' instead.")
    return backend


def _function(backend: str) -> type[torch.autograd.Function]:
    return _triton_module().SelectiveScanTritonFn if backend == "triton" else _FUNCTIONS[backend]


@torch.compiler.disable(recursive=True)   # torch.compile traces the glue around the scan, never the scan itself
def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Selective scan with mamba-ssm ``selective_scan_fn`` semantics (see the module docstring).

    Shapes: u, delta, z (batch, dim, L); A (dim, N) real; B, C each (dim, N), (batch, N, L) or (batch, G, N, L) with
    channel d in group d // (dim // G); D, delta_bias (dim,). Returns (batch, dim, L) in u.dtype.
    backend: "auto" (for CUDA inputs the CUDA kernel when installed, else "triton"; "torch" for CPU inputs;
    ``$MTL_SCAN_BACKEND`` replaces "auto" when set), "cuda", "triton", "torch" or "reference".
    """
    batch, dim, L = u.shape
    if delta.shape != u.shape or (z is not None and z.shape != u.shape):
        raise ValueError(f"delta and z must have u's shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        if M.shape != (dim, N) and not (M.dim() in (3, 4) and M.shape[0] == batch and M.shape[-2:] == (N, L)):
            raise ValueError(f"{name} must be (dim, N), (batch, N, L) or (batch, G, N, L), got {tuple(M.shape)}")
    _num_groups(B, C, dim)
    fn = SelectiveScanShapeFn if _shapes_only else _function(_resolve_backend(backend, u))
    return fn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

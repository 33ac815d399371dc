"""The "triton" selective-scan backend: the S6 scan of :mod:`models.ops.selective_scan` as Triton kernels.

Same semantics as the other backends (mamba-ssm's ``selective_scan_fn``, real A): grouped B/C, D, z, delta_bias and
delta_softplus (threshold 20); inputs float32, bfloat16, float16 (or float64, computed in float64); the state, every
accumulation and every gradient are float32, and the output and each gradient are returned in their input's dtype.
Triton compiles the kernels at run time, so a GPU needs no build step (Triton ships with PyTorch's CUDA wheels).

Design (PERFORMANCE.md §4.2: at N = 16 the scan is bound by HBM traffic and by the N exps per element):

* one program per (batch b, group g, block of BLOCK_D channels of that group); it carries the state h (one value per
  channel and state) across the sequence in chunks of CHUNK steps. Per chunk it loads u, Δ (and z) as (BLOCK_D,
  CHUNK) tiles and B, C as (N, CHUNK) tiles, all contiguous along L, forms ``a = exp(Δ·A)`` once per (channel, state,
  step) on a (BLOCK_D, N, CHUNK) tile, runs Eq. (2a) over the chunk as a parallel scan (``tl.associative_scan``)
  plus the carried-in state, and reduces Eq. (2b) over the states. Inputs are read once and the output written
  once; the state stays in registers from chunk to chunk. The chunk loops are software-pipelined in two stages
  (``tl.range(..., num_stages=2)``): the next chunk's tiles are copied into shared memory (cp.async) while the
  current one is computed, so the loop does not wait on global-memory latency.
* the forward saves only the state entering each chunk, (batch, dim, n_chunks, N) float32, when a gradient is
  needed. The backward walks the chunks in reverse, recomputes the states of a chunk from its saved entry state, runs
  the adjoint scan G_t = exp(Δ_{t+1} A) G_{t+1} + C_t dy_t backwards over the chunk, and forms every gradient in closed
  form (the formulas of ``SelectiveScanTorchFn``).
* both needs of the backward that involve a time shift, exp(Δ_t A)·h_{t-1} and the decay of the next step in the
  adjoint, come out of the scans themselves (three-component scans, :func:`_forward_combine` and
  :func:`_adjoint_combine`): no shifted reload, no second exp, no subtraction h_t - Δ_t B_t u_t that cancels.
* dB, dC sum over the channels of a group: within a program in registers; across the channel blocks of a group by
  a plain store when one block covers the group, else by a float32 ``atomic_add`` of the block's row (1/BLOCK_D of
  the per-channel atomics mamba-ssm's kernel issues; the summation order, and so the last bits, can vary between
  runs). dA, dD, d delta_bias (and time-invariant dB, dC) sum over time in registers and over the batch on the host.

Under ``TRITON_INTERPRET=1`` (set before this module is first imported) the same kernels run on CPU tensors.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["SelectiveScanTritonFn", "INTERPRETED", "launch_config"]

INTERPRETED = bool(triton.knobs.runtime.interpret)  # the kernels below were built for Triton's CPU interpreter

# Launch configuration: design-time choices for H100/H200 from the compiled kernels' register counts (ptxas, sm_90:
# ~130 registers per thread, no spills at N = 16), not yet from run times (tune with scripts/bench_scan.py --device
# cuda). A program works on (BLOCK_D, NP, CHUNK) tiles: channels, states (N rounded up to a power of two) and steps.
# CHUNK: the steps of the sequence covered per iteration, shared by both passes (the checkpoint interval).
# A tile holds up to FORWARD_TILE / BACKWARD_TILE elements (N = 1 counted as 2: its per-step tensors are not shared
# across states), FORWARD_PER_THREAD / BACKWARD_PER_THREAD per thread (the backward keeps ~3x more values alive).
# BLOCK_D shrinks while the grid would have under PROGRAMS_PER_SM programs per SM.
MAX_CHUNK = 256
MAX_BLOCK_D = 16
FORWARD_TILE = 2048
BACKWARD_TILE = 1024
FORWARD_PER_THREAD = 8
BACKWARD_PER_THREAD = 4
PROGRAMS_PER_SM = 4

_TL_DTYPES = {torch.float64: tl.float64, torch.float32: tl.float32}


# ----------------------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------------------
@triton.jit
def _scan_combine(p_l, h_l, p_r, h_r):
    """h_t = a_t h_{t-1} + x_t as an associative scan over (a, x); l is the earlier segment, r the later one."""
    return p_l * p_r, h_l * p_r + h_r


@triton.jit
def _forward_combine(p_l, h_l, e_l, p_r, h_r, e_r):
    """The forward scan that also yields e_t = a_t h_{t-1}, over elements (a_t, x_t, 0) (l earlier, r later).

    A segment [i, j] is summarised as (P = a_i···a_j, H = h_j from h_{i-1} = 0, E = H - x_j = a_j h_{j-1}); joining
    l and r: P = P_l P_r, H = P_r H_l + H_r, E = P_r H_l + E_r.
    """
    carried = h_l * p_r
    return p_l * p_r, carried + h_r, carried + e_r


@triton.jit
def _adjoint_combine(q_l, a_l, v_l, q_e, a_e, v_e):
    """The adjoint G_t = a_{t+1} G_{t+1} + c_t as a reverse associative scan over elements (1, a_t, c_t).

    A segment [i, j] is summarised as (Q = a_{i+1}···a_j, a_i, V = G_i with G_{j+1} = 0). Triton's reverse scan
    passes the later segment first (l) and the earlier one second (e); joining them: m = Q_e·a_l (the decay from
    the end of e across the first step of l), Q = m Q_l, first decay a_e, V = V_e + m V_l.
    """
    m = q_e * a_l
    return m * q_l, a_e, v_e + m * v_l


@triton.jit
def _softplus(x):
    """F.softplus with threshold 20: log1p(exp(x)), and x itself above 20; log1p(e) as log(1 + e)·e / ((1 + e) - 1)."""
    e = tl.exp(tl.minimum(x, 20.0))
    one_e = 1.0 + e
    return tl.where(x > 20.0, x, tl.where(one_e == 1.0, e, tl.log(one_e) * (e / (one_e - 1.0))))


@triton.jit
def _program_tile(G, dg, N, BLOCK_D: tl.constexpr, NP: tl.constexpr):
    """This program's batch (int64), group, channels d (int64, (BLOCK_D,)) with their mask, state indices (NP,) and
    the (BLOCK_D, NP) mask: grid axis 0 is batch·G + group, axis 1 the block of channels within the group."""
    pid = tl.program_id(0)
    g = pid % G
    d_in_group = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = d_in_group < dg
    n_idx = tl.arange(0, NP)
    mask_dn = mask_d[:, None] & (n_idx[None, :] < N)
    return (pid // G).to(tl.int64), g, (g * dg + d_in_group).to(tl.int64), mask_d, n_idx, mask_dn


@triton.jit
def _load_per_channel(ptr, d, mask_d, COMPUTE: tl.constexpr):
    """A (dim,) vector's values for channels d as a (BLOCK_D, 1) column: D or delta_bias."""
    return tl.load(ptr + d, mask=mask_d, other=0.0).to(COMPUTE)[:, None]


@triton.jit
def _load_per_state(ptr, d, n_idx, stride_d, stride_n, mask_dn, COMPUTE: tl.constexpr):
    """A (dim, N) matrix's rows for channels d as a (BLOCK_D, NP, 1) tile: A, or a time-invariant B or C."""
    rows = tl.load(ptr + d[:, None] * stride_d + n_idx[None, :] * stride_n, mask=mask_dn, other=0.0)
    return rows.to(COMPUTE)[:, :, None]


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, states_ptr,
    G, dg, L, N, n_chunks,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sz_b, sz_d, sz_l, so_b, so_d, so_l, sA_d, sA_n,
    sB_b, sB_g, sB_d, sB_n, sB_l, sC_b, sC_g, sC_d, sC_n, sC_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr, SAVE_STATES: tl.constexpr,
    BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, NP: tl.constexpr, COMPUTE: tl.constexpr,
):
    """Forward scan of one (batch, group, channel block) over (BLOCK_D, NP, CHUNK) tiles (channel, state, time);
    writes out and, with SAVE_STATES, the state entering every chunk."""
    b64, g, d, mask_d, n_idx, mask_dn = _program_tile(G, dg, N, BLOCK_D, NP)
    steps = tl.arange(0, CHUNK)
    is_last = (steps == CHUNK - 1)[None, None, :]
    A = _load_per_state(A_ptr, d, n_idx, sA_d, sA_n, mask_dn, COMPUTE)
    if not B_VARIABLE:  # time-invariant (dim, N): (BLOCK_D, NP, 1)
        B = _load_per_state(B_ptr, d, n_idx, sB_d, sB_n, mask_dn, COMPUTE)
    if not C_VARIABLE:
        C = _load_per_state(C_ptr, d, n_idx, sC_d, sC_n, mask_dn, COMPUTE)
    if HAS_D:
        D = _load_per_channel(D_ptr, d, mask_d, COMPUTE)
    if HAS_BIAS:
        bias = _load_per_channel(bias_ptr, d, mask_d, COMPUTE)
    state_ptrs = states_ptr + ((b64 * G * dg + d[:, None]) * n_chunks) * N + n_idx[None, :]
    # row starts: (BLOCK_D, 1) channel rows of u, delta, z, out; (NP, 1) state rows of input-dependent B, C
    u_rows = u_ptr + b64 * su_b + d[:, None] * su_d
    dt_rows = delta_ptr + b64 * sdt_b + d[:, None] * sdt_d
    z_rows = z_ptr + b64 * sz_b + d[:, None] * sz_d
    out_rows = out_ptr + b64 * so_b + d[:, None] * so_d
    B_rows = B_ptr + b64 * sB_b + g * sB_g + n_idx[:, None] * sB_n
    C_rows = C_ptr + b64 * sC_b + g * sC_g + n_idx[:, None] * sC_n
    h_carry = tl.full((BLOCK_D, NP), 0.0, COMPUTE)  # state entering the chunk
    for c in tl.range(n_chunks, num_stages=2):  # the next chunk's loads in flight during this one
        if SAVE_STATES:
            tl.store(state_ptrs + c * N, h_carry.to(states_ptr.dtype.element_ty), mask=mask_dn)
        t = (c * CHUNK + steps)[None, :].to(tl.int64)
        mask = mask_d[:, None] & (t < L)
        mask_nt = (n_idx[:, None] < N) & (t < L)
        u = tl.load(u_rows + t * su_l, mask=mask, other=0.0).to(COMPUTE)
        dt = tl.load(dt_rows + t * sdt_l, mask=mask, other=0.0).to(COMPUTE)
        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(mask, dt, 0.0)  # padding: decay 1, input 0, so the carry passes through unchanged
        if B_VARIABLE:  # (batch, G, N, L): (1, NP, CHUNK)
            B = tl.load(B_rows + t * sB_l, mask=mask_nt, other=0.0).to(COMPUTE)[None, :, :]
        if C_VARIABLE:
            C = tl.load(C_rows + t * sC_l, mask=mask_nt, other=0.0).to(COMPUTE)[None, :, :]
        a = tl.exp(dt[:, None, :] * A)                                              # exp(Δ A), once per element
        p, h = tl.associative_scan((a, (dt * u)[:, None, :] * B), 2, _scan_combine)  # Eq. (2a) within the chunk
        h += p * h_carry[:, :, None]                                                # plus the carried-in state
        y = tl.sum(C * h, 1)                                                        # Eq. (2b)
        h_carry = tl.sum(tl.where(is_last, h, 0.0), 2)
        if HAS_D:
            y += D * u
        if HAS_Z:
            zt = tl.load(z_rows + t * sz_l, mask=mask, other=0.0).to(COMPUTE)
            y *= zt / (1.0 + tl.exp(-zt))
        tl.store(out_rows + t * so_l, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    G, dg, L, N, n_chunks,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sz_b, sz_d, sz_l, sdo_b, sdo_d, sdo_l, sA_d, sA_n,
    sB_b, sB_g, sB_d, sB_n, sB_l, sC_b, sC_g, sC_d, sC_n, sC_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr, ATOMIC_BC: tl.constexpr,
    BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, NP: tl.constexpr, COMPUTE: tl.constexpr,
):
    """Backward of one (batch, group, channel block), chunks in reverse order.

    Writes du, d delta, dz (contiguous), per-batch partial sums dA (batch, dim, N), dD and d bias (batch, dim), and
    dB, dC: input-dependent ones into (batch, G, N, L) buffers (stored, or atomically added when ATOMIC_BC),
    time-invariant ones as per-batch partials (batch, dim, N).
    """
    b64, g, d, mask_d, n_idx, mask_dn = _program_tile(G, dg, N, BLOCK_D, NP)
    dim = G * dg
    steps = tl.arange(0, CHUNK)
    is_first = (steps == 0)[None, None, :]
    A = _load_per_state(A_ptr, d, n_idx, sA_d, sA_n, mask_dn, COMPUTE)
    if not B_VARIABLE:
        B = _load_per_state(B_ptr, d, n_idx, sB_d, sB_n, mask_dn, COMPUTE)
    if not C_VARIABLE:
        C = _load_per_state(C_ptr, d, n_idx, sC_d, sC_n, mask_dn, COMPUTE)
    if HAS_D:
        D = _load_per_channel(D_ptr, d, mask_d, COMPUTE)
    if HAS_BIAS:
        bias = _load_per_channel(bias_ptr, d, mask_d, COMPUTE)
    per_state = (b64 * dim + d[:, None]) * N + n_idx[None, :]                 # (b, d, n) in (batch, dim, N)
    state_ptrs = states_ptr + ((b64 * dim + d[:, None]) * n_chunks) * N + n_idx[None, :]
    bc_rows = ((b64 * G + g) * N + n_idx[:, None]) * L                        # (b, g, n) in (batch, G, N, L)
    u_rows = u_ptr + b64 * su_b + d[:, None] * su_d
    dt_rows = delta_ptr + b64 * sdt_b + d[:, None] * sdt_d
    z_rows = z_ptr + b64 * sz_b + d[:, None] * sz_d
    dout_rows = dout_ptr + b64 * sdo_b + d[:, None] * sdo_d
    grad_rows = (b64 * dim + d[:, None]) * L                                  # du, d delta, dz: contiguous
    B_rows = B_ptr + b64 * sB_b + g * sB_g + n_idx[:, None] * sB_n
    C_rows = C_ptr + b64 * sC_b + g * sC_g + n_idx[:, None] * sC_n
    g_carry = tl.full((BLOCK_D, NP), 0.0, COMPUTE)  # a_s G_s at the first step s of the later chunk
    dA_acc = tl.full((BLOCK_D, NP), 0.0, COMPUTE)
    dB_acc = tl.full((BLOCK_D, NP), 0.0, COMPUTE)   # time-invariant B, C only
    dC_acc = tl.full((BLOCK_D, NP), 0.0, COMPUTE)
    dD_acc = tl.full((BLOCK_D,), 0.0, COMPUTE)
    dbias_acc = tl.full((BLOCK_D,), 0.0, COMPUTE)
    for i in tl.range(n_chunks, num_stages=2):  # chunks last to first; the next one's loads in flight
        c = n_chunks - 1 - i
        t = (c * CHUNK + steps)[None, :].to(tl.int64)
        mask = mask_d[:, None] & (t < L)
        mask_nt = (n_idx[:, None] < N) & (t < L)
        u = tl.load(u_rows + t * su_l, mask=mask, other=0.0).to(COMPUTE)
        raw = tl.load(dt_rows + t * sdt_l, mask=mask, other=0.0).to(COMPUTE)
        if HAS_BIAS:
            raw += bias
        dt = raw
        if SOFTPLUS:
            dt = _softplus(raw)
        dt = tl.where(mask, dt, 0.0)
        dtu = dt * u
        dout = tl.load(dout_rows + t * sdo_l, mask=mask, other=0.0).to(COMPUTE)
        if HAS_Z:
            zt = tl.load(z_rows + t * sz_l, mask=mask, other=0.0).to(COMPUTE)
            sig_z = 1.0 / (1.0 + tl.exp(-zt))
            dy = dout * zt * sig_z                                                  # out = y·silu(z)
        else:
            dy = dout
        if B_VARIABLE:
            B = tl.load(B_rows + t * sB_l, mask=mask_nt, other=0.0).to(COMPUTE)[None, :, :]
        if C_VARIABLE:
            C = tl.load(C_rows + t * sC_l, mask=mask_nt, other=0.0).to(COMPUTE)[None, :, :]
        a = tl.exp(dt[:, None, :] * A)
        # states of the chunk from its saved entry state h0, and e_t = exp(Δ_t A) h_{t-1}
        h0 = tl.load(state_ptrs + c * N, mask=mask_dn, other=0.0).to(COMPUTE)[:, :, None]
        p, h, e = tl.associative_scan((a, dtu[:, None, :] * B, tl.full(a.shape, 0.0, COMPUTE)), 2, _forward_combine)
        h += p * h0
        e += p * h0
        # adjoint G, with a_s G_s of the later chunk carried in
        q, _, adj = tl.associative_scan((tl.full(a.shape, 1.0, COMPUTE), a, C * dy[:, None, :]), 2,
                                        _adjoint_combine, reverse=True)
        adj += q * g_carry[:, :, None]
        g_carry = tl.sum(tl.where(is_first, a * adj, 0.0), 2)
        ge = adj * e
        gB = tl.sum(adj * B, 1)                                                     # Σ_n G B
        ddt = tl.sum(A * ge, 1) + gB * u                                            # Σ_n G (A e + B u)
        du = dt * gB
        dA_acc += tl.sum(ge * dt[:, None, :], 2)
        g_dtu = adj * dtu[:, None, :]
        dy_h = dy[:, None, :] * h
        if B_VARIABLE:  # Σ over the block's channels, then over the group's blocks
            if ATOMIC_BC:
                tl.atomic_add(dB_ptr + bc_rows + t, tl.sum(g_dtu, 0), mask=mask_nt)
            else:
                tl.store(dB_ptr + bc_rows + t, tl.sum(g_dtu, 0), mask=mask_nt)
        else:
            dB_acc += tl.sum(g_dtu, 2)
        if C_VARIABLE:
            if ATOMIC_BC:
                tl.atomic_add(dC_ptr + bc_rows + t, tl.sum(dy_h, 0), mask=mask_nt)
            else:
                tl.store(dC_ptr + bc_rows + t, tl.sum(dy_h, 0), mask=mask_nt)
        else:
            dC_acc += tl.sum(dy_h, 2)
        if HAS_D:
            du += D * dy
            dD_acc += tl.sum(dy * u, 1)
        if HAS_Z:
            y = tl.sum(C * h, 1)
            if HAS_D:
                y += D * u
            dz = dout * y * sig_z * (1.0 + zt * (1.0 - sig_z))
            tl.store(dz_ptr + grad_rows + t, dz.to(dz_ptr.dtype.element_ty), mask=mask)
        if SOFTPLUS:  # F.softplus backward: sigmoid below the threshold, 1 above
            ddt = tl.where(raw > 20.0, ddt, ddt / (1.0 + tl.exp(-raw)))
        ddt = tl.where(mask, ddt, 0.0)
        dbias_acc += tl.sum(ddt, 1)
        tl.store(du_ptr + grad_rows + t, du.to(du_ptr.dtype.element_ty), mask=mask)
        tl.store(ddelta_ptr + grad_rows + t, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask)
    tl.store(dA_ptr + per_state, dA_acc, mask=mask_dn)
    if not B_VARIABLE:
        tl.store(dB_ptr + per_state, dB_acc, mask=mask_dn)
    if not C_VARIABLE:
        tl.store(dC_ptr + per_state, dC_acc, mask=mask_dn)
    tl.store(dD_ptr + b64 * dim + d, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + b64 * dim + d, dbias_acc, mask=mask_d)


# ----------------------------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def launch_config(batch: int, G: int, dg: int, L: int, N: int, device: torch.device) -> dict[str, int]:
    """CHUNK, and BLOCK_D and num_warps of each pass, for dim = G·dg channels and N states (see above)."""
    states = max(2, triton.next_power_of_2(N))
    min_programs = PROGRAMS_PER_SM * _sm_count(device.index or 0) if device.type == "cuda" and not INTERPRETED else 0
    chunk = max(16, min(MAX_CHUNK, triton.next_power_of_2(L), BACKWARD_TILE // states))
    config = {"chunk": chunk}
    passes = (("fwd", FORWARD_TILE, FORWARD_PER_THREAD), ("bwd", BACKWARD_TILE, BACKWARD_PER_THREAD))
    for name, tile, per_thread in passes:
        block = max(1, min(MAX_BLOCK_D, triton.next_power_of_2(dg), tile // (states * chunk)))
        while block > 1 and batch * G * triton.cdiv(dg, block) < min_programs:
            block //= 2
        config[f"block_{name}"] = block
        config[f"warps_{name}"] = max(1, min(8, block * states * chunk // (32 * per_thread)))
    return config


def _bc_args(M: Tensor) -> tuple[Tensor, bool, tuple[int, ...]]:
    """(tensor, input-dependent?, strides (b, g, d, n, l)) of B or C; (batch, N, L) is read as one group."""
    if M.dim() == 2:
        return M, False, (0, 0, M.stride(0), M.stride(1), 0)
    M = M.unsqueeze(1) if M.dim() == 3 else M
    return M, True, (M.stride(0), M.stride(1), 0, M.stride(2), M.stride(3))


def _num_groups(B: Tensor, C: Tensor) -> int:
    return next((M.shape[1] if M.dim() == 4 else 1 for M in (B, C) if M.dim() > 2), 1)


def _device_guard(x: Tensor):
    """Kernels launch on the current CUDA device: make it x's."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _contiguous(x: Optional[Tensor]) -> Optional[Tensor]:
    return None if x is None else x.contiguous()


class SelectiveScanTritonFn(torch.autograd.Function):
    """The "triton" backend: :func:`_selective_scan_fwd_kernel` and :func:`_selective_scan_bwd_kernel`.

    Saves the inputs and the float32 states at chunk boundaries. Gradients: dy = dout·silu(z) (dy = dout without z),
    G_t = exp(Δ_{t+1} A) G_{t+1} + C_t dy_t, e_t = exp(Δ_t A) h_{t-1}; summed over the channels of a group (dB, dC)
    or over batch and time (dA, dD, d bias):
    dC_t = Σ_d dy_t h_t;  dB_t = Σ_d G_t Δ_t u_t;  du_t = Δ_t Σ_n G_t B_t + D dy_t;
    dΔ_t = Σ_n G_t (A e_t + B_t u_t);  dA = Σ_{b,t} G_t e_t Δ_t;  d delta = dΔ · softplus'(delta + bias);
    d bias = Σ_{b,t} d delta;  dD = Σ_{b,t} dy_t u_t;  dz = dout · y · silu'(z).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        batch, dim, L = u.shape
        N = A.shape[1]
        D, delta_bias = _contiguous(D), _contiguous(delta_bias)
        G = _num_groups(B, C)
        (Bk, b_var, sB), (Ck, c_var, sC) = _bc_args(B), _bc_args(C)
        compute = torch.float64 if any(t is not None and t.dtype == torch.float64
                                       for t in (u, delta, A, B, C, D, z, delta_bias)) else torch.float32
        cfg = launch_config(batch, G, dim // G, L, N, u.device)
        n_chunks = triton.cdiv(L, cfg["chunk"])
        save = any(ctx.needs_input_grad)
        out = torch.empty_like(u, memory_format=torch.contiguous_format)
        states = u.new_empty((batch, dim, n_chunks, N) if save else (1,), dtype=compute)
        zt = z if z is not None else u
        with _device_guard(u):
            _selective_scan_fwd_kernel[(batch * G, triton.cdiv(dim // G, cfg["block_fwd"]))](
                u, delta, A, Bk, Ck, D if D is not None else u, zt, delta_bias if delta_bias is not None else u,
                out, states,
                G, dim // G, L, N, n_chunks,
                *u.stride(), *delta.stride(), *zt.stride(), *out.stride(), *A.stride(), *sB, *sC,
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), B_VARIABLE=b_var, C_VARIABLE=c_var, SAVE_STATES=save,
                BLOCK_D=cfg["block_fwd"], CHUNK=cfg["chunk"], NP=triton.next_power_of_2(N),
                COMPUTE=_TL_DTYPES[compute], num_warps=cfg["warps_fwd"],
            )
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.meta = (G, cfg, n_chunks, compute)
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        G, cfg, n_chunks, compute = ctx.meta
        batch, dim, L = u.shape
        N = A.shape[1]
        (Bk, b_var, sB), (Ck, c_var, sC) = _bc_args(B), _bc_args(C)
        block = cfg["block_bwd"]
        atomic = triton.cdiv(dim // G, block) > 1
        acc = dict(dtype=compute, device=u.device)  # accumulators: float32 (float64 for float64 inputs)
        du = torch.empty(u.shape, dtype=u.dtype, device=u.device)
        ddelta = torch.empty(u.shape, dtype=delta.dtype, device=u.device)
        dz = torch.empty(u.shape, dtype=z.dtype, device=u.device) if z is not None else None

        def bc_grad(variable: bool) -> Tensor:  # (batch, G, N, L), or per-batch partials (batch, dim, N)
            if not variable:
                return torch.empty(batch, dim, N, **acc)
            return (torch.zeros if atomic else torch.empty)(batch, G, N, L, **acc)

        dB, dC = bc_grad(b_var), bc_grad(c_var)
        dA = torch.empty(batch, dim, N, **acc)
        dD, dbias = torch.empty(batch, dim, **acc), torch.empty(batch, dim, **acc)
        zt = z if z is not None else u
        with _device_guard(u):
            _selective_scan_bwd_kernel[(batch * G, triton.cdiv(dim // G, block))](
                u, delta, A, Bk, Ck, D if D is not None else u, zt, delta_bias if delta_bias is not None else u,
                dout, states,
                du, ddelta, dz if dz is not None else du, dA, dB, dC, dD, dbias,
                G, dim // G, L, N, n_chunks,
                *u.stride(), *delta.stride(), *zt.stride(), *dout.stride(), *A.stride(), *sB, *sC,
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=ctx.delta_softplus, B_VARIABLE=b_var, C_VARIABLE=c_var, ATOMIC_BC=atomic,
                BLOCK_D=block, CHUNK=cfg["chunk"], NP=triton.next_power_of_2(N),
                COMPUTE=_TL_DTYPES[compute], num_warps=cfg["warps_bwd"],
            )

        def param_grad(partial: Tensor, like: Optional[Tensor]) -> Optional[Tensor]:  # sum the batch partials
            return None if like is None else partial.sum(0).to(compute).reshape(like.shape).to(like.dtype)

        def bc_back(grad: Tensor, like: Tensor, variable: bool) -> Tensor:
            if not variable:
                return param_grad(grad, like)
            return grad.reshape(like.shape).to(like.dtype)

        return (du, ddelta, param_grad(dA, A), bc_back(dB, B, b_var), bc_back(dC, C, c_var), param_grad(dD, D), dz,
                param_grad(dbias, delta_bias), None)

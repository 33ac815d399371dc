"""SS2D: the 2-D selective-scan layer, and the Mamba feature extractor (MFE) built from it.

MTMamba (Lin et al., ECCV 2024) Eqs. 13-18 for the STM block; the cross-scan follows VMamba
(Liu et al., 2024, https://github.com/MzeroMiko/VMamba, SS2D ``forward_corev0``). This is the
single place of the SSM parameters and their initialisation (MODELS.md §0.2-§0.3).

Parameter names (``x_proj_weight``, ``dt_projs_weight``, ``dt_projs_bias``, ``A_logs``, ``Ds``,
``in_proj``, ``conv2d``, ``out_norm``, ``out_proj``) follow the official code so that released
checkpoints map one to one. The x/dt projections are stacked per direction and applied with
``einsum``, as in the official code; this also keeps the FLOP count of the paper's convention.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import WindowMSA
from .ops.scan_orders import (SS2D_ORDERS, cross_merge, cross_merge_channels_last, cross_merge_copies, cross_scan,
                              cross_scan_channels_last, cross_scan_copies)
from .ops.selective_scan import selective_scan

__all__ = ["SS2D", "MIXERS", "add_ssm_parameters", "init_ssm_parameters", "ssm_scan", "scan_parameter_sets",
           "to_scan_dtype"]

MIXERS = {"mixer": ("ss2d", "wmsa"), "gate_mixer": ("linear", "wmsa")}


def to_scan_dtype(t: torch.Tensor) -> torch.Tensor:
    """The scan runs in fp32, as in the official code (float64 passes through, for reference checks)."""
    return t if t.dtype == torch.float64 else t.float()


def add_ssm_parameters(module: nn.Module, k: int, d_inner: int, d_state: int, dt_rank: int, dt_min: float = 1e-3,
                       dt_max: float = 0.1, dt_init_floor: float = 1e-4, dt_scale: float = 1.0) -> None:
    """Register K stacked S6 parameter sets on ``module`` under the official names and initialise them (§0.2-§0.3).

    Per set k: ``x_proj_weight[k]`` (x -> Δ_low_rank, B, C), ``dt_projs_weight[k]``/``dt_projs_bias[k]``
    (Δ_low_rank -> Δ), and the rows k·D..(k+1)·D of ``A_logs`` and ``Ds``.
    """
    module.x_proj_weight = nn.Parameter(torch.empty(k, dt_rank + 2 * d_state, d_inner))
    module.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, dt_rank))
    module.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
    module.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
    module.Ds = nn.Parameter(torch.empty(k * d_inner))
    init_ssm_parameters(module, dt_min, dt_max, dt_init_floor, dt_scale)


@torch.no_grad()
def init_ssm_parameters(module: nn.Module, dt_min: float, dt_max: float, dt_init_floor: float,
                        dt_scale: float) -> None:
    """The official SSM initialisation (MODELS.md §0.2) of the parameters of :func:`add_ssm_parameters`."""
    k, di, r = module.dt_projs_weight.shape
    # x_proj: nn.Linear(d_inner, R + 2N) default init, one per direction
    bound = 1 / math.sqrt(di)
    module.x_proj_weight.uniform_(-bound, bound)
    # dt_proj weight ("random" init): U(-R^-1/2, R^-1/2) · dt_scale
    std = r ** -0.5 * dt_scale
    module.dt_projs_weight.uniform_(-std, std)
    # dt_proj bias: softplus(bias) = dt ~ log-uniform in [dt_min, dt_max], floored at dt_init_floor
    dt = torch.exp(torch.rand(k, di) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    module.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
    # S4D-real: A[d, n] = -(n + 1); stored as log
    a = torch.arange(1, module.A_logs.shape[1] + 1, dtype=torch.float32).repeat(k * di, 1)
    module.A_logs.copy_(torch.log(a))
    module.Ds.fill_(1.0)
    for p in (module.A_logs, module.Ds):
        p._no_weight_decay = True


def ssm_scan(module: nn.Module, xs: torch.Tensor, backend: str = "auto",
             xs_ssm: torch.Tensor | None = None) -> torch.Tensor:
    """S6 over K sequences, sequence k with parameter set k of ``module`` (:func:`add_ssm_parameters`):
    (B, K, D, L) -> (B, K, D, L) in fp32. See :func:`scan_parameter_sets`."""
    return scan_parameter_sets(xs, module.x_proj_weight, module.dt_projs_weight, module.dt_projs_bias,
                               module.A_logs, module.Ds, backend, xs_ssm)


def scan_parameter_sets(xs: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor,
                        dt_projs_bias: torch.Tensor, A_logs: torch.Tensor, Ds: torch.Tensor, backend: str = "auto",
                        xs_ssm: torch.Tensor | None = None, calls: int = 1) -> torch.Tensor:
    """S6 over K sequences with K stacked parameter sets (shapes of :func:`add_ssm_parameters`).

    (B, K, D, L) -> (B, K, D, L) in fp32: per-set x/dt projections (einsum), then the selective scan over K·D channels
    with B and C grouped per set, in ``calls`` calls over consecutive sets (one by default). Δ, B and C are projected
    from ``xs_ssm`` (default ``xs``, the scanned input; MTMamba++'s CSS2D projects them from the shared map).
    """
    b, k, d, length = xs.shape
    r, n = dt_projs_weight.shape[2], A_logs.shape[1]
    x_dbl = torch.einsum("b k d l, k c d -> b k c l", xs if xs_ssm is None else xs_ssm, x_proj_weight)
    dts, bs, cs = torch.split(x_dbl, [r, n, n], dim=2)                            # (B, K, R | N | N, L)
    dts = torch.einsum("b k r l, k d r -> b k d l", dts, dt_projs_weight)         # (B, K, D, L)
    per_set = [t.chunk(calls, dim=1) for t in (xs, dts, bs, cs)]             # consecutive sets per call
    per_set += [t.chunk(calls, dim=0) for t in (A_logs.view(k, d, n), Ds.view(k, d), dt_projs_bias)]
    ys = [selective_scan(
        to_scan_dtype(u.reshape(b, -1, length)),
        to_scan_dtype(dt.reshape(b, -1, length)),
        -torch.exp(to_scan_dtype(a_log.reshape(-1, n))),                          # (K'·D, N)
        to_scan_dtype(bm),                                                         # (B, K', N, L): group k
        to_scan_dtype(cm),
        to_scan_dtype(dsk.reshape(-1)),
        delta_bias=to_scan_dtype(bias.reshape(-1)),
        delta_softplus=True,
        backend=backend,
    ) for u, dt, bm, cm, a_log, dsk, bias in zip(*per_set)]
    return (ys[0] if calls == 1 else torch.cat(ys, dim=1)).view(b, k, d, length)


class SS2D(nn.Module):
    """2-D selective scan over K scan orders, on channels-last maps.

    ``x (B, H, W, in_dim) -> in_proj -> DWConv3x3 + SiLU -> cross-scan -> S6 -> cross-merge
    -> out_norm [-> ⊙ SiLU(z)] [-> out_proj]``.

    With ``gate`` and ``out_proj`` this is the MFE, gate and output Linear of the STM block
    (Eqs. 13-18); without them it is the bare MFE used inside the CTM block (Eqs. 19-25).

    Args:
        d_model: block width C. Sets d_inner = ssm_ratio·C, dt_rank = ceil(C/16) and the output width.
        in_dim: input width of ``in_proj`` (default C; T·C for the shared MFE of the CTM block).
        d_state: SSM state size N.
        ssm_ratio: expansion d_inner / C.
        dt_rank: rank R of the Δ projection, or "auto" for ceil(C/16).
        d_conv: depthwise convolution kernel size.
        conv_bias: give the depthwise convolution a bias (VMamba-T's encoder blocks have none).
        gate: split ``in_proj`` into (x, z) and multiply the output by SiLU(z) (Eq. 16).
        out_proj: project d_inner back to C with a bias-free Linear (Eq. 17).
        orders: scan orders (K = len(orders)).
        dt_min, dt_max, dt_init_floor, dt_scale: Δ initialisation (Mamba, S4D).
        scan_backend: backend of :func:`selective_scan` ("auto", "cuda", "triton", "torch", "reference").
        mixer: "ss2d", or "wmsa" for MTMamba Table 3 ("MFE → W-MSA"): window attention on the d_inner features
            replaces the depthwise conv, the 2-D scan and out_norm (the SSM parameters are not built).
        gate_mixer: "linear", or "wmsa" for MTMamba Table 4: the gate branch reads window attention of the
            block input before its Linear (same in_proj weights, split into the x and z halves).
        wmsa_heads: heads of those window attentions.
    """

    def __init__(
        self,
        d_model: int,
        *,
        in_dim: int | None = None,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = True,
        gate: bool = True,
        out_proj: bool = True,
        orders: Sequence[str] = SS2D_ORDERS,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        scan_backend: str = "auto",
        mixer: str = "ss2d",
        gate_mixer: str = "linear",
        wmsa_heads: int = 6,
    ) -> None:
        super().__init__()
        for name, value in (("mixer", mixer), ("gate_mixer", gate_mixer)):
            if value not in MIXERS[name]:
                raise ValueError(f"{name}={value!r} is not valid; valid: {list(MIXERS[name])}")
        self.d_model = d_model
        self.d_inner = int(ssm_ratio * d_model)
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.orders = tuple(orders)
        self.gate = gate
        self.scan_backend = scan_backend
        self.exec_mode = "reference"   # models.execution: "reference" (official data movement) | "fast"
        k, di, n, r = len(self.orders), self.d_inner, d_state, self.dt_rank

        self.in_proj = nn.Linear(in_dim or d_model, di * (2 if gate else 1), bias=False)
        if gate and gate_mixer == "wmsa":
            self.gate_attn = WindowMSA(in_dim or d_model, wmsa_heads)
        self.out_proj = nn.Linear(di, d_model, bias=False) if out_proj else None
        if mixer == "wmsa":
            self.attn = WindowMSA(di, wmsa_heads)
            return
        self.conv2d = nn.Conv2d(di, di, d_conv, padding=(d_conv - 1) // 2, groups=di, bias=conv_bias)
        # per-direction projections, stacked: x -> (Δ_low_rank, B, C) and Δ_low_rank -> Δ
        add_ssm_parameters(self, k, di, n, r, dt_min, dt_max, dt_init_floor, dt_scale)
        self.out_norm = nn.LayerNorm(di)

    def reset_parameters(self, dt_min: float, dt_max: float, dt_init_floor: float, dt_scale: float) -> None:
        """The official SSM initialisation (MODELS.md §0.2). Linear/conv layers keep PyTorch defaults."""
        init_ssm_parameters(self, dt_min, dt_max, dt_init_floor, dt_scale)

    def scan(self, x: torch.Tensor, ssm_input: torch.Tensor | None = None) -> torch.Tensor:
        """The 2-D selective scan: (B, d_inner, H, W) -> (B, H, W, d_inner), before out_norm.

        ``ssm_input`` (shape of x, default x) is the map whose sequences give Δ, B and C: MTMamba++'s CSS2D passes
        the shared map while x, the scanned input, is the task map (MODELS.md §1.8); it runs the reference path.

        ``exec_mode="reference"`` moves the data as the official code does (transpose/flip/cat copies for the
        four SS2D orders); ``"fast"`` reads and merges the sequences on the channels-last map (one gather each way on
        the GPU, :func:`~models.ops.scan_orders.cross_scan_channels_last`).
        """
        h, w = x.shape[-2:]
        if self.exec_mode == "fast" and ssm_input is None:
            xs = cross_scan_channels_last(x.permute(0, 2, 3, 1).unsqueeze(3), self.orders)[:, 0]   # (B, K, D, L)
            y = ssm_scan(self, xs, self.scan_backend).unsqueeze(1)
            return cross_merge_channels_last(y, h, w, self.orders).squeeze(3).to(x.dtype)  # (B, H, W, D)
        official = self.orders == SS2D_ORDERS
        serialise = cross_scan_copies if official else functools.partial(cross_scan, orders=self.orders)
        xs = serialise(x)                                                          # (B, K, D, L)
        y = ssm_scan(self, xs, self.scan_backend, None if ssm_input is None else serialise(ssm_input))
        y = cross_merge_copies(y, h, w) if official else cross_merge(y, h, w, self.orders)
        return y.permute(0, 2, 3, 1).to(x.dtype)                                   # (B, H, W, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, in_dim) -> (B, H, W, C) with out_proj, else (B, H, W, d_inner)."""
        if hasattr(self, "gate_attn"):                                             # Table 4: W-MSA gate
            w_x, w_z = self.in_proj.weight.chunk(2, dim=0)
            x, z = F.linear(x, w_x), F.linear(self.gate_attn(x), w_z)
        else:
            x = self.in_proj(x)
            if self.gate:
                x, z = x.chunk(2, dim=-1)                                          # MFE branch, gate branch
        if hasattr(self, "attn"):                                                  # Table 3: W-MSA as the MFE
            y = self.attn(x)
        else:
            x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))                         # (B, D, H, W)
            y = self.out_norm(self.scan(x))                                        # (B, H, W, D)
        if self.gate:
            y = y * F.silu(z)                                                      # Eq. 16: σ = SiLU
        return self.out_proj(y) if self.out_proj is not None else y

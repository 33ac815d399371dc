"""PAMM: "Parameter Aware Mamba Model for Multi-task Dense Prediction" (Yu et al., arXiv 2511.14503, IEEE
T-Cybernetics), its Parameter Aware Mamba Experts (PAME) decoder, in two layouts (MODELS.md §3).

What this paper adds: Mamba layers whose input and output matrices B and C come from a mixture of low-rank
*Parameter Experts* shared by all tasks and routed per task (this is where tasks interact), plus learnable
per-task *Parameter Priors* added to B and C; every other SSM parameter (Δ, A, D) is per task; the maps are read
along four rotations of a Hilbert curve (MDHS, :mod:`models.ops.curves`).

* ``pame_vit`` — the released layout (§3.1): a ViT-L/16 with taps after blocks 6/12/18/24, one PAME module per
  tap, a per-task softmax fusion over the taps and convolutional heads.
* ``pame_swin`` — our adaptation (§3.5, [INFERRED]): MTMamba's three-stage Swin-L decoder with one PAME layer per
  stage in place of the STM/CTM blocks, and MTMamba's heads.

Released-code quirks and our defaults (§3.3, §3.6), each a config switch under ``model.pame``: ``local_conv``
(Q1: dw, the released code has none), ``priors`` (Q2: learnable, the released code's are unregistered constants ->
``frozen``), ``pe_kernel`` (Q3: 1, the released code's 9), ``router_spatial`` (Q4: gap, the released code's
``linear``), the CV² load-balancing loss (Q5: active here, dead in the released code), ``a_d`` (learnable A_log and
D, the released code's constants -> ``constant``) and ``init`` (Mamba's Δ initialisation, the released code's ViT
initialisation -> ``official``). The priors of every layer are drawn from a documented seed (:func:`draw_priors`).
``configs/ablations/pame_code_faithful*.yml`` set every released value; ``utils/official_pamm.py`` loads the
released checkpoints.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, trunc_normal_

from losses.multitask import LOAD_BALANCE_KEY
from .decoder import INPUT_MULTIPLE, ThreeStageDecoder, to_channels_first, to_channels_last
from .encoders import build_encoder
from .heads import MultiTaskModel, TaskHead
from .mtmamba import drop_path_schedule
from .ops.curves import CURVES, curve_orders
from .ops.scan_orders import cross_merge, cross_scan
from .ops.selective_scan import selective_scan
from .pretrained import uses_timm_download
from .registry import register_model
from .ss2d import init_ssm_parameters, to_scan_dtype
from .vit import build_vit_encoder

__all__ = ["PAME_CHOICES", "PAME_INT_KEYS", "Router", "ParameterExperts", "PAMELayer", "PAMEStage", "PAMMTap",
           "PAMMDecoder", "PAMMHead", "PAMEModel", "cv_squared", "load_balance_loss", "draw_priors", "released_init",
           "build_pame_vit", "build_pame_swin"]

# model.pame keys with a fixed set of values (utils/config.py validates them)
PAME_CHOICES: dict[str, tuple] = {
    "local_conv": ("dw", "none"),
    "priors": ("learnable", "frozen", "none"),
    "a_d": ("learnable", "constant"),
    "init": ("mamba", "official"),
    "router_spatial": ("gap", "linear"),
    "scan": CURVES,
    "moe_b": (True, False),
    "moe_c": (True, False),
}
# model.pame keys that are positive integers
PAME_INT_KEYS = ("depth", "dim", "n_experts", "expert_rank", "topk", "pe_kernel")
GN_GROUPS = 32      # GroupNorm32 of the released code (fewer groups when the width is not a multiple of 32)
PRIOR_STD = 0.02    # trunc-normal init of the Parameter Priors (§3.2)
PRIOR_SEED = 0      # the priors of PAME layer i of a model (taps / stages in order, then depth): seed PRIOR_SEED + i
INIT_STD = 0.02     # the released code's ViT initialisation: trunc-normal std of Linear weights (§3.6 item 6)
ROUTER_LN_EPS = 1e-5  # the released router's channel LayerNorm is nn.LayerNorm (§3.6 item 3)


def _group_norm(dim: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(GN_GROUPS, dim), dim)


# --------------------------------------------------------------------------------------------------------------------
# Load balancing (MODELS.md §3.2, "Load-balancing loss"; Q5)


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation var(x) / mean(x)² (unbiased var; 0 for a single value), Shazeer et al. 2017."""
    if x.numel() <= 1:
        return x.new_zeros(())
    x = x.float()
    return x.var() / (x.mean() ** 2 + 1e-10)


def load_balance_loss(gates: torch.Tensor) -> torch.Tensor:
    """CV² of the expert importance of one MoE layer: gates (batch·tasks, E) averaged over rows -> scalar."""
    return cv_squared(gates.mean(0))


# --------------------------------------------------------------------------------------------------------------------
# Parameter Experts (MODELS.md §3.2, "Parameter Experts (PE) for B and C")


class Router(nn.Module):
    """Per-task router of a PE layer: a channel and a spatial descriptor -> expert gates and the task-path mix.

    ``c = mean_hw(Conv1x1(GELU(LN(Conv1x1(x)))))`` (Di -> Di/4 -> Di/4), ``sp = Conv1x1(GELU(LN(Pool(x))))``
    (Di -> Di/4), ``[ℓ, σ, m] = Conv1x1(cat(c, sp))`` (Di/2 -> 2E+1). Gates: ``softmax(ℓ + ε·σ)`` with
    ε ~ N(0, 1) in training (σ raw, no softplus) and ``softmax(ℓ)`` in eval, then the E − k smallest set to 0, without
    renormalisation. The 1×1 convs on the pooled vector are Linear layers (same parameters).

    Args:
        d_inner: input channels Di.
        n_experts: E.
        topk: k, the experts kept per image.
        spatial: "gap" (global average pooling, the paper's "Pool") or "linear" (``Linear(H·W -> 1)`` over the
            positions, the released code; ties the model to ``grid``).
        grid: (H, W) of the input, needed by ``spatial="linear"``.
    """

    def __init__(self, d_inner: int, n_experts: int, topk: int, spatial: str = "gap",
                 grid: tuple[int, int] | None = None) -> None:
        super().__init__()
        if spatial not in PAME_CHOICES["router_spatial"]:
            raise ValueError(f"router_spatial={spatial!r} is not valid; valid: {list(PAME_CHOICES['router_spatial'])}")
        if not 1 <= topk <= n_experts:
            raise ValueError(f"topk={topk} must be in 1..n_experts={n_experts}")
        q = d_inner // 4
        self.n_experts, self.topk = n_experts, topk
        self.channel = nn.Sequential(nn.Conv2d(d_inner, q, 1), LayerNorm2d(q, eps=ROUTER_LN_EPS), nn.GELU(),
                                     nn.Conv2d(q, q, 1))
        if spatial == "linear":
            if grid is None:
                raise ValueError("router_spatial='linear' needs the input grid (H, W)")
            self.grid = tuple(grid)
            self.pool = nn.Linear(grid[0] * grid[1], 1)
        self.spatial = nn.Sequential(nn.LayerNorm(d_inner), nn.GELU(), nn.Linear(d_inner, q))
        self.head = nn.Linear(2 * q, 2 * n_experts + 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Di, H, W) -> gates (B, E) with exactly E − k zeros per row, and the task-path mix m (B,)."""
        channel = self.channel(x).mean(dim=(2, 3))                                   # (B, Di/4)
        if hasattr(self, "pool"):
            if tuple(x.shape[-2:]) != self.grid:
                raise ValueError(f"router_spatial='linear' was built for the grid {self.grid}, got "
                                 f"{tuple(x.shape[-2:])}; use router_spatial='gap' for other input sizes")
            pooled = self.pool(x.flatten(2)).squeeze(-1)                             # (B, Di)
        else:
            pooled = x.mean(dim=(2, 3))
        logits, noise, mix = self.head(torch.cat([channel, self.spatial(pooled)], dim=1)).split(
            [self.n_experts, self.n_experts, 1], dim=1)
        if self.training:
            logits = logits + torch.randn_like(logits) * noise                       # noisy gating
        gates = logits.softmax(dim=1)
        keep = torch.zeros_like(gates).scatter_(1, logits.topk(self.topk, dim=1).indices, 1.0)
        return gates * keep, mix.squeeze(1)


class ParameterExperts(nn.Module):
    """PE for one SSM parameter (B or C) of every task: E shared low-rank experts, per-task routers, task paths.

    ``PE(x; t) = BN_t( BN'_t( Σ_e g_t[e]·Expert_e(x) ) + m_t·TaskPath_t(x) + General(stopgrad(x)) )`` with
    ``Expert_e = Conv1x1(r -> N) ∘ Conv_κ(Di -> r)`` (shared by all tasks), ``TaskPath_t`` of the same low-rank form
    (per task) and ``General = Conv_κ(Di -> N)`` (shared; its input is detached, so only its weights learn from it).
    The E down-projections are one conv with E·r outputs and the E up-projections one grouped 1×1 conv (the
    per-expert initialisation is unchanged); the gate-weighted sum is taken on the rank-r features, before the
    up-projection. LoRA init: Kaiming-uniform(a=√5) weights (PyTorch's default) and zero biases.

    In training, :attr:`gates` holds the last (T·B, E) gates for the load-balancing loss (``None`` in eval).

    Args:
        d_inner: input channels Di.
        d_state: output channels N.
        tasks: task names (one router, task path and pair of BatchNorms each).
        n_experts, rank, topk: E, r and k.
        kernel: κ of the expert down-projections, task paths and general conv.
        router_spatial, grid: see :class:`Router`.
    """

    def __init__(self, d_inner: int, d_state: int, tasks: Sequence[str], n_experts: int = 15, rank: int = 4,
                 topk: int = 9, kernel: int = 1, router_spatial: str = "gap",
                 grid: tuple[int, int] | None = None) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"pe_kernel={kernel} must be a positive odd integer")
        self.tasks = list(tasks)
        self.n_experts, self.rank, self.d_state = n_experts, rank, d_state
        pad = kernel // 2
        self.expert_down = nn.Conv2d(d_inner, n_experts * rank, kernel, padding=pad)
        self.expert_up = nn.Conv2d(n_experts * rank, n_experts * d_state, 1, groups=n_experts)
        self.general = nn.Conv2d(d_inner, d_state, kernel, padding=pad)
        self.routers = nn.ModuleDict({t: Router(d_inner, n_experts, topk, router_spatial, grid) for t in self.tasks})
        self.task_paths = nn.ModuleDict({t: nn.Sequential(nn.Conv2d(d_inner, rank, kernel, padding=pad),
                                                          nn.Conv2d(rank, d_state, 1)) for t in self.tasks})
        self.expert_norms = nn.ModuleDict({t: nn.BatchNorm2d(d_state) for t in self.tasks})
        self.out_norms = nn.ModuleDict({t: nn.BatchNorm2d(d_state) for t in self.tasks})
        for conv in (self.expert_down, self.expert_up, *(m for p in self.task_paths.values() for m in p)):
            nn.init.zeros_(conv.bias)
        self.gates: torch.Tensor | None = None

    def mixture(self, low: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """Σ_e g[e]·Expert_e from the down-projected features: low (B, E·r, H, W), gates (B, E) -> (B, N, H, W)."""
        e, r, n = self.n_experts, self.rank, self.d_state
        up = self.expert_up.weight.view(e, n, r).transpose(0, 1).reshape(n, e * r, 1, 1)
        weighted = low * gates.repeat_interleave(r, dim=1)[:, :, None, None]
        return F.conv2d(weighted, up) + (gates @ self.expert_up.bias.view(e, n))[:, :, None, None]

    def forward(self, xs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{task: (B, Di, H, W)}`` -> ``{task: (B, N, H, W)}``."""
        x = torch.cat([xs[t] for t in self.tasks])                                   # (T·B, Di, H, W)
        low = self.expert_down(x).chunk(len(self.tasks))                             # shared experts, all tasks
        general = self.general(x.detach()).chunk(len(self.tasks))                    # general path, detached input
        out, all_gates = {}, []
        for i, t in enumerate(self.tasks):
            gates, mix = self.routers[t](xs[t])
            all_gates.append(gates)
            experts = self.expert_norms[t](self.mixture(low[i], gates))
            out[t] = self.out_norms[t](experts + mix[:, None, None, None] * self.task_paths[t](xs[t]) + general[i])
        self.gates = torch.cat(all_gates) if self.training else None
        return out


class TaskProjections(nn.ModuleDict):
    """B or C without experts (``moe_b``/``moe_c: false``, the released code's ``MoE_B/C: False``): a per-task
    1×1 conv Di -> N. ``{task: (B, Di, H, W)} -> {task: (B, N, H, W)}``."""

    def __init__(self, d_inner: int, d_state: int, tasks: Sequence[str]) -> None:
        super().__init__({t: nn.Conv2d(d_inner, d_state, 1) for t in tasks})

    def forward(self, xs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: conv(xs[t]) for t, conv in self.items()}


# --------------------------------------------------------------------------------------------------------------------
# The PAME layer (MODELS.md §3.2)


def draw_priors(n_tasks: int, d_state: int, seed: int) -> torch.Tensor:
    """Parameter Priors P^B, P^C of one PAME layer, (2, T, N) on the CPU: trunc-normal (std 0.02, cut at ±2) from
    ``torch.Generator().manual_seed(seed)``, B before C, tasks in order.

    The released code redraws them (same distribution, unseeded) at every construction and saves none; a released
    checkpoint is evaluated here with this draw (MODELS.md §3.6 item 7)."""
    generator = torch.Generator().manual_seed(seed)
    return nn.init.trunc_normal_(torch.empty(2, n_tasks, d_state, device="cpu"), std=PRIOR_STD, generator=generator)


class PAMELayer(nn.Module):
    """One PAME layer over all tasks, on NCHW maps (MODELS.md §3.2, Swin form §3.5).

    Per task t::

        F_t = TaskConv_t(X_t)                       Conv3×3 (d -> d), the paper's Task Convolution
        a_t = GN_t(F_t);  z_t = SiLU(Conv1×1_t(a_t))                             gate
        x_t = Expand_t(SiLU(DWConv3×3_t(a_t)))      Conv1×1 (d -> Di); local_conv="none": SiLU(a_t) (Q1)
        Δ_t = W_dt,t · W_x,t x_t                    low rank R, bias b_dt,t inside the scan (softplus)
        B_t = PE_B(x_t; t) + P^B_t;  C_t = PE_C(x_t; t) + P^C_t                Parameter Experts + Priors
        y_t = Σ_k unperm_k S6(perm_k x_t, perm_k Δ_t, A_t, perm_k B_t, perm_k C_t, D_t)    4 MDHS orders
        out_t = F_t + DropPath(Reduce_t(y_t) ⊙ z_t)  Conv1×1 (Di -> d); no out-norm

    The per-task S6 parameters are stacked over tasks under SS2D's names (set t = task t) and initialised as in
    MTMamba (§0.2); ``x_proj_weight`` yields only Δ's low-rank input (B and C come from the experts). All tasks and
    directions run in one selective-scan call (T·K groups of B and C).

    Args:
        dim: width d.
        tasks: task names.
        d_state, ssm_ratio, dt_rank: N, Di / d and R ("auto" = ceil(d / 16)).
        n_experts, expert_rank, topk, pe_kernel, router_spatial, grid: the Parameter Experts
            (:class:`ParameterExperts`).
        moe_b, moe_c: B / C from the experts (else from a per-task 1×1 conv).
        local_conv: "dw" or "none" (Q1).
        priors: "learnable" (parameters), "frozen" (a fixed random buffer, saved with the model: the released code's
            unregistered constants, Q2) or "none".
        prior_seed: the seed of :func:`draw_priors` for this layer's initial priors.
        a_d: "learnable" (A_log and D are parameters) or "constant" (A = −(1..N), D = 1 as buffers outside the state
            dict, never trained: the released code).
        scan: "hilbert", "z" or "s" (:mod:`models.ops.curves`).
        drop_path: stochastic-depth rate of the residual branch.
        scan_backend: backend of :func:`selective_scan`.
        dt_min, dt_max, dt_init_floor, dt_scale: Δ initialisation (§0.2).
    """

    def __init__(self, dim: int, tasks: Sequence[str], *, d_state: int = 16, ssm_ratio: float = 2.0,
                 dt_rank: int | str = "auto", n_experts: int = 15, expert_rank: int = 4, topk: int = 9,
                 pe_kernel: int = 1, router_spatial: str = "gap", grid: tuple[int, int] | None = None,
                 moe_b: bool = True, moe_c: bool = True, local_conv: str = "dw", priors: str = "learnable",
                 prior_seed: int = PRIOR_SEED, a_d: str = "learnable", scan: str = "hilbert", drop_path: float = 0.0,
                 scan_backend: str = "auto", dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 dt_scale: float = 1.0) -> None:
        super().__init__()
        for key, value in (("local_conv", local_conv), ("priors", priors), ("a_d", a_d)):
            if value not in PAME_CHOICES[key]:
                raise ValueError(f"{key}={value!r} is not valid; valid: {list(PAME_CHOICES[key])}")
        self.tasks = list(tasks)
        self.orders = curve_orders(scan)
        self.scan_backend = scan_backend
        n_tasks, di = len(self.tasks), int(ssm_ratio * dim)
        r = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.d_inner, self.d_state = di, d_state

        def per_task(make) -> nn.ModuleDict:
            return nn.ModuleDict({t: make() for t in self.tasks})

        self.task_conv = per_task(lambda: nn.Conv2d(dim, dim, 3, padding=1))
        self.norm = per_task(lambda: _group_norm(dim))
        self.gate = per_task(lambda: nn.Conv2d(dim, dim, 1))
        if local_conv == "dw":
            self.local = per_task(lambda: nn.Conv2d(dim, dim, 3, padding=1, groups=dim))
        self.expand = per_task(lambda: nn.Conv2d(dim, di, 1))
        self.reduce = per_task(lambda: nn.Conv2d(di, dim, 1))
        # per-task S6 parameters, stacked over tasks (SS2D names, MODELS.md §0.2)
        self.x_proj_weight = nn.Parameter(torch.empty(n_tasks, r, di))
        self.dt_projs_weight = nn.Parameter(torch.empty(n_tasks, di, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(n_tasks, di))
        if a_d == "learnable":
            self.A_logs = nn.Parameter(torch.empty(n_tasks * di, d_state))
            self.Ds = nn.Parameter(torch.empty(n_tasks * di))
        else:   # the released code's constants: not trained, not saved (rebuilt identically at construction)
            self.register_buffer("A_logs", torch.empty(n_tasks * di, d_state), persistent=False)
            self.register_buffer("Ds", torch.empty(n_tasks * di), persistent=False)
        init_ssm_parameters(self, dt_min, dt_max, dt_init_floor, dt_scale)

        pe = dict(n_experts=n_experts, rank=expert_rank, topk=topk, kernel=pe_kernel, router_spatial=router_spatial,
                  grid=grid)
        self.pe_b = ParameterExperts(di, d_state, self.tasks, **pe) if moe_b else TaskProjections(di, d_state, tasks)
        self.pe_c = ParameterExperts(di, d_state, self.tasks, **pe) if moe_c else TaskProjections(di, d_state, tasks)
        # Parameter Priors P^B, P^C: (2, T, N), from the layer's seed
        self.prior_seed = prior_seed
        prior = torch.empty(2, n_tasks, d_state)
        if prior.device.type != "meta":
            prior.copy_(draw_priors(n_tasks, d_state, prior_seed))
        if priors == "learnable":
            self.priors = nn.Parameter(prior)
        elif priors == "frozen":
            self.register_buffer("priors", prior)
        else:
            self.priors = None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, xs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{task: (B, d, H, W)}`` -> ``{task: (B, d, H, W)}``."""
        skip, gate, x = {}, {}, {}
        for t in self.tasks:
            f = self.task_conv[t](xs[t])                                             # Task Convolution
            a = self.norm[t](f)
            skip[t], gate[t] = f, F.silu(self.gate[t](a))
            x[t] = self.expand[t](F.silu(self.local[t](a) if hasattr(self, "local") else a))
        b_par, c_par = self.pe_b(x), self.pe_c(x)
        if self.priors is not None:
            for i, t in enumerate(self.tasks):
                b_par[t] = b_par[t] + self.priors[0, i][:, None, None]
                c_par[t] = c_par[t] + self.priors[1, i][:, None, None]
        y = self.scan(x, b_par, c_par)
        return {t: skip[t] + self.drop_path(self.reduce[t](y[t]) * gate[t]) for t in self.tasks}

    def scan(self, x: Mapping[str, torch.Tensor], b_par: Mapping[str, torch.Tensor],
             c_par: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The MDHS selective scan of every task: x (B, Di, H, W), B/C (B, N, H, W) per task -> (B, Di, H, W).

        Δ comes from x through the task's low-rank projection. Sequence (t, k) reads the maps in order k and uses
        task t's Δ projection, A, D and Δ bias; the outputs are mapped back to raster order and summed over k.
        """
        tasks, k = self.tasks, len(self.orders)
        n_tasks, di, n = len(tasks), self.d_inner, self.d_state
        u = torch.stack([x[t] for t in tasks], dim=1)                                # (B, T, Di, H, W)
        b, _, _, h, w = u.shape
        dt = torch.einsum("b t d h w, t r d -> b t r h w", u, self.x_proj_weight)
        dt = torch.einsum("b t r h w, t d r -> b t d h w", dt, self.dt_projs_weight)  # (B, T, Di, H, W)
        bc = torch.stack([torch.stack([b_par[t], c_par[t]], dim=1) for t in tasks], dim=1)  # (B, T, 2, N, H, W)
        maps = torch.cat([u, dt, bc.flatten(2, 3)], dim=2)                           # (B, T, 2Di+2N, H, W)
        seqs = cross_scan(maps.flatten(1, 2), self.orders)                           # (B, K, T·(2Di+2N), L)
        seqs = seqs.view(b, k, n_tasks, 2 * di + 2 * n, h * w).transpose(1, 2)      # (B, T, K, 2Di+2N, L)
        us, dts, bs, cs = seqs.split([di, di, n, n], dim=3)

        def per_sequence(p: torch.Tensor) -> torch.Tensor:                           # (T, ...) -> (T·K·...)
            return to_scan_dtype(p).unsqueeze(1).expand(n_tasks, k, *p.shape[1:]).reshape(-1, *p.shape[2:])

        y = selective_scan(
            to_scan_dtype(us.reshape(b, -1, h * w)),                                         # (B, T·K·Di, L)
            to_scan_dtype(dts.reshape(b, -1, h * w)),
            per_sequence(-torch.exp(self.A_logs.view(n_tasks, di, n))),             # (T·K·Di, N)
            to_scan_dtype(bs.reshape(b, n_tasks * k, n, h * w)),                             # group t·K + k
            to_scan_dtype(cs.reshape(b, n_tasks * k, n, h * w)),
            per_sequence(self.Ds.view(n_tasks, di)),                                # (T·K·Di,)
            delta_bias=per_sequence(self.dt_projs_bias),
            delta_softplus=True,
            backend=self.scan_backend,
        )
        y = y.view(b, n_tasks, k, di, h * w).transpose(1, 2).reshape(b, k, n_tasks * di, h * w)
        y = cross_merge(y, h, w, self.orders).view(b, n_tasks, di, h, w).to(u.dtype)
        return {t: y[:, i] for i, t in enumerate(tasks)}


# --------------------------------------------------------------------------------------------------------------------
# Layouts


class PAMEStage(nn.Module):
    """A ``pame_swin`` decoder stage (MODELS.md §3.5): ``len(drop_path)`` PAME layers on channels-last task maps.

    ``{task: (B, H, W, C)} -> {task: (B, H, W, C)}``; ``layer_kwargs`` go to every :class:`PAMELayer`, layer j gets
    the prior seed ``first_seed + j``.
    """

    def __init__(self, dim: int, tasks: Sequence[str], drop_path: Sequence[float], first_seed: int = PRIOR_SEED,
                 **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(PAMELayer(dim, tasks, drop_path=rate, prior_seed=first_seed + j, **layer_kwargs)
                                    for j, rate in enumerate(drop_path))

    def forward(self, x: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = {t: to_channels_first(v) for t, v in x.items()}
        for layer in self.layers:
            x = layer(x)
        return {t: to_channels_last(v) for t, v in x.items()}


class PAMMTap(nn.Module):
    """The PAME module of one ViT tap (MODELS.md §3.1-3.2): ``first_decode`` (Conv3×3 C_bb -> d, GroupNorm32),
    shared by the tasks, then ``depth`` PAME layers (layer j with the prior seed ``first_seed + j``).
    ``(B, C_bb, h, w) -> {task: (B, d, h, w)}``."""

    def __init__(self, in_dim: int, dim: int, tasks: Sequence[str], depth: int, first_seed: int = PRIOR_SEED,
                 **layer_kwargs) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.first_decode = nn.Sequential(nn.Conv2d(in_dim, dim, 3, padding=1), _group_norm(dim))
        self.layers = nn.ModuleList(PAMELayer(dim, tasks, prior_seed=first_seed + j, **layer_kwargs)
                                    for j in range(depth))

    def forward(self, feature: torch.Tensor) -> dict[str, torch.Tensor]:
        in_dim = self.first_decode[0].in_channels
        if feature.shape[1] != in_dim:
            raise ValueError(f"first_decode takes {in_dim} channels (model.pame.backbone_dim) but the encoder gives "
                             f"{feature.shape[1]}; the released NYUD config's backbone_dim 768 cannot run on ViT-L "
                             "(MODELS.md §3.3 Q6): leave model.pame.backbone_dim null to train or evaluate")
        shared = self.first_decode(feature)
        x = {t: shared for t in self.tasks}
        for layer in self.layers:
            x = layer(x)
        return x


class PAMMDecoder(nn.Module):
    """PAMM's decoder on ViT taps (MODELS.md §3.1): one :class:`PAMMTap` per tap, then per task a softmax fusion
    over the taps and a ×4 bilinear up-sampling (stride 16 -> 4).

    Per task: ``m = softmax_taps(Conv3×3(d -> n_taps)(GELU(BN(Conv1×1(n_taps·d -> d)(cat_i F_i)))))``,
    ``F = Σ_i m_i ⊙ F_i``. ``forward: [(B, C_bb, h, w)] * n_taps -> {task: (B, d, 4h, 4w)}``. ``backbone_dim``
    overrides C_bb of the ``first_decode`` convs (the released NYUD config's 768, Q6; default: the encoder's).
    """

    def __init__(self, encoder_channels: Sequence[int], tasks: Sequence[str], dim: int, depth: int = 1,
                 backbone_dim: int | None = None, **layer_kwargs) -> None:
        super().__init__()
        self.tasks = list(tasks)
        n_taps = len(encoder_channels)
        self.taps = nn.ModuleList(PAMMTap(backbone_dim or c, dim, tasks, depth, PRIOR_SEED + i * depth,
                                          **layer_kwargs) for i, c in enumerate(encoder_channels))
        self.fusion = nn.ModuleDict({t: nn.Sequential(
            nn.Conv2d(n_taps * dim, dim, 1), nn.BatchNorm2d(dim), nn.GELU(), nn.Conv2d(dim, n_taps, 3, padding=1))
            for t in self.tasks})
        self.out_channels = dim

    def forward(self, features: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        per_tap = [tap(f) for tap, f in zip(self.taps, features)]
        out = {}
        for t in self.tasks:
            maps = torch.stack([p[t] for p in per_tap], dim=1)                      # (B, n_taps, d, h, w)
            weights = self.fusion[t](maps.flatten(1, 2)).softmax(dim=1)              # (B, n_taps, h, w)
            fused = torch.einsum("b i h w, b i c h w -> b c h w", weights, maps)
            out[t] = F.interpolate(fused, scale_factor=4, mode="bilinear", align_corners=False)
        return out


class PAMMHead(nn.Module):
    """PAMM's task head: Conv3×3 (d -> d) + BN + GELU, then Conv1×1 (d -> n_t). ``(B, d, H, W) -> (B, n_t, H, W)``."""

    def __init__(self, dim: int, num_outputs: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.GELU())
        self.project = nn.Conv2d(dim, num_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.body(x))


class PAMEModel(MultiTaskModel):
    """:class:`MultiTaskModel` whose training forward also returns the load-balancing loss of its PE layers.

    In training, ``forward`` adds ``LOAD_BALANCE_KEY: Σ_layers CV²(importance)`` (Q5; one term per PE layer, B and
    C of every PAME layer) to the task predictions; :class:`losses.multitask.MultiTaskLoss` weights it by
    ``model.pame.lb_weight``. In eval mode the output holds the task predictions only.
    """

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(image)
        if self.training:
            terms = [load_balance_loss(m.gates) for m in self.modules()
                     if isinstance(m, ParameterExperts) and m.gates is not None]
            if terms:
                out[LOAD_BALANCE_KEY] = torch.stack(terms).sum()
        return out


@torch.no_grad()
def released_init(model: nn.Module) -> None:
    """The released code's initialisation of the PAME layers and PAMM heads (``init: official``, MODELS.md §3.6
    item 6): its ``init_weights`` applies timm's ViT initialisation to every ``nn.Linear`` (trunc-normal std 0.02,
    zero bias), which reaches the Δ projections (so softplus(Δ bias) = 0.693 everywhere) and the routers'
    Linear(H·W -> 1); the heads' first conv is trunc-normal (0.02) and their last bias N(0, 0.02). The released
    code's 1×1 convs (our Linear layers on pooled vectors) keep PyTorch's default, the same distribution.
    """
    for m in model.modules():
        if isinstance(m, PAMELayer):
            trunc_normal_(m.x_proj_weight, std=INIT_STD)
            trunc_normal_(m.dt_projs_weight, std=INIT_STD)
            m.dt_projs_bias.zero_()
        elif isinstance(m, Router) and hasattr(m, "pool"):
            trunc_normal_(m.pool.weight, std=INIT_STD)
            m.pool.bias.zero_()
        elif isinstance(m, PAMMHead):
            trunc_normal_(m.body[0].weight, std=INIT_STD)
            m.project.bias.normal_(0.0, INIT_STD)


def _layer_kwargs(cfg) -> dict:
    """PAMELayer arguments shared by both layouts, from ``cfg.model`` and ``cfg.model.pame``."""
    m, p = cfg.model, cfg.model.pame
    return dict(d_state=m.d_state, ssm_ratio=m.ssm_ratio, dt_rank=m.dt_rank, n_experts=p.n_experts,
                expert_rank=p.expert_rank, topk=p.topk, pe_kernel=p.pe_kernel, router_spatial=p.router_spatial,
                moe_b=p.moe_b, moe_c=p.moe_c, local_conv=p.local_conv, priors=p.priors, a_d=p.a_d, scan=p.scan,
                scan_backend=m.scan_backend)


@register_model("pame_vit")
def build_pame_vit(cfg) -> PAMEModel:
    """PAMM's released layout (MODELS.md §3.1): ViT taps -> PAME per tap -> softmax tap fusion -> conv heads."""
    m = cfg.model
    if m.drop_path_rate:
        raise ValueError(f"model.drop_path_rate={m.drop_path_rate!r}: pame_vit has no decoder drop path (PAMM); "
                         "set it to 0 (the ViT's own rate is model.encoder_drop_path_rate)")
    train_size, test_size = tuple(cfg.TRAIN.SCALE), tuple(cfg.TEST.SCALE)
    encoder = build_vit_encoder(m.backbone, img_size=train_size, pretrained=uses_timm_download(cfg),
                                pretrained_path=m.pretrained_path, drop_path_rate=m.encoder_drop_path_rate,
                                dynamic_img_size=test_size != train_size, **(m.get("backbone_kwargs") or {}))
    grid = (train_size[0] // encoder.strides[0], train_size[1] // encoder.strides[0])
    tasks = cfg.TASKS.NAMES
    decoder = PAMMDecoder(encoder.channels, tasks, m.pame.dim, m.pame.depth, m.pame.backbone_dim, grid=grid,
                          **_layer_kwargs(cfg))
    heads = {t: PAMMHead(decoder.out_channels, cfg.TASKS.NUM_OUTPUT[t]) for t in tasks}
    model = PAMEModel(encoder, decoder, heads)
    if m.pame.init == "official":
        released_init(model)
    return model


@register_model("pame_swin", input_multiple=INPUT_MULTIPLE)
def build_pame_swin(cfg) -> PAMEModel:
    """Our Swin-L adaptation (MODELS.md §3.5): MTMamba's skeleton and heads, ``pame.depth`` PAME layers per stage."""
    m = cfg.model
    if m.pame.backbone_dim is not None:
        raise ValueError(f"model.pame.backbone_dim={m.pame.backbone_dim!r} applies to pame_vit only; set it to null")
    train_size, test_size = tuple(cfg.TRAIN.SCALE), tuple(cfg.TEST.SCALE)
    encoder = build_encoder(m.backbone, img_size=train_size, pretrained=uses_timm_download(cfg),
                            pretrained_path=m.pretrained_path, pad_mode=m.swin_pad_mode,
                            drop_path_rate=m.encoder_drop_path_rate, dynamic_img_size=test_size != train_size,
                            **(m.get("backbone_kwargs") or {}))
    tasks = cfg.TASKS.NAMES
    widths = encoder.channels[::-1][1:]                                              # 768, 384, 192 for Swin-L
    grids = [(train_size[0] // s, train_size[1] // s) for s in encoder.strides[::-1][1:]]
    rates = drop_path_schedule(m.drop_path_rate, len(widths), m.pame.depth)          # linspace(0.2, 0, 3) at depth 1
    stages = [PAMEStage(c, tasks, r, PRIOR_SEED + i * m.pame.depth, grid=g, **_layer_kwargs(cfg))
              for i, (c, r, g) in enumerate(zip(widths, rates, grids))]
    decoder = ThreeStageDecoder(encoder.channels, tasks, stages)
    heads = {t: TaskHead(decoder.out_channels, cfg.TASKS.NUM_OUTPUT[t]) for t in tasks}
    model = PAMEModel(encoder, decoder, heads)
    if m.pame.init == "official":
        released_init(model)
    return model

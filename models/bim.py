"""BIM-repro: a reconstruction of BIM, "Enhancing Mamba Decoder with Bidirectional Interaction in Multi-Task Dense
Prediction" (Cao et al., ICCV 2025, arXiv 2508.20376).

No code was released and only the paper's opening could be read (MODELS.md §2.0). From the paper (via its
summaries, §2.1): three MFR blocks, one per decoder stage, each made of several per-task MSST blocks
(multi-scale single-task, "MS-Scan") and one BCFR block shared by all tasks (bidirectional cross-task feature
refinement, "BI-Scan"). BI-Scan splits the channels into a forward and a backward half; the forward half reads all
tasks as one task-first sequence of T·H·W tokens, then re-reads that output position-first. Everything else here is
**inferred** (§2.3) and exposed as a switch under ``model.bim``: the MS-Scan reading (``ms_scan``), the BCFR width
(``bcfr_expand``), cascaded or parallel modes (``bcfr_modes``), the number of MSST blocks (``n_msst``), and the
backward half as flipped sequences. The encoder, the expand/skip fusion, the heads and the stochastic-depth schedule
are MTMamba's (:mod:`models.mtmamba`), so that a comparison isolates the blocks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from .decoder import INPUT_MULTIPLE
from .heads import MultiTaskModel
from .mtmamba import assemble_model, drop_path_schedule, encoder_from_config
from .ops.scan_orders import SS2D_ORDERS, cross_merge, cross_scan
from .ops.task_orders import task_merge, task_rescan, task_scan
from .registry import register_model
from .ss2d import add_ssm_parameters, ssm_scan

__all__ = ["MS_SCANS", "BCFR_MODES", "BCFR_EXPANSIONS", "MTMAMBA_ONLY_SWITCHES", "SSMBank", "MSST", "BCFR", "BIMStage",
           "build_bim"]

BCFR_MODES = ("cascade", "parallel")
BCFR_EXPANSIONS = (1, 2)
# BI-Scan orders of the (forward, backward) halves, MODELS.md §2.3
TASK_FIRST = ("task_first", "task_first_rev")
POSITION_FIRST = ("position_first", "position_first_rev")


@dataclass(frozen=True)
class MultiScaleScan:
    """A reading of MS-Scan (MODELS.md §2.3): scan orders at full and at half resolution, one SSM set per order.

    ``msvmamba``: MSVMamba's multi-scale 2-D scan (Shi et al., 2024, ``multiscale_4scan_12``, ``ms_split=[1, 3]``):
    the half-resolution map is DWConv7×7/2 + SiLU of the pre-conv input, its orders are concatenated into one
    sequence scanned with a single parameter set, and out_norm is applied to each branch before the merge.
    Otherwise the half-resolution map is DWConv3×3/2 of the full-resolution scan input, each order has its own set,
    and out_norm follows the merge, as in SS2D.
    """

    full: tuple[str, ...]
    low: tuple[str, ...]
    msvmamba: bool = False


MS_SCANS: dict[str, MultiScaleScan] = {
    "msvmamba": MultiScaleScan(("raster",), ("raster_rev", "transposed", "transposed_rev"), msvmamba=True),
    "split": MultiScaleScan(("raster", "raster_rev"), ("transposed", "transposed_rev")),
    "full": MultiScaleScan(SS2D_ORDERS, SS2D_ORDERS),
}


def _dt_rank(dim: int, dt_rank: int | str) -> int:
    return math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)


class SSMBank(nn.Module):
    """K S6 parameter sets with SS2D's names and initialisation (MODELS.md §0.2): (B, K, D, L) -> (B, K, D, L).

    Sequence k runs with set k (:func:`models.ss2d.ssm_scan`); the output is fp32 (float64 passes through).
    """

    def __init__(self, k: int, d_inner: int, d_state: int, dt_rank: int, scan_backend: str = "auto") -> None:
        super().__init__()
        self.scan_backend = scan_backend
        add_ssm_parameters(self, k, d_inner, d_state, dt_rank)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        return ssm_scan(self, xs, self.scan_backend)


class MSST(nn.Module):
    """Multi-scale single-task block (MODELS.md §2.3, INFERRED): an STM block (MTMamba Eqs. 13-18) whose 2-D scan
    reads the map at two scales.

    ``z -> LN -> in_proj -> (x, gate); y = MS-Scan(x); z + DropPath(out_proj(y ⊙ SiLU(gate)))``, where MS-Scan scans
    SiLU(DWConv3×3(x)) in ``full`` orders and a stride-2 map in ``low`` orders, bilinearly up-samples the
    half-resolution result (align_corners=False) to H×W and adds the two.

    Args:
        dim: width C.
        drop_path: stochastic-depth rate of the residual branch.
        ms_scan: "msvmamba", "split" or "full" (:data:`MS_SCANS`).
        d_state, ssm_ratio, dt_rank, scan_backend: as for SS2D (N, d_inner / C, R, selective-scan backend).
    """

    def __init__(self, dim: int, drop_path: float = 0.0, ms_scan: str = "msvmamba", d_state: int = 16,
                 ssm_ratio: float = 2.0, dt_rank: int | str = "auto", scan_backend: str = "auto") -> None:
        super().__init__()
        if ms_scan not in MS_SCANS:
            raise ValueError(f"bim.ms_scan={ms_scan!r} is not valid; valid: {list(MS_SCANS)}")
        self.spec = spec = MS_SCANS[ms_scan]
        di, r = int(ssm_ratio * dim), _dt_rank(dim, dt_rank)
        low_kernel = 7 if spec.msvmamba else 3
        self.norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 2 * di, bias=False)
        self.conv2d = nn.Conv2d(di, di, 3, padding=1, groups=di)
        self.conv2d_low = nn.Conv2d(di, di, low_kernel, stride=2, padding=low_kernel // 2, groups=di)
        self.ssm = SSMBank(len(spec.full), di, d_state, r, scan_backend)
        self.ssm_low = SSMBank(1 if spec.msvmamba else len(spec.low), di, d_state, r, scan_backend)
        self.out_norm = nn.LayerNorm(di)
        self.out_proj = nn.Linear(di, dim, bias=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _norm_sequences(self, ys: torch.Tensor) -> torch.Tensor:
        """out_norm on every token of (B, K, D, L) sequences."""
        return self.out_norm(ys.transpose(2, 3)).transpose(2, 3)

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """MS-Scan of the in_proj output: (B, D, H, W) -> (B, H, W, D), out_norm included."""
        spec, (h, w) = self.spec, x.shape[-2:]
        u = F.silu(self.conv2d(x))
        u_low = F.silu(self.conv2d_low(x)) if spec.msvmamba else self.conv2d_low(u)
        hl, wl = u_low.shape[-2:]
        ys = self.ssm(cross_scan(u, spec.full))                                    # (B, K, D, H·W)
        xs_low = cross_scan(u_low, spec.low)                                       # (B, K', D, h·w)
        if spec.msvmamba:   # the K' low-resolution sequences as one sequence of K'·h·w tokens, one set
            b, k, d, length = xs_low.shape
            ys_low = self.ssm_low(xs_low.transpose(1, 2).reshape(b, 1, d, k * length))
            ys_low = ys_low.view(b, d, k, length).transpose(1, 2)
            ys, ys_low = self._norm_sequences(ys), self._norm_sequences(ys_low)
        else:
            ys_low = self.ssm_low(xs_low)
        low = F.interpolate(cross_merge(ys_low, hl, wl, spec.low), size=(h, w), mode="bilinear", align_corners=False)
        y = (cross_merge(ys, h, w, spec.full) + low).permute(0, 2, 3, 1)           # (B, H, W, D)
        return (y if spec.msvmamba else self.out_norm(y)).to(x.dtype)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x, gate = self.in_proj(self.norm(z)).chunk(2, dim=-1)
        y = self.scan(x.permute(0, 3, 1, 2)) * F.silu(gate)                       # Eq. 16: σ = SiLU
        return z + self.drop_path(self.out_proj(y))


class BCFR(nn.Module):
    """Bidirectional cross-task feature refinement block with BI-Scan (MODELS.md §2.1, §2.3), shared by all tasks.

    Per task: ``a = LN(F); (x, g) = in_proj(a); x = SiLU(DWConv3×3(x))``, E·C channels split into a forward and a
    backward half of E·C/2. The halves of all tasks are stacked into T·H·W tokens and run through :meth:`bi_scan`;
    then per task ``F + DropPath(out_proj(LN(concat(y→, y←)) ⊙ SiLU(g)))``.

    Four SSMs (task-first / position-first × forward / backward), each with its own x_proj, dt_proj, A_log and D,
    shared by all tasks: ``task_first`` holds the (forward, backward) sets of the task-first mode, ``position_first``
    those of the position-first mode.

    Args:
        dim: width C of every task feature.
        tasks: task names, in the order of the joint sequence.
        drop_path: stochastic-depth rate of the residual branches.
        expand: E, the inner width E·C (1 or 2; INFERRED, MODELS.md §2.3).
        modes: "cascade" (the position-first mode reads the task-first output; the paper's summary) or "parallel"
            (both modes read the block's sequence and their outputs are summed; INFERRED alternative).
        d_state, dt_rank, scan_backend: N, R (ceil(C/16) for "auto") and the selective-scan backend.
    """

    def __init__(self, dim: int, tasks: Sequence[str], drop_path: float = 0.0, expand: int = 2,
                 modes: str = "cascade", d_state: int = 16, dt_rank: int | str = "auto",
                 scan_backend: str = "auto") -> None:
        super().__init__()
        if expand not in BCFR_EXPANSIONS or isinstance(expand, bool):
            raise ValueError(f"bim.bcfr_expand={expand!r} is not valid; valid: {list(BCFR_EXPANSIONS)}")
        if modes not in BCFR_MODES:
            raise ValueError(f"bim.bcfr_modes={modes!r} is not valid; valid: {list(BCFR_MODES)}")
        inner = expand * dim
        if inner % 2:
            raise ValueError(f"BCFR splits E·C = {inner} channels into two halves; it must be even")
        self.tasks, self.modes = list(tasks), modes
        r = _dt_rank(dim, dt_rank)
        self.norm = nn.ModuleDict({t: nn.LayerNorm(dim) for t in self.tasks})
        self.in_proj = nn.ModuleDict({t: nn.Linear(dim, 2 * inner, bias=False) for t in self.tasks})
        self.conv2d = nn.ModuleDict({t: nn.Conv2d(inner, inner, 3, padding=1, groups=inner) for t in self.tasks})
        self.task_first = SSMBank(2, inner // 2, d_state, r, scan_backend)
        self.position_first = SSMBank(2, inner // 2, d_state, r, scan_backend)
        self.out_norm = nn.ModuleDict({t: nn.LayerNorm(inner) for t in self.tasks})
        self.out_proj = nn.ModuleDict({t: nn.Linear(inner, dim, bias=False) for t in self.tasks})
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def bi_scan(self, x: torch.Tensor, n_tasks: int, hw: tuple[int, int]) -> torch.Tensor:
        """BI-Scan of stacked task maps (:mod:`models.ops.task_orders`): (B, 2, D, T·H·W) -> same.

        Index 0 of axis 1 is the forward half, read task-first then position-first; index 1 is the backward half,
        read in the flipped sequences (tasks T→1, positions L→1). The output is in the stacked layout.
        """
        if self.modes == "cascade":
            y = self.task_first(task_scan(x, TASK_FIRST, n_tasks, hw))                      # S_1 -> Y_1
            y = self.position_first(task_rescan(y, TASK_FIRST, POSITION_FIRST, n_tasks, hw))  # S_2 -> Y_2
            return task_merge(y, POSITION_FIRST, n_tasks, hw)
        y_tf = self.task_first(task_scan(x, TASK_FIRST, n_tasks, hw))
        y_pf = self.position_first(task_scan(x, POSITION_FIRST, n_tasks, hw))
        return task_merge(y_tf, TASK_FIRST, n_tasks, hw) + task_merge(y_pf, POSITION_FIRST, n_tasks, hw)

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b, h, w, _ = feats[self.tasks[0]].shape
        n = len(self.tasks)
        xs, gates = [], []
        for t in self.tasks:
            x, g = self.in_proj[t](self.norm[t](feats[t])).chunk(2, dim=-1)
            xs.append(F.silu(self.conv2d[t](x.permute(0, 3, 1, 2))))              # (B, E·C, H, W)
            gates.append(g)
        x = torch.stack(xs, dim=1)                                                 # (B, T, E·C, H, W)
        d = x.shape[2] // 2
        stacked = x.view(b, n, 2, d, h * w).permute(0, 2, 3, 1, 4).reshape(b, 2, d, n * h * w)
        y = self.bi_scan(stacked, n, (h, w)).view(b, 2, d, n, h, w)
        y = y.permute(0, 3, 4, 5, 1, 2).reshape(b, n, h, w, 2 * d).to(x.dtype)  # concat(y→, y←) per task
        return {t: feats[t] + self.drop_path(self.out_proj[t](self.out_norm[t](y[:, i]) * F.silu(gates[i])))
                for i, t in enumerate(self.tasks)}


class BIMStage(nn.Module):
    """One MFR block: ``n_msst`` MSST blocks per task, then one BCFR block shared by all tasks (MODELS.md §2.2-§2.3).

    Args:
        dim: stage width C.
        tasks: task names.
        drop_path: one rate per block, in order: MSST 1..n, then BCFR.
        n_msst, ms_scan, bcfr_expand, bcfr_modes: the ``model.bim`` switches.
        d_state, ssm_ratio, dt_rank, scan_backend: SSM settings shared with MTMamba (``model.*``).
    """

    def __init__(self, dim: int, tasks: Sequence[str], drop_path: Sequence[float], n_msst: int = 2,
                 ms_scan: str = "msvmamba", bcfr_expand: int = 2, bcfr_modes: str = "cascade", d_state: int = 16,
                 ssm_ratio: float = 2.0, dt_rank: int | str = "auto", scan_backend: str = "auto") -> None:
        super().__init__()
        if len(drop_path) != n_msst + 1:
            raise ValueError(f"need {n_msst + 1} drop-path rates, got {len(drop_path)}")
        ssm = dict(d_state=d_state, dt_rank=dt_rank, scan_backend=scan_backend)
        self.msst = nn.ModuleDict({t: nn.Sequential(*(MSST(dim, drop_path[i], ms_scan, ssm_ratio=ssm_ratio, **ssm)
                                                      for i in range(n_msst))) for t in tasks})
        self.bcfr = BCFR(dim, tasks, drop_path[-1], bcfr_expand, bcfr_modes, **ssm)

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.bcfr({t: blocks(x[t]) for t, blocks in self.msst.items()})


# model.* switches of MTMamba's stage that BIM does not read; the config validation keeps them at their defaults
MTMAMBA_ONLY_SWITCHES = ("stm_blocks", "block", "ctm", "ctm_fusion", "mfe", "gate")


@register_model("bim", input_multiple=INPUT_MULTIPLE)
def build_bim(cfg) -> MultiTaskModel:
    m, bim = cfg.model, cfg.model.bim
    encoder = encoder_from_config(cfg)
    widths = encoder.channels[::-1][1:]                          # 768, 384, 192 for Swin-L
    rates = drop_path_schedule(m.drop_path_rate, len(widths), bim.n_msst + 1)
    stages = [BIMStage(c, cfg.TASKS.NAMES, r, n_msst=bim.n_msst, ms_scan=bim.ms_scan, bcfr_expand=bim.bcfr_expand,
                       bcfr_modes=bim.bcfr_modes, d_state=m.d_state, ssm_ratio=m.ssm_ratio, dt_rank=m.dt_rank,
                       scan_backend=m.scan_backend) for c, r in zip(widths, rates)]
    return assemble_model(cfg, encoder, stages)

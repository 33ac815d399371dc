"""Decoder blocks shared by the decoder variants: PatchExpand, the STM block and the CTM block.

All blocks take and return channels-last maps (B, H, W, C).

- ``PatchExpand``: Swin-Unet (Cao et al., 2021, https://github.com/HuCaoFighting/Swin-Unet);
  MTMamba Eq. 26 (upsampling) and, with ``scale=4``, the heads' FinalPatchExpand_X4.
- ``STM``: self-task Mamba block, MTMamba Eqs. 13-18 (a VMamba VSS block without MLP).
- ``CTM``: cross-task Mamba block, MTMamba Eqs. 19-25, with the gate convention of the
  official code (MODELS.md §1.4).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath

from .attention import WindowMSA
from .ss2d import SS2D

__all__ = ["PatchExpand", "STM", "CTM", "CTM_FUSIONS"]

CTM_FUSIONS = ("adaptive", "task_only", "shared_only")


class PatchExpand(nn.Module):
    """Upsample by ``scale`` with a Linear and a pixel shuffle in channel-last block layout.

    ``(B, h, w, C_in) -> Linear(C_in, scale²·C_out, no bias) -> (B, scale·h, scale·w, C_out) -> LayerNorm``.
    The expanded vector is read as ``[p1][p2][c]`` (einops ``b h w (p1 p2 c) -> b (h p1) (w p2) c``).

    Args:
        dim: input width C_in.
        scale: upsampling factor (2 between decoder stages, 4 in the heads).
        out_dim: output width C_out (default C_in / 2 for ``scale=2``, C_in for ``scale=4``,
            which gives Swin-Unet's PatchExpand and FinalPatchExpand_X4).
    """

    def __init__(self, dim: int, scale: int = 2, out_dim: int | None = None) -> None:
        super().__init__()
        self.scale = scale
        self.out_dim = out_dim or (dim // 2 if scale == 2 else dim)
        self.expand = nn.Linear(dim, scale * scale * self.out_dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        p, c = self.scale, self.out_dim
        x = self.expand(x).view(b, h, w, p, p, c)                     # (B, h, w, p1, p2, C_out)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, c)   # (B, h·p1, w·p2, C_out)
        return self.norm(x)


class STM(nn.Module):
    """Self-task Mamba block (MTMamba Eqs. 13-18): ``z + DropPath(SS2D(LN(z)))``.

    The paper's MFE-Linear and gate-Linear are SS2D's fused ``in_proj``; its final Linear is
    SS2D's ``out_proj``. The official model has no MLP branch (``mlp_ratio = 0``).

    Args:
        dim: width C.
        drop_path: stochastic-depth rate of the residual branch.
        ssm_kwargs: passed to :class:`SS2D` (d_state, ssm_ratio, dt_rank, scan_backend, ...).
    """

    def __init__(self, dim: int, drop_path: float = 0.0, **ssm_kwargs) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(dim, **ssm_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.drop_path(self.op(self.norm(z)))


class CTM(nn.Module):
    """Cross-task Mamba block (MTMamba Eqs. 19-25), shared by all tasks of a stage.

    A shared MFE reads the concatenation of all task features; each task mixes it with its
    own MFE output through a learned sigmoid gate, projects back to C and adds a residual.

    NOTE(code≠paper): Eq. 24 writes ``g ⊙ task + (1 − g) ⊙ shared``; the official code, followed
    here, applies g to the shared feature. The two are reparametrisations of each other
    (σ(−a) = 1 − σ(a)), but the meaning of "g = 0" / "g = 1" in Table 5 flips.

    ``fusion`` (MTMamba Table 5): "adaptive" is the learned gate; "task_only" uses the task branch alone
    (the paper's g = 1, code g = 0) and "shared_only" the shared branch alone (the paper's g = 0, code
    g = 1). A fixed fusion builds only the branch it uses, so every parameter receives a gradient.

    Args:
        dim: width C of every task feature.
        tasks: task names, in the order of the shared concatenation.
        drop_path: stochastic-depth rate of the residual branches.
        fusion: "adaptive", "task_only" or "shared_only".
        ssm_kwargs: passed to every :class:`SS2D` (d_state, ssm_ratio, dt_rank, scan_backend, mixer,
            gate_mixer, wmsa_heads, ...); ``gate_mixer="wmsa"`` also puts a :class:`WindowMSA` before each task gate.
    """

    def __init__(self, dim: int, tasks: Sequence[str], drop_path: float = 0.0, fusion: str = "adaptive",
                 **ssm_kwargs) -> None:
        gate_mixer, wmsa_heads = ssm_kwargs.get("gate_mixer", "linear"), ssm_kwargs.get("wmsa_heads", 6)
        super().__init__()
        if fusion not in CTM_FUSIONS:
            raise ValueError(f"CTM fusion {fusion!r} is not valid; valid: {list(CTM_FUSIONS)}")
        self.tasks, self.fusion = list(tasks), fusion
        n_tasks, inner = len(self.tasks), int(ssm_kwargs.get("ssm_ratio", 2.0) * dim)
        mfe = dict(gate=False, out_proj=False, **ssm_kwargs)
        if fusion != "task_only":
            self.norm_shared = nn.LayerNorm(n_tasks * dim)
            self.mfe_shared = SS2D(dim, in_dim=n_tasks * dim, **mfe)
        if fusion != "shared_only":
            self.norm = nn.ModuleDict({t: nn.LayerNorm(dim) for t in self.tasks})
            self.mfe = nn.ModuleDict({t: SS2D(dim, **mfe) for t in self.tasks})
        if fusion == "adaptive":
            self.gate = nn.ModuleDict({t: nn.Linear(dim, inner, bias=False) for t in self.tasks})
            if gate_mixer == "wmsa":   # Table 4: the gate reads a window-attention view of its input
                self.gate_attn = nn.ModuleDict({t: WindowMSA(dim, wmsa_heads) for t in self.tasks})
        self.out_proj = nn.ModuleDict({t: nn.Linear(inner, dim, bias=False) for t in self.tasks})
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, z: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.fusion != "task_only":
            shared = self.norm_shared(torch.cat([z[t] for t in self.tasks], dim=-1))  # (B, H, W, T·C)
            x_sh = self.mfe_shared(shared)                                          # shared MFE: (B, H, W, 2C)
        out = {}
        for t in self.tasks:
            if self.fusion == "shared_only":
                m = x_sh
            else:
                a = self.norm[t](z[t])                                              # (B, H, W, C)
                x_t = self.mfe[t](a)                                                # task MFE: (B, H, W, 2C)
                if self.fusion == "task_only":
                    m = x_t
                else:
                    g_in = self.gate_attn[t](a) if hasattr(self, "gate_attn") else a
                    g = torch.sigmoid(self.gate[t](g_in))                           # task gate
                    m = g * x_sh + (1 - g) * x_t                                    # Eq. 24, NOTE(code≠paper) above
            out[t] = z[t] + self.drop_path(self.out_proj[t](m))
        return out

"""MTMamba++: "MTMamba++: Enhancing Multi-Task Dense Scene Understanding via Mamba-Based Decoders"
(Lin et al., TPAMI 2025, https://arxiv.org/abs/2408.15101).

What MTMamba++ changes in the MTMamba decoder (MODELS.md §1.8); the encoder, the PatchExpand upsampling, the two
STM blocks per task and stage and the stochastic-depth schedule are MTMamba's (§1.2, §1.3, §1.5):

* ECR (expand, concatenate, reduce): the concatenation of the upsampled task feature and the encoder skip is
  reduced by a 1×1 convolution instead of a Linear (:class:`PointwiseConv`; same function and parameter count).
* S-CTM replaces CTM: one shared map is made from all tasks (LayerNorm, 1×1 conv, 3×3 conv), and every task
  refines its features with a :class:`CSS2D`, a 2-D selective scan whose input is the task map while its SSM
  parameters Δ, B, C come from the shared map.
* LiteHead replaces FinalPatchExpand_X4: 3×3 conv, BatchNorm, ReLU and a 1×1 conv at H/4×W/4, then bilinear ×4.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_

from .decoder import INPUT_MULTIPLE, ThreeStageDecoder, to_channels_first, to_channels_last
from .heads import MultiTaskModel
from .mtmamba import MTMambaStage, drop_path_schedule, encoder_from_config
from .registry import register_model
from .ss2d import SS2D

__all__ = ["PointwiseConv", "CSS2D", "SCTM", "LiteHead", "MTMambaPlusStage", "build_mtmamba_plus"]

# model.* keys of the MTMamba ablations, with the only value MTMamba++ has
_MTMAMBA_ONLY = {"block": "mamba", "ctm": True, "ctm_fusion": "adaptive", "mfe": "ss2d", "gate": "linear"}


class PointwiseConv(nn.Conv2d):
    """A 1×1 convolution applied to channels-last maps: ``(B, H, W, C_in) -> (B, H, W, C_out)``.

    Parameters and initialisation are ``nn.Conv2d``'s (weight ``(C_out, C_in, 1, 1)``), as in the official ECR and
    S-CTM; it computes the equivalent Linear, so the channels-last maps need no permutation.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.flatten(1), self.bias)


class CSS2D(SS2D):
    """Cross-task 2-D selective scan of the S-CTM block (MODELS.md §1.8).

    ``(a, s) -> out``, both ``(B, H, W, C)``: ``a`` the normalised task feature, ``s`` the shared map::

        x, z = split(in_proj(a))                 Linear(C -> 2·d_inner, no bias): scan input and gate
        q    = in_proj_cross(s)                  Linear(C -> d_inner, no bias); no conv, no activation
        x    = SiLU(DWConv3x3(x))
        y    = scan(u = x; Δ, B, C from q)       per direction k: x_proj_k reads the k-th sequence of q
        out  = out_proj(out_norm(y) ⊙ SiLU(z))

    The SSM parameters, their initialisation and the scan are :class:`SS2D`'s (with ``gate`` and ``out_proj``);
    ``in_proj_cross`` is the only addition. ``ssm_kwargs`` are passed to :class:`SS2D`.
    """

    def __init__(self, d_model: int, **ssm_kwargs) -> None:
        super().__init__(d_model, gate=True, out_proj=True, **ssm_kwargs)
        self.in_proj_cross = nn.Linear(d_model, self.d_inner, bias=False)

    def forward(self, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(a).chunk(2, dim=-1)                                # (B, H, W, D) each
        q = to_channels_first(self.in_proj_cross(s))                           # (B, D, H, W)
        x = F.silu(self.conv2d(to_channels_first(x)))                          # (B, D, H, W)
        y = self.out_norm(self.scan(x, ssm_input=q))                           # (B, H, W, D)
        return self.out_proj(y * F.silu(z))


class SCTM(nn.Module):
    """Semantic cross-task Mamba block of MTMamba++ (MODELS.md §1.8), shared by all tasks of a stage.

    ``{t: z_t (B, H, W, C)} -> {t: z_t'}``::

        s    = Conv3x3(Conv1x1(LN(concat_t z_t)))          T·C -> C -> C, with biases, no activation between
        z_t' = z_t + DropPath(CSS2D_t(LN_t(z_t), s))

    Args:
        dim: width C of every task feature.
        tasks: task names, in the order of the shared concatenation.
        drop_path: stochastic-depth rate of the residual branches.
        ssm_kwargs: passed to every :class:`CSS2D` (d_state, ssm_ratio, dt_rank, scan_backend).
    """

    def __init__(self, dim: int, tasks: Sequence[str], drop_path: float = 0.0, **ssm_kwargs) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.norm_shared = nn.LayerNorm(len(self.tasks) * dim)
        self.reduce_shared = PointwiseConv(len(self.tasks) * dim, dim)
        self.conv_shared = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        self.norm = nn.ModuleDict({t: nn.LayerNorm(dim) for t in self.tasks})
        self.css2d = nn.ModuleDict({t: CSS2D(dim, **ssm_kwargs) for t in self.tasks})
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, z: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        s = self.reduce_shared(self.norm_shared(torch.cat([z[t] for t in self.tasks], dim=-1)))   # (B, H, W, C)
        s = to_channels_last(self.conv_shared(to_channels_first(s)))
        return {t: z[t] + self.drop_path(self.css2d[t](self.norm[t](z[t]), s)) for t in self.tasks}


class LiteHead(nn.Module):
    """MTMamba++ task head (MODELS.md §1.8): ``Conv3x3(C -> hidden) -> BatchNorm -> ReLU -> Conv1x1(hidden -> n)``.

    ``(B, h, w, C) -> (B, n, h, w)`` at H/4×W/4; :class:`~models.heads.MultiTaskModel` resizes the logits to the
    image (bilinear ×4). The 3×3 weights start from a truncated normal (std 0.02), as in the official code. The
    BatchNorm becomes a SyncBatchNorm in multi-GPU training (``utils/trainer.py``), as in the official code.
    """

    def __init__(self, dim: int, num_outputs: int, hidden: int = 96) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(dim, hidden, kernel_size=3, padding=1), nn.BatchNorm2d(hidden),
                                  nn.ReLU(inplace=True))
        trunc_normal_(self.conv[0].weight, std=0.02)
        self.project = nn.Conv2d(hidden, num_outputs, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.conv(to_channels_first(x)))


class MTMambaPlusStage(MTMambaStage):
    """A decoder stage of MTMamba++: ``n_blocks`` STM blocks per task (MTMamba's), then one S-CTM for all tasks.

    Args:
        dim: stage width C.
        tasks: task names.
        drop_path: one rate per block, in order: STM 1..n, then the S-CTM.
        n_blocks: STM blocks per task.
        ssm_kwargs: passed to every SS2D / CSS2D.
    """

    def __init__(self, dim: int, tasks: Sequence[str], drop_path: Sequence[float], n_blocks: int = 2,
                 **ssm_kwargs) -> None:
        super().__init__(dim, tasks, drop_path[:-1], n_blocks=n_blocks, ctm=False, **ssm_kwargs)
        self.sctm = SCTM(dim, tasks, drop_path[-1], **ssm_kwargs)

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.sctm(super().forward(x))


@register_model("mtmamba_plus", input_multiple=INPUT_MULTIPLE)
def build_mtmamba_plus(cfg) -> MultiTaskModel:
    m = cfg.model
    for key, value in _MTMAMBA_ONLY.items():
        if m[key] != value:
            raise ValueError(f"model.{key}={m[key]!r} is an MTMamba ablation switch; model.name='mtmamba_plus' "
                             f"needs model.{key}={value!r}")
    encoder = encoder_from_config(cfg)
    tasks = cfg.TASKS.NAMES
    widths = encoder.channels[::-1][1:]                          # 768, 384, 192 for Swin-L
    ssm = dict(d_state=m.d_state, ssm_ratio=m.ssm_ratio, dt_rank=m.dt_rank, scan_backend=m.scan_backend)
    rates = drop_path_schedule(m.drop_path_rate, len(widths), m.stm_blocks + 1)
    stages = [MTMambaPlusStage(c, tasks, r, n_blocks=m.stm_blocks, **ssm) for c, r in zip(widths, rates)]
    decoder = ThreeStageDecoder(encoder.channels, tasks, stages, fuse=PointwiseConv)
    heads = {t: LiteHead(decoder.out_channels, cfg.TASKS.NUM_OUTPUT[t]) for t in tasks}
    return MultiTaskModel(encoder, decoder, heads)

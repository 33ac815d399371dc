"""The three-stage decoder skeleton shared by every variant (MTMamba Fig. 1, Eqs. 26-29).

At each stage s (deepest first) every task feature is upsampled ×2 by its own PatchExpand,
concatenated with the encoder skip of that resolution and reduced back to C by a Linear; the
variant's stage module then mixes the task features (MTMamba: STM blocks and a CTM block).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .blocks import PatchExpand

__all__ = ["ThreeStageDecoder", "INPUT_MULTIPLE", "to_channels_last", "to_channels_first"]

# The deepest encoder map (stride 32) is expanded ×2 three times and fused with the stride-16/8/4 skips, so the
# sides of the input must be multiples of 32 for the shapes to meet.
INPUT_MULTIPLE = 32


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C)."""
    return x.permute(0, 2, 3, 1)


def to_channels_first(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W)."""
    return x.permute(0, 3, 1, 2)


class ThreeStageDecoder(nn.Module):
    """Per-task expand + skip fusion around variant-supplied stage modules.

    Args:
        encoder_channels: widths of the encoder features, shallowest first (e.g. 192, 384, 768, 1536).
        tasks: task names.
        stages: one module per stage (deepest first) mapping ``{task: (B, H, W, C)}`` to the same,
            with C = encoder_channels[-2 - s] at stage s.
        fuse: ``fuse(2C, C)`` builds the channels-last layer that reduces the concatenation back to C (default
            ``nn.Linear``; MTMamba++'s ECR uses a 1×1 convolution, MODELS.md §1.8).
    """

    def __init__(self, encoder_channels: Sequence[int], tasks: Sequence[str], stages: Sequence[nn.Module],
                 fuse: Callable[[int, int], nn.Module] = nn.Linear) -> None:
        super().__init__()
        self.tasks = list(tasks)
        widths = list(encoder_channels)[::-1]                     # deepest first: 1536, 768, 384, 192
        if len(stages) != len(widths) - 1:
            raise ValueError(f"expected {len(widths) - 1} decoder stages, got {len(stages)}")
        self.expand = nn.ModuleList(
            nn.ModuleDict({t: PatchExpand(c_in) for t in self.tasks}) for c_in in widths[:-1])
        self.fuse = nn.ModuleList(
            nn.ModuleDict({t: fuse(2 * c, c) for t in self.tasks}) for c in widths[1:])
        self.stages = nn.ModuleList(stages)
        self.out_channels = widths[-1]
        self.grad_ckpt = False     # recompute each stage in the backward pass (models.execution)

    def forward(self, features: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """NCHW encoder features, shallowest first -> ``{task: (B, H/4, W/4, C_0)}``."""
        deepest = to_channels_last(features[-1])
        x = {t: deepest for t in self.tasks}
        for s, stage in enumerate(self.stages):
            skip = to_channels_last(features[-2 - s])              # (B, 2h, 2w, C)
            x = {t: self.fuse[s][t](torch.cat([self.expand[s][t](x[t]), skip], dim=-1)) for t in self.tasks}
            x = checkpoint(stage, x, use_reentrant=False) if self.grad_ckpt and torch.is_grad_enabled() else stage(x)
        return x

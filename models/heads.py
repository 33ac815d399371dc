"""Task heads and the multi-task model wrapper (MTMamba Eqs. 27-29)."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import PatchExpand
from .decoder import to_channels_first

__all__ = ["TaskHead", "MultiTaskModel"]


class TaskHead(nn.Module):
    """FinalPatchExpand_X4 (Linear C -> 16·C, ×4 pixel shuffle, LayerNorm) then a 1×1 conv to ``num_outputs``.

    ``(B, h, w, C) -> (B, num_outputs, 4h, 4w)``.
    """

    def __init__(self, dim: int, num_outputs: int) -> None:
        super().__init__()
        self.expand = PatchExpand(dim, scale=4, out_dim=dim)
        self.project = nn.Conv2d(dim, num_outputs, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(to_channels_first(self.expand(x)))


class MultiTaskModel(nn.Module):
    """Encoder -> decoder -> one head per task; predictions are resized to the input size.

    Args:
        encoder: returns a list of NCHW features, shallowest first, and exposes ``channels``.
        decoder: maps the features to ``{task: (B, H/4, W/4, C)}``.
        heads: ``{task: head}``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.heads = nn.ModuleDict(heads)

    @property
    def tasks(self) -> list[str]:
        return list(self.heads.keys())

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) -> ``{task: (B, n_t, H, W)}`` logits."""
        return self.decode(self.encoder(image), image.shape[-2:])

    def decode(self, features: list[torch.Tensor], size: Sequence[int]) -> dict[str, torch.Tensor]:
        """Encoder features -> ``{task: (B, n_t, *size)}`` logits."""
        x = self.decoder(features)
        # The official model always interpolates, an identity when H and W are multiples of 32.
        return {t: F.interpolate(head(x[t]), size=tuple(size), mode="bilinear", align_corners=False)
                for t, head in self.heads.items()}

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
    """Encoder -> decoder -> one head per task; predictions are resized to ``output_size``, by default the input size.

    Args:
        encoder: returns a list of NCHW features, shallowest first, and exposes ``channels``.
        decoder: maps the features to ``{task: (B, H/4, W/4, C)}``.
        heads: ``{task: head}``.
        output_size: (H, W) of the predictions when the labels are not at the input size (config ``LABEL_SCALE``,
            the official ``IMAGE_ORI_SIZE``: Cityscapes images enter at 512×1024, labels stay 1024×2048); the
            head outputs are resized to it in one bilinear step, as in the official model. None: the input size.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, heads: Mapping[str, nn.Module],
                 output_size: Sequence[int] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.heads = nn.ModuleDict(heads)
        self.output_size = None if output_size is None else tuple(int(v) for v in output_size)

    @property
    def tasks(self) -> list[str]:
        return list(self.heads.keys())

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) -> ``{task: (B, n_t, *output_size)}`` logits (``output_size`` None: (H, W))."""
        return self.decode(self.encoder(image), self.output_size or image.shape[-2:])

    def decode(self, features: list[torch.Tensor], size: Sequence[int]) -> dict[str, torch.Tensor]:
        """Encoder features -> ``{task: (B, n_t, *size)}`` logits."""
        x = self.decoder(features)
        # The official model always interpolates, an identity when H and W are multiples of 32.
        return {t: F.interpolate(head(x[t]), size=tuple(size), mode="bilinear", align_corners=False)
                for t, head in self.heads.items()}

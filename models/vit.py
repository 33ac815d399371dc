"""Plain Vision Transformer encoder with intermediate taps: "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale" (Dosovitskiy et al., ICLR 2021, https://arxiv.org/abs/2010.11929), built from timm's blocks
as PAMM's backbone runs it (MODELS.md §3.1, §3.6).

PAMM's backbone: ViT-L/16 (ImageNet-21k -> 1k at 384, drop-path 0.15) at the training size, so the position table
covers the token grid (NYUD 28×36, PASCAL 32×32). As in the released code there is **no class token**: the tokens are
``patch_embed(x) + pos_embed[:, 1:]``; the table keeps the unused first slot, ``[1, 1 + H·W, C]``, which holds the
pretrained class-token position. Pretrained tables are resized as timm 0.5.4's ``resize_pos_embed`` does: plain
bicubic, ``align_corners=False``, no antialiasing (:func:`resize_grid`). Four taps: the token maps after blocks 6, 12
and 18 and after block 24 followed by the final LayerNorm, all at stride 16 with 1024 channels.

The encoder exposes ``channels`` and ``strides`` like :class:`models.encoders.SwinEncoder`; its ``forward`` returns
the taps as NCHW maps, shallowest first.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import load_state_dict as timm_load_state_dict
from timm.models.vision_transformer import Attention, VisionTransformer, checkpoint_filter_fn

from .weights import LoadedWeights, create_timm_model, timm_weights_file

__all__ = ["VIT_VARIANTS", "VIT_CUSTOM", "VIT_ARCHS", "ViTEncoder", "build_vit_encoder", "resize_grid"]

logger = logging.getLogger(__name__)

# our name -> timm architecture (patch / width / depth / heads fixed by timm)
VIT_VARIANTS: dict[str, str] = {
    "vit_large": "vit_large_patch16_384",   # patch 16, width 1024, depth 24, heads 16 (PAMM's backbone)
}
VIT_CUSTOM = "vit_custom"                   # architecture given by embed_dim / depth / num_heads (small test nets)
VIT_ARCHS = (*VIT_VARIANTS, VIT_CUSTOM)
N_TAPS = 4
UNUSED_SLOTS = 1                            # the class-token slot the released table keeps but never adds


def resize_grid(cells: torch.Tensor, old_grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """Position embeddings of a grid resized as timm 0.5.4's ``resize_pos_embed``: (1, h·w, C) -> (1, h'·w', C).

    Plain bicubic interpolation (PyTorch's cubic convolution, a = −0.75) with ``align_corners=False`` and no
    antialiasing, computed in the table's dtype (timm 1.x antialiases, which changes a 24×24 -> 28×36 table by 2-8 %).
    """
    (h, w), (nh, nw) = tuple(old_grid), tuple(new_grid)
    if (h, w) == (nh, nw):
        return cells
    grid = cells.reshape(1, h, w, -1).permute(0, 3, 1, 2)                          # (1, C, h, w)
    grid = F.interpolate(grid, size=(nh, nw), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, nh * nw, -1)


class ViTEncoder(nn.Module):
    """PAMM's ViT: no class token, taps after the tap blocks (the last one after the final LayerNorm), NCHW maps.

    ``forward: (B, 3, H, W) -> [(B, C, H / p, W / p)] * len(taps)`` with C = ``channels[i]``, p = ``strides[i]``.
    Attention takes timm's explicit ``softmax(q·kᵀ)·v`` path (``fused_attn = False``), which the FLOP counter
    sees (fvcore has no handle for ``F.scaled_dot_product_attention``); see :class:`models.encoders.SwinEncoder`.

    ``vit.pos_embed`` is ``[1, 1 + h·w, C]`` for the grid of ``img_size``; slot 0 is never added (MODELS.md §3.6).
    ``loaded_weights`` records the pretrained load (None: random init).

    Args:
        arch: a key of :data:`VIT_VARIANTS`, or :data:`VIT_CUSTOM` with ``embed_dim``, ``depth`` and
            ``num_heads`` (all three required then, and only then).
        img_size: input size (H, W) or a square side; sets the position-embedding grid.
        embed_dim, depth, num_heads, patch_size: a custom architecture (``patch_size`` default 16).
        taps: 1-based block numbers whose outputs are returned, ending with the last block (default: the four
            quarters of the depth, 6/12/18/24 for ViT-L).
        pretrained: load timm's weights for ``arch`` (for ViT-L ``.augreg_in21k_ft_in1k``, ImageNet-21k -> 1k at
            384) through timm's download; :meth:`load_state_dict_resized` adapts them.
        pretrained_path: a local timm-layout weight file, loaded the same way by :meth:`load_checkpoint`.
        drop_path_rate: stochastic depth of the last block (linear from 0); PAMM uses 0.15.
        dynamic_img_size: accept other input sizes (multiples of the patch); the grid part of the table is resized
            with :func:`resize_grid` on every such forward.
    """

    def __init__(
        self,
        arch: str = "vit_large",
        *,
        img_size: int | tuple[int, int],
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        patch_size: int | None = None,
        taps: Sequence[int] | None = None,
        pretrained: bool = False,
        pretrained_path: str | os.PathLike | None = None,
        drop_path_rate: float = 0.15,
        dynamic_img_size: bool = False,
    ) -> None:
        super().__init__()
        if pretrained and pretrained_path is not None:
            raise ValueError("give either pretrained=True (timm download) or pretrained_path, not both")
        custom = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads)
        # no class token, no pooling / classifier, the position table is ours (below)
        common = dict(img_size=img_size, drop_path_rate=drop_path_rate, dynamic_img_size=dynamic_img_size,
                      class_token=False, global_pool="", num_classes=0, pos_embed="none")
        if arch == VIT_CUSTOM:
            unset = [k for k, v in custom.items() if v is None]
            if unset:
                raise ValueError(f"arch={VIT_CUSTOM!r} needs {', '.join(unset)} (model.backbone_kwargs)")
            if pretrained:
                raise ValueError(f"no timm weights exist for arch={VIT_CUSTOM!r}; use pretrained_path")
            vit = VisionTransformer(patch_size=patch_size or 16, **custom, **common)
        elif arch in VIT_VARIANTS:
            given = [k for k, v in {**custom, "patch_size": patch_size}.items() if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)} only apply to arch={VIT_CUSTOM!r}; "
                                 f"{arch!r} is fixed by timm's {VIT_VARIANTS[arch]!r}")
            vit = create_timm_model(VIT_VARIANTS[arch], False, **common)
        else:
            raise ValueError(f"unknown ViT arch {arch!r}; valid: {list(VIT_ARCHS)}")

        n_blocks = len(vit.blocks)
        if taps is None:
            if n_blocks % N_TAPS:
                raise ValueError(f"depth {n_blocks} is not a multiple of {N_TAPS}; give taps explicitly")
            taps = [n_blocks // N_TAPS * (i + 1) for i in range(N_TAPS)]
        taps = tuple(int(t) for t in taps)
        if list(taps) != sorted(set(taps)) or taps[0] < 1 or taps[-1] != n_blocks:
            raise ValueError(f"taps={list(taps)} must be increasing block numbers in 1..{n_blocks} ending with "
                             f"{n_blocks} (the last tap reads the final norm)")
        for module in vit.modules():
            if isinstance(module, Attention):
                module.fused_attn = False
        self.grid: tuple[int, int] = tuple(vit.patch_embed.grid_size)
        # the released table: [1, 1 + h·w, C], slot 0 unused (timm's ViT init: trunc-normal, std 0.02)
        vit.pos_embed = nn.Parameter(trunc_normal_(torch.zeros(1, UNUSED_SLOTS + math.prod(self.grid),
                                                               vit.embed_dim), std=0.02))
        self.vit = vit
        self.arch = arch
        self.taps = taps
        self.patch_size = vit.patch_embed.patch_size[0]
        self.channels: list[int] = [vit.embed_dim] * len(taps)
        self.strides: list[int] = [self.patch_size] * len(taps)
        self.loaded_weights: LoadedWeights | None = None
        if pretrained:
            source = create_timm_model(VIT_VARIANTS[arch], True)     # native size, with its classifier
            self.load_state_dict_resized(source.state_dict(), timm_weights_file(VIT_VARIANTS[arch])
                                         or f"timm {VIT_VARIANTS[arch]}")
        elif pretrained_path is not None:
            self.load_checkpoint(pretrained_path)

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position embeddings added to an h×w token grid: ``pos_embed[:, 1:]`` (resized if h×w differs)."""
        return resize_grid(self.vit.pos_embed[:, UNUSED_SLOTS:], self.grid, grid)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> one (B, C, H/p, W/p) map per tap."""
        b, _, h, w = x.shape
        grid = (h // self.patch_size, w // self.patch_size)
        vit = self.vit
        tokens = vit.patch_embed(x)                                                   # (B, L, C) or (B, h, w, C)
        tokens = vit.pos_drop(tokens.reshape(b, -1, tokens.shape[-1]) + self.positions(grid))   # no class token
        outs = []
        for i, block in enumerate(vit.blocks, start=1):
            tokens = block(tokens)
            if i in self.taps:
                tap = vit.norm(tokens) if i == len(vit.blocks) else tokens            # MODELS.md §3.1
                outs.append(tap.transpose(1, 2).reshape(b, -1, *grid))
        return outs

    def load_state_dict_resized(self, state_dict: Mapping[str, torch.Tensor], source: str) -> LoadedWeights:
        """Load ImageNet ViT weights (timm layout) strictly, as the released code adapts them; returns (and keeps as
        ``loaded_weights``) what was loaded. ``source`` names where the dict comes from.

        ``cls_token`` and the classifier are dropped. ``pos_embed`` ``[1, 1 + s·s, C]`` keeps its class slot and its
        s×s grid is resized to this grid by :func:`resize_grid`; a table of this encoder's shape is taken as it is.
        The other keys go through timm's ``checkpoint_filter_fn`` (layout conversions). A missing, unexpected or
        mis-shaped key raises ``RuntimeError`` naming it. Works on the meta device (a check that copies nothing).
        """
        state_dict = dict(state_dict)
        if "pos_embed" not in state_dict:
            raise RuntimeError(f"ViT checkpoint {source} does not match the encoder:\n  missing: pos_embed")
        table = state_dict.pop("pos_embed")
        dropped = [k for k in state_dict if k == "cls_token" or k.startswith("head.")]
        for k in dropped:
            del state_dict[k]
        state_dict = checkpoint_filter_fn(state_dict, self.vit)
        notes = [f"skipped cls_token, head.* ({len(dropped)} keys, the class token and the ImageNet classifier)"
                 ] if dropped else []
        if table.shape != self.vit.pos_embed.shape:
            side = math.isqrt(table.shape[1] - UNUSED_SLOTS)
            if table.ndim != 3 or side * side != table.shape[1] - UNUSED_SLOTS:
                raise ValueError(f"{source}: pos_embed {tuple(table.shape)} is neither this encoder's table "
                                 f"{tuple(self.vit.pos_embed.shape)} nor [1, 1 + s·s, C] (class slot + square grid)")
            table = torch.cat([table[:, :UNUSED_SLOTS], resize_grid(table[:, UNUSED_SLOTS:], (side, side),
                                                                    self.grid)], dim=1)
            notes.append(f"pos_embed grid resized bicubic {side}×{side} -> {self.grid[0]}×{self.grid[1]}")
        state_dict["pos_embed"] = table
        self.vit.load_state_dict(state_dict, strict=True)
        n_total = sum(p.numel() for p in self.parameters())
        self.loaded_weights = LoadedWeights(source, "ViT, timm layout", len(state_dict), n_total, n_total,
                                            tuple(notes))
        logger.info("Loaded ViT weights from %s: %s", source, self.loaded_weights.summary())
        return self.loaded_weights

    def load_checkpoint(self, path: str | os.PathLike) -> LoadedWeights:
        """Load a timm-layout ViT file with :meth:`load_state_dict_resized`."""
        source = os.fspath(path)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"ViT checkpoint not found: {source}")
        return self.load_state_dict_resized(timm_load_state_dict(source, use_ema=False), source)


def build_vit_encoder(name: str, *, img_size: int | tuple[int, int], pretrained: bool = False,
                      pretrained_path: str | os.PathLike | None = None, drop_path_rate: float = 0.15,
                      dynamic_img_size: bool = False, **arch_kwargs) -> ViTEncoder:
    """The ViT named by ``model.backbone`` (a key of :data:`VIT_VARIANTS` or :data:`VIT_CUSTOM`, whose architecture
    comes from ``model.backbone_kwargs``). See :class:`ViTEncoder`."""
    if name not in VIT_ARCHS:
        raise ValueError(f"model.backbone={name!r} is not a ViT encoder; valid: {list(VIT_ARCHS)}")
    return ViTEncoder(name, img_size=img_size, pretrained=pretrained, pretrained_path=pretrained_path,
                      drop_path_rate=drop_path_rate, dynamic_img_size=dynamic_img_size, **arch_kwargs)

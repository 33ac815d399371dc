"""Plain Vision Transformer encoder with intermediate taps: "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale" (Dosovitskiy et al., ICLR 2021, https://arxiv.org/abs/2010.11929), built from timm.

PAMM's backbone (MODELS.md §3.1): ViT-L/16 (ImageNet-21k -> 1k at 384, drop-path 0.15) at the training size, so
the position embedding covers the token grid (NYUD 28×36, PASCAL 32×32; timm resamples the pretrained table when
it loads the weights). Four taps: the token maps after blocks 6, 12 and 18 and after block 24 followed by the final
LayerNorm, all at stride 16 with 1024 channels. The class token is dropped from the taps.

The encoder exposes ``channels`` and ``strides`` like :class:`models.encoders.SwinEncoder`; its ``forward`` returns
the taps as NCHW maps, shallowest first.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import torch
import torch.nn as nn
from timm.models import load_state_dict as timm_load_state_dict
from timm.models.vision_transformer import Attention, VisionTransformer, checkpoint_filter_fn

from .weights import create_timm_model

__all__ = ["VIT_VARIANTS", "VIT_CUSTOM", "VIT_ARCHS", "ViTEncoder", "build_vit_encoder"]

logger = logging.getLogger(__name__)

# our name -> timm architecture (patch / width / depth / heads fixed by timm)
VIT_VARIANTS: dict[str, str] = {
    "vit_large": "vit_large_patch16_384",   # patch 16, width 1024, depth 24, heads 16 (PAMM's backbone)
}
VIT_CUSTOM = "vit_custom"                   # architecture given by embed_dim / depth / num_heads (small test nets)
VIT_ARCHS = (*VIT_VARIANTS, VIT_CUSTOM)
N_TAPS = 4


class ViTEncoder(nn.Module):
    """ViT returning the token maps after the tap blocks, the last one after the final LayerNorm, as NCHW maps.

    ``forward: (B, 3, H, W) -> [(B, C, H / p, W / p)] * len(taps)`` with C = ``channels[i]``, p = ``strides[i]``.
    Attention takes timm's explicit ``softmax(q·kᵀ)·v`` path (``fused_attn = False``), which the FLOP counter
    sees (fvcore has no handle for ``F.scaled_dot_product_attention``); see :class:`models.encoders.SwinEncoder`.

    Args:
        arch: a key of :data:`VIT_VARIANTS`, or :data:`VIT_CUSTOM` with ``embed_dim``, ``depth`` and
            ``num_heads`` (all three required then, and only then).
        img_size: input size (H, W) or a square side; sets the position-embedding grid.
        embed_dim, depth, num_heads, patch_size: a custom architecture (``patch_size`` default 16).
        taps: 1-based block numbers whose outputs are returned, ending with the last block (default: the four
            quarters of the depth, 6/12/18/24 for ViT-L).
        pretrained: load timm's weights for ``arch`` (for ViT-L ``.augreg_in21k_ft_in1k``, ImageNet-21k -> 1k at
            384) through timm's download, strictly; timm resamples the position table to the grid.
        pretrained_path: a local timm-layout weight file, loaded strictly by :meth:`load_checkpoint`.
        drop_path_rate: stochastic depth of the last block (linear from 0); PAMM uses 0.15.
        dynamic_img_size: accept other input sizes (multiples of the patch); the position table is resampled on
            every forward.
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
        common = dict(img_size=img_size, drop_path_rate=drop_path_rate, dynamic_img_size=dynamic_img_size)
        if arch == VIT_CUSTOM:
            unset = [k for k, v in custom.items() if v is None]
            if unset:
                raise ValueError(f"arch={VIT_CUSTOM!r} needs {', '.join(unset)} (model.backbone_kwargs)")
            if pretrained:
                raise ValueError(f"no timm weights exist for arch={VIT_CUSTOM!r}; use pretrained_path")
            vit = VisionTransformer(num_classes=0, patch_size=patch_size or 16, **custom, **common)
        elif arch in VIT_VARIANTS:
            given = [k for k, v in {**custom, "patch_size": patch_size}.items() if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)} only apply to arch={VIT_CUSTOM!r}; "
                                 f"{arch!r} is fixed by timm's {VIT_VARIANTS[arch]!r}")
            # with weights, timm loads strictly only when the classifier is kept; it is removed right after
            vit = create_timm_model(VIT_VARIANTS[arch], pretrained, **({} if pretrained else {"num_classes": 0}),
                                    **common)
            vit.reset_classifier(0)
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
        self.vit = vit
        self.arch = arch
        self.taps = taps
        self.patch_size = vit.patch_embed.patch_size[0]
        self.channels: list[int] = [vit.embed_dim] * len(taps)
        self.strides: list[int] = [self.patch_size] * len(taps)
        if pretrained_path is not None:
            self.load_checkpoint(pretrained_path)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> one (B, C, H/p, W/p) map per tap."""
        b, _, h, w = x.shape
        grid = (h // self.patch_size, w // self.patch_size)
        vit = self.vit
        tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))   # (B, prefix + L, C)
        outs = []
        for i, block in enumerate(vit.blocks, start=1):
            tokens = block(tokens)
            if i in self.taps:
                tap = vit.norm(tokens) if i == len(vit.blocks) else tokens            # MODELS.md §3.1
                tap = tap[:, vit.num_prefix_tokens:]                                  # drop the class token
                outs.append(tap.transpose(1, 2).reshape(b, -1, *grid))
        return outs

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Load a timm-layout ViT file strictly (position table resampled to the grid by timm, classifier dropped)."""
        source = os.fspath(path)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"ViT checkpoint not found: {source}")
        state_dict = checkpoint_filter_fn(timm_load_state_dict(source, use_ema=False), self.vit)
        dropped = [k for k in state_dict if k.startswith("head.")]
        for k in dropped:
            del state_dict[k]
        self.vit.load_state_dict(state_dict, strict=True)
        logger.info("Loaded ViT weights from %s%s", source, f"; dropped {', '.join(dropped)}" if dropped else "")


def build_vit_encoder(name: str, *, img_size: int | tuple[int, int], pretrained: bool = False,
                      pretrained_path: str | os.PathLike | None = None, drop_path_rate: float = 0.15,
                      dynamic_img_size: bool = False, **arch_kwargs) -> ViTEncoder:
    """The ViT named by ``model.backbone`` (a key of :data:`VIT_VARIANTS` or :data:`VIT_CUSTOM`, whose architecture
    comes from ``model.backbone_kwargs``). See :class:`ViTEncoder`."""
    if name not in VIT_ARCHS:
        raise ValueError(f"model.backbone={name!r} is not a ViT encoder; valid: {list(VIT_ARCHS)}")
    return ViTEncoder(name, img_size=img_size, pretrained=pretrained, pretrained_path=pretrained_path,
                      drop_path_rate=drop_path_rate, dynamic_img_size=dynamic_img_size, **arch_kwargs)

"""Window attention for the decoder ablations of MTMamba (Tables 2-4), built on timm's Swin layers.

- ``WindowMSA``: Swin's W-MSA as a token mixer on (B, H, W, C) maps (Tables 3 and 4).
- ``swin_block``: a standard Swin block, for the "2×Swin" decoder of Table 2.

Both keep timm's explicit ``softmax(q·kᵀ + bias)·v`` path (``fused_attn = False``) so that the FLOP counter
sees the attention matmuls, and pad maps that are not window multiples, as the paper's counts require.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock, WindowAttention, window_partition, window_reverse

__all__ = ["WindowMSA", "swin_block"]


class WindowMSA(nn.Module):
    """Window multi-head self-attention (Swin W-MSA, no shift) on (B, H, W, C) maps, padded to window multiples.

    The token mixer of MTMamba's Table 3 ("MFE → W-MSA", on the 2C-wide MFE features) and Table 4 ("linear gate →
    W-MSA gate", on the C-wide gate input). timm's ``WindowAttention`` with qkv and output biases and a relative
    position bias. ``num_heads = 6`` at every stage is our reading: with it both tables' #Param and FLOPs come out
    exactly (451.81 M / 884.61 G and 345.33 M / 659.29 G); see docs/ablations.md.

    Args:
        dim: channels C.
        num_heads: attention heads.
        window_size: window side.
    """

    def __init__(self, dim: int, num_heads: int = 6, window_size: int = 12) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads=num_heads, window_size=window_size, qkv_bias=True)
        self.attn.fused_attn = False   # explicit q·kᵀ, counted by the FLOP counter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        win = self.window_size
        x = F.pad(x, (0, 0, 0, -w % win, 0, -h % win))                       # (B, Hp, Wp, C), bottom/right
        hp, wp = x.shape[1:3]
        windows = window_partition(x, (win, win)).view(-1, win * win, c)     # (B·nW, win², C)
        x = window_reverse(self.attn(windows).view(-1, win, win, c), (win, win), hp, wp)
        return x[:, :h, :w].contiguous()                                     # (B, H, W, C)


def swin_block(dim: int, input_resolution: tuple[int, int], shift: bool, drop_path: float = 0.0,
               window_size: int = 12, head_dim: int = 32, mlp_ratio: float = 4.0) -> SwinTransformerBlock:
    """A standard (timm) Swin block on (B, H, W, C) maps: W-MSA (shifted by window/2 when ``shift``) + MLP.

    The decoder of MTMamba Table 2's "2×Swin" rows: window 12, C/32 heads, MLP ratio 4; maps that are not
    window multiples are padded per block. The attention keeps timm's explicit q·kᵀ path so that the
    FLOP counter sees its matmuls.
    """
    block = SwinTransformerBlock(dim, input_resolution, num_heads=dim // head_dim, window_size=window_size,
                                 shift_size=window_size // 2 if shift else 0, dynamic_mask=True,
                                 mlp_ratio=mlp_ratio, drop_path=drop_path)
    block.attn.fused_attn = False
    return block

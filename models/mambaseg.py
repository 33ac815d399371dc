"""MambaSeg: "MambaSeg: Harnessing Mamba for Accurate and Efficient Image-Event Semantic Segmentation" (AAAI 2026,
https://arxiv.org/abs/2512.24243), following the official code (CQU-UISC/MambaSeg @ 8641831; MAMBASEG.md §3).

Two VMamba-T encoders (:mod:`models.vmamba`), one for the frame and one for the event voxel grid, fused at every stage
by a Dual-Dimensional Interaction Module (DDIM); the fused maps feed back into both encoders and, through 1×1 convs,
a SegFormer MLP head. Step numbers below are those of MAMBASEG.md §3: "stage step N" for the per-stage wiring,
"DDIM step N" for the module.

* TSSM (the bidirectional temporal selective scan of the CTIM body) scans along the **channel** axis: the H·W
  positions are the SSM's channels, so its parameters depend on the stage sizes and the model is built for one input
  size (``TRAIN.SCALE``); another size is an error that says so (:class:`InputSizeError`).
* The official ``CrossMerge_channel`` un-flips the backward direction along W of a reshaped tensor, not along the
  channels; loading the released weights needs that exact operation (``merge="official"``, the default); the plain
  flip-back is ``merge="flip"`` (:func:`channel_cross_merge`).
* NOTE(code≠paper): the paper describes a 6-map cross-spatial attention and channel interleaving; the code, and so
  the released weights, use the 4-map attention and swap the odd channels. We follow the code.
* The official forward is ``forward(x_ev, x_img)``; ours is ``forward(image, events)`` (``MambaSeg.inputs``), and
  the event branch is computed first in each stage, as there.

The key names and shapes of the state dict are the official ones; only the order inside each SSM module differs
(:mod:`utils.official_mambaseg` writes the official order).
"""
from __future__ import annotations

import logging
import math
import os
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch.utils.checkpoint import checkpoint

from .pretrained import encoder_name, missing_weights_message
from .registry import register_model
from .ss2d import SS2D, add_ssm_parameters, ssm_scan
from .vmamba import LN_EPS, VMAMBA_T, VMambaEncoder, read_weights
from .weights import PretrainedWeightsError

__all__ = ["MERGE_MODES", "InputSizeError", "stage_sizes", "swap_odd_channels", "channel_cross_scan",
           "channel_cross_merge", "CrossTemporalAttention", "CrossSpatialAttention", "ChannelAttention",
           "SpatialAttention", "TemporalSSM", "DDIM", "SegFormerHead", "MambaSeg", "build_mambaseg"]

logger = logging.getLogger(__name__)

MERGE_MODES = ("official", "flip")   # TSSM merge of the backward direction: CrossMerge_channel | plain flip-back
# fusion settings of the official DDIM
FUSION_SSM = dict(d_state=16, ssm_ratio=2.0)   # TSSM and the CSIM's SS2D: N = 16, d_inner = 2C
CTA_REDUCTION = 4      # cross-temporal gate C -> C/4 -> C
CBAM_REDUCTION = 16    # CBAM channel attention C -> C/16 -> C
CSA_HIDDEN = 16        # cross-spatial attention 4 -> 16 -> 2
SA_KERNEL = 7          # CBAM spatial attention kernel
HEAD_DROPOUT = 0.1     # SegFormer head Dropout2d
CHANNEL_KEYS = {"image": "image_channels", "events": "event_channels"}   # input -> its model.mambaseg key


class InputSizeError(ValueError):
    """An input whose size differs from the one MambaSeg is built for (its TSSM weights depend on H×W)."""


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------
def stage_sizes(img_size: Sequence[int], n_stages: int = 4) -> list[tuple[int, int]]:
    """(h, w) of every stage for an input of ``img_size``: ⌈H/4⌉ × ⌈W/4⌉, then ⌈/2⌉ per stage (VMamba's stride-2
    3×3 convs with padding 1). 200×346 -> 50×87, 25×44, 13×22, 7×11."""
    h, w = -(-img_size[0] // 4), -(-img_size[1] // 4)
    sizes = [(h, w)]
    for _ in range(n_stages - 1):
        h, w = -(-h // 2), -(-w // 2)
        sizes.append((h, w))
    return sizes


def swap_odd_channels(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM step 2: exchange the odd channels (1, 3, 5, …) of two (B, C, H, W) maps; the even ones stay."""
    odd = torch.zeros(a.shape[1], dtype=torch.bool, device=a.device)
    odd[1::2] = True
    odd = odd.view(1, -1, 1, 1)
    return torch.where(odd, b, a), torch.where(odd, a, b)


def channel_cross_scan(x: torch.Tensor) -> torch.Tensor:
    """TSSM sequences along the channel axis: (B, D, h, w) -> (B, 2, h·w, D).

    Direction 0 is ``u[b, p, j] = x[b, j, p]`` (position p = row-major index of (h, w), sequence index j = channel),
    direction 1 the same flipped along j; the h·w positions are the scan's channels.
    """
    seq = x.flatten(2).transpose(1, 2)                                         # (B, h·w, D)
    return torch.stack([seq, seq.flip(-1)], dim=1)


def channel_cross_merge(y: torch.Tensor, h: int, w: int, merge: str = "official") -> torch.Tensor:
    """TSSM outputs back to a map: (B, 2, h·w, D) -> (B, D, h, w).

    ``"flip"``: ``y[b, j, p] = Y_0[p, j] + Y_1[p, D-1-j]``, the inverse of :func:`channel_cross_scan` summed over the
    two directions. ``"official"``: ``CrossMerge_channel`` as called by the official TSSM, which reads the
    (B, 2, h·w, D) output as (B, 2, D, h, w): with Y_k the (h·w, D) output of direction k in memory order,
    ``M = Y_0.reshape(D·h, w) + Y_1.reshape(D·h, w).flip(-1)`` and ``y = Mᵀ`` laid out as (D, h, w) — the flip
    reverses runs of w consecutive values, not the channel sequence, so merge(scan(x)) ≠ 2x (MAMBASEG.md §3.1).
    """
    b, _, hw, d = y.shape
    if merge == "official":
        m = y[:, 0].reshape(b, d * h, w) + y[:, 1].reshape(b, d * h, w).flip(-1)    # (B, D·h, w)
        return m.transpose(1, 2).reshape(b, d, h, w)
    if merge == "flip":
        return (y[:, 0] + y[:, 1].flip(-1)).transpose(1, 2).reshape(b, d, h, w)
    raise ValueError(f"merge={merge!r} is not valid; valid: {list(MERGE_MODES)}")


def _ss2d_nchw(ss2d: SS2D, x: torch.Tensor) -> torch.Tensor:
    """Our channels-last SS2D on an NCHW map (the official DDIM runs VMamba's SS2D channel-first)."""
    return ss2d(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------------------------------
# Attentions
# --------------------------------------------------------------------------------------------------------------------
class CrossTemporalAttention(nn.Module):
    """DDIM step 2: swap the odd channels, then gate each modality by the other's channel statistics.

    ``g(x) = σ(W2·ReLU(W1·GAP(x)))`` (C -> C/4 -> C, no bias, shared); ``I_t = Ĩ·g(Ẽ)``, ``E_t = Ẽ·g(Ĩ)``.
    """

    def __init__(self, dim: int, reduction: int = CTA_REDUCTION) -> None:
        super().__init__()
        self.shared_fc = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, dim // reduction, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(dim // reduction, dim, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, img: torch.Tensor, ev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img, ev = swap_odd_channels(img, ev)                                   # Ĩ, Ẽ
        return img * self.shared_fc(ev), ev * self.shared_fc(img)


class CrossSpatialAttention(nn.Module):
    """DDIM step 3: ``(a_I, a_E) = σ(conv(ReLU(conv([mean Î, max Î, mean Ê, max Ê]))))`` (1×1 convs 4 -> 16 -> 2);
    ``I_s = Î·a_E``, ``E_s = Ê·a_I``."""

    def __init__(self, hidden: int = CSA_HIDDEN) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(4, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 2, 1), nn.Sigmoid())

    def forward(self, img: torch.Tensor, ev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stats = torch.cat([img.mean(1, keepdim=True), img.amax(1, keepdim=True),
                           ev.mean(1, keepdim=True), ev.amax(1, keepdim=True)], dim=1)       # (B, 4, H, W)
        att = self.mlp(stats)                                                  # (B, 2, H, W): a_I, a_E
        return img * att[:, 1:2], ev * att[:, 0:1]


class ChannelAttention(nn.Module):
    """CBAM channel attention (DDIM step 4): ``σ(MLP(avgpool x) + MLP(maxpool x))``, shared MLP C -> C/16 -> C without
    bias; (B, C, H, W) -> (B, C, 1, 1)."""

    def __init__(self, dim: int, reduction: int = CBAM_REDUCTION) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Conv2d(dim, dim // reduction, 1, bias=False), nn.ReLU(),
                                nn.Conv2d(dim // reduction, dim, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)) + self.fc(x.amax((2, 3), keepdim=True)))


class SpatialAttention(nn.Module):
    """CBAM spatial attention (DDIM step 5): ``σ(conv7×7([mean_c x, max_c x]))`` without bias;
    (B, C, H, W) -> (B, 1, H, W)."""

    def __init__(self, kernel_size: int = SA_KERNEL) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv1(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)))


# --------------------------------------------------------------------------------------------------------------------
# TSSM and DDIM
# --------------------------------------------------------------------------------------------------------------------
class TemporalSSM(nn.Module):
    """TSSM, the channel-axis selective scan of the CTIM body (DDIM step 4); (B, C, h, w) -> (B, C, h, w).

    ``Linear C -> 2C`` (no bias, per position) -> depthwise 3×3 conv (bias) -> SiLU -> :func:`channel_cross_scan`
    (L = 2C, h·w scan channels, K = 2 directions) -> S6 with per-direction x/dt projections of the h·w channels
    (R = ⌈h·w/16⌉, N = 16; :func:`models.ss2d.add_ssm_parameters`) -> :func:`channel_cross_merge` -> LayerNorm(2C)
    -> ``Linear 2C -> C`` (no bias). The parameter shapes depend on h·w: the module only takes maps of ``size``.

    Args:
        dim: width C.
        size: (h, w) of the maps it is built for.
        d_state: SSM state size N.
        ssm_ratio: sequence length / C (d_inner = ssm_ratio·C channels are scanned).
        d_conv: depthwise convolution kernel size.
        merge: "official" (CrossMerge_channel) or "flip" (see :func:`channel_cross_merge`).
        scan_backend: backend of the selective scan.
    """

    def __init__(self, dim: int, size: tuple[int, int], *, d_state: int = 16, ssm_ratio: float = 2.0,
                 d_conv: int = 3, merge: str = "official", scan_backend: str = "auto") -> None:
        super().__init__()
        if merge not in MERGE_MODES:
            raise ValueError(f"merge={merge!r} is not valid; valid: {list(MERGE_MODES)}")
        self.size = tuple(size)
        self.merge = merge
        self.scan_backend = scan_backend
        d_inner, positions = int(ssm_ratio * dim), size[0] * size[1]
        self.out_norm = nn.LayerNorm(d_inner, eps=LN_EPS)
        self.in_proj = nn.Linear(dim, d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        # K = 2 directions over the h·w position channels, R = ⌈h·w/16⌉ (VMamba's "auto" rank of the scan width)
        add_ssm_parameters(self, 2, positions, d_state, math.ceil(positions / 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if (h, w) != self.size:
            raise InputSizeError(f"TemporalSSM is built for {self.size[0]}×{self.size[1]} maps, got {h}×{w}: its "
                                 f"scan has one channel per spatial position")
        x = self.in_proj(x.flatten(2).transpose(1, 2))                          # (B, h·w, 2C)
        x = F.silu(self.conv2d(x.transpose(1, 2).reshape(b, -1, h, w)))        # (B, 2C, h, w)
        y = ssm_scan(self, channel_cross_scan(x), self.scan_backend)            # (B, 2, h·w, 2C), fp32
        y = channel_cross_merge(y, h, w, self.merge).to(x.dtype)                # (B, 2C, h, w)
        return self.out_proj(self.out_norm(y.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


class DDIM(nn.Module):
    """Dual-Dimensional Interaction Module (CTIM + CSIM); (I, E) -> (I', E'), all (B, C, h, w).

    Steps (MAMBASEG.md §3): 1. Î = LN(I), Ê = LN(E); 2. cross-temporal attention -> I_t, E_t; 3. cross-spatial
    attention -> I_s, E_s; 4. CTIM body X_c = TSSM(I_t) + Conv1×1(I_t), X_c·CA(X_c); 5. CSIM body
    X_s = SS2D(I_s) + Conv1×1(I_s), X_s·SA(X_s); 6. I' = I + Conv1×1([X_c; X_s]). The event side is the same with its
    own weights (``*_e``, ``ca2``, ``sa2``). DropPath is 0 in MambaSeg and omitted.

    Args:
        dim: width C.
        size: (h, w) of the stage (sets the TSSM shapes).
        merge: TSSM merge, "official" or "flip".
        scan_backend: backend of the selective scan.
    """

    def __init__(self, dim: int, size: tuple[int, int], *, merge: str = "official", scan_backend: str = "auto") -> None:
        super().__init__()
        ssm = dict(**FUSION_SSM, scan_backend=scan_backend)
        # registration order = the official state-dict order
        self.norm_i = LayerNorm2d(dim, eps=LN_EPS)
        self.norm_e = LayerNorm2d(dim, eps=LN_EPS)
        self.cca = CrossTemporalAttention(dim)
        self.ssm_i = TemporalSSM(dim, size, merge=merge, **ssm)
        self.ssm_e = TemporalSSM(dim, size, merge=merge, **ssm)
        self.conv_i1 = nn.Conv2d(dim, dim, 1)
        self.conv_e1 = nn.Conv2d(dim, dim, 1)
        self.ca1 = ChannelAttention(dim)
        self.ca2 = ChannelAttention(dim)
        self.csa = CrossSpatialAttention()
        self.ss2d_i = SS2D(dim, gate=False, out_proj=True, conv_bias=True, **ssm)    # VMamba v05_noz, v0 init
        self.ss2d_e = SS2D(dim, gate=False, out_proj=True, conv_bias=True, **ssm)
        self.conv_i2 = nn.Conv2d(dim, dim, 1)
        self.conv_e2 = nn.Conv2d(dim, dim, 1)
        self.sa1 = SpatialAttention()
        self.sa2 = SpatialAttention()
        self.conv_i3 = nn.Conv2d(2 * dim, dim, 1)
        self.conv_e3 = nn.Conv2d(2 * dim, dim, 1)

    @staticmethod
    def _body(x: torch.Tensor, x_t: torch.Tensor, x_s: torch.Tensor, tssm: TemporalSSM, conv1: nn.Conv2d,
              ca: ChannelAttention, ss2d: SS2D, conv2: nn.Conv2d, sa: SpatialAttention,
              conv3: nn.Conv2d) -> torch.Tensor:
        """Steps 4-6 of one modality: x + Conv1×1([CTIM(x_t); CSIM(x_s)])."""
        x_c = tssm(x_t) + conv1(x_t)                                           # step 4
        x_c = x_c * ca(x_c)
        x_s = _ss2d_nchw(ss2d, x_s) + conv2(x_s)                              # step 5
        x_s = x_s * sa(x_s)
        return x + conv3(torch.cat([x_c, x_s], dim=1))                        # step 6

    def forward(self, img: torch.Tensor, ev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img_n, ev_n = self.norm_i(img), self.norm_e(ev)                        # step 1
        img_t, ev_t = self.cca(img_n, ev_n)                                    # step 2
        img_s, ev_s = self.csa(img_n, ev_n)                                    # step 3
        img = self._body(img, img_t, img_s, self.ssm_i, self.conv_i1, self.ca1, self.ss2d_i, self.conv_i2,
                         self.sa1, self.conv_i3)
        ev = self._body(ev, ev_t, ev_s, self.ssm_e, self.conv_e1, self.ca2, self.ss2d_e, self.conv_e2,
                        self.sa2, self.conv_e3)
        return img, ev


# --------------------------------------------------------------------------------------------------------------------
# Head and model
# --------------------------------------------------------------------------------------------------------------------
class _Embed(nn.Module):
    """SegFormer's per-scale ``MLP``: a Linear on every position; (B, C, h, w) -> (B, E, h, w)."""

    def __init__(self, dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SegFormerHead(nn.Module):
    """SegFormer's all-MLP head (Xie et al., NeurIPS 2021), as EISNet / MambaSeg use it.

    Per scale a Linear to E; c4, c3, c2 upsampled (bilinear, align_corners False) to c1's size; concatenated as
    [c4, c3, c2, c1]; Conv1×1(4E -> E) + BatchNorm + ReLU; Dropout2d(0.1); Conv1×1 to the classes.
    ``[(B, C_i, h_i, w_i)] * 4 -> (B, num_classes, h_0, w_0)``.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, embed_dim: int = 768,
                 dropout: float = HEAD_DROPOUT) -> None:
        super().__init__()
        c1, c2, c3, c4 = in_channels
        self.linear_c4 = _Embed(c4, embed_dim)
        self.linear_c3 = _Embed(c3, embed_dim)
        self.linear_c2 = _Embed(c2, embed_dim)
        self.linear_c1 = _Embed(c1, embed_dim)
        self.linear_fuse = nn.Sequential(nn.Conv2d(4 * embed_dim, embed_dim, 1), nn.BatchNorm2d(embed_dim), nn.ReLU())
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        c1, c2, c3, c4 = features
        size = c1.shape[-2:]
        maps = [F.interpolate(embed(c), size=size, mode="bilinear", align_corners=False)
                for embed, c in ((self.linear_c4, c4), (self.linear_c3, c3), (self.linear_c2, c2))]
        x = self.linear_fuse(torch.cat([*maps, self.linear_c1(c1)], dim=1))   # (B, E, h_0, w_0)
        return self.linear_pred(self.dropout(x))


class MambaSeg(nn.Module):
    """MambaSeg: ``forward(image, events) -> {"semseg": (B, num_classes, H, W)}`` at the built size (H, W).

    Per stage i (stage steps of MAMBASEG.md §3.1): o = blocks_i(x) for each branch; 1. I = outnorm_i(o_img),
    E = outnorm_i(o_ev); 2. (I', E') = DDIM_i(I, E); 3. next input downsample_i(o + I') (a double residual: I' already
    contains I), the same for events; 4. F_i = Conv1×1(2C -> C)([I'; E']). The SegFormer head maps F_0..F_3 to
    stride-4 logits, upsampled bilinearly to the input size.

    Args:
        img_size: (H, W) the model is built for (TSSM shapes); other sizes raise :class:`InputSizeError`.
        num_classes: segmentation classes.
        image_channels: frame channels (1 grey, 3 RGB).
        event_channels: event voxel-grid bins.
        dims, depths: VMamba stage widths and depths (VMamba-T by default).
        drop_path_rate: encoders' stochastic depth (last block).
        head_dim: SegFormer embedding width E.
        merge: TSSM merge, "official" or "flip".
        scan_backend: backend of every selective scan.
    """

    inputs = ("image", "events")   # the batch keys forward() takes, in order

    def __init__(self, img_size: tuple[int, int], num_classes: int, *, image_channels: int = 3,
                 event_channels: int = 10, dims: Sequence[int] = VMAMBA_T["dims"],
                 depths: Sequence[int] = VMAMBA_T["depths"], drop_path_rate: float = VMAMBA_T["drop_path_rate"],
                 head_dim: int = 768, merge: str = "official", scan_backend: str = "auto") -> None:
        super().__init__()
        self.img_size = tuple(img_size)
        self.in_channels = {"image": image_channels, "events": event_channels}
        encoder = dict(dims=dims, depths=depths, d_state=VMAMBA_T["d_state"], ssm_ratio=VMAMBA_T["ssm_ratio"],
                       mlp_ratio=VMAMBA_T["mlp_ratio"], drop_path_rate=drop_path_rate, scan_backend=scan_backend)
        self.encoder_img = VMambaEncoder(image_channels, **encoder)
        self.encoder_ev = VMambaEncoder(event_channels, **encoder)
        self.ccbs = nn.ModuleList(DDIM(c, s, merge=merge, scan_backend=scan_backend)
                                  for c, s in zip(dims, stage_sizes(self.img_size, len(dims))))
        self.out_convs = nn.ModuleList(nn.Conv2d(2 * c, c, 1) for c in dims)
        self.decoder = SegFormerHead(dims, num_classes, head_dim)
        self.grad_ckpt = False     # recompute each stage in the backward pass (models.execution)

    def load_pretrained(self, path: str | os.PathLike) -> None:
        """VMamba ImageNet weights into both encoders (MAMBASEG.md §2): the event stem is always rebuilt (random), the
        image stem kept only for 3-channel frames; classifier skipped, output norms keep their init."""
        state = read_weights(path)
        for name, encoder, keep_stem in (("image", self.encoder_img, self.encoder_img.in_chans == 3),
                                         ("event", self.encoder_ev, False)):
            logger.info("MambaSeg %s encoder: %s", name, path)
            encoder.load_checkpoint(state, keep_stem=keep_stem, source=os.fspath(path))

    def check_inputs(self, image: torch.Tensor, events: torch.Tensor) -> None:
        """Raise :class:`InputSizeError` / ``ValueError`` naming the built and the given shapes."""
        for key, x in (("image", image), ("events", events)):
            if x.dim() != 4 or x.shape[1] != self.in_channels[key]:
                raise ValueError(f"MambaSeg {key} must be (B, {self.in_channels[key]}, H, W) "
                                 f"(model.mambaseg.{CHANNEL_KEYS[key]}), got {tuple(x.shape)}")
            if tuple(x.shape[-2:]) != self.img_size:
                raise InputSizeError(
                    f"MambaSeg is built for {self.img_size[0]}×{self.img_size[1]} inputs (TRAIN.SCALE) but got "
                    f"{key} of {x.shape[-2]}×{x.shape[-1]}: the TSSM parameters have one entry per spatial position "
                    f"of each stage, so the model only runs at the size it is built for; crop or resize the input "
                    f"to {self.img_size[0]}×{self.img_size[1]}, or build the model with TRAIN.SCALE="
                    f"[{x.shape[-2]}, {x.shape[-1]}]")

    def _stage(self, i: int, x_img: torch.Tensor, x_ev: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Stage i: channels-last inputs (B, h, w, C) -> next inputs and the decoder feature F_i (B, C, h, w)."""
        layer_img, layer_ev = self.encoder_img.layers[i], self.encoder_ev.layers[i]
        o_ev, o_img = layer_ev.blocks(x_ev), layer_img.blocks(x_img)                 # (B, h, w, C)
        out_ev = self.encoder_ev.out_norm(i)(o_ev).permute(0, 3, 1, 2)               # stage step 1, (B, C, h, w)
        out_img = self.encoder_img.out_norm(i)(o_img).permute(0, 3, 1, 2)
        img, ev = self.ccbs[i](out_img, out_ev)                                      # stage step 2
        x_ev = layer_ev.downsample(o_ev + ev.permute(0, 2, 3, 1))                    # stage step 3
        x_img = layer_img.downsample(o_img + img.permute(0, 2, 3, 1))
        return x_img, x_ev, self.out_convs[i](torch.cat([img, ev], dim=1))          # stage step 4

    def forward(self, image: torch.Tensor, events: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C_img, H, W), (B, C_ev, H, W) -> ``{"semseg": (B, num_classes, H, W)}`` logits."""
        self.check_inputs(image, events)
        x_ev, x_img = self.encoder_ev.patch_embed(events), self.encoder_img.patch_embed(image)   # (B, h0, w0, C0)
        features = []
        for i in range(len(self.ccbs)):
            if self.grad_ckpt and torch.is_grad_enabled():
                x_img, x_ev, f = checkpoint(self._stage, i, x_img, x_ev, use_reentrant=False)
            else:
                x_img, x_ev, f = self._stage(i, x_img, x_ev)
            features.append(f)
        logits = self.decoder(features)                                              # (B, n, h0, w0)
        return {"semseg": F.interpolate(logits, size=self.img_size, mode="bilinear", align_corners=False)}

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero inputs of the built size, in ``inputs`` order (for FLOP counting and benchmarks)."""
        device = self.decoder.linear_pred.weight.device
        return tuple(torch.zeros(batch, self.in_channels[k], *self.img_size, device=device) for k in self.inputs)


# --------------------------------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------------------------------
@register_model("mambaseg")
def build_mambaseg(cfg) -> MambaSeg:
    """MambaSeg from a config: ``model.mambaseg`` (sizes, input channels, merge), ``TRAIN.SCALE`` (the built size),
    the semseg classes of the dataset, ``model.encoder_drop_path_rate``, ``model.scan_backend`` and
    ``model.pretrained`` / ``model.pretrained_path`` (the VMamba-T ImageNet file; rule in :mod:`models.pretrained`)."""
    m, ms = cfg.model, cfg.model.mambaseg
    model = MambaSeg(tuple(cfg.TRAIN.SCALE), cfg.TASKS.NUM_OUTPUT["semseg"], image_channels=ms.image_channels,
                     event_channels=ms.event_channels, dims=ms.dims, depths=ms.depths,
                     drop_path_rate=m.encoder_drop_path_rate, head_dim=ms.head_dim, merge=ms.merge,
                     scan_backend=m.scan_backend)
    if m.pretrained_path:
        model.load_pretrained(m.pretrained_path)
    elif m.pretrained and encoder_name(cfg) is not None:
        raise PretrainedWeightsError(missing_weights_message(encoder_name(cfg)))
    return model

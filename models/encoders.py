"""Swin Transformer encoder: "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows"
(Liu et al., ICCV 2021, https://arxiv.org/abs/2103.14030), built from timm's implementation.

The encoder returns the four stage outputs as NCHW maps (strides 4, 8, 16, 32), each passed through its
own LayerNorm, which is the interface of the mmseg Swin backbone that MTMamba uses (PERFORMANCE.md §1,
MODELS.md §0.1). Parity with that mmseg backbone:

* Output norms: mmseg applies ``norm0..norm3`` (LayerNorm over C, eps 1e-5) to the returned stages, and timm
  has no such layers; they are added here under the same names. timm's final ``norm`` and its classifier
  are pruned, so Swin-L has exactly mmseg's 195,201,204 parameters.
* Window order (``pad_mode``): timm shifts the map cyclically and then pads it to a window multiple; mmseg
  (like the official Swin segmentation code) pads first and then shifts. In shifted blocks the two agree
  only where, on each axis, the pad is 0 or equals the shift (side mod window = window/2); otherwise they
  differ (at 448×576 by up to 12 % relative error at stage 3 for the same weights). ``pad_mode="mmseg"``
  swaps every block for :class:`MmsegOrderSwinBlock`, which pads first.
* Small maps: timm clamps the window to the stage size and turns the shift off when a stage side is ≤ the
  window (the original classification rule). mmseg never clamps. ``pad_mode="mmseg"`` builds timm with
  ``always_partition=True``, which keeps the configured window and shifts every odd block, as mmseg does.
  At 448×576 and 512×512 with window 12 no stage side is ≤ 12, so the rule only matters for small inputs.
* PatchMerging: mmseg concatenates the 2×2 neighbours with ``nn.Unfold`` (channel-major, positions in
  row-major order); timm and the original code use position-major order with positions in column-major
  order. Checkpoint conversion permutes the ``4C`` axis (see :func:`mmseg_to_original_state_dict`).
* Drop path: both use ``linspace(0, drop_path_rate, sum(depths))`` over the blocks, with rate 0.1 by default.
* Attention: timm may use ``F.scaled_dot_product_attention``; this encoder always takes timm's explicit
  ``softmax(q·kᵀ + bias + mask)·v`` path, as mmseg does (see :class:`SwinEncoder`).

Pretrained weights: timm's own download (``pretrained=True``), or a local file in the original Microsoft,
timm or mmseg/MTMamba layout, loaded strictly by :meth:`SwinEncoder.load_checkpoint`; what was loaded is recorded in
``loaded_weights``.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import load_state_dict as timm_load_state_dict
from timm.models.swin_transformer import (
    SwinTransformer,
    SwinTransformerBlock,
    WindowAttention,
    checkpoint_filter_fn,
    window_partition,
    window_reverse,
)

from utils.checkpoint import check_keys_and_shapes

from .weights import LoadedWeights, create_timm_model, timm_weights_file

__all__ = ["SWIN_VARIANTS", "CUSTOM_ARCH", "PAD_MODES", "MmsegOrderSwinBlock", "SwinEncoder",
           "detect_checkpoint_layout", "select_backbone", "mmseg_to_original_state_dict",
           "timm_to_mmseg_state_dict", "build_encoder"]

logger = logging.getLogger(__name__)

# Encoder sizes: our name -> timm architecture (patch 4; embed / depths / heads / window fixed by timm).
SWIN_VARIANTS: dict[str, str] = {
    "swin_tiny": "swin_tiny_patch4_window7_224",      # embed 96,  depths 2-2-6-2,  heads 3-6-12-24,  window 7
    "swin_small": "swin_small_patch4_window7_224",    # embed 96,  depths 2-2-18-2, heads 3-6-12-24,  window 7
    "swin_base": "swin_base_patch4_window12_384",     # embed 128, depths 2-2-18-2, heads 4-8-16-32,  window 12
    "swin_large": "swin_large_patch4_window12_384",   # embed 192, depths 2-2-18-2, heads 6-12-24-48, window 12
}
# Name of an architecture given by explicit embed_dim / depths / num_heads / window_size (small test nets).
CUSTOM_ARCH = "custom"
PAD_MODES = ("timm", "mmseg")

_OUT_NORM_KEY = re.compile(r"^norm(\d+)\.(weight|bias)$")
_FINAL_NORM_KEYS = ("norm.weight", "norm.bias")  # timm's / the original final norm; pruned here
_BUFFER_SUFFIXES = ("relative_position_index", "attn_mask")  # buffers of the original files, recomputed here
LAYOUT_NAMES = {"original": "Microsoft layout", "timm": "timm layout", "mmseg": "mmseg layout"}
# Position order of the 2×2 PatchMerging neighbours, mmseg (Unfold: (0,0),(0,1),(1,0),(1,1) as (row, col))
# <-> original/timm ((0,0),(1,0),(0,1),(1,1)). The list is its own inverse.
_MERGE_ORDER = [0, 2, 1, 3]


# --------------------------------------------------------------------------------------------------------
# Helpers: PatchMerging channel order


def _merge_channels_mmseg_to_original(t: torch.Tensor) -> torch.Tensor:
    """Reorder the last axis (4C) from mmseg's order (index c·4 + q) to the original order (index p·C + c).

    ``(..., 4C) -> (..., 4C)``; used for the reduction weight ``(2C, 4C)`` and the norm ``(4C,)``.
    """
    c = t.shape[-1] // 4
    t = t.reshape(*t.shape[:-1], c, 4).transpose(-1, -2)              # (..., 4, C), positions in mmseg order
    return t[..., _MERGE_ORDER, :].reshape(*t.shape[:-2], 4 * c)      # positions in original order


def _merge_channels_original_to_mmseg(t: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_merge_channels_mmseg_to_original`. ``(..., 4C) -> (..., 4C)``."""
    c = t.shape[-1] // 4
    t = t.reshape(*t.shape[:-1], 4, c)[..., _MERGE_ORDER, :]           # (..., 4, C), positions in mmseg order
    return t.transpose(-1, -2).reshape(*t.shape[:-2], 4 * c)


# --------------------------------------------------------------------------------------------------------
# Block: mmseg's pad-then-shift window attention


class MmsegOrderSwinBlock(SwinTransformerBlock):
    """timm's Swin block with mmseg's window order: pad to a window multiple, then shift cyclically.

    Only ``_attn`` (the shifted-window partition around the attention) differs from timm. The map is padded
    at the bottom/right to ``Hp × Wp``, rolled by ``-shift``, partitioned, attended with the shifted-window
    mask, reversed, rolled back and cropped. The mask is timm's own (``attn_mask`` buffer, or
    ``get_attn_mask`` in dynamic mode): timm labels the regions with mmseg's slices ``(0, -w), (-w, -s),
    (-s, None)`` on the window-padded map, so applied to a padded-then-rolled map it is exactly mmseg's mask.

    :class:`SwinEncoder` converts the blocks of a built timm model in place (``block.__class__ = ...``):
    timm's stage has no block-class argument, and the subclass adds no state, so parameters, buffers and
    state-dict keys stay timm's. Window and shift come from the block as built; build timm with
    ``always_partition=True`` for mmseg's no-clamping rule.
    """

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``."""
        B, H, W, C = x.shape
        win_h, win_w = self.window_size
        shift_h, shift_w = self.shift_size

        # pad bottom/right to a window multiple first (mmseg order)
        pad_h = (win_h - H % win_h) % win_h
        pad_w = (win_w - W % win_w) % win_w
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))                      # (B, Hp, Wp, C)
        Hp, Wp = H + pad_h, W + pad_w

        # then the cyclic shift, over the padded map
        has_shift = shift_h > 0 or shift_w > 0
        if has_shift:
            x = torch.roll(x, shifts=(-shift_h, -shift_w), dims=(1, 2))
        attn_mask = self.get_attn_mask(x) if self.dynamic_mask else self.attn_mask

        # W-MSA / SW-MSA
        windows = window_partition(x, self.window_size).view(-1, self.window_area, C)  # (nW·B, Wh·Ww, C)
        windows = self.attn(windows, mask=attn_mask)
        x = window_reverse(windows.view(-1, win_h, win_w, C), self.window_size, Hp, Wp)  # (B, Hp, Wp, C)

        if has_shift:
            x = torch.roll(x, shifts=(shift_h, shift_w), dims=(1, 2))
        return x[:, :H, :W, :].contiguous()


# --------------------------------------------------------------------------------------------------------
# Model


class SwinEncoder(nn.Module):
    """Swin backbone returning the four stage outputs, each after its own LayerNorm, as NCHW maps.

    ``forward: (B, 3, H, W) -> [(B, C_i, H / s_i, W / s_i) for i in 0..3]`` with ``C_i = channels[i]`` and
    ``s_i = strides[i] = 4, 8, 16, 32``. Parameter names: ``swin.*`` (timm's names) and ``norm0..norm3``.
    ``loaded_weights`` records the pretrained load (None: random init).

    Attention always takes timm's explicit path (``fused_attn = False`` on every ``WindowAttention``), not
    ``F.scaled_dot_product_attention``: fvcore, which reproduces the papers' FLOP columns, only counts the
    explicit ``q @ kᵀ`` and ``attn @ v`` matmuls, and the explicit path is what mmseg computes. timm only
    enables the fused path for Swin when ``TIMM_FUSED_ATTN`` asks for experimental kernels, so this normally
    changes nothing; it makes the choice independent of the environment. With windows of 144 tokens the
    materialised attention matrix is small.

    Args:
        arch: a key of :data:`SWIN_VARIANTS`, or :data:`CUSTOM_ARCH` for an architecture given by
            ``embed_dim``, ``depths``, ``num_heads`` and ``window_size`` (all four required then, and
            only then).
        img_size: input size (H, W) or a square side. It is fixed unless ``dynamic_img_size``; it also sets
            timm's window clamping in ``pad_mode="timm"``, so pass the real training size.
        embed_dim: stage-0 width of a custom architecture (stage i has ``embed_dim · 2**i`` channels).
        depths: blocks per stage of a custom architecture.
        num_heads: attention heads per stage of a custom architecture.
        window_size: attention window side of a custom architecture.
        pretrained: load timm's weights for ``arch`` (timm's default tag; for Swin-L ``.ms_in22k_ft_in1k``, the
            22k→1k file MTMamba uses) through timm's download, strictly. Needs internet access or timm's cache.
        pretrained_path: a local weight file loaded strictly with :meth:`load_checkpoint`; excludes
            ``pretrained``.
        pad_mode: ``"timm"`` (timm's shift-then-pad order and window clamping) or ``"mmseg"`` (pad-then-shift,
            no clamping: reproduces mmseg Swin and so MTMamba's released checkpoints). Config key
            ``model.swin_pad_mode``.
        drop_path_rate: stochastic-depth rate of the last block (linear from 0 over all blocks); mmseg's
            default 0.1, which MTMamba does not override.
        dynamic_img_size: accept any input whose sides are multiples of 32 (timm's ``strict_img_size=False``);
            the shifted-window masks are then rebuilt on every forward.
    """

    def __init__(
        self,
        arch: str = "swin_large",
        *,
        img_size: int | tuple[int, int],
        embed_dim: int | None = None,
        depths: Sequence[int] | None = None,
        num_heads: Sequence[int] | None = None,
        window_size: int | None = None,
        pretrained: bool = False,
        pretrained_path: str | os.PathLike | None = None,
        pad_mode: str = "timm",
        drop_path_rate: float = 0.1,
        dynamic_img_size: bool = False,
    ) -> None:
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ValueError(f"unknown pad_mode {pad_mode!r}; valid: {', '.join(PAD_MODES)}")
        if pretrained and pretrained_path is not None:
            raise ValueError("give either pretrained=True (timm download) or pretrained_path, not both")
        custom = dict(embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size)
        common = dict(img_size=img_size, drop_path_rate=drop_path_rate, strict_img_size=not dynamic_img_size,
                      always_partition=pad_mode == "mmseg")
        if arch == CUSTOM_ARCH:
            unset = [k for k, v in custom.items() if v is None]
            if unset:
                raise ValueError(f"arch={CUSTOM_ARCH!r} needs {', '.join(unset)}")
            if pretrained:
                raise ValueError(f"no timm weights exist for arch={CUSTOM_ARCH!r}; use pretrained_path")
            swin = SwinTransformer(num_classes=0, embed_dim=embed_dim, depths=tuple(depths),
                                   num_heads=tuple(num_heads), window_size=window_size, **common)
        elif arch in SWIN_VARIANTS:
            given = [k for k, v in custom.items() if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)} only apply to arch={CUSTOM_ARCH!r}; "
                                 f"{arch!r} is fixed by timm's {SWIN_VARIANTS[arch]!r}")
            # With pretrained weights num_classes stays at the checkpoint's, so that timm loads strictly (it
            # relaxes strictness whenever the classifier is dropped); the head is pruned below either way.
            head = {} if pretrained else {"num_classes": 0}
            swin = create_timm_model(SWIN_VARIANTS[arch], pretrained, **head, **common)
        else:
            raise ValueError(f"unknown Swin arch {arch!r}; valid: {', '.join([*SWIN_VARIANTS, CUSTOM_ARCH])}")

        num_stages = len(swin.layers)
        self._stage_indices = tuple(range(num_stages))
        swin.prune_intermediate_layers(indices=self._stage_indices, prune_norm=True, prune_head=True)
        for module in swin.modules():
            if isinstance(module, WindowAttention):
                module.fused_attn = False
            if pad_mode == "mmseg" and isinstance(module, SwinTransformerBlock):
                module.__class__ = MmsegOrderSwinBlock
        self.swin = swin
        self.arch = arch
        self.pad_mode = pad_mode
        self.channels: list[int] = [info["num_chs"] for info in swin.feature_info]
        self.strides: list[int] = [info["reduction"] for info in swin.feature_info]
        # mmseg's output norms (nn.LayerNorm default eps 1e-5, weight 1, bias 0 as in mmseg)
        for i, c in enumerate(self.channels):
            self.add_module(f"norm{i}", nn.LayerNorm(c, eps=1e-5))

        self.loaded_weights: LoadedWeights | None = None
        if pretrained:
            norms = [p.numel() for n, p in self.named_parameters() if _OUT_NORM_KEY.match(n)]
            n_total = sum(p.numel() for p in self.parameters())
            self.loaded_weights = LoadedWeights(
                source=timm_weights_file(SWIN_VARIANTS[arch]) or f"timm {SWIN_VARIANTS[arch]}",
                layout="timm download", n_keys=len(self.swin.state_dict()), n_loaded=n_total - sum(norms),
                n_total=n_total, notes=(f"no output norms in the file: norm0..norm{num_stages - 1} ({len(norms)} "
                                        f"keys) keep their values",))
            logger.info("Loaded timm's pretrained weights for %s: %s", SWIN_VARIANTS[arch],
                        self.loaded_weights.summary())
        if pretrained_path is not None:
            self.load_checkpoint(pretrained_path)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W) -> [(B, C_i, H / s_i, W / s_i)]``, shallowest first, contiguous NCHW."""
        feats = self.swin.forward_intermediates(x, indices=self._stage_indices, intermediates_only=True)
        out = []
        for i, f in enumerate(feats):
            f = getattr(self, f"norm{i}")(f.permute(0, 2, 3, 1))       # (B, H_i, W_i, C_i)
            out.append(f.permute(0, 3, 1, 2).contiguous())            # (B, C_i, H_i, W_i)
        return out

    @torch.no_grad()
    def load_checkpoint(self, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor], *,
                        source: str | None = None) -> LoadedWeights:
        """Load Swin weights strictly from a file or a state dict in any of three layouts; returns (and keeps as
        ``loaded_weights``) what was loaded. ``source`` names the file a given dict was read from.

        Layouts (detected by :func:`detect_checkpoint_layout`, after unwrapping ``{'model': ...}`` or
        ``{'state_dict': ...}`` and stripping ``module.``; if keys start with ``backbone.``, only those are
        used, which picks the encoder out of a full MTMamba checkpoint):

        * ``original``: Microsoft's files (``layers.0.downsample.*``, ``head.*``);
        * ``timm``: timm's names (``layers.1.downsample.*``, ``head.fc.*``);
        * ``mmseg``: mmseg / MTMamba names (``stages.*``, ``patch_embed.projection.*``), converted with
          :func:`mmseg_to_original_state_dict`.

        timm's ``checkpoint_filter_fn`` then renames the original layout, drops the buffers
        (``relative_position_index``, ``attn_mask``) and resizes relative-position tables whose window differs
        (warned). The classifier ``head.*`` and timm's final ``norm.*`` are dropped (this encoder has
        neither). ``norm0..normN`` load into the output norms; when absent (ImageNet files) the output
        norms keep their current values, as mmseg's do. Any other missing or unexpected key or shape
        mismatch raises ``RuntimeError`` listing all of them (keys in this encoder's names). Works on the meta
        device (a check of keys and shapes that copies nothing).
        """
        if isinstance(checkpoint, Mapping):
            source, state_dict = source or "state dict", dict(checkpoint)
        else:
            source = os.fspath(checkpoint)
            if not os.path.isfile(source):
                raise FileNotFoundError(f"Swin checkpoint not found: {source}")
            state_dict = timm_load_state_dict(source, use_ema=False)
        state_dict = select_backbone(state_dict)
        layout = detect_checkpoint_layout(state_dict)
        if layout == "mmseg":
            state_dict = mmseg_to_original_state_dict(state_dict)

        out_norms = {k: v for k, v in state_dict.items() if _OUT_NORM_KEY.match(k)}
        swin_sd = {k: v for k, v in state_dict.items() if k not in out_norms}
        buffers = [k for k in swin_sd if k.endswith(_BUFFER_SUFFIXES)]
        self._warn_resized_tables(swin_sd)
        swin_sd = checkpoint_filter_fn(swin_sd, self.swin)
        head = [k for k in swin_sd if k.startswith("head.")]
        final_norm = [k for k in swin_sd if k in _FINAL_NORM_KEYS]
        for k in head + final_norm:
            del swin_sd[k]

        expected = self.state_dict()
        loaded = {f"swin.{k}": v for k, v in swin_sd.items()} | out_norms
        norm_keys = [k for k in expected if _OUT_NORM_KEY.match(k)]
        if not out_norms:
            loaded |= {k: expected[k] for k in norm_keys}
        check_keys_and_shapes(loaded, expected, f"checkpoint {source} (layout {layout}, keys in timm names) does not "
                                                "match the Swin encoder")
        self.load_state_dict(loaded, strict=True)

        params = dict(self.named_parameters())
        n_total = sum(p.numel() for p in params.values())
        n_loaded = n_total - (0 if out_norms else sum(params[k].numel() for k in norm_keys))
        notes = [f"skipped {what} ({len(keys)} keys, {why})" for what, keys, why in (
            ("head.*", head, "the ImageNet classifier"), ("norm.*", final_norm, "the final norm; the stages have "
                                                                              "their own output norms"),
            ("relative_position_index / attn_mask", buffers, "buffers, recomputed")) if keys]
        if not out_norms:
            notes.append(f"no output norms in the file: norm0..norm{len(norm_keys) // 2 - 1} ({len(norm_keys)} "
                         f"keys) keep their values")
        self.loaded_weights = LoadedWeights(source, f"Swin, {LAYOUT_NAMES[layout]}",
                                            len(loaded) - (0 if out_norms else len(norm_keys)), n_loaded, n_total,
                                            tuple(notes))
        logger.info("Loaded Swin weights from %s: %s", source, self.loaded_weights.summary())
        if layout == "mmseg" and out_norms and self.pad_mode != "mmseg":
            logger.warning("%s is a trained mmseg Swin (it has output norms); pad_mode='mmseg' reproduces its "
                           "numerics, pad_mode=%r does not", source, self.pad_mode)
        return self.loaded_weights

    def to_mmseg_state_dict(self) -> dict[str, torch.Tensor]:
        """This encoder's weights under mmseg Swin names (see :func:`timm_to_mmseg_state_dict`)."""
        own = self.state_dict()
        swin = {k.removeprefix("swin."): v for k, v in own.items() if k.startswith("swin.")}
        swin |= {k: v for k, v in self.swin.named_buffers() if k.endswith("relative_position_index")}
        return timm_to_mmseg_state_dict(swin) | {k: v for k, v in own.items() if _OUT_NORM_KEY.match(k)}

    def _warn_resized_tables(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Warn about relative-position tables that timm's filter will resize (window differs)."""
        own = dict(self.swin.named_parameters())
        resized = [f"{k} {tuple(v.shape)} -> {tuple(own[k].shape)}" for k, v in state_dict.items()
                   if k.endswith("relative_position_bias_table") and k in own and v.shape != own[k].shape]
        if resized:
            logger.warning("timm resizes %d relative-position tables (the model's window differs from the "
                           "checkpoint's, e.g. clamped by pad_mode='timm' at a small img_size): %s",
                           len(resized), "; ".join(resized))


# --------------------------------------------------------------------------------------------------------
# Checkpoint layouts


def select_backbone(state_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Unwrap ``{'model': ...}`` / ``{'state_dict': ...}``, strip ``module.``; keep only ``backbone.*`` if any."""
    for key in ("model", "state_dict"):
        if isinstance(state_dict.get(key), Mapping):
            state_dict = state_dict[key]
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    backbone = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
    if backbone:
        if len(backbone) < len(state_dict):
            logger.info("Using the %d backbone.* keys; ignoring %d other keys (decoder and heads)",
                        len(backbone), len(state_dict) - len(backbone))
        return backbone
    return state_dict


def detect_checkpoint_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"mmseg"``, ``"original"`` or ``"timm"`` for a Swin state dict without wrapper prefixes."""
    if any(k.startswith(("stages.", "patch_embed.projection.")) for k in state_dict):
        return "mmseg"
    if "layers.0.downsample.reduction.weight" in state_dict:
        return "original"
    if any(k.startswith("layers.") for k in state_dict):
        return "timm"
    raise ValueError("not a Swin state dict (no stages.* or layers.* keys); first keys: "
                     + ", ".join(list(state_dict)[:8]))


# mmseg name -> original Microsoft name (the original puts PatchMerging at the end of stage i, like mmseg)
_MMSEG_TO_ORIGINAL = (
    (re.compile(r"^patch_embed\.projection\."), "patch_embed.proj."),
    (re.compile(r"^stages\."), "layers."),
    (re.compile(r"\.attn\.w_msa\."), ".attn."),
    (re.compile(r"\.ffn\.layers\.0\.0\."), ".mlp.fc1."),
    (re.compile(r"\.ffn\.layers\.1\."), ".mlp.fc2."),
)
_MERGE_KEY = re.compile(r"\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)$")


def mmseg_to_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmseg Swin names -> original Microsoft names, permuting PatchMerging's ``4C`` axis.

    ``stages.{i}.downsample.reduction.weight (2C, 4C)`` is viewed as ``(2C, C, 4)``, its last two axes swapped
    to ``(2C, 4, C)``, the 4 positions reordered ``[0, 2, 1, 3]`` and flattened back; the ``(4C,)`` norm the
    same way (PERFORMANCE.md §1.4). Keys without a mmseg-specific name (``norm0``, ``norm``, buffers) pass
    through unchanged.
    """
    return _convert_state_dict(state_dict, _MMSEG_TO_ORIGINAL, _merge_channels_mmseg_to_original)


def _convert_state_dict(state_dict: Mapping[str, torch.Tensor], rules, permute_merge) -> dict[str, torch.Tensor]:
    """Rename every key by the ``(pattern, replacement)`` rules, in order; permute PatchMerging tensors."""
    out = {}
    for k, v in state_dict.items():
        new_k = k
        for pattern, repl in rules:
            new_k = pattern.sub(repl, new_k)
        if _MERGE_KEY.search(k):
            if v.shape[-1] % 4:
                raise ValueError(f"{k}: PatchMerging tensor of shape {tuple(v.shape)}, last axis not 4·C")
            v = permute_merge(v)
        out[new_k] = v
    return out


_TIMM_TO_MMSEG = (
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.projection."),
    (re.compile(r"^layers\.(\d+)\.downsample\."), lambda m: f"stages.{int(m.group(1)) - 1}.downsample."),
    (re.compile(r"^layers\."), "stages."),
    (re.compile(r"\.attn\."), ".attn.w_msa."),
    (re.compile(r"\.mlp\.fc1\."), ".ffn.layers.0.0."),
    (re.compile(r"\.mlp\.fc2\."), ".ffn.layers.1."),
)


def timm_to_mmseg_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm Swin names -> mmseg Swin names, the inverse of :func:`mmseg_to_original_state_dict` plus timm's
    PatchMerging move (timm's ``layers.{i}.downsample`` is mmseg's ``stages.{i-1}.downsample``).

    Pass the persistent ``relative_position_index`` buffers along to get mmseg's full key set, which loads
    strictly into mmseg's SwinTransformer (mmseg stores them; both compute the same index).
    """
    return _convert_state_dict(state_dict, _TIMM_TO_MMSEG, _merge_channels_original_to_mmseg)


# --------------------------------------------------------------------------------------------------------
# Builder


def build_encoder(
    name: str,
    *,
    img_size: int | tuple[int, int],
    pretrained: bool = False,
    pretrained_path: str | os.PathLike | None = None,
    pad_mode: str = "timm",
    drop_path_rate: float = 0.1,
    dynamic_img_size: bool = False,
    embed_dim: int | None = None,
    depths: Sequence[int] | None = None,
    num_heads: Sequence[int] | None = None,
    window_size: int | None = None,
) -> SwinEncoder:
    """Build the encoder named by ``model.backbone``: a key of :data:`SWIN_VARIANTS` or ``"custom"`` (with
    the four architecture arguments, from ``model.backbone_kwargs``). See :class:`SwinEncoder`."""
    valid = [*SWIN_VARIANTS, CUSTOM_ARCH]
    if name not in valid:
        raise ValueError(f"unknown encoder {name!r} (model.backbone); valid: {', '.join(valid)}")
    return SwinEncoder(name, img_size=img_size, embed_dim=embed_dim, depths=depths, num_heads=num_heads,
                       window_size=window_size, pretrained=pretrained, pretrained_path=pretrained_path,
                       pad_mode=pad_mode, drop_path_rate=drop_path_rate, dynamic_img_size=dynamic_img_size)

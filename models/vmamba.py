"""VMamba encoder: "VMamba: Visual State Space Model" (Liu et al., NeurIPS 2024, https://arxiv.org/abs/2401.10166),
the classification VSSM of https://github.com/MzeroMiko/VMamba (``classification/models/vmamba.py``) without its
classifier, with four output norms, as MambaSeg uses it (MAMBASEG.md §2).

The defaults are VMamba-T "s1l8", the architecture of ``vssm1_tiny_0230s_ckpt_epoch_264.pth`` (82.6 % ImageNet top-1):
dims 96-192-384-768, depths 2-2-8-2, drop path 0.2; SS2D ``v05_noz`` with d_state 1, ssm_ratio 1 (d_inner = C),
dt_rank ⌈C/16⌉, depthwise 3×3 conv without bias, no z gate; MLP ratio 4 with GELU; patch embed "v2" (two 3×3 stride-2
convs); downsample "v3" (3×3 stride-2 conv); LayerNorms with eps 1e-5.

* Layout. The official model runs channel-first (``LayerNorm2d`` = LayerNorm over C of an NCHW map, ``Linear2d`` = a
  1×1 conv storing a 2-D ``[out, in]`` weight). Those are the same functions as ``nn.LayerNorm`` / ``nn.Linear`` on
  a channels-last map, with the same parameter shapes, so the blocks here run channels-last (B, H, W, C) and the
  convolutions of the stem and the downsampling layers see NCHW through ``Permute`` layers. This is VMamba's own
  channel-last variant (``norm_layer="ln"``): every state-dict key and shape equals the released file's.
* SS2D is :class:`models.ss2d.SS2D` (``gate=False``: in_proj gives only x; ``conv_bias=False``), with the project's
  one selective scan and SSM initialisation; VMamba's SS2D computes the same function (cross-scan in the four
  ``SS2D_ORDERS``, grouped S6, cross-merge, out_norm, out_proj).
* Initialisation (VMamba ``VSSM._init_weights``): every ``nn.Linear`` trunc_normal(std 0.02) with zero bias, every
  LayerNorm weight 1 / bias 0; convolutions and the SSM parameters keep their own initialisation.
* Pretrained weights: :meth:`VMambaEncoder.load_checkpoint`, strict apart from the ImageNet classifier, the stem when
  it is rebuilt for other input channels, and the output norms (absent from ImageNet files; they keep their init).
"""
from __future__ import annotations

import logging
import os
import pickle
from typing import Mapping, Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp
from torchvision.ops import Permute

from utils.checkpoint import raise_key_mismatches

from .ss2d import SS2D
from .weights import LoadedWeights

__all__ = ["VMAMBA_T", "LN_EPS", "VSSBlock", "VMambaLayer", "VMambaEncoder", "patch_embed_v2", "downsample_v3",
           "read_weights", "select_pretrained"]

logger = logging.getLogger(__name__)

# VMamba-T [s1l8]: the architecture of vssm1_tiny_0230s_ckpt_epoch_264.pth (MzeroMiko/VMamba README)
VMAMBA_T = dict(dims=(96, 192, 384, 768), depths=(2, 2, 8, 2), d_state=1, ssm_ratio=1.0, mlp_ratio=4.0,
                drop_path_rate=0.2)
LN_EPS = 1e-5          # VMamba's LayerNorm / LayerNorm2d (nn.LayerNorm default; timm's LayerNorm2d uses 1e-6)
CLASSIFIER_PREFIX = "classifier."
STEM_PREFIX = "patch_embed."
OUT_NORM = "outnorm"


# --------------------------------------------------------------------------------------------------------------------
# Stem and downsampling (VMamba ``_make_patch_embed_v2`` / ``_make_downsample_v3``, channel-last variant)
# --------------------------------------------------------------------------------------------------------------------
def patch_embed_v2(in_chans: int, dim: int) -> nn.Sequential:
    """Stem, ×4 down: conv 3×3 s2 (in -> dim/2) + LN + GELU + conv 3×3 s2 (dim/2 -> dim) + LN.

    ``(B, in, H, W) -> (B, ⌈H/4⌉, ⌈W/4⌉, dim)``. The Permute layers hold VMamba's Sequential indices (0, 2, 5, 7).
    """
    return nn.Sequential(
        nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=2, padding=1),
        Permute([0, 2, 3, 1]),
        nn.LayerNorm(dim // 2, eps=LN_EPS),
        Permute([0, 3, 1, 2]),
        nn.GELU(),
        nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1),
        Permute([0, 2, 3, 1]),
        nn.LayerNorm(dim, eps=LN_EPS),
    )


def downsample_v3(dim: int, out_dim: int) -> nn.Sequential:
    """×2 down: conv 3×3 s2 (dim -> out_dim) + LN. ``(B, H, W, dim) -> (B, ⌈H/2⌉, ⌈W/2⌉, out_dim)``."""
    return nn.Sequential(
        Permute([0, 3, 1, 2]),
        nn.Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1),
        Permute([0, 2, 3, 1]),
        nn.LayerNorm(out_dim, eps=LN_EPS),
    )


# --------------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------------
class VSSBlock(nn.Module):
    """VMamba's VSS block: ``x + DropPath(SS2D(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``; (B, H, W, C) -> same.

    Args:
        dim: width C.
        d_state: SSM state size N.
        ssm_ratio: d_inner / C.
        dt_rank: rank of the Δ projection, or "auto" for ⌈C/16⌉.
        conv_bias: bias of SS2D's depthwise convolution.
        mlp_ratio: MLP hidden width / C.
        drop_path: stochastic-depth rate of both residual branches (one DropPath module, as in VMamba).
        scan_backend: backend of the selective scan.
    """

    def __init__(self, dim: int, *, d_state: int = 1, ssm_ratio: float = 1.0, dt_rank: int | str = "auto",
                 conv_bias: bool = False, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 scan_backend: str = "auto") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.op = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, conv_bias=conv_bias, gate=False,
                       out_proj=True, scan_backend=scan_backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VMambaLayer(nn.Module):
    """One stage's modules: ``blocks`` (a Sequential of VSS blocks) and ``downsample`` (to the next stage, or
    Identity). The encoder runs them separately, since the stage output between them is what it returns."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample


# --------------------------------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------------------------------
class VMambaEncoder(nn.Module):
    """VMamba backbone returning its four stage outputs, each after its own LayerNorm ``outnorm{i}``, as NCHW maps.

    ``forward: (B, in_chans, H, W) -> [(B, C_i, H_i, W_i)]`` with ``C_i = channels[i]``, ``H_0 = ⌈H/4⌉`` and
    ``H_{i+1} = ⌈H_i/2⌉`` (any input size). Parameter names: ``patch_embed.*``, ``layers.{i}.blocks.{j}.*``,
    ``layers.{i}.downsample.*``, ``outnorm{i}.*``, the official ones. The stages are also used one by one
    (``patch_embed``, ``layers[i].blocks``, ``outnorm{i}``, ``layers[i].downsample``), channels-last, by MambaSeg.
    ``loaded_weights`` records the pretrained load (None: random init).

    Args:
        in_chans: input channels.
        dims: stage widths.
        depths: VSS blocks per stage.
        d_state, ssm_ratio, dt_rank, conv_bias, mlp_ratio: of every :class:`VSSBlock`.
        drop_path_rate: stochastic depth of the last block, linear from 0 over all blocks.
        scan_backend: backend of the selective scan.
        pretrained_path: a VMamba checkpoint loaded with :meth:`load_checkpoint` (the stem too).
    """

    def __init__(self, in_chans: int = 3, *, dims: Sequence[int] = VMAMBA_T["dims"],
                 depths: Sequence[int] = VMAMBA_T["depths"], d_state: int = 1, ssm_ratio: float = 1.0,
                 dt_rank: int | str = "auto", conv_bias: bool = False, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.2, scan_backend: str = "auto",
                 pretrained_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        if len(dims) != len(depths):
            raise ValueError(f"dims {list(dims)} and depths {list(depths)} must have one entry per stage")
        self.in_chans = in_chans
        self.channels = list(dims)
        self.strides = [4 * 2 ** i for i in range(len(dims))]
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.patch_embed = patch_embed_v2(in_chans, dims[0])
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            blocks = [VSSBlock(dim, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, conv_bias=conv_bias,
                               mlp_ratio=mlp_ratio, drop_path=rates[sum(depths[:i]) + j], scan_backend=scan_backend)
                      for j in range(depth)]
            last = i == len(dims) - 1
            self.layers.append(VMambaLayer(blocks, nn.Identity() if last else downsample_v3(dim, dims[i + 1])))
        for i, dim in enumerate(dims):
            self.add_module(f"{OUT_NORM}{i}", nn.LayerNorm(dim, eps=LN_EPS))
        self.apply(_vmamba_init)
        self.loaded_weights: LoadedWeights | None = None
        if pretrained_path is not None:
            self.load_checkpoint(pretrained_path)

    def out_norm(self, i: int) -> nn.LayerNorm:
        """The output norm of stage i."""
        return getattr(self, f"{OUT_NORM}{i}")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, in_chans, H, W) -> [(B, C_i, H_i, W_i)]``, shallowest first, contiguous NCHW."""
        x = self.patch_embed(x)                                                    # (B, H_0, W_0, C_0)
        out = []
        for i, layer in enumerate(self.layers):
            o = layer.blocks(x)                                                    # (B, H_i, W_i, C_i)
            out.append(self.out_norm(i)(o).permute(0, 3, 1, 2).contiguous())      # (B, C_i, H_i, W_i)
            x = layer.downsample(o)
        return out

    @torch.no_grad()
    def load_checkpoint(self, checkpoint: str | os.PathLike | Mapping[str, object], *, keep_stem: bool = True,
                        source: str | None = None) -> LoadedWeights:
        """Load VMamba weights (a file or a dict: ``{'model': sd}``, ``{'state_dict': sd}`` or ``sd``), strictly apart
        from the documented skips of :func:`select_pretrained`; the loaded fraction and every skip are logged, and
        returned (and kept as ``loaded_weights``). ``source`` names the file a given dict was read from.

        ``keep_stem=False`` leaves ``patch_embed.*`` at its current values (a stem rebuilt for other input
        channels, as MambaSeg's event encoder and its grey-image encoder). Works on the meta device (a check of keys
        and shapes that copies nothing).
        """
        if isinstance(checkpoint, Mapping):
            source, state_dict = source or "state dict", checkpoint
        else:
            source, state_dict = os.fspath(checkpoint), read_weights(checkpoint)
        for key in ("model", "state_dict"):
            if isinstance(state_dict.get(key), Mapping):
                state_dict = state_dict[key]
                break
        loaded, notes = select_pretrained(state_dict, self.state_dict(), keep_stem=keep_stem,
                                          stem_note=f"stem rebuilt for {self.in_chans} input channels",
                                          context=source)
        self.load_state_dict(loaded, strict=False)
        params = dict(self.named_parameters())
        n_total = sum(p.numel() for p in params.values())
        n_loaded = sum(params[k].numel() for k in loaded if k in params)
        self.loaded_weights = LoadedWeights(source, "VMamba classification checkpoint", len(loaded), n_loaded, n_total,
                                            tuple(notes))
        logger.info("Loaded VMamba weights from %s: %s", source, self.loaded_weights.summary())
        return self.loaded_weights


def _vmamba_init(m: nn.Module) -> None:
    """VMamba ``VSSM._init_weights``: Linear trunc_normal(0.02) and zero bias; LayerNorm weight 1, bias 0."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)   # timm's trunc_normal_ (VMamba) is the same function
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------------------------
# Checkpoint file and filter
# --------------------------------------------------------------------------------------------------------------------
def read_weights(path: str | os.PathLike) -> dict:
    """A VMamba checkpoint file, read with ``torch.load(weights_only=True)`` (no pickled code runs).

    VMamba's training checkpoints (``ckpt_epoch_*.pth``) may also hold the training config as a Python object, which
    such a load refuses; the error then says how to extract the weights once from a file you trust.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VMamba checkpoint not found: {path} (model.pretrained_path; VMamba-T is "
                                "vssm1_tiny_0230s_ckpt_epoch_264.pth from MzeroMiko/VMamba)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        objects = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or str(e).splitlines()[0]
        raise RuntimeError(
            f"{path} holds Python objects besides the weights ({objects}), which are not loaded (loading them runs "
            f"code from the file). If you trust the file, extract the weights once:\n  python -c \"import torch; "
            f"torch.save({{'model': torch.load('{path}', map_location='cpu', weights_only=False)['model']}}, "
            f"'vmamba_weights.pth')\"\nand set model.pretrained_path=vmamba_weights.pth") from e


def select_pretrained(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], *,
                      keep_stem: bool, stem_note: str = "stem rebuilt", context: str = "checkpoint",
                      ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The entries of a VMamba classification checkpoint that load into an encoder with keys ``expected``.

    Skipped, each group named in the returned notes: ``classifier.*`` (the ImageNet classifier), ``patch_embed.*``
    unless ``keep_stem``, and the output norms ``outnorm{i}`` when the file has none (they keep their values).
    Any other missing or unexpected key and any shape mismatch raises ``RuntimeError`` listing all of them.
    Works with ``expected`` on the meta device. Returns ``(entries to load, notes)``.
    """
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    skipped = {"classifier": [k for k in state_dict if k.startswith(CLASSIFIER_PREFIX)]}
    skipped["stem"] = [] if keep_stem else [k for k in state_dict if k.startswith(STEM_PREFIX)]
    given = {k: v for k, v in state_dict.items() if k not in skipped["classifier"] + skipped["stem"]}
    kept_out_norms = [k for k in expected if k.startswith(OUT_NORM) and k not in given]
    missing = [k for k in expected if k not in given and k not in kept_out_norms
               and (keep_stem or not k.startswith(STEM_PREFIX))]
    unexpected = [k for k in given if k not in expected]
    mismatched = [f"{k}: expected {tuple(expected[k].shape)}, got {tuple(v.shape)}"
                  for k, v in given.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    raise_key_mismatches(f"VMamba checkpoint {context} does not match the encoder", missing, unexpected, mismatched)
    notes = [f"skipped classifier.* ({len(skipped['classifier'])} keys, the ImageNet classifier)"]
    if not keep_stem:
        notes.append(f"skipped patch_embed.* ({len(skipped['stem'])} keys, {stem_note})")
    if kept_out_norms:
        notes.append(f"not in the file: {', '.join(sorted({k.split('.')[0] for k in kept_out_norms}))} "
                     f"({len(kept_out_norms)} keys, keep their values)")
    return given, notes

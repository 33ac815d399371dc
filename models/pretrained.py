"""The published ImageNet weights the recipes' encoders start from (``pretrained_ckpts/README.md``): the catalogue of
files, the strict check of a file against the full-size encoder, and the rule that keeps a training run from starting
on random encoder weights by accident.

The rule (``model.pretrained``, ``model.pretrained_path``):

* ``pretrained_path: FILE``: the encoder loads FILE strictly (``pretrained`` must then be true).
* ``pretrained: true`` without a file: the encoder starts from its published weights. timm downloads them for Swin
  and ViT-L, or finds them in its cache; timm has no VMamba, so VMamba-T needs the file. When they cannot be had,
  training stops before the model is built, naming ``python pretrained_ckpts/fetch.py NAME``.
* ``pretrained: false``: declined on purpose; random encoder weights, with a warning when training starts.
* An encoder without published weights (``backbone: custom`` or ``vit_custom``; MambaSeg with ``model.mambaseg`` dims
  or depths other than VMamba-T's) starts from random weights whatever ``pretrained`` says: these are test and
  ablation sizes, and there is nothing to load.

A file is checked by the encoder's own loader (:meth:`SwinEncoder.load_checkpoint`,
:meth:`ViTEncoder.load_state_dict_resized`, :meth:`VMambaEncoder.load_checkpoint`) on the full-size encoder built on
the meta device: every key and shape is compared, nothing is allocated or copied.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import warnings
from dataclasses import dataclass
from typing import Mapping

import timm
import torch
import torch.nn as nn
from timm.models import load_state_dict as timm_load_state_dict

from .encoders import SWIN_VARIANTS, SwinEncoder, detect_checkpoint_layout, select_backbone
from .vit import VIT_VARIANTS, ViTEncoder
from .vmamba import VMAMBA_T, VMambaEncoder, read_weights
from .weights import LoadedWeights, PretrainedWeightsError, sha256_file, timm_weights_available

__all__ = ["PublishedWeights", "CATALOGUE", "VMAMBA_T_NAME", "WeightsFileError", "encoder_name", "uses_timm_download",
           "missing_weights_message", "require_encoder_weights", "meta_encoder", "read_state_dict", "identify",
           "check_weights_file", "log_encoder_weights"]

logger = logging.getLogger(__name__)

VMAMBA_T_NAME = "vmamba_t"
FETCH = "python pretrained_ckpts/fetch.py"
FAMILIES = {"swin": "Swin", "vit": "ViT", "vmamba": "VMamba"}


@dataclass(frozen=True)
class PublishedWeights:
    """One published encoder weight file that recipes start from.

    Attributes:
        name: the encoder's name here (``fetch.py NAME``; ``model.backbone`` for Swin and ViT).
        file: the file name it is stored under.
        url: where it is published.
        publisher: who publishes it, and what it is.
        recipes: the configs whose encoder loads it.
        timm_name: timm's model whose default weights are the same (its download is the alternative), or None.
        size: the file's size in bytes, once known.
        sha256: the file's sha256, once known.
        use: how the recipes load it, beyond a plain strict load.
    """

    name: str
    file: str
    url: str
    publisher: str
    recipes: str
    timm_name: str | None
    size: int | None = None
    sha256: str | None = None
    use: str = ""


CATALOGUE: dict[str, PublishedWeights] = {w.name: w for w in (
    PublishedWeights(
        "swin_large", "swin_large_patch4_window12_384_22kto1k.pth",
        "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
        "swin_large_patch4_window12_384_22kto1k.pth",
        "Microsoft's Swin Transformer release v1.0.0: Swin-L, ImageNet-22k pre-trained, fine-tuned on ImageNet-1k at "
        "384 (the file MTMamba's pretrained_ckpts/run.sh downloads)",
        "MTMamba, MTMamba++, BIM-repro, PAME-Swin (configs/{mtmamba,mtmamba_plus,bim,pame_swin}_*.yml)",
        SWIN_VARIANTS["swin_large"],
        use="head.* and the final norm.* are skipped; the output norms norm0..norm3 start at weight 1, bias 0"),
    PublishedWeights(
        "vit_large", "vit_large_patch16_384.augreg_in21k_ft_in1k.safetensors",
        "https://huggingface.co/timm/vit_large_patch16_384.augreg_in21k_ft_in1k/resolve/main/model.safetensors",
        "timm on the Hugging Face Hub: Google's AugReg ViT-L/16, ImageNet-21k pre-trained, fine-tuned on ImageNet-1k "
        "at 384, converted by timm from L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-"
        "steps_20k-lr_0.01-res_384.npz, the file PAMM's code loads",
        "PAME in PAMM's ViT-L layout (configs/pame_vit_*.yml)", VIT_VARIANTS["vit_large"],
        use="cls_token and head.* are skipped; the 24x24 position grid is resized bicubic to the training grid"),
    PublishedWeights(
        VMAMBA_T_NAME, "vssm1_tiny_0230s_ckpt_epoch_264.pth",
        "https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth",
        "VMamba's classification release: VMamba-T [s1l8], ImageNet-1k (82.6 % top-1)",
        "MambaSeg (configs/mambaseg_*.yml): both encoders", None,
        use="classifier.* is skipped; the event encoder (10 channels) and the grey DDD17 image encoder rebuild "
            "patch_embed.* (8 keys), so only the RGB image encoder (DSEC) keeps the pretrained stem; the output norms "
            "outnorm0..3 start at weight 1, bias 0"),
)}


class WeightsFileError(RuntimeError):
    """A weight file does not fit its encoder; the message names the keys, or the architecture the file holds."""


# ----------------------------------------------------------------------------------------------------------------
# Which encoder a config builds, and whether training may start
# ----------------------------------------------------------------------------------------------------------------
def encoder_name(cfg) -> str | None:
    """The published encoder a config builds (a key of ``SWIN_VARIANTS`` or ``VIT_VARIANTS``, or ``"vmamba_t"``), or
    None when its architecture has no published weights (``custom``, ``vit_custom``, MambaSeg off VMamba-T sizes)."""
    m = cfg.model
    if m.name == "mambaseg":       # MambaSeg's encoders are VMamba; model.backbone does not apply
        sizes = (list(m.mambaseg.dims), list(m.mambaseg.depths))
        return VMAMBA_T_NAME if sizes == (list(VMAMBA_T["dims"]), list(VMAMBA_T["depths"])) else None
    return m.backbone if m.backbone in SWIN_VARIANTS or m.backbone in VIT_VARIANTS else None


def _timm_name(name: str | None) -> str | None:
    """timm's model with the published weights of encoder ``name``, or None (no such model in timm)."""
    if name in CATALOGUE:
        return CATALOGUE[name].timm_name
    return SWIN_VARIANTS.get(name) or VIT_VARIANTS.get(name)


def uses_timm_download(cfg) -> bool:
    """Whether the builder loads the encoder's weights through timm (``pretrained`` true, no file, a timm model)."""
    m = cfg.model
    return bool(m.pretrained) and not m.pretrained_path and _timm_name(encoder_name(cfg)) is not None


def _fetch_advice(name: str | None) -> str:
    if name in CATALOGUE:
        w = CATALOGUE[name]
        return (f"get {w.file} with `{FETCH} {name}` (it downloads the file, or checks a copy you have with --from "
                f"FILE) and set model.pretrained_path=pretrained_ckpts/{w.file}")
    return f"set model.pretrained_path to a weight file of the encoder (`{FETCH} --list` names the recipes' files)"


def missing_weights_message(name: str) -> str:
    """Why encoder ``name`` cannot start from its published weights (no file given), and how to get them."""
    timm_name = _timm_name(name)
    why = ("timm has no VMamba weights" if timm_name is None else
           f"timm cannot load {timm_name!r}: the weights are not in its cache and the Hugging Face Hub cannot be "
           f"reached (offline?)")
    return (f"model.pretrained=true: the {name} encoder starts from its ImageNet weights, but model.pretrained_path "
            f"is null and {why}. To train as the papers do, {_fetch_advice(name)}; to train from random encoder "
            f"weights on purpose, or to resume a run (last.pth holds the weights), set model.pretrained=false")


def require_encoder_weights(cfg) -> None:
    """Stop a training run whose encoder would start from random weights by accident; cheap, before the model is
    built. Raises :class:`PretrainedWeightsError` naming ``pretrained_ckpts/fetch.py``; warns when declined."""
    m = cfg.model
    name = encoder_name(cfg)
    if m.pretrained_path:
        if not os.path.isfile(m.pretrained_path):
            raise PretrainedWeightsError(f"model.pretrained_path={m.pretrained_path!r}: no such file; "
                                         f"{_fetch_advice(name)}")
    elif name is None:
        arch = (f"VMamba dims {list(m.mambaseg.dims)}, depths {list(m.mambaseg.depths)}" if m.name == "mambaseg"
                else f"model.backbone={m.backbone}")
        logger.info("the encoder (%s) has no published weights: it starts from random weights", arch)
    elif not m.pretrained:
        logger.warning("model.pretrained=false: the %s encoder starts from random weights, not from its ImageNet "
                       "weights as the papers' recipes do (fine when resuming: last.pth holds the weights)", name)
    elif _timm_name(name) is None or not timm_weights_available(_timm_name(name)):
        raise PretrainedWeightsError(missing_weights_message(name))


# ----------------------------------------------------------------------------------------------------------------
# Checking a weight file against the full-size encoder
# ----------------------------------------------------------------------------------------------------------------
def _family(name: str) -> str:
    if name == VMAMBA_T_NAME:
        return "vmamba"
    if name in VIT_VARIANTS:
        return "vit"
    if name in SWIN_VARIANTS:
        return "swin"
    raise ValueError(f"unknown encoder {name!r}; valid: {[*SWIN_VARIANTS, *VIT_VARIANTS, VMAMBA_T_NAME]}")


@functools.lru_cache(maxsize=None)
def meta_encoder(name: str) -> nn.Module:
    """The full-size encoder ``name`` on the meta device (nothing allocated), at the input size of its weights; built
    once per process (loads into it copy nothing, so it stays the bare architecture)."""
    family = _family(name)
    with torch.device("meta"):
        if family == "vmamba":
            return VMambaEncoder(3)                                    # VMamba-T with the file's RGB stem
        size = tuple(timm.models.get_pretrained_cfg(_timm_name(name)).input_size[-2:])
        return ViTEncoder(name, img_size=size) if family == "vit" else SwinEncoder(name, img_size=size)


def read_state_dict(path: str | os.PathLike, name: str) -> dict[str, torch.Tensor]:
    """The tensors of a weight file for encoder ``name``, unwrapped (``model``/``state_dict``, ``module.``,
    ``backbone.``); read without running pickled code (VMamba's reader explains a file that holds some)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file not found: {path}")
    raw = read_weights(path) if _family(name) == "vmamba" else timm_load_state_dict(path, use_ema=False)
    return select_backbone(raw)


_STAGE_BLOCK = re.compile(r"^(?:layers|stages)\.(\d+)\.blocks\.(\d+)\.")


def _depths(keys) -> list[int]:
    blocks: dict[int, set[int]] = {}
    for k in keys:
        if match := _STAGE_BLOCK.match(k):
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
    return [len(blocks[i]) for i in sorted(blocks)]


def identify(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """``(family, description)`` of an unwrapped encoder state dict: family ``"swin"``, ``"vit"``, ``"vmamba"`` or
    ``"unknown"``; the description names the layout and the sizes read from the shapes."""
    keys = list(state_dict)
    if any(".op.A_logs" in k for k in keys):
        width = state_dict["patch_embed.5.weight"].shape[0] if "patch_embed.5.weight" in state_dict else "?"
        return "vmamba", f"VMamba (dim {width}, depths {_depths(keys)})"
    if "pos_embed" in state_dict and any(k.startswith("blocks.") for k in keys):
        depth = len({k.split(".")[1] for k in keys if k.startswith("blocks.")})
        return "vit", f"ViT (width {state_dict['pos_embed'].shape[-1]}, depth {depth})"
    try:
        layout = detect_checkpoint_layout(state_dict)
    except ValueError:
        return "unknown", f"unrecognised state dict (first keys: {', '.join(keys[:4])})"
    embed = next((v.shape[0] for k, v in state_dict.items()
                  if k in ("patch_embed.proj.weight", "patch_embed.projection.weight")), "?")
    return "swin", f"Swin in the {dict(original='Microsoft', timm='timm', mmseg='mmseg')[layout]} layout (embed dim " \
                   f"{embed}, depths {_depths(keys)})"


def check_weights_file(name: str, path: str | os.PathLike) -> tuple[LoadedWeights, str]:
    """Check a weight file strictly against the full-size encoder ``name`` with the encoder's own loader, on the meta
    device. Returns ``(what the encoder would load, the file's description)``; raises :class:`WeightsFileError`
    naming the architecture the file holds when it is another one, or every missing / unexpected / mis-shaped key."""
    path = os.fspath(path)
    family = _family(name)
    state_dict = read_state_dict(path, name)
    found, description = identify(state_dict)
    if found != family:
        raise WeightsFileError(f"{path} holds {'a ' + description if found != 'unknown' else 'an ' + description}, "
                               f"not the {FAMILIES[family]} weights that {name} needs"
                               + (f" ({CATALOGUE[name].file})" if name in CATALOGUE else ""))
    encoder = meta_encoder(name)
    with warnings.catch_warnings():   # loading into meta parameters copies nothing, as intended for a check
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        try:
            if family == "vit":
                loaded = encoder.load_state_dict_resized(state_dict, path)
            elif family == "vmamba":
                loaded = encoder.load_checkpoint(state_dict, keep_stem=True, source=path)
            else:
                loaded = encoder.load_checkpoint(state_dict, source=path)
        except (RuntimeError, ValueError) as e:
            raise WeightsFileError(f"{path} ({description}) does not fit the full-size {name} encoder:\n{e}") from e
    return loaded, description


# ----------------------------------------------------------------------------------------------------------------
# The training log
# ----------------------------------------------------------------------------------------------------------------
ENCODER_TYPES = (SwinEncoder, ViTEncoder, VMambaEncoder)


def log_encoder_weights(model: nn.Module) -> None:
    """Log, for every encoder in ``model``, the share of its parameters loaded from pretrained weights and the file
    they came from with its sha256 prefix (12 hex digits)."""
    digests: dict[str, str] = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, ENCODER_TYPES):
            continue
        loaded = module.loaded_weights
        if loaded is None:
            n = sum(p.numel() for p in module.parameters())
            logger.info("encoder weights (%s): random init, 0 of %d parameters (0.000 %%) from pretrained weights",
                        module_name, n)
            continue
        if os.path.isfile(loaded.source) and loaded.source not in digests:
            digests[loaded.source] = sha256_file(loaded.source)[:12]
        origin = f"sha256 {digests[loaded.source]}" if loaded.source in digests else "not a file"
        logger.info("encoder weights (%s): %s (%s): %s", module_name, loaded.source, origin, loaded.summary())

"""Where encoder weights come from: timm's download from the Hugging Face Hub with a quick offline check, and the
record of what an encoder loaded.

timm's download retries for about a minute before it fails on a machine without internet, and its error does not
say what to do. :func:`create_timm_model` first looks for the weights in the local Hub cache, then checks that the
Hub answers within seconds, and otherwise fails at once with the two ways to bring the weights: a local file through
``model.pretrained_path`` (``pretrained_ckpts/fetch.py`` gets and checks it), or the Hub cache filled on a machine
with internet.

Every encoder records what its pretrained load took as a :class:`LoadedWeights` (``encoder.loaded_weights``), which
training logs with the file's sha256 and ``pretrained_ckpts/fetch.py`` prints.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

import timm
import torch.nn as nn

__all__ = ["PretrainedWeightsError", "LoadedWeights", "create_timm_model", "hub_reachable", "timm_weights_available",
           "timm_weights_file", "sha256_file"]

logger = logging.getLogger(__name__)

HUB_TIMEOUT_S = 5.0
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class PretrainedWeightsError(RuntimeError):
    """Pretrained encoder weights cannot be obtained; the message says how to provide them."""


@dataclass(frozen=True)
class LoadedWeights:
    """What an encoder took from a pretrained checkpoint.

    Attributes:
        source: the file read (a path), or a description when the weights came as a dict.
        layout: the checkpoint layout that was recognised, e.g. ``"Swin, Microsoft layout"``.
        n_keys: encoder state entries taken from the checkpoint: every one the encoder needs from it.
        n_loaded: encoder parameters (elements) taken from the checkpoint.
        n_total: encoder parameters (elements).
        notes: what was skipped (classifier, rebuilt stem, ...) or kept at init, one group per note.
    """

    source: str
    layout: str
    n_keys: int
    n_loaded: int
    n_total: int
    notes: tuple[str, ...] = ()

    @property
    def fraction(self) -> float:
        """The loaded share of the encoder's parameters, in [0, 1]."""
        return self.n_loaded / self.n_total if self.n_total else 0.0

    def summary(self) -> str:
        """One line: parameters loaded, fraction, layout and notes (the source is named by the caller)."""
        notes = f"; {'; '.join(self.notes)}" if self.notes else ""
        return (f"{self.n_loaded} of {self.n_total} parameters ({100.0 * self.fraction:.3f} %), {self.n_keys} "
                f"keys, {self.layout}{notes}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in ``chunk``-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the Hugging Face Hub (``$HF_ENDPOINT`` or huggingface.co) accepts a TCP connection in ``timeout`` s."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def timm_weights_file(model_name: str) -> str | None:
    """The local Hub-cache file of timm's default weights for ``model_name``, or None when not cached."""
    from huggingface_hub import try_to_load_from_cache

    hub_id = getattr(timm.models.get_pretrained_cfg(model_name), "hf_hub_id", None)
    if not hub_id:
        return None
    found = [try_to_load_from_cache(hub_id, f) for f in _WEIGHT_FILES]
    return next((f for f in found if isinstance(f, str)), None)


def _cached(model_name: str) -> bool:
    return timm_weights_file(model_name) is not None


def timm_weights_available(model_name: str) -> bool:
    """Whether timm can load its weights for ``model_name`` now: from the local cache, or the Hub answers."""
    return _cached(model_name) or hub_reachable()


def create_timm_model(model_name: str, pretrained: bool, **kwargs) -> nn.Module:
    """``timm.create_model(model_name, pretrained=pretrained, **kwargs)``; with ``pretrained`` and no way to get
    the weights, a :class:`PretrainedWeightsError` within seconds that says to use ``model.pretrained_path``."""
    if not pretrained:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    advice = (f"download the weights of timm's {model_name!r} on a machine with internet and set "
              f"model.pretrained_path=FILE (python pretrained_ckpts/fetch.py --list names the files the recipes use), "
              f"or set model.pretrained=false to train from random encoder weights")
    if not timm_weights_available(model_name):
        raise PretrainedWeightsError(f"model.pretrained=true needs the ImageNet weights of {model_name!r}, but the "
                                     f"Hugging Face Hub cannot be reached (offline?) and they are not in the local "
                                     f"cache: {advice}")
    try:
        return timm.create_model(model_name, pretrained=True, **kwargs)
    except (OSError, RuntimeError) as e:
        raise PretrainedWeightsError(f"cannot load the ImageNet weights of {model_name!r} "
                                     f"({' '.join(str(e).split())[:200]}): {advice}") from e

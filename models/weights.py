"""Where encoder weights come from: timm's download from the Hugging Face Hub, with a quick offline check.

timm's download retries for about a minute before it fails on a machine without internet, and its error does not
say what to do. :func:`create_timm_model` first looks for the weights in the local Hub cache, then checks that the
Hub answers within seconds, and otherwise fails at once with the two ways to bring the weights: a local file through
``model.pretrained_path``, or the Hub cache filled on a machine with internet.
"""
from __future__ import annotations

import logging
import os
import socket
from urllib.parse import urlparse

import timm
import torch.nn as nn

__all__ = ["PretrainedWeightsError", "create_timm_model", "hub_reachable"]

logger = logging.getLogger(__name__)

HUB_TIMEOUT_S = 5.0
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class PretrainedWeightsError(RuntimeError):
    """Pretrained encoder weights cannot be obtained; the message says how to provide them."""


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the Hugging Face Hub (``$HF_ENDPOINT`` or huggingface.co) accepts a TCP connection in ``timeout`` s."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached(model_name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    hub_id = getattr(timm.models.get_pretrained_cfg(model_name), "hf_hub_id", None)
    return bool(hub_id) and any(isinstance(try_to_load_from_cache(hub_id, f), str) for f in _WEIGHT_FILES)


def create_timm_model(model_name: str, pretrained: bool, **kwargs) -> nn.Module:
    """``timm.create_model(model_name, pretrained=pretrained, **kwargs)``; with ``pretrained`` and no way to get
    the weights, a :class:`PretrainedWeightsError` within seconds that says to use ``model.pretrained_path``."""
    if not pretrained:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    advice = (f"download the weights of timm's {model_name!r} on a machine with internet and set "
              f"model.pretrained_path=FILE (see pretrained_ckpts/), or set model.pretrained=false to train from "
              f"random encoder weights")
    if not _cached(model_name) and not hub_reachable():
        raise PretrainedWeightsError(f"model.pretrained=true needs the ImageNet weights of {model_name!r}, but the "
                                     f"Hugging Face Hub cannot be reached (offline?) and they are not in the local "
                                     f"cache: {advice}")
    try:
        return timm.create_model(model_name, pretrained=True, **kwargs)
    except (OSError, RuntimeError) as e:
        raise PretrainedWeightsError(f"cannot load the ImageNet weights of {model_name!r} "
                                     f"({' '.join(str(e).split())[:200]}): {advice}") from e

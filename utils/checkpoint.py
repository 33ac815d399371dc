"""Checkpoint files: atomic saves, checked loads, RNG state (ARCHITECTURE.md §6).

A training checkpoint is a plain dict: model / optimizer / scheduler / AMP-scaler state dicts, the iteration, the
best score, :func:`rng_state` and the config as plain containers (``utils.config.config_to_dict``). Everything in it
is a tensor, a number, a string, ``None`` or a dict/list/tuple of those, so :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)``: loading never runs pickled code.

* :func:`save_checkpoint` writes to a temp file in the target directory, fsyncs it and ``os.replace``-s it over the
  target, so an interrupted save never destroys the last good checkpoint; a failed write names the path.
* :func:`load_model_state` compares keys and shapes *before* touching the model and lists every mismatch key by key.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from utils.fileio import atomic_write

__all__ = [
    "CheckpointError",
    "LoadResult",
    "raise_key_mismatches",
    "check_keys_and_shapes",
    "ddp_state_dict",
    "is_ddp_state_dict",
    "save_checkpoint",
    "load_checkpoint",
    "load_model_state",
    "unwrap_model",
    "rng_state",
    "set_rng_state",
    "preserved_rng",
]

logger = logging.getLogger(__name__)

DDP_PREFIX = "module."
MAX_LISTED_KEYS = 20  # lines of a mismatch report before "... and N more"


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read, or its contents do not fit the model."""


# --------------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (:func:`utils.fileio.atomic_write`); parent directories are created.

    An interrupted or failed save leaves a previous file at ``path`` as it was; a failure raises
    :class:`utils.fileio.WriteError` naming the path (and the free space when the disk may be full).
    """
    atomic_write(path, lambda f: torch.save(state, f))
    logger.debug("saved checkpoint %s", path)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool = True) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (or any ``torch.save`` file holding a dict).

    ``weights_only=True`` (the default) refuses files that need arbitrary pickled objects; pass ``False`` only for a
    file you trust (it lets the file run code while loading). Raises :class:`CheckpointError` naming ``path`` when the
    file is missing, unreadable, truncated/corrupt, or not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (check the path, e.g. --trained_model or out_dir)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as e:
        # torch wraps the unpickler's own error; its first line says what actually failed
        inner = e.__context__ if isinstance(e.__context__, pickle.UnpicklingError) else e
        if weights_only and "Unsupported global" in str(e):
            raise CheckpointError(
                f"checkpoint {path} holds Python objects that weights_only loading refuses ({_first_line(inner)}). "
                "If you trust this file, load it with weights_only=False.") from e
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {_first_line(inner)}") from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path} (corrupt, truncated or not a torch file): "
                              f"{_first_line(e)}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def raise_key_mismatches(context: str, missing: Sequence[str], unexpected: Sequence[str], mismatched: Sequence[str],
                         unexpected_as: str = "unexpected") -> None:
    """Raise :class:`CheckpointError` listing every missing, unexpected (``unexpected_as``, e.g. "unmapped") and
    mis-shaped key, one per line under a count line that starts with ``context``; return when all three are empty.
    ``mismatched`` entries are ready-made descriptions ("key: expected (..), got (..)")."""
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{context}: {len(missing)} missing, {len(unexpected)} {unexpected_as}, {len(mismatched)} mismatched"]
    lines += [f"  missing: {k}" for k in missing]
    lines += [f"  {unexpected_as}: {k}" for k in unexpected]
    lines += [f"  mismatch: {m}" for m in mismatched]
    raise CheckpointError("\n".join(lines))


def check_keys_and_shapes(given: Mapping[str, Any], expected: Mapping[str, Any], context: str,
                          unexpected_as: str = "unexpected") -> None:
    """``given`` must hold exactly ``expected``'s keys with the same shapes; otherwise
    :func:`raise_key_mismatches` lists every difference."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [f"{k}: expected {_fmt(_shape(expected[k]))}, got {_fmt(_shape(v))}" for k, v in given.items()
                  if k in expected and _shape(v) != _shape(expected[k])]
    raise_key_mismatches(context, missing, unexpected, mismatched, unexpected_as)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------------------------------------------------
# Model state
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What :func:`load_model_state` could not load (all empty after a strict load)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, expected, got)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` wrappers (the model itself otherwise)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _nested(checkpoint: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    inner = checkpoint.get(key)
    return inner if isinstance(inner, Mapping) else None


def is_ddp_state_dict(checkpoint: Mapping[str, Any], key: str = "model") -> bool:
    """Whether ``checkpoint[key]`` is a non-empty state dict saved from a DDP model (every key ``module.*``)."""
    sd = _nested(checkpoint, key)
    return bool(sd) and all(k.startswith(DDP_PREFIX) for k in sd)


def ddp_state_dict(checkpoint: Mapping[str, Any], what: str, key: str = "model") -> dict[str, Any]:
    """The state dict of a file saved from a DDP model (``checkpoint[key]``, or ``checkpoint`` itself) without the
    ``module.`` prefix; keys that lack it are a :class:`CheckpointError` saying it is not ``what``."""
    sd = _nested(checkpoint, key) or checkpoint
    bad = [k for k in sd if not k.startswith(DDP_PREFIX)]
    if bad:
        raise CheckpointError(f"not {what}: {len(bad)} keys lack the DDP prefix {DDP_PREFIX!r}, e.g. {bad[:3]}")
    return {k.removeprefix(DDP_PREFIX): v for k, v in sd.items()}


def _strip_ddp_prefix(state_dict: Mapping[str, Any], model_keys: set[str]) -> dict[str, Any]:
    keys = list(state_dict)
    if keys and all(k.startswith(DDP_PREFIX) for k in keys) \
            and not all(k.startswith(DDP_PREFIX) for k in model_keys):
        return {k[len(DDP_PREFIX):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _shape(v: Any) -> tuple | None:
    shape = getattr(v, "shape", None)
    return tuple(shape) if shape is not None else None


def _fmt(shape: tuple | None) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")" if shape is not None else "(not a tensor)"


def _report(result: LoadResult, expected: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    lines = [f"{k}: expected {_fmt(a)} got {_fmt(b)}" for k, a, b in result.mismatched]
    lines += [f"{k}: missing from checkpoint (expected {_fmt(_shape(expected[k]))})" for k in result.missing]
    lines += [f"{k}: unexpected, not in model (got {_fmt(_shape(given[k]))})" for k in result.unexpected]
    if len(lines) > MAX_LISTED_KEYS:
        rest = len(lines) - MAX_LISTED_KEYS
        lines = lines[:MAX_LISTED_KEYS] + [f"... and {rest} more"]
    return lines


def load_model_state(model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True) -> LoadResult:
    """Load ``state_dict`` into ``model`` (DDP/DataParallel wrappers are unwrapped).

    A leading ``module.`` on every key (a state dict saved from a DDP-wrapped model) is stripped. Keys and shapes are
    compared before anything is loaded. With ``strict=True`` any missing key, unexpected key or shape mismatch raises
    :class:`CheckpointError` listing them key by key and the model is left untouched. With ``strict=False`` the
    matching keys are loaded, mismatched shapes are skipped, and the problems are logged and returned.
    """
    model = unwrap_model(model)
    expected = model.state_dict()
    given = _strip_ddp_prefix(state_dict, set(expected))

    result = LoadResult(
        missing=[k for k in expected if k not in given],
        unexpected=[k for k in given if k not in expected],
        mismatched=[(k, _shape(v), _shape(given[k])) for k, v in expected.items()
                    if k in given and _shape(v) != _shape(given[k])],
    )
    if result:
        lines = _report(result, expected, given)
        summary = (f"checkpoint does not match {type(model).__name__}: {len(result.missing)} missing, "
                   f"{len(result.unexpected)} unexpected, {len(result.mismatched)} shape mismatches")
        if strict:
            raise CheckpointError(
                summary + "\n  " + "\n  ".join(lines) + "\nCheck that the config (backbone, tasks, dataset) matches "
                "the one the checkpoint was trained with, or load with strict=False to skip these keys.")
        logger.warning("%s (loading the rest)\n  %s", summary, "\n  ".join(lines))

    skip = {k for k, _, _ in result.mismatched} | set(result.unexpected)
    model.load_state_dict({k: v for k, v in given.items() if k not in skip}, strict=strict)
    return result


# --------------------------------------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------------------------------------


def rng_state() -> dict:
    """States of Python ``random``, NumPy's global generator, torch CPU and every CUDA device (if available).

    Numbers and tensors only, so the dict survives ``torch.load(weights_only=True)``.
    """
    version, internal, gauss_next = random.getstate()
    np_key, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    state = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"key": str(np_key), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned. A CUDA state is applied to as many devices as both sides have."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state((npy["key"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if len(cuda) != n:
            logger.warning("checkpoint has CUDA RNG states for %d devices, this machine has %d; restoring %d",
                           len(cuda), n, min(len(cuda), n))
        for i, s in enumerate(cuda[:n]):
            torch.cuda.set_rng_state(s.cpu(), device=i)
    elif cuda:
        logger.warning("checkpoint has CUDA RNG states but CUDA is not available; they are ignored")


@contextlib.contextmanager
def preserved_rng():
    """Run a block without touching the random streams: every generator of :func:`rng_state` is restored after it.

    Side work (validation, logging, prediction images) runs inside it, so the training stream, and with it a run
    resumed from any checkpoint, does not depend on when or whether that work ran.
    """
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)

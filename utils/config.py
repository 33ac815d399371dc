"""Configuration: YAML files with ``_base_`` inheritance, dotted ``--opts`` overrides and validation.

Keys familiar from the official MTMamba/InvPT configs keep their meaning (``version_name``,
``train_db_name``, ``task_dictionary``, ``TRAIN.SCALE``, ...). Loading resolves the task list the way
the official ``parse_task_dictionary`` does, into ``TASKS.NAMES`` (fixed order per dataset) and
``TASKS.NUM_OUTPUT``.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable

import yaml
from easydict import EasyDict

__all__ = ["DATASET_TASKS", "ConfigError", "load_config", "merge", "apply_opts", "config_to_dict"]

# Output channels per task, in the official task order (it fixes the CTM concatenation order).
DATASET_TASKS: dict[str, dict[str, int]] = {
    "NYUD": {"semseg": 40, "depth": 1, "normals": 3, "edge": 1},
    "PASCALContext": {"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1},
}

# model.* keys with a fixed set of values that are not defined by the model code
MODEL_CHOICES: dict[str, tuple] = {
    "stm_blocks": (1, 2, 3),
    "ctm": (True, False),
}


class ConfigError(ValueError):
    """A config key has a value the code cannot use; the message names the key and the valid values."""


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; ``override`` wins. Returns a new dict."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    bases = data.pop("_base_", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = merge(merged, _read((path.parent / base).resolve()))
    return merge(merged, data)


def apply_opts(cfg: dict, opts: Iterable[str]) -> dict:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML (``1e-4``, ``[1, 2]``, ``true``)."""
    cfg = copy.deepcopy(cfg)
    for opt in opts:
        if "=" not in opt:
            raise ConfigError(f"override {opt!r} must look like key.subkey=value")
        key, value = opt.split("=", 1)
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node[leaf] = yaml.safe_load(value)
    return cfg


def _resolve_tasks(cfg: dict) -> None:
    db = cfg.get("train_db_name")
    if db not in DATASET_TASKS:
        raise ConfigError(f"train_db_name={db!r} is not supported; valid: {sorted(DATASET_TASKS)}")
    valid = DATASET_TASKS[db]
    wanted = {k.removeprefix("include_") for k, v in (cfg.get("task_dictionary") or {}).items() if v}
    unknown = sorted(wanted - set(valid))
    if unknown:
        raise ConfigError(f"task_dictionary: {unknown} not available on {db}; valid: {list(valid)}")
    if not wanted:
        raise ConfigError(f"task_dictionary selects no task; valid for {db}: {list(valid)}")
    names = [t for t in valid if t in wanted]
    cfg["TASKS"] = {"NAMES": names, "NUM_OUTPUT": {t: valid[t] for t in names}}


def _validate_model(cfg: dict) -> None:
    model = cfg.get("model")
    if not isinstance(model, dict):
        raise ConfigError("missing section 'model'")
    from models.blocks import CTM_FUSIONS
    from models.encoders import CUSTOM_ARCH, PAD_MODES, SWIN_VARIANTS
    from models.mtmamba import TASK_BLOCKS
    from models.ops.selective_scan import BACKENDS
    from models.ss2d import MIXERS

    choices_by_key = {**MODEL_CHOICES, "block": TASK_BLOCKS, "ctm_fusion": CTM_FUSIONS, "swin_pad_mode": PAD_MODES,
                      "scan_backend": BACKENDS, "backbone": (*SWIN_VARIANTS, CUSTOM_ARCH),
                      "mfe": MIXERS["mixer"], "gate": MIXERS["gate_mixer"]}
    for key, choices in choices_by_key.items():
        if key in model and model[key] not in choices:
            raise ConfigError(f"model.{key}={model[key]!r} is not valid; valid: {list(choices)}")


def load_config(path: str | os.PathLike, opts: Iterable[str] = ()) -> EasyDict:
    """Load a YAML config with its bases, apply ``opts``, resolve tasks and validate."""
    cfg = apply_opts(_read(Path(path).resolve()), opts)
    _resolve_tasks(cfg)
    _validate_model(cfg)
    return EasyDict(cfg)


def config_to_dict(cfg: Any) -> Any:
    """EasyDict -> plain dicts/lists, e.g. for ``yaml.safe_dump``."""
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    return cfg

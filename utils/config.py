"""Configuration: commented defaults, YAML files with ``_base_`` inheritance, dotted ``--opts`` overrides and
validation.

Loading goes ``DEFAULTS`` <- YAML file (with its ``_base_`` files, earlier bases first, the file itself last)
<- ``--opts a.b=value``. Every key the code reads is defined once in :data:`DEFAULTS` with a comment, so an
experiment file holds only what differs. A key that is not in :data:`DEFAULTS` is an error naming the dotted key,
the valid keys of its section and the closest match; keys with a fixed set of values name those values.

Keys familiar from the official MTMamba/InvPT configs keep their meaning (``version_name``,
``train_db_name``, ``task_dictionary``, ``TRAIN.SCALE``, ...). Loading resolves the task list the way
the official ``parse_task_dictionary`` does, into ``TASKS.NAMES`` (fixed order per dataset) and
``TASKS.NUM_OUTPUT``; ``TASKS`` is derived, so a saved config (:func:`save_config`) that contains it loads again.
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Any, Iterable

import yaml
from easydict import EasyDict

__all__ = ["DATASET_TASKS", "DEFAULTS", "ConfigError", "load_config", "merge", "apply_opts", "config_to_dict",
           "save_config", "OPTIMIZERS", "SCHEDULERS", "AMP_MODES", "SAL_MAXF_MODES"]

# Output channels per task, in the official task order (it fixes the CTM concatenation order).
DATASET_TASKS: dict[str, dict[str, int]] = {
    "NYUD": {"semseg": 40, "depth": 1, "normals": 3, "edge": 1},
    "PASCALContext": {"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1},
}
ALL_TASKS: tuple[str, ...] = tuple(dict.fromkeys(t for tasks in DATASET_TASKS.values() for t in tasks))

OPTIMIZERS = ("adamw", "adam")
SCHEDULERS = ("poly",)
AMP_MODES = (None, "bf16", "fp16")
SAL_MAXF_MODES = ("invpt_compat", "atrc")     # the same tuple as evaluation.saliency.SAL_MAXF_MODES

# Every key the code reads, with its default. The dataset bases (configs/_base_/{nyud,pascal}.yml) set the
# dataset keys, configs/_base_/mtmamba.yml restates the model and recipe with the paper's references.
DEFAULTS: dict[str, Any] = {
    # --- run -------------------------------------------------------------------------------------------------
    "version_name": None,            # run name, run dir = out_dir/version_name; default: the config file's stem
    "out_dir": "runs",               # parent folder of all run directories
    "seed": 0,                       # seeds torch/numpy/random and the data workers (rank offset added by the caller)
    # --- data ------------------------------------------------------------------------------------------------
    "db_root": None,                 # folder holding NYUDv2/ and PASCALContext/; null -> $MTL_DATA_ROOT (data/)
    "train_db_name": None,           # NYUD | PASCALContext (set by the dataset base file)
    "val_db_name": None,             # must equal train_db_name; null -> train_db_name
    "task_dictionary": {},           # {include_<task>: bool}; resolved into TASKS.NAMES / TASKS.NUM_OUTPUT
    "parts_cache_dir": None,         # PASCAL human-parts label cache; null -> next to the dataset
    "TRAIN": {
        "SCALE": None,               # [H, W] training crop, also the encoder's img_size (set by the dataset base)
    },
    "TEST": {
        "SCALE": None,               # [H, W] test images are padded to this size, never resized
    },
    "trBatch": 1,                    # training batch per process (GPU)
    "valBatch": 1,                   # evaluation batch per process
    "nworkers": 2,                   # DataLoader workers per process
    # --- optimisation ----------------------------------------------------------------------------------------
    "max_iter": 50000,               # training iterations (the scheduler's horizon)
    "optimizer": "adamw",            # adamw | adam, one param group for every parameter (official recipe)
    "optimizer_kwargs": {            # passed to the optimizer; further keys are allowed
        "lr": 1.0e-4,                # base learning rate
        "weight_decay": 1.0e-5,      # on every parameter, as in the official single param group
        "betas": [0.9, 0.999],       # Adam moments
        "eps": 1.0e-8,               # Adam epsilon
    },
    "scheduler": "poly",             # poly: lr·(1 − it/max_iter)^power, stepped every iteration
    "scheduler_kwargs": {
        "power": 0.9,                # exponent of the poly schedule
    },
    "grad_clip": None,               # max global gradient norm; null = no clipping (official)
    "amp": None,                     # null (fp32, official) | bf16 | fp16 (fp16 uses a GradScaler)
    "loss_kwargs": {
        "loss_scheme": "log",        # sum: Σ w_t·L_t | log: Σ w_t·log(L_t + 1e-8) (official)
        "loss_weights": {t: 1.0 for t in ALL_TASKS},  # {task: w}; weights of tasks not trained are ignored
        "edge_w": 0.95,              # balanced BCE positive weight for edges
    },
    # --- logging, checkpoints, evaluation ----------------------------------------------------------------------
    "log_interval": 20,              # iterations between training log lines / TensorBoard scalars
    "val_interval": 5000,            # iterations between evaluations (and at the end of training)
    "ckpt_interval": 1000,           # iterations between saves of checkpoints/last.pth
    "save_predictions": [],          # tasks whose predictions are written under predictions/ at evaluation
    "eval_boundary": False,          # run the (slow) boundary odsF evaluation on saved edge predictions
    "boundary_mode": "fast",         # fast (hk matcher) | exact (csa, needs pyEdgeEval) | proxy (19 thresholds)
    "sal_maxF_mode": "invpt_compat", # saliency maxF: invpt_compat (InvPT/MTMamba numbers) | atrc
    # --- model (MODELS.md §1, §4) ----------------------------------------------------------------------------
    "model": {
        "name": "mtmamba",               # registered model (models/registry.py)
        "backbone": "swin_large",        # swin_tiny | swin_small | swin_base | swin_large | custom
                                         # | vit_large | vit_custom (pame_vit)
        "backbone_kwargs": None,         # extra encoder arguments (e.g. embed_dim/depths for backbone=custom)
        "pretrained": True,              # ImageNet weights through timm (needs internet) ...
        "pretrained_path": None,         # ... or a local Swin weight file (Microsoft, timm or mmseg names)
        "swin_pad_mode": "timm",         # timm | mmseg (mmseg's pad-then-shift order, for official checkpoints)
        "encoder_drop_path_rate": 0.1,   # encoder stochastic depth (mmseg Swin default)
        "drop_path_rate": 0.2,           # decoder: linspace(rate, 0, ...) over the blocks of the 3 stages
        "stm_blocks": 2,                 # task-specific blocks per task and stage (Table 2: 1 | 2 | 3)
        "block": "mamba",                # task-specific block: mamba (STM) | swin (Table 2's "2xSwin" rows)
        "ctm": True,                     # one shared CTM block per stage
        "ctm_fusion": "adaptive",        # adaptive | task_only (g = 1) | shared_only (g = 0), Table 5
        "mfe": "ss2d",                   # ss2d | wmsa: window attention replaces the SSM part of the MFE (Table 3)
        "gate": "linear",                # linear | wmsa: window attention before every gate Linear (Table 4)
        "wmsa_heads": 6,                 # heads of those window attentions
        "bim": {                         # model.name=bim: BIM-repro switches, every one INFERRED (MODELS.md §2.3)
            "n_msst": 2,                 # MSST blocks per task before the shared BCFR block, per stage (>= 1)
            "ms_scan": "msvmamba",       # msvmamba | split | full: the multi-scale scan of the MSST blocks
            "bcfr_expand": 2,            # 1 | 2: BCFR inner width E·C, each BI-Scan half E·C/2 channels
            "bcfr_modes": "cascade",     # cascade (position-first reads the task-first output) | parallel (summed)
        },
        "pame": {                        # model.name=pame_vit | pame_swin: PAMM's PAME decoder (MODELS.md §3)
            "depth": 1,                  # PAME layers per ViT tap (pame_vit) / per decoder stage (pame_swin)
            "dim": 768,                  # pame_vit decoder width d (768 NYUD, 1024 PASCAL); pame_swin: stage widths
            "n_experts": 15,             # E shared low-rank Parameter Experts per PE layer (B and C)
            "expert_rank": 4,            # rank of every expert and of the task-specific path
            "topk": 9,                   # experts kept per (image, task); the other E - k gates are zeroed
            "pe_kernel": 1,              # odd kernel of the expert/task/general convs; released code 9 (Q3)
            "local_conv": "dw",          # dw: depthwise 3x3 + SiLU before expand | none: released code (Q1)
            "priors": "learnable",       # learnable | frozen: fixed random, released code (Q2) | none (ablation)
            "router_spatial": "gap",     # gap: global average pool | linear: Linear(H*W -> 1), released code (Q4)
            "scan": "hilbert",           # hilbert | z | s: MDHS curve, read in 4 rotations
            "moe_b": True,               # B from the Parameter Experts | false: per-task 1x1 conv
            "moe_c": True,               # C from the Parameter Experts | false: per-task 1x1 conv
            "lb_weight": 5.0e-4,         # weight of the CV² load-balancing loss (NYUD 5e-4, PASCAL 1e-4), Q5
        },
        "d_state": 16,                   # SSM state size N
        "ssm_ratio": 2.0,                # d_inner = ssm_ratio·C
        "dt_rank": "auto",               # "auto" = ceil(C/16), or an int
        "scan_backend": "auto",          # auto | cuda | triton | torch | reference
        "exec": "fast",                  # fast (task-batched, fused scan glue) | reference (official order); same function
        "grad_ckpt": False,              # recompute each decoder stage in the backward pass (less memory, ~1 more fwd)
        "compile": None,                 # null | default | reduce-overhead (CUDA graphs) | max-autotune: torch.compile
                                         # of the decoder stages, applied on the training/inference device
    },
}

# Sections whose keys are not fixed (their own code validates them).
FREE_FORM = {"task_dictionary", "optimizer_kwargs", "loss_kwargs.loss_weights", "model.backbone_kwargs"}
# Keys derived on load; a saved config may contain them, they are recomputed.
DERIVED = ("TASKS",)

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


def _load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys, not {type(data).__name__}")
    return data


def _read(path: Path) -> dict:
    """One YAML file merged over its ``_base_`` files (in list order, each resolved relative to ``path``)."""
    data = _load_yaml(path)
    bases = data.pop("_base_", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = merge(merged, _read((path.parent / base).resolve()))
    return merge(merged, data)


def apply_opts(cfg: dict, opts: Iterable[str]) -> dict:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML (``1e-4``, ``[1, 2]``, ``true``, ``null``);
    a missing or null parent becomes a section."""
    cfg = copy.deepcopy(cfg)
    for opt in opts:
        if "=" not in opt:
            raise ConfigError(f"override {opt!r} must look like key.subkey=value")
        key, value = opt.split("=", 1)
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node[leaf] = _parse_value(value)
    return cfg


_YAML11_FLOAT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def _parse_value(text: str) -> Any:
    """YAML, except that numbers YAML 1.1 reads as strings (``2e-4``, no dot in the mantissa) become floats."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value):
        return float(value)
    return value


def _check_keys(data: dict, defaults: dict = DEFAULTS, prefix: str = "", source: str = "") -> None:
    """Every key of ``data`` must exist in ``defaults`` (free-form sections excepted)."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if dotted in FREE_FORM:
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{dotted} must be a mapping or null, got {value!r}{source}")
            continue
        if key not in defaults:
            section = f"section {prefix[:-1]!r}" if prefix else "the top level"
            close = difflib.get_close_matches(str(key), list(defaults), n=1)
            hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {dotted!r}{source}{hint}; valid keys of {section}: "
                              f"{sorted(defaults)}")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted} must be a section with keys {sorted(defaults[key])}, got {value!r}"
                                  f"{source}")
            _check_keys(value, defaults[key], f"{dotted}.", source)


def _get(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _resolve_tasks(cfg: dict) -> None:
    db = cfg.get("train_db_name")
    if db not in DATASET_TASKS:
        raise ConfigError(f"train_db_name={db!r} is not supported; valid: {sorted(DATASET_TASKS)}")
    if cfg.get("val_db_name") is None:
        cfg["val_db_name"] = db
    if cfg["val_db_name"] != db:
        raise ConfigError(f"val_db_name={cfg['val_db_name']!r} must equal train_db_name={db!r} "
                          f"(the model is evaluated on the dataset it is trained on)")
    valid = DATASET_TASKS[db]
    task_dict = cfg.get("task_dictionary") or {}
    bad = [k for k in task_dict if not str(k).startswith("include_")]
    if bad:
        raise ConfigError(f"task_dictionary keys must look like include_<task>, got {bad}; "
                          f"valid: {['include_' + t for t in valid]}")
    wanted = {k.removeprefix("include_") for k, v in task_dict.items() if v}
    unknown = sorted(wanted - set(valid))
    if unknown:
        raise ConfigError(f"task_dictionary: {unknown} not available on {db}; valid: {list(valid)}")
    if not wanted:
        raise ConfigError(f"task_dictionary selects no task; valid for {db}: {list(valid)}")
    names = [t for t in valid if t in wanted]
    cfg["TASKS"] = {"NAMES": names, "NUM_OUTPUT": {t: valid[t] for t in names}}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _validate_values(cfg: dict) -> None:
    """Types, ranges and choices of the non-model keys; runs after the tasks are resolved."""
    from losses.multitask import LOSS_SCHEMES

    choices = {"optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "amp": AMP_MODES,
               "loss_kwargs.loss_scheme": LOSS_SCHEMES, "sal_maxF_mode": SAL_MAXF_MODES,
               "eval_boundary": (True, False), "model.pretrained": (True, False),
               "boundary_mode": ("fast", "exact", "proxy")}
    for key, valid in choices.items():
        value = _get(cfg, key)
        # `1 in (True, False)` holds in Python, so booleans are compared by type as well
        if value not in valid or type(value) not in {type(c) for c in valid}:
            raise ConfigError(f"{key}={value!r} is not valid; valid: {list(valid)}")
    for key in ("max_iter", "trBatch", "valBatch", "log_interval", "val_interval", "ckpt_interval"):
        if not _is_int(cfg[key]) or cfg[key] <= 0:
            raise ConfigError(f"{key}={cfg[key]!r} must be a positive integer")
    for key in ("nworkers", "seed"):
        if not _is_int(cfg[key]) or cfg[key] < 0:
            raise ConfigError(f"{key}={cfg[key]!r} must be a non-negative integer")
    for key in ("TRAIN.SCALE", "TEST.SCALE"):
        value = _get(cfg, key)
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value)):
            raise ConfigError(f"{key}={value!r} must be [height, width] in pixels (positive integers); "
                              f"the dataset base file sets it")
    if not isinstance(cfg["version_name"], str) or not cfg["version_name"] or "/" in cfg["version_name"]:
        raise ConfigError(f"version_name={cfg['version_name']!r} must be a non-empty name without '/'")
    lr = cfg["optimizer_kwargs"].get("lr")
    if not _is_number(lr) or lr <= 0:
        raise ConfigError(f"optimizer_kwargs.lr={lr!r} must be a positive number")
    if not _is_number(cfg["scheduler_kwargs"]["power"]) or cfg["scheduler_kwargs"]["power"] < 0:
        raise ConfigError(f"scheduler_kwargs.power={cfg['scheduler_kwargs']['power']!r} must be a number >= 0")
    if cfg["grad_clip"] is not None and (not _is_number(cfg["grad_clip"]) or cfg["grad_clip"] <= 0):
        raise ConfigError(f"grad_clip={cfg['grad_clip']!r} must be null (no clipping) or a positive number")
    edge_w = cfg["loss_kwargs"]["edge_w"]
    if not _is_number(edge_w) or not 0 <= edge_w <= 1:
        raise ConfigError(f"loss_kwargs.edge_w={edge_w!r} must be a number in [0, 1]")

    tasks = cfg["TASKS"]["NAMES"]
    weights = cfg["loss_kwargs"]["loss_weights"] or {}
    unknown = sorted(set(weights) - set(ALL_TASKS))
    if unknown:
        raise ConfigError(f"loss_kwargs.loss_weights: unknown task(s) {unknown}; valid: {list(ALL_TASKS)}")
    for t in tasks:
        if not _is_number(weights.get(t)):
            raise ConfigError(f"loss_kwargs.loss_weights.{t}={weights.get(t)!r} must be a number")
    saved = cfg["save_predictions"]
    if not isinstance(saved, list) or any(t not in tasks for t in saved):
        raise ConfigError(f"save_predictions={saved!r} must be a list of trained tasks; valid: {tasks}")


def _validate_model(cfg: dict) -> None:
    model = cfg.get("model")
    if not isinstance(model, dict):
        raise ConfigError("missing section 'model'")
    from models.blocks import CTM_FUSIONS
    from models.encoders import CUSTOM_ARCH, PAD_MODES, SWIN_VARIANTS
    from models.execution import COMPILE_MODES, EXEC_MODES
    from models.mtmamba import TASK_BLOCKS
    from models.ops.selective_scan import BACKENDS
    from models.ss2d import MIXERS
    from models.vit import VIT_ARCHS

    choices_by_key = {**MODEL_CHOICES, "block": TASK_BLOCKS, "ctm_fusion": CTM_FUSIONS, "swin_pad_mode": PAD_MODES,
                      "scan_backend": BACKENDS, "backbone": (*SWIN_VARIANTS, CUSTOM_ARCH, *VIT_ARCHS),
                      "mfe": MIXERS["mixer"], "gate": MIXERS["gate_mixer"], "exec": EXEC_MODES,
                      "compile": COMPILE_MODES, "grad_ckpt": (True, False)}
    for key, choices in choices_by_key.items():
        if key in model and model[key] not in choices:
            raise ConfigError(f"model.{key}={model[key]!r} is not valid; valid: {list(choices)}")
    from models.bim import BCFR_EXPANSIONS, BCFR_MODES, MS_SCANS

    bim = model["bim"]
    for key, choices in (("ms_scan", tuple(MS_SCANS)), ("bcfr_expand", BCFR_EXPANSIONS), ("bcfr_modes", BCFR_MODES)):
        if bim[key] not in choices or type(bim[key]) not in {type(c) for c in choices}:
            raise ConfigError(f"model.bim.{key}={bim[key]!r} is not valid; valid: {list(choices)}")
    if not _is_int(bim["n_msst"]) or bim["n_msst"] < 1:
        raise ConfigError(f"model.bim.n_msst={bim['n_msst']!r} must be a positive integer (MSST blocks per task)")
    from models.pame import PAME_CHOICES, PAME_INT_KEYS

    pame = model["pame"]
    for key, choices in PAME_CHOICES.items():
        if pame[key] not in choices or type(pame[key]) not in {type(c) for c in choices}:
            raise ConfigError(f"model.pame.{key}={pame[key]!r} is not valid; valid: {list(choices)}")
    for key in PAME_INT_KEYS:
        if not _is_int(pame[key]) or pame[key] < 1:
            raise ConfigError(f"model.pame.{key}={pame[key]!r} must be a positive integer")
    if pame["topk"] > pame["n_experts"] or pame["pe_kernel"] % 2 == 0:
        raise ConfigError(f"model.pame.topk={pame['topk']!r} must be <= model.pame.n_experts={pame['n_experts']!r} "
                          f"and model.pame.pe_kernel={pame['pe_kernel']!r} odd")
    if not _is_number(pame["lb_weight"]) or pame["lb_weight"] < 0:
        raise ConfigError(f"model.pame.lb_weight={pame['lb_weight']!r} must be a number >= 0")


def load_config(path: str | os.PathLike, opts: Iterable[str] = ()) -> EasyDict:
    """Load a YAML config: ``DEFAULTS`` <- the file with its ``_base_`` files <- ``opts``; resolve and validate.

    ``version_name`` defaults to the file's stem unless the file itself (not one of its bases) or ``opts`` set it,
    so two experiment files never share a run directory by inheritance.
    """
    path = Path(path).resolve()
    data = _read(path)
    for key in DERIVED:
        data.pop(key, None)
    _check_keys(data, source=f" (in {path.name} or its _base_ files)")
    if "version_name" not in _load_yaml(path):
        data["version_name"] = path.stem
    opts = list(opts)
    cfg = apply_opts(merge(DEFAULTS, data), opts)
    _check_keys(cfg, source=" (from --opts)")
    _resolve_tasks(cfg)
    _validate_values(cfg)
    _validate_model(cfg)
    return EasyDict(cfg)


def config_to_dict(cfg: Any) -> Any:
    """EasyDict -> plain dicts/lists, e.g. for ``yaml.safe_dump``."""
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    return cfg


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as plain YAML (the run's ``config.yaml``); :func:`load_config` reads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False, default_flow_style=None, width=120)
    os.replace(tmp, path)
    return path

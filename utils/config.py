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

import torch
import yaml
from easydict import EasyDict

__all__ = ["DATASET_TASKS", "DEFAULTS", "ConfigError", "load_config", "config_from_dict", "merge", "apply_opts",
           "config_to_dict", "save_config", "config_diff", "AMP_DTYPES", "AMP_MODES", "SAL_MAXF_MODES", "RUNTIME_KEYS"]

# Output channels per task, in the official task order (it fixes the CTM concatenation order).
DATASET_TASKS: dict[str, dict[str, int]] = {
    "NYUD": {"semseg": 40, "depth": 1, "normals": 3, "edge": 1},
    "PASCALContext": {"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1},
    "Cityscapes": {"semseg": 19, "depth": 1},      # depth = disparity (CITYSCAPES.md §1)
    "DDD17": {"semseg": 6},
    "DSEC": {"semseg": 11},
}
ALL_TASKS: tuple[str, ...] = tuple(dict.fromkeys(t for tasks in DATASET_TASKS.values() for t in tasks))

# amp -> autocast dtype (None: fp32)
AMP_DTYPES: dict[str | None, torch.dtype | None] = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
AMP_MODES = tuple(AMP_DTYPES)
SAL_MAXF_MODES = ("invpt_compat", "atrc")     # the same tuple as evaluation.saliency.SAL_MAXF_MODES

# Every key the code reads, with its default. The dataset bases (configs/_base_/<dataset>.yml) set the dataset keys,
# configs/_base_/mtmamba.yml restates the model and recipe with the paper's references.
DEFAULTS: dict[str, Any] = {
    # --- run -------------------------------------------------------------------------------------------------
    "version_name": None,            # run name, run dir = out_dir/version_name; default: the config file's stem
    "out_dir": "runs",               # parent folder of all run directories
    "seed": 0,                       # seeds torch/numpy/random and the data workers (rank offset added by the caller)
    "dist_timeout": 1800,            # seconds a rank waits for the others in a collective before the run fails
    # --- data ------------------------------------------------------------------------------------------------
    "db_root": None,                 # folder holding the dataset folders (data/DATASET_FOLDERS); null -> $MTL_DATA_ROOT
    "train_db_name": None,           # a key of DATASET_TASKS (set by the dataset base file)
    "val_db_name": None,             # must equal train_db_name; null -> train_db_name
    "task_dictionary": {},           # {include_<task>: bool}; resolved into TASKS.NAMES / TASKS.NUM_OUTPUT
    "parts_cache_dir": None,         # PASCAL human-parts label cache; null -> next to the dataset
    "TRAIN": {
        "SCALE": None,               # [H, W] training crop (Cityscapes: resize), also the encoder's img_size
    },
    "TEST": {
        "SCALE": None,               # [H, W] test images are padded to this size (Cityscapes: resized to it)
    },
    "LABEL_SCALE": None,             # [H, W] of the label maps when it differs from the input (Cityscapes 1024x2048);
                                     # predictions are resized to it (official IMAGE_ORI_SIZE); null -> input size
    "cityscapes": {
        "sky_label_id": 10,          # labelId whose disparity is set to 0: 10 (official; rail track) | 23 (the sky)
    },
    "trBatch": 1,                    # training batch per process (GPU)
    "accum_steps": 1,                # micro-batches per optimiser step; effective batch = world x trBatch x this
    "valBatch": 1,                   # evaluation batch per process
    "nworkers": 2,                   # DataLoader workers per process
    "dsec": {                        # DSEC-Semantic (MAMBASEG.md §5)
        "num_classes": 11,           # 11 (official) | 19: label set; sets TASKS.NUM_OUTPUT.semseg on DSEC
        "num_events": 100000,        # events per sample: the last ones before the label timestamp
    },
    # --- optimisation ----------------------------------------------------------------------------------------
    "max_iter": 50000,               # optimiser steps (the scheduler's horizon; intervals count them too)
    "optimizer": "adamw",            # adamw | adam, one param group for every parameter (official recipe)
    "optimizer_kwargs": {            # passed to the optimizer; further keys are allowed
        "lr": 1.0e-4,                # base learning rate
        "weight_decay": 1.0e-5,      # on every parameter, as in the official single param group
        "betas": [0.9, 0.999],       # Adam moments
        "eps": 1.0e-8,               # Adam epsilon
    },
    "scheduler": "poly",             # poly: lr·(1 − it/max_iter)^power, stepped every iteration | constant: lr
    "scheduler_kwargs": {
        "power": 0.9,                # exponent of the poly schedule
    },
    "grad_clip": None,               # max global gradient norm; null = no clipping (official)
    "amp": None,                     # null (fp32, official) | bf16 | fp16 (fp16 uses a GradScaler)
    "loss_kwargs": {
        "loss_scheme": "log",        # sum: Σ w_t·L_t | log: Σ w_t·log(L_t + 1e-8) (official)
        "loss_weights": {t: 1.0 for t in ALL_TASKS},  # {task: w}; weights of tasks not trained are ignored
        "edge_w": 0.95,              # balanced BCE positive weight for edges
        "depth_ignore_invalid": False,  # false: depth L1 ignores only 255 (official) | true: also GT <= 0 (Cityscapes)
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
        "pretrained": True,              # true: the encoder starts from its ImageNet weights, from pretrained_path or
                                         # timm's download (Swin, ViT-L); false: random weights, on purpose.
                                         # Encoders without published weights (custom, vit_custom, MambaSeg off
                                         # VMamba-T sizes) start random either way (models/pretrained.py)
        "pretrained_path": None,         # a local encoder weight file, loaded strictly (pretrained_ckpts/fetch.py)
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
            "a_d": "learnable",          # learnable A_log, D | constant: A = -(1..N), D = 1, untrained (released code)
            "init": "mamba",             # mamba: Mamba's Δ init, PyTorch defaults | official: released ViT init (§3.6)
            "backbone_dim": None,        # pame_vit first_decode input; null = ViT width (released NYUD yml: 768, Q6)
        },
        "mambaseg": {                    # model.name=mambaseg: image + event segmentation (MAMBASEG.md §2-§3)
            "dims": [96, 192, 384, 768], # VMamba stage widths, multiples of 16 (VMamba-T)
            "depths": [2, 2, 8, 2],      # VSS blocks per stage (VMamba-T s1l8)
            "image_channels": 3,         # frame channels: 1 grey (DDD17, new stem) | 3 RGB (DSEC, pretrained stem)
            "event_channels": 10,        # event voxel-grid time bins (the event stem is always new)
            "head_dim": 768,             # SegFormer head embedding width
            "merge": "official",         # TSSM merge: official (CrossMerge_channel, released weights) | flip
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


# Keys that say where and how a run executes, not what it computes: a resumed run may change them freely.
RUNTIME_KEYS = frozenset({
    "out_dir", "db_root", "parts_cache_dir", "nworkers", "dist_timeout", "log_interval", "val_interval",
    "ckpt_interval", "save_predictions", "eval_boundary", "boundary_mode", "model.pretrained", "model.pretrained_path",
    "model.scan_backend", "model.compile",
})


class ConfigError(ValueError):
    """A config key has a value the code cannot use; the message names the key and the valid values."""


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; ``override`` wins. Returns a new dict."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, except that YAML 1.2 numbers such as ``1e-4`` (no dot in the mantissa), which YAML 1.1
    reads as strings, are floats: the same value in a file and in ``--opts``."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                              list("-+0123456789."))


def _yaml(text: str, where: str) -> Any:
    """Parse ``text`` with :class:`_Loader`; a syntax error names ``where`` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        detail = " ".join(str(e).split())
        raise ConfigError(f"{where}: not valid YAML ({detail})") from None


def _load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = _yaml(path.read_text(), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys, not {type(data).__name__}")
    return data


def _read(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """One YAML file merged over its ``_base_`` files (in list order, each resolved relative to ``path``)."""
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain[chain.index(path):], path))
        raise ConfigError(f"_base_ files form a cycle: {cycle} (in {chain[-1]})")
    data = _load_yaml(path)
    bases = data.pop("_base_", [])
    if not isinstance(bases, (str, list)) or not all(isinstance(b, str) for b in ([bases] if isinstance(bases, str)
                                                                                    else bases)):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names, got {bases!r}")
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = merge(merged, _read((path.parent / base).resolve(), (*chain, path)))
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
        node[leaf] = _yaml(value, f"--opts {key}={value}")
    return cfg


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
    for key, value in task_dict.items():
        task = key.removeprefix("include_")
        if task not in valid:
            close = difflib.get_close_matches(task, list(valid), n=1)
            hint = f"; did you mean 'include_{close[0]}'?" if close else ""
            raise ConfigError(f"task_dictionary.{key}: {task!r} is not a task of {db}{hint}; valid: "
                              f"{['include_' + t for t in valid]}")
        if not isinstance(value, bool):
            raise ConfigError(f"task_dictionary.{key}={value!r} must be true or false")
    wanted = {k.removeprefix("include_") for k, v in task_dict.items() if v}
    if not wanted:
        raise ConfigError(f"task_dictionary selects no task; valid for {db}: {list(valid)}")
    names = [t for t in valid if t in wanted]
    cfg["TASKS"] = {"NAMES": names, "NUM_OUTPUT": {t: valid[t] for t in names}}
    if db == "DSEC":  # the 19-class DSEC-Semantic labels are an option (MAMBASEG.md §5)
        cfg["TASKS"]["NUM_OUTPUT"]["semseg"] = cfg["dsec"]["num_classes"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _validate_values(cfg: dict) -> None:
    """Types, ranges and choices of the non-model keys; runs after the tasks are resolved."""
    from data.cityscapes import SKY_LABEL_IDS
    from losses.multitask import LOSS_SCHEMES

    from utils.optim import OPTIMIZERS, SCHEDULERS, check_optimizer_kwargs

    choices = {"optimizer": tuple(OPTIMIZERS), "scheduler": SCHEDULERS, "amp": AMP_MODES,
               "loss_kwargs.loss_scheme": LOSS_SCHEMES, "sal_maxF_mode": SAL_MAXF_MODES,
               "eval_boundary": (True, False), "model.pretrained": (True, False),
               "boundary_mode": ("fast", "exact", "proxy"), "loss_kwargs.depth_ignore_invalid": (True, False),
               "cityscapes.sky_label_id": SKY_LABEL_IDS}
    for key, valid in choices.items():
        value = _get(cfg, key)
        # `1 in (True, False)` holds in Python, so booleans are compared by type as well
        if value not in valid or type(value) not in {type(c) for c in valid}:
            raise ConfigError(f"{key}={value!r} is not valid; valid: {list(valid)}")
    for key in ("max_iter", "trBatch", "accum_steps", "valBatch", "log_interval", "val_interval", "ckpt_interval"):
        if not _is_int(cfg[key]) or cfg[key] <= 0:
            raise ConfigError(f"{key}={cfg[key]!r} must be a positive integer")
    if cfg["dsec"]["num_classes"] not in (11, 19) or not _is_int(cfg["dsec"]["num_classes"]):
        raise ConfigError(f"dsec.num_classes={cfg['dsec']['num_classes']!r} is not valid; valid: [11, 19]")
    if not _is_int(cfg["dsec"]["num_events"]) or cfg["dsec"]["num_events"] <= 0:
        raise ConfigError(f"dsec.num_events={cfg['dsec']['num_events']!r} must be a positive integer")
    for key in ("nworkers", "seed"):
        if not _is_int(cfg[key]) or cfg[key] < 0:
            raise ConfigError(f"{key}={cfg[key]!r} must be a non-negative integer")
    for key in ("TRAIN.SCALE", "TEST.SCALE"):
        value = _get(cfg, key)
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value)):
            raise ConfigError(f"{key}={value!r} must be [height, width] in pixels (positive integers); "
                              f"the dataset base file sets it")
    label_scale = cfg["LABEL_SCALE"]
    if label_scale is not None and not (isinstance(label_scale, (list, tuple)) and len(label_scale) == 2
                                        and all(_is_int(v) and v > 0 for v in label_scale)):
        raise ConfigError(f"LABEL_SCALE={label_scale!r} must be null (labels at the input size) or [height, width] "
                          f"in pixels (positive integers)")
    name = cfg["version_name"]
    if not isinstance(name, str) or name.strip(".") == "" or any(c in name for c in "/\\\0"):
        raise ConfigError(f"version_name={name!r} must be a folder name inside out_dir: not empty, not '.' or '..', "
                          f"without '/' or '\\'")
    if not _is_number(cfg["dist_timeout"]) or cfg["dist_timeout"] <= 0:
        raise ConfigError(f"dist_timeout={cfg['dist_timeout']!r} must be a positive number of seconds")
    if "lr" not in cfg["optimizer_kwargs"]:
        raise ConfigError("optimizer_kwargs.lr is missing; it must be a positive number")
    problem = check_optimizer_kwargs(cfg["optimizer"], cfg["optimizer_kwargs"])
    if problem:
        raise ConfigError(problem)
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
    path = model["pretrained_path"]
    if path is not None and (not isinstance(path, str) or not path):
        raise ConfigError(f"model.pretrained_path={path!r} must be null or the path of an encoder weight file")
    if path is not None and not model["pretrained"]:
        raise ConfigError(f"model.pretrained=false declines the encoder weights, but model.pretrained_path={path!r} "
                          f"names a file: set model.pretrained=true to load it, or model.pretrained_path=null to "
                          f"train from random encoder weights")
    from models.registry import MODEL_INPUT_MULTIPLE

    if model["name"] not in MODEL_INPUT_MULTIPLE:
        raise ConfigError(f"model.name={model['name']!r} is not a registered model; valid: "
                          f"{sorted(MODEL_INPUT_MULTIPLE)}")
    multiple = MODEL_INPUT_MULTIPLE[model["name"]]
    for key in ("TRAIN.SCALE", "TEST.SCALE"):
        if any(side % multiple for side in _get(cfg, key)):
            fit = [max(multiple, round(side / multiple) * multiple) for side in _get(cfg, key)]
            raise ConfigError(f"{key}={_get(cfg, key)!r}: model {model['name']!r} needs sides that are multiples of "
                              f"{multiple}, e.g. {fit}")
    for key in ("d_state", "wmsa_heads"):
        if not _is_int(model[key]) or model[key] < 1:
            raise ConfigError(f"model.{key}={model[key]!r} must be a positive integer")
    if model["dt_rank"] != "auto" and (not _is_int(model["dt_rank"]) or model["dt_rank"] < 1):
        raise ConfigError(f"model.dt_rank={model['dt_rank']!r} must be 'auto' (ceil(C/16)) or a positive integer")
    if not _is_number(model["ssm_ratio"]) or model["ssm_ratio"] <= 0:
        raise ConfigError(f"model.ssm_ratio={model['ssm_ratio']!r} must be a positive number")
    for key in ("drop_path_rate", "encoder_drop_path_rate"):
        if not _is_number(model[key]) or not 0 <= model[key] < 1:
            raise ConfigError(f"model.{key}={model[key]!r} must be a number in [0, 1)")
    from models.bim import BCFR_EXPANSIONS, BCFR_MODES, MS_SCANS, MTMAMBA_ONLY_SWITCHES

    bim = model["bim"]
    for key, choices in (("ms_scan", tuple(MS_SCANS)), ("bcfr_expand", BCFR_EXPANSIONS), ("bcfr_modes", BCFR_MODES)):
        if bim[key] not in choices or type(bim[key]) not in {type(c) for c in choices}:
            raise ConfigError(f"model.bim.{key}={bim[key]!r} is not valid; valid: {list(choices)}")
    if not _is_int(bim["n_msst"]) or bim["n_msst"] < 1:
        raise ConfigError(f"model.bim.n_msst={bim['n_msst']!r} must be a positive integer (MSST blocks per task)")
    changed = [f"model.{k}={model[k]!r}" for k in MTMAMBA_ONLY_SWITCHES if model[k] != DEFAULTS["model"][k]]
    if model["name"] == "bim" and changed:
        raise ConfigError(f"{', '.join(changed)}: MTMamba switch(es) that model.name='bim' does not read; "
                          f"use the model.bim section ({sorted(bim)})")
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
    if pame["backbone_dim"] is not None and (not _is_int(pame["backbone_dim"]) or pame["backbone_dim"] < 1):
        raise ConfigError(f"model.pame.backbone_dim={pame['backbone_dim']!r} must be null (the encoder's width) or "
                          "a positive integer")
    _validate_mambaseg(cfg)


def _validate_mambaseg(cfg: dict) -> None:
    """``model.mambaseg`` values; a MambaSeg model runs at one input size (its TSSM weights depend on H×W)."""
    from models.mambaseg import MERGE_MODES

    ms = cfg["model"]["mambaseg"]
    if ms["merge"] not in MERGE_MODES:
        raise ConfigError(f"model.mambaseg.merge={ms['merge']!r} is not valid; valid: {list(MERGE_MODES)}")
    for key in ("dims", "depths"):
        if not (isinstance(ms[key], list) and len(ms[key]) == 4 and all(_is_int(v) and v > 0 for v in ms[key])):
            raise ConfigError(f"model.mambaseg.{key}={ms[key]!r} must be a list of 4 positive integers (one per stage)")
    if any(c % 16 for c in ms["dims"]):
        raise ConfigError(f"model.mambaseg.dims={ms['dims']!r} must be multiples of 16 (the DDIM attentions reduce "
                          f"C by 4 and 16)")
    for key in ("image_channels", "event_channels", "head_dim"):
        if not _is_int(ms[key]) or ms[key] < 1:
            raise ConfigError(f"model.mambaseg.{key}={ms[key]!r} must be a positive integer")
    if cfg["model"]["name"] != "mambaseg":
        return
    if list(cfg["TEST"]["SCALE"]) != list(cfg["TRAIN"]["SCALE"]):
        raise ConfigError(f"TEST.SCALE={cfg['TEST']['SCALE']!r} must equal TRAIN.SCALE={cfg['TRAIN']['SCALE']!r} for "
                          f"model.name=mambaseg: its TSSM weights depend on the input size")
    if cfg["TASKS"]["NAMES"] != ["semseg"]:
        raise ConfigError(f"model.name=mambaseg predicts semseg only; task_dictionary selects {cfg['TASKS']['NAMES']}")


def load_config(path: str | os.PathLike, opts: Iterable[str] = ()) -> EasyDict:
    """Load a YAML config: ``DEFAULTS`` <- the file with its ``_base_`` files <- ``opts``; resolve and validate.

    ``version_name`` defaults to the file's stem unless the file itself (not one of its bases) or ``opts`` set it,
    so two experiment files never share a run directory by inheritance.
    """
    path = Path(path).resolve()
    data = _read(path)
    if "version_name" not in _load_yaml(path):
        data["version_name"] = path.stem
    return config_from_dict(data, opts, source=f"in {path.name} or its _base_ files")


def config_from_dict(data: dict, opts: Iterable[str] = (), source: str = "in the given config") -> EasyDict:
    """Resolve and validate a config held as a dict (e.g. the one a checkpoint stores), like :func:`load_config`."""
    data = {k: v for k, v in copy.deepcopy(dict(data)).items() if k not in DERIVED}
    _check_keys(data, source=f" ({source})")
    cfg = apply_opts(merge(DEFAULTS, data), list(opts))
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


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or (not d and prefix):
        return {prefix[:-1]: d}
    return {k: v for key, value in d.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}


def config_diff(old: Any, new: Any) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old value, new value)}`` for every leaf that differs (derived keys ignored)."""
    a = {k: v for k, v in _flatten(config_to_dict(old)).items() if k.split(".")[0] not in DERIVED}
    b = {k: v for k, v in _flatten(config_to_dict(new)).items() if k.split(".")[0] not in DERIVED}
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as plain YAML (e.g. the run's ``config.yaml``); :func:`load_config` reads it back."""
    from utils.fileio import write_text

    return write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None, width=120))

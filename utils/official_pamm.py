"""The released PAMM checkpoints ("official format", CQC-gogopro/PAMM) and our ``pame_vit`` state dicts, both ways.

The official trainer saves ``{'optimizer', 'scheduler', 'model', 'epoch', 'iter_count'}``; ``'model'`` is the state
dict of the DDP-wrapped model, so every key starts with ``module.``. The ViT, the four PAME modules
(``backbone.stage_MTLoRA_mamba.<tap>``) and the tap fusion (``backbone.task_mask``) sit under ``backbone.``, the heads
under ``heads.``. Every key and shape of the NYUD and PASCAL models is listed in
tests/assets/pamm_state_dict_manifests.json (MODELS.md §3.6 item 8).

The mapping is the official key layout of a built model, :func:`pamm_layout`: one :class:`Entry` per official key,
in the official order. Most entries are our tensor under another name; some are a slice of one of our stacked
tensors or a reshape:

* the 15 experts ``MoE.<e>.W`` / ``MoE.<e>.M`` of a B / C Parameter-Experts layer are rows e·r..(e+1)·r of our
  ``expert_down`` and rows e·N..(e+1)·N of our grouped ``expert_up``;
* the per-task ``dt_proj0.<t>`` / ``x2dt_proj0.<t>`` are row t of our stacked ``dt_projs_*`` / ``x_proj_weight``;
* the routers' 1×1 convs on pooled vectors (``conv2``, ``router.<t>.1``) are our Linear layers;
* ``Bn_all`` normalises the gated expert sum (our ``expert_norms``), ``Bn`` the whole PE output (``out_norms``).

What the two formats do not share: the released code computes a 3×3 rank-16 local-conv MoE (``conv2d0.*``) and
overwrites its output (MODELS.md §3.3 Q1); it is dropped on import (named in the log) and exported as zeros, so
that the official code loads the export strictly. A and D are constants outside both state dicts
(``model.pame.a_d: constant``). The official code redraws the priors at every construction and saves none: on
import ours come from the documented seed (:func:`models.pame.draw_priors`), on export they are left out.
Conversions are strict both ways: every missing or unmapped key and every shape mismatch is reported, all at once.
"""
from __future__ import annotations

import copy
import functools
import logging
import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn

from models.heads import MultiTaskModel
from models.pame import ParameterExperts, PAMELayer, PAMMDecoder, PAMMHead, TaskProjections, draw_priors
from models.vit import ViTEncoder
from utils.checkpoint import (DDP_PREFIX, CheckpointError, check_keys_and_shapes, ddp_state_dict, is_ddp_state_dict,
                              raise_key_mismatches)

__all__ = ["TRAINER_KEYS", "RELEASED_SWITCHES", "Entry", "is_pamm_checkpoint", "pamm_tasks", "pamm_layout",
           "official_to_ours", "ours_to_official", "released_config", "config_for_checkpoint",
           "checkpoint_model_state"]

logger = logging.getLogger(__name__)

TRAINER_KEYS = frozenset({"optimizer", "scheduler", "model", "epoch", "iter_count"})   # the official trainer's file
STAGE = "backbone.stage_MTLoRA_mamba"       # the official PAME module of each tap
DEAD_MOE = "conv2d0"                        # the released local-conv MoE, whose output is overwritten (Q1)
DEAD_MOE_SHAPE = dict(n_experts=15, rank=16, topk=9, kernel=3)   # rank_list [16] * 15, kernel 3, on d channels
PRIOR_KEY = "priors"
# model.pame values of the released model that no tensor shape records (the shapes give dim, backbone_dim,
# d_state, pe_kernel, n_experts and expert_rank); configs/ablations/pame_code_faithful*.yml set the same
RELEASED_SWITCHES: dict[str, Any] = {"depth": 1, "topk": 9, "local_conv": "none", "priors": "frozen",
                                     "router_spatial": "linear", "scan": "hilbert", "a_d": "constant",
                                     "init": "official", "lb_weight": 0.0}


@dataclass(frozen=True)
class Entry:
    """One official key: ``official`` (without ``module.``) holds ``our[rows]`` reshaped to ``shape``.

    ``ours`` is None for the discarded local-conv MoE (exported as zeros of ``shape`` and ``dtype``)."""
    official: str
    ours: str | None
    shape: tuple[int, ...]
    rows: tuple[int, int] | None = None
    dtype: torch.dtype = torch.float32


# --------------------------------------------------------------------------------------------------------
# Detection


def is_pamm_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    """Whether ``checkpoint`` is an official PAMM file: a ``'model'`` state dict (the trainer's file holds
    :data:`TRAINER_KEYS`) whose keys all start with ``module.``, with the PAME modules under ``backbone.``."""
    return is_ddp_state_dict(checkpoint) and any(k.startswith(f"{DDP_PREFIX}{STAGE}.") for k in checkpoint["model"])


def _strip(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return ddp_state_dict(checkpoint, "an official PAMM checkpoint")


def pamm_tasks(checkpoint: Mapping[str, Any]) -> list[str]:
    """The tasks of an official PAMM checkpoint, in its order (one ``heads.<task>`` each)."""
    return [m.group(1) for k in _strip(checkpoint) if (m := re.fullmatch(r"heads\.(\w+)\.linear_pred\.weight", k))]


# --------------------------------------------------------------------------------------------------------
# Layout


def _same(module: nn.Module, official: str, ours: str | None) -> list[Entry]:
    """Every state-dict entry of ``module`` under the same name below both prefixes (``ours`` None: dead)."""
    return [Entry(f"{official}.{k}", None if ours is None else f"{ours}.{k}", tuple(v.shape), dtype=v.dtype)
            for k, v in module.state_dict(keep_vars=True).items()]


def _linear_as_conv(linear: nn.Linear, official: str, ours: str | None) -> list[Entry]:
    """A Linear layer of ours that the released code holds as a 1×1 conv (weight [out, in, 1, 1])."""
    return [Entry(f"{official}.weight", ours and f"{ours}.weight", (*linear.weight.shape, 1, 1)),
            Entry(f"{official}.bias", ours and f"{ours}.bias", tuple(linear.bias.shape))]


def _pe_entries(pe: nn.Module, official: str, ours: str | None) -> list[Entry]:
    """A Parameter-Experts layer as the released ``MoE`` module: routers, Bn, Bn_all, proj_task, proj_gerneral
    (sic), MoE.<e>; or the per-task 1×1 convs of ``MoE_B/C: False`` (:class:`TaskProjections`)."""
    if isinstance(pe, TaskProjections):
        return [e for t, conv in pe.items() for e in _same(conv, f"{official}.{t}", ours and f"{ours}.{t}")]

    def sub(name: str) -> str | None:
        return None if ours is None else f"{ours}.{name}"

    entries = []
    for t, router in pe.routers.items():
        if not hasattr(router, "pool"):
            raise CheckpointError("the official PAMM format needs model.pame.router_spatial=linear (its routers pool "
                                  "with Linear(H·W -> 1))")
        off, our = f"{official}.router.{t}", sub(f"routers.{t}")
        entries += _same(router.channel[0], f"{off}.0.conv1", our and f"{our}.channel.0")
        entries += _same(router.channel[1], f"{off}.0.ln", our and f"{our}.channel.1")
        entries += _same(router.pool, f"{off}.0.convsp", our and f"{our}.pool")
        entries += _same(router.spatial[0], f"{off}.0.ln_sp", our and f"{our}.spatial.0")
        entries += _linear_as_conv(router.spatial[2], f"{off}.0.conv2", our and f"{our}.spatial.2")
        entries += _same(router.channel[3], f"{off}.0.conv3", our and f"{our}.channel.3")
        entries += _linear_as_conv(router.head, f"{off}.1", our and f"{our}.head")
    entries += [e for t in pe.tasks for e in _same(pe.out_norms[t], f"{official}.Bn.{t}", sub(f"out_norms.{t}"))]
    entries += [e for t in pe.tasks for e in _same(pe.expert_norms[t], f"{official}.Bn_all.{t}",
                                                   sub(f"expert_norms.{t}"))]
    for t in pe.tasks:
        entries += _same(pe.task_paths[t][0], f"{official}.proj_task.{t}.W", sub(f"task_paths.{t}.0"))
        entries += _same(pe.task_paths[t][1], f"{official}.proj_task.{t}.M", sub(f"task_paths.{t}.1"))
    entries += _same(pe.general, f"{official}.proj_gerneral", sub("general"))
    # expert e: rows e·r.. of the stacked down-projection (W), rows e·N.. of the grouped up-projection (M)
    for e in range(pe.n_experts):
        for name, conv, size in (("W", "expert_down", pe.rank), ("M", "expert_up", pe.d_state)):
            for p in ("weight", "bias"):
                shape = (size, *getattr(getattr(pe, conv), p).shape[1:])
                entries.append(Entry(f"{official}.MoE.{e}.{name}.{p}", sub(f"{conv}.{p}"), shape,
                                     None if ours is None else (e * size, (e + 1) * size)))
    return entries


@functools.lru_cache(maxsize=8)
def _dead_moe(tasks: tuple[str, ...], dim: int, grid: tuple[int, int]) -> tuple[Entry, ...]:
    """The entries (names relative to the module) of the released local-conv MoE of a PAME layer: d -> d, 15 experts
    of rank 16, 3×3; built on the meta device for its shapes."""
    with torch.device("meta"):
        moe = ParameterExperts(dim, dim, tasks, router_spatial="linear", grid=grid, **DEAD_MOE_SHAPE)
    return tuple(_pe_entries(moe, "", None))


def _layer_entries(layer: PAMELayer, grid: tuple[int, int], official: str, ours: str) -> list[Entry]:
    """One PAME layer as the released ``MoeMamba`` module (depth index 0), in its registration order."""
    if hasattr(layer, "local"):
        raise CheckpointError("the official PAMM format has no local conv: use model.pame.local_conv=none")
    tasks, dim = layer.tasks, layer.task_conv[layer.tasks[0]].in_channels
    entries = [e for t in tasks for e in _same(layer.task_conv[t], f"{official}.task_conv.{t}",
                                               f"{ours}.task_conv.{t}")]
    entries += [e for t in tasks for e in _same(layer.norm[t], f"{official}.task_input_norm0.{t}", f"{ours}.norm.{t}")]
    entries += [e for t in tasks for e in _same(layer.gate[t], f"{official}.proj_z0.{t}", f"{ours}.gate.{t}")]
    entries += [Entry(f"{official}.{DEAD_MOE}{e.official}", None, e.shape, dtype=e.dtype)
                for e in _dead_moe(tuple(tasks), dim, tuple(grid))]
    entries += [e for t in tasks for e in _same(layer.expand[t], f"{official}.dim_expand_proj_x0.{t}",
                                                f"{ours}.expand.{t}")]
    di, r = layer.dt_projs_weight.shape[1:]
    for i, t in enumerate(tasks):
        entries += [Entry(f"{official}.dt_proj0.{t}.weight", f"{ours}.dt_projs_weight", (di, r), (i, i + 1)),
                    Entry(f"{official}.dt_proj0.{t}.bias", f"{ours}.dt_projs_bias", (di,), (i, i + 1))]
    entries += [Entry(f"{official}.x2dt_proj0.{t}.weight", f"{ours}.x_proj_weight", (r, di), (i, i + 1))
                for i, t in enumerate(tasks)]
    entries += _pe_entries(layer.pe_c, f"{official}.C_proj0", f"{ours}.pe_c")
    entries += _pe_entries(layer.pe_b, f"{official}.B_proj0", f"{ours}.pe_b")
    entries += [e for t in tasks for e in _same(layer.reduce[t], f"{official}.dim_decrease_proj0.{t}",
                                                f"{ours}.reduce.{t}")]
    return entries


def pamm_layout(model: nn.Module) -> list[Entry]:
    """Every entry of the official state dict (keys without ``module.``) of ``model``'s architecture, in order.

    ``model`` must be ``pame_vit`` with the released architecture (ViT encoder, one PAME layer per tap, no local
    conv, Linear(H·W -> 1) routers, constant A and D); an error names the switch otherwise. Works on the meta device.
    """
    decoder = getattr(model, "decoder", None)
    if not (isinstance(model, MultiTaskModel) and isinstance(model.encoder, ViTEncoder)
            and isinstance(decoder, PAMMDecoder) and all(isinstance(h, PAMMHead) for h in model.heads.values())):
        raise CheckpointError(f"this {type(model).__name__} has no official PAMM format: only model.name=pame_vit "
                              "(e.g. configs/ablations/pame_code_faithful_pascal.yml)")
    if any(len(tap.layers) != 1 for tap in decoder.taps):
        raise CheckpointError("the official PAMM format has one PAME layer per tap: use model.pame.depth=1")
    entries = _same(model.encoder.vit, "backbone", "encoder.vit")
    for i, tap in enumerate(decoder.taps):
        official, ours = f"{STAGE}.{i}", f"decoder.taps.{i}"
        entries += _same(tap.first_decode[0], f"{official}.first_decode", f"{ours}.first_decode.0")
        entries += _same(tap.first_decode[1], f"{official}.input_norm", f"{ours}.first_decode.1")
        entries += _layer_entries(tap.layers[0], model.encoder.grid, official, f"{ours}.layers.0")
    entries += [e for t in decoder.tasks for e in _same(decoder.fusion[t], f"backbone.task_mask.{t}",
                                                        f"decoder.fusion.{t}")]
    for t, head in model.heads.items():
        entries += _same(head.body, f"heads.{t}.mt_proj", f"heads.{t}.body")
        entries += _same(head.project, f"heads.{t}.linear_pred", f"heads.{t}.project")
    # every tensor of ours has a place, the priors excepted (the released model keeps none)
    placed = {e.ours for e in entries}
    homeless = [k for k in model.state_dict(keep_vars=True) if k not in placed and k.rsplit(".", 1)[-1] != PRIOR_KEY]
    if homeless:
        hint = " (A_log, D: use model.pame.a_d=constant)" if any(k.endswith(("A_logs", "Ds")) for k in homeless) else ""
        raise CheckpointError(f"{len(homeless)} tensors of this model have no place in the official PAMM format"
                              f"{hint}: {homeless[:8]}")
    return entries


def _priors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our prior keys and their values from each layer's documented seed."""
    return {f"{name}.{PRIOR_KEY}": draw_priors(len(m.tasks), m.d_state, m.prior_seed)
            for name, m in model.named_modules() if isinstance(m, PAMELayer) and m.priors is not None}


# --------------------------------------------------------------------------------------------------------
# Conversion


def _dead_summary(keys: list[str], sd: Mapping[str, torch.Tensor]) -> str:
    prefixes = sorted({k.split(f".{DEAD_MOE}.")[0] + f".{DEAD_MOE}.*" for k in keys})
    numel = sum(sd[k].numel() for k in keys) if sd else 0
    return f"{len(keys)} entries ({numel:,} values) of the discarded local-conv MoE: {', '.join(prefixes)}"


def official_to_ours(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """An official PAMM checkpoint (the file's dict or its ``'model'``) as a state dict of ``model``, strictly.

    Checks that the keys are exactly the official layout of ``model`` with the same shapes (one error lists every
    missing key, unmapped key and shape mismatch). Drops the local-conv MoE (logged), packs the experts and per-task
    Δ projections into our stacked tensors, and adds the priors from their seeds. Returns ``{our key: tensor}`` in
    ``model.state_dict()`` order.
    """
    sd = _strip(checkpoint)
    layout = pamm_layout(model)
    missing = [DDP_PREFIX + e.official for e in layout if e.official not in sd]
    mapped = {e.official for e in layout}
    unexpected = [DDP_PREFIX + k for k in sd if k not in mapped]
    problems = [f"{DDP_PREFIX}{e.official} {tuple(sd[e.official].shape)}, expected {e.shape}"
                + (f" ({e.ours})" if e.ours else "") for e in layout
                if e.official in sd and tuple(sd[e.official].shape) != e.shape]
    raise_key_mismatches("official PAMM checkpoint vs this model", missing, unexpected, problems, "unmapped")

    own = model.state_dict(keep_vars=True)
    converted: dict[str, torch.Tensor] = {}
    for e in layout:
        if e.ours is None:
            continue
        value = sd[e.official]
        if e.rows is None:
            converted[e.ours] = value.reshape(own[e.ours].shape)
        else:
            if e.ours not in converted:
                converted[e.ours] = torch.empty(own[e.ours].shape, dtype=value.dtype)
            target = converted[e.ours][e.rows[0]:e.rows[1]]
            target.copy_(value.reshape(target.shape))
    converted |= _priors(model)
    dead = [e.official for e in layout if e.ours is None]
    logger.info("official PAMM checkpoint: dropped %s; priors drawn from their seeds (models.pame.draw_priors)",
                _dead_summary(dead, sd))
    return {k: converted[k] for k in own}


def ours_to_official(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """A state dict of ``model`` in the official format ``{'model': {"module.<key>": tensor}}``, in the official order,
    as the official code loads it (``strict=True``): the local-conv MoE as zeros, the priors left out.
    ``state_dict`` must hold exactly ``model``'s keys and shapes."""
    given = {k.removeprefix(DDP_PREFIX): v for k, v in state_dict.items()}
    check_keys_and_shapes(given, model.state_dict(keep_vars=True), "state dict vs this model", "unmapped")
    out = {}
    for e in pamm_layout(model):
        if e.ours is None:
            value = torch.zeros(e.shape, dtype=e.dtype)
        else:
            value = given[e.ours] if e.rows is None else given[e.ours][e.rows[0]:e.rows[1]]
            value = value.reshape(e.shape)
        out[DDP_PREFIX + e.official] = value
    return {"model": out}


# --------------------------------------------------------------------------------------------------------
# Evaluation of a checkpoint file (main.py --run_mode infer)


def released_config(cfg: Any, checkpoint: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """A copy of ``cfg`` that builds the model of an official PAMM checkpoint, and the changes as log lines.

    :data:`RELEASED_SWITCHES` plus what the tensor shapes record (``dim``, ``backbone_dim``, ``d_state``,
    ``pe_kernel``, ``n_experts``, ``expert_rank``, ``moe_b``/``moe_c``); no ImageNet weights are loaded."""
    sd = _strip(checkpoint)
    tasks = pamm_tasks(checkpoint)
    if cfg.model.name != "pame_vit":
        raise CheckpointError(f"the checkpoint is an official PAMM checkpoint but the config has model.name="
                              f"{cfg.model.name!r}; use configs/ablations/pame_code_faithful_pascal.yml (PASCAL) or "
                              "configs/ablations/pame_code_faithful.yml (NYUD)")
    if set(tasks) != set(cfg.TASKS.NAMES):
        raise CheckpointError(f"the official PAMM checkpoint was trained for tasks {tasks}, the config selects "
                              f"{list(cfg.TASKS.NAMES)} (train_db_name={cfg.train_db_name})")
    stage = f"{STAGE}.0"

    def shape(key: str) -> torch.Size:
        if key not in sd:
            raise CheckpointError(f"official PAMM checkpoint without module.{key}: cannot read the model's widths")
        return sd[key].shape

    def n_experts(proj: str) -> int:
        return sum(bool(re.fullmatch(rf"{re.escape(stage)}\.{proj}\.MoE\.\d+\.W\.weight", k)) for k in sd)

    experts = {proj: n_experts(proj) for proj in ("B_proj0", "C_proj0")}
    first = shape(f"{stage}.first_decode.weight")
    switches = dict(RELEASED_SWITCHES, dim=first[0], moe_b=experts["B_proj0"] > 0, moe_c=experts["C_proj0"] > 0,
                    backbone_dim=None if first[1] == shape("backbone.pos_embed")[-1] else first[1])
    moe = next((proj for proj, n in experts.items() if n), None)
    if moe is not None:                         # the B/C expert convs: E of them, rank r, kernel κ
        down = shape(f"{stage}.{moe}.MoE.0.W.weight")
        switches |= dict(pe_kernel=down[-1], expert_rank=down[0], n_experts=experts[moe])
    b_out = f"{stage}.B_proj0.Bn.{tasks[0]}.weight" if switches["moe_b"] else f"{stage}.B_proj0.{tasks[0]}.bias"
    model_keys = dict(d_state=shape(b_out)[0], pretrained=False, pretrained_path=None)
    changes = [f"model.pame.{k}: {cfg.model.pame[k]!r} -> {v!r}" for k, v in switches.items() if cfg.model.pame[k] != v]
    changes += [f"model.{k}: {cfg.model[k]!r} -> {v!r}" for k, v in model_keys.items() if cfg.model[k] != v]
    cfg = copy.deepcopy(cfg)
    cfg.model.pame.update(switches)
    cfg.model.update(model_keys)
    return cfg, changes


def config_for_checkpoint(cfg: Any, checkpoint: Mapping[str, Any]) -> Any:
    """:func:`released_config`, with one log line naming every switched key."""
    new, changes = released_config(cfg, checkpoint)
    if changes:
        logger.info("official PAMM checkpoint: the released model needs %s", "; ".join(changes))
    return new


def checkpoint_model_state(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` held by an official PAMM checkpoint (:func:`official_to_ours`)."""
    logger.info("official PAMM checkpoint (epoch %s, iteration %s): converted to this model's keys",
                checkpoint.get("epoch"), checkpoint.get("iter_count"))
    return official_to_ours(checkpoint, model)


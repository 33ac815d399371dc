"""The inference loop: per-task meters over a (possibly sharded) loader, all-reduced across ranks.

Each rank evaluates its own shard of the split (no padded duplicates, see ``data.ShardSampler``), the meters'
states are summed over ranks, and every rank computes the same metrics. Predictions can be saved cropped back to
the original image size: edges as the uint8 PNGs of the boundary benchmark (EVALUATION.md §1), every task with the
maps and pictures of :mod:`utils.visualize`.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from data.transforms import PadImage
from evaluation.base import Meter
from evaluation.depth import DepthMeter
from evaluation.miou import MIoUMeter
from evaluation.normals import NormalsMeter
from evaluation.saliency import SaliencyMeter
from utils.distributed import all_gather_object, all_reduce_state, is_main_process
from utils.visualize import LABEL_TASKS, label_set, prediction_maps, save_task_maps

__all__ = ["HEADLINE_METRICS", "DEPTH_VALID_RANGES", "Evaluation", "build_meters", "evaluate", "save_prediction_maps",
           "selection_metric", "metrics_table", "load_trained_model", "infer"]

logger = logging.getLogger(__name__)

# the metric each task reports in the papers' tables, and whether higher is better
HEADLINE_METRICS: dict[str, tuple[str, bool]] = {
    "semseg": ("mIoU", True), "human_parts": ("mIoU", True), "sal": ("maxF", True),
    "normals": ("mErr", False), "depth": ("rmse", False), "edge": ("odsF", True),
}


# datasets whose depth metric counts exactly the pixels with lo < GT < hi (Cityscapes disparity, CITYSCAPES.md §1);
# elsewhere GT 0 and 255 are invalid (EVALUATION.md §5)
DEPTH_VALID_RANGES: dict[str, tuple[float, float]] = {"Cityscapes": (0.0, 80.0)}


def build_meters(cfg: Any) -> dict[str, Meter]:
    """One meter per task with a dense metric. Edges are scored by the boundary benchmark, not by a meter."""
    n_out = cfg.TASKS.NUM_OUTPUT
    factories = {
        "semseg": lambda: MIoUMeter(n_out["semseg"]),
        "human_parts": lambda: MIoUMeter(n_out["human_parts"]),
        "sal": lambda: SaliencyMeter(cfg.get("sal_maxF_mode", "invpt_compat")),
        "normals": NormalsMeter,
        "depth": lambda: DepthMeter(valid_range=DEPTH_VALID_RANGES.get(cfg.val_db_name)),
    }
    return {t: factories[t]() for t in cfg.TASKS.NAMES if t in factories}


def save_prediction_maps(preds: Mapping[str, torch.Tensor], batch: Mapping[str, Any], tasks: list[str],
                         out_dir: Path, dataset: str) -> None:
    """Write each image's maps, cropped from the centred padding to the original size, with
    :func:`utils.visualize.save_task_maps`: ``out_dir/<task>/<img_name>.png`` (edges uint8 floor(255·σ) as the
    boundary benchmark expects, EVALUATION.md §1; class ids; sal uint8 255·p; depth uint16 mm; normals RGB) and the
    colour pictures of class maps and depth under ``<task>/color/``. ``dataset`` (``train_db_name``) names the class
    colours. A failed write raises :class:`utils.fileio.WriteError` naming the file.
    """
    names, sizes = batch["meta"]["img_name"], batch["meta"]["img_size"]
    for t in tasks:
        p = preds[t]
        labels_of = label_set(dataset, t, p.shape[1]) if t in LABEL_TASKS else None
        for i, name in enumerate(names):
            h, w = (int(v) for v in sizes[i])
            top, _, left, _ = PadImage.offsets(h, w, p.shape[-2:])
            save_task_maps(prediction_maps(t, p[i, :, top:top + h, left:left + w], labels_of), out_dir, t, name)


def _finite_per_image(x: torch.Tensor) -> torch.Tensor:
    """(B,) bool: every value of image b is finite."""
    return torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)


@dataclass
class Evaluation:
    """What :func:`evaluate` measured.

    ``metrics``: ``{task: {metric: value}}``; a task that met a non-finite prediction or ground truth has NaN for
    every metric. ``nonfinite``: ``{task: {"predictions" | "ground_truth": [image ids]}}``, only where some were.
    """

    metrics: dict[str, dict[str, float]]
    nonfinite: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def describe_nonfinite(self, max_ids: int = 5) -> str:
        """One line naming each task, what was non-finite and the first image ids; empty when all was finite."""
        parts = []
        for task, kinds in self.nonfinite.items():
            for kind, ids in kinds.items():
                shown = ", ".join(ids[:max_ids]) + (f" and {len(ids) - max_ids} more" if len(ids) > max_ids else "")
                parts.append(f"{task} {kind.replace('_', ' ')} on {len(ids)} image(s) ({shown})")
        return "non-finite " + "; ".join(parts) if parts else ""


@torch.no_grad()
def evaluate(model: nn.Module, loader, cfg: Any, device: torch.device, *,
             save_dir: Path | None = None, save_tasks: list[str] = (), amp_dtype: torch.dtype | None = None,
             ) -> Evaluation:
    """Run the model over ``loader``; the metrics and the non-finite report are identical on every rank.

    Images whose prediction or ground truth of a task holds NaN/Inf are left out of that task's meter, named in
    :attr:`Evaluation.nonfinite`, and the task's metrics are NaN: a number computed without them would mislead.
    """
    from models.registry import batch_inputs

    model.eval()
    meters = build_meters(cfg)
    nonfinite: dict[str, dict[str, list[str]]] = {}
    for batch in tqdm(loader, desc="eval", disable=not is_main_process(), leave=False, dynamic_ncols=True):
        inputs = batch_inputs(model, batch, device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            preds = model(*inputs)
        names = batch["meta"]["img_name"]
        for t in cfg.TASKS.NAMES:
            pred = preds[t].float().cpu()
            ok = {"predictions": _finite_per_image(pred), "ground_truth": _finite_per_image(batch[t])}
            for kind, flags in ok.items():
                bad = [names[i] for i in torch.nonzero(~flags).flatten().tolist()]
                if bad:
                    nonfinite.setdefault(t, {}).setdefault(kind, []).extend(bad)
            keep = ok["predictions"] & ok["ground_truth"]
            if t in meters and keep.any():
                meters[t].update(pred[keep], batch[t][keep])
        if save_dir is not None and save_tasks:
            save_prediction_maps(preds, batch, list(save_tasks), save_dir, cfg.train_db_name)
    states = all_reduce_state({f"{t}/{k}": v for t, m in meters.items() for k, v in m.state().items()})
    merged_ids: dict[str, dict[str, set[str]]] = {}
    for rank_report in all_gather_object(nonfinite):
        for t, kinds in rank_report.items():
            for kind, ids in kinds.items():
                merged_ids.setdefault(t, {}).setdefault(kind, set()).update(ids)
    nonfinite = {t: {kind: sorted(merged_ids[t][kind]) for kind in ("predictions", "ground_truth")
                     if kind in merged_ids[t]} for t in cfg.TASKS.NAMES if t in merged_ids}
    results = {}
    for t in meters:
        merged = build_meters(cfg)[t]
        merged.merge({k.split("/", 1)[1]: v for k, v in states.items() if k.startswith(f"{t}/")})
        try:
            values = {k: float(v) for k, v in merged.compute().items() if np.isscalar(v) or np.ndim(v) == 0}
        except ValueError:            # nothing left to measure: every image of the task was non-finite
            if t not in nonfinite:
                raise
            values = {HEADLINE_METRICS[t][0]: math.nan}
        results[t] = {k: math.nan for k in values} if t in nonfinite else values
    return Evaluation(results, nonfinite)


def selection_metric(results: Mapping[str, Mapping[str, float]]) -> tuple[str, str, bool] | None:
    """The ``(task, metric, higher_is_better)`` that best.pth is selected on: the Δm proxy when ``results`` hold one
    (``delta_m_proxy``), else the headline metric of a single-task run (MambaSeg: semseg mIoU); None when there is
    neither (a multi-task run without a Δm baseline keeps its latest validation)."""
    if "delta_m_proxy" in results:
        return "delta_m_proxy", "value", True
    if len(results) == 1:
        task = next(iter(results))
        return (task, *HEADLINE_METRICS[task])
    return None


def metrics_table(results: Mapping[str, Mapping[str, float]], dataset: str, delta_line: str,
                  nonfinite_line: str = "", split: str = "validation") -> str:
    """A markdown table under the title ``<dataset> <split>``: the headline metric of each task first, then the
    others, then the Δm line; a non-finite value shows as ``n/a (non-finite)`` and ``nonfinite_line`` says where it
    came from."""
    lines = ["| task | metric | value |", "|---|---|---|"]
    for task, metrics in results.items():
        head = HEADLINE_METRICS.get(task, (None, True))[0]
        for name in sorted(metrics, key=lambda k: (k != head, k)):
            arrow = ("↑" if HEADLINE_METRICS[task][1] else "↓") if name == head else ""
            value = metrics[name]
            shown = f"{value:.4f}" if math.isfinite(value) else "n/a (non-finite)"
            lines.append(f"| {task} | {name}{arrow} | {shown} |")
    notes = [delta_line] + ([nonfinite_line] if nonfinite_line else [])
    return "\n".join([f"{dataset} {split}", "", *lines, "", *notes])


def _json_safe(results: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    """NaN/Inf -> None, so that metrics.json is valid JSON with the bad values marked."""
    return {t: {k: (v if math.isfinite(v) else None) for k, v in m.items()} for t, m in results.items()}


def _boundary_scores(cfg: Any, pred_dir: Path, out_dir: Path) -> dict[str, float]:
    """odsF / oisF / AP in percent of the saved edge maps (rank 0 scores, every rank receives the result)."""
    from data import DATASET_FOLDERS, resolve_db_root
    from evaluation.boundary.runner import evaluate_boundaries
    from utils.distributed import broadcast_object

    scores = None
    if is_main_process():
        root = resolve_db_root(cfg) / DATASET_FOLDERS[cfg.val_db_name]
        summary = evaluate_boundaries(cfg.val_db_name, root, out_dir, pred_dir=pred_dir,
                                      mode=cfg.get("boundary_mode", "fast"), workers=max(1, int(cfg.nworkers)))
        scores = {name: 100.0 * float(summary["scores"][key])
                  for name, key in (("odsF", "ods_f"), ("oisF", "ois_f"), ("AP", "ap"))}
    return broadcast_object(scores)


def load_trained_model(cfg: Any, checkpoint: str | Path, device: torch.device) -> tuple[Any, nn.Module, dict]:
    """``(cfg, model, checkpoint dict)``: the model of ``cfg`` with the weights of ``checkpoint`` (ours or a released
    MTMamba / MTMamba++ file, converted on load, :mod:`utils.official`), on ``device``, compiled as
    ``model.compile`` says. The returned config is the one the model was built with (an official file switches
    ``swin_pad_mode``; no ImageNet weights are fetched)."""
    from models import build_model
    from models.execution import compile_decoder
    from utils.checkpoint import load_checkpoint, load_model_state
    from utils.official import checkpoint_model_state, config_for_checkpoint

    # the checkpoint first: an official MTMamba/MTMamba++ file sets how the model is built (swin_pad_mode)
    state = load_checkpoint(checkpoint, map_location="cpu")
    cfg = config_for_checkpoint(cfg, state)
    model = build_model(cfg).to(device)
    load_model_state(model, checkpoint_model_state(state, model))
    compile_decoder(model.eval(), cfg.model.compile)
    return cfg, model, state


def infer(cfg: Any, checkpoint: str | Path, run_dir: Path | None = None,
          device: torch.device | None = None) -> dict[str, dict[str, float]]:
    """Evaluate a checkpoint on the val split: print the metric table and Δm, write metrics.json/metrics.md.

    ``checkpoint`` is one of ours or a released MTMamba / MTMamba++ file (official format, converted on load and
    evaluated with ``swin_pad_mode: mmseg``, see :mod:`utils.official`) or PAMM file (:mod:`utils.official_pamm`).

    Saves ``save_predictions`` maps under ``run_dir/predictions`` and, with ``eval_boundary``, scores the edge
    maps with the SEISM protocol (``boundary_mode``: fast | exact | proxy). ``run_dir`` defaults to
    ``out_dir/version_name``, ``device`` to this rank's device (:func:`utils.distributed.init_distributed`).
    The run's training ``config.yaml`` is left alone: metrics.json records the config of this evaluation.
    Non-finite predictions or ground truth are named (task, image ids) in the log, the table and metrics.json.
    """
    from data import build_val_loader, eval_split
    from evaluation.delta_m import format_delta_m
    from utils.config import AMP_DTYPES, config_to_dict
    from utils.distributed import barrier, init_distributed
    from utils.fileio import write_text

    run_dir = Path(cfg.out_dir) / cfg.version_name if run_dir is None else Path(run_dir)
    device = init_distributed().device if device is None else device
    loader = build_val_loader(cfg)              # a missing dataset is reported before the checkpoint is read
    cfg, model, state = load_trained_model(cfg, checkpoint, device)
    save_tasks = list(cfg.get("save_predictions") or [])
    if cfg.get("eval_boundary") and "edge" not in save_tasks:
        save_tasks.append("edge")
    pred_dir = run_dir / "predictions"
    evaluation = evaluate(model, loader, cfg, device, save_dir=pred_dir, save_tasks=save_tasks,
                          amp_dtype=AMP_DTYPES[cfg.get("amp")])
    results = evaluation.metrics
    barrier()
    if cfg.get("eval_boundary"):
        results["edge"] = _boundary_scores(cfg, pred_dir / "edge", run_dir / "boundary")
        if "edge" in evaluation.nonfinite:
            results["edge"] = {k: math.nan for k in results["edge"]}
    delta_line = format_delta_m(cfg.val_db_name, results, proxy="edge" not in results)
    problems = evaluation.describe_nonfinite()
    if problems:
        logger.error("%s: their tasks' metrics are marked n/a (null in metrics.json)", problems)
    if is_main_process():
        split = "test split" if eval_split(cfg.val_db_name) == "test" else "validation"
        table = metrics_table(results, cfg.val_db_name, delta_line, problems, split)
        print(table)
        write_text(run_dir / "metrics.md", table + "\n")
        record = {"checkpoint": str(checkpoint), "iteration": state.get("iteration"), "results": _json_safe(results),
                  "delta_m": delta_line, "nonfinite": evaluation.nonfinite, "config": config_to_dict(cfg)}
        write_text(run_dir / "metrics.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
    return results

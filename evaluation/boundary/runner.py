"""Dataset-level boundary evaluation: a process pool over images, per-image result files (resumable), a protocol
stamp in every output (EVALUATION.md §10.6), and the modes of §10 "Modes to expose".

- ``exact``: csa matcher, 101 HED thresholds (for paper tables; needs the optional pyEdgeEval).
- ``fast``: hk matcher, 101 HED thresholds (deterministic, within about 0.001 of exact; development tables).
- ``proxy``: hk matcher, 19 thresholds 0.05…0.95 (validation only; never comparable to paper numbers).
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from evaluation.boundary.gt import build_gt, read_label_map
from evaluation.boundary.image_list import ImageSelection, resolve_image_list
from evaluation.boundary.match import get_matcher
from evaluation.boundary.predictions import read_prediction, resolve_pred_dir
from evaluation.boundary.seism import HED_THRESHOLDS, MAX_DIST, PROXY_THRESHOLDS, aggregate, eval_image

__all__ = ["MODES", "evaluate_boundaries", "mode_for"]

logger = logging.getLogger(__name__)

# mode -> (matcher, threshold grid name, description)
MODES: dict[str, tuple[str, str, str]] = {
    "exact": ("csa", "HED101", "SEISM protocol with BSDS correspondPixels (CSA): paper-comparable"),
    "fast": ("hk", "HED101", "SEISM protocol with exact maximum matching (HK): within ~0.001 of exact, not the "
                             "reference matcher"),
    "proxy": ("hk", "PROXY19", "validation proxy, 19 thresholds: never comparable to paper numbers"),
}
THRESHOLD_GRIDS: dict[str, np.ndarray] = {"HED101": HED_THRESHOLDS, "PROXY19": PROXY_THRESHOLDS}
_RELABEL = {"nyud": False, "pascal": True}  # §7.1: 4-connected relabel for PASCAL only
_CONFIG_NAMES = {"NYUD": "nyud", "PASCALContext": "pascal"}  # utils/config.py dataset names


def mode_for(matcher: str | None, mode: str | None) -> str:
    """Resolve the mode from ``--matcher`` / ``--mode`` (csa → exact, hk → fast); reject contradictions."""
    if mode is None:
        return {"csa": "exact", "hk": "fast", None: "fast"}[matcher]
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not supported; valid: {sorted(MODES)}")
    if matcher is not None and matcher != MODES[mode][0]:
        raise ValueError(f"mode {mode!r} uses the {MODES[mode][0]!r} matcher, not {matcher!r}")
    return mode


def _versions(matcher: str) -> dict[str, str]:
    names = ["numpy", "scipy", "scikit-image", "numba", "opencv-python-headless"] + (["pyEdgeEval"] if matcher == "csa"
                                                                                     else [])
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _stamp(dataset: str, mode: str) -> dict[str, Any]:
    matcher, grid, _ = MODES[mode]
    return {"dataset": dataset, "mode": mode, "matcher": matcher, "thresholds": grid, "max_dist": MAX_DIST[dataset],
            "gt": "thin(seg2bmap(relabel4(LabelMap)))" if _RELABEL[dataset] else "thin(seg2bmap(edge PNG))"}


def _eval_one(job: tuple[str, str, str, str, str | None, np.ndarray | None, dict[str, Any]]) -> str:
    # worker: one image → <out_dir>/per_image/<id>.npz (written atomically so an interrupted run can resume)
    image_id, dataset, db_root, out_path, pred_path, pred, stamp = job
    if pred is None:
        pred = read_prediction(pred_path)
    gt = build_gt(read_label_map(dataset, db_root, image_id), relabel=_RELABEL[dataset])
    counts = eval_image(pred, gt, stamp["max_dist"], THRESHOLD_GRIDS[stamp["thresholds"]],
                        get_matcher(stamp["matcher"]))
    tmp = out_path + ".tmp.npz"
    np.savez(tmp, counts=counts, stamp=json.dumps(stamp, sort_keys=True))
    os.replace(tmp, out_path)
    return image_id


def _load_done(path: Path, stamp: dict[str, Any]) -> np.ndarray | None:
    if not path.is_file():
        return None
    with np.load(path) as f:
        if json.loads(str(f["stamp"])) != stamp:
            return None
        return f["counts"]


def evaluate_boundaries(dataset: str, db_root: str | Path, out_dir: str | Path, *, pred_dir: str | Path | None = None,
                        predictions: Mapping[str, np.ndarray] | None = None, mode: str = "fast",
                        image_list: str | Path | None = None, workers: int = 1) -> dict[str, Any]:
    """Score saved (``pred_dir``) or in-memory (``predictions``: id → uint8 H×W) edge maps with the SEISM protocol.

    Per-image counts go to ``out_dir/per_image/<id>.npz``; files with the same protocol stamp are reused, so an
    interrupted run resumes. Writes ``out_dir/boundary_<mode>.json`` and ``.txt`` and returns the JSON content.

    Args:
        dataset: "nyud" or "pascal" (the config names "NYUD" / "PASCALContext" are accepted too).
        db_root: dataset root (``NYUDv2/`` or ``PASCALContext/``) holding the GT sources.
        out_dir: where per-image and summary files go.
        pred_dir: folder of ``<id>.png`` or an InvPT/MTMamba save folder containing ``edge/``.
        predictions: in-memory alternative to ``pred_dir``.
        mode: "exact", "fast" or "proxy" (``MODES``).
        image_list: id list file; for PASCAL, SEISM's ``test_new.txt`` (2498 ids) gives the published protocol.
        workers: processes (spawn); 1 runs in this process.
    """
    dataset = _CONFIG_NAMES.get(dataset, dataset)
    if (pred_dir is None) == (predictions is None):
        raise ValueError("evaluate_boundaries: pass exactly one of pred_dir and predictions")
    if dataset not in MAX_DIST:
        raise ValueError(f"dataset {dataset!r} is not supported; valid: {sorted(MAX_DIST)}")
    mode = mode_for(None, mode)
    get_matcher(MODES[mode][0])  # fail now, not in a worker, if pyEdgeEval is missing for csa
    selection = resolve_image_list(dataset, db_root, image_list)
    ids = selection.ids
    if predictions is not None:
        missing = [i for i in ids if i not in predictions]
        if missing:
            raise KeyError(f"{len(missing)} of {len(ids)} predictions missing, e.g. {missing[:3]}")
        source = None
    else:
        source = resolve_pred_dir(pred_dir, ids)
    stamp = _stamp(dataset, mode)
    per_image = Path(out_dir) / "per_image"
    per_image.mkdir(parents=True, exist_ok=True)
    todo = [i for i in ids if _load_done(per_image / f"{i}.npz", stamp) is None]
    logger.info("boundary %s (%s): %d images, %d already done, %d workers", mode, selection.protocol_label,
                len(ids), len(ids) - len(todo), workers)
    jobs = [(i, dataset, str(db_root), str(per_image / f"{i}.npz"),
             None if source is None else str(source / f"{i}.png"),
             None if predictions is None else np.asarray(predictions[i]), stamp) for i in todo]
    if workers > 1 and len(jobs) > 1:
        # an executor, not a Pool: a worker that dies (out of memory, killed) raises instead of hanging the run
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            try:
                for n, future in enumerate(as_completed([pool.submit(_eval_one, job) for job in jobs]), 1):
                    future.result()
                    if n % 50 == 0 or n == len(jobs):
                        logger.info("boundary %s: %d / %d images", mode, n, len(jobs))
            except BrokenProcessPool as e:
                raise RuntimeError(f"boundary {mode}: a worker process died ({e}); the images scored so far are "
                                   f"kept in {per_image}, run again to resume") from e
    else:
        for job in jobs:
            _eval_one(job)
    counts = np.stack([_load_done(per_image / f"{i}.npz", stamp) for i in ids])
    return _write_summary(Path(out_dir), mode, selection, stamp, counts)


def _write_summary(out_dir: Path, mode: str, selection: ImageSelection, stamp: dict[str, Any],
                   counts: np.ndarray) -> dict[str, Any]:
    scores = aggregate(counts, THRESHOLD_GRIDS[stamp["thresholds"]])
    result = {"scores": asdict(scores), "mode": mode, "mode_description": MODES[mode][2],
              "protocol": selection.protocol_label, "published_protocol": selection.published,
              "image_list": {"source": selection.source, "count": len(selection.ids), "sha256": selection.sha256},
              "stamp": stamp, "versions": _versions(stamp["matcher"])}
    with open(out_dir / f"boundary_{mode}.json", "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"# mode: {mode} ({MODES[mode][2]})", f"# protocol: {selection.protocol_label}",
             f"# images: {len(selection.ids)} from {selection.source}",
             f"odsF:{scores.ods_f:0.3f}", f"oisF:{scores.ois_f:0.3f}", f"AP:{scores.ap:0.3f}"]
    (out_dir / f"boundary_{mode}.txt").write_text("\n".join(lines) + "\n")
    logger.info("boundary %s: odsF %.4f oisF %.4f AP %.4f [%s]", mode, scores.ods_f, scores.ois_f, scores.ap,
                selection.protocol_label)
    return result

"""Runner, image-list verdicts and the CLI on a tiny synthetic dataset (EVALUATION.md §7.1, §10.6)."""
import json
import os

import cv2
import numpy as np
import pytest
import scipy.io

from evaluation.boundary.gt import build_gt
from evaluation.boundary.image_list import ids_sha256, resolve_image_list
from evaluation.boundary.runner import evaluate_boundaries, mode_for
from evaluation.boundary.seism import HED_THRESHOLDS, MAX_DIST, aggregate, eval_image
from scripts.eval_boundary import main as cli_main

IDS = ["2008_000001", "2008_000002", "2008_000003"]


def _labels(seed):
    rng = np.random.default_rng(seed)
    lab = np.zeros((50, 60), np.uint16)
    for k in range(4):
        y, x = rng.integers(0, 40), rng.integers(0, 50)
        lab[y:y + 15, x:x + 20] = k + 1
    return lab


def _pred(lab):
    gt = build_gt(lab.astype(np.int32), relabel=True)
    rng = np.random.default_rng(0)
    return np.clip(gt * 230 + rng.integers(0, 40, gt.shape), 0, 255).astype(np.uint8)


@pytest.fixture()
def pascal(tmp_path):
    root = tmp_path / "PASCALContext"
    (root / "pascal-context" / "trainval").mkdir(parents=True)
    (root / "ImageSets" / "Context").mkdir(parents=True)
    (root / "ImageSets" / "Context" / "val.txt").write_text("\r\n".join(IDS) + "\r\n")
    preds = tmp_path / "results" / "edge"
    preds.mkdir(parents=True)
    for i, image_id in enumerate(IDS):
        lab = _labels(i)
        scipy.io.savemat(root / "pascal-context" / "trainval" / f"{image_id}.mat", {"LabelMap": lab})
        cv2.imwrite(str(preds / f"{image_id}.png"), _pred(lab))
    return root, tmp_path / "results"


def test_runner_matches_direct_computation_and_resumes(pascal, tmp_path):
    root, results = pascal
    out = tmp_path / "eval"
    res = evaluate_boundaries("PASCALContext", root, out, pred_dir=results, mode="fast", workers=1)
    counts = np.stack([eval_image(_pred(_labels(i)), build_gt(_labels(i).astype(np.int32), True), MAX_DIST["pascal"])
                       for i in range(len(IDS))])
    assert res["scores"]["ods_f"] == pytest.approx(aggregate(counts, HED_THRESHOLDS).ods_f)
    assert not res["published_protocol"] and "NOT the published protocol" in res["protocol"]
    assert "NOT the published protocol" in (out / "boundary_fast.txt").read_text()
    assert json.loads((out / "boundary_fast.json").read_text())["stamp"]["matcher"] == "hk"
    first = out / "per_image" / f"{IDS[0]}.npz"
    mtime = first.stat().st_mtime_ns
    for image_id in IDS[1:]:   # the resumed run recomputes only these, in a 2-process pool
        (out / "per_image" / f"{image_id}.npz").unlink()
    again = evaluate_boundaries("pascal", root, out, predictions={i: _pred(_labels(k)) for k, i in enumerate(IDS)},
                                mode="fast", workers=2)
    assert first.stat().st_mtime_ns == mtime and again["scores"] == res["scores"]
    proxy = evaluate_boundaries("pascal", root, out, pred_dir=results / "edge", mode="proxy")
    assert proxy["stamp"]["thresholds"] == "PROXY19" and "never comparable" in proxy["mode_description"]


class _ExitsWhenUnpickled:
    """A prediction whose arrival in a worker process ends that process, as the out-of-memory killer would."""

    def __reduce__(self):
        return os._exit, (3,)


def test_a_dead_worker_is_an_error_not_a_hang(pascal, tmp_path):
    root, _ = pascal
    predictions = {i: _pred(_labels(k)) for k, i in enumerate(IDS)}
    predictions[IDS[1]] = _ExitsWhenUnpickled()
    with pytest.raises(RuntimeError, match=r"boundary fast: a worker process died .*run again to resume"):
        evaluate_boundaries("pascal", root, tmp_path / "eval", predictions=predictions, mode="fast", workers=2)


def test_cli(pascal, tmp_path, capsys):
    root, results = pascal
    assert cli_main(["--dataset", "pascal", "--pred_dir", str(results), "--db_root", str(root),
                     "--out_dir", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "mode: fast" in out and "NOT the published protocol" in out and "odsF:" in out


def test_image_list_verdicts(tmp_path):
    ids = [f"{k:06d}" for k in range(2498)]
    path = tmp_path / "test_new.txt"
    path.write_text("\n".join(ids) + "\n")
    sel = resolve_image_list("pascal", tmp_path, path)
    assert not sel.published and "sha256" in sel.note and sel.sha256 == ids_sha256(ids)
    path.write_text("\n".join(ids[:10]))
    assert "10 ids" in resolve_image_list("pascal", tmp_path, path).note
    with pytest.raises(FileNotFoundError):
        resolve_image_list("nyud", tmp_path)


def test_modes():
    assert mode_for("csa", None) == "exact" and mode_for("hk", None) == "fast" and mode_for(None, "proxy") == "proxy"
    with pytest.raises(ValueError, match="uses the 'csa'"):
        mode_for("hk", "exact")


def test_nyud_edge_png_gt_and_in_memory_predictions(tmp_path):
    root = tmp_path / "NYUDv2"
    (root / "edge").mkdir(parents=True)
    (root / "gt_sets").mkdir()
    (root / "gt_sets" / "val.txt").write_text("0001\n0002\n")
    edge = np.zeros((40, 50), np.uint8)
    edge[20, 5:45] = 255                       # a 1-px stroke: GT is its (thinned) outline
    for image_id in ("0001", "0002"):
        cv2.imwrite(str(root / "edge" / f"{image_id}.png"), edge)
    gt = build_gt(edge.astype(np.int32), relabel=False)
    pred = (gt * 200).astype(np.uint8)
    res = evaluate_boundaries("NYUD", root, tmp_path / "eval", predictions={"0001": pred, "0002": pred})
    assert res["scores"]["ods_f"] == pytest.approx(1.0)
    assert "2 ids" in res["protocol"]         # not the 654-id published list

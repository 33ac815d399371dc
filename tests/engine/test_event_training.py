"""MambaSeg through main.py and the one trainer / evaluator, on synthetic DDD17 in the released formats (frames
extracted by the preparation code): training resumes bit for bit after a SIGKILL, best.pth is selected on the test
mIoU, TensorBoard gets frame | events | prediction | target grids, infer prints the mIoU / accuracy table, two ranks
train, and a 2-rank evaluation equals a 1-rank one. The same on DSEC-Semantic runs with ``MTL_HEAVY_TESTS=1``: its
model is built for 440x640, where the TSSM alone holds ~170 M parameters whatever the widths (minutes on a CPU).

Runs go through ``main.main`` in forked processes (:func:`tests.engine.test_reliability.run_forked`).
"""
from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import main as cli
import utils.trainer
from data.ddd17 import DDD17, extract_frames
from data.event_transforms import event_test_transforms
from data.synthetic_events import write_ddd17
from tests.engine.test_reliability import _equal, run_forked
from utils.checkpoint import load_checkpoint
from utils.config import load_config
from utils.visualize import event_image

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {"DDD17": REPO / "configs/mambaseg_ddd17.yml", "DSEC": REPO / "configs/mambaseg_dsec.yml"}
# the released recipe at the real input size, with tiny encoders and head
TINY = ["model.mambaseg.dims=[16,16,32,32]", "model.mambaseg.depths=[1,1,1,1]", "model.mambaseg.head_dim=16",
        "trBatch=1", "valBatch=1", "nworkers=0", "log_interval=1"]
RESUME_OPTS = ["max_iter=2", "ckpt_interval=1", "val_interval=2"]     # validation (and best.pth) at iteration 2


def train_argv(dataset: str, db_root: Path, out: Path, *opts: str) -> list[str]:
    return ["--run_mode", "train", "--config_exp", str(CONFIGS[dataset]), "--opts", f"db_root={db_root}",
            f"out_dir={out}", *TINY, *opts]


def infer_argv(dataset: str, db_root: Path, out: Path, checkpoint: Path) -> list[str]:
    return ["--run_mode", "infer", "--config_exp", str(CONFIGS[dataset]), "--trained_model", str(checkpoint),
            "--opts", f"db_root={db_root}", f"out_dir={out}", *TINY]


def kill_at_step(n: int):
    """SIGKILL as the ``n``-th training step starts (after the checkpoint of step n − 1)."""
    def hook(rank):
        original, count = utils.trainer.Trainer.step, [0]

        def step(self, batch):
            count[0] += 1
            if count[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, batch)
        utils.trainer.Trainer.step = step
    return hook


def check_resume_is_exact(dataset: str, db_root: Path, straight: Path, tmp_path: Path) -> Path:
    """Kill a run at its 2nd step, resume it, and compare it bit for bit with ``straight`` (the same run, never
    interrupted); returns the resumed run folder."""
    argv = train_argv(dataset, db_root, tmp_path, *RESUME_OPTS)
    run = tmp_path / straight.name
    assert run_forked(argv, 1, kill_at_step(2)) == [-signal.SIGKILL]
    assert load_checkpoint(run / "checkpoints" / "last.pth")["iteration"] == 1
    assert run_forked(argv) == [0]
    for name in ("last.pth", "best.pth"):
        a, b = load_checkpoint(straight / "checkpoints" / name), load_checkpoint(run / "checkpoints" / name)
        for key in ("model", "optimizer", "scheduler", "iteration", "best_score", "rng"):
            assert _equal(a[key], b[key]), (name, key)
    return run


def check_infer_table(dataset: str, db_root: Path, run: Path, tmp_path: Path, capsys) -> dict:
    """``infer`` of best.pth on one rank prints the table; best.pth holds the test mIoU of the validation it was
    selected on, which infer reproduces exactly."""
    best = run / "checkpoints" / "best.pth"
    capsys.readouterr()
    assert cli.main(infer_argv(dataset, db_root, tmp_path, best)) == 0
    table = capsys.readouterr().out
    results = json.loads((tmp_path / run.name / "metrics.json").read_text())["results"]
    miou, acc = results["semseg"]["mIoU"], results["semseg"]["acc"]
    assert f"{dataset} test split" in table and f"| semseg | mIoU↑ | {miou:.4f} |" in table \
        and f"| semseg | acc | {acc:.4f} |" in table
    assert "Δm: n/a (one task; Δm compares a multi-task model with single-task ones)" in table
    assert 0 <= miou <= 100 and 0 <= acc <= 100
    assert load_checkpoint(best)["best_score"] == miou
    return results


# ---------------------------------------------------------------------------------------------------------- DDD17
@pytest.fixture(scope="module")
def ddd17_db(tmp_path_factory):
    """db_root of a synthetic DDD17 (2 labelled frames per recording: 10 train, 2 test), its frames extracted."""
    db = tmp_path_factory.mktemp("ddd17_db")
    extract_frames(write_ddd17(db, n_frames=4, first_label=2, events_per_frame=300), progress=False)
    return db


@pytest.fixture(scope="module")
def ddd17_run(ddd17_db, tmp_path_factory):
    """An uninterrupted 2-iteration run on one rank."""
    out = tmp_path_factory.mktemp("straight")
    assert run_forked(train_argv("DDD17", ddd17_db, out, *RESUME_OPTS)) == [0]
    return out / "mambaseg_ddd17"


def test_ddd17_resume_is_exact_best_on_test_miou_and_grids(ddd17_db, ddd17_run, tmp_path):
    run = check_resume_is_exact("DDD17", ddd17_db, ddd17_run, tmp_path)
    log = (run / "log.txt").read_text()
    assert "DDD17 has no val split: validation runs on its test split, and best.pth is selected on the test split, " \
           "as the official code does" in log
    assert "best.pth: iteration 2, best semseg mIoU" in log and "on the test split" in log
    assert "effective batch 1 = 1 rank(s) x trBatch 1 x accum_steps 1; max_iter 2 = 0.20 epochs of 10.0 optimiser " \
           "steps (10 training images)" in log

    # TensorBoard: frame | event image | prediction | target of the first test sample
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tb = EventAccumulator(str(ddd17_run / "tb"), size_guidance={"images": 0})
    tb.Reload()
    (shot,) = tb.Images("val/semseg")
    grid = cv2.cvtColor(cv2.imdecode(np.frombuffer(shot.encoded_image_string, np.uint8), cv2.IMREAD_COLOR),
                        cv2.COLOR_BGR2RGB)
    assert (shot.step, grid.shape) == (2, (200, 4 * 346, 3))
    sample = DDD17(ddd17_db / "DDD17", "test", transform=event_test_transforms())[0]
    frame = (sample["image"][0] * 255).round().to(torch.uint8).numpy()
    for c in range(3):
        assert np.array_equal(grid[:, :346, c], frame)
    assert np.array_equal(grid[:, 346:692], event_image(sample["events"]).permute(1, 2, 0).numpy())


def test_ddd17_two_ranks_train_and_evaluate_as_one(ddd17_db, tmp_path, capsys):
    """Two ranks train through DDP and validate one test frame each; best.pth keeps that 2-rank mIoU, and a 1-rank
    infer of best.pth prints the same mIoU and accuracy: one confusion matrix over the split, merged across ranks."""
    assert run_forked(train_argv("DDD17", ddd17_db, tmp_path / "ddp", "max_iter=1"), world=2) == [0, 0]
    run = tmp_path / "ddp" / "mambaseg_ddd17"
    state = load_checkpoint(run / "checkpoints" / "last.pth")
    assert state["iteration"] == 1 and len(state["rng"]) == 2
    one_rank = check_infer_table("DDD17", ddd17_db, run, tmp_path / "infer", capsys)["semseg"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tb = EventAccumulator(str(run / "tb"))
    tb.Reload()
    two_ranks = {name: tb.Scalars(f"val/semseg/{name}")[0].value for name in ("mIoU", "acc")}   # float32
    assert two_ranks == pytest.approx({k: one_rank[k] for k in two_ranks}, rel=1e-6)


# ----------------------------------------------------------------------------------------------------------- DSEC
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MTL_HEAVY_TESTS"),
                    reason="DSEC MambaSeg is built for 440x640 (~170 M TSSM parameters at any width): minutes on a "
                           "CPU; set MTL_HEAVY_TESTS=1")
def test_dsec_resume_is_exact_and_infer_table(tmp_path, capsys):
    from data.dsec import make_ev_inf
    from data.synthetic_events import write_dsec
    db = tmp_path / "db"
    make_ev_inf(write_dsec(db, n_labels=7, events_per_label=400, frame_size=(135, 180)), progress=False)
    assert run_forked(train_argv("DSEC", db, tmp_path / "straight", *RESUME_OPTS)) == [0]
    straight = tmp_path / "straight" / "mambaseg_dsec"
    check_resume_is_exact("DSEC", db, straight, tmp_path / "resumed")
    check_infer_table("DSEC", db, straight, tmp_path / "infer", capsys)


# --------------------------------------------------------------------------------------------------------- recipe
@pytest.mark.parametrize("dataset,lr,batch,seed,train_size", [("DDD17", 2e-4, 12, 1, 15950),
                                                               ("DSEC", 3e-5, 4, 2, 4017)])
def test_recipe_configs(dataset, lr, batch, seed, train_size):
    """MAMBASEG.md §6: AdamW with torch's defaults, constant LR, 60 epochs of the official ceil(N/batch) steps,
    validation every epoch, plain cross-entropy, fp32."""
    cfg = load_config(CONFIGS[dataset])
    assert (cfg.optimizer, cfg.scheduler, cfg.amp, cfg.loss_kwargs.loss_scheme) == ("adamw", "constant", None, "sum")
    kwargs = cfg.optimizer_kwargs
    assert (kwargs.lr, kwargs.weight_decay, list(kwargs.betas), kwargs.eps) == (lr, 0.01, [0.9, 0.999], 1e-8)
    assert (cfg.trBatch, cfg.valBatch, cfg.seed) == (batch, batch, seed)
    per_epoch = math.ceil(train_size / batch)
    assert cfg.max_iter == 60 * per_epoch and cfg.val_interval == per_epoch
    assert (cfg.train_db_name, cfg.val_db_name, cfg.TASKS.NAMES) == (dataset, dataset, ["semseg"])

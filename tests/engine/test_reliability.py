"""Crash safety of the training loop: SIGKILL at each phase and resume, exit codes, run records, named failures.

Runs go through ``main.main`` in forked processes (no interpreter start-up per run); a 2-rank run is two forked
processes joined by gloo, and when one dies the others are killed, as torchrun does.
"""
from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import main as cli
import utils.checkpoint
import utils.trainer
from data.synthetic import write_nyud
from tests.processes import free_port, run_ranks
from utils.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "demo_nyud.yml")
TINY = ["model.backbone_kwargs.embed_dim=16", "model.backbone_kwargs.num_heads=[1,1,2,2]", "model.stm_blocks=1",
        "TRAIN.SCALE=[64,96]", "TEST.SCALE=[64,64]", "trBatch=2", "valBatch=2", "nworkers=0", "log_interval=1",
        "eval_boundary=false"]
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability_data")
    write_nyud(root, n_train=6, n_val=3, size=(45, 56))
    return root


def _child(rank: int, world: int, port: int, argv: list[str], hook) -> None:
    for name in TORCHRUN_ENV:
        os.environ.pop(name, None)
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    if hook is not None:
        hook(rank)
    code = cli.main(argv)
    os._exit(code)


def run_forked(argv: list[str], world: int = 1, hook=None, timeout: float = 120) -> list[int]:
    """``main.main(argv)`` in ``world`` forked processes; returns their exit codes (-9 = SIGKILL)."""
    port = free_port()
    return run_ranks(_child, [(r, world, port, argv, hook) for r in range(world)], timeout)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_inside_step(n: int, on_rank: int):
    """SIGKILL between backward and the optimizer update of the ``n``-th step."""
    def hook(rank):
        if rank != on_rank:
            return
        original, count = torch.amp.GradScaler.step, [0]

        def step(self, *args, **kwargs):
            count[0] += 1
            if count[0] == n:
                _kill_self()
            return original(self, *args, **kwargs)
        torch.amp.GradScaler.step = step
    return hook


def kill_inside_validation(n: int, on_rank: int):
    """SIGKILL as the ``n``-th validation of the process starts (right after a periodic save)."""
    def hook(rank):
        if rank != on_rank:
            return
        original, count = utils.trainer.evaluate, [0]

        def evaluate(*args, **kwargs):
            count[0] += 1
            if count[0] == n:
                _kill_self()
            return original(*args, **kwargs)
        utils.trainer.evaluate = evaluate
    return hook


def kill_inside_save():
    """SIGKILL half-way through the first write of last.pth (rank 0 writes), leaving its temp file behind."""
    def hook(rank):
        original = utils.checkpoint.atomic_write

        def atomic_write(path, write):
            if Path(path).name != "last.pth":
                return original(path, write)

            def partial(f):
                f.write(b"\0" * 4096)
                f.flush()
                _kill_self()
            return original(path, partial)
        utils.checkpoint.atomic_write = atomic_write
    return hook


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("world", [1, 2])
def test_sigkill_at_every_phase_then_resume_is_bitwise_exact(world, data_root, tmp_path):
    opts = [f"db_root={data_root}", "max_iter=6", "ckpt_interval=2", "val_interval=2", *TINY]

    def argv(out):
        return ["--run_mode", "train", "--config_exp", DEMO, "--opts", f"out_dir={out}", *opts]

    assert run_forked(argv(tmp_path / "straight"), world) == [0] * world
    crashed = argv(tmp_path / "crashed")
    ckpt_dir = tmp_path / "crashed" / "demo_nyud" / "checkpoints"
    killed_rank = world - 1                             # the last rank dies inside a step

    assert -signal.SIGKILL in run_forked(crashed, world, kill_inside_step(3, killed_rank))
    state = load_checkpoint(ckpt_dir / "last.pth")
    assert (state["iteration"], state["validated_at"]) == (2, 0)     # saved just before validating at 2
    # the resumed run validates at 2 again, trains to 4, saves, and dies in the validation at 4
    assert -signal.SIGKILL in run_forked(crashed, world, kill_inside_validation(2, 0))
    state = load_checkpoint(ckpt_dir / "last.pth")
    assert (state["iteration"], state["validated_at"]) == (4, 2)
    assert -signal.SIGKILL in run_forked(crashed, world, kill_inside_save())
    assert load_checkpoint(ckpt_dir / "last.pth")["iteration"] == 4
    assert list(ckpt_dir.glob(".last.pth.*.tmp"))                    # the killed save's temp file
    assert run_forked(crashed, world) == [0] * world

    assert not list(ckpt_dir.glob(".*.tmp"))                         # removed at start
    a = load_checkpoint(tmp_path / "straight" / "demo_nyud" / "checkpoints" / "last.pth")
    b = load_checkpoint(ckpt_dir / "last.pth")
    assert len(b["rng"]) == world
    for key in ("model", "optimizer", "scheduler", "iteration", "best_score", "rng"):
        assert _equal(a[key], b[key]), key
    best_a = load_checkpoint(tmp_path / "straight" / "demo_nyud" / "checkpoints" / "best.pth")
    best_b = load_checkpoint(ckpt_dir / "best.pth")
    assert best_a["iteration"] == best_b["iteration"] and _equal(best_a["model"], best_b["model"])


def test_sigterm_saves_and_exits_143(data_root, tmp_path):
    def hook(rank):
        original, count = torch.amp.GradScaler.step, [0]

        def step(self, *args, **kwargs):
            count[0] += 1
            if count[0] == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(self, *args, **kwargs)
        torch.amp.GradScaler.step = step

    argv = ["--run_mode", "train", "--config_exp", DEMO, "--opts", f"db_root={data_root}", f"out_dir={tmp_path}",
            "max_iter=10", "val_interval=1000", *TINY]
    assert run_forked(argv, 1, hook) == [128 + signal.SIGTERM]
    assert load_checkpoint(tmp_path / "demo_nyud" / "checkpoints" / "last.pth")["iteration"] == 2


def test_run_records_infer_and_changed_resume(data_root, tmp_path, capsys):
    """infer leaves config.yaml alone; a resume with other settings is refused with the keys listed, and applied
    (really: the learning rate follows) with --apply_config_changes."""
    base = ["--config_exp", DEMO, "--opts", f"db_root={data_root}", f"out_dir={tmp_path}", "val_interval=1000",
            *TINY]
    assert cli.main(["--run_mode", "train", *base, "max_iter=2"]) == 0
    run = tmp_path / "demo_nyud"
    recorded = (run / "config.yaml").read_text()
    assert cli.main(["--run_mode", "infer", "--trained_model", str(run / "checkpoints" / "last.pth"), *base,
                     "valBatch=1"]) == 0
    assert (run / "config.yaml").read_text() == recorded
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["valBatch"] == 1 and metrics["iteration"] == 2

    capsys.readouterr()
    changed = ["--run_mode", "train", *base, "max_iter=8", "optimizer_kwargs.lr=0.5"]
    assert cli.main(changed) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ConfigError") and "max_iter: 2 -> 8" in line \
        and "optimizer_kwargs.lr: 0.0002 -> 0.5" in line and "--apply_config_changes" in line
    log = (run / "log.txt").read_text()                                  # the traceback goes to log.txt
    assert "Traceback (most recent call last)" in log and "utils.config.ConfigError: the config differs" in log
    assert (run / "config.yaml").read_text() == recorded and load_checkpoint(run / "checkpoints" / "last.pth")[
        "iteration"] == 2

    from utils.config import load_config
    from utils.distributed import init_distributed
    cfg = load_config(DEMO, [*base[3:], "max_iter=8", "optimizer_kwargs.lr=0.5"])
    trainer = utils.trainer.Trainer(cfg, run, init_distributed())
    trainer.resume(trainer.ckpt_dir / "last.pth", apply_changes=True)
    trainer.fit(until=3)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * (1 - 3 / 8) ** 0.9, rel=1e-12)
    assert yaml.safe_load((run / "config.yaml").read_text())["optimizer_kwargs"]["lr"] == 0.5
    history = yaml.safe_load((run / "config_changes.yaml").read_text())
    assert history[0]["iteration"] == 2 and history[0]["changes"]["max_iter"] == {"old": 2, "new": 8}


def test_nonfinite_ground_truth_and_weights_are_named(tmp_path, caplog):
    """NaN in one depth map and in the edge head's weights: metrics.json is written, the bad tasks are marked and
    named with their images, Δm says n/a, and validation says why best.pth was not written."""
    from evaluation.evaluator import infer
    from models import build_model
    from utils.config import load_config
    from utils.distributed import init_distributed

    root = tmp_path / "data"
    write_nyud(root, n_train=2, n_val=3, size=(45, 56))
    depth = np.load(root / "NYUDv2" / "depth" / "0002.npy")
    depth[20:25, 30:40] = np.nan
    np.save(root / "NYUDv2" / "depth" / "0002.npy", depth)
    cfg = load_config(DEMO, [f"db_root={root}", f"out_dir={tmp_path}", *TINY])
    model = build_model(cfg)
    with torch.no_grad():
        model.heads["edge"].project.weight[0, 0] = math.nan
    torch.save({"model": model.state_dict()}, tmp_path / "nan.pth")

    results = infer(cfg, tmp_path / "nan.pth")
    assert math.isnan(results["depth"]["rmse"]) and math.isfinite(results["semseg"]["mIoU"])
    saved = json.loads((tmp_path / "demo_nyud" / "metrics.json").read_text())
    assert saved["results"]["depth"]["rmse"] is None and saved["results"]["semseg"]["mIoU"] is not None
    assert saved["nonfinite"] == {"depth": {"ground_truth": ["0002"]},
                                  "edge": {"predictions": ["0001", "0002", "0003"]}}
    assert saved["delta_m"].startswith("Δm proxy (validation): n/a (non-finite metric for depth)")
    assert "n/a (non-finite)" in (tmp_path / "demo_nyud" / "metrics.md").read_text()

    trainer = utils.trainer.Trainer(cfg, tmp_path / "run", init_distributed())
    with caplog.at_level("WARNING"):
        trainer.validate()
    assert "best.pth not updated at iteration 0: the validation has non-finite depth ground truth on 1 image(s) " \
           "(0002)" in caplog.text
    assert not (trainer.ckpt_dir / "best.pth").exists()

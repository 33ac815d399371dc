"""The pieces that let one trainer and one evaluator serve every model: the inputs a model declares, the metric
best.pth is selected on, the single-task Δm line and table title, and the constant learning-rate schedule."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from easydict import EasyDict

import utils.trainer
from evaluation.delta_m import format_delta_m
from evaluation.evaluator import Evaluation, metrics_table, selection_metric
from models import batch_inputs, model_inputs
from utils.config import ConfigError, load_config
from utils.optim import build_scheduler
from utils.trainer import Trainer

DDD17_CONFIG = Path(__file__).resolve().parents[2] / "configs/mambaseg_ddd17.yml"


class TwoInputs(nn.Module):
    inputs = ("image", "events")

    def forward(self, image, events):
        return {"semseg": image + events.sum(1, keepdim=True)}


def test_models_are_fed_the_batch_keys_they_declare():
    assert model_inputs(nn.Identity()) == ("image",)
    model = TwoInputs()
    assert model_inputs(model) == ("image", "events")
    batch = {"image": torch.ones(2, 1, 3, 4), "events": torch.arange(24.0).view(2, 3, 1, 4), "semseg": None,
             "meta": {}}
    args = batch_inputs(model, batch, torch.device("cpu"))
    assert len(args) == 2 and args[0] is batch["image"] and args[1] is batch["events"]
    assert torch.equal(model(*args)["semseg"], batch["image"] + batch["events"].sum(1, keepdim=True))
    with pytest.raises(ValueError, match=r"TwoInputs takes the inputs \['image', 'events'\], but the batch has no "
                                         r"\['events'\] \(batch keys: \['image', 'meta'\]\)"):
        batch_inputs(model, {"image": batch["image"], "meta": {}}, torch.device("cpu"))


def test_selection_metric():
    assert selection_metric({"semseg": {"mIoU": 50.0, "acc": 90.0}}) == ("semseg", "mIoU", True)
    assert selection_metric({"depth": {"rmse": 0.5}}) == ("depth", "rmse", False)
    assert selection_metric({"semseg": {"mIoU": 50.0}, "depth": {"rmse": 0.5}}) is None
    assert selection_metric({"semseg": {"mIoU": 50.0}, "depth": {"rmse": 0.5},
                             "delta_m_proxy": {"value": -1.0}}) == ("delta_m_proxy", "value", True)


@pytest.mark.parametrize("dataset,runs,saved", [
    ("DDD17", [{"semseg": {"mIoU": 40.0, "acc": 90.0}}, {"semseg": {"mIoU": 35.0, "acc": 95.0}},
               {"semseg": {"mIoU": 50.0, "acc": 80.0}}], [1, 3]),                        # higher mIoU wins
    ("Cityscapes", [{"depth": {"rmse": 9.0}}, {"depth": {"rmse": 7.0}}, {"depth": {"rmse": 8.0}}], [1, 2]),
    ("PASCALContext", [{"semseg": {"mIoU": 40.0}, "sal": {"maxF": 60.0}},                # no criterion: every one
                       {"semseg": {"mIoU": 30.0}, "sal": {"maxF": 50.0}}], [1, 2]),
])
def test_best_checkpoint_follows_the_selection_metric(dataset, runs, saved, monkeypatch):
    trainer = Trainer.__new__(Trainer)          # the validation bookkeeping alone: no model, no data
    trainer.cfg = EasyDict(train_db_name=dataset, val_db_name=dataset)
    trainer.model = trainer.val_loader = trainer.device = trainer.amp_dtype = trainer.writer = None
    trainer.best_score, trainer.validated_at, writes = -math.inf, 0, []
    trainer.save = lambda name: writes.append((trainer.iteration, name))
    results = iter(runs)
    monkeypatch.setattr(utils.trainer, "evaluate", lambda *args, **kwargs: Evaluation(next(results)))
    for trainer.iteration in range(1, len(runs) + 1):
        trainer.validate()
    assert writes == [(i, "best.pth") for i in saved]
    if dataset == "DDD17":
        assert trainer.best_score == 50.0
    if dataset == "Cityscapes":
        assert trainer.best_score == -7.0


def test_single_task_delta_line_and_table():
    results = {"semseg": {"acc": 96.3312, "mIoU": 77.5612}}
    for dataset in ("DDD17", "DSEC", "Cityscapes"):
        assert format_delta_m(dataset, results) == \
            "Δm: n/a (one task; Δm compares a multi-task model with single-task ones)"
    assert format_delta_m("PASCALContext") == "Δm: n/a (no published single-task baseline)"
    table = metrics_table(results, "DDD17", format_delta_m("DDD17", results), split="test split")
    assert table.splitlines() == ["DDD17 test split", "", "| task | metric | value |", "|---|---|---|",
                                  "| semseg | mIoU↑ | 77.5612 |", "| semseg | acc | 96.3312 |", "",
                                  "Δm: n/a (one task; Δm compares a multi-task model with single-task ones)"]


def test_constant_schedule():
    cfg = load_config(DDD17_CONFIG)
    params = [nn.Parameter(torch.zeros(3))]
    optimizer = torch.optim.AdamW(params, lr=2e-4)
    scheduler = build_scheduler(cfg, optimizer)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == 2e-4
    assert scheduler.state_dict()["last_epoch"] == 5
    poly = load_config(DDD17_CONFIG, ["scheduler=poly", "max_iter=10"])
    optimizer = torch.optim.AdamW(params, lr=2e-4)
    scheduler = build_scheduler(poly, optimizer)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * 0.9 ** 0.9, rel=1e-12)
    with pytest.raises(ConfigError, match=r"scheduler='cosine' is not valid; valid: \['poly', 'constant'\]"):
        load_config(DDD17_CONFIG, ["scheduler=cosine"])

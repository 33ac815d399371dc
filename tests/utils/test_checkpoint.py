"""utils.checkpoint: atomic saves, checked loads, key/shape reports, RNG round trip."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import utils.checkpoint as ckpt
from utils.checkpoint import (CheckpointError, load_checkpoint, load_model_state, rng_state, save_checkpoint,
                              set_rng_state)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def _train_state(model: nn.Module) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    sched.step()
    return {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(), "iteration": 7, "best_score": 0.25, "rng": rng_state(),
        "config": {"version_name": "run", "TASKS": {"NAMES": ["semseg", "depth"]}, "lr": 1e-3, "amp": False,
                   "resume": None},
    }


def test_round_trip_model_optimizer_rng(tmp_path: Path):
    model = _model()
    state = _train_state(model)
    path = tmp_path / "sub" / "dir" / "last.pth"
    save_checkpoint(path, state)
    assert path.is_file()
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind

    loaded = load_checkpoint(path)  # weights_only=True must work for our own format
    assert loaded["iteration"] == 7 and loaded["best_score"] == 0.25
    assert loaded["config"] == state["config"]

    fresh = _model()
    for p in fresh.parameters():
        nn.init.zeros_(p)
    assert load_model_state(fresh, loaded["model"]).__bool__() is False
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k

    opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    opt.load_state_dict(loaded["optimizer"])
    assert opt.state_dict()["state"][0]["step"] == state["optimizer"]["state"][0]["step"]
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    sched.load_state_dict(loaded["scheduler"])
    assert sched.last_epoch == 1


def test_rng_round_trip(tmp_path: Path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()
    save_checkpoint(tmp_path / "rng.pth", {"rng": rng_state()})
    expected = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(),
                torch.rand(3).tolist())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(),
           torch.rand(3).tolist())
    assert got == expected


def test_interrupted_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "last.pth"
    save_checkpoint(path, {"iteration": 1, "w": torch.ones(3)})
    real_save = torch.save

    def partial_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", partial_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"iteration": 2, "w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)

    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]
    loaded = load_checkpoint(path)
    assert loaded["iteration"] == 1 and torch.equal(loaded["w"], torch.ones(3))


def test_missing_file_names_path(tmp_path: Path):
    path = tmp_path / "nope" / "last.pth"
    with pytest.raises(CheckpointError, match="not found") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_corrupt_file_names_path(tmp_path: Path, content):
    path = tmp_path / "bad.pth"
    if content == "truncated":
        save_checkpoint(path, {"w": torch.randn(1000)})
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_foreign_objects_refused_with_weights_only(tmp_path: Path):
    path = tmp_path / "obj.pth"
    torch.save({"opt": torch.optim.SGD}, path)  # a class: not loadable with weights_only
    with pytest.raises(CheckpointError, match="weights_only=False") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert load_checkpoint(path, weights_only=False)["opt"] is torch.optim.SGD


def test_non_dict_checkpoint_rejected(tmp_path: Path):
    path = tmp_path / "t.pth"
    torch.save(torch.zeros(2), path)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(path)


def test_mismatches_listed_key_by_key_and_model_untouched():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in model.state_dict().items()}
    sd["0.weight"] = torch.zeros(5, 3, 3, 3)
    del sd["3.bias"]
    sd["head.extra"] = torch.zeros(2, 2)
    with pytest.raises(CheckpointError) as info:
        load_model_state(model, sd)
    msg = str(info.value)
    assert "0.weight: expected (4, 3, 3, 3) got (5, 3, 3, 3)" in msg
    assert "3.bias: missing from checkpoint (expected (2))" in msg
    assert "head.extra: unexpected, not in model (got (2, 2))" in msg
    assert "1 missing, 1 unexpected, 1 shape mismatches" in msg
    for k, v in model.state_dict().items():  # compared before loading: nothing changed
        assert torch.equal(v, before[k]), k


def test_non_strict_loads_the_rest(caplog: pytest.LogCaptureFixture):
    model = _model()
    sd = {k: torch.full_like(v, 3) for k, v in model.state_dict().items()}
    sd["0.weight"] = torch.zeros(5, 3, 3, 3)
    del sd["3.bias"]
    sd["extra"] = torch.zeros(1)
    old_w0, old_b3 = model[0].weight.clone(), model[3].bias.clone()
    with caplog.at_level("WARNING"):
        result = load_model_state(model, sd, strict=False)
    assert result.missing == ["3.bias"] and result.unexpected == ["extra"]
    assert result.mismatched == [("0.weight", (4, 3, 3, 3), (5, 3, 3, 3))]
    assert torch.equal(model[0].weight, old_w0) and torch.equal(model[3].bias, old_b3)
    assert torch.all(model[3].weight == 3) and torch.all(model[0].bias == 3)
    assert "0.weight: expected (4, 3, 3, 3) got (5, 3, 3, 3)" in caplog.text


def test_long_report_is_capped():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(30)])
    with pytest.raises(CheckpointError) as info:
        load_model_state(model, {})
    msg = str(info.value)
    assert "60 missing" in msg
    assert f"... and {60 - ckpt.MAX_LISTED_KEYS} more" in msg
    assert msg.count("missing from checkpoint") == ckpt.MAX_LISTED_KEYS


def test_ddp_prefix_stripped_and_wrapper_unwrapped():
    src = _model()
    prefixed = {f"module.{k}": v for k, v in src.state_dict().items()}
    dst = _model()
    for p in dst.parameters():
        nn.init.zeros_(p)
    load_model_state(dst, prefixed)
    assert torch.equal(dst[0].weight, src[0].weight)

    wrapped = nn.DataParallel(_model())  # same .module unwrapping as DistributedDataParallel
    for p in wrapped.parameters():
        nn.init.zeros_(p)
    load_model_state(wrapped, prefixed)
    assert torch.equal(wrapped.module[3].weight, src[3].weight)


def test_model_with_module_child_keeps_prefix():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(2, 2)

    src, dst = Holder(), Holder()
    load_model_state(dst, src.state_dict())  # keys "module.weight" belong to the model itself
    assert torch.equal(dst.module.weight, src.module.weight)

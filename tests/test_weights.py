"""Encoder weights: without internet, model.pretrained fails within seconds and says how to bring the file."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

import models.encoders
import models.weights
from data.io import DatasetError
from models.encoders import SwinEncoder
from models.weights import PretrainedWeightsError, hub_reachable
from utils.config import load_config
from utils.distributed import init_distributed
from utils.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def test_unreachable_hub_is_detected_quickly(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")          # nothing listens there
    start = time.monotonic()
    assert hub_reachable(timeout=2) is False
    assert time.monotonic() - start < 3


def test_offline_pretrained_fails_fast_naming_pretrained_path(monkeypatch):
    monkeypatch.setattr(models.weights, "_cached", lambda name: False)
    monkeypatch.setattr(models.weights, "hub_reachable", lambda timeout=models.weights.HUB_TIMEOUT_S: False)
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError, match=r"'swin_tiny_patch4_window7_224'.*cannot be reached \(offline\?\)"
                                                     r".*model\.pretrained_path=FILE"):
        SwinEncoder("swin_tiny", img_size=224, pretrained=True)
    assert time.monotonic() - start < 5


def test_missing_dataset_is_named_before_any_download(monkeypatch, tmp_path):
    def no_download(*args, **kwargs):
        raise AssertionError("weights were requested before the dataset was checked")

    monkeypatch.setattr(models.encoders, "create_timm_model", no_download)
    cfg = load_config(REPO / "configs" / "mtmamba_nyud.yml", [f"db_root={tmp_path / 'nowhere'}"])
    assert cfg.model.pretrained is True
    with pytest.raises(DatasetError, match=r"nowhere/NYUDv2 does not exist"):
        Trainer(cfg, tmp_path / "run", init_distributed())

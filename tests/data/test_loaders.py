"""collate_mil (DATA.md §4.3) and build_dataloaders(cfg) on the synthetic datasets."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data import build_dataloaders, resolve_db_root, seed_worker
from data.collate import collate_mil
from utils.config import load_config

from tests.data.conftest import NYUD_SIZE, NYUD_TEMPLATE, PASCAL_TEMPLATE


def test_collate_rules():
    batch = [{"image": torch.zeros(3, 4, 5), "arr": np.ones((2, 2), np.float32), "index": i, "edgeidx": 1,
              "sample_idx": 7, "meta": {"img_name": f"id{i}", "img_size": (4, 5)}} for i in range(3)]
    out = collate_mil(batch)
    assert out["image"].shape == (3, 3, 4, 5) and out["arr"].shape == (3, 2, 2)
    assert out["index"].dtype == torch.long and out["index"].tolist() == [0, 1, 2]
    assert "edgeidx" not in out and "sample_idx" not in out           # keys containing 'idx' are dropped
    assert out["meta"]["img_name"] == ["id0", "id1", "id2"]
    sizes = out["meta"]["img_size"]                                    # per sample, not transposed
    assert isinstance(sizes, list) and len(sizes) == 3
    assert all(s.dtype == torch.long and s.tolist() == [4, 5] for s in sizes)


def _cfg(name: str, db_root, workers: int = 0):
    path = {"nyud": "configs/mtmamba_nyud.yml", "pascal": "configs/mtmamba_pascal.yml"}[name]
    opts = [f"nworkers={workers}", "trBatch=2", "valBatch=2"] + ([f"db_root={db_root}"] if db_root else [])
    return load_config(path, opts)


@pytest.mark.parametrize("name", ["nyud", "pascal"])
def test_build_dataloaders(name, nyud_root, pascal_root):
    db_root = (nyud_root if name == "nyud" else pascal_root).parent
    template = NYUD_TEMPLATE if name == "nyud" else PASCAL_TEMPLATE
    train, val = build_dataloaders(_cfg(name, db_root))
    assert len(train.dataset) == 4 and len(val.dataset) == 2 and len(train) == 2
    tb, vb = next(iter(train)), next(iter(val))
    for b in (tb, vb):
        assert b["image"].shape == (2, 3) + template
        assert set(b) == {"image", "meta", *train.dataset.tasks}
        assert isinstance(b["meta"]["img_name"], list) and isinstance(b["meta"]["img_size"], list)
    assert vb["meta"]["img_name"] == val.dataset.ids                   # val is in order


def test_dataloader_reproducible_with_workers(nyud_root):
    cfg = _cfg("nyud", nyud_root.parent, workers=2)
    runs = [[b["image"] for b in build_dataloaders(cfg)[0]] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert [tuple(s.tolist()) for s in next(iter(build_dataloaders(cfg)[1]))["meta"]["img_size"]] == [NYUD_SIZE] * 2


def test_opencv_pool_is_off_before_workers_fork(nyud_root):
    """A running OpenCV pool inherited by forked workers can hang them; loaders with workers turn it off."""
    import cv2
    cv2.setNumThreads(2)
    cv2.resize(np.zeros((600, 800, 3), np.float32), (400, 300))    # the pool is running now
    try:
        train, _ = build_dataloaders(_cfg("nyud", nyud_root.parent, workers=2))
        assert cv2.getNumThreads() == 1
        assert len(list(torch.utils.data.DataLoader(train.dataset, num_workers=2, worker_init_fn=seed_worker,
                                                    collate_fn=train.collate_fn, timeout=60))) == len(train.dataset)
    finally:
        cv2.setNumThreads(-1)


def test_distributed_sampler(nyud_root, tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        train, val = build_dataloaders(_cfg("nyud", nyud_root.parent))
    finally:
        dist.destroy_process_group()
    assert isinstance(train.sampler, torch.utils.data.DistributedSampler)
    assert list(val.sampler) == list(range(len(val.dataset)))   # one rank: every image once, in order


def test_db_root_from_env(nyud_root, monkeypatch):
    cfg = _cfg("nyud", None)
    monkeypatch.delenv("MTL_DATA_ROOT", raising=False)
    with pytest.raises(ValueError, match="MTL_DATA_ROOT"):
        resolve_db_root(cfg)
    monkeypatch.setenv("MTL_DATA_ROOT", str(nyud_root.parent))
    assert resolve_db_root(cfg) == nyud_root.parent.resolve()
    assert len(build_dataloaders(cfg)[1].dataset) == 2


def test_package_import_is_light():
    code = "import sys, data; print(any(m in sys.modules for m in ('torch', 'cv2', 'scipy', 'data.nyud')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"

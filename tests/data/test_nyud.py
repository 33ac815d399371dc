"""NYUDv2 loader on a synthetic dataset: raw decoding (DATA.md §2.3) and the rules of §6.3 after transforms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from data.collate import collate_mil
from data.nyud import NYUD_CLASSES, NYUD_TASKS, NYUDv2
from data.transforms import PadImage, train_transforms
from data.transforms import test_transforms as build_test_transforms  # not collected by pytest
from tests.data.conftest import NYUD_SIZE, NYUD_TEMPLATE

TASKS = list(NYUD_TASKS)


def test_class_names():
    assert len(NYUD_CLASSES) == 40 and NYUD_CLASSES[0] == "wall" and NYUD_CLASSES[-1] == "otherprop"


@pytest.mark.parametrize("split,n", [("train", 4), ("val", 2)])
def test_raw_sample(nyud_root, split, n):
    ds = NYUDv2(nyud_root, split, TASKS)
    assert len(ds) == n
    s = ds[0]
    img_id = s["meta"]["img_name"]
    assert s["meta"]["img_size"] == NYUD_SIZE
    h, w = NYUD_SIZE
    assert s["image"].shape == (h, w, 3) and s["image"].dtype == np.float32
    for task, c in (("semseg", 1), ("depth", 1), ("normals", 3), ("edge", 1)):
        assert s[task].shape == (h, w, c) and s[task].dtype == np.float32, task
    stored = np.asarray(Image.open(nyud_root / "segmentation" / f"{img_id}.png")).astype(np.float32)
    # semseg shift: stored 0 -> 255, 1..40 -> 0..39
    np.testing.assert_array_equal(s["semseg"][..., 0], np.where(stored == 0, 255, stored - 1))
    np.testing.assert_array_equal(s["depth"][..., 0], np.load(nyud_root / "depth" / f"{img_id}.npy"))
    rgb = np.asarray(Image.open(nyud_root / "normals" / f"{img_id}.png")).astype(np.float32)
    np.testing.assert_allclose(s["normals"], 2 * rgb / 255 - 1, atol=1e-6)
    assert set(np.unique(s["edge"])) == {0.0, 1.0}


def test_every_class_occurs(nyud_root):
    seen = set()
    for split in ("train", "val"):
        ds = NYUDv2(nyud_root, split, ["semseg"])
        for i in range(len(ds)):
            seen |= set(np.unique(ds[i]["semseg"]).tolist())
    assert seen == set(range(40)) | {255}


def test_val_pipeline(nyud_root):
    ds = NYUDv2(nyud_root, "val", TASKS, transform=build_test_transforms(NYUD_TEMPLATE))
    raw = NYUDv2(nyud_root, "val", TASKS)
    batch = collate_mil([ds[0], ds[1]])
    H, W = NYUD_TEMPLATE
    assert batch["image"].shape == (2, 3, H, W)
    for task in ("semseg", "depth", "edge"):
        assert batch[task].shape == (2, 1, H, W)
    assert batch["normals"].shape == (2, 3, H, W)
    assert batch["meta"]["img_name"] == raw.ids
    assert [tuple(t.tolist()) for t in batch["meta"]["img_size"]] == [NYUD_SIZE, NYUD_SIZE]
    top, bottom, left, right = PadImage.offsets(*NYUD_SIZE, NYUD_TEMPLATE)
    h, w = NYUD_SIZE
    inside = np.zeros((H, W), dtype=bool)
    inside[top:top + h, left:left + w] = True
    r = raw[0]
    for task in ("semseg", "depth", "normals", "edge"):
        t = batch[task][0].numpy()
        assert (t[:, ~inside] == 255).all(), f"{task}: padding must be 255"
        inner = t[:, inside].reshape(t.shape[0], h, w).transpose(1, 2, 0)
        if task == "depth":  # depth-0 rule: invalid 0 -> 255, the rest kept in metres
            np.testing.assert_array_equal(inner, np.where(r["depth"] == 0, 255, r["depth"]))
            assert (inner > 0).all()
        else:
            np.testing.assert_array_equal(inner, r[task])
    img = batch["image"][0].numpy()
    assert (img[:, ~inside] == 0).all()
    semseg = set(np.unique(batch["semseg"]).tolist())
    assert semseg <= set(range(40)) | {255}


def test_train_pipeline_values(nyud_root):
    ds = NYUDv2(nyud_root, "train", TASKS, transform=train_transforms(NYUD_TEMPLATE, seed=1))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_mil)
    for batch in loader:
        H, W = NYUD_TEMPLATE
        assert batch["image"].shape == (2, 3, H, W)
        assert set(np.unique(batch["semseg"]).tolist()) <= set(range(40)) | {255}
        assert set(np.unique(batch["edge"]).tolist()) <= {0.0, 1.0, 255.0}
        n = batch["normals"]
        valid = (n != 255).all(1)
        assert valid.any() and (n.abs() <= 1).all(1)[valid].all()
        assert ((n == 255).all(1) | valid).all(), "normals are ignored in all channels or none"
        d = batch["depth"]
        assert ((d > 0) & (d != 255)).any() and (d > 0).all()
        assert isinstance(batch["meta"]["img_name"], list) and len(batch["meta"]["img_name"]) == 2


def test_relative_root(nyud_root, monkeypatch):
    monkeypatch.chdir(nyud_root.parent)
    ds = NYUDv2("NYUDv2", "val", ["edge"])
    assert ds.root == nyud_root.resolve() and ds[0]["edge"].shape[:2] == NYUD_SIZE

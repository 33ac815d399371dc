"""PASCAL-Context loader on a synthetic dataset: raw decoding (DATA.md §3.3–3.9), the parts cache (§3.6.4)
and the rules of §6.3 after transforms."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import data.pascal_context as pc
from data.collate import collate_mil
from data.edges import label_edges
from data.pascal_context import NORMALS_VALID_IDS, PASCAL_TASKS, PERSON_PART_GROUPS, PASCALContext
from data.synthetic import write_pascal
from data.transforms import PadImage, train_transforms
from data.transforms import test_transforms as build_test_transforms  # not collected by pytest
from tests.data.conftest import PASCAL_SIZE, PASCAL_TEMPLATE

TASKS = list(PASCAL_TASKS)


def _size(k: int) -> tuple[int, int]:
    return PASCAL_SIZE if k % 2 == 0 else PASCAL_SIZE[::-1]


def _labelmap(root, img_id):
    return scipy.io.loadmat(str(root / "pascal-context" / "trainval" / f"{img_id}.mat"))["LabelMap"]


def test_constants():
    assert NORMALS_VALID_IDS.size == 170 and len(set(NORMALS_VALID_IDS.tolist())) == 170
    assert {284, 427, 72, 59, 440, 158, 397, 368, 113, 65} <= set(NORMALS_VALID_IDS.tolist())
    assert not {0, 2, 25, 360, 187, 420, 445, 324, 44, 207, 431} & set(NORMALS_VALID_IDS.tolist())
    assert len(PERSON_PART_GROUPS) == 24 and set(PERSON_PART_GROUPS.values()) == set(range(1, 7))


@pytest.mark.parametrize("split", ["train", "val"])
def test_raw_sample(pascal_root, split):
    ds = PASCALContext(pascal_root, split, TASKS)
    offset = 0 if split == "train" else 4
    for i in range(len(ds)):
        s = ds[i]
        img_id = s["meta"]["img_name"]
        h, w = _size(i + offset)
        assert s["meta"]["img_size"] == (h, w)
        assert s["image"].shape == (h, w, 3) and s["image"].dtype == np.float32
        for task, c in (("semseg", 1), ("human_parts", 1), ("sal", 1), ("normals", 3), ("edge", 1)):
            assert s[task].shape == (h, w, c) and s[task].dtype == np.float32, task
        sub = "VOC12" if (i + offset) % 2 == 0 else "pascal-context"
        stored = np.asarray(Image.open(pascal_root / "semseg" / sub / f"{img_id}.png"))
        np.testing.assert_array_equal(s["semseg"][..., 0], stored)  # no remapping (§3.4)
        gray = np.asarray(Image.open(pascal_root / "sal_distill" / f"{img_id}.png")).astype(np.float32)
        np.testing.assert_array_equal(s["sal"][..., 0], (gray / 255 > 0.5).astype(np.float32))  # §3.8
        lm = _labelmap(pascal_root, img_id)
        assert lm.dtype == np.uint16
        # edges: non-empty, on label changes only, equal to the LabelMap rule (§3.5)
        edge = s["edge"][..., 0]
        assert edge.sum() > 0 and set(np.unique(edge)) <= {0.0, 1.0}
        np.testing.assert_array_equal(s["edge"], label_edges(lm))
        lmp = np.pad(lm.astype(np.int64), 1, mode="edge")
        changes = np.zeros(lm.shape, dtype=bool)
        for dy, dx in ((0, 1), (1, 0), (2, 1), (1, 2)):
            changes |= lmp[dy:dy + h, dx:dx + w] != lm
        assert not (edge.astype(bool) & ~changes).any()
        # normals: zero outside the valid ids, decoded inside (§3.7)
        valid = np.isin(lm, NORMALS_VALID_IDS)
        assert valid.any() and (~valid).any()
        assert (s["normals"][~valid] == 0).all()
        rgb = np.asarray(Image.open(pascal_root / "normals_distill" / f"{img_id}.png")).astype(np.float32)
        np.testing.assert_allclose(s["normals"][valid], 2 * rgb[valid] / 255 - 1, atol=1e-6)


def test_every_semseg_class_occurs(pascal_root):
    seen = set()
    for split in ("train", "val"):
        ds = PASCALContext(pascal_root, split, ["semseg"])
        for i in range(len(ds)):
            seen |= set(np.unique(ds[i]["semseg"]).tolist())
    assert seen == set(range(21)) | {255}


def test_human_parts_cases(pascal_root):
    ds = PASCALContext(pascal_root, "train", ["human_parts"] + ["semseg"])
    # case 0: person with parts -> every group 1..6 present; the 'head' cell (row 0, col 1 of the grid) is 1
    hp0 = ds[0]["human_parts"][..., 0]
    assert set(np.unique(hp0).tolist()) == set(range(7))
    anno = scipy.io.loadmat(str(pascal_root / "human_parts" / f"{ds.ids[0]}.mat"))["anno"]
    for part in anno[0][0][1][0][0][3][0]:
        name, mask = str(part[0][0]), np.asarray(part[1]).astype(bool)
        assert (hp0[mask] == PERSON_PART_GROUPS[name]).all(), name
    # cases 1 (dog only) and 3 (person without parts) -> all background before transforms
    assert (ds[1]["human_parts"] == 0).all() and (ds[3]["human_parts"] == 0).all()
    # case 2: person with parts plus other objects -> same parts as case 0 (same geometry)
    np.testing.assert_array_equal(ds[2]["human_parts"][..., 0], hp0)


def test_human_parts_all_ignore_after_transforms(pascal_root):
    for split, tf in (("val", build_test_transforms(PASCAL_TEMPLATE)), ("train", train_transforms(PASCAL_TEMPLATE, seed=0))):
        ds = PASCALContext(pascal_root, split, ["human_parts", "semseg"], transform=tf)
        assert (ds[1]["human_parts"] == 255).all(), split
        if split == "train":
            assert (ds[3]["human_parts"] == 255).all()
        else:
            assert set(np.unique(ds[0]["human_parts"]).tolist()) == set(range(7)) | {255}


def test_parts_cache(pascal_root, tmp_path):
    cache_file = pascal_root / "ImageSets" / "Parts" / "train.txt"
    cache_file.unlink(missing_ok=True)
    ds = PASCALContext(pascal_root, "train", ["human_parts"])  # written to the dataset folder by default
    cache = json.loads(cache_file.read_text())
    assert list(cache) == [f"2008_{n:06d}" for n in range(2, 6)]
    assert cache == {"2008_000002": [15], "2008_000003": [12], "2008_000004": [15, 12, -1], "2008_000005": [15]}
    # human-parts-only mode drops images without a person (the dog-only image)
    assert ds.ids == ["2008_000002", "2008_000004", "2008_000005"]
    # override: written to parts_cache_dir (when no valid cache exists yet)
    (pascal_root / "ImageSets" / "Parts" / "val.txt").unlink(missing_ok=True)
    PASCALContext(pascal_root, "val", ["human_parts", "sal"], parts_cache_dir=tmp_path / "cache")
    assert set(json.loads((tmp_path / "cache" / "val.txt").read_text())) == {"2008_000006", "2008_000007"}
    # a stale cache (wrong key set) is rebuilt
    cache_file.write_text(json.dumps({"2008_999999": [15]}))
    PASCALContext(pascal_root, "train", ["human_parts", "sal"])
    assert set(json.loads(cache_file.read_text())) == set(cache)
    # split list: ids concatenated in sorted split order, cache named trainval.txt
    both = PASCALContext(pascal_root, ["val", "train"], ["human_parts", "sal"], parts_cache_dir=tmp_path / "cache")
    assert len(both) == 6 and (tmp_path / "cache" / "trainval.txt").is_file()


def test_parts_cache_read_only_dataset(tmp_path, monkeypatch):
    root = write_pascal(tmp_path, n_train=2, n_val=1, size=PASCAL_SIZE)
    parts = root / "ImageSets" / "Parts"
    monkeypatch.setattr(pc.os, "access", lambda path, mode: False)  # a read-only mount, even for root
    ds = PASCALContext(root, "train", ["human_parts"])
    assert ds.ids == ["2008_000002"] and not any(parts.iterdir())


def test_val_pipeline(pascal_root):
    ds = PASCALContext(pascal_root, "val", TASKS, transform=build_test_transforms(PASCAL_TEMPLATE))
    raw = PASCALContext(pascal_root, "val", TASKS)
    batch = collate_mil([ds[0], ds[1]])
    H, W = PASCAL_TEMPLATE
    assert batch["image"].shape == (2, 3, H, W) and batch["normals"].shape == (2, 3, H, W)
    for task in ("semseg", "human_parts", "sal", "edge"):
        assert batch[task].shape == (2, 1, H, W)
    for b in range(2):
        h, w = raw[b]["meta"]["img_size"]
        assert tuple(batch["meta"]["img_size"][b].tolist()) == (h, w) == _size(4 + b)
        top, _, left, _ = PadImage.offsets(h, w, PASCAL_TEMPLATE)
        inside = np.zeros((H, W), dtype=bool)
        inside[top:top + h, left:left + w] = True
        for task in ("semseg", "human_parts", "sal", "normals", "edge"):
            assert (batch[task][b][:, ~inside] == 255).all(), f"{task}: padding must be 255"
        lm = _labelmap(pascal_root, raw.ids[b])
        n = batch["normals"][b].numpy()[:, inside].reshape(3, h, w)
        invalid = ~np.isin(lm, NORMALS_VALID_IDS)
        assert (n[:, invalid] == 255).all() and (np.abs(n[:, ~invalid]) <= 1).all()
    assert set(np.unique(batch["sal"]).tolist()) <= {0.0, 1.0, 255.0}
    assert set(np.unique(batch["semseg"]).tolist()) <= set(range(21)) | {255}
    assert set(np.unique(batch["human_parts"]).tolist()) <= set(range(7)) | {255}


def test_train_pipeline_values(pascal_root):
    ds = PASCALContext(pascal_root, "train", TASKS, transform=train_transforms(PASCAL_TEMPLATE, seed=3))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_mil)
    for batch in loader:
        assert batch["image"].shape == (2, 3) + PASCAL_TEMPLATE
        assert set(np.unique(batch["semseg"]).tolist()) <= set(range(21)) | {255}
        assert set(np.unique(batch["human_parts"]).tolist()) <= set(range(7)) | {255}
        assert set(np.unique(batch["sal"]).tolist()) <= {0.0, 1.0, 255.0}
        assert set(np.unique(batch["edge"]).tolist()) <= {0.0, 1.0, 255.0}
        n = batch["normals"]
        assert ((n == 255).all(1) | ((n != 255).all(1) & (n.abs() <= 1).all(1))).all()

"""Transforms of DATA.md §4 with fixed seeds and hand-computed expectations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data.io import DatasetError
from data.transforms import (IGNORE, AddIgnoreRegions, Compose, Normalize, PadImage, PhotoMetricDistortion,
                             RandomCrop, RandomHorizontalFlip, RandomScaling, ToTensor, train_transforms)
from data.transforms import test_transforms as build_test_transforms  # not collected by pytest


def _sample(h=10, w=12):
    rng = np.random.default_rng(0)
    return {"image": rng.uniform(0, 255, (h, w, 3)).astype(np.float32),
            "semseg": rng.integers(0, 5, (h, w, 1)).astype(np.float32),
            "depth": rng.uniform(0.5, 10, (h, w, 1)).astype(np.float32),
            "normals": rng.uniform(-1, 1, (h, w, 3)).astype(np.float32),
            "meta": {"img_name": "x", "img_size": (h, w)}}


@pytest.mark.parametrize("scale", [0.75, 2.0])
def test_random_scaling_sizes_and_depth(scale):
    s = _sample()
    ref = {k: v.copy() for k, v in s.items() if k != "meta"}
    out = RandomScaling(scale, scale)(s, np.random.default_rng(0))
    h, w = int(10 * scale), int(12 * scale)   # ⌊H·s⌋ × ⌊W·s⌋
    for key, c in (("image", 3), ("semseg", 1), ("depth", 1), ("normals", 3)):
        assert out[key].shape == (h, w, c), key
    # nearest for labels: every output value is an input value; depth divided by the scale
    assert set(np.unique(out["semseg"])) <= set(np.unique(ref["semseg"]))
    assert set(np.unique(out["depth"] * scale).round(4)) <= set(np.unique(ref["depth"]).round(4))
    assert set(map(tuple, out["normals"].reshape(-1, 3))) <= set(map(tuple, ref["normals"].reshape(-1, 3)))
    if scale == 2.0:  # exact 2× nearest: output (2i, 2j) = input (i, j)
        np.testing.assert_allclose(out["depth"][::2, ::2], ref["depth"] / 2.0, rtol=1e-6)
    assert out["meta"] == {"img_name": "x", "img_size": (10, 12)}


def test_known_pixel_through_scale_crop_flip_pad():
    h, w = 10, 12
    edge = np.zeros((h, w, 1), np.float32)
    edge[3, 4] = 1
    depth = np.full((h, w, 1), 4.0, np.float32)
    depth[3, 4] = 8.0
    sample = {"image": np.zeros((h, w, 3), np.float32), "edge": edge, "depth": depth, "meta": {}}
    pipe = Compose([RandomScaling(2.0, 2.0), RandomCrop((16, 32)), RandomHorizontalFlip(1.0),
                    PadImage((16, 32))], seed=7)
    out = pipe(sample)
    # replay the draws: scale, crop row offset in [0, 20−16], crop col offset in [0, max(24−32, 0)], flip
    rng = np.random.default_rng(7)
    rng.uniform(2.0, 2.0)
    y, x = int(rng.integers(0, 5)), int(rng.integers(0, 1))
    assert x == 0
    # scale ×2: (3, 4) → rows 6..7, cols 8..9 of 20×24; crop → rows 6−y..7−y, width 24;
    # flip: col c → 23 − c → cols 14..15; pad width 24 → 32: left ⌊8/2⌋ = 4 → cols 18..19
    expect = np.zeros((16, 32), bool)
    expect[6 - y:8 - y, 18:20] = True
    assert out["edge"].shape == (16, 32, 1)
    np.testing.assert_array_equal(out["edge"][..., 0] == 1, expect)
    assert (out["edge"][:, :4] == IGNORE).all() and (out["edge"][:, 28:] == IGNORE).all()
    np.testing.assert_array_equal(out["depth"][..., 0][expect], 4.0)   # 8 / 2
    inner = out["depth"][:, 4:28, 0]
    assert (inner[~expect[:, 4:28]] == 2.0).all()                       # 4 / 2
    assert (out["depth"][:, :4] == 0).all()                             # depth pads with 0 (→255 later)


def test_random_crop_cat_max_ratio():
    semseg = np.ones((20, 20, 1), np.float32)
    semseg[:, 16:] = 2
    # a 10×10 crop at column x holds class 1 in min(16−x, 10) columns: accepted (< 75%) iff x ≥ 9
    for seed in range(20):
        sample = {"image": np.zeros((20, 20, 3), np.float32), "semseg": semseg.copy()}
        out = RandomCrop((10, 10), cat_max_ratio=0.75)(sample, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        draws = [(int(rng.integers(0, 11)), int(rng.integers(0, 11))) for _ in range(10)]
        accepted = [d for d in draws if d[1] >= 9]
        y, x = accepted[0] if accepted else draws[-1]
        np.testing.assert_array_equal(out["semseg"], semseg[y:y + 10, x:x + 10])


def test_random_crop_clips_and_skips():
    s = {"image": np.zeros((8, 30, 3), np.float32), "edge": np.zeros((8, 30, 1), np.float32)}
    out = RandomCrop((16, 16))(s, np.random.default_rng(0))
    assert out["image"].shape == (8, 16, 3) and out["edge"].shape == (8, 16, 1)   # clipped to the image
    same = {"image": np.zeros((16, 16, 3), np.float32)}
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert RandomCrop((16, 16))(same, rng)["image"].shape == (16, 16, 3)
    assert rng.bit_generator.state == state   # image equal to the template: no crop, no draw


def test_flip_negates_normals_x():
    s = _sample()
    ref = {k: v.copy() for k, v in s.items() if k != "meta"}
    out = RandomHorizontalFlip(1.0)(s, np.random.default_rng(0))
    np.testing.assert_array_equal(out["semseg"], ref["semseg"][:, ::-1])
    np.testing.assert_array_equal(out["normals"][..., 0], -ref["normals"][:, ::-1, 0])
    np.testing.assert_array_equal(out["normals"][..., 1:], ref["normals"][:, ::-1, 1:])
    s2 = _sample()
    assert RandomHorizontalFlip(0.0)(s2, np.random.default_rng(0))["normals"] is s2["normals"]


def test_photometric_distortion():
    s = _sample(32, 32)
    labels = s["semseg"].copy()
    a = PhotoMetricDistortion()({**s, "image": s["image"].copy()}, np.random.default_rng(4))
    b = PhotoMetricDistortion()({**s, "image": s["image"].copy()}, np.random.default_rng(4))
    np.testing.assert_array_equal(a["image"], b["image"])           # seeded → reproducible
    assert a["image"].dtype == np.float32
    assert (a["image"] == np.round(a["image"])).all() and a["image"].min() >= 0 and a["image"].max() <= 255
    np.testing.assert_array_equal(a["semseg"], labels)               # image only
    changed = [not np.array_equal(PhotoMetricDistortion()({"image": s["image"].copy()},
                                                          np.random.default_rng(k))["image"],
                                  s["image"].astype(np.uint8)) for k in range(8)]
    assert any(changed)


def test_normalize_by_hand():
    img = np.zeros((1, 1, 3), np.float32)
    img[0, 0] = (255, 0, 128)
    out = Normalize()({"image": img}, None)["image"][0, 0]
    expect = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(out, expect, rtol=1e-6)


def test_pad_offsets_and_fills():
    assert PadImage.offsets(425, 560, (448, 576)) == (11, 12, 8, 8)   # DATA.md §2.5
    assert PadImage.offsets(375, 500, (512, 512)) == (68, 69, 6, 6)   # DATA.md §4.2
    s = {k: np.ones((3, 4, 3 if k in ("image", "normals") else 1), np.float32)
         for k in ("image", "semseg", "edge", "human_parts", "sal", "depth", "normals")}
    out = PadImage((6, 9))(s, None)
    fills = {"image": 0, "semseg": 255, "edge": 255, "human_parts": 255, "sal": 255, "depth": 0, "normals": 0}
    for key, fill in fills.items():
        a = out[key]
        assert a.shape[:2] == (6, 9) and a.dtype == np.float32
        assert (a[1:4, 2:6] == 1).all(), key                    # top ⌊3/2⌋ = 1, left ⌊5/2⌋ = 2
        mask = np.ones((6, 9), bool)
        mask[1:4, 2:6] = False
        assert (a[mask] == fill).all(), key
    big = np.ones((10, 10, 1), np.float32)
    with pytest.raises(DatasetError, match=r"id 0042: the semseg map is 10x10, larger than the padding size \[6, 9\] "
                                           r"\(TEST\.SCALE\).*at least \[10, 10\]"):
        PadImage((6, 9))({"semseg": big, "meta": {"img_name": "0042"}}, None)   # only enlarges


def test_add_ignore_regions():
    normals = np.zeros((2, 2, 3), np.float32)
    normals[0, 0] = (0.5, 0.0, -0.5)
    parts_empty = np.array([[0, 255], [0, 0]], np.float32)[..., None]
    parts = np.array([[0, 3], [255, 0]], np.float32)[..., None]
    depth = np.array([[0.0, 1.5], [255, 0]], np.float32)[..., None]
    out = AddIgnoreRegions()({"normals": normals, "human_parts": parts_empty, "depth": depth}, None)
    assert (out["normals"][0, 0] == (0.5, 0.0, -0.5)).all() and (out["normals"].reshape(-1, 3)[1:] == 255).all()
    assert (out["human_parts"] == 255).all()
    np.testing.assert_array_equal(out["depth"][..., 0], [[255, 1.5], [255, 255]])
    kept = AddIgnoreRegions()({"human_parts": parts.copy()}, None)["human_parts"]
    np.testing.assert_array_equal(kept, parts)
    d = np.array([[0.0]], np.float32)[..., None]
    assert AddIgnoreRegions(depth_zero_ignored=False)({"depth": d}, None)["depth"][0, 0, 0] == 0


def test_to_tensor():
    s = _sample(4, 5)
    out = ToTensor()(s, None)
    assert out["image"].shape == (3, 4, 5) and out["semseg"].shape == (1, 4, 5)
    assert out["image"].dtype == torch.float32 and out["meta"]["img_size"] == (4, 5)


def test_pipelines_reproducible():
    def run(pipe):
        return pipe(_sample(30, 40))
    a, b = run(train_transforms((24, 32), seed=5)), run(train_transforms((24, 32), seed=5))
    for key in ("image", "semseg", "depth", "normals"):
        assert torch.equal(a[key], b[key]), key
        assert a[key].shape[1:] == (24, 32)
    pipe = train_transforms((24, 32), seed=6)
    first = run(pipe)["image"]
    pipe.reseed(6)
    assert torch.equal(run(pipe)["image"], first)
    assert not torch.equal(run(train_transforms((24, 32), seed=7))["image"], first)
    t = build_test_transforms((12, 16))(_sample(10, 12))
    assert t["image"].shape == (3, 12, 16) and t["depth"][0, 0, 0] == 255   # depth pad 0 → 255

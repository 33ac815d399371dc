"""Cityscapes loader (CITYSCAPES.md §1): label mapping and disparity target against hand-computed values, the
resize rule, sorted ids, the synthetic writer and the errors."""
from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from data.cityscapes import CITYSCAPES_TASKS, Cityscapes
from data.io import DatasetError
from data.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_transforms
from scripts import make_synthetic_dataset

# labelId -> trainId, written out from the Cityscapes label table (road ... bicycle); every other id is 255
TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
            27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def write_one(root, split, city, stem, label, disparity, image=None):
    """One image of the cityscapes_all/ layout with the given labelIds and 16-bit disparity maps."""
    h, w = label.shape
    image = np.zeros((h, w, 3), np.uint8) if image is None else image
    for folder, suffix, arr in (("leftImg8bit", "leftImg8bit", image), ("gtFine", "gtFine_labelIds", label),
                                ("disparity", "disparity", disparity)):
        path = root / folder / split / city / f"{stem}_{suffix}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), np.ascontiguousarray(arr[..., ::-1]) if arr.ndim == 3 else arr)


@pytest.fixture
def crafted(tmp_path):
    """A 6x6 labelIds map holding every labelId 0..33 (plus 10 and 23 again) and, on the diagonals, stored
    disparities 0, 1, 2, 257, 20481 and 65535; labelId 10 sits on a v = 0 pixel once."""
    root = tmp_path / "cityscapes_all"
    label = np.array(list(range(34)) + [10, 23], dtype=np.uint8).reshape(6, 6)
    y, x = np.mgrid[:6, :6]
    v = np.array([0, 1, 2, 257, 20481, 65535], dtype=np.uint16)[(x + y + 1) % 6]
    assert label[1, 4] == 10 and v[1, 4] == 0
    write_one(root, "train", "aachen", "aachen_000000_000019", label, v)
    return root, label, v


def test_label_mapping_and_disparity_target_by_hand(crafted):
    root, label, v = crafted
    sample = Cityscapes(root, "train", CITYSCAPES_TASKS)[0]
    semseg, depth = sample["semseg"][..., 0], sample["depth"][..., 0]
    assert sample["semseg"].shape == (6, 6, 1) and sample["depth"].shape == (6, 6, 1)
    assert semseg.dtype == np.float32 and depth.dtype == np.float32
    for (y, x), lid in np.ndenumerate(label):
        assert semseg[y, x] == TRAIN_ID.get(int(lid), 255), lid
    # d = (v - 1) / 256 where v > 0, -1 where v = 0, then 0 where labelId == 10 (the official "sky": rail track)
    by_value = {0: -1.0, 1: 0.0, 2: 1 / 256, 257: 1.0, 20481: 80.0, 65535: 255.9921875}
    for (y, x), value in np.ndenumerate(v):
        want = 0.0 if label[y, x] == 10 else by_value[int(value)]
        assert depth[y, x] == want, (label[y, x], value)
    assert (depth[label == 10] == 0).all() and (depth[label == 23] != 0).any()
    assert (depth == -1).sum() == 5               # six v = 0 pixels, one of them labelId 10 (the rule comes last)

    # corrected switch: the sky (labelId 23) gets disparity 0, rail track keeps its measurement
    fixed = Cityscapes(root, "train", ["depth"], sky_label_id=23)[0]["depth"][..., 0]
    for (y, x), value in np.ndenumerate(v):
        want = 0.0 if label[y, x] == 23 else by_value[int(value)]
        assert fixed[y, x] == want, (label[y, x], value)
    with pytest.raises(DatasetError, match=re.escape("sky_label_id=11 is not valid; valid: [10, 23]")):
        Cityscapes(root, "train", ["depth"], sky_label_id=11)


def test_released_size_resize_rule(tmp_path):
    """A 1024x2048 image enters at 3x512x1024 (PIL bilinear, ImageNet normalisation); labels stay 1024x2048."""
    y, x = np.mgrid[:1024, :2048]
    image = np.stack([(x // 8) % 256, (y // 4) % 256, (x + 3 * y) % 256], -1).astype(np.uint8)
    label = ((x // 64 + y // 64) % 34).astype(np.uint8)
    v = (3 * x + y).astype(np.uint16)                            # includes v = 0 at the top-left corner
    write_one(tmp_path, "val", "lindau", "lindau_000000_000019", label, v, image)
    dataset = Cityscapes(tmp_path, "val", CITYSCAPES_TASKS, resize_transforms((512, 1024)))
    sample = dataset[0]
    assert sample["image"].shape == (3, 512, 1024)
    assert sample["semseg"].shape == (1, 1024, 2048) and sample["depth"].shape == (1, 1024, 2048)
    assert sample["meta"]["img_size"] == (1024, 2048)
    small = np.asarray(Image.fromarray(image).resize((1024, 512), Image.Resampling.BILINEAR), np.float32)
    want = (small / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    assert torch.equal(sample["image"], torch.from_numpy(want.transpose(2, 0, 1).copy()))
    steps = dataset.transform.transforms   # no augmentation, no padding, no ignore rule
    assert [type(t).__name__ for t in steps] == ["ResizeImage", "Normalize", "ToTensor"]
    assert sample["depth"][0, 0, 0] == -1                        # the invalid disparity stays -1 (official), not 255


def test_small_scale_sorted_ids_and_cli(tmp_path):
    make_synthetic_dataset.main(["--dataset", "cityscapes", "--out", str(tmp_path), "--n-train", "4", "--n-val", "2"])
    root = tmp_path / "cityscapes_all"
    files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    assert len(files) == 18 and {p.parts[0] for p in files} == {"leftImg8bit", "gtFine", "disparity"}
    with Image.open(next(root.glob("gtFine/val/*/*_gtFine_labelIds.png"))) as im:
        assert (im.mode, im.size) == ("L", (128, 64))
    raw = cv2.imread(str(next(root.glob("disparity/val/*/*_disparity.png"))), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (64, 128) and (raw == 0).any() and raw.max() > 80 * 256 + 1
    train = Cityscapes(root, "train", CITYSCAPES_TASKS, resize_transforms((32, 64)))
    assert [stem for _, stem in train.ids] == sorted(stem for _, stem in train.ids)
    assert {city for city, _ in train.ids} == {"aachen", "bochum"} and len(train) == 4
    sample = train[1]
    assert sample["image"].shape == (3, 32, 64) and sample["semseg"].shape == (1, 64, 128)
    assert sample["meta"]["img_name"] == train.ids[1][1]
    assert set(torch.unique(sample["semseg"]).tolist()) == set(range(19)) | {255}
    assert [s for _, s in Cityscapes(root, "val", ["semseg"]).ids] == ["frankfurt_000000_000003",
                                                                      "lindau_000001_000022"]


def test_errors_name_the_zips_files_and_values(crafted, tmp_path):
    root, label, v = crafted
    with pytest.raises(DatasetError) as exc:
        Cityscapes(tmp_path / "nowhere", "train", CITYSCAPES_TASKS)
    msg = str(exc.value)
    assert all(z in msg for z in ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip",
                                  "disparity_trainvaltest.zip"))
    with pytest.raises(DatasetError, match="lacks leftImg8bit/val, gtFine/val, disparity/val"):
        Cityscapes(root, "val", CITYSCAPES_TASKS)
    with pytest.raises(DatasetError, match="unknown task"):
        Cityscapes(root, "train", ["normals"])
    bad = label.copy()
    bad[0, 0] = 34                                # not a labelIds map (e.g. a color or instanceIds file)
    write_one(root, "train", "bochum", "bochum_000000_000019", bad, v)
    dataset = Cityscapes(root, "train", ["semseg"])
    with pytest.raises(DatasetError, match=r"id bochum_000000_000019: .*labelId 34 > 33"):
        dataset[1]
    missing = root / "disparity" / "train" / "bochum" / "bochum_000000_000019_disparity.png"
    missing.unlink()
    assert len(Cityscapes(root, "train", ["semseg"])) == 2          # semseg does not need the disparity maps
    with pytest.raises(DatasetError, match=re.escape(f"missing disparity file {missing}")):
        Cityscapes(root, "train", ["depth"])

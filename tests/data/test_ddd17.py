"""DDD17 (MAMBASEG.md §5): frame extraction, the loader on the synthetic archive, the 50 ms window, the bottom-row
cut, the training pipeline and bad input."""
from __future__ import annotations

import importlib.util
import logging
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from easydict import EasyDict
from PIL import Image

from data import build_dataloaders
from data.ddd17 import DDD17
from data.event_transforms import event_test_transforms, event_train_transforms
from data.io import DatasetError
from data.synthetic_events import write_ddd17, write_ddd17_events
from tests.data.test_events import loop_voxel_grid

REPO = Path(__file__).resolve().parents[2]
MS = 1_000_000  # ns


def run_script(name: str, *argv: str) -> None:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(list(argv))


@pytest.fixture
def ddd17_copy(ddd17_root, tmp_path):
    """A private copy of the prepared session dataset, for tests that damage or rewrite it."""
    return Path(shutil.copytree(ddd17_root, tmp_path / "DDD17"))


def test_prepare_script_extracts_every_video_frame(tmp_path):
    root = write_ddd17(tmp_path, n_frames=5, first_label=3, events_per_frame=20)
    with pytest.raises(DatasetError, match=r"scripts/prepare_ddd17\.py"):
        DDD17(root, "test")                                                  # the archive has no frames
    run_script("prepare_ddd17", str(root), "--no-progress")
    for d in sorted(root.glob("dir*")):
        cap, n = cv2.VideoCapture(str(d / "video.mp4")), 0
        while cap.read()[0]:
            n += 1
        frames = sorted((d / "imgs").glob("img_*.png"))
        assert n == 5 and [f.name for f in frames] == [f"img_{k:08d}.png" for k in range(1, n + 1)]
        with Image.open(frames[0]) as im:
            assert (im.mode, im.size) == ("L", (346, 260))
    assert len(DDD17(root, "test")) == 2 and len(DDD17(root, "train")) == 10
    # resumable: a lost frame is restored, the others are not rewritten
    victim, kept = root / "dir1" / "imgs" / "img_00000002.png", root / "dir1" / "imgs" / "img_00000003.png"
    stamp = kept.stat().st_mtime_ns
    victim.unlink()
    (root / "dir1" / "imgs" / ".complete").unlink()
    run_script("prepare_ddd17", str(root), "--no-progress")
    assert victim.is_file() and kept.stat().st_mtime_ns == stamp


def test_loader_samples(ddd17_root):
    test = DDD17(ddd17_root, "test", transform=event_test_transforms())
    train = DDD17(ddd17_root, "train")
    assert len(test) == 2 and len(train) == 10                              # masks of frames 4 and 5 per dir
    assert {n.split("_")[0] for n in (train[i]["meta"]["img_name"] for i in range(0, 10, 2))} == \
        {"dir0", "dir2", "dir3", "dir5", "dir6"}
    s = test[0]
    assert s["meta"] == {"img_name": "dir1_00000004", "img_size": (200, 346)}
    assert s["image"].shape == (1, 200, 346) and s["events"].shape == (10, 200, 346) \
        and s["semseg"].shape == (1, 200, 346)
    assert all(s[k].dtype == torch.float32 for k in ("image", "events", "semseg"))
    assert 0 <= s["image"].min() and s["image"].max() <= 1 and s["events"].abs().sum() > 0
    assert set(s["semseg"].unique().tolist()) == {0, 1, 2, 3, 4, 5, 255}
    frame = np.asarray(Image.open(ddd17_root / "dir1" / "imgs" / "img_00000004.png"), dtype=np.float32) / 255
    np.testing.assert_array_equal(s["image"][0].numpy(), frame[:200])      # the frame loses its bottom 60 rows
    mask = np.asarray(Image.open(ddd17_root / "dir1" / "segmentation_masks" / "segmentation_00000004.png"))
    np.testing.assert_array_equal(s["semseg"][0].numpy(), mask)


def test_window_is_the_50ms_before_the_frame_and_bottom_rows_are_cut(ddd17_copy):
    folder = ddd17_copy / "dir1"
    frame_times = np.load(folder / "index" / "index_50ms.npy")[:, 0]
    tf = int(frame_times[3])                                                # mask 4 = frame index 3
    #          (t, x, y, p, inside the window)
    events = [(tf - 70 * MS, 1, 1, 1, False), (tf - 50 * MS - 1, 2, 2, 1, False),
              (tf - 50 * MS, 5, 10, 1, True), (tf - 30 * MS, 345, 199, 0, True), (tf - 20 * MS, 7, 200, 1, True),
              (tf - 10 * MS, 8, 259, 0, True), (tf - 1, 9, 3, 0, True), (tf, 3, 3, 1, False), (tf + MS, 4, 4, 1, False)]
    t, x, y, p, inside = (np.array(c) for c in zip(*events))
    write_ddd17_events(folder, t, x, y, p, frame_times)
    grid = DDD17(ddd17_copy, "test")[0]["events"]                            # 200×346×10
    ref = loop_voxel_grid(x[inside], y[inside], t[inside], p[inside], 260, 346, 10)
    np.testing.assert_allclose(grid.transpose(2, 0, 1), ref[:, :200], atol=1e-6)
    per_pixel = grid.sum(-1)
    assert per_pixel[10, 5] == pytest.approx(1) and per_pixel[199, 345] == pytest.approx(-1)
    assert per_pixel[3, 9] == pytest.approx(-1)
    assert per_pixel.sum() == pytest.approx(1 - 1 - 1)                      # rows 200 and 259 were cut


def test_empty_window_gives_a_zero_grid_and_a_counted_warning(ddd17_copy, caplog):
    folder = ddd17_copy / "dir1"
    frame_times = np.load(folder / "index" / "index_50ms.npy")[:, 0]
    t = np.array([frame_times[0] - 60 * MS, frame_times[4] - MS])           # none in the 50 ms before frame 3
    write_ddd17_events(folder, t, np.array([1, 2]), np.array([1, 2]), np.array([1, 0]), frame_times)
    ds = DDD17(ddd17_copy, "test")
    with caplog.at_level(logging.WARNING, logger="data.ddd17"):
        sample = ds[0]
    assert not sample["events"].any() and sample["events"].shape == (200, 346, 10)
    assert ds.empty_windows == 1 and "no events in the 50 ms before img_00000004.png" in caplog.text
    assert ds[1]["events"].any()


def test_bad_input_names_the_file(ddd17_copy):
    d1 = ddd17_copy / "dir1"
    mask = d1 / "segmentation_masks" / "segmentation_00000004.png"
    grey = np.asarray(Image.open(mask))
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(mask)                 # grey stored as RGB: accepted
    np.testing.assert_array_equal(DDD17(ddd17_copy, "test")[0]["semseg"][..., 0], grey)
    Image.fromarray(np.zeros((201, 346), np.uint8)).save(mask)
    with pytest.raises(DatasetError, match=re.escape(str(mask)) + r" is 201x346, expected 200x346"):
        DDD17(ddd17_copy, "test")[0]
    xyp = d1 / "events.dat.xyp"
    xyp.write_bytes(xyp.read_bytes()[:-6])
    with pytest.raises(DatasetError, match=re.escape(str(xyp)) + r" holds \d+ bytes, expected \d+"):
        DDD17(ddd17_copy, "test")
    n = (d1 / "events.dat.t").stat().st_size // 8 - 1
    (d1 / "events.dat.t").write_bytes((d1 / "events.dat.t").read_bytes()[:8 * (n // 2)])   # both files cut short
    xyp.write_bytes(xyp.read_bytes()[:6 * (n // 2)])
    with pytest.raises(DatasetError, match=r"events\.dat\.t holds \d+ events, but frame \d+ of the index ends"):
        DDD17(ddd17_copy, "test")
    (ddd17_copy / "dir2" / "imgs" / "img_00000005.png").unlink()
    with pytest.raises(DatasetError, match=r"missing frame .*img_00000005\.png.*prepare_ddd17\.py"):
        DDD17(ddd17_copy, "train")
    shutil.rmtree(ddd17_copy / "dir6")
    with pytest.raises(DatasetError, match=r"holds 6 dir\* folders \(dir0, .*dir5\)"):
        DDD17(ddd17_copy, "train")


def _tile_sample(h: int, w: int) -> dict:
    label = ((np.arange(h)[:, None] // 17 + np.arange(w)[None, :] // 23) % 6).astype(np.float32)
    return {"image": label[..., None] / 10, "events": label[..., None] * np.arange(1, 11, dtype=np.float32),
            "semseg": label[..., None].copy(), "meta": {"img_name": "x", "img_size": (h, w)}}


@pytest.mark.parametrize("dataset, size", [("DDD17", (200, 346)), ("DSEC", (440, 640))])
def test_train_pipeline_is_joint_and_reseedable(dataset, size):
    for seed in range(2):
        out = event_train_transforms(dataset, seed=seed)(_tile_sample(*size))
        label = out["semseg"][0].numpy()
        assert out["image"].shape == (1, *size) and out["events"].shape == (10, *size)
        # interior of the tiles (5×5 neighbourhood of one label): every array shows the same geometry
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(label, 2, mode="edge"), (5, 5))
        interior = (windows.min((-1, -2)) == windows.max((-1, -2)))
        assert interior.mean() > 0.5
        np.testing.assert_allclose(10 * out["image"][0].numpy()[interior], label[interior], atol=1e-4)
        np.testing.assert_allclose(out["events"][9].numpy()[interior], 10 * label[interior], atol=1e-3)
    pipe = event_train_transforms(dataset, seed=11)
    first = pipe(_tile_sample(*size))
    pipe.reseed(11)
    again = pipe(_tile_sample(*size))
    assert all(torch.equal(first[k], again[k]) for k in ("image", "events", "semseg"))
    untouched = event_test_transforms()(_tile_sample(*size))
    np.testing.assert_array_equal(untouched["events"].numpy(), _tile_sample(*size)["events"].transpose(2, 0, 1))
    with pytest.raises(ValueError, match="exceeds the smallest scaled sample"):
        event_train_transforms(dataset, (size[0] + 16, size[1]))


def test_build_dataloaders_with_workers_is_reproducible(ddd17_root):
    cfg = EasyDict(train_db_name="DDD17", db_root=str(ddd17_root.parent), TASKS={"NAMES": ["semseg"]},
                   TRAIN={"SCALE": [200, 346]}, TEST={"SCALE": [200, 346]}, trBatch=2, valBatch=2, nworkers=2, seed=3)
    runs = [[(b["image"], b["events"]) for b in build_dataloaders(cfg)[0]] for _ in range(2)]
    assert len(runs[0]) == 5 and runs[0][0][1].shape == (2, 10, 200, 346)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(*runs))
    val = build_dataloaders(cfg)[1]
    assert len(val.dataset) == 2 and val.dataset.split == "test"            # no val split: the test dirs

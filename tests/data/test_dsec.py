"""DSEC-Semantic (MAMBASEG.md §5): the ev_inf preparation and its homography, the loader on the synthetic release,
label sampling, the last-N-events window, rectification and the bottom-row cut, the 19-class option, bad input."""
from __future__ import annotations

import logging
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from easydict import EasyDict
from PIL import Image

from data import build_dataloaders
from data.dsec import SEQUENCES, DSECSemantic, event_view_homography, event_view_maps, warp_to_event_view
from data.event_transforms import event_test_transforms
from data.io import DatasetError
from data.synthetic_events import (DSEC_LABEL_PERIOD_US, DSEC_T_OFFSET_US, write_cam_to_cam, write_dsec,
                                   write_events_h5, write_rectify_map)
from tests.data.test_ddd17 import run_script
from tests.data.test_events import loop_voxel_grid

SEQ = "zurich_city_13_a"


@pytest.fixture(scope="module")
def one_sequence_prepared(tmp_path_factory):
    """A DSEC root holding only ``SEQ`` (10 labels: samples at labels 6 and 8), prepared by the script."""
    root = write_dsec(tmp_path_factory.mktemp("ev"), sequences=[SEQ], n_labels=10, events_per_label=200,
                      frame_size=(60, 80))
    run_script("prepare_dsec", str(root), "--no-progress")
    return root


@pytest.fixture
def one_sequence(one_sequence_prepared, tmp_path):
    """A private copy of ``one_sequence_prepared``, for tests that rewrite or damage it."""
    return Path(shutil.copytree(one_sequence_prepared, tmp_path / "DSEC"))


def test_loader_samples(dsec_root):
    test = DSECSemantic(dsec_root, "test", transform=event_test_transforms(), num_events=1000)
    assert len(test) == 3 and len(DSECSemantic(dsec_root, "train")) == 8     # 7 labels: only label 6 is used
    s = test[0]
    assert s["meta"] == {"img_name": f"{SEQ}_000006", "img_size": (440, 640)}
    assert s["image"].shape == (3, 440, 640) and s["events"].shape == (10, 440, 640) \
        and s["semseg"].shape == (1, 440, 640)
    assert all(s[k].dtype == torch.float32 for k in ("image", "events", "semseg"))
    assert 0 <= s["image"].min() and s["image"].max() <= 1 and s["image"].std() > 0
    assert set(s["semseg"].unique().tolist()) == set(range(11)) | {255}
    frame = np.asarray(Image.open(dsec_root / "test" / SEQ / "images" / "left" / "ev_inf" / "000006.png"))
    np.testing.assert_allclose(s["image"].numpy().transpose(1, 2, 0), frame[:440] / 255.0, atol=1e-6)
    assert s["events"].abs().sum() > 0
    labels19 = DSECSemantic(dsec_root, "test", num_classes=19, num_events=1000)[2]["semseg"]
    assert labels19.max() == 255 and set(np.unique(labels19)) - {255} == set(range(19))


def test_prepare_script_writes_one_event_view_frame_per_rectified_frame(dsec_root):
    for split, names in SEQUENCES.items():
        for name in names:
            seq = dsec_root / split / name / "images" / "left"
            out = sorted(p.name for p in (seq / "ev_inf").glob("*.png"))
            assert out == sorted(p.name for p in (seq / "rectified").glob("*.png")) and len(out) == 7
    with Image.open(dsec_root / "test" / SEQ / "images" / "left" / "ev_inf" / "000000.png") as im:
        assert (im.mode, im.size) == ("RGB", (640, 480))


def _rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def _calibration(k=(500.0, 500.0, 320.0, 240.0), r_rect0=np.eye(3), r_rect1=np.eye(3), r_10=np.eye(3)):
    t_10 = np.eye(4)
    t_10[:3, :3] = r_10
    t_10[:3, 3] = [-0.1, 0.0, 0.0]                   # a baseline, which the rotation-only alignment ignores
    return dict(k_rect0=k, k_rect1=k, r_rect0=r_rect0, r_rect1=r_rect1, t_10=t_10, frame_size=(480, 640))


def test_identity_calibration_leaves_the_frame_unchanged(tmp_path):
    seq = tmp_path / "DSEC" / "test" / SEQ
    write_cam_to_cam(seq / "calibration" / "cam_to_cam.yaml", **_calibration())
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    (seq / "images" / "left" / "rectified").mkdir(parents=True)
    Image.fromarray(frame).save(seq / "images" / "left" / "rectified" / "000000.png")
    run_script("prepare_dsec", str(tmp_path / "DSEC"), "--no-progress")
    out = np.asarray(Image.open(seq / "images" / "left" / "ev_inf" / "000000.png"))
    np.testing.assert_array_equal(out, frame)


def _blob_position(src_uv: tuple[int, int], calib: dict) -> tuple[float, float]:
    """Where a 3×3 bright square centred at ``src_uv`` of the frame lands in the event view (intensity centroid)."""
    frame = np.zeros((480, 640), np.uint8)
    u, v = src_uv
    frame[v - 1:v + 2, u - 1:u + 2] = 255
    yaml_calib = {"intrinsics": {"camRect0": {"camera_matrix": list(calib["k_rect0"])},
                                 "camRect1": {"camera_matrix": list(calib["k_rect1"])}},
                  "extrinsics": {"R_rect0": calib["r_rect0"].tolist(), "R_rect1": calib["r_rect1"].tolist(),
                                 "T_10": calib["t_10"].tolist()}}
    out = warp_to_event_view(frame, event_view_maps(event_view_homography(yaml_calib))).astype(np.float64)
    out[out < 64] = 0
    vv, uu = np.nonzero(out)
    return float((uu * out[vv, uu]).sum() / out.sum()), float((vv * out[vv, uu]).sum() / out.sum())


def test_known_rotations_move_a_known_point_where_expected():
    f, cx, cy = 500.0, 320.0, 240.0
    # T_10 rotates 90° about the optical axis: event-view ray (x, y, 1) -> frame ray (-y, x, 1), so the frame point
    # (u1, v1) shows at (u0, v0) = (cx + v1 - cy, cy - u1 + cx)
    assert _blob_position((400, 200), _calibration(r_10=_rotation("z", 90))) == pytest.approx((280, 160), abs=0.05)
    # R_rect0 enters transposed: the opposite turn, (u0, v0) = (cx - v1 + cy, cy + u1 - cx)
    assert _blob_position((400, 200), _calibration(r_rect0=_rotation("z", 90))) == pytest.approx((360, 320), abs=0.05)
    # R_rect1 pans by θ about y: the event-view centre sees the frame point (cx + f·tan θ, cy)
    theta = 4.0
    u1 = cx + f * np.tan(np.radians(theta))
    assert _blob_position((round(u1), 240), _calibration(r_rect1=_rotation("y", theta))) == \
        pytest.approx((cx - (u1 - round(u1)), cy), abs=0.1)


def test_label_sampling_and_the_last_n_events_before_the_label(one_sequence):
    seq = one_sequence / "test" / SEQ
    ds = DSECSemantic(one_sequence, "test", sequences=[SEQ], num_events=50)
    assert [ds[i]["meta"]["img_name"] for i in range(len(ds))] == [f"{SEQ}_000006", f"{SEQ}_000008"]
    del ds                                           # closes its events.h5, which is rewritten below
    t_label = DSEC_LABEL_PERIOD_US * 7               # label 6, relative to t_offset: on a millisecond boundary
    rng = np.random.default_rng(1)
    t = np.sort(np.concatenate([rng.integers(0, t_label, 200), [t_label - 1, t_label, t_label, t_label + 3],
                                rng.integers(t_label + 1, t_label + 40_000, 30)]))
    x, y, p = rng.integers(0, 640, t.size), rng.integers(0, 480, t.size), rng.integers(0, 2, t.size)
    rect = np.stack(np.meshgrid(np.arange(640.0), np.arange(480.0)), -1) + [0.25, 0.5]   # a known sub-pixel shift
    write_rectify_map(seq / "events" / "left" / "rectify_map.h5", rect)
    for shift in (0, 437):                           # the label on a millisecond boundary, then inside one
        write_events_h5(seq / "events" / "left" / "events.h5", x, y, t + shift, p, DSEC_T_OFFSET_US)
        before = np.flatnonzero(t + shift < t_label)[-50:]                       # the last 50 strictly before
        grid = DSECSemantic(one_sequence, "test", sequences=[SEQ], num_events=50)[0]["events"]
        ref = loop_voxel_grid(x[before] + 0.25, y[before] + 0.5, t[before] + shift, p[before], 480, 640, 10)
        np.testing.assert_allclose(grid.transpose(2, 0, 1), ref[:, :440], atol=1e-6)
    everything = DSECSemantic(one_sequence, "test", sequences=[SEQ], num_events=10_000)[0]["events"]
    assert np.abs(everything).sum() > np.abs(grid).sum()   # fewer events than asked: all those before the label


def test_rectification_truncation_and_the_bottom_cut(one_sequence):
    seq = one_sequence / "test" / SEQ
    rect = np.zeros((480, 640, 2), np.float32)
    #   raw (x, y) -> rectified (x', y')   -> pixel (column, row) after truncation toward zero and the cut
    cases = [((10, 20), (12.6, 18.7), (12, 18)), ((40, 30), (-0.6, 30.2), (0, 30)),  # -0.6 truncates to 0
             ((41, 31), (-1.2, 31.0), None), ((50, 400), (600.9, 439.9), (600, 439)),  # -1.2 -> -1: dropped
             ((51, 401), (601.0, 440.0), None), ((52, 402), (639.99, 5.5), (639, 5))]   # row 440: cut
    for (x, y), xy_rect, _ in cases:
        rect[y, x] = xy_rect
    write_rectify_map(seq / "events" / "left" / "rectify_map.h5", rect)
    t_label = DSEC_LABEL_PERIOD_US * 7
    raw = np.array([c[0] for c in cases])
    write_events_h5(seq / "events" / "left" / "events.h5", raw[:, 0], raw[:, 1],
                    t_label - 600 + 100 * np.arange(len(cases)), np.ones(len(cases)), DSEC_T_OFFSET_US)
    per_pixel = DSECSemantic(one_sequence, "test", sequences=[SEQ])[0]["events"].sum(-1)
    expected = np.zeros((440, 640), np.float32)
    for *_, pixel in cases:
        if pixel is not None:
            expected[pixel[1], pixel[0]] += 1.0
    np.testing.assert_allclose(per_pixel, expected, atol=1e-6)


def test_empty_window_gives_a_zero_grid_and_a_counted_warning(one_sequence, caplog):
    seq = one_sequence / "test" / SEQ
    late = DSEC_LABEL_PERIOD_US * 7 + np.arange(5)                             # every event after label 6
    write_events_h5(seq / "events" / "left" / "events.h5", late % 640, late % 480, late, late % 2, DSEC_T_OFFSET_US)
    ds = DSECSemantic(one_sequence, "test", sequences=[SEQ])
    with caplog.at_level(logging.WARNING, logger="data.dsec"):
        sample = ds[0]
    assert sample["events"].shape == (440, 640, 10) and not sample["events"].any()
    assert ds.empty_windows == 1 and "no events before label" in caplog.text and ds[1]["events"].any()


def test_bad_input_names_the_file(one_sequence, monkeypatch):
    seq = one_sequence / "test" / SEQ
    with pytest.raises(DatasetError, match=re.escape(str(one_sequence / "test" / SEQUENCES["test"][1]))
                       + " does not exist"):
        DSECSemantic(one_sequence, "test")                                      # the official list: 3 sequences
    label = seq / "semantic" / "left" / "11classes" / "data" / "000008.png"
    Image.fromarray(np.zeros((480, 640), np.uint8)).save(label)
    with pytest.raises(DatasetError, match=re.escape(str(label)) + " is 480x640, expected 440x640"):
        DSECSemantic(one_sequence, "test", sequences=[SEQ])[1]
    # the release is Blosc-compressed: without hdf5plugin h5py cannot decode it, and the error says so
    import h5py
    import hdf5plugin
    monkeypatch.setitem(sys.modules, "hdf5plugin", None)                       # `import hdf5plugin` now fails
    h5py.h5z.unregister_filter(hdf5plugin.Blosc.filter_id)
    try:
        with pytest.raises(DatasetError, match=r"events\.h5.*pip install hdf5plugin"):
            DSECSemantic(one_sequence, "test", sequences=[SEQ])
    finally:
        monkeypatch.undo()
        hdf5plugin.register(force=True)
    events = seq / "events" / "left" / "events.h5"
    events.write_bytes(events.read_bytes()[: events.stat().st_size // 2])
    with pytest.raises(DatasetError, match=re.escape(str(events)) + ".*truncated or corrupt"):
        DSECSemantic(one_sequence, "test", sequences=[SEQ])
    shutil.rmtree(seq / "images" / "left" / "ev_inf")
    with pytest.raises(DatasetError, match=r"ev_inf.*scripts/prepare_dsec\.py"):
        DSECSemantic(one_sequence, "test", sequences=[SEQ])


def test_config_keys(tmp_path):
    from utils.config import ConfigError, load_config
    path = tmp_path / "dsec.yml"
    path.write_text(yaml.safe_dump({"train_db_name": "DSEC", "task_dictionary": {"include_semseg": True},
                                    "TRAIN": {"SCALE": [440, 640]}, "TEST": {"SCALE": [440, 640]},
                                    "model": {"name": "mambaseg", "pretrained": False}}))   # any input size
    cfg = load_config(path)
    assert cfg.TASKS.NUM_OUTPUT == {"semseg": 11} and cfg.dsec == {"num_classes": 11, "num_events": 100_000}
    assert load_config(path, ["dsec.num_classes=19"]).TASKS.NUM_OUTPUT == {"semseg": 19}
    with pytest.raises(ConfigError, match=r"dsec\.num_classes=12 is not valid; valid: \[11, 19\]"):
        load_config(path, ["dsec.num_classes=12"])
    assert load_config(path, ["train_db_name=DDD17"]).TASKS.NUM_OUTPUT == {"semseg": 6}


def test_build_dataloaders(dsec_root):
    cfg = EasyDict(train_db_name="DSEC", db_root=str(dsec_root.parent), TASKS={"NAMES": ["semseg"]},
                   TRAIN={"SCALE": [440, 640]}, TEST={"SCALE": [440, 640]}, trBatch=2, valBatch=1, nworkers=0,
                   seed=2, dsec={"num_classes": 11, "num_events": 500})
    train, val = build_dataloaders(cfg)
    batch = next(iter(train))
    assert batch["image"].shape == (2, 3, 440, 640) and batch["events"].shape == (2, 10, 440, 640)
    assert batch["semseg"].shape == (2, 1, 440, 640) and len(batch["meta"]["img_name"]) == 2
    assert val.dataset.split == "test" and len(val.dataset) == 3 and val.dataset.num_events == 500

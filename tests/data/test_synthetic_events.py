"""The synthetic DDD17 / DSEC writers produce the released formats (MAMBASEG.md §5); the CLI reaches them."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from data.dsec import open_h5
from data.synthetic_events import DSEC_T_OFFSET_US
from tests.data.test_ddd17 import run_script


def test_ddd17_formats(ddd17_root):
    assert sorted(d.name for d in ddd17_root.glob("dir*")) == [f"dir{k}" for k in range(7)]
    d = ddd17_root / "dir0"
    n = (d / "events.dat.t").stat().st_size // 8
    assert (d / "events.dat.t").stat().st_size == 8 * n and (d / "events.dat.xyp").stat().st_size == 6 * n
    t = np.memmap(d / "events.dat.t", dtype=np.int64, mode="r", shape=(n, 1))[:, 0]
    xyp = np.memmap(d / "events.dat.xyp", dtype=np.int16, mode="r", shape=(n, 3))
    assert np.all(np.diff(t) >= 0) and t[0] > 10**18                         # ns since the epoch, sorted
    assert xyp[:, 0].max() < 346 and xyp[:, 1].max() < 260 and set(np.unique(xyp[:, 2])) == {0, 1}
    for ms in (10, 50, 250):
        index = np.load(d / "index" / f"index_{ms}ms.npy")
        assert index.dtype == np.int64 and index.shape == (5, 3)
        ft, end, start = index.T
        assert np.all(t[end - 1] < ft) and np.all(t[start] >= ft - ms * 1_000_000)
    masks = sorted(p.name for p in (d / "segmentation_masks").glob("*.png"))
    assert masks == ["segmentation_00000004.png", "segmentation_00000005.png"]
    with Image.open(d / "segmentation_masks" / masks[0]) as im:
        assert (im.mode, im.size) == ("L", (346, 200))
    assert int(cv2.VideoCapture(str(d / "video.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 5


def test_dsec_formats(dsec_root):
    seq = dsec_root / "test" / "zurich_city_14_c"
    stamps = np.loadtxt(seq / "semantic" / "timestamps.txt", dtype=np.int64)
    assert stamps.shape == (7,) and stamps[0] > DSEC_T_OFFSET_US
    for classes in (11, 19):
        labels = sorted((seq / "semantic" / "left" / f"{classes}classes" / "data").glob("*.png"))
        assert [p.name for p in labels] == [f"{i:06d}.png" for i in range(7)]
        with Image.open(labels[0]) as im:
            assert (im.mode, im.size) == ("L", (640, 440))
    with open_h5(seq / "events" / "left" / "events.h5") as h5:
        dtypes = {k: h5[k].dtype for k in ("events/x", "events/y", "events/t", "events/p", "ms_to_idx", "t_offset")}
        assert dtypes == {"events/x": np.uint16, "events/y": np.uint16, "events/t": np.uint32, "events/p": np.uint8,
                          "ms_to_idx": np.uint64, "t_offset": np.int64}
        plist = h5["events/t"].id.get_create_plist()
        assert 32001 in [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]   # Blosc, as released
        t, ms_to_idx = h5["events/t"][()].astype(np.int64), h5["ms_to_idx"][()].astype(np.int64)
        assert int(h5["t_offset"][()]) == DSEC_T_OFFSET_US
    assert len(ms_to_idx) == t[-1] // 1000 + 1                 # ms_to_idx[ms]: the first event at or after ms
    for ms, idx in enumerate(ms_to_idx):
        assert (idx == len(t) or t[idx] >= 1000 * ms) and (idx == 0 or t[idx - 1] < 1000 * ms)
    with open_h5(seq / "events" / "left" / "rectify_map.h5") as h5:
        assert h5["rectify_map"].shape == (480, 640, 2) and h5["rectify_map"].dtype == np.float32
    calib = yaml.safe_load((seq / "calibration" / "cam_to_cam.yaml").read_text())
    assert len(calib["intrinsics"]["camRect0"]["camera_matrix"]) == 4 and calib["intrinsics"]["camRect1"][
        "resolution"] == [180, 135]
    assert np.asarray(calib["extrinsics"]["T_10"]).shape == (4, 4)
    with Image.open(seq / "images" / "left" / "rectified" / "000000.png") as im:
        assert (im.mode, im.size) == ("RGB", (180, 135))


def test_cli(tmp_path, capsys):
    run_script("make_synthetic_dataset", "--dataset", "ddd17", "--out", str(tmp_path), "--frames", "3",
               "--events", "10")
    assert capsys.readouterr().out.strip() == str(tmp_path / "DDD17")
    assert len(list((tmp_path / "DDD17" / "dir6" / "segmentation_masks").glob("*.png"))) == 1
    with pytest.raises(SystemExit):
        run_script("make_synthetic_dataset", "--dataset", "dsec", "--out", str(tmp_path), "--size", "20x20")
    assert "--size applies to nyud, pascal and cityscapes" in capsys.readouterr().err

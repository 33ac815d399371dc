"""Miniature DDD17 and DSEC-Semantic datasets written in exactly the released formats (MAMBASEG.md §5).

DDD17: per ``dir0`` .. ``dir6``: ``events.dat.t`` (int64 ns memmap, N×1), ``events.dat.xyp`` (int16 memmap, N×3),
``index/index_{10,50,250}ms.npy``, ``segmentation_masks/segmentation_%08d.png`` and a grey ``video.mp4`` (no
``imgs/``: ``scripts/prepare_ddd17.py`` extracts them). DSEC: per official sequence: 11- and 19-class label PNGs
with ``semantic/timestamps.txt``, a Blosc-compressed ``events.h5`` (``events/{x,y,t,p}``, ``ms_to_idx``,
``t_offset``), ``rectify_map.h5``, ``calibration/cam_to_cam.yaml`` and ``images/left/rectified`` frames (no
``ev_inf``: ``scripts/prepare_dsec.py`` makes them). Sensor and label sizes are the real ones; only the number of
frames, events and the DSEC frame resolution are small. Labels are tiles of every class plus an ignore band; the
DDD17 frames show the same tiles, so a model can learn something from them. Used by tests, the demo and the benchmark.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from data.ddd17 import LABEL_SIZE as DDD17_LABEL_SIZE
from data.ddd17 import SENSOR_SIZE as DDD17_SENSOR_SIZE
from data.dsec import EVENT_SIZE, LABEL_SIZE as DSEC_LABEL_SIZE, SEQUENCES

__all__ = ["write_ddd17", "write_ddd17_events", "write_dsec", "write_events_h5", "write_rectify_map",
           "write_cam_to_cam", "default_calibration", "DDD17_FRAME_PERIOD_NS", "DSEC_LABEL_PERIOD_US"]

_logger = logging.getLogger(__name__)

DDD17_NUM_DIRS = 7
DDD17_FRAME_PERIOD_NS = 100_000_000    # 10 frames/s: half of each inter-frame interval lies outside the 50 ms window
DDD17_T0_NS = 1_487_000_000_000_000_000  # recordings of 2017, in ns since the epoch
DSEC_LABEL_PERIOD_US = 50_000           # labels at 20 Hz
DSEC_T_OFFSET_US = 1_600_000_000_000_000
IGNORE = 255


def _tiles(size: tuple[int, int], n_classes: int, offset: int) -> np.ndarray:
    """uint8 H×W label map of square tiles cycling through 0..n−1, with a 3-row ignore band in the middle."""
    h, w = size
    t = max(4, min(h, w) // 8)
    label = ((np.arange(h)[:, None] // t) * (w // t + 1) + np.arange(w)[None, :] // t + offset) % n_classes
    label = label.astype(np.uint8)
    label[h // 2: h // 2 + 3] = IGNORE
    return label


def _shade(label: np.ndarray, n_classes: int) -> np.ndarray:
    """uint8 grey image: a level per class (ignore → mid grey) and a faint horizontal ramp."""
    level = np.where(label == IGNORE, 128, 30 + (200 * label.astype(np.int64)) // max(n_classes - 1, 1))
    ramp = (np.arange(label.shape[1]) * 16) // label.shape[1]
    return np.clip(level + ramp[None, :], 0, 255).astype(np.uint8)


def _imwrite(path: Path, image: np.ndarray) -> None:
    import cv2
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


# ---- DDD17 -------------------------------------------------------------------------------------------------------
def write_ddd17_events(folder: str | os.PathLike, t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray,
                       frame_times: np.ndarray) -> None:
    """Write ``events.dat.{t,xyp}`` and ``index/index_{10,50,250}ms.npy`` of one recording.

    Index rows are (frame timestamp ns, end, start) with end the first event at or after the frame and start the
    first event at or after the frame minus the window, so that a window is events [start, end).
    """
    folder = Path(folder)
    order = np.argsort(t, kind="stable")
    t = np.asarray(t, dtype=np.int64)[order]
    xyp = np.stack([x, y, p], axis=1).astype(np.int16)[order]
    folder.mkdir(parents=True, exist_ok=True)
    t.reshape(-1, 1).tofile(folder / "events.dat.t")
    xyp.tofile(folder / "events.dat.xyp")
    (folder / "index").mkdir(exist_ok=True)
    frame_times = np.asarray(frame_times, dtype=np.int64)
    for ms in (10, 50, 250):
        index = np.stack([frame_times, np.searchsorted(t, frame_times, side="left"),
                          np.searchsorted(t, frame_times - ms * 1_000_000, side="left")], axis=1).astype(np.int64)
        np.save(folder / "index" / f"index_{ms}ms.npy", index)


def _write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> None:
    import cv2
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write an MP4 video to {path}")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()


def write_ddd17(out: str | os.PathLike, n_frames: int = 6, first_label: int = 2, events_per_frame: int = 400,
                seed: int = 0) -> Path:
    """Write ``<out>/DDD17`` with ``dir0`` .. ``dir6`` (DDD17 layout of ``data.ddd17.LAYOUT``); returns that folder.

    Each recording has ``n_frames`` frames at 10 frames/s, masks for frames ``first_label`` .. ``n_frames − 1``
    (mask number = frame index + 1) and ``events_per_frame`` events spread uniformly over each inter-frame interval.
    """
    if not 0 <= first_label < n_frames:
        raise ValueError(f"first_label={first_label} must lie in 0..n_frames−1={n_frames - 1}")
    root = Path(out) / "DDD17"
    rng = np.random.default_rng(seed)
    h, w = DDD17_SENSOR_SIZE
    for d in range(DDD17_NUM_DIRS):
        folder = root / f"dir{d}"
        t0 = DDD17_T0_NS + d * 10**12
        frame_times = t0 + DDD17_FRAME_PERIOD_NS * np.arange(1, n_frames + 1)
        t = np.concatenate([rng.integers(ft - DDD17_FRAME_PERIOD_NS, ft, events_per_frame) for ft in frame_times])
        write_ddd17_events(folder, t, rng.integers(0, w, t.size), rng.integers(0, h, t.size),
                           rng.integers(0, 2, t.size), frame_times)
        frames = []
        for k in range(n_frames):
            label = _tiles(DDD17_LABEL_SIZE, 6, offset=3 * d + k)
            frame = np.full((h, w), 90, dtype=np.uint8)  # the bottom rows: the car's hood, never labelled
            frame[:DDD17_LABEL_SIZE[0]] = _shade(label, 6)
            frames.append(frame)
            if k >= first_label:
                _imwrite(folder / "segmentation_masks" / f"segmentation_{k + 1:08d}.png", label)
        _write_video(folder / "video.mp4", frames, fps=1e9 / DDD17_FRAME_PERIOD_NS)
    _logger.info("wrote synthetic DDD17 (%d recordings x %d frames) to %s", DDD17_NUM_DIRS, n_frames, root)
    return root


# ---- DSEC --------------------------------------------------------------------------------------------------------
def write_events_h5(path: str | os.PathLike, x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray,
                    t_offset: int, compress: bool = True) -> None:
    """DSEC ``events.h5``: ``events/x, y`` uint16, ``events/t`` uint32 (µs after ``t_offset``), ``events/p`` uint8,
    ``ms_to_idx`` uint64 (first event at or after each millisecond), ``t_offset`` int64; Blosc-compressed like the
    released files (``compress=False`` writes them plain)."""
    import h5py
    t = np.asarray(t, dtype=np.int64)
    if t.size and (np.any(np.diff(t) < 0) or t[0] < 0):
        raise ValueError("event timestamps must be non-negative and sorted")
    filters = {}
    if compress:
        import hdf5plugin
        filters = dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    ms = np.arange(int(t[-1]) // 1000 + 1 if t.size else 0, dtype=np.int64) * 1000
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, values, dtype in (("x", x, np.uint16), ("y", y, np.uint16), ("t", t, np.uint32), ("p", p, np.uint8)):
            f.create_dataset(f"events/{key}", data=np.asarray(values).astype(dtype), chunks=True, **filters)
        f.create_dataset("ms_to_idx", data=np.searchsorted(t, ms, side="left").astype(np.uint64), chunks=True,
                         **filters)
        f.create_dataset("t_offset", data=np.int64(t_offset))


def write_rectify_map(path: str | os.PathLike, rectify_map: np.ndarray) -> None:
    """DSEC ``rectify_map.h5``: ``rectify_map`` float32 480×640×2, (x, y) of the rectified position per pixel."""
    import h5py
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("rectify_map", data=np.asarray(rectify_map, dtype=np.float32))


def _default_rectify_map() -> np.ndarray:
    """A mild zoom about the centre plus a sub-pixel shift; the corners leave the grid (dropped events)."""
    h, w = EVENT_SIZE
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    return np.stack([w / 2 + 1.01 * (u - w / 2) + 0.3, h / 2 + 1.01 * (v - h / 2) - 0.4], axis=-1)


def _rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def default_calibration(frame_size: tuple[int, int]) -> dict:
    """Calibration values shaped like DSEC's (events 640×480; frames ``frame_size`` = (H, W)), small rotations."""
    fh, fw = frame_size
    f1 = 1.6 * fw / 2  # frames: a slightly wider field of view than the events
    t_10 = np.eye(4)
    t_10[:3, :3] = _rotation("y", 0.8) @ _rotation("x", -0.5)
    t_10[:3, 3] = [-0.06, 0.002, 0.001]  # metres; ignored by the rotation-only alignment
    return dict(k_rect0=[570.0, 570.0, 320.0, 240.0], k_rect1=[f1, f1, fw / 2, fh / 2],
                r_rect0=_rotation("z", 0.3) @ _rotation("y", -0.4), r_rect1=_rotation("y", 0.5),
                t_10=t_10, frame_size=frame_size)


def write_cam_to_cam(path: str | os.PathLike, k_rect0: Sequence[float], k_rect1: Sequence[float],
                     r_rect0: np.ndarray, r_rect1: np.ndarray, t_10: np.ndarray,
                     frame_size: tuple[int, int]) -> None:
    """DSEC ``calibration/cam_to_cam.yaml`` (cam0 = left events, cam1 = left frames), the keys of the release."""
    import yaml

    def mat(a: np.ndarray) -> list:
        return np.asarray(a, dtype=np.float64).tolist()

    calib = {
        "intrinsics": {
            "cam0": {"camera_matrix": list(map(float, k_rect0)), "distortion_coeffs": [-0.08, 0.1, 0.0, 0.0],
                     "distortion_model": "plumb_bob", "resolution": [EVENT_SIZE[1], EVENT_SIZE[0]]},
            "cam1": {"camera_matrix": list(map(float, k_rect1)), "distortion_coeffs": [-0.05, 0.07, 0.0, 0.0],
                     "distortion_model": "plumb_bob", "resolution": [frame_size[1], frame_size[0]]},
            "camRect0": {"camera_matrix": list(map(float, k_rect0)), "resolution": [EVENT_SIZE[1], EVENT_SIZE[0]]},
            "camRect1": {"camera_matrix": list(map(float, k_rect1)), "resolution": [frame_size[1], frame_size[0]]},
        },
        "extrinsics": {"R_rect0": mat(r_rect0), "R_rect1": mat(r_rect1), "T_10": mat(t_10)},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(calib, sort_keys=False))


def write_dsec(out: str | os.PathLike, sequences: Optional[Sequence[str]] = None, n_labels: int = 7,
               events_per_label: int = 3000, frame_size: tuple[int, int] = (270, 360), seed: int = 0) -> Path:
    """Write ``<out>/DSEC`` (layout of ``data.dsec.LAYOUT``); returns that folder.

    Every official sequence (or those in ``sequences``) gets ``n_labels`` labels at 20 Hz (the loader drops the
    first 6 and keeps every 2nd), ``events_per_label`` events per 50 ms before each, one rectified frame per label
    (``frame_size`` = (H, W); the release's are 1080×1440) and the calibration of :func:`default_calibration`.
    """
    root = Path(out) / "DSEC"
    rng = np.random.default_rng(seed)
    chosen = set(sequences) if sequences is not None else None
    names = [(split, n) for split, seqs in SEQUENCES.items() for n in seqs if chosen is None or n in chosen]
    if chosen is not None and len(names) != len(chosen):
        raise ValueError(f"unknown DSEC sequences {sorted(chosen - {n for _, n in names})}")
    h, w = EVENT_SIZE
    calib = default_calibration(frame_size)
    rectify_map = _default_rectify_map()
    for s, (split, name) in enumerate(names):
        seq = root / split / name
        stamps = DSEC_T_OFFSET_US + DSEC_LABEL_PERIOD_US * np.arange(1, n_labels + 1, dtype=np.int64)
        (seq / "semantic").mkdir(parents=True, exist_ok=True)
        (seq / "semantic" / "timestamps.txt").write_text("".join(f"{v}\n" for v in stamps))
        (seq / "images").mkdir(parents=True, exist_ok=True)
        (seq / "images" / "timestamps.txt").write_text("".join(f"{v}\n" for v in stamps))
        for i in range(n_labels):
            for n_classes in (11, 19):
                label = _tiles(DSEC_LABEL_SIZE, n_classes, offset=5 * s + i)
                _imwrite(seq / "semantic" / "left" / f"{n_classes}classes" / "data" / f"{i:06d}.png", label)
            frame = np.stack([_shade(_tiles(frame_size, 11, offset=5 * s + i + c), 11) for c in range(3)], -1)
            _imwrite(seq / "images" / "left" / "rectified" / f"{i:06d}.png", frame)
        n = events_per_label * n_labels
        t = np.sort(rng.integers(0, int(stamps[-1] - DSEC_T_OFFSET_US), n))
        write_events_h5(seq / "events" / "left" / "events.h5", rng.integers(0, w, n), rng.integers(0, h, n), t,
                        rng.integers(0, 2, n), DSEC_T_OFFSET_US)
        write_rectify_map(seq / "events" / "left" / "rectify_map.h5", rectify_map)
        write_cam_to_cam(seq / "calibration" / "cam_to_cam.yaml", **calib)
    _logger.info("wrote synthetic DSEC (%d sequences x %d labels) to %s", len(names), n_labels, root)
    return root

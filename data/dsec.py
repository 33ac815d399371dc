"""DSEC-Semantic (frames + events) in the layout of the DSEC downloads, as MambaSeg / EISNet / ESS load it.

MAMBASEG.md §5. Per labelled timestamp: the label, the left frame warped into the rectified event view
(``images/left/ev_inf``, made by ``python scripts/prepare_dsec.py ROOT``, :func:`make_ev_inf`) and the 10-bin voxel
grid of the last 100k events before the label timestamp, rectified through ``rectify_map.h5``, built at 480×640;
frame and grid lose their bottom 40 rows (→ 440×640, the label size). The first 6 labels of a sequence are
dropped (too few events before them) and every 2nd remaining one is used.

``events.h5`` is read with h5py. The released files are compressed with the Blosc filter, which h5py decodes only
once the ``hdf5plugin`` package is imported; a file that cannot be decoded raises an error that says so.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from data.events import NUM_BINS, voxel_grid
from data.io import DatasetError, check_root, decode, read_png

__all__ = ["DSECSemantic", "DSEC_CLASSES", "SEQUENCES", "EVENT_SIZE", "LABEL_SIZE", "NUM_EVENTS", "SKIPPED_LABELS",
           "open_h5", "read_h5", "event_view_homography", "event_view_maps", "warp_to_event_view", "make_ev_inf"]

_logger = logging.getLogger(__name__)

SEQUENCES = {  # MambaSeg / EISNet splits (under ROOT/train and ROOT/test)
    "train": ("zurich_city_00_a", "zurich_city_01_a", "zurich_city_02_a", "zurich_city_04_a", "zurich_city_05_a",
              "zurich_city_06_a", "zurich_city_07_a", "zurich_city_08_a"),
    "test": ("zurich_city_13_a", "zurich_city_14_c", "zurich_city_15_a"),
}
DSEC_CLASSES = {
    11: ("background", "building", "fence", "person", "pole", "road", "sidewalk", "vegetation", "car", "wall",
         "traffic sign"),
    19: ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
         "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"),
}
EVENT_SIZE = (480, 640)     # the left event camera (rectify_map.h5, ev_inf frames, the voxel grid)
LABEL_SIZE = (440, 640)     # labels: the event view without its bottom 40 rows
NUM_EVENTS = 100_000        # events per window: the last ones before the label timestamp
SKIPPED_LABELS = 6          # official (250 ms // 100 + 1) * 2: the first labels have too few events before them
LABEL_STRIDE = 2            # every 2nd remaining label
EVENT_KEYS = ("events/x", "events/y", "events/t", "events/p", "ms_to_idx", "t_offset")
PREPARE = "python scripts/prepare_dsec.py"

LAYOUT = """DSEC/                                  (DSEC-Semantic labels + the DSEC events, images, calibration)
  {train,test}/<sequence>/semantic/left/{11,19}classes/data/NNNNNN.png   440×640 labels, ignore 255
  {train,test}/<sequence>/semantic/timestamps.txt    one label timestamp (µs) per line
  {train,test}/<sequence>/events/left/events.h5      events/{x,y,t,p}, ms_to_idx, t_offset (Blosc: hdf5plugin)
  {train,test}/<sequence>/events/left/rectify_map.h5 rectify_map 480×640×2
  {train,test}/<sequence>/images/left/rectified/NNNNNN.png  left frames
  {train,test}/<sequence>/images/left/ev_inf/NNNNNN.png     made by `python scripts/prepare_dsec.py ROOT`
  {train,test}/<sequence>/calibration/cam_to_cam.yaml
train: zurich_city_00_a 01_a 02_a 04_a 05_a 06_a 07_a 08_a; test: zurich_city_13_a 14_c 15_a"""


# ---- HDF5 access -------------------------------------------------------------------------------------------------
def _hdf5plugin() -> Any:
    """Import hdf5plugin (it registers the Blosc filter with HDF5); None when it is not installed."""
    try:
        import hdf5plugin
    except ImportError:
        return None
    return hdf5plugin


def open_h5(path: Path) -> Any:
    """``h5py.File(path, 'r')`` with the Blosc filter registered when available; errors name the file."""
    try:
        import h5py
    except ImportError:
        raise DatasetError(f"reading {path} needs the h5py package: pip install h5py hdf5plugin") from None
    _hdf5plugin()
    if not path.is_file():
        raise DatasetError(f"missing file {path}. Expected layout:\n{LAYOUT}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"cannot open {path} as an HDF5 file ({exc}); truncated or corrupt?") from exc


def read_h5(h5: Any, key: str, index: Any = ()) -> np.ndarray:
    """``h5[key][index]``; a missing key or an undecodable chunk raises a DatasetError naming file and key."""
    if key not in h5:
        raise DatasetError(f"{h5.filename} has no dataset {key!r}; expected {', '.join(EVENT_KEYS)} "
                           f"(events.h5) or 'rectify_map' (rectify_map.h5)")
    try:
        return h5[key][index]
    except OSError as exc:
        if _hdf5plugin() is None:
            raise DatasetError(f"cannot decode {key!r} of {h5.filename} ({exc}): the released DSEC files are "
                               f"compressed with the Blosc filter, which h5py reads only with the hdf5plugin "
                               f"package: pip install hdf5plugin") from exc
        raise DatasetError(f"cannot read {key!r} of {h5.filename} ({exc}); truncated or corrupt file?") from exc


def _read_rgb(path: Path) -> np.ndarray:
    """A frame as float32 H×W×3 in [0, 1]."""
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


# ---- one sequence ------------------------------------------------------------------------------------------------
class _Sequence:
    """One DSEC sequence: its sampled labels and frames, the event file (opened per process) and the
    rectification map; every file is checked at construction, not in a DataLoader worker."""

    def __init__(self, folder: Path, num_classes: int) -> None:
        self.folder, self.name = folder, folder.name
        if not folder.is_dir():
            raise DatasetError(f"DSEC: sequence folder {folder} does not exist. Expected layout:\n{LAYOUT}")
        label_dir = folder / "semantic" / "left" / f"{num_classes}classes" / "data"
        stamps_path = folder / "semantic" / "timestamps.txt"
        frame_dir = folder / "images" / "left" / "ev_inf"
        for path in (label_dir, stamps_path):
            if not path.exists():
                raise DatasetError(f"DSEC: missing {path}. Expected layout:\n{LAYOUT}")
        if not frame_dir.is_dir():
            raise DatasetError(f"DSEC: missing {frame_dir}: the frames aligned with the events are not in the DSEC "
                               f"download; make them with `{PREPARE} {folder.parent.parent}`")
        labels = sorted(label_dir.glob("*.png"))
        frames = sorted(frame_dir.glob("*.png"))
        stamps = decode(stamps_path, self.name, lambda p: np.loadtxt(p, dtype=np.int64, ndmin=1))
        if not len(labels) == len(stamps) == len(frames):
            raise DatasetError(f"DSEC: {self.name}: {len(labels)} labels in {label_dir}, {len(stamps)} timestamps in "
                               f"{stamps_path} and {len(frames)} frames in {frame_dir}; expected one of each per "
                               f"label (rerun `{PREPARE}` if the ev_inf frames are incomplete)")
        keep = slice(SKIPPED_LABELS, None, LABEL_STRIDE)
        self.labels, self.frames, self.timestamps = labels[keep], frames[keep], stamps[keep]

        self.events_path = folder / "events" / "left" / "events.h5"
        with open_h5(self.events_path) as h5:
            for key in EVENT_KEYS:
                if key not in h5:
                    raise DatasetError(f"DSEC: {self.events_path} has no {key!r}; expected {', '.join(EVENT_KEYS)}")
            sizes = {k: h5[k].shape[0] for k in EVENT_KEYS[:4]}
            if len(set(sizes.values())) != 1:
                raise DatasetError(f"DSEC: {self.events_path}: events/x, y, t, p differ in length {sizes}")
            self.num_events = sizes["events/t"]
            self.ms_to_idx = read_h5(h5, "ms_to_idx").astype(np.int64)
            self.t_offset = int(read_h5(h5, "t_offset"))
            if self.num_events:
                read_h5(h5, "events/t", slice(self.num_events - 1, None))  # decodes the last chunk: filter, size
        rect_path = folder / "events" / "left" / "rectify_map.h5"
        with open_h5(rect_path) as h5:
            self.rectify_map = read_h5(h5, "rectify_map")
        if self.rectify_map.shape != (*EVENT_SIZE, 2):
            raise DatasetError(f"DSEC: {rect_path}: rectify_map is {self.rectify_map.shape}, expected "
                               f"{(*EVENT_SIZE, 2)} (x, y per pixel of the 640×480 event camera)")
        self._h5: Any = None
        self._pid: Optional[int] = None

    def __getstate__(self) -> dict:  # an open h5py file cannot be pickled (spawned DataLoader workers)
        return {**self.__dict__, "_h5": None, "_pid": None}

    def _events_file(self) -> Any:
        if self._h5 is None or self._pid != os.getpid():  # h5py handles must not cross a fork
            self._h5, self._pid = open_h5(self.events_path), os.getpid()
        return self._h5

    def window_bounds(self, t_us: int, num_events: int) -> tuple[int, int]:
        """[start, end) of the last ``num_events`` events strictly before ``t_us`` (absolute µs).

        ``ms_to_idx[ms]`` is the first event at or after ms·1000 µs (relative to ``t_offset``), so the first event
        at or after ``t_us`` lies between ``ms_to_idx[ms]`` and ``ms_to_idx[ms + 1]``, ms = ⌊t/1000⌋.
        """
        t_rel = t_us - self.t_offset
        if t_rel <= 0 or self.num_events == 0:
            return 0, 0
        ms = t_rel // 1000
        last = len(self.ms_to_idx) - 1
        lo = int(self.ms_to_idx[min(ms, last)]) if last >= 0 else 0
        hi = int(self.ms_to_idx[ms + 1]) if ms + 1 <= last else self.num_events
        t = read_h5(self._events_file(), "events/t", slice(lo, hi)).astype(np.int64)
        end = lo + int(np.searchsorted(t, t_rel, side="left"))
        return max(end - num_events, 0), end

    def events(self, start: int, end: int) -> tuple[np.ndarray, ...]:
        """Rectified x, y (float32), t (µs, relative) and p of events [start, end)."""
        h5 = self._events_file()
        x, y, t, p = (read_h5(h5, f"events/{k}", slice(start, end)) for k in "xytp")
        if x.size and (int(x.max()) >= EVENT_SIZE[1] or int(y.max()) >= EVENT_SIZE[0]):
            raise DatasetError(f"DSEC: {self.events_path}: events {start}..{end} have x up to {int(x.max())} and y "
                               f"up to {int(y.max())}, outside the {EVENT_SIZE[1]}×{EVENT_SIZE[0]} sensor")
        xy = self.rectify_map[y.astype(np.int64), x.astype(np.int64)]  # rectify_map[y, x] = (x', y')
        return xy[:, 0], xy[:, 1], t, p


# ---- the dataset -------------------------------------------------------------------------------------------------
class DSECSemantic(Dataset):
    """DSEC-Semantic frames + events + labels (MAMBASEG.md §5).

    Args:
        root: the folder holding ``train/`` and ``test/`` (see ``LAYOUT``).
        split: ``"train"`` or ``"test"``.
        transform: callable applied to the sample dict (``data.event_transforms``).
        num_classes: 11 (official) or 19 label set.
        num_events: events per window (the last ones before the label timestamp).
        sequences: sequence names under ``root/<split>``; default the official ones of the split.

    Items: ``{image: 440×640×3 float32 in [0, 1], events: 440×640×10 float32 voxel grid, semseg: 440×640×1 float32
    (0..C−1, ignore 255), meta: {img_name: "<sequence>_<label>", img_size: (440, 640)}}`` before the transform.
    An empty event window gives a zero grid and a warning (counted in ``empty_windows``).
    """

    def __init__(self, root: str | os.PathLike, split: str, transform: Optional[Callable[[dict], dict]] = None,
                 num_classes: int = 11, num_events: int = NUM_EVENTS,
                 sequences: Optional[Sequence[str]] = None) -> None:
        self.root = Path(root).expanduser().resolve()
        if split not in SEQUENCES:
            raise DatasetError(f"DSEC: split must be one of {sorted(SEQUENCES)}, got {split!r}")
        if num_classes not in DSEC_CLASSES:
            raise DatasetError(f"DSEC: num_classes must be one of {sorted(DSEC_CLASSES)}, got {num_classes!r}")
        if num_events < 1:
            raise DatasetError(f"DSEC: num_events must be positive, got {num_events}")
        self.split, self.transform = split, transform
        self.num_classes, self.num_events = num_classes, num_events
        check_root(self.root, [split], LAYOUT)
        names = SEQUENCES[split] if sequences is None else tuple(sequences)
        self.sequences = [_Sequence(self.root / split / name, num_classes) for name in names]
        self.samples = [(s, k) for s, seq in enumerate(self.sequences) for k in range(len(seq.labels))]
        self.empty_windows = 0
        _logger.info("DSEC %s: %d labels (%d classes) from %d sequences", split, len(self.samples), num_classes,
                     len(self.sequences))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        s, k = self.samples[index]
        seq = self.sequences[s]
        label_path, frame_path, t_us = seq.labels[k], seq.frames[k], int(seq.timestamps[k])
        name = f"{seq.name}_{label_path.stem}"
        label = decode(label_path, name, lambda p: read_png(p, 1))
        if label.shape != LABEL_SIZE:
            raise DatasetError(f"DSEC: label {label_path} is {label.shape[0]}x{label.shape[1]}, expected "
                               f"{LABEL_SIZE[0]}x{LABEL_SIZE[1]}")
        frame = decode(frame_path, name, _read_rgb)
        if frame.shape[:2] != EVENT_SIZE:
            raise DatasetError(f"DSEC: frame {frame_path} is {frame.shape[0]}x{frame.shape[1]}, expected "
                               f"{EVENT_SIZE[0]}x{EVENT_SIZE[1]} (the event view; rerun `{PREPARE}`)")
        start, end = seq.window_bounds(t_us, self.num_events)
        if end == start:
            self.empty_windows += 1
            _logger.warning("DSEC: no events before label %s (t = %d µs) in %s; using a zero voxel grid "
                            "(%d empty windows so far)", label_path, t_us, seq.events_path, self.empty_windows)
        x, y, t, p = seq.events(start, end)
        grid = voxel_grid(x, y, t, p, *EVENT_SIZE, num_bins=NUM_BINS)[:, :LABEL_SIZE[0]]  # cut bottom 40 rows
        sample = {"image": frame[:LABEL_SIZE[0]],
                  "events": grid.permute(1, 2, 0).numpy(),                                  # H×W×B view
                  "semseg": label.astype(np.float32)[..., None],
                  "meta": {"img_name": name, "img_size": LABEL_SIZE}}
        return self.transform(sample) if self.transform is not None else sample


# ---- ev_inf frames: the left frame in the rectified event view ---------------------------------------------------
def _matrix(calib: dict, *keys: str, shape: tuple[int, int]) -> np.ndarray:
    node: Any = calib
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            raise KeyError(".".join(keys))
        node = node[k]
    m = np.asarray(node, dtype=np.float64)
    if m.shape != shape:
        raise ValueError(f"{'.'.join(keys)} has shape {m.shape}, expected {shape}")
    return m


def event_view_homography(calib: dict) -> np.ndarray:
    """3×3 P = K_r1 · R_r1_r0 · K_r0⁻¹, R_r1_r0 = R_rect1 · R_10 · R_rect0ᵀ (rotation only, MAMBASEG.md §5).

    ``calib`` is the parsed ``cam_to_cam.yaml`` (cam0 = left events, cam1 = left frames; ``camera_matrix`` is
    [fx, fy, cx, cy]; R_10 is the rotation of ``T_10``). P maps a pixel of the rectified event view to the
    rectified frame; the translation between the cameras is ignored, as in the official preparation.
    """
    def intrinsics(cam: str) -> np.ndarray:
        fx, fy, cx, cy = _matrix(calib, "intrinsics", cam, "camera_matrix", shape=(4,))
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

    r_rect0 = _matrix(calib, "extrinsics", "R_rect0", shape=(3, 3))
    r_rect1 = _matrix(calib, "extrinsics", "R_rect1", shape=(3, 3))
    r_10 = _matrix(calib, "extrinsics", "T_10", shape=(4, 4))[:3, :3]
    return intrinsics("camRect1") @ (r_rect1 @ r_10 @ r_rect0.T) @ np.linalg.inv(intrinsics("camRect0"))


def event_view_maps(homography: np.ndarray, size: tuple[int, int] = EVENT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """float32 (map_x, map_y) of ``cv2.remap``: the frame position P·(u, v, 1) of every event-view pixel (v, u)."""
    h, w = size
    u = np.arange(w, dtype=np.float64)[None, :]
    v = np.arange(h, dtype=np.float64)[:, None]
    (a, b, c), (d, e, f), (g, k, m) = homography
    z = g * u + k * v + m
    return ((a * u + b * v + c) / z).astype(np.float32), ((d * u + e * v + f) / z).astype(np.float32)


def warp_to_event_view(frame: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``out[v, u] = frame(map_x[v, u], map_y[v, u])``: bicubic ``cv2.remap`` (as the official preparation), zero
    outside the frame."""
    import cv2
    return cv2.remap(frame, maps[0], maps[1], interpolation=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT,
                     borderValue=0)


def make_ev_inf(root: str | os.PathLike, sequences: Optional[Sequence[str]] = None,
                progress: bool = True) -> dict[str, int]:
    """Write ``images/left/ev_inf/<name>.png`` for every ``images/left/rectified/<name>.png`` of each sequence.

    Sequences: every folder under ``root/train`` and ``root/test`` (or those named). Resumable: existing outputs
    are skipped; files are written atomically. Returns {sequence: frames written or already present}.
    """
    import cv2
    import yaml
    from tqdm import tqdm

    root = Path(root).expanduser().resolve()
    check_root(root, [], LAYOUT)
    folders = sorted(d for split in SEQUENCES for d in (root / split).glob("*") if d.is_dir())
    if sequences is not None:
        found = {d.name: d for d in folders}
        missing = [s for s in sequences if s not in found]
        if missing:
            raise DatasetError(f"DSEC: sequence folder(s) {missing} not found under {root}/train or {root}/test")
        folders = [found[s] for s in sequences]
    if not folders:
        raise DatasetError(f"DSEC: no sequence folders under {root}/train or {root}/test. Expected layout:\n{LAYOUT}")
    counts = {}
    for seq in folders:
        calib_path = seq / "calibration" / "cam_to_cam.yaml"
        src_dir, out_dir = seq / "images" / "left" / "rectified", seq / "images" / "left" / "ev_inf"
        for path in (calib_path, src_dir):
            if not path.exists():
                raise DatasetError(f"DSEC: missing {path}. Expected layout:\n{LAYOUT}")
        try:
            maps = event_view_maps(event_view_homography(yaml.safe_load(calib_path.read_text())))
        except (KeyError, ValueError, yaml.YAMLError) as exc:
            raise DatasetError(f"DSEC: {calib_path}: cannot read the calibration ({type(exc).__name__}: {exc}); "
                               f"expected intrinsics.camRect{{0,1}}.camera_matrix and extrinsics.R_rect0, R_rect1, "
                               f"T_10") from exc
        out_dir.mkdir(exist_ok=True)
        frames = sorted(src_dir.glob("*.png"))
        for src in tqdm(frames, desc=f"ev_inf {seq.name}", unit="frame", disable=not progress):
            out = out_dir / src.name
            if out.is_file():
                continue
            image = cv2.imread(str(src), cv2.IMREAD_COLOR)  # BGR in, BGR out, as the official script
            if image is None:
                raise DatasetError(f"DSEC: OpenCV cannot read {src}")
            ok, png = cv2.imencode(".png", warp_to_event_view(image, maps))
            if not ok:
                raise DatasetError(f"DSEC: cannot encode the ev_inf frame for {src}")
            tmp = out.with_name(out.name + ".part")
            tmp.write_bytes(png.tobytes())
            os.replace(tmp, out)
        counts[seq.name] = len(frames)
        _logger.info("DSEC: %s: %d ev_inf frames in %s", seq.name, len(frames), out_dir)
    return counts

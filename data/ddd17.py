"""DDD17 semantic segmentation (frames + events) in the layout of the ESS archive ``ddd17_seg.tar.gz``.

MAMBASEG.md §5. The archive holds, per recording ``dir*``: the events as two memmaps, per-frame event indices for
10/50/250 ms windows, the EV-SegNet masks and the grey video. The frames are not in the archive:
``python scripts/prepare_ddd17.py ROOT`` extracts them (:func:`extract_frames`). A sample is the mask, the grey
frame and the 10-bin voxel grid of the 50 ms of events before the frame, built at 260×346 with the bottom 60 rows
then cut (as the masks were), as MambaSeg / EISNet / ESS load it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from torch.utils.data import Dataset

from data.events import NUM_BINS, voxel_grid
from data.io import DatasetError, check_root, decode

__all__ = ["DDD17", "DDD17_CLASSES", "SENSOR_SIZE", "LABEL_SIZE", "SPLIT_DIRS", "WINDOW_MS", "extract_frames"]

_logger = logging.getLogger(__name__)

DDD17_CLASSES = ("flat", "construction+sky", "object", "nature", "human", "vehicle")  # label values 0..5
SENSOR_SIZE = (260, 346)          # DAVIS346: frames and the event grid
LABEL_SIZE = (200, 346)           # the masks: the sensor image without its bottom 60 rows (EV-SegNet's crop)
SPLIT_DIRS = {"train": (0, 2, 3, 5, 6), "test": (1,)}  # positions in the sorted dir* list (MambaSeg / EISNet)
WINDOW_MS = 50                    # index/index_50ms.npy: the 50 ms of events before each frame
PREPARE = "python scripts/prepare_ddd17.py"

LAYOUT = """DDD17/                        (extracted from ESS's ddd17_seg.tar.gz; the folder holds dir0 .. dir6)
  dir*/events.dat.t               int64 memmap, N×1: event timestamps (ns)
  dir*/events.dat.xyp             int16 memmap, N×3: x, y, polarity in {0, 1}
  dir*/index/index_50ms.npy       one row per frame: frame timestamp (ns), end and start event index
  dir*/segmentation_masks/segmentation_XXXXXXXX.png   200×346, classes 0..5, ignore 255
  dir*/video.mp4                  the grey frames (260×346)
  dir*/imgs/img_XXXXXXXX.png      frames extracted by `python scripts/prepare_ddd17.py ROOT`
Masks and frames share the number XXXXXXXX; the frame's index row is that number − 1."""


def _read_gray(path: Path) -> np.ndarray:
    """A frame as float32 H×W in [0, 1] (PIL's luma for colour PNGs, as torchvision's Grayscale)."""
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def _read_mask(path: Path) -> np.ndarray:
    """A mask as uint8 H×W: an 8-bit single-channel PNG, or a grey one stored as RGB (the official reader takes
    ``cv2.imread(path, 0)``, which accepts both)."""
    from PIL import Image
    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim == 3 and arr.shape[2] in (3, 4) and (arr[..., 1:3] == arr[..., :1]).all():
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit single-channel (or grey RGB) PNG, got array {arr.dtype} {arr.shape}")
    return arr


class _Recording:
    """One ``dir*`` of the archive: checked memmaps, the 50 ms index and its labelled frames."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        t_path, xyp_path = folder / "events.dat.t", folder / "events.dat.xyp"
        for path in (t_path, xyp_path):
            if not path.is_file():
                raise DatasetError(f"DDD17: missing event file {path}. Expected layout:\n{LAYOUT}")
        t_bytes, xyp_bytes = t_path.stat().st_size, xyp_path.stat().st_size
        if t_bytes % 8:
            raise DatasetError(f"DDD17: {t_path} holds {t_bytes} bytes, not a whole number of int64 timestamps "
                               f"(truncated file?)")
        self.num_events = t_bytes // 8
        if xyp_bytes != 6 * self.num_events:
            raise DatasetError(f"DDD17: {xyp_path} holds {xyp_bytes} bytes, expected {6 * self.num_events} "
                               f"(N×3 int16 for the N = {self.num_events} events of {t_path.name}; truncated file?)")
        self.t = np.memmap(t_path, dtype=np.int64, mode="r", shape=(self.num_events, 1))
        self.xyp = np.memmap(xyp_path, dtype=np.int16, mode="r", shape=(self.num_events, 3))
        index_path = folder / "index" / f"index_{WINDOW_MS}ms.npy"
        if not index_path.is_file():
            raise DatasetError(f"DDD17: missing event index {index_path}. Expected layout:\n{LAYOUT}")
        self.index = decode(index_path, folder.name, np.load)
        if self.index.ndim != 2 or self.index.shape[1] != 3:
            raise DatasetError(f"DDD17: {index_path} has shape {self.index.shape}, expected (frames, 3) rows of "
                               f"(timestamp ns, event index, event index {WINDOW_MS} ms before)")
        self.masks = self._masks()

    def _masks(self) -> list[tuple[Path, Path, int]]:
        """(mask, frame, index row) of every labelled frame; every file is checked here, not in a worker."""
        mask_dir, img_dir = self.folder / "segmentation_masks", self.folder / "imgs"
        if not mask_dir.is_dir():
            zipped = (self.folder / "segmentation_masks.zip").is_file()
            unzip = " (unzip segmentation_masks.zip there)" if zipped else ""
            raise DatasetError(f"DDD17: missing mask folder {mask_dir}{unzip}. Expected layout:\n{LAYOUT}")
        if not img_dir.is_dir():
            raise DatasetError(f"DDD17: missing frame folder {img_dir}: the frames are not in the archive; "
                               f"extract them from video.mp4 with `{PREPARE} {self.folder.parent}`")
        out = []
        for mask in sorted(mask_dir.glob("segmentation_*.png")):
            number = mask.stem.rsplit("_", 1)[-1]
            if not number.isdigit():
                raise DatasetError(f"DDD17: mask {mask} is not named segmentation_<frame number>.png")
            row = int(number) - 1                                  # image index = mask number − 1
            frame = img_dir / f"img_{number}.png"
            if not 0 <= row < len(self.index):
                raise DatasetError(f"DDD17: {mask} is frame {row}, but {self.folder / 'index'} lists "
                                   f"{len(self.index)} frames")
            if not frame.is_file():
                raise DatasetError(f"DDD17: missing frame {frame} for {mask.name}; run `{PREPARE} "
                                   f"{self.folder.parent}` (it resumes where it stopped)")
            end = int(self.index[row, 1])
            if end > self.num_events:
                raise DatasetError(f"DDD17: {self.folder / 'events.dat.t'} holds {self.num_events} events, but "
                                   f"frame {row} of the index ends at event {end} (truncated memmap?)")
            out.append((mask, frame, row))
        if not out:
            raise DatasetError(f"DDD17: no segmentation_*.png in {mask_dir}")
        return out

    def events(self, row: int) -> tuple[np.ndarray, ...]:
        """x, y, t, p of the window of index row ``row``: events [max(start, 0), end)."""
        _, end, start = (int(v) for v in self.index[row])
        start = max(start, 0)
        xyp = np.array(self.xyp[start:end])
        return xyp[:, 0], xyp[:, 1], np.array(self.t[start:end, 0]), xyp[:, 2]


class DDD17(Dataset):
    """DDD17 frames + events + masks (MAMBASEG.md §5).

    Args:
        root: the folder holding ``dir0`` .. ``dir6`` (see ``LAYOUT``).
        split: ``"train"`` (dirs 0, 2, 3, 5, 6) or ``"test"`` (dir 1), positions in the sorted ``dir*`` list.
        transform: callable applied to the sample dict (``data.event_transforms``).

    Items: ``{image: 200×346×1 float32 in [0, 1], events: 200×346×10 float32 voxel grid, semseg: 200×346×1
    float32 (0..5, ignore 255), meta: {img_name: "<dir>_<number>", img_size: (200, 346)}}`` before the transform.
    An empty event window gives a zero grid and a warning (counted in ``empty_windows``).
    """

    def __init__(self, root: str | os.PathLike, split: str,
                 transform: Optional[Callable[[dict], dict]] = None) -> None:
        self.root = Path(root).expanduser().resolve()
        if split not in SPLIT_DIRS:
            raise DatasetError(f"DDD17: split must be one of {sorted(SPLIT_DIRS)}, got {split!r}")
        self.split, self.transform = split, transform
        check_root(self.root, [], LAYOUT)
        dirs = sorted(d for d in self.root.glob("dir*") if d.is_dir())
        if len(dirs) <= max(SPLIT_DIRS[split]):
            raise DatasetError(f"DDD17: {self.root} holds {len(dirs)} dir* folders "
                               f"({', '.join(d.name for d in dirs) or 'none'}); the {split} split needs positions "
                               f"{SPLIT_DIRS[split]} of the 7 of the archive. Expected layout:\n{LAYOUT}")
        self.recordings = [_Recording(dirs[i]) for i in SPLIT_DIRS[split]]
        self.samples = [(r, k) for r in range(len(self.recordings)) for k in range(len(self.recordings[r].masks))]
        self.empty_windows = 0
        _logger.info("DDD17 %s: %d labelled frames in %s", split, len(self.samples),
                     ", ".join(r.folder.name for r in self.recordings))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        rec_i, k = self.samples[index]
        rec = self.recordings[rec_i]
        mask_path, frame_path, row = rec.masks[k]
        name = f"{rec.folder.name}_{mask_path.stem.rsplit('_', 1)[-1]}"
        label = decode(mask_path, name, _read_mask)
        if label.shape != LABEL_SIZE:
            raise DatasetError(f"DDD17: label {mask_path} is {label.shape[0]}x{label.shape[1]}, expected "
                               f"{LABEL_SIZE[0]}x{LABEL_SIZE[1]} (the {SENSOR_SIZE[0]}-row frame without its "
                               f"bottom {SENSOR_SIZE[0] - LABEL_SIZE[0]} rows)")
        frame = decode(frame_path, name, _read_gray)
        if frame.shape != SENSOR_SIZE:
            raise DatasetError(f"DDD17: frame {frame_path} is {frame.shape[0]}x{frame.shape[1]}, expected "
                               f"{SENSOR_SIZE[0]}x{SENSOR_SIZE[1]}")
        x, y, t, p = rec.events(row)
        if t.size == 0:
            self.empty_windows += 1
            _logger.warning("DDD17: no events in the %d ms before %s (frame %d of %s); using a zero voxel grid "
                            "(%d empty windows so far)", WINDOW_MS, frame_path.name, row, rec.folder,
                            self.empty_windows)
        grid = voxel_grid(x, y, t, p, *SENSOR_SIZE, num_bins=NUM_BINS)[:, :LABEL_SIZE[0]]  # cut bottom 60 rows
        sample = {"image": frame[:LABEL_SIZE[0], :, None],
                  "events": grid.permute(1, 2, 0).numpy(),                                  # H×W×B view
                  "semseg": label.astype(np.float32)[..., None],
                  "meta": {"img_name": name, "img_size": LABEL_SIZE}}
        return self.transform(sample) if self.transform is not None else sample


def extract_frames(root: str | os.PathLike, progress: bool = True) -> dict[str, int]:
    """Write ``dir*/imgs/img_%08d.png`` (numbered from 1, grey) from every ``dir*/video.mp4`` under ``root``.

    Resumable: frames already on disk are not rewritten, and a recording whose extraction finished (marker
    ``imgs/.complete`` holding the frame count) is skipped without decoding. Files are written atomically.
    Returns {dir name: frame count}.
    """
    import cv2
    from tqdm import tqdm

    root = Path(root).expanduser().resolve()
    dirs = sorted(d for d in root.glob("dir*") if d.is_dir())
    if not dirs:
        raise DatasetError(f"DDD17: no dir* folders in {root}. Expected layout:\n{LAYOUT}")
    counts = {}
    for d in dirs:
        video, out = d / "video.mp4", d / "imgs"
        done = out / ".complete"
        if done.is_file():
            counts[d.name] = int(done.read_text())
            continue
        if not video.is_file():
            raise DatasetError(f"DDD17: missing {video}; the frames are extracted from it")
        cap = cv2.VideoCapture(str(video))
        if not cap.isOpened():
            raise DatasetError(f"DDD17: OpenCV cannot open {video} (is it an MP4 video?)")
        out.mkdir(exist_ok=True)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        n = 0
        with tqdm(total=total, desc=f"frames {d.name}", unit="frame", disable=not progress) as bar:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                n += 1
                path = out / f"img_{n:08d}.png"
                if not path.is_file():
                    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
                    encoded, png = cv2.imencode(".png", gray)
                    if not encoded:
                        raise DatasetError(f"DDD17: cannot encode frame {n} of {video}")
                    tmp = path.with_name(path.name + ".part")
                    tmp.write_bytes(png.tobytes())
                    os.replace(tmp, path)
                bar.update()
        cap.release()
        if n == 0:
            raise DatasetError(f"DDD17: no frame could be decoded from {video}")
        done.write_text(str(n))
        counts[d.name] = n
        _logger.info("DDD17: %s: %d frames in %s", d.name, n, out)
    return counts

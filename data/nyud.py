"""NYUDv2 in the layout of the ``NYUDv2.tar.gz`` archive (DATA.md §2).

Tasks: semseg (40 classes), depth (metres), normals, edge. Every loaded target is a float32 H×W×C
array; transforms (``data.transforms``) turn the sample into tensors.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from data.io import (DatasetError, check_labels, check_root, check_size, check_tasks, decode, read_image,
                     read_npy, read_png, read_split)

__all__ = ["NYUDv2", "NYUD_TASKS", "NYUD_CLASSES"]

_logger = logging.getLogger(__name__)

NYUD_TASKS = ("semseg", "depth", "normals", "edge")

# DATA.md §2.4: output index 0..39 (stored label 1..40); "refridgerator" is spelled as in the benchmark.
NYUD_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)

# folder and extension per task (DATA.md §2.1, §2.6: png / png / png / png / npy)
_FILES = {"image": ("images", ".png"), "semseg": ("segmentation", ".png"), "depth": ("depth", ".npy"),
          "normals": ("normals", ".png"), "edge": ("edge", ".png")}

LAYOUT = """NYUDv2/                     (extracted from NYUDv2.tar.gz, data.vision.ee.ethz.ch/brdavid/atrc/)
  gt_sets/{train,val}.txt     one 4-digit id per line
  images/<id>.png             RGB
  segmentation/<id>.png       8-bit, 0 = void, 1..40 = classes
  depth/<id>.npy              2-D float, metres
  normals/<id>.png            RGB-encoded unit normals
  edge/<id>.png               8-bit {0, 255}"""


class NYUDv2(Dataset):
    """NYUDv2 multi-task dataset.

    Args:
        root: the ``NYUDv2/`` folder itself (absolute or relative; it is resolved).
        split: ``"train"`` or ``"val"`` (ids from ``gt_sets/<split>.txt``).
        tasks: any subset of ``NYUD_TASKS``.
        transform: callable applied to the sample dict (e.g. ``data.transforms.train_transforms``).

    Items: ``{image, <task>..., meta: {img_name, img_size}}`` with ``img_size = (H, W)`` of the stored image.
    Every requested file of every id is checked at construction, so a missing file fails here and not
    in a worker.
    """

    def __init__(self, root: str | os.PathLike, split: str, tasks: Sequence[str],
                 transform: Optional[Callable[[dict], dict]] = None) -> None:
        self.root = Path(root).expanduser().resolve()
        if split not in ("train", "val"):
            raise DatasetError(f"NYUDv2: split must be 'train' or 'val', got {split!r}")
        self.split = split
        self.tasks = check_tasks(tasks, NYUD_TASKS, "NYUDv2")
        self.transform = transform
        check_root(self.root, ["gt_sets"] + [_FILES[k][0] for k in ["image", *self.tasks]], LAYOUT)
        self.ids = read_split(self.root / "gt_sets" / f"{split}.txt")
        for img_id in self.ids:
            for key in ["image", *self.tasks]:
                path = self._path(key, img_id)
                if not path.is_file():
                    raise DatasetError(f"NYUDv2 {split}: id {img_id}: missing {key} file {path}")
        _logger.info("NYUDv2 %s: %d images, tasks %s", split, len(self.ids), self.tasks)

    def _path(self, key: str, img_id: str) -> Path:
        folder, ext = _FILES[key]
        return self.root / folder / f"{img_id}{ext}"

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        img_id = self.ids[index]
        image = decode(self._path("image", img_id), img_id, read_image)
        size = image.shape[:2]
        sample = {"image": image}
        for task in self.tasks:
            path = self._path(task, img_id)
            sample[task] = check_size(getattr(self, f"_load_{task}")(path, img_id), size, img_id, path)
        sample["meta"] = {"img_name": img_id, "img_size": (int(size[0]), int(size[1]))}
        return self.transform(sample) if self.transform is not None else sample

    # ---- per-task decoding (DATA.md §2.3) ----
    @staticmethod
    def _load_semseg(path: Path, img_id: str) -> np.ndarray:
        # stored 0 = void -> 255; stored 1..40 -> 0..39
        label = decode(path, img_id, lambda p: read_png(p, 1)).astype(np.float32) - 1.0
        label[label == -1] = 255
        return check_labels(label, len(NYUD_CLASSES), img_id, path)[..., None]

    @staticmethod
    def _load_depth(path: Path, img_id: str) -> np.ndarray:
        return decode(path, img_id, read_npy)[..., None]  # metres; 0 = invalid (→255 in AddIgnoreRegions)

    @staticmethod
    def _load_normals(path: Path, img_id: str) -> np.ndarray:
        rgb = decode(path, img_id, lambda p: read_png(p, 3)).astype(np.float32)
        return 2.0 * rgb / 255.0 - 1.0

    @staticmethod
    def _load_edge(path: Path, img_id: str) -> np.ndarray:
        return (decode(path, img_id, lambda p: read_png(p, 1)).astype(np.float32) / 255.0)[..., None]

"""Cityscapes in the layout of the official MTMamba Cityscapes protocol (CITYSCAPES.md §1, DATA.md §7).

Tasks: semseg (the 19 train classes) and depth, which is **disparity**. Images are stored at 1024×2048 and resized
to ``TRAIN.SCALE`` (512×1024) by :func:`data.transforms.resize_transforms`; the labels stay at their stored size and
the model's predictions are resized to it (config ``LABEL_SCALE``). No augmentation. Every loaded target is a
float32 H×W×1 array.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from data.io import (DatasetError, check_root, check_size, check_tasks, decode, read_image, read_png, read_png16)
from data.transforms import IGNORE

__all__ = ["Cityscapes", "CITYSCAPES_TASKS", "CITYSCAPES_CLASSES", "VALID_LABEL_IDS", "SKY_LABEL_IDS",
           "ORIGINAL_SIZE", "train_ids", "disparity_target"]

_logger = logging.getLogger(__name__)

CITYSCAPES_TASKS = ("semseg", "depth")
ORIGINAL_SIZE = (1024, 2048)         # H×W of every stored image and label map
# labelIds of the 19 train classes, in trainId order 0..18; every other labelId (0-6, 9, 10, 14-16, 18, 29, 30)
# is ignored (255)
VALID_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")
MAX_LABEL_ID = 33                    # labelIds of gtFine *_labelIds.png are 0..33
# labelId whose disparity is set to 0: 10 is the official code's (commented "sky", but labelId 10 is rail track; a
# bug inherited from TaskPrompter, and the released weights were trained with it), 23 is the sky
SKY_LABEL_IDS = (10, 23)
ZIPS = ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip", "disparity_trainvaltest.zip")

_TRAIN_ID_LUT = np.full(256, IGNORE, dtype=np.uint8)
_TRAIN_ID_LUT[list(VALID_LABEL_IDS)] = np.arange(len(VALID_LABEL_IDS), dtype=np.uint8)

# folder and file-name suffix per key; file = <folder>/<split>/<city>/<stem>_<suffix>
_FILES = {"image": ("leftImg8bit", "leftImg8bit.png"), "label": ("gtFine", "gtFine_labelIds.png"),
          "disparity": ("disparity", "disparity.png")}

LAYOUT = f"""cityscapes_all/             (extract {', '.join(ZIPS)}
                             from cityscapes-dataset.com into this one folder)
  leftImg8bit/{{train,val}}/<city>/<city>_<seq>_<frame>_leftImg8bit.png   RGB, 1024x2048
  gtFine/{{train,val}}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png     8-bit labelIds 0..33
  disparity/{{train,val}}/<city>/<city>_<seq>_<frame>_disparity.png        16-bit, 0 = invalid"""


def train_ids(label_ids: np.ndarray) -> np.ndarray:
    """gtFine labelIds (H×W uint8) -> trainIds 0..18 (``VALID_LABEL_IDS`` order), every other labelId -> 255."""
    return _TRAIN_ID_LUT[label_ids]


def disparity_target(raw: np.ndarray, label_ids: np.ndarray, sky_label_id: int = 10) -> np.ndarray:
    """The official disparity target (CITYSCAPES.md §1), float32 H×W, in this order:
    d = (v − 1) / 256 where the stored 16-bit value v > 0; d = −1 where v = 0 (no measurement); then d = 0 where
    the labelId is ``sky_label_id`` (10 in the official code, see ``SKY_LABEL_IDS``)."""
    if sky_label_id not in SKY_LABEL_IDS:
        raise ValueError(f"sky_label_id={sky_label_id!r} is not valid; valid: {list(SKY_LABEL_IDS)}")
    v = raw.astype(np.float32)
    d = np.where(v > 0, (v - 1.0) / 256.0, np.float32(-1.0)).astype(np.float32)
    d[label_ids == sky_label_id] = 0.0
    return d


class Cityscapes(Dataset):
    """Cityscapes semseg + disparity dataset.

    Args:
        root: the ``cityscapes_all/`` folder itself (absolute or relative; it is resolved).
        split: ``"train"`` (2975 images) or ``"val"`` (500).
        tasks: any subset of ``CITYSCAPES_TASKS``.
        transform: callable applied to the sample dict (``data.transforms.resize_transforms``).
        sky_label_id: labelId whose disparity is set to 0 (config ``cityscapes.sky_label_id``; 10 = official).

    Items: ``{image, <task>..., meta: {img_name, img_size}}``; ``img_name`` is ``<city>_<seq>_<frame>``,
    ``img_size`` the stored (H, W). Ids are the images found under ``leftImg8bit/<split>/``, sorted (the official
    loader walks the folders unsorted). Every needed file of every id is checked at construction; the depth task
    needs the label maps too (the ``sky_label_id`` rule).
    """

    def __init__(self, root: str | os.PathLike, split: str, tasks: Sequence[str],
                 transform: Optional[Callable[[dict], dict]] = None, sky_label_id: int = 10) -> None:
        self.root = Path(root).expanduser().resolve()
        if split not in ("train", "val"):
            raise DatasetError(f"Cityscapes: split must be 'train' or 'val', got {split!r}")
        if sky_label_id not in SKY_LABEL_IDS:
            raise DatasetError(f"Cityscapes: sky_label_id={sky_label_id!r} is not valid; valid: {list(SKY_LABEL_IDS)}")
        self.split, self.sky_label_id = split, sky_label_id
        self.tasks = check_tasks(tasks, CITYSCAPES_TASKS, "Cityscapes")
        self.transform = transform
        self.keys = ["image", "label"] + (["disparity"] if "depth" in self.tasks else [])
        check_root(self.root, [f"{_FILES[k][0]}/{split}" for k in self.keys], LAYOUT)
        image_dir = self.root / _FILES["image"][0] / split
        suffix = "_" + _FILES["image"][1]
        found = sorted(p.relative_to(image_dir) for p in image_dir.glob(f"*/*{suffix}"))
        if not found:
            raise DatasetError(f"Cityscapes {split}: no <city>/*{suffix} under {image_dir}. Expected layout:\n{LAYOUT}")
        self.ids = [(p.parent.name, p.name.removesuffix(suffix)) for p in found]   # (city, stem)
        for city, stem in self.ids:
            for key in self.keys:
                path = self._path(key, city, stem)
                if not path.is_file():
                    raise DatasetError(f"Cityscapes {split}: id {stem}: missing {key} file {path}")
        _logger.info("Cityscapes %s: %d images, tasks %s, sky_label_id %d", split, len(self.ids), self.tasks,
                     sky_label_id)

    def _path(self, key: str, city: str, stem: str) -> Path:
        folder, suffix = _FILES[key]
        return self.root / folder / self.split / city / f"{stem}_{suffix}"

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        city, stem = self.ids[index]
        image = decode(self._path("image", city, stem), stem, read_image)
        size = image.shape[:2]
        label_path = self._path("label", city, stem)
        label = check_size(decode(label_path, stem, _read_label_ids), size, stem, label_path)
        sample = {"image": image}
        if "semseg" in self.tasks:
            sample["semseg"] = train_ids(label).astype(np.float32)[..., None]
        if "depth" in self.tasks:
            path = self._path("disparity", city, stem)
            raw = check_size(decode(path, stem, read_png16), size, stem, path)
            sample["depth"] = disparity_target(raw, label, self.sky_label_id)[..., None]
        sample["meta"] = {"img_name": stem, "img_size": (int(size[0]), int(size[1]))}
        return self.transform(sample) if self.transform is not None else sample


def _read_label_ids(path: Path) -> np.ndarray:
    """A gtFine ``*_labelIds.png`` as uint8 H×W; a value above 33 means another file (color, instanceIds, ...)."""
    label = read_png(path, 1)
    if label.size and int(label.max()) > MAX_LABEL_ID:
        raise ValueError(f"labelId {int(label.max())} > {MAX_LABEL_ID}: not a gtFine *_labelIds.png")
    return label

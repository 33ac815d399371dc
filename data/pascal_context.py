"""PASCAL-Context in the layout of the ``PASCALContext.tar.gz`` archive (DATA.md §3).

Tasks: semseg (21 classes), human_parts (7 classes), sal, normals (distilled, masked to the
normals-valid Context classes), edge (computed from the Context LabelMap).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from data.edges import label_edges
from data.io import (DatasetError, check_labels, check_root, check_size, check_tasks, decode, read_image,
                     read_mat, read_png, read_split)

__all__ = ["PASCALContext", "PASCAL_TASKS", "PASCAL_CLASSES", "HUMAN_PARTS_CLASSES", "PERSON_PART_GROUPS",
           "NORMALS_VALID_IDS", "PERSON_CLASS"]

_logger = logging.getLogger(__name__)

PASCAL_TASKS = ("semseg", "human_parts", "sal", "normals", "edge")
PERSON_CLASS = 15  # VOC class index of 'person'
SEMSEG_CLASSES = 21  # background + the 20 VOC classes
# DATA.md §3.4: output index 0..20 (background, then the VOC classes in the standard order)
PASCAL_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# DATA.md §3.6.2: the 7 classes of the default 6-group person-part labels (PERSON_PART_GROUPS below)
HUMAN_PARTS_CLASSES = ("background", "head", "torso", "upper arm", "lower arm / hand", "upper leg", "lower leg / foot")

# DATA.md §3.6.2: PASCAL-Part person part name -> one of 6 groups (0 = background).
PERSON_PART_GROUPS: dict[str, int] = {
    **{n: 1 for n in ("hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye", "mouth", "nose")},
    **{n: 2 for n in ("neck", "torso")},
    **{n: 3 for n in ("luarm", "ruarm")},
    **{n: 4 for n in ("llarm", "rlarm", "lhand", "rhand")},
    **{n: 5 for n in ("luleg", "ruleg")},
    **{n: 6 for n in ("llleg", "rlleg", "lfoot", "rfoot")},
}

# DATA.md §3.7: the 170 PASCAL-Context ids whose class also exists in NYUv2 (minus 'unknown', plus tvmonitor).
NORMALS_VALID_IDS = np.array([
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49, 50, 51, 53, 55,
    56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101, 104, 105, 107, 111, 113, 115,
    122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165, 172, 174, 181, 183, 184, 191, 193, 195,
    197, 199, 202, 213, 215, 216, 219, 220, 223, 225, 228, 230, 232, 233, 238, 239, 242, 243, 246, 250, 251,
    252, 255, 260, 261, 263, 269, 272, 273, 275, 281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295,
    304, 307, 309, 310, 314, 315, 319, 323, 329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368,
    370, 371, 374, 379, 380, 383, 384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414, 417, 419, 421, 423,
    427, 429, 430, 432, 440, 441, 442, 443, 444, 446, 454, 457,
], dtype=np.int64)
assert NORMALS_VALID_IDS.size == 170

LAYOUT = """PASCALContext/               (extracted from PASCALContext.tar.gz, data.vision.ee.ethz.ch/brdavid/atrc/)
  ImageSets/Context/{train,val}.txt   one VOC id (YYYY_NNNNNN) per line
  ImageSets/Parts/                    parts cache (written on first use if writable)
  JPEGImages/<id>.jpg
  semseg/VOC12/<id>.png | semseg/pascal-context/<id>.png   8-bit, 0..20 and 255
  pascal-context/trainval/<id>.mat    'LabelMap' uint16
  human_parts/<id>.mat                'anno' (PASCAL-Part)
  normals_distill/<id>.png            RGB
  sal_distill/<id>.png                8-bit gray"""

_LABELMAP_DIR = "pascal-context/trainval"
_DIRS = {"image": "JPEGImages", "semseg": "semseg", "human_parts": "human_parts", "sal": "sal_distill",
         "normals": "normals_distill", "edge": _LABELMAP_DIR}


def _person_objects(anno_path: Path, img_id: str) -> list:
    """Objects of a PASCAL-Part ``anno`` struct. Fields are read by position as the archive's reader does
    (DATA.md §3.6.1): anno = (imname, objects); object = (class, class_ind, mask, parts)."""
    def read(p: Path) -> list:
        mat = read_mat(p)
        if "anno" not in mat:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise DatasetError(f"id {img_id}: {p} has no variable 'anno' (found {found})")
        return list(mat["anno"][0][0][1][0])
    return decode(anno_path, img_id, read)


class PASCALContext(Dataset):
    """PASCAL-Context multi-task dataset.

    Args:
        root: the ``PASCALContext/`` folder itself (resolved to an absolute path).
        split: ``"train"``, ``"val"`` or a list of them (ids concatenated in sorted split order, DATA.md §3.2).
        tasks: any subset of ``PASCAL_TASKS``.
        transform: callable applied to the sample dict.
        parts_cache_dir: where the parts cache ``<split>.txt`` (DATA.md §3.6.4) is written; by default
            ``ImageSets/Parts`` inside the dataset when writable, else the cache is kept in memory only.

    Items: ``{image, <task>..., meta: {img_name, img_size}}``. When ``tasks == ["human_parts"]`` the images
    without an annotated person are dropped (DATA.md §3.6.2).
    """

    def __init__(self, root: str | os.PathLike, split: str | Sequence[str], tasks: Sequence[str],
                 transform: Optional[Callable[[dict], dict]] = None,
                 parts_cache_dir: Optional[str | os.PathLike] = None) -> None:
        self.root = Path(root).expanduser().resolve()
        splits = sorted([split] if isinstance(split, str) else list(split))
        if not splits or any(s not in ("train", "val") for s in splits):
            raise DatasetError(f"PASCALContext: split must be 'train', 'val' or a list of them, got {split!r}")
        self.split = "".join(splits)
        self.tasks = check_tasks(tasks, PASCAL_TASKS, "PASCALContext")
        self.transform = transform
        self.parts_cache_dir = Path(parts_cache_dir).expanduser().resolve() if parts_cache_dir else None
        check_root(self.root, ["ImageSets/Context"] + [_DIRS[k] for k in ["image", *self.tasks]], LAYOUT)
        ids = [i for s in splits for i in read_split(self.root / "ImageSets" / "Context" / f"{s}.txt")]
        self._files = {img_id: self._find_files(img_id) for img_id in ids}
        if "human_parts" in self.tasks:
            classes = self._parts_cache(ids)
            if self.tasks == ["human_parts"]:
                ids = [i for i in ids if PERSON_CLASS in classes[i]]
        self.ids = ids
        _logger.info("PASCALContext %s: %d images, tasks %s", self.split, len(self.ids), self.tasks)

    # ---- construction helpers ----
    def _find_files(self, img_id: str) -> dict[str, Path]:
        """Path of every requested file of ``img_id``; raises naming the id and path when one is missing."""
        files = {"image": self.root / "JPEGImages" / f"{img_id}.jpg"}
        if "semseg" in self.tasks:  # VOC12 first, pascal-context as fallback (DATA.md §3.4)
            cands = [self.root / "semseg" / d / f"{img_id}.png" for d in ("VOC12", "pascal-context")]
            found = [c for c in cands if c.is_file()]
            if not found:
                raise DatasetError(f"PASCALContext {self.split}: id {img_id}: missing semseg file "
                                   f"(looked for {cands[0]} and {cands[1]})")
            files["semseg"] = found[0]
        if "edge" in self.tasks or "normals" in self.tasks:
            files["labelmap"] = self.root / _LABELMAP_DIR / f"{img_id}.mat"
        for task, folder, ext in (("human_parts", "human_parts", ".mat"), ("sal", "sal_distill", ".png"),
                                  ("normals", "normals_distill", ".png")):
            if task in self.tasks:
                files[task] = self.root / folder / f"{img_id}{ext}"
        for key, path in files.items():
            if not path.is_file():
                raise DatasetError(f"PASCALContext {self.split}: id {img_id}: missing {key} file {path}")
        return files

    def _parts_cache(self, ids: list[str]) -> dict[str, list[int]]:
        """Per-image object classes (−1 for an empty mask), read from or written to the cache (DATA.md §3.6.4)."""
        name = f"{self.split}.txt"
        dataset_dir = self.root / "ImageSets" / "Parts"
        dirs = [d for d in (self.parts_cache_dir, dataset_dir) if d is not None]
        for d in dirs:
            path = d / name
            if path.is_file():
                try:
                    cache = json.loads(path.read_text())
                except (OSError, ValueError) as exc:
                    _logger.warning("ignoring unreadable parts cache %s: %s", path, exc)
                    continue
                if isinstance(cache, dict) and set(cache) == set(ids):
                    return cache
        cache = {}
        for img_id in ids:
            objs = _person_objects(self._files[img_id]["human_parts"], img_id)
            cache[img_id] = [int(o[1].item()) if int(np.asarray(o[2]).sum()) > 0 else -1 for o in objs]
        target = self.parts_cache_dir
        if target is None and os.access(dataset_dir if dataset_dir.is_dir() else dataset_dir.parent, os.W_OK):
            target = dataset_dir
        if target is None:
            _logger.warning("parts cache kept in memory: %s is not writable and no parts_cache_dir was given",
                            dataset_dir)
        else:
            target.mkdir(parents=True, exist_ok=True)
            (target / name).write_text(json.dumps(cache, indent="\t"))
            _logger.info("wrote parts cache %s", target / name)
        return cache

    # ---- items ----
    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        img_id = self.ids[index]
        files = self._files[img_id]
        image = decode(files["image"], img_id, read_image)
        size = image.shape[:2]
        sample = {"image": image}
        labelmap = None
        if "labelmap" in files:
            labelmap = check_size(self._load_labelmap(files["labelmap"], img_id), size, img_id, files["labelmap"])
        for task in self.tasks:
            if task == "edge":
                sample[task] = label_edges(labelmap)
            elif task == "normals":
                sample[task] = self._load_normals(files[task], img_id, labelmap)
            else:
                sample[task] = getattr(self, f"_load_{task}")(files[task], img_id, size)
            if task != "edge":
                check_size(sample[task], size, img_id, files[task])
        sample["meta"] = {"img_name": img_id, "img_size": (int(size[0]), int(size[1]))}
        return self.transform(sample) if self.transform is not None else sample

    # ---- per-task decoding ----
    @staticmethod
    def _load_labelmap(path: Path, img_id: str) -> np.ndarray:
        def read(p: Path) -> np.ndarray:
            mat = read_mat(p)
            if "LabelMap" not in mat:
                raise DatasetError(f"id {img_id}: {p} has no variable 'LabelMap'")
            return np.asarray(mat["LabelMap"])
        return decode(path, img_id, read)

    @staticmethod
    def _load_semseg(path: Path, img_id: str, size: tuple[int, int]) -> np.ndarray:
        # 0 = background, 1..20 = VOC classes, 255 = void; no remapping (DATA.md §3.4)
        label = decode(path, img_id, lambda p: read_png(p, 1)).astype(np.float32)
        return check_labels(label, SEMSEG_CLASSES, img_id, path)[..., None]

    @staticmethod
    def _load_sal(path: Path, img_id: str, size: tuple[int, int]) -> np.ndarray:
        gray = decode(path, img_id, lambda p: read_png(p, 1)).astype(np.float32)
        return (gray / 255.0 > 0.5).astype(np.float32)[..., None]  # DATA.md §3.8

    @staticmethod
    def _load_human_parts(path: Path, img_id: str, size: tuple[int, int]) -> np.ndarray:
        """7-class part map (DATA.md §3.6.2): persons with parts only, later parts overwrite earlier ones."""
        label = None
        for obj in _person_objects(path, img_id):
            parts = obj[3]
            if int(obj[1].item()) != PERSON_CLASS or len(parts) == 0:
                continue
            if label is None:
                label = np.zeros(np.asarray(obj[2]).shape, dtype=np.float32)
            for part in parts[0]:
                name = str(part[0][0])
                if name not in PERSON_PART_GROUPS:
                    raise DatasetError(f"id {img_id}: {path}: unknown person part name {name!r}")
                mask = check_size(np.asarray(part[1]), label.shape, img_id, path)
                label[mask > 0] = PERSON_PART_GROUPS[name]
        if label is None:  # no person with parts: all background, later all-ignore (§4.1 step 7)
            label = np.zeros(size, dtype=np.float32)
        return label[..., None]

    @staticmethod
    def _load_normals(path: Path, img_id: str, labelmap: np.ndarray) -> np.ndarray:
        rgb = check_size(decode(path, img_id, lambda p: read_png(p, 3)), labelmap.shape, img_id, path)
        normals = np.zeros(rgb.shape, dtype=np.float32)
        valid = np.isin(labelmap, NORMALS_VALID_IDS)  # DATA.md §3.7: zero (→ ignore) outside valid classes
        normals[valid] = 2.0 * rgb[valid].astype(np.float32) / 255.0 - 1.0
        return normals

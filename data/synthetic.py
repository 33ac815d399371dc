"""Miniature NYUDv2, PASCAL-Context and Cityscapes datasets written in exactly the released formats (DATA.md §6,
CITYSCAPES.md §1).

The maps are built from tiles and lines, so boundaries, every class, every human-parts case and the
normals-valid/invalid Context ids occur. Used by the tests, the demo and ``scripts/bench_data.py``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
import numpy as np

__all__ = ["write_nyud", "write_pascal", "write_cityscapes", "NYUD_DEFAULT_SIZE", "PASCAL_DEFAULT_SIZE",
           "CITYSCAPES_DEFAULT_SIZE"]

_logger = logging.getLogger(__name__)

NYUD_DEFAULT_SIZE = (85, 112)      # 1/5 of the released 425×560; any size ≤ 448×576 keeps val batchable
PASCAL_DEFAULT_SIZE = (75, 100)    # orientation alternates per id (H×W, W×H); released images are ≤ 500
CITYSCAPES_DEFAULT_SIZE = (64, 128)  # 1/16 of the released 1024×2048 (then TRAIN.SCALE 32×64 keeps the 1/2 ratio)
CITYSCAPES_NUM_LABEL_IDS = 34      # gtFine labelIds 0..33
CITYSCAPES_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau")}
NYUD_NUM_LABELS = 41               # stored 0 (void) .. 40
PASCAL_NUM_CLASSES = 21            # 0 background .. 20
# DATA.md §6.2: normals-valid Context ids (person, tvmonitor, chair, car, wall, floor, table, sofa, dog, cat)
# mixed with invalid ones (unlabelled, aeroplane, bird, sky, grass, tree, unknown).
CONTEXT_IDS = (284, 0, 427, 2, 72, 25, 59, 360, 440, 187, 158, 420, 397, 431, 368, 113, 65)
CONTEXT_LINE_ID = 324              # road (invalid for normals): a horizontal line through every LabelMap
PERSON_PARTS = ("hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye", "mouth", "nose", "neck",
                "torso", "luarm", "ruarm", "llarm", "rlarm", "lhand", "rhand", "luleg", "ruleg", "llleg", "rlleg",
                "lfoot", "rfoot")
# scipy.io.savemat layouts of the PASCAL-Part struct, fields in the archive's order (DATA.md §3.6.1)
_PART = [("part_name", "O"), ("mask", "O")]
_OBJ = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
_ANNO = [("imname", "O"), ("objects", "O")]


def _tiles(size: tuple[int, int], n_values: int, offset: int) -> np.ndarray:
    """H×W int map of square tiles whose values cycle through 0..n_values−1 starting at ``offset``."""
    h, w = size
    t = max(3, min(h, w) // 6)
    rows, cols = np.arange(h)[:, None] // t, np.arange(w)[None, :] // t
    return (rows * (w // t + 1) + cols + offset) % n_values


def _boundaries(label: np.ndarray) -> np.ndarray:
    """Bool map of pixels whose right or lower neighbour has another label."""
    edge = np.zeros(label.shape, dtype=bool)
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge[:-1, :] |= label[:-1, :] != label[1:, :]
    return edge


def _normals_rgb(label: np.ndarray) -> np.ndarray:
    """Unit normals varying per region, encoded as uint8 round((n + 1) / 2 · 255) (DATA.md §6.1)."""
    a = 0.2 + 1.2 * (label % 7) / 7.0
    b = 2 * np.pi * (label % 5) / 5.0
    n = np.stack([np.sin(a) * np.cos(b), np.sin(a) * np.sin(b), np.cos(a)], axis=-1)
    return np.round((n + 1) / 2 * 255).astype(np.uint8)


def _image(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 image: a colour per region plus noise."""
    palette = rng.integers(0, 256, size=(int(label.max()) + 1, 3))
    noise = rng.integers(-20, 21, size=label.shape + (3,))
    return np.clip(palette[label] + noise, 0, 255).astype(np.uint8)


def _save_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image
    Image.fromarray(arr).save(path)  # 2-D uint8 -> mode L, H×W×3 uint8 -> RGB (DATA.md §8.5)


def _write_split(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def write_nyud(out: str | os.PathLike, n_train: int = 4, n_val: int = 2,
               size: tuple[int, int] = NYUD_DEFAULT_SIZE, seed: int = 0) -> Path:
    """Write ``<out>/NYUDv2`` (DATA.md §2, §6.1); returns that folder.

    Val ids are ``0001..``, train ids follow. Semseg tiles cycle through stored values 0..40 (0 = void),
    edges are the tile boundaries ({0, 255}), depth is a 0.5..10 m ramp with an invalid (0) patch.
    """
    root = Path(out) / "NYUDv2"
    rng = np.random.default_rng(seed)
    ids = [f"{i:04d}" for i in range(1, n_train + n_val + 1)]
    _write_split(root / "gt_sets" / "val.txt", ids[:n_val])
    _write_split(root / "gt_sets" / "train.txt", ids[n_val:])
    for d in ("images", "segmentation", "depth", "normals", "edge"):
        (root / d).mkdir(parents=True, exist_ok=True)
    h, w = size
    for k, img_id in enumerate(ids):
        label = _tiles(size, NYUD_NUM_LABELS, offset=11 * k).astype(np.uint8)
        _save_png(_image(label, rng), root / "images" / f"{img_id}.png")
        _save_png(label, root / "segmentation" / f"{img_id}.png")
        _save_png(np.where(_boundaries(label), 255, 0).astype(np.uint8), root / "edge" / f"{img_id}.png")
        _save_png(_normals_rgb(label), root / "normals" / f"{img_id}.png")
        depth = (0.5 + 9.5 * (np.arange(h)[:, None] + np.arange(w)[None, :]) / (h + w)
                 + 0.01 * label).astype(np.float32)
        depth[: max(1, h // 10), : max(1, w // 4)] = 0.0  # invalid depth (DATA.md §2.3)
        np.save(root / "depth" / f"{img_id}.npy", depth)
    _logger.info("wrote synthetic NYUDv2 (%d train, %d val, %dx%d) to %s", n_train, n_val, h, w, root)
    return root


def _anno(img_id: str, size: tuple[int, int], case: int) -> np.ndarray:
    """PASCAL-Part ``anno`` struct for one of the cases of DATA.md §6.2:
    0 person with parts; 1 dog only (no parts); 2 person with parts + dog + an empty-mask cat (cache −1);
    3 person without parts (0×0 parts)."""
    h, w = size
    person = np.zeros(size, dtype=np.uint8)
    y0, y1, x0, x1 = h // 6, h - h // 6, w // 6, w // 2
    person[y0:y1, x0:x1] = 1
    dog = np.zeros(size, dtype=np.uint8)
    dog[h // 3:h - h // 12, w // 2 + 1:w - w // 12] = 1
    parts = np.empty((1, len(PERSON_PARTS)), dtype=_PART)
    ys = np.linspace(y0, y1, 7).astype(int)   # 6 × 4 grid of part cells inside the person box
    xs = np.linspace(x0, x1, 5).astype(int)
    for k, name in enumerate(PERSON_PARTS):
        mask = np.zeros(size, dtype=np.uint8)
        r, c = divmod(k, 4)
        mask[ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = 1
        parts[0, k] = (name, mask)
    no_parts = np.empty((0, 0), dtype=_PART)
    objs_spec = {
        0: [("person", 15, person, parts)],
        1: [("dog", 12, dog, no_parts)],
        2: [("person", 15, person, parts), ("dog", 12, dog, no_parts),
            ("cat", 8, np.zeros(size, dtype=np.uint8), no_parts)],
        3: [("person", 15, person, no_parts)],
    }[case]
    objs = np.empty((1, len(objs_spec)), dtype=_OBJ)
    for j, (cls, ind, mask, prt) in enumerate(objs_spec):
        objs[0, j] = (cls, np.array([[float(ind)]]), mask, prt)
    anno = np.empty((1, 1), dtype=_ANNO)
    anno[0, 0] = (img_id, objs)
    return anno


def write_pascal(out: str | os.PathLike, n_train: int = 4, n_val: int = 2,
                 size: tuple[int, int] = PASCAL_DEFAULT_SIZE, seed: int = 0) -> Path:
    """Write ``<out>/PASCALContext`` (DATA.md §3, §6.2); returns that folder.

    Ids are ``2008_NNNNNN``; the image orientation alternates (``size`` and its transpose). The human-parts
    case cycles within each split (person with parts, dog only, person with parts + dog + empty cat, person
    without parts), so every split starts with a person-with-parts image. Semseg goes to ``semseg/VOC12``
    for even and ``semseg/pascal-context`` for odd indices. ``ImageSets/Parts`` is created empty (the loader
    writes the parts cache there).
    """
    import scipy.io
    from PIL import Image

    root = Path(out) / "PASCALContext"
    rng = np.random.default_rng(seed)
    ids = [f"2008_{n:06d}" for n in range(2, 2 + n_train + n_val)]
    splits = {"train": ids[:n_train], "val": ids[n_train:]}
    for name, split_ids in splits.items():
        _write_split(root / "ImageSets" / "Context" / f"{name}.txt", split_ids)
    for d in ("ImageSets/Parts", "JPEGImages", "semseg/VOC12", "semseg/pascal-context", "pascal-context/trainval",
              "human_parts", "normals_distill", "sal_distill"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for k, img_id in enumerate(ids):
        case = (k if k < n_train else k - n_train) % 4
        hw = size if k % 2 == 0 else (size[1], size[0])
        h, _ = hw
        context = np.asarray(CONTEXT_IDS)[_tiles(hw, len(CONTEXT_IDS), offset=5 * k)].astype(np.uint16)
        context[h // 2 + 1: h // 2 + 3] = CONTEXT_LINE_ID
        scipy.io.savemat(root / "pascal-context" / "trainval" / f"{img_id}.mat", {"LabelMap": context})
        semseg = _tiles(hw, PASCAL_NUM_CLASSES, offset=7 * k).astype(np.uint8)
        semseg[h // 2] = 255  # a void row (VOC boundary band)
        _save_png(semseg, root / "semseg" / ("VOC12" if k % 2 == 0 else "pascal-context") / f"{img_id}.png")
        Image.fromarray(_image(semseg % 255, rng)).save(root / "JPEGImages" / f"{img_id}.jpg", quality=90)
        _save_png(_normals_rgb(context.astype(np.int64)), root / "normals_distill" / f"{img_id}.png")
        _save_png(((_tiles(hw, 9, offset=k) * 32).clip(0, 255)).astype(np.uint8),
                  root / "sal_distill" / f"{img_id}.png")
        scipy.io.savemat(root / "human_parts" / f"{img_id}.mat", {"anno": _anno(img_id, hw, case)})
    _logger.info("wrote synthetic PASCALContext (%d train, %d val) to %s", n_train, n_val, root)
    return root


def write_cityscapes(out: str | os.PathLike, n_train: int = 4, n_val: int = 2,
                     size: tuple[int, int] = CITYSCAPES_DEFAULT_SIZE, seed: int = 0) -> Path:
    """Write ``<out>/cityscapes_all`` (CITYSCAPES.md §1); returns that folder.

    Each split spreads its images over two cities (``<city>/<city>_<seq>_<frame>_leftImg8bit.png``), written in
    reverse order so that only a sorted listing gives ``sorted`` ids. gtFine labelIds tiles cycle through 0..33
    (10 = rail track and 23 = sky included); the 16-bit disparity is a ramp from 1 to 30000 (disparities 0 to
    ~117, so both sides of the evaluation cap 80 occur) with an invalid (0) patch.
    """
    import cv2

    root = Path(out) / "cityscapes_all"
    rng = np.random.default_rng(seed)
    h, w = size
    k = 0
    for split, count in (("train", n_train), ("val", n_val)):
        cities = CITYSCAPES_CITIES[split]
        for n in reversed(range(count)):
            city = cities[n % len(cities)]
            stem = f"{city}_{n:06d}_{19 * n + 3:06d}"
            folders = {name: root / name / split / city for name in ("leftImg8bit", "gtFine", "disparity")}
            for folder in folders.values():
                folder.mkdir(parents=True, exist_ok=True)
            label = _tiles(size, CITYSCAPES_NUM_LABEL_IDS, offset=7 * k).astype(np.uint8)
            _save_png(_image(label, rng), folders["leftImg8bit"] / f"{stem}_leftImg8bit.png")
            _save_png(label, folders["gtFine"] / f"{stem}_gtFine_labelIds.png")
            ramp = np.linspace(1, 30000, h * w).reshape(h, w) + 37 * label
            disparity = np.clip(ramp, 1, 65535).astype(np.uint16)
            disparity[h // 4: h // 2, w // 8: w // 4] = 0          # no measurement
            if not cv2.imwrite(str(folders["disparity"] / f"{stem}_disparity.png"), disparity):   # 16-bit PNG
                raise OSError(f"cannot write {folders['disparity'] / f'{stem}_disparity.png'}")
            k += 1
    _logger.info("wrote synthetic Cityscapes (%d train, %d val, %dx%d) to %s", n_train, n_val, h, w, root)
    return root

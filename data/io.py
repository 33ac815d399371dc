"""File access shared by the dataset classes: split files, PNG/JPEG/NPY/MAT decoding and the
error type that names the culprit (path and image id).

Every decode goes through :func:`decode`, so a corrupt or unreadable file raises a
:class:`DatasetError` naming the id and the path instead of a bare PIL/NumPy traceback from a
DataLoader worker.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np

__all__ = ["DatasetError", "check_root", "read_split", "check_labels", "decode", "read_image", "read_png",
           "read_png16", "read_npy", "read_mat", "check_size", "check_tasks"]

T = TypeVar("T")


class DatasetError(RuntimeError):
    """Bad dataset input (missing folder or file, corrupt file, size mismatch, unknown task).

    The message always names the path and, when known, the image id.
    """


def check_root(root: Path, required: Sequence[str], layout: str) -> None:
    """Fail with the expected layout when ``root`` or one of its ``required`` sub-folders is missing."""
    missing = [r for r in required if not (root / r).is_dir()]
    if not root.is_dir() or missing:
        what = f"dataset folder {root} does not exist" if not root.is_dir() else \
            f"dataset folder {root} lacks {', '.join(missing)}"
        raise DatasetError(f"{what}. Expected layout:\n{layout}")


def read_split(path: Path) -> list[str]:
    """Ids of a split file, one per line; a trailing newline is fine (DATA.md §1). A blank line inside, an empty
    file and an id listed twice (it would be counted twice by every metric) are errors naming the file."""
    if not path.is_file():
        raise DatasetError(f"split file not found: {path}")
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DatasetError(f"split file {path} is empty: it must list one image id per line")
    first_line: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        img_id = line.strip()
        if not img_id:
            raise DatasetError(f"split file {path}: line {n} is blank")
        if img_id in first_line:
            raise DatasetError(f"split file {path}: id {img_id} is listed twice (lines {first_line[img_id]} and {n}); "
                               f"each image must appear once")
        first_line[img_id] = n
    return list(first_line)


def check_labels(label: np.ndarray, num_classes: int, img_id: str, path: Path, ignore: int = 255) -> np.ndarray:
    """Class ids must lie in ``0 .. num_classes - 1`` or be ``ignore``; otherwise name the id, file and values."""
    bad = np.unique(label[(label != ignore) & ((label < 0) | (label >= num_classes))])
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
        raise DatasetError(f"id {img_id}: {path} has label values {shown} outside 0..{num_classes - 1} "
                           f"({ignore} = ignore)")
    return label


def decode(path: Path, img_id: str, reader: Callable[[Path], T]) -> T:
    """Run ``reader(path)``; any failure becomes a DatasetError naming ``img_id`` and ``path``.

    Readers raise ValueError for a wrong format; a DatasetError from a reader already names both and passes.
    """
    try:
        return reader(path)
    except DatasetError:
        raise
    except Exception as exc:  # PIL, NumPy and scipy raise many unrelated types for corrupt input
        raise DatasetError(f"id {img_id}: cannot read {path}: {type(exc).__name__}: {exc}") from exc


def read_image(path: Path) -> np.ndarray:
    """RGB image (PNG or JPEG, grayscale converted) as float32 H×W×3 in 0..255."""
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32)


def read_png(path: Path, channels: int) -> np.ndarray:
    """8-bit PNG as uint8 H×W (``channels=1``: mode L or P indices) or H×W×3 (``channels=3``: RGB)."""
    from PIL import Image
    with Image.open(path) as im:
        arr = np.asarray(im)
    want = 2 if channels == 1 else 3
    if arr.ndim != want or (channels == 3 and arr.shape[2] != 3) or arr.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit {'single-channel' if channels == 1 else 'RGB'} PNG, "
                         f"got array {arr.dtype} {arr.shape}")
    return arr


def read_png16(path: Path) -> np.ndarray:
    """16-bit single-channel PNG as uint16 H×W, read unchanged (OpenCV ``IMREAD_UNCHANGED``)."""
    import cv2
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("not a readable image")
    if arr.ndim != 2 or arr.dtype != np.uint16:
        raise ValueError(f"expected a 16-bit single-channel PNG, got array {arr.dtype} {arr.shape}")
    return arr


def read_npy(path: Path) -> np.ndarray:
    """2-D ``.npy`` array (an H×W×1 array is accepted) as float32 H×W."""
    arr = np.load(path, allow_pickle=False)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {arr.shape}")
    return arr.astype(np.float32)


def read_mat(path: Path) -> dict:
    """MATLAB file as scipy's dict (default ``loadmat`` options, which the field indexing relies on)."""
    import scipy.io
    return scipy.io.loadmat(str(path))


def check_size(arr: np.ndarray, size: tuple[int, int], img_id: str, path: Path) -> np.ndarray:
    """Label maps must have the image's H×W (DATA.md §2.3, §3.7); we refuse to resize silently."""
    if tuple(arr.shape[:2]) != tuple(size):
        raise DatasetError(f"id {img_id}: {path} is {arr.shape[0]}x{arr.shape[1]} but its image is "
                           f"{size[0]}x{size[1]}")
    return arr


def check_tasks(tasks: Sequence[str], valid: Sequence[str], dataset: str) -> list[str]:
    """Validate a task subset; returns it as a list in the caller's order."""
    tasks = list(tasks)
    unknown = [t for t in tasks if t not in valid]
    if unknown:
        raise DatasetError(f"unknown task(s) {unknown} for {dataset}; valid: {list(valid)}")
    if len(set(tasks)) != len(tasks):
        raise DatasetError(f"duplicate task names in {tasks}")
    return tasks

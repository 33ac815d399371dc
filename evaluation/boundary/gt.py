"""Boundary ground truth for the SEISM protocol: G = thin(seg2bmap(L)) (EVALUATION.md §7.1, §10.1).

- PASCAL-Context: L = ``LabelMap`` of ``pascal-context/trainval/<id>.mat`` (raw 459-class map), relabelled so
  that every 4-connected component of equal label has its own id (SEISM ``relabel``).
- NYUD: L = ``edge/<id>.png`` read as an integer image and treated as a label map, with no relabel; the GT is
  the outline of the edge strokes, not the strokes themselves.

These readers open the files directly and depend on nothing in ``data/``.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import scipy.io
from scipy import ndimage

from evaluation.boundary.thin import thin

__all__ = ["seg2bmap", "relabel4", "build_gt", "read_label_map", "gt_path"]

_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity


def seg2bmap(labels: np.ndarray) -> np.ndarray:
    """1-px boundary map of a label image (§7.1), shifted half a pixel towards the origin.

    Pixel (y, x) is on the boundary if its label differs from the right, lower or lower-right neighbour. On the
    last row only the right neighbour is compared, on the last column only the lower one; the bottom-right pixel
    is always 0.
    """
    if labels.ndim != 2:
        raise ValueError(f"seg2bmap: expected a 2-D label map, got shape {labels.shape}")
    b = np.zeros(labels.shape, dtype=bool)
    b[:, :-1] |= labels[:, :-1] != labels[:, 1:]        # right
    b[:-1, :] |= labels[:-1, :] != labels[1:, :]        # lower
    b[:-1, :-1] |= labels[:-1, :-1] != labels[1:, 1:]   # lower-right
    return b


def relabel4(labels: np.ndarray) -> np.ndarray:
    """Give every 4-connected component of equal label its own id (1..K), as SEISM's ``relabel`` (§7.1)."""
    out = np.zeros(labels.shape, dtype=np.int32)
    next_id = 0
    for value in np.unique(labels):
        comp, n = ndimage.label(labels == value, structure=_CROSS)
        out[comp > 0] = comp[comp > 0] + next_id
        next_id += n
    return out


def build_gt(labels: np.ndarray, relabel: bool) -> np.ndarray:
    """G = thin(seg2bmap(relabel4(L) if relabel else L)) as a bool H×W map (§7.1)."""
    return thin(seg2bmap(relabel4(labels) if relabel else labels))


def gt_path(dataset: str, db_root: str | Path, image_id: str) -> Path:
    """Where SEISM reads the label map for ``image_id`` (DATA.md §2.1, §3.1)."""
    root = Path(db_root)
    if dataset == "nyud":
        return root / "edge" / f"{image_id}.png"
    if dataset == "pascal":
        return root / "pascal-context" / "trainval" / f"{image_id}.mat"
    raise ValueError(f"dataset {dataset!r} is not supported; valid: ['nyud', 'pascal']")


def read_label_map(dataset: str, db_root: str | Path, image_id: str) -> np.ndarray:
    """The integer label map L that the GT is built from (NYUD edge PNG as labels; PASCAL ``LabelMap``)."""
    path = gt_path(dataset, db_root, image_id)
    if not path.is_file():
        raise FileNotFoundError(f"boundary GT source not found: {path} (check --db_root)")
    if dataset == "nyud":
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"cannot decode {path}")
        if img.ndim == 3:  # DATA.md: single channel; tolerate a replicated-grey RGB file
            img = img[..., 0]
        return img.astype(np.int32)
    mat = scipy.io.loadmat(str(path), variable_names=["LabelMap"])
    if "LabelMap" not in mat:
        raise KeyError(f"{path} has no variable 'LabelMap'")
    return mat["LabelMap"].astype(np.int32)

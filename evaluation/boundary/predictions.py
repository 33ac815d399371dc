"""Reading saved edge predictions: 8-bit grey PNGs at original size, floor(255·sigmoid) (EVALUATION.md §1, §7.1).

Accepts a folder of ``<id>.png`` or the layout written by the official InvPT/MTMamba code (``<save_dir>/edge/<id>.png``).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["resolve_pred_dir", "read_prediction"]


def resolve_pred_dir(pred_dir: str | Path, ids: tuple[str, ...] | list[str]) -> Path:
    """The folder that holds ``<id>.png`` for every id (``pred_dir`` or ``pred_dir/edge``); errors list what is missing."""
    root = Path(pred_dir)
    for candidate in (root, root / "edge"):
        if candidate.is_dir() and any((candidate / f"{i}.png").is_file() for i in ids[:10]):
            missing = [i for i in ids if not (candidate / f"{i}.png").is_file()]
            if missing:
                raise FileNotFoundError(f"{len(missing)} of {len(ids)} predictions missing in {candidate}, e.g. "
                                        f"{missing[:3]}")
            return candidate
    raise FileNotFoundError(f"no <id>.png predictions found in {root} or {root / 'edge'}")


def read_prediction(path: str | Path) -> np.ndarray:
    """uint8 H×W map; a 3-channel file is accepted only if its channels are equal (grey saved as RGB)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot decode {path}")
    if img.dtype != np.uint8:
        raise ValueError(f"{path}: expected an 8-bit PNG (floor(255·sigmoid)), got {img.dtype}")
    if img.ndim == 3:
        if not (img[..., :3] == img[..., :1]).all():
            raise ValueError(f"{path}: colour image; edge predictions must be grey")
        img = img[..., 0]
    return np.ascontiguousarray(img)

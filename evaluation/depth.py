"""Depth errors pooled over all valid pixels of the split (EVALUATION.md §5, NYUD; CITYSCAPES.md §1).

Valid pixels: GT ≠ ``ignore_value`` (255, the AddIgnoreRegions marker) and GT ≠ 0 (0 = no depth, also padding);
with a ``valid_range`` (lo, hi) instead lo < GT < hi (Cityscapes disparity: 0 < GT < 80, the official mask).
No depth cap otherwise, no Eigen crop, no median scaling. Predictions are clamped at ≥ 0; before logs, values ≤ 0
become 1e-9 in both prediction and GT.
"""
from __future__ import annotations

from typing import Any

import torch

from evaluation.base import Meter, as_tensor

__all__ = ["DepthMeter"]

_LOG_FLOOR = 1e-9  # §5


class DepthMeter(Meter):
    """Global pixel-pooled rmse (reported), log_rmse, abs_rel and sq_rel (§5), plus abs_err (mean |pred − gt|, our
    addition); not a mean of per-image errors.

    Args:
        ignore_value: GT value that marks ignored pixels besides 0.
        valid_range: (lo, hi): count exactly the pixels with lo < GT < hi instead (``ignore_value`` and 0 are then
            excluded only if they lie outside the range).
    """

    def __init__(self, ignore_value: float = 255.0, valid_range: tuple[float, float] | None = None) -> None:
        self.ignore_value = ignore_value
        self.valid_range = None if valid_range is None else (float(valid_range[0]), float(valid_range[1]))
        super().__init__()

    def reset(self) -> None:
        # [Σ(pred−gt)², Σ(ln gt − ln pred)², Σ|pred−gt|/gt, Σ(pred−gt)²/gt, Σ|pred−gt|] and the valid-pixel count N
        self.sums = torch.zeros(5, dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.int64)

    def update(self, pred: Any, gt: Any) -> None:
        """Args:
            pred: depth in metres (disparity in pixels on Cityscapes), (B, 1, H, W) or (B, H, W).
            gt: same unit and number of pixels; invalid pixels as described in the class docstring.
        """
        pred, gt = as_tensor(pred).double().reshape(-1), as_tensor(gt).double().reshape(-1)
        if pred.numel() != gt.numel():
            raise ValueError(f"DepthMeter: prediction has {pred.numel()} pixels, GT has {gt.numel()}")
        if self.valid_range is None:
            valid = (gt != self.ignore_value) & (gt != 0)
        else:
            valid = (gt > self.valid_range[0]) & (gt < self.valid_range[1])
        pred, gt = pred[valid].clamp(min=0.0), gt[valid]
        diff = pred - gt
        log_diff = torch.log(gt.clamp(min=_LOG_FLOOR)) - torch.log(pred.clamp(min=_LOG_FLOOR))
        safe_gt = gt.clamp(min=_LOG_FLOOR)
        self.sums += torch.stack([(diff ** 2).sum(), (log_diff ** 2).sum(), (diff.abs() / safe_gt).sum(),
                                  (diff ** 2 / safe_gt).sum(), diff.abs().sum()]).cpu()
        self.count += int(valid.sum())

    def state(self) -> dict[str, torch.Tensor]:
        return {"sums": self.sums, "count": self.count}

    def compute(self) -> dict[str, float]:
        """Returns rmse and log_rmse (sqrt of pooled means), abs_rel, sq_rel and abs_err; units: those of the GT."""
        n = int(self.count)
        if n == 0:
            raise ValueError("DepthMeter.compute: no valid GT pixel was seen")
        sq, log_sq, abs_rel, sq_rel, abs_err = (self.sums / n).tolist()
        return {"rmse": sq ** 0.5, "log_rmse": log_sq ** 0.5, "abs_rel": abs_rel, "sq_rel": sq_rel,
                "abs_err": abs_err}

"""Depth errors pooled over all valid pixels of the split (EVALUATION.md §5, NYUD).

Valid pixels: GT ≠ ``ignore_value`` (255, the AddIgnoreRegions marker) and GT ≠ 0 (0 = no depth, also padding).
No depth cap, no Eigen crop, no median scaling. Predictions are clamped at ≥ 0; before logs, values ≤ 0 become 1e-9
in both prediction and GT.
"""
from __future__ import annotations

from typing import Any

import torch

from evaluation.base import Meter, as_tensor

__all__ = ["DepthMeter"]

_LOG_FLOOR = 1e-9  # §5


class DepthMeter(Meter):
    """Global pixel-pooled rmse (reported), log_rmse, abs_rel and sq_rel (§5); not a mean of per-image errors.

    Args:
        ignore_value: GT value that marks ignored pixels besides 0.
    """

    def __init__(self, ignore_value: float = 255.0) -> None:
        self.ignore_value = ignore_value
        super().__init__()

    def reset(self) -> None:
        # [Σ(pred−gt)², Σ(ln gt − ln pred)², Σ|pred−gt|/gt, Σ(pred−gt)²/gt] and the valid-pixel count N
        self.sums = torch.zeros(4, dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.int64)

    def update(self, pred: Any, gt: Any) -> None:
        """Args:
            pred: depth in metres, (B, 1, H, W) or (B, H, W).
            gt: depth in metres, same number of pixels; 0 and ``ignore_value`` are invalid.
        """
        pred, gt = as_tensor(pred).double().reshape(-1), as_tensor(gt).double().reshape(-1)
        if pred.numel() != gt.numel():
            raise ValueError(f"DepthMeter: prediction has {pred.numel()} pixels, GT has {gt.numel()}")
        valid = (gt != self.ignore_value) & (gt != 0)
        pred, gt = pred[valid].clamp(min=0.0), gt[valid]
        diff = pred - gt
        log_diff = torch.log(gt.clamp(min=_LOG_FLOOR)) - torch.log(pred.clamp(min=_LOG_FLOOR))
        safe_gt = gt.clamp(min=_LOG_FLOOR)
        self.sums += torch.stack([(diff ** 2).sum(), (log_diff ** 2).sum(),
                                  (diff.abs() / safe_gt).sum(), (diff ** 2 / safe_gt).sum()]).cpu()
        self.count += int(valid.sum())

    def state(self) -> dict[str, torch.Tensor]:
        return {"sums": self.sums, "count": self.count}

    def compute(self) -> dict[str, float]:
        """Returns rmse and log_rmse (sqrt of pooled means), abs_rel and sq_rel; units: metres where applicable."""
        n = int(self.count)
        if n == 0:
            raise ValueError("DepthMeter.compute: no valid GT pixel was seen")
        sq, log_sq, abs_rel, sq_rel = (self.sums / n).tolist()
        return {"rmse": sq ** 0.5, "log_rmse": log_sq ** 0.5, "abs_rel": abs_rel, "sq_rel": sq_rel}

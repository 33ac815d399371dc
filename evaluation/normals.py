"""Surface-normal angular errors pooled over all valid pixels of the split (EVALUATION.md §6).

Valid pixels: all three GT channels ≠ ``ignore_value`` (255). A GT vector of exactly zero is also skipped (the data
layer maps it to 255; skipping it here avoids an undefined angle). Both vectors are L2-normalised (the prediction
twice, as in the official pipeline) and θ = 2·atan2(‖p̂ − ĝ‖, ‖p̂ + ĝ‖), the stable form of arccos(p̂·ĝ).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from evaluation.base import Meter, as_tensor

__all__ = ["NormalsMeter"]

ACCURACY_THRESHOLDS_DEG: tuple[float, ...] = (11.25, 22.5, 30.0)  # §6 extras
_EPS = 1e-12


class NormalsMeter(Meter):
    """mErr (reported) plus median, rmse = sqrt(mean θ²) and the % of θ below 11.25°, 22.5° and 30° (§6).

    The median comes from a histogram (``bin_deg`` wide bins over [0°, 180°]) with linear interpolation inside the
    median bin, so it is within ``bin_deg`` of the exact median without storing every angle.

    Args:
        ignore_value: GT value that marks ignored pixels.
        bin_deg: histogram bin width in degrees.
    """

    def __init__(self, ignore_value: float = 255.0, bin_deg: float = 0.01) -> None:
        self.ignore_value = ignore_value
        self.bin_deg = bin_deg
        self.num_bins = int(round(180.0 / bin_deg))
        super().__init__()

    def reset(self) -> None:
        self.sums = torch.zeros(2, dtype=torch.float64)  # [Σθ, Σθ²]
        self.count = torch.zeros((), dtype=torch.int64)
        self.below = torch.zeros(len(ACCURACY_THRESHOLDS_DEG), dtype=torch.int64)
        self.hist = torch.zeros(self.num_bins, dtype=torch.int64)

    def update(self, pred: Any, gt: Any) -> None:
        """Args:
            pred: normals (B, 3, H, W), any length (normalised here).
            gt: normals (B, 3, H, W) in [−1, 1] with ``ignore_value`` on ignored pixels.
        """
        pred, gt = as_tensor(pred).double(), as_tensor(gt).double()
        if pred.shape != gt.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f"NormalsMeter: expected pred and GT of shape (B, 3, H, W), got {tuple(pred.shape)} "
                             f"and {tuple(gt.shape)}")
        pred = pred.permute(0, 2, 3, 1).reshape(-1, 3)  # (B·H·W, 3)
        gt = gt.permute(0, 2, 3, 1).reshape(-1, 3)
        valid = (gt != self.ignore_value).all(dim=1) & (gt != 0).any(dim=1)
        p, g = pred[valid], gt[valid]
        # the official pipeline normalises the prediction twice (the model's output, then the meter), each with
        # F.normalize's eps: a vector shorter than eps comes out of the first pass shorter than 1 and of the second
        # as a unit vector in its own direction (0° for a tiny vector along the GT, not the 78.6° of one pass)
        p = F.normalize(F.normalize(p, dim=1, eps=_EPS), dim=1, eps=_EPS)
        g = g / g.norm(dim=1, keepdim=True)
        theta = torch.rad2deg(2.0 * torch.atan2((p - g).norm(dim=1), (p + g).norm(dim=1)))
        self.sums += torch.stack([theta.sum(), (theta ** 2).sum()]).cpu()
        self.count += theta.numel()
        self.below += torch.stack([(theta < t).sum() for t in ACCURACY_THRESHOLDS_DEG]).cpu()
        bins = (theta / self.bin_deg).long().clamp(0, self.num_bins - 1)
        self.hist += torch.bincount(bins, minlength=self.num_bins).cpu()

    def state(self) -> dict[str, torch.Tensor]:
        return {"sums": self.sums, "count": self.count, "below": self.below, "hist": self.hist}

    def _median(self, n: int) -> float:
        cum = torch.cumsum(self.hist, 0)
        half = n / 2.0
        b = int(torch.searchsorted(cum.double(), torch.tensor([half], dtype=torch.float64))[0])
        before = float(cum[b - 1]) if b > 0 else 0.0
        return (b + (half - before) / float(self.hist[b])) * self.bin_deg

    def compute(self) -> dict[str, float]:
        """Returns mErr, median and rmse in degrees and the accuracies ``acc_11.25`` etc. in percent."""
        n = int(self.count)
        if n == 0:
            raise ValueError("NormalsMeter.compute: no valid GT pixel was seen")
        out = {"mErr": float(self.sums[0]) / n, "median": self._median(n), "rmse": (float(self.sums[1]) / n) ** 0.5}
        for t, c in zip(ACCURACY_THRESHOLDS_DEG, self.below.tolist()):
            out[f"acc_{t:g}"] = 100.0 * c / n
        return out

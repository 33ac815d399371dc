"""Saliency maxF with β² = 0.3 over 19 pooled thresholds, in both conventions of EVALUATION.md §4.

- ``atrc`` (the intended definition): a pixel is positive if p ≥ τ.
- ``invpt_compat`` (what InvPT/TaskPrompter/MTMamba publish): their meter applies a sigmoid to the probability
  before thresholding, so a pixel is positive if sigmoid(p) ≥ τ; only about four thresholds are effective.

Both are always accumulated and returned; ``maxF`` is the one selected by ``sal_maxF_mode``.
"""
from __future__ import annotations

from typing import Any

import torch

from evaluation.base import Meter, as_tensor

__all__ = ["SaliencyMeter", "SAL_MAXF_MODES", "SAL_THRESHOLDS"]

SAL_MAXF_MODES: tuple[str, ...] = ("invpt_compat", "atrc")
# §4: 19 values, float32, built as the official code does (torch.arange in float32); NumPy's float32 arange lies one
# ulp above it at 7 thresholds, which changes the count of a score equal to a threshold
SAL_THRESHOLDS = torch.arange(0.05, 1, 0.05, dtype=torch.float32)
BETA_SQ = 0.3


class SaliencyMeter(Meter):
    """Pooled TP_τ, PP_τ (predicted positives) and AP (actual positives) over all valid pixels of the split (§4).

    Args:
        mode: ``sal_maxF_mode``, one of ``SAL_MAXF_MODES``; picks which value is returned as ``maxF``.
        ignore_index: GT value excluded from the counts.
    """

    def __init__(self, mode: str = "invpt_compat", ignore_index: int = 255) -> None:
        if mode not in SAL_MAXF_MODES:
            raise ValueError(f"sal_maxF_mode={mode!r} is not supported; valid: {list(SAL_MAXF_MODES)}")
        self.mode = mode
        self.ignore_index = ignore_index
        super().__init__()

    def reset(self) -> None:
        n = len(SAL_THRESHOLDS)
        self.tp = torch.zeros(len(SAL_MAXF_MODES), n, dtype=torch.int64)  # rows in SAL_MAXF_MODES order
        self.pp = torch.zeros(len(SAL_MAXF_MODES), n, dtype=torch.int64)
        self.ap = torch.zeros((), dtype=torch.int64)

    def update(self, pred: Any, gt: Any) -> None:
        """Args:
            pred: foreground probability p ∈ [0, 1], (B, H, W) or (B, 1, H, W); or 2-way logits (B, 2, H, W),
                converted with a softmax (channel 1 = foreground).
            gt: (B, H, W) or (B, 1, H, W) with values {0, 1, ``ignore_index``}.
        """
        pred, gt = as_tensor(pred).float(), as_tensor(gt)
        if pred.dim() == 4 and pred.shape[1] == 2:
            pred = pred.softmax(dim=1)[:, 1]
        pred, gt = pred.reshape(-1), gt.reshape(-1)
        if pred.numel() != gt.numel():
            raise ValueError(f"SaliencyMeter: prediction has {pred.numel()} pixels, GT has {gt.numel()}")
        valid = gt != self.ignore_index
        p, g = pred[valid], gt[valid].bool()
        if p.numel() and (float(p.min()) < 0 or float(p.max()) > 1):
            raise ValueError("SaliencyMeter: probabilities must lie in [0, 1] (pass 2-way logits as (B, 2, H, W))")
        thr = SAL_THRESHOLDS.to(p.device)
        for row, scores in enumerate((torch.sigmoid(p), p)):  # SAL_MAXF_MODES order: invpt_compat, atrc
            positive = scores[None, :] >= thr[:, None]  # (19, N)
            self.tp[row] += (positive & g[None, :]).sum(1).cpu()
            self.pp[row] += positive.sum(1).cpu()
        self.ap += int(g.sum())

    def state(self) -> dict[str, torch.Tensor]:
        return {"tp": self.tp, "pp": self.pp, "ap": self.ap}

    def compute(self) -> dict[str, float]:
        """Returns ``maxF`` (selected mode) and ``maxF_invpt_compat`` / ``maxF_atrc``, all in percent."""
        tp, pp, ap = self.tp.double(), self.pp.double(), float(self.ap)
        precision = tp / pp
        recall = tp / ap
        f = (1 + BETA_SQ) * precision * recall / (BETA_SQ * precision + recall)
        f = torch.nan_to_num(f, nan=0.0)  # §4: NaN → 0
        out = {f"maxF_{m}": 100.0 * float(f[i].max()) for i, m in enumerate(SAL_MAXF_MODES)}
        out["maxF"] = out[f"maxF_{self.mode}"]
        return out

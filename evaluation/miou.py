"""Semantic segmentation and human-parts mIoU (and pixel accuracy) from a pooled confusion matrix (EVALUATION.md
§2–3; MAMBASEG.md §6 for DDD17 / DSEC).

NYUD semseg: 40 classes (label 0 "unlabeled" already mapped to 255 by the data layer). PASCAL semseg: 21 classes,
background counted. PASCAL human parts: 7 classes, background counted; images without part annotations arrive as
all-255 and therefore contribute nothing (§3).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from evaluation.base import Meter, as_tensor

__all__ = ["MIoUMeter"]

logger = logging.getLogger(__name__)


class MIoUMeter(Meter):
    """Dataset-level mIoU: IoU_c = TP_c / max(TP_c + FP_c + FN_c, 1e-8), mIoU = plain mean over all C classes (§2);
    pixel accuracy acc = Σ_c TP_c / (number of non-ignored pixels), from the same confusion matrix.

    Args:
        num_classes: C (40 NYUD semseg, 21 PASCAL semseg, 7 PASCAL human parts).
        ignore_index: GT value excluded from the counts.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        super().__init__()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)  # [gt, pred]

    def update(self, pred: Any, gt: Any) -> None:
        """Args:
            pred: logits (B, C, H, W) as a floating tensor (argmax over C, §2), or integer labels (B, H, W) /
                (B, 1, H, W).
            gt: integer-valued labels (B, H, W) or (B, 1, H, W) in 0..C-1 plus ``ignore_index``.
        """
        pred, gt = as_tensor(pred), as_tensor(gt)
        if pred.is_floating_point():
            if pred.dim() != 4 or pred.shape[1] != self.num_classes:
                raise ValueError(f"MIoUMeter: float predictions must be logits (B, {self.num_classes}, H, W), "
                                 f"got {tuple(pred.shape)}")
            pred = pred.argmax(dim=1)
        pred = pred.reshape(-1).long()
        gt = gt.reshape(-1).long()
        if pred.numel() != gt.numel():
            raise ValueError(f"MIoUMeter: prediction has {pred.numel()} pixels, GT has {gt.numel()}")
        valid = gt != self.ignore_index
        pred, gt = pred[valid], gt[valid]
        if gt.numel() and (int(gt.min()) < 0 or int(gt.max()) >= self.num_classes):
            raise ValueError(f"MIoUMeter: GT labels must be in 0..{self.num_classes - 1} or {self.ignore_index}")
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= self.num_classes):
            raise ValueError(f"MIoUMeter: predicted labels must be in 0..{self.num_classes - 1}")
        idx = gt * self.num_classes + pred
        counts = torch.bincount(idx, minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)
        self.confusion += counts.cpu()

    def state(self) -> dict[str, torch.Tensor]:
        return {"confusion": self.confusion}

    def compute(self) -> dict[str, Any]:
        """Returns ``mIoU`` and ``acc`` in percent (papers print 100·mIoU) and ``IoU`` per class in percent."""
        conf = self.confusion.double()
        tp = conf.diag()
        fp = conf.sum(0) - tp
        fn = conf.sum(1) - tp
        denom = tp + fp + fn
        empty = (denom == 0).nonzero().flatten().tolist()
        if empty:  # §2: counted as IoU 0 like the reference code, but never expected on the real splits
            logger.warning("MIoUMeter: classes %s have no GT and no prediction; counted as IoU 0", empty)
        iou = tp / denom.clamp(min=1e-8)
        acc = float(tp.sum() / conf.sum().clamp(min=1))  # 0 when no pixel was valid
        return {"mIoU": 100.0 * float(iou.mean()), "acc": 100.0 * acc, "IoU": (100.0 * iou).tolist()}

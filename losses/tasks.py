"""Per-task losses of the MTMamba / PAME training recipes (MODELS.md §4, "Per-task losses").

Every loss takes the raw network output ``pred`` of shape (B, n_t, H, W) and the batch target produced by
``data/transforms.py`` + ``data/collate.py``: a float32 tensor of shape (B, C, H, W) (C = 3 for normals,
1 otherwise; (B, H, W) is accepted too for the single-channel tasks), where **255 marks an ignored pixel**
(DATA.md §4.1 step 7, §4.4).

Reductions follow the reference code bases exactly (they matter for the task weights of §4):

* every loss is a **sum over the valid pixels of the whole batch divided by the number of valid pixels**
  (a batch-level mean, not a mean of per-image means);
* for normals the per-pixel term is the L1 distance **summed over the 3 components** (divided by the number of
  valid *pixels*, not of valid components);
* for saliency the class weights multiply the per-pixel terms, and the sum is still divided by the number of
  valid pixels (not by the sum of the weights, as ``F.cross_entropy(weight=..., reduction="mean")`` would do).

A batch without any valid pixel gives a loss of exactly 0 that is still connected to ``pred`` (its gradient
is 0), never NaN.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "IGNORE_INDEX",
    "CrossEntropyLoss",
    "BalancedCrossEntropyLoss",
    "BalancedBCEWithLogitsLoss",
    "NormalsL1Loss",
    "DepthL1Loss",
]

IGNORE_INDEX = 255


def _check_spatial(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.dim() != 4:
        raise ValueError(f"{name}: prediction must be (B, C, H, W), got shape {tuple(pred.shape)}")
    if target.shape[0] != pred.shape[0] or target.shape[-2:] != pred.shape[-2:]:
        raise ValueError(f"{name}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in "
                         "batch or spatial size")


def _as_index_map(target: Tensor, name: str) -> Tensor:
    """(B, 1, H, W) or (B, H, W) class map (any dtype) → (B, H, W) long."""
    if target.dim() == 4:
        if target.shape[1] != 1:
            raise ValueError(f"{name}: a class-index target must have 1 channel, got shape {tuple(target.shape)}")
        target = target[:, 0]
    if target.dim() != 3:
        raise ValueError(f"{name}: a class-index target must be (B, 1, H, W) or (B, H, W), "
                         f"got shape {tuple(target.shape)}")
    return target.long()


def _as_single_channel(target: Tensor, name: str) -> Tensor:
    """(B, 1, H, W) or (B, H, W) map → (B, 1, H, W)."""
    if target.dim() == 3:
        target = target.unsqueeze(1)
    if target.dim() != 4 or target.shape[1] != 1:
        raise ValueError(f"{name}: target must be (B, 1, H, W) or (B, H, W), got shape {tuple(target.shape)}")
    return target


def _masked_mean(values: Tensor, valid: Tensor, n_valid: Tensor) -> Tensor:
    """Σ values[valid] / max(n_valid, 1); 0 (with a graph) when nothing is valid."""
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / n_valid.clamp(min=1).to(total.dtype)


class CrossEntropyLoss(nn.Module):
    """Multi-class cross entropy with ignore regions (semseg, human_parts; MODELS.md §4).

    loss = Σ_{valid p} −log softmax(pred_p)[y_p] / #valid, valid ⇔ y_p ≠ ``ignore_index``.

    Args:
        ignore_index: target value of ignored pixels.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred (B, n, H, W) logits; target (B, 1, H, W) or (B, H, W) class indices (float or long)."""
        _check_spatial(pred, target, type(self).__name__)
        label = _as_index_map(target, type(self).__name__)
        valid = label != self.ignore_index
        per_pixel = F.cross_entropy(pred, label, ignore_index=self.ignore_index, reduction="none")
        return _masked_mean(per_pixel, valid, valid.sum())

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"


class BalancedCrossEntropyLoss(nn.Module):
    """2-class cross entropy with batch-balanced class weights (sal; MODELS.md §4).

    With #pos / #neg / #valid counted over the valid pixels of the whole batch,
    w_pos = #neg / #valid and w_neg = 1 − w_pos = #pos / #valid, and
    loss = Σ_{valid p} w_{y_p} · (−log softmax(pred_p)[y_p]) / #valid.
    (The rarer class gets the larger weight. A batch holding a single class has weight 0 on it, hence loss 0.)

    Args:
        ignore_index: target value of ignored pixels.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred (B, 2, H, W) logits; target (B, 1, H, W) or (B, H, W) in {0, 1, ignore_index}."""
        name = type(self).__name__
        _check_spatial(pred, target, name)
        if pred.shape[1] != 2:
            raise ValueError(f"{name}: expects 2 output channels, got {pred.shape[1]}")
        label = _as_index_map(target, name)
        valid = label != self.ignore_index
        n_valid = valid.sum()
        n_pos = (valid & (label == 1)).sum()
        n_neg = n_valid - n_pos
        w_pos = n_neg.to(torch.float32) / n_valid.clamp(min=1).to(torch.float32)
        class_weight = torch.stack((1.0 - w_pos, w_pos)).to(pred.dtype)
        per_pixel = F.cross_entropy(pred, label, weight=class_weight, ignore_index=self.ignore_index,
                                    reduction="none")
        return _masked_mean(per_pixel, valid, n_valid)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"


class BalancedBCEWithLogitsLoss(nn.Module):
    """Balanced binary cross entropy on logits with a fixed positive weight (edge; MODELS.md §4).

    With w = ``pos_weight`` (config ``loss_kwargs.edge_w``, 0.95 in MTMamba), the BCE-with-logits uses
    ``pos_weight = w / (1 − w)`` and the result is divided by 1 / (1 − w), i.e. per pixel
    ``w · y · softplus(−x) + (1 − w) · (1 − y) · softplus(x)``. Reduction: **mean over the valid pixels**
    of the batch (the reference ``reduction='mean'`` applied to the pixels that are not ``ignore_index``).

    Args:
        pos_weight: w ∈ (0, 1), the weight of the positive (edge) class.
        ignore_index: target value of ignored pixels.
    """

    def __init__(self, pos_weight: float = 0.95, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        pos_weight = float(pos_weight)
        if not 0.0 < pos_weight < 1.0:
            raise ValueError(f"BalancedBCEWithLogitsLoss: pos_weight (edge_w) must lie in (0, 1), got {pos_weight}")
        self.pos_weight = pos_weight
        self.ignore_index = ignore_index

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred (B, 1, H, W) logits; target (B, 1, H, W) or (B, H, W) in {0, 1, ignore_index}."""
        name = type(self).__name__
        target = _as_single_channel(target, name)
        _check_spatial(pred, target, name)
        if pred.shape[1] != 1:
            raise ValueError(f"{name}: expects 1 output channel, got {pred.shape[1]}")
        valid = target != self.ignore_index
        label = torch.where(valid, target, torch.zeros_like(target)).to(pred.dtype)
        w = self.pos_weight
        pos_weight = torch.tensor(w / (1.0 - w), dtype=pred.dtype, device=pred.device)
        per_pixel = F.binary_cross_entropy_with_logits(pred, label, pos_weight=pos_weight, reduction="none")
        return _masked_mean(per_pixel, valid, valid.sum()) * (1.0 - w)

    def extra_repr(self) -> str:
        return f"pos_weight={self.pos_weight}, ignore_index={self.ignore_index}"


class NormalsL1Loss(nn.Module):
    """L1 loss on L2-normalised predicted normals (normals; MODELS.md §4).

    n̂_p = pred_p / max(‖pred_p‖₂, 1e-12) (``F.normalize``); loss = Σ_{valid p} Σ_c |n̂_pc − n_pc| / #valid
    (summed over the 3 components, divided by the number of valid **pixels**). A pixel is valid when none of
    its GT components is ``ignore_index`` and its GT vector is not (0, 0, 0).

    Args:
        ignore_index: target value of ignored pixels (all three channels carry it).
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred (B, 3, H, W); target (B, 3, H, W) unit normals in [−1, 1] or ``ignore_index``."""
        name = type(self).__name__
        _check_spatial(pred, target, name)
        if pred.shape[1] != 3 or target.dim() != 4 or target.shape[1] != 3:
            raise ValueError(f"{name}: expects 3-channel prediction and target, got {tuple(pred.shape)} and "
                             f"{tuple(target.shape)}")
        valid = (target != self.ignore_index).all(dim=1, keepdim=True) & (target != 0).any(dim=1, keepdim=True)
        gt = torch.where(valid, target, torch.zeros_like(target)).to(pred.dtype)
        per_pixel = (F.normalize(pred, p=2, dim=1) - gt).abs().sum(dim=1, keepdim=True)
        return _masked_mean(per_pixel, valid, valid.sum())

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"


class DepthL1Loss(nn.Module):
    """L1 depth loss over the valid pixels (depth; MODELS.md §4).

    loss = Σ_{valid p} |pred_p − d_p| / #valid, valid ⇔ d_p ∉ ``ignore_values`` (and d_p > 0 with
    ``ignore_nonpositive``). The default ignores both 255 (MTMamba maps depth 0 → 255 in AddIgnoreRegions, and pads
    with 0 before that) and 0 (PAME ignores 0 directly; a depth of 0 is never a valid measurement), so either data
    convention gives the same loss. The official Cityscapes loss ignores only 255, so its invalid disparities
    (−1, and 0 on labelId 10) are trained on; ``ignore_nonpositive`` masks them (config
    ``loss_kwargs.depth_ignore_invalid``).

    Args:
        ignore_values: GT values that mark invalid pixels.
        ignore_nonpositive: also ignore every pixel whose GT is ≤ 0.
    """

    def __init__(self, ignore_values: Iterable[float] = (IGNORE_INDEX, 0.0), ignore_nonpositive: bool = False) -> None:
        super().__init__()
        self.ignore_values = tuple(float(v) for v in ignore_values)
        self.ignore_nonpositive = bool(ignore_nonpositive)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred (B, 1, H, W); target (B, 1, H, W) or (B, H, W) depth in metres."""
        name = type(self).__name__
        target = _as_single_channel(target, name)
        _check_spatial(pred, target, name)
        if pred.shape[1] != 1:
            raise ValueError(f"{name}: expects 1 output channel, got {pred.shape[1]}")
        valid = torch.ones_like(target, dtype=torch.bool)
        for v in self.ignore_values:
            valid &= target != v
        if self.ignore_nonpositive:
            valid &= target > 0
        gt = torch.where(valid, target, torch.zeros_like(target)).to(pred.dtype)
        return _masked_mean((pred - gt).abs(), valid, valid.sum())

    def extra_repr(self) -> str:
        return f"ignore_values={self.ignore_values}, ignore_nonpositive={self.ignore_nonpositive}"

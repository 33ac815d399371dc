"""Sample pipelines of the event datasets DDD17 and DSEC-Semantic (MAMBASEG.md §5).

Training: one random scale, one crop offset and one flip draw applied jointly to the frame, the voxel grid and the
mask (frame and grid bilinear, mask nearest), as the official albumentations ``ReplayCompose`` does; then tensors.
The frame stays in [0, 1] without mean/std. Test: tensors only. The pieces are those of ``data.transforms``, so
draws come from the pipeline's reseedable generator (``Compose.reseed``, called per DataLoader worker).
"""
from __future__ import annotations

from typing import Optional, Sequence

from data.transforms import Compose, RandomCrop, RandomHorizontalFlip, RandomScaling, ToTensor

__all__ = ["SCALE_RANGES", "CROP_SIZES", "event_train_transforms", "event_test_transforms"]

# official albumentations RandomScale(scale_limit=(0, 0.8)) / (0.02, 0.2): factor 1 + U(limits)
SCALE_RANGES: dict[str, tuple[float, float]] = {"DDD17": (1.0, 1.8), "DSEC": (1.02, 1.2)}
CROP_SIZES: dict[str, tuple[int, int]] = {"DDD17": (200, 346), "DSEC": (440, 640)}  # = the label sizes
FLIP_P = 0.5


def event_train_transforms(dataset: str, size: Optional[Sequence[int]] = None,
                           seed: Optional[int] = None) -> Compose:
    """Random scale (official range) → random crop to ``size`` (default the label size) → horizontal flip →
    tensors. A crop larger than the smallest scaled sample is refused (it would leave batches ragged)."""
    if dataset not in SCALE_RANGES:
        raise ValueError(f"no event pipeline for dataset {dataset!r}; valid: {sorted(SCALE_RANGES)}")
    lo, hi = SCALE_RANGES[dataset]
    native = CROP_SIZES[dataset]
    size = tuple(int(v) for v in (native if size is None else size))
    smallest = (int(native[0] * lo), int(native[1] * lo))
    if size[0] > smallest[0] or size[1] > smallest[1]:
        raise ValueError(f"{dataset}: crop {size[0]}x{size[1]} exceeds the smallest scaled sample "
                         f"{smallest[0]}x{smallest[1]} (scale >= {lo} of {native[0]}x{native[1]})")
    return Compose([RandomScaling(lo, hi, linear_keys=("image", "events")),
                    RandomCrop(size, cat_max_ratio=1.0),  # 1.0: one uniform draw, no class-ratio retries
                    RandomHorizontalFlip(FLIP_P), ToTensor()], seed=seed)


def event_test_transforms() -> Compose:
    """The test split untouched: arrays → C×H×W float32 tensors."""
    return Compose([ToTensor()])

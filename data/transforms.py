"""Sample transforms: the training and test pipelines of DATA.md §4.1 and §4.2, and the resize-only pipeline of
the Cityscapes protocol (CITYSCAPES.md §1).

A sample is ``{image: H×W×3 float32 0..255, <task>: H×W×C float32, meta: {...}}``. Every transform is a
callable ``t(sample, rng) -> sample``; the random ones draw only from ``rng`` (a ``numpy.random.Generator``)
that :class:`Compose` owns, so a pipeline built with a seed is reproducible, and DataLoader workers reseed
it through :meth:`Compose.reseed`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from data.io import DatasetError

__all__ = ["Compose", "RandomScaling", "RandomCrop", "RandomHorizontalFlip", "PhotoMetricDistortion",
           "Normalize", "PadImage", "AddIgnoreRegions", "ToTensor", "ResizeImage", "PAD_VALUES", "IGNORE",
           "train_transforms", "test_transforms", "resize_transforms"]

IGNORE = 255
# DATA.md §4.1 step 6: padding fill per key (image in normalised space).
PAD_VALUES: dict[str, float] = {"image": 0.0, "semseg": IGNORE, "edge": IGNORE, "human_parts": IGNORE,
                                "sal": IGNORE, "depth": 0.0, "normals": 0.0}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _arrays(sample: dict):
    """(key, array) for every key except ``meta``."""
    return [(k, v) for k, v in sample.items() if k != "meta"]


class Compose:
    """Apply transforms in order, passing each the pipeline's random generator.

    Args:
        transforms: callables ``t(sample, rng) -> sample``.
        seed: seed of the generator (``None``: fresh OS entropy).
    """

    def __init__(self, transforms: Sequence, seed: Optional[int] = None) -> None:
        self.transforms = list(transforms)
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Restart the generator from ``seed`` (called per DataLoader worker)."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, sample: dict) -> dict:
        for t in self.transforms:
            sample = t(sample, self.rng)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class RandomScaling:
    """Resize by one factor s ~ U(min_scale, max_scale) to (⌊H·s⌋, ⌊W·s⌋) (DATA.md §4.1 step 1).

    Image bilinear, every label nearest (normals included); depth is divided by s so metric depth stays
    consistent with the apparent distance (0 stays 0).

    Args:
        min_scale, max_scale: range of the scale factor.
        linear_keys: keys resized bilinearly (e.g. an event voxel grid besides the image); the others nearest.
    """

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0,
                 linear_keys: Sequence[str] = ("image",)) -> None:
        self.min_scale, self.max_scale = min_scale, max_scale
        self.linear_keys = tuple(linear_keys)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        s = float(rng.uniform(self.min_scale, self.max_scale))
        h, w = sample["image"].shape[:2]
        dsize = (int(w * s), int(h * s))  # cv2 takes (W, H)
        for key, arr in _arrays(sample):
            interp = cv2.INTER_LINEAR if key in self.linear_keys else cv2.INTER_NEAREST
            out = cv2.resize(np.ascontiguousarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr),
                             dsize, interpolation=interp)
            out = out[..., None] if out.ndim == 2 else out
            sample[key] = out / s if key == "depth" else out
        return sample

    def __repr__(self) -> str:
        return f"RandomScaling({self.min_scale}, {self.max_scale})"


class RandomCrop:
    """Random crop to ``size`` with the ``cat_max_ratio`` retry rule (DATA.md §4.1 step 2).

    The offset is uniform in [0, max(H−h, 0)] × [0, max(W−w, 0)]; the crop is clipped to the image, so it
    can be smaller than ``size`` (PadImage enlarges it later). Up to ``max_attempts`` offsets are drawn
    until the most frequent non-ignore semseg class covers < ``cat_max_ratio`` of the valid pixels with ≥ 2
    classes present; otherwise the last offset is used. Without a ``semseg`` key the first offset is used.

    Args:
        size: (h, w) of the crop.
        cat_max_ratio: largest allowed share of one class in the crop.
        max_attempts: offsets tried.
    """

    def __init__(self, size: Sequence[int], cat_max_ratio: float = 0.75, max_attempts: int = 10) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.cat_max_ratio, self.max_attempts = cat_max_ratio, max_attempts

    def _accept(self, semseg: np.ndarray) -> bool:
        labels, counts = np.unique(semseg, return_counts=True)
        counts = counts[labels != IGNORE]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        h, w = sample["image"].shape[:2]
        ch, cw = self.size
        if (h, w) == (ch, cw):
            return sample
        attempts = self.max_attempts if "semseg" in sample and self.cat_max_ratio < 1 else 1
        for _ in range(attempts):
            y = int(rng.integers(0, max(h - ch, 0) + 1))
            x = int(rng.integers(0, max(w - cw, 0) + 1))
            if attempts > 1 and self._accept(sample["semseg"][y:y + ch, x:x + cw]):
                break
        for key, arr in _arrays(sample):
            sample[key] = arr[y:y + ch, x:x + cw]
        return sample

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, cat_max_ratio={self.cat_max_ratio})"


class RandomHorizontalFlip:
    """Mirror every array with probability ``p``; normals get their x channel negated (DATA.md §4.1 step 3).

    Args:
        p: flip probability.
    """

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() < self.p:
            for key, arr in _arrays(sample):
                arr = np.ascontiguousarray(arr[:, ::-1])
                if key == "normals":
                    arr[..., 0] *= -1
                sample[key] = arr
        return sample

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip({self.p})"


class PhotoMetricDistortion:
    """Brightness, contrast, saturation and hue jitter of the image on a uint8 copy (DATA.md §4.1 step 4).

    Each step fires with probability 1/2; contrast runs before or after the HSV steps (1/2 each). Values are
    clipped to 0..255 and truncated to uint8 after each step; the image is returned as float32.

    Args:
        brightness_delta: brightness shift range ±delta.
        contrast_range, saturation_range: multiplicative ranges.
        hue_delta: hue shift, an integer in [−hue_delta, hue_delta) on OpenCV's 0..179 hue scale.
    """

    def __init__(self, brightness_delta: int = 32, contrast_range: tuple[float, float] = (0.5, 1.5),
                 saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range, self.saturation_range = contrast_range, saturation_range
        self.hue_delta = hue_delta

    @staticmethod
    def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        img = np.clip(sample["image"], 0, 255).astype(np.uint8)
        if rng.integers(2):
            img = self._convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = bool(rng.integers(2))
        if contrast_first and rng.integers(2):
            img = self._convert(img, alpha=rng.uniform(*self.contrast_range))
        if rng.integers(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[..., 1] = self._convert(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if rng.integers(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            shift = int(rng.integers(-self.hue_delta, self.hue_delta))
            hsv[..., 0] = (hsv[..., 0].astype(np.int32) + shift) % 180
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not contrast_first and rng.integers(2):
            img = self._convert(img, alpha=rng.uniform(*self.contrast_range))
        sample["image"] = img.astype(np.float32)
        return sample

    def __repr__(self) -> str:
        return "PhotoMetricDistortion()"


class Normalize:
    """image / 255, then (x − mean) / std per channel (DATA.md §4.1 step 5).

    Args:
        mean, std: per-channel statistics in 0..1 units (ImageNet by default).
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        sample["image"] = (sample["image"].astype(np.float32) / 255.0 - self.mean) / self.std
        return sample

    def __repr__(self) -> str:
        return "Normalize()"


class PadImage:
    """Centred padding up to ``size`` with the per-key fills of ``PAD_VALUES`` (DATA.md §4.1 step 6).

    top = ⌊ΔH/2⌋, left = ⌊ΔW/2⌋, the remainder at bottom/right. It only enlarges: an image larger than the
    template is an error naming its id (batches of padded images must share one size).

    Args:
        size: template (h, w).
        fills: fill value per key; keys not listed use 0.
    """

    def __init__(self, size: Sequence[int], fills: Optional[dict[str, float]] = None) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.fills = dict(PAD_VALUES if fills is None else fills)

    @staticmethod
    def offsets(h: int, w: int, size: Sequence[int]) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) padding for an h×w array and template ``size``."""
        dh, dw = max(size[0] - h, 0), max(size[1] - w, 0)
        return dh // 2, dh - dh // 2, dw // 2, dw - dw // 2

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        for key, arr in _arrays(sample):
            h, w = arr.shape[:2]
            if h > self.size[0] or w > self.size[1]:
                name = sample.get("meta", {}).get("img_name", "?")
                raise DatasetError(f"id {name}: the {key} map is {h}x{w}, larger than the padding size "
                                   f"{list(self.size)} (TEST.SCALE); images are padded, never resized: set TEST.SCALE "
                                   f"to at least [{max(h, self.size[0])}, {max(w, self.size[1])}], rounded up to the "
                                   f"model's multiple")
        for key, arr in _arrays(sample):
            top, bottom, left, right = self.offsets(arr.shape[0], arr.shape[1], self.size)
            if top or bottom or left or right:
                sample[key] = np.pad(arr.astype(np.float32), ((top, bottom), (left, right), (0, 0)),
                                     constant_values=self.fills.get(key, 0.0))
        return sample

    def __repr__(self) -> str:
        return f"PadImage({self.size})"


class AddIgnoreRegions:
    """Turn invalid targets into 255 (DATA.md §4.1 step 7).

    normals with zero norm → 255 in all channels; a human_parts map holding only {0, 255} → all 255;
    depth 0 → 255 (the MTMamba/InvPT convention; ``depth_zero_ignored=False`` keeps 0 as TaskPrompter does).

    Args:
        depth_zero_ignored: apply the depth rule.
    """

    def __init__(self, depth_zero_ignored: bool = True) -> None:
        self.depth_zero_ignored = depth_zero_ignored

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if "normals" in sample:
            normals = sample["normals"].astype(np.float32)
            normals[(normals == 0).all(axis=2)] = IGNORE  # zero norm ⇔ all three components 0
            sample["normals"] = normals
        if "human_parts" in sample:
            parts = sample["human_parts"]
            if np.isin(parts, (0, IGNORE)).all():
                sample["human_parts"] = np.full_like(parts, IGNORE)
        if "depth" in sample and self.depth_zero_ignored:
            depth = sample["depth"].astype(np.float32)
            depth[depth == 0] = IGNORE
            sample["depth"] = depth
        return sample

    def __repr__(self) -> str:
        return "AddIgnoreRegions()"


class ToTensor:
    """H×W×C arrays → C×H×W float32 tensors; ``meta`` is left as is (DATA.md §4.1 step 8)."""

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        for key, arr in _arrays(sample):
            sample[key] = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))
        return sample

    def __repr__(self) -> str:
        return "ToTensor()"


class ResizeImage:
    """Resize the image, and only the image, to ``size`` with PIL's bilinear filter (antialiased when shrinking);
    the labels keep their stored size (CITYSCAPES.md §1: 1024×2048 images enter the model at 512×1024).

    The image is resized as 8-bit RGB, as the official loader does; an image already at ``size`` is left as is.

    Args:
        size: (h, w) of the resized image.
    """

    def __init__(self, size: Sequence[int]) -> None:
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        from PIL import Image
        h, w = self.size
        if tuple(sample["image"].shape[:2]) != (h, w):
            img = Image.fromarray(np.clip(sample["image"], 0, 255).astype(np.uint8))
            sample["image"] = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
        return sample

    def __repr__(self) -> str:
        return f"ResizeImage({self.size})"


def train_transforms(size: Sequence[int], seed: Optional[int] = None) -> Compose:
    """Training pipeline (DATA.md §4.1) for template ``size`` = (h, w), e.g. ``cfg.TRAIN.SCALE``."""
    return Compose([RandomScaling(0.5, 2.0), RandomCrop(size, cat_max_ratio=0.75), RandomHorizontalFlip(0.5),
                    PhotoMetricDistortion(), Normalize(), PadImage(size), AddIgnoreRegions(), ToTensor()],
                   seed=seed)


def test_transforms(size: Sequence[int]) -> Compose:
    """Validation/test pipeline (DATA.md §4.2): no resizing, images padded to ``size`` (e.g. ``cfg.TEST.SCALE``)."""
    return Compose([Normalize(), PadImage(size), AddIgnoreRegions(), ToTensor()])


def resize_transforms(size: Sequence[int]) -> Compose:
    """Train and test pipeline of the Cityscapes protocol (CITYSCAPES.md §1): the image resized to ``size``, labels
    at their stored size, no augmentation and no ignore rule (its invalid disparities −1 and 0 stay as they are)."""
    return Compose([ResizeImage(size), Normalize(), ToTensor()])

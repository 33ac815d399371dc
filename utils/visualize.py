"""Pure functions that turn predictions and targets into ``(3, H, W)`` uint8 images (TensorBoard, previews).

Targets use the data pipeline's conventions (DATA.md §4.1): ``255`` marks ignored pixels in every task, and
ignored pixels are drawn black. Predictions are raw model outputs (logits, or depth in metres).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from data.transforms import IGNORE, IMAGENET_MEAN, IMAGENET_STD

__all__ = ["palette", "colorize_labels", "depth_to_image", "normals_to_image", "edge_to_image", "gray_to_image",
           "denormalize_image", "event_image", "prediction_grid"]


def palette(num_colors: int) -> Tensor:
    """``(num_colors, 3)`` uint8 colours: the PASCAL VOC bit-interleaved palette, starting at its entry 1 so no
    class is black (black is kept for ignored pixels)."""
    colors = torch.zeros(num_colors, 3, dtype=torch.uint8)
    for i in range(num_colors):
        idx, rgb = i + 1, [0, 0, 0]
        for shift in range(7, -1, -1):
            for c in range(3):
                rgb[c] |= ((idx >> c) & 1) << shift
            idx >>= 3
        colors[i] = torch.tensor(rgb, dtype=torch.uint8)
    return colors


def colorize_labels(labels: Tensor, num_classes: int) -> Tensor:
    """Class map ``(H, W)`` int -> ``(3, H, W)`` uint8; 255 (ignored) and out-of-range labels are black."""
    labels = labels.long().cpu()
    colors = torch.cat([palette(num_classes), torch.zeros(1, 3, dtype=torch.uint8)])     # last row: black
    index = torch.where((labels >= 0) & (labels < num_classes), labels, torch.full_like(labels, num_classes))
    return colors[index].permute(2, 0, 1).contiguous()


def gray_to_image(values: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """Values in [0, 1], ``(H, W)`` -> ``(3, H, W)`` uint8 gray; pixels where ``valid`` is False are black."""
    img = (values.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if valid is not None:
        img = torch.where(valid, img, torch.zeros_like(img))
    return img.unsqueeze(0).expand(3, -1, -1).contiguous().cpu()


def _squeeze(x: Tensor) -> Tensor:
    """``(1, H, W)`` or ``(H, W)`` -> ``(H, W)`` float on the CPU."""
    x = x.detach().float().cpu()
    return x[0] if x.dim() == 3 else x


def depth_to_image(depth: Tensor, vmin: Optional[float] = None, vmax: Optional[float] = None) -> Tensor:
    """Depth ``(1, H, W)`` or ``(H, W)`` -> gray ``(3, H, W)`` uint8, linear from ``vmin`` (black) to ``vmax``
    (white); both default to the range of the valid pixels. Ignored (255) pixels are black."""
    depth = _squeeze(depth)
    valid = depth != IGNORE
    values = depth[valid]
    lo = float(values.min()) if vmin is None and values.numel() else (vmin or 0.0)
    hi = float(values.max()) if vmax is None and values.numel() else (vmax if vmax is not None else 1.0)
    return gray_to_image((depth - lo) / max(hi - lo, 1e-6), valid)


def normals_to_image(normals: Tensor) -> Tensor:
    """Unit normals ``(3, H, W)`` in [-1, 1] -> ``(n + 1) / 2`` as uint8 RGB; ignored pixels (255) are black."""
    normals = normals.detach().float().cpu()
    valid = (normals != IGNORE).all(0)
    img = ((normals.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)
    return torch.where(valid, img, torch.zeros_like(img))


def edge_to_image(edge: Tensor, logits: bool = True) -> Tensor:
    """Edge map ``(1, H, W)`` or ``(H, W)`` -> gray ``(3, H, W)`` uint8: the sigmoid probability of logits, or a
    0/1 target as is (``logits=False``; ignored 255 pixels black)."""
    edge = _squeeze(edge)
    if logits:
        return gray_to_image(torch.sigmoid(edge))
    return gray_to_image(edge, edge != IGNORE)


def denormalize_image(image: Tensor) -> Tensor:
    """ImageNet-normalised ``(3, H, W)`` image -> ``(3, H, W)`` uint8 RGB (inverse of data.transforms.Normalize)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = image.detach().float().cpu() * std + mean
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8)


def event_image(events: Tensor, quantile: float = 0.99) -> Tensor:
    """Event voxel grid ``(bins, H, W)`` -> ``(3, H, W)`` uint8: the grid summed over its time bins (the net
    polarity of each pixel), positive red and negative blue on black. Full intensity is reached at the ``quantile``
    of the non-zero magnitudes, so that a few busy pixels do not darken all the others."""
    net = events.detach().float().cpu().sum(0)                                   # (H, W)
    magnitude = net.abs()
    active = magnitude[magnitude > 0]
    scale = float(torch.quantile(active, quantile)) if active.numel() else 1.0
    level = ((magnitude / scale).clamp(0, 1) * 255).round().to(torch.uint8)
    zero = torch.zeros_like(level)
    return torch.stack([torch.where(net > 0, level, zero), zero, torch.where(net < 0, level, zero)])


def _frame_to_image(image: Tensor, normalized: bool) -> Tensor:
    """An input frame ``(C, H, W)`` -> ``(3, H, W)`` uint8: ImageNet-normalised RGB, or grey / RGB in [0, 1]."""
    if normalized:
        return denormalize_image(image)
    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.expand(3, -1, -1).contiguous() if pixels.shape[0] == 1 else pixels


def _pred_to_image(task: str, pred: Tensor, depth_range: tuple = (None, None)) -> Tensor:
    """One prediction ``(n, H, W)`` -> image; depth is drawn over ``depth_range`` (the target's, when known)."""
    if task in ("semseg", "human_parts"):
        return colorize_labels(pred.argmax(0), pred.shape[0])
    if task == "sal":
        return gray_to_image(torch.softmax(pred.float(), 0)[1])
    if task == "edge":
        return edge_to_image(pred, logits=True)
    if task == "normals":
        return normals_to_image(F.normalize(pred.float(), dim=0))
    if task == "depth":
        return depth_to_image(pred, *depth_range)
    raise ValueError(f"no visualisation for task {task!r}; valid: semseg, human_parts, sal, edge, normals, depth")


def _valid_range(target: Tensor) -> tuple:
    values = target[target != IGNORE].float()
    return (float(values.min()), float(values.max())) if values.numel() else (None, None)


def _target_to_image(task: str, target: Tensor, num_classes: int) -> Tensor:
    """One target ``(C, H, W)`` or ``(H, W)`` -> image."""
    if task in ("semseg", "human_parts"):
        return colorize_labels(_squeeze(target).long(), num_classes)
    if task in ("sal", "edge"):
        return edge_to_image(target, logits=False)
    if task == "normals":
        return normals_to_image(target)
    if task == "depth":
        return depth_to_image(target)
    raise ValueError(f"no visualisation for task {task!r}; valid: semseg, human_parts, sal, edge, normals, depth")


def prediction_grid(image: Tensor, preds: Mapping[str, Tensor], batch: Mapping[str, Tensor], tasks: Iterable[str],
                    max_items: int = 2, normalized: bool = True) -> dict[str, Tensor]:
    """Per task, a ``(3, rows·H, cols·W)`` uint8 grid: one row per item, ``input | prediction | target``, with the
    :func:`event_image` of ``batch["events"]`` after the input when the batch has event voxel grids.

    Args:
        image: input batch ``(B, C, H, W)``: ImageNet-normalised RGB (``normalized``), else grey or RGB in [0, 1].
        preds: ``{task: (B, n, h, w)}`` raw outputs; resized bilinearly to ``(H, W)`` when their size differs.
        batch: the loader's batch; ``batch[task]`` ``(B, C, h, w)`` is the target, resized (nearest) to ``(H, W)``
            when its size differs (Cityscapes labels are 1024×2048, inputs 512×1024). Without it the row is
            ``input | prediction``.
        tasks: the tasks to draw.
        max_items: the first ``max_items`` items of the batch are drawn.
        normalized: whether ``image`` is ImageNet-normalised (the event datasets' frames are not).
    """
    n_items = min(int(image.shape[0]), max_items)
    size = tuple(image.shape[-2:])
    events = batch.get("events") if isinstance(batch, Mapping) else None
    inputs = []
    for i in range(n_items):
        cells = [_frame_to_image(image[i], normalized)]
        if events is not None:
            cells.append(event_image(events[i]))
        inputs.append(torch.cat(cells, dim=2))
    grids = {}
    for task in tasks:
        pred = preds[task].detach().float()
        if tuple(pred.shape[-2:]) != size:
            pred = F.interpolate(pred, size=size, mode="bilinear", align_corners=False)
        target = batch.get(task) if isinstance(batch, Mapping) else None
        if target is not None and tuple(target.shape[-2:]) != size:
            target = F.interpolate(target.float().reshape(-1, 1, *target.shape[-2:]), size=size, mode="nearest")
            target = target.reshape(image.shape[0], -1, *size)
        rows = []
        for i in range(n_items):
            depth_range = _valid_range(target[i]) if task == "depth" and target is not None else (None, None)
            cells = [inputs[i], _pred_to_image(task, pred[i].cpu(), depth_range)]
            if target is not None:
                cells.append(_target_to_image(task, target[i].detach().cpu(), pred.shape[1]))
            rows.append(torch.cat(cells, dim=2))
        grids[task] = torch.cat(rows, dim=1)
    return grids

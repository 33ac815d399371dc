"""Palettes, colour maps and drawing: the one place where predictions and targets become pictures.

The TensorBoard grids (:func:`prediction_grid`, utils.trainer), ``infer --save_predictions``
(evaluation.evaluator) and ``--run_mode predict`` (evaluation.predict) all draw and save with these functions, so a
map looks the same everywhere. The colours are fixed (nothing random):

* class maps: class ``k`` of a :class:`LabelSet` is entry ``k + first_entry`` of the PASCAL VOC colour map (the
  bit-interleaved map of the VOC devkit's ``VOClabelcolormap.m``), the colour its value in the dataset's own label
  PNGs has in a VOC-palette viewer. PASCAL semseg and human parts start at entry 0 (background black, aeroplane
  (128, 0, 0), person (192, 128, 128); head (128, 0, 0)); NYUD's 40 classes, stored as 1..40, start at entry 1
  (wall (128, 0, 0), floor (0, 128, 0)); DDD17 and DSEC's 11 classes start at entry 0. Cityscapes (and DSEC's 19
  Cityscapes classes) use the Cityscapes scripts' own colours (road (128, 64, 128), car (0, 0, 142)). Ignored pixels
  (255) get entry 255, VOC's void colour (224, 224, 192).
  :func:`legend` draws a label set's colours beside its class names.
* depth: OpenCV's ``COLORMAP_INFERNO`` over the map's own [min, max] (near bright yellow, far black); the range is
  returned by :func:`depth_range` so that it can be printed with the picture.
* surface normals: RGB = round((n + 1) / 2 · 255) of the unit normal n.
* edges and saliency: grey levels equal to the 8-bit maps that are saved (edges floor(255·σ(logit)), EVALUATION.md
  §1; saliency round(255·p(foreground))).
* ignored pixels (255) of depth, normals, edge and saliency targets are black.
* event voxel grids: :func:`event_image`, the net polarity per pixel, positive red and negative blue on black.

Tensors follow the model's layout (``(C, H, W)``, pictures ``(3, H, W)`` uint8 RGB); the saved maps and the panel are
numpy ``H×W[×3]`` arrays, RGB until :func:`save_task_maps` writes them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from data.cityscapes import CITYSCAPES_CLASSES
from data.ddd17 import DDD17_CLASSES
from data.dsec import DSEC_CLASSES
from data.nyud import NYUD_CLASSES
from data.pascal_context import HUMAN_PARTS_CLASSES, PASCAL_CLASSES
from data.transforms import IGNORE, IMAGENET_MEAN, IMAGENET_STD
from utils.fileio import write_png

__all__ = ["LabelSet", "LABEL_SETS", "LABEL_TASKS", "TaskMaps", "voc_colormap", "label_set", "colorize_labels",
           "depth_range", "depth_to_image", "normals_to_image", "gray_to_image", "edge_to_image", "denormalize_image",
           "prediction_maps", "prediction_image", "save_task_maps", "save_image", "text_patch", "panel", "legend",
           "event_image", "prediction_grid"]

LABEL_TASKS = ("semseg", "human_parts")
DEPTH_COLORMAP = cv2.COLORMAP_INFERNO
# text: OpenCV's Hershey sans-serif, black on white
_FONT, _FONT_SCALE, _FONT_THICKNESS = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
_WHITE = 255


# --------------------------------------------------------------------------------------------------------
# Palettes


@lru_cache(maxsize=None)
def _voc_colormap() -> Tensor:
    colors = torch.zeros(256, 3, dtype=torch.uint8)
    for entry in range(256):
        idx, rgb = entry, [0, 0, 0]
        for shift in range(7, -1, -1):          # bits 0, 1, 2 of each octal digit go to R, G, B, most significant first
            for c in range(3):
                rgb[c] |= ((idx >> c) & 1) << shift
            idx >>= 3
        colors[entry] = torch.tensor(rgb, dtype=torch.uint8)
    return colors


def voc_colormap() -> Tensor:
    """``(256, 3)`` uint8: the PASCAL VOC colour map, entry 0 black, 1 (128, 0, 0), ..., 255 (224, 224, 192)."""
    return _voc_colormap().clone()


@dataclass(frozen=True)
class LabelSet:
    """The classes of one kind of class map.

    Args:
        title: what the legend is headed with.
        names: class names in output order (class ``k`` is channel ``k`` of the logits).
        first_entry: the VOC colour-map entry of class 0 (when ``palette`` is None).
        palette: the dataset's own RGB colour per class, where it has an official one (Cityscapes).
    """

    title: str
    names: tuple[str, ...]
    first_entry: int = 0
    palette: Optional[tuple[tuple[int, int, int], ...]] = None

    def __post_init__(self) -> None:
        if self.palette is not None and len(self.palette) != len(self.names):
            raise ValueError(f"{self.title}: {len(self.palette)} colours for {len(self.names)} classes")
        if self.first_entry < 0 or self.first_entry + len(self.names) > IGNORE:
            raise ValueError(f"{self.title}: {len(self.names)} classes from VOC entry {self.first_entry} would reach "
                             f"the ignore colour (entry {IGNORE})")

    @property
    def colors(self) -> Tensor:
        """``(len(names), 3)`` uint8 RGB, one row per class."""
        if self.palette is not None:
            return torch.tensor(self.palette, dtype=torch.uint8)
        return _voc_colormap()[self.first_entry:self.first_entry + len(self.names)].clone()


# the 19 train classes' colours of the Cityscapes scripts (labels.py), in trainId order
CITYSCAPES_PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
                      (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
                      (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32))

# (train_db_name, task, number of classes) -> its classes; a dataset with class maps adds its row here
LABEL_SETS: dict[tuple[str, str, int], LabelSet] = {
    ("NYUD", "semseg", 40): LabelSet("NYUD semantic segmentation (40 classes)", NYUD_CLASSES, 1),
    ("PASCALContext", "semseg", 21): LabelSet("PASCAL-Context semantic segmentation (21 classes)", PASCAL_CLASSES),
    ("PASCALContext", "human_parts", 7): LabelSet("PASCAL-Context human parts (7 classes)", HUMAN_PARTS_CLASSES),
    ("Cityscapes", "semseg", 19): LabelSet("Cityscapes semantic segmentation (19 classes)", CITYSCAPES_CLASSES,
                                           palette=CITYSCAPES_PALETTE),
    ("DDD17", "semseg", 6): LabelSet("DDD17 semantic segmentation (6 classes)", DDD17_CLASSES),
    ("DSEC", "semseg", 11): LabelSet("DSEC-Semantic segmentation (11 classes)", DSEC_CLASSES[11]),
    ("DSEC", "semseg", 19): LabelSet("DSEC-Semantic segmentation (19 Cityscapes classes)", DSEC_CLASSES[19],
                                     palette=CITYSCAPES_PALETTE),
}


def label_set(dataset: str, task: str, num_classes: int) -> LabelSet:
    """The ``num_classes`` classes of ``task`` on ``dataset`` (a ``train_db_name``), or an error listing the known
    label sets."""
    try:
        return LABEL_SETS[(dataset, task, int(num_classes))]
    except KeyError:
        known = ", ".join(f"{d}/{t} ({n})" for d, t, n in LABEL_SETS)
        raise ValueError(f"no class names and colours for task {task!r} with {num_classes} classes on dataset "
                         f"{dataset!r}; known: {known}") from None


def colorize_labels(labels: Tensor, labels_of: LabelSet) -> Tensor:
    """Class map ``(H, W)`` int -> ``(3, H, W)`` uint8; 255 (ignored) and out-of-range values get the void colour."""
    labels = labels.long().cpu()
    n = len(labels_of.names)
    colors = torch.cat([labels_of.colors, _voc_colormap()[IGNORE:]])                 # last row: void
    index = torch.where((labels >= 0) & (labels < n), labels, torch.full_like(labels, n))
    return colors[index].permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------------------------------------
# Continuous maps


def gray_to_image(values: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """Values in [0, 1], ``(H, W)`` -> ``(3, H, W)`` uint8 grey; pixels where ``valid`` is False are black."""
    img = (values.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if valid is not None:
        img = torch.where(valid, img, torch.zeros_like(img))
    return img.unsqueeze(0).expand(3, -1, -1).contiguous().cpu()


def _squeeze(x: Tensor) -> Tensor:
    """``(1, H, W)`` or ``(H, W)`` -> ``(H, W)`` float on the CPU."""
    x = x.detach().float().cpu()
    return x[0] if x.dim() == 3 else x


def depth_range(depth: Tensor) -> Optional[tuple[float, float]]:
    """(min, max) in metres of the finite, non-ignored (≠ 255) pixels of a depth map; None when there are none."""
    depth = _squeeze(depth)
    values = depth[torch.isfinite(depth) & (depth != IGNORE)]
    return (float(values.min()), float(values.max())) if values.numel() else None


def depth_to_image(depth: Tensor, vmin: Optional[float] = None, vmax: Optional[float] = None) -> Tensor:
    """Depth ``(1, H, W)`` or ``(H, W)`` -> ``(3, H, W)`` uint8 RGB, OpenCV's inferno from ``vmax`` (far, black) to
    ``vmin`` (near, bright yellow); both default to :func:`depth_range`. Ignored (255) and non-finite pixels are
    black."""
    depth = _squeeze(depth)
    valid = torch.isfinite(depth) & (depth != IGNORE)
    lo, hi = depth_range(depth) or (0.0, 1.0)
    lo, hi = (lo if vmin is None else vmin), (hi if vmax is None else vmax)
    nearness = ((hi - depth.nan_to_num(hi)) / max(hi - lo, 1e-6)).clamp(0, 1)
    levels = (nearness * 255).round().to(torch.uint8).numpy()
    rgb = torch.from_numpy(cv2.cvtColor(cv2.applyColorMap(levels, DEPTH_COLORMAP), cv2.COLOR_BGR2RGB))
    rgb = torch.where(valid[..., None], rgb, torch.zeros_like(rgb))
    return rgb.permute(2, 0, 1).contiguous()


def normals_to_image(normals: Tensor) -> Tensor:
    """Unit normals ``(3, H, W)`` in [-1, 1] -> ``(n + 1) / 2`` as uint8 RGB; ignored pixels (255) are black."""
    normals = normals.detach().float().cpu()
    valid = (normals != IGNORE).all(0)
    img = ((normals.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)
    return torch.where(valid, img, torch.zeros_like(img))


def edge_to_image(edge: Tensor, logits: bool = True) -> Tensor:
    """Edge map ``(1, H, W)`` or ``(H, W)`` -> grey ``(3, H, W)`` uint8: the saved 8-bit map of logits
    (floor(255·σ)), or a 0/1 target as is (``logits=False``; ignored 255 pixels black)."""
    edge = _squeeze(edge)
    if logits:
        return _edge_map(edge).unsqueeze(0).expand(3, -1, -1).contiguous()
    return gray_to_image(edge, edge != IGNORE)


def denormalize_image(image: Tensor) -> Tensor:
    """ImageNet-normalised ``(3, H, W)`` image -> ``(3, H, W)`` uint8 RGB (inverse of data.transforms.Normalize)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = image.detach().float().cpu() * std + mean
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8)


# --------------------------------------------------------------------------------------------------------
# Predictions: the saved maps and their pictures


def _edge_map(logits: Tensor) -> Tensor:
    """(H, W) logits -> uint8 floor(255·σ), as the boundary benchmark reads them (EVALUATION.md §1)."""
    return torch.floor(255 * torch.sigmoid(logits.float()).nan_to_num(0.0)).to(torch.uint8)


def _saliency_map(logits: Tensor) -> Tensor:
    """(2, H, W) logits -> uint8 round(255·p(foreground))."""
    return (255 * logits.float().softmax(0)[1].nan_to_num(0.0)).round().to(torch.uint8)


def _hwc(image: Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).contiguous().numpy()


class TaskMaps(NamedTuple):
    """How one prediction is saved.

    ``data``: the machine-readable map of ``<task>/<name>.png``: semseg / human_parts uint8 class ids, edge
    uint8 floor(255·σ), sal uint8 round(255·p), depth uint16 millimetres (saturating at 65.535 m), normals uint8
    RGB ``(n + 1) / 2 · 255``. ``color``: the RGB picture of ``<task>/color/<name>.png`` (class maps, depth), None
    where ``data`` is a picture already. ``value_range``: depth's (min, max) in metres that the colours span.
    """

    data: np.ndarray
    color: Optional[np.ndarray]
    value_range: Optional[tuple[float, float]] = None

    @property
    def preview(self) -> np.ndarray:
        """H×W×3 uint8 RGB picture of the map."""
        if self.color is not None:
            return self.color
        return self.data if self.data.ndim == 3 else np.repeat(self.data[..., None], 3, axis=2)


def prediction_maps(task: str, pred: Tensor, labels_of: Optional[LabelSet] = None) -> TaskMaps:
    """One prediction ``(n, H, W)`` (logits, or depth in metres) -> its :class:`TaskMaps`; class maps need their
    ``labels_of`` for the colours."""
    pred = pred.detach().float().cpu()
    if task in LABEL_TASKS:
        if labels_of is None:
            raise ValueError(f"prediction_maps: task {task!r} needs its LabelSet for the colours")
        ids = pred.argmax(0)
        return TaskMaps(ids.to(torch.uint8).numpy(), _hwc(colorize_labels(ids, labels_of)))
    if task == "edge":
        return TaskMaps(_edge_map(pred[0]).numpy(), None)
    if task == "sal":
        return TaskMaps(_saliency_map(pred).numpy(), None)
    if task == "normals":
        return TaskMaps(_hwc(normals_to_image(F.normalize(pred, dim=0))), None)
    if task == "depth":
        metres = pred[0].nan_to_num(0.0, posinf=0.0).clamp(min=0)
        millimetres = (metres * 1000).round().clamp(max=np.iinfo(np.uint16).max)
        span = depth_range(metres) or (0.0, 0.0)
        return TaskMaps(millimetres.numpy().astype(np.uint16), _hwc(depth_to_image(metres, *span)), span)
    raise ValueError(f"no picture for task {task!r}; valid: semseg, human_parts, sal, edge, normals, depth")


def prediction_image(task: str, pred: Tensor, labels_of: Optional[LabelSet] = None,
                     depth_span: Optional[tuple[float, float]] = None) -> Tensor:
    """One prediction ``(n, H, W)`` -> ``(3, H, W)`` uint8 picture (the preview of :func:`prediction_maps`); depth is
    drawn over ``depth_span`` when given (e.g. the target's range)."""
    if task == "depth" and depth_span is not None:
        return depth_to_image(pred[0].detach().float().cpu().clamp(min=0), *depth_span)
    return torch.from_numpy(prediction_maps(task, pred, labels_of).preview).permute(2, 0, 1).contiguous()


def save_task_maps(maps: TaskMaps, out_dir: Path, task: str, name: str) -> list[Path]:
    """Write ``out_dir/<task>/<name>.png`` and, for class maps and depth, ``out_dir/<task>/color/<name>.png``.

    Returns the paths; a failed write raises :class:`utils.fileio.WriteError` naming the file.
    """
    written = [save_image(Path(out_dir) / task / f"{name}.png", maps.data)]
    if maps.color is not None:
        written.append(save_image(Path(out_dir) / task / "color" / f"{name}.png", maps.color))
    return written


def save_image(path: Path, image: np.ndarray) -> Path:
    """Write an H×W (grey, uint8 or uint16) or H×W×3 RGB uint8 array as a PNG, atomically; a failed write raises
    :class:`utils.fileio.WriteError` naming the file."""
    return write_png(path, image[..., ::-1] if image.ndim == 3 else image)      # OpenCV writes BGR


# --------------------------------------------------------------------------------------------------------
# Figures: titled panels and legends (RGB numpy)


def text_patch(text: str, height: int = 20, pad: int = 4) -> np.ndarray:
    """``text`` in black on white, ``height`` pixels high, vertically centred; ASCII only (Hershey font)."""
    (w, h), base = cv2.getTextSize(text, _FONT, _FONT_SCALE, _FONT_THICKNESS)
    patch = np.full((height, w + 2 * pad, 3), _WHITE, dtype=np.uint8)
    cv2.putText(patch, text, (pad, (height + h) // 2), _FONT, _FONT_SCALE, (0, 0, 0), _FONT_THICKNESS, cv2.LINE_AA)
    return patch


def _scaled(image: np.ndarray, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))           # cv2 takes (W, H)
    if size == (w, h):
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)


def panel(cells: Sequence[tuple[str, np.ndarray]], size: int = 256, gap: int = 4, title_height: int = 22) -> np.ndarray:
    """Pictures side by side, each under its title: one RGB image, like a row of a paper figure.

    Args:
        cells: ``(title, H×W×3 uint8 RGB)``, all pictures of one size.
        size: every picture is scaled by one factor so that its longer side is ``size`` pixels (area-averaged when
            shrinking, nearest when enlarging, so class maps stay crisp).
        gap: white pixels between cells.
        title_height: height of the title strip.
    """
    shapes = {c.shape[:2] for _, c in cells}
    if len(shapes) != 1:
        raise ValueError(f"panel: the pictures must share one size, got {sorted(shapes)}")
    scale = size / max(next(iter(shapes)))
    columns = []
    for title, image in cells:
        picture, label = _scaled(np.ascontiguousarray(image), scale), text_patch(title, title_height)
        width = max(picture.shape[1], label.shape[1])
        column = np.full((title_height + picture.shape[0], width, 3), _WHITE, dtype=np.uint8)
        x = (width - label.shape[1]) // 2
        column[:title_height, x:x + label.shape[1]] = label
        x = (width - picture.shape[1]) // 2
        column[title_height:, x:x + picture.shape[1]] = picture
        columns += [column, np.full((column.shape[0], gap, 3), _WHITE, dtype=np.uint8)]
    return np.concatenate(columns[:-1], axis=1)


def legend(labels_of: LabelSet, rows_per_column: int = 20, row_height: int = 20, swatch: int = 14) -> np.ndarray:
    """RGB image of a label set: its title, then one row per class, a colour swatch and ``"<k> <name>"``, in
    columns of ``rows_per_column`` rows."""
    n = len(labels_of.names)
    colors = labels_of.colors.numpy()
    n_cols = math.ceil(n / rows_per_column)
    rows = min(n, rows_per_column)
    texts = [text_patch(f"{k} {name}", row_height) for k, name in enumerate(labels_of.names)]
    col_width = swatch + 8 + max(t.shape[1] for t in texts)
    title = text_patch(labels_of.title, row_height + 4)
    width = max(n_cols * col_width, title.shape[1])
    image = np.full((title.shape[0] + rows * row_height + 4, width, 3), _WHITE, dtype=np.uint8)
    image[:title.shape[0], :title.shape[1]] = title
    for k, text in enumerate(texts):
        col, row = divmod(k, rows_per_column)
        y, x = title.shape[0] + row * row_height, col * col_width + 4
        top = y + (row_height - swatch) // 2
        image[top:top + swatch, x:x + swatch] = colors[k]
        image[y:y + row_height, x + swatch + 4:x + swatch + 4 + text.shape[1]] = text
    return image


# --------------------------------------------------------------------------------------------------------
# TensorBoard grids


def _target_to_image(task: str, target: Tensor, labels_of: Optional[LabelSet]) -> Tensor:
    """One target ``(C, H, W)`` or ``(H, W)`` -> image."""
    if task in LABEL_TASKS:
        return colorize_labels(_squeeze(target).long(), labels_of)
    if task in ("sal", "edge"):
        return edge_to_image(target, logits=False)
    if task == "normals":
        return normals_to_image(target)
    if task == "depth":
        return depth_to_image(target)
    raise ValueError(f"no picture for task {task!r}; valid: semseg, human_parts, sal, edge, normals, depth")


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


def prediction_grid(image: Tensor, preds: Mapping[str, Tensor], batch: Mapping[str, Tensor], tasks: Iterable[str],
                    dataset: str, max_items: int = 2, normalized: bool = True) -> dict[str, Tensor]:
    """Per task, a ``(3, rows·H, cols·W)`` uint8 grid: one row per item, ``input | prediction | target``, with the
    :func:`event_image` of ``batch["events"]`` after the input when the batch has event voxel grids.

    Args:
        image: input batch ``(B, C, H, W)``: ImageNet-normalised RGB (``normalized``), else grey or RGB in [0, 1].
        preds: ``{task: (B, n, h, w)}`` raw outputs; resized bilinearly to ``(H, W)`` when their size differs.
        batch: the loader's batch; ``batch[task]`` ``(B, C, h, w)`` is the target, resized (nearest) to ``(H, W)``
            when its size differs (Cityscapes labels are 1024×2048, inputs 512×1024). Without it the row is
            ``input | prediction``.
        tasks: the tasks to draw.
        dataset: ``train_db_name``, for the class colours (:data:`LABEL_SETS`).
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
        labels_of = label_set(dataset, task, pred.shape[1]) if task in LABEL_TASKS else None
        if tuple(pred.shape[-2:]) != size:
            pred = F.interpolate(pred, size=size, mode="bilinear", align_corners=False)
        target = batch.get(task) if isinstance(batch, Mapping) else None
        if target is not None and tuple(target.shape[-2:]) != size:
            target = F.interpolate(target.float().reshape(-1, 1, *target.shape[-2:]), size=size, mode="nearest")
            target = target.reshape(image.shape[0], -1, *size)
        rows = []
        for i in range(n_items):
            span = depth_range(target[i]) if task == "depth" and target is not None else None
            cells = [inputs[i], prediction_image(task, pred[i].cpu(), labels_of, span)]
            if target is not None:
                cells.append(_target_to_image(task, target[i].detach().cpu(), labels_of))
            rows.append(torch.cat(cells, dim=2))
        grids[task] = torch.cat(rows, dim=1)
    return grids

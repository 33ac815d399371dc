"""Prediction on one's own images (``main.py --run_mode predict``): any size, no dataset, one panel per image.

``inputs`` are files, folders (their files, by name, not recursive) and glob patterns. Each image (PNG, JPEG, BMP or
WebP) has its EXIF orientation applied and becomes RGB (grey and palette images expanded, the alpha channel of RGBA
dropped, 16-bit grey scaled to 8 bits). It then goes through the config's test transform (DATA.md §4.2: normalised
and centre-padded to ``TEST.SCALE``), so an image of a dataset split gives exactly the predictions of the evaluation
path. An image larger than ``TEST.SCALE`` is first resized down to fit, keeping its aspect ratio (area averaging;
the log and predictions.json name it), and its outputs are resized back (bilinear, on the network outputs). Every
output has the size of the input as displayed. A file that is not such an image is skipped with a warning naming it.

Outputs under ``out_dir`` (:mod:`utils.visualize` documents every encoding and colour):

    <task>/<name>.png        semseg, human_parts: uint8 class ids; depth: uint16 millimetres; normals: RGB;
                             edge, sal: uint8 probabilities
    <task>/color/<name>.png  class maps and depth in colour (the depth range is in the panel and predictions.json)
    <task>/<name>.npy        with ``save_raw``: the network output, float32 (C, H, W): logits, depth in metres,
                             normals before normalisation
    panels/<name>.png        the input and every task side by side, with titles
    legend_<task>.png        the colours and names of each class-map task's classes
    predictions.json         per image: the input file, its size, the size the model saw, the depth range

``<name>`` is the file name without its extension; a name met again gets ``_2``, ``_3``, ... Under torchrun each rank
predicts its own share of the inputs (rank r takes inputs r, r + world, ...), so every file is written once.
The model is fed ``model(*[batch[k] for k in model.inputs])`` (default ``("image",)``).

Image + event models (MambaSeg): each frame is paired with the event file of the same name among ``events`` — a
``.npy`` voxel grid (bins, H, W) of the frame's size, or the events of one window, ``x, y, t, p``, in a ``.npz`` or
an ``.h5``/``.hdf5`` file (DSEC's ``events/x`` ... layout or top-level ``x, y, t, p``), turned into the voxel grid of
:func:`data.events.voxel_grid` at the frame's size. As in the event datasets, frames stay in [0, 1] (grey when the
model takes one channel) and are not normalised. The model runs at the size it was built for, so frame and grid are
resized to it (bilinear) when they differ and the outputs are resized back; the panel shows the frame, the
:func:`utils.visualize.event_image` of the grid and the predictions.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data import ShardSampler, fork_safe_opencv
from data.transforms import PadImage, test_transforms
from models.registry import batch_inputs, model_inputs
from utils.distributed import all_gather_object, get_rank, get_world_size, init_distributed, is_main_process
from utils.fileio import write_npy, write_text
from utils.visualize import LABEL_TASKS, LabelSet, label_set, legend, panel, prediction_maps, save_image, save_task_maps

__all__ = ["IMAGE_FORMATS", "EVENT_FORMATS", "TASK_TITLES", "collect_inputs", "output_names", "load_image",
           "load_event_grid", "pair_events", "fit_size", "ImageFiles", "collate_images", "predict"]

logger = logging.getLogger(__name__)

# PIL format name -> how the docs call it
IMAGE_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "BMP": "BMP", "WEBP": "WebP"}
# the model inputs this module provides
PROVIDED_INPUTS = ("image", "events")
EVENT_FORMATS = (".npy", ".npz", ".h5", ".hdf5")
TASK_TITLES = {"semseg": "semantic seg.", "human_parts": "human parts", "sal": "saliency", "normals": "normals",
               "depth": "depth", "edge": "boundaries"}
_GLOB_CHARS = "*?["


# --------------------------------------------------------------------------------------------------------
# Inputs


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The files named by ``inputs``, in order, each once: a file itself, a folder's files (by name, not recursive,
    hidden ones left out), a glob pattern's files (sorted; ``**`` recurses).

    A path that is neither a file, a folder nor a pattern is an error naming it; a folder or pattern without files
    is a warning; no file at all is an error.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            found = [path]
        elif any(c in str(item) for c in _GLOB_CHARS):
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        else:
            raise FileNotFoundError(f"--inputs {item}: no such file or folder")
        if not found:
            logger.warning("--inputs %s: no files there", item)
        files += found
    first: dict[Path, Path] = {}
    for p in files:                                       # a file named twice (or through a link) is predicted once
        first.setdefault(p.resolve(), p.absolute())
    unique = list(first.values())
    if not unique:
        raise ValueError(f"no input files: --inputs {' '.join(map(str, inputs)) or '(empty)'} names no file; "
                         f"give image files ({', '.join(IMAGE_FORMATS.values())}), folders or glob patterns")
    return unique


def output_names(paths: Sequence[Path]) -> list[str]:
    """One output name per path: its stem, with ``_2``, ``_3``, ... added when an earlier path took it."""
    taken: set[str] = set()
    names = []
    for path in paths:
        name, k = path.stem, 1
        while name in taken:
            k += 1
            name = f"{path.stem}_{k}"
        if k > 1:
            logger.warning("%s: the name %r is taken by an earlier input; its outputs are named %r", path, path.stem,
                           name)
        taken.add(name)
        names.append(name)
    return names


def load_image(path: Path) -> np.ndarray:
    """H×W×3 uint8 RGB of an image file as displayed: EXIF orientation applied; grey, palette and 16-bit grey
    expanded to RGB, alpha dropped. A format other than PNG, JPEG, BMP or WebP is a ValueError."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        if im.format not in IMAGE_FORMATS:
            raise ValueError(f"{im.format} files are not read; use {', '.join(IMAGE_FORMATS.values())}")
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I", "I;16", "I;16B", "I;16L"):                # 16-bit grey: keep the top 8 bits' range
            grey = np.clip(np.round(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=2)
        if im.mode in ("P", "PA"):                                      # palette transparency goes through RGBA
            im = im.convert("RGBA")
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def fit_size(h: int, w: int, size: Sequence[int]) -> tuple[int, int]:
    """``(h, w)`` when it fits in ``size``; else the largest size of the same aspect ratio that fits (≥ 1 pixel)."""
    scale = min(size[0] / h, size[1] / w)
    if scale >= 1:
        return h, w
    return min(int(size[0]), max(1, round(h * scale))), min(int(size[1]), max(1, round(w * scale)))


def load_event_grid(path: Path, height: int, width: int, num_bins: int) -> torch.Tensor:
    """The (``num_bins``, H, W) float32 voxel grid of an event file for a frame of ``height`` × ``width``: a ``.npy``
    grid as it is, or the grid of the events ``x, y, t, p`` stored in a ``.npz`` or ``.h5``/``.hdf5`` file.
    A wrong shape, missing arrays or an unknown suffix is a ValueError naming the file and what was expected."""
    from data.events import voxel_grid

    suffix = path.suffix.lower()
    if suffix == ".npy":
        grid = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
        if tuple(grid.shape) != (num_bins, height, width):
            raise ValueError(f"{path}: a voxel grid of shape ({num_bins}, {height}, {width}) (bins, frame height, "
                             f"frame width) was expected, got {tuple(grid.shape)}")
        return grid
    keys = ("x", "y", "t", "p")
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data]
            arrays = None if missing else [data[k] for k in keys]
    elif suffix in (".h5", ".hdf5"):
        import h5py
        import hdf5plugin  # noqa: F401  (the Blosc filter of DSEC's files)

        with h5py.File(path, "r") as f:
            group = f["events"] if "events" in f else f
            missing = [k for k in keys if k not in group]
            arrays = None if missing else [group[k][()] for k in keys]
    else:
        raise ValueError(f"{path}: event files are {', '.join(EVENT_FORMATS)}")
    if arrays is None:
        raise ValueError(f"{path}: the event arrays {', '.join(missing)} are missing (expected x, y, t, p"
                         f"{', under events/ or at the top level' if suffix != '.npz' else ''})")
    return voxel_grid(*arrays, height, width, num_bins).contiguous()


def pair_events(paths: Sequence[Path], events: Sequence[str | os.PathLike]) -> list[Path]:
    """The event file of each frame in ``paths``: the one among ``events`` (files, folders, globs) with the frame's
    name; a frame without one is an error naming it."""
    by_name = {p.stem: p for p in collect_inputs(events) if p.suffix.lower() in EVENT_FORMATS}
    missing = [p for p in paths if p.stem not in by_name]
    if missing:
        raise ValueError(f"no event file ({'/'.join(EVENT_FORMATS)}) named like the frame(s) "
                         f"{', '.join(p.name for p in missing[:5])}{' ...' if len(missing) > 5 else ''} among --events")
    return [by_name[p.stem] for p in paths]


class ImageFiles(Dataset):
    """Image files (and their event files) as model inputs.

    Items: ``{"image": tensor, ["events": (bins, *size) voxel grid,] "meta": {img_name, path, img_size, fit_size,
    rgb}}``, ``img_size`` the displayed (H, W), ``fit_size`` the (H, W) the model sees, ``rgb`` the H×W×3 uint8
    picture (and ``events_path``, ``event_rgb``); or ``{"skipped": (path, reason)}`` for a file that cannot be read
    as an image.

    Args:
        paths: image files.
        names: output name per file.
        size: ``TEST.SCALE`` (h, w).
        event_paths: with an image + event model, the event file of each image; the frames then stay in [0, 1]
            with ``channels`` channels and frame and grid are resized to ``size`` (module docstring).
        channels: the model's frame channels (1: grey).
        num_bins: time bins of the voxel grid.
    """

    def __init__(self, paths: Sequence[Path], names: Sequence[str], size: Sequence[int],
                 event_paths: Sequence[Path] | None = None, channels: int = 3, num_bins: int = 10) -> None:
        self.paths, self.names = list(paths), list(names)
        self.size = (int(size[0]), int(size[1]))
        self.event_paths = None if event_paths is None else list(event_paths)
        self.channels, self.num_bins = channels, num_bins
        self.transform = test_transforms(self.size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        path = self.paths[index]
        try:
            rgb = load_image(path)
        # PIL reports unreadable files as OSError (UnidentifiedImageError), SyntaxError (broken PNG chunks), ...
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return {"skipped": (str(path), f"{type(e).__name__}: {e}")}
        h, w = rgb.shape[:2]
        meta = {"img_name": self.names[index], "path": str(path), "img_size": (h, w), "rgb": rgb}
        if self.event_paths is not None:
            return self._frame_and_events(rgb, self.event_paths[index], meta)
        fh, fw = fit_size(h, w, self.size)
        seen = rgb if (fh, fw) == (h, w) else cv2.resize(rgb, (fw, fh), interpolation=cv2.INTER_AREA)
        sample = self.transform({"image": seen.astype(np.float32)})
        sample["meta"] = {**meta, "fit_size": (fh, fw)}
        return sample

    def _frame_and_events(self, rgb: np.ndarray, events_path: Path, meta: dict) -> dict:
        """An event model's inputs at its built size: the frame in [0, 1] and the voxel grid, resized together."""
        from utils.visualize import event_image

        h, w = rgb.shape[:2]
        grid = load_event_grid(events_path, h, w, self.num_bins)
        frame = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0          # (3, H, W) in [0, 1]
        if self.channels == 1:
            frame = (0.299 * frame[0] + 0.587 * frame[1] + 0.114 * frame[2])[None]      # ITU-R 601 luma, as PIL "L"
        meta.update(fit_size=self.size, stretched=(h, w) != self.size, events_path=str(events_path),
                    event_rgb=event_image(grid).permute(1, 2, 0).numpy())
        if meta["stretched"]:
            frame, grid = (F.interpolate(x[None], size=self.size, mode="bilinear", align_corners=False)[0]
                           for x in (frame, grid))
        return {"image": frame, "events": grid, "meta": meta}


def collate_images(items: Sequence[dict]) -> dict:
    """``{<input>: stacked tensors, "meta": [per image], "skipped": [(path, reason)]}``; the inputs are absent
    when every item was skipped."""
    kept = [it for it in items if "skipped" not in it]
    batch: dict[str, Any] = {"meta": [it["meta"] for it in kept],
                             "skipped": [it["skipped"] for it in items if "skipped" in it]}
    if kept:
        batch.update({k: torch.stack([it[k] for it in kept]) for k in kept[0] if k != "meta"})
    return batch


# --------------------------------------------------------------------------------------------------------
# Outputs


def _save_outputs(preds: dict[str, torch.Tensor], meta: dict, out_dir: Path, labels: dict[str, LabelSet],
                  save_raw: bool) -> dict:
    """Write one image's maps, raw arrays and panel; returns its predictions.json record."""
    name, (h, w), (fh, fw) = meta["img_name"], meta["img_size"], meta["fit_size"]
    record: dict[str, Any] = {"name": name, "input": meta["path"], "size": [h, w],
                              "resized_to": None if (fh, fw) == (h, w) else [fh, fw]}
    cells = [("input", meta["rgb"])]
    if "events_path" in meta:
        record["events"] = meta["events_path"]
        cells.append(("events", meta["event_rgb"]))
    for task, pred in preds.items():
        if meta.get("stretched"):                                            # resized to the model, not padded
            out = pred.float()
        else:
            top, _, left, _ = PadImage.offsets(fh, fw, pred.shape[-2:])
            out = pred[:, top:top + fh, left:left + fw].float()              # (C, fh, fw): the image's own region
        if (fh, fw) != (h, w):
            out = F.interpolate(out[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        out = out.cpu()
        maps = prediction_maps(task, out, labels.get(task))
        save_task_maps(maps, out_dir, task, name)
        if save_raw:
            write_npy(out_dir / task / f"{name}.npy", out.numpy())
        title = TASK_TITLES.get(task, task)
        if maps.value_range is not None:
            title += " %.2f-%.2f m" % maps.value_range
            record["depth_range_m"] = [round(v, 4) for v in maps.value_range]
        cells.append((title, maps.preview))
    save_image(out_dir / "panels" / f"{name}.png", panel(cells))
    return record


def _log_summary(records: list[dict], skipped: list[tuple[str, str]], scale: Sequence[int], out_dir: Path,
                 seconds: float, world: int) -> None:
    resized = [r for r in records if r["resized_to"]]
    if resized:
        shown = ", ".join(f"{r['name']} ({r['size'][0]}x{r['size'][1]} -> {r['resized_to'][0]}x{r['resized_to'][1]})"
                          for r in resized[:5]) + (f" and {len(resized) - 5} more" if len(resized) > 5 else "")
        logger.info("%d image(s) were resized to fit the model's input (TEST.SCALE %s; aspect ratio kept except for "
                    "image + event models, which run at their built size) and their outputs resized back to the "
                    "image size: %s", len(resized), list(scale), shown)
    logger.info("predicted %d image(s) on %d rank(s) in %.1f s (%.2f images/s)%s; panels in %s, every output under %s "
                "(predictions.json lists them)", len(records), world, seconds, len(records) / max(seconds, 1e-9),
                f", skipped {len(skipped)} file(s) that are not images" if skipped else "", out_dir / "panels", out_dir)


@torch.no_grad()
def predict(cfg: Any, checkpoint: str | os.PathLike, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
            *, events: Sequence[str | os.PathLike] = (), batch_size: int = 1, save_raw: bool = False,
            device: torch.device | None = None) -> dict:
    """Predict every task of ``checkpoint`` on the images named by ``inputs`` and write the outputs (module docstring).

    Args:
        cfg: the experiment config (its model, tasks, ``TEST.SCALE``, ``amp``, ``model.exec``/``compile``,
            ``nworkers``); no dataset is read.
        checkpoint: one of ours or a released MTMamba / MTMamba++ file
            (:func:`evaluation.evaluator.load_trained_model`).
        inputs: files, folders and glob patterns (:func:`collect_inputs`).
        out_dir: where the outputs go.
        events: for an image + event model, the event files (files, folders, globs), paired with the images by
            name (:func:`pair_events`).
        batch_size: images per forward pass.
        save_raw: also write the network outputs as ``.npy``.
        device: defaults to this rank's device (:func:`utils.distributed.init_distributed`).

    Returns the content of predictions.json (the same on every rank). Raises when no input file is an image.
    """
    from evaluation.evaluator import load_trained_model
    from utils.config import AMP_DTYPES

    out_dir = Path(out_dir)
    paths = collect_inputs(inputs)
    names = output_names(paths)
    device = init_distributed().device if device is None else device
    cfg, model, _ = load_trained_model(cfg, checkpoint, device)
    inputs_of_model = model_inputs(model)
    unknown = [k for k in inputs_of_model if k not in PROVIDED_INPUTS]
    if unknown:
        raise ValueError(f"model.name={cfg.model.name!r} takes the inputs {list(inputs_of_model)}; predict provides "
                         f"{list(PROVIDED_INPUTS)} only (missing: {unknown})")
    with_events = "events" in inputs_of_model
    if with_events != bool(events):
        raise ValueError(f"model.name={cfg.model.name!r} takes the inputs {list(inputs_of_model)}: "
                         + ("give the event file of each image with --events" if with_events else
                            "--events is only for image + event models"))
    event_paths = pair_events(paths, events) if with_events else None
    channels = getattr(model, "in_channels", {}).get("image", 3)
    num_bins = getattr(model, "in_channels", {}).get("events", 10)
    tasks = list(cfg.TASKS.NAMES)
    labels = {t: label_set(cfg.train_db_name, t, cfg.TASKS.NUM_OUTPUT[t]) for t in tasks if t in LABEL_TASKS}
    scale = tuple(int(v) for v in cfg.TEST.SCALE)
    rank, world = get_rank(), get_world_size()
    sampler = ShardSampler(len(paths), rank, world)
    workers = int(cfg.get("nworkers", 0))
    if workers > 0:
        fork_safe_opencv()
    loader = DataLoader(ImageFiles(paths, names, scale, event_paths, channels, num_bins), batch_size=int(batch_size),
                        sampler=sampler, collate_fn=collate_images, num_workers=workers,
                        pin_memory=torch.cuda.is_available())
    amp_dtype = AMP_DTYPES[cfg.get("amp")]
    logger.info("predict: %d input file(s) on %d rank(s), batch %d, TEST.SCALE %s, tasks %s, amp %s, exec %s -> %s",
                len(paths), world, batch_size, list(scale), tasks, cfg.get("amp"), cfg.model.exec, out_dir)

    records: list[dict] = []
    skipped: list[tuple[str, str]] = []
    start = time.perf_counter()
    with tqdm(total=len(sampler), desc="predict", unit="img", disable=not is_main_process(),
              dynamic_ncols=True) as bar:
        for batch in loader:
            for path, reason in batch["skipped"]:
                logger.warning("skipped %s: not a readable %s image (%s)", path, "/".join(IMAGE_FORMATS.values()),
                               reason)
            skipped += batch["skipped"]
            if batch["meta"]:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    preds = model(*batch_inputs(model, batch, device))
                for i, meta in enumerate(batch["meta"]):
                    records.append(_save_outputs({t: preds[t][i] for t in tasks}, meta, out_dir, labels, save_raw))
            bar.update(len(batch["meta"]) + len(batch["skipped"]))

    records = sorted((r for part in all_gather_object(records) for r in part), key=lambda r: r["name"])
    skipped = sorted(s for part in all_gather_object(skipped) for s in part)
    seconds = time.perf_counter() - start
    if not records:
        raise ValueError(f"none of the {len(paths)} input file(s) is a readable {'/'.join(IMAGE_FORMATS.values())} "
                         f"image (the warnings above name each file and why)")
    summary = {"checkpoint": str(checkpoint), "model": cfg.model.name, "dataset": cfg.train_db_name, "tasks": tasks,
               "test_scale": list(scale), "images": records,
               "skipped": [{"input": path, "reason": reason} for path, reason in skipped]}
    if is_main_process():
        for task, labels_of in labels.items():
            save_image(out_dir / f"legend_{task}.png", legend(labels_of))
        write_text(out_dir / "predictions.json", json.dumps(summary, indent=2) + "\n")
        _log_summary(records, skipped, scale, out_dir, seconds, world)
    return summary

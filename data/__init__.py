"""Datasets (NYUDv2, PASCAL-Context, Cityscapes; DDD17, DSEC-Semantic with events), transforms, collation and the
DataLoader builder.

Import-light: the dataset modules load only when :func:`build_dataloaders` or :func:`build_dataset` runs.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Optional

__all__ = ["DATASET_FOLDERS", "EVENT_DATASETS", "eval_split", "normalizes_frames", "resolve_db_root", "build_dataset",
           "build_transforms", "build_dataloaders", "build_val_loader", "seed_worker", "fork_safe_opencv",
           "ShardSampler"]

_logger = logging.getLogger(__name__)

# train_db_name -> folder the archive extracts to (DATA.md §0)
DATASET_FOLDERS = {"NYUD": "NYUDv2", "PASCALContext": "PASCALContext", "Cityscapes": "cityscapes_all",
                   "DDD17": "DDD17", "DSEC": "DSEC"}
# frame + event datasets (MAMBASEG.md §5): no val split, the official code evaluates and selects on test
EVENT_DATASETS = ("DDD17", "DSEC")


def eval_split(db_name: str) -> str:
    """The split behind "val" (validation while training, ``infer``): ``test`` for the event datasets, which have
    no val split (the official code evaluates and selects its best model on test, MAMBASEG.md §6), else ``val``."""
    return "test" if db_name in EVENT_DATASETS else "val"


def normalizes_frames(db_name: str) -> bool:
    """Whether the pipeline of ``db_name`` normalises frames with the ImageNet mean/std (DATA.md §4); the event
    datasets keep them in [0, 1] (MAMBASEG.md §5)."""
    return db_name not in EVENT_DATASETS


def resolve_db_root(cfg: Any) -> Path:
    """``cfg.db_root``, else ``$MTL_DATA_ROOT``; the folder that holds the dataset folders (:data:`DATASET_FOLDERS`)."""
    root = cfg.get("db_root") or os.environ.get("MTL_DATA_ROOT")
    if not root:
        raise ValueError("no dataset root: set db_root in the config (or --opts db_root=/path) or the "
                         "environment variable MTL_DATA_ROOT to the folder holding the dataset folders "
                         f"({', '.join(f'{v}/' for v in DATASET_FOLDERS.values())})")
    return Path(root).expanduser().resolve()


def build_dataset(cfg: Any, split: str, transform: Optional[Any] = None):
    """The dataset named by ``cfg.train_db_name`` for ``split`` with the tasks ``cfg.TASKS.NAMES``."""
    name = cfg.train_db_name
    if name not in DATASET_FOLDERS:
        raise ValueError(f"train_db_name={name!r} is not supported; valid: {sorted(DATASET_FOLDERS)}")
    root = resolve_db_root(cfg) / DATASET_FOLDERS[name]
    if name in EVENT_DATASETS:
        return _build_event_dataset(cfg, name, root, eval_split(name) if split == "val" else split, transform)
    tasks = list(cfg.TASKS.NAMES)
    if name == "NYUD":
        from data.nyud import NYUDv2
        return NYUDv2(root, split, tasks, transform=transform)
    if name == "Cityscapes":
        from data.cityscapes import Cityscapes
        return Cityscapes(root, split, tasks, transform=transform, sky_label_id=cfg.cityscapes.sky_label_id)
    from data.pascal_context import PASCALContext
    return PASCALContext(root, split, tasks, transform=transform, parts_cache_dir=cfg.get("parts_cache_dir"))


def _build_event_dataset(cfg: Any, name: str, root: Path, split: str, transform: Optional[Any]):
    if name == "DDD17":
        from data.ddd17 import DDD17
        return DDD17(root, split, transform=transform)
    from data.dsec import DSECSemantic
    dsec = cfg.get("dsec") or {}  # utils/config.py DEFAULTS: num_classes, num_events
    return DSECSemantic(root, split, transform=transform,
                        **{k: int(dsec[k]) for k in ("num_classes", "num_events") if k in dsec})


def build_transforms(cfg: Any, split: str, seed: Optional[int] = None):
    """The sample pipeline of ``cfg.train_db_name`` for ``split``: DATA.md §4 for NYUD / PASCAL-Context (crop and
    augment to ``TRAIN.SCALE``, test padding to ``TEST.SCALE``); Cityscapes resizes the image and keeps the labels,
    with no augmentation (CITYSCAPES.md §1); MAMBASEG.md §5 for the event datasets (crop ``TRAIN.SCALE``)."""
    train = split == "train"
    if cfg.train_db_name in EVENT_DATASETS:
        from data.event_transforms import event_test_transforms, event_train_transforms
        return event_train_transforms(cfg.train_db_name, cfg.TRAIN.SCALE, seed=seed) if train else \
            event_test_transforms()
    from data.transforms import resize_transforms, test_transforms, train_transforms
    if cfg.train_db_name == "Cityscapes":
        return resize_transforms(cfg.TRAIN.SCALE if train else cfg.TEST.SCALE)
    return train_transforms(cfg.TRAIN.SCALE, seed=seed) if train else test_transforms(cfg.TEST.SCALE)


def seed_worker(worker_id: int) -> None:
    """Seed numpy, random and the dataset's transform generator from the worker's torch seed.

    OpenCV must not be reconfigured here: its thread-pool calls can block forever in a forked worker. The
    parent turns the pool off before forking (:func:`fork_safe_opencv`), so workers run OpenCV single-threaded.
    """
    import numpy as np
    import torch
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if hasattr(transform, "reseed"):
        transform.reseed(seed)


class ShardSampler:
    """Indices ``rank, rank + world, ...`` of a split: every image on exactly one rank, no padded duplicates.

    For evaluation, where DistributedSampler's padding would count some images twice.
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def fork_safe_opencv() -> None:
    """Stop OpenCV's thread pool in this process before DataLoader workers are forked.

    Forked workers inherit the pool's state, and a worker that touches an inherited pool (even to resize it)
    can block forever. With the pool off, workers run OpenCV single-threaded and never oversubscribe the cores.
    """
    import cv2
    cv2.setNumThreads(0)


def _loader_options(cfg: Any) -> dict:
    import torch

    from data.collate import collate_mil

    workers = int(cfg.get("nworkers", 0))
    if workers > 0:
        fork_safe_opencv()
    return dict(num_workers=workers, collate_fn=collate_mil, worker_init_fn=seed_worker,
                persistent_workers=False, pin_memory=torch.cuda.is_available())


def build_val_loader(cfg: Any):
    """The val DataLoader: ``cfg.TEST.SCALE`` pipeline, batch ``cfg.valBatch``, in order; when distributed,
    each rank reads its own shard without padded duplicates (:class:`ShardSampler`)."""
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    val_set = build_dataset(cfg, "val", build_transforms(cfg, "val"))
    distributed = dist.is_available() and dist.is_initialized()
    sampler = ShardSampler(len(val_set), dist.get_rank(), dist.get_world_size()) if distributed else None
    return DataLoader(val_set, batch_size=int(cfg.valBatch), shuffle=False, sampler=sampler, drop_last=False,
                      **_loader_options(cfg))


def build_dataloaders(cfg: Any, seed: Optional[int] = None):
    """Train and val DataLoaders: (train_loader, val_loader).

    Train: ``cfg.TRAIN.SCALE`` pipeline, batch ``cfg.trBatch``, shuffled, drop_last; a DistributedSampler when
    torch.distributed is initialised (the caller sets its epoch). Val: :func:`build_val_loader`. Workers are
    seeded from ``seed`` (default ``cfg.seed`` or 0).
    """
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler

    seed = int(cfg.get("seed", 0) if seed is None else seed)
    train_set = build_dataset(cfg, "train", build_transforms(cfg, "train", seed=seed))
    distributed = dist.is_available() and dist.is_initialized()
    train_sampler = DistributedSampler(train_set, shuffle=True, seed=seed, drop_last=True) if distributed else None
    train_loader = DataLoader(train_set, batch_size=int(cfg.trBatch), shuffle=train_sampler is None,
                              sampler=train_sampler, drop_last=True, generator=torch.Generator().manual_seed(seed),
                              **_loader_options(cfg))
    val_loader = build_val_loader(cfg)
    _logger.info("data: %s train %d / val %d images, workers %d", cfg.train_db_name, len(train_set),
                 len(val_loader.dataset), train_loader.num_workers)
    return train_loader, val_loader

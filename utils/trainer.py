"""The training loop: optimizer and schedule, AMP, checkpoints with exact resume, validation and logs.

``train(cfg)`` runs under torchrun (any number of processes) or as a plain process. Checkpoints go to
``run_dir/checkpoints/last.pth`` (atomic; resumed from automatically) and ``best.pth`` (best validation Δm proxy; a
single-task run without a Δm baseline, such as MambaSeg, by its headline metric; otherwise the latest validation).
Every model is fed the batch keys it declares (:func:`models.registry.batch_inputs`): one loop for all of them.

Exact resume: a run resumed from any checkpoint reaches the same weights and optimizer state, bit for bit, as an
uninterrupted run, whatever killed it (a crash inside a step, during validation or during a save):

* the data order and augmentations are a function of (seed, epoch), and the skipped part of the interrupted epoch
  is replayed through the loader;
* every rank's random state (torch, CUDA, NumPy, Python) is saved, and side work (validation, TensorBoard images)
  runs under :func:`utils.checkpoint.preserved_rng`, so it never moves the training stream;
* a validation that a checkpoint was saved before, but did not finish, runs again on resume.

``config.yaml`` is written once per run. A resume whose config differs from the checkpoint's stops and lists the
keys, unless the changes are asked for (``apply_changes``): they then take effect and are logged and recorded.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import yaml
from tqdm import tqdm

from data import build_dataloaders, eval_split, normalizes_frames
from evaluation.delta_m import default_baseline, delta_m
from evaluation.evaluator import evaluate, selection_metric
from losses import build_loss
from models import batch_inputs, build_model
from models.execution import compile_decoder
from models.pretrained import log_encoder_weights, require_encoder_weights
from utils.checkpoint import (load_checkpoint, load_model_state, preserved_rng, rng_state, save_checkpoint,
                              set_rng_state, unwrap_model)
from utils.config import AMP_DTYPES, RUNTIME_KEYS, ConfigError, config_diff, config_to_dict, save_config
from utils.distributed import DistInfo, all_gather_object, all_reduce_sum, barrier, get_rank, is_main_process
from utils.fileio import remove_stale_temp_files, write_text
from utils.optim import build_optimizer, build_scheduler, optimizer_kwargs
from utils.visualize import prediction_grid

__all__ = ["Trainer", "train"]

logger = logging.getLogger(__name__)


class Trainer:
    """Owns the model, optimizer, schedule, loaders and the run directory of one training run.

    Args:
        cfg: the loaded config.
        run_dir: ``out_dir/version_name``.
        dist_info: from :func:`utils.distributed.init_distributed`.
    """

    def __init__(self, cfg: Any, run_dir: Path, dist_info: DistInfo) -> None:
        self.cfg, self.run_dir, self.dist = cfg, Path(run_dir), dist_info
        self.device = dist_info.device
        self.seed = int(cfg.get("seed", 0))
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)
        # the data first: a missing dataset is named before any encoder weights are downloaded
        self.train_loader, self.val_loader = build_dataloaders(cfg, seed=self.seed)
        if eval_split(cfg.val_db_name) == "test":
            logger.info("%s has no val split: validation runs on its test split, and best.pth is selected on the "
                        "test split, as the official code does", cfg.val_db_name)
        require_encoder_weights(cfg)      # no accidental start from random encoder weights; before the model is built
        model = build_model(cfg)
        if is_main_process():
            log_encoder_weights(model)    # the loaded fraction and the file's sha256, per encoder
        model = compile_decoder(model.to(self.device), cfg.model.compile)
        if dist_info.is_distributed:
            ids = [dist_info.local_rank] if self.device.type == "cuda" else None
            if self.device.type == "cuda":
                # BatchNorm statistics over all GPUs, as the official MTMamba++ LiteHead (SyncBatchNorm is GPU-only)
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model = model
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.amp_dtype = AMP_DTYPES[cfg.get("amp")]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.loss_fn = build_loss(cfg)
        self.accum_steps = int(cfg.accum_steps)
        if self.accum_steps > 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            logger.warning("accum_steps=%d with BatchNorm layers (e.g. MTMamba++'s head): their statistics come from "
                           "micro-batches of %d, so accumulation is close to, not equal to, the multi-GPU recipe",
                           self.accum_steps, int(cfg.trBatch))
        self.iteration, self.best_score, self.validated_at = 0, -math.inf, 0
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.stop_signal: int | None = None
        self.writer = None
        if is_main_process():
            remove_stale_temp_files(self.ckpt_dir)

    def open_writer(self) -> None:
        """TensorBoard on rank 0; points logged after the current iteration by an earlier attempt are dropped."""
        if is_main_process() and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.iteration or None)

    # ------------------------------------------------------------------------------------------------ state
    def state(self) -> dict:
        """The checkpoint; collective (every rank's random state is gathered), so every rank calls it."""
        return {"model": unwrap_model(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "iteration": self.iteration, "best_score": self.best_score, "validated_at": self.validated_at,
                "rng": all_gather_object(rng_state()), "config": config_to_dict(self.cfg)}

    def save(self, name: str) -> Path:
        """Write ``checkpoints/<name>`` atomically (rank 0 writes; every rank must call it)."""
        path = self.ckpt_dir / name
        state = self.state()
        if is_main_process():
            save_checkpoint(path, state)
        barrier()
        return path

    def resume(self, path: Path, apply_changes: bool = False) -> None:
        """Continue from checkpoint ``path``. A config that differs from the checkpoint's (beyond
        :data:`utils.config.RUNTIME_KEYS`) is an error listing the keys, unless ``apply_changes``."""
        state = load_checkpoint(path, map_location="cpu")
        changes = self._config_changes(state.get("config"), path, apply_changes)
        load_model_state(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.best_score = int(state["iteration"]), float(state["best_score"])
        self.validated_at = int(state.get("validated_at", self.iteration))
        rng = state["rng"]
        if isinstance(rng, list):                      # one state per rank
            if len(rng) != self.dist.world_size:
                logger.warning("checkpoint holds the random states of %d rank(s), this run has %d: the random "
                               "stream differs from the original run's", len(rng), self.dist.world_size)
            rng = rng[get_rank() % len(rng)]
        set_rng_state(rng)
        if changes:
            self._apply_config_changes(changes)
        logger.info("resumed from %s at iteration %d", path, self.iteration)

    def _config_changes(self, saved: dict | None, path: Path, apply_changes: bool) -> dict[str, tuple]:
        if saved is None:
            return {}
        diff = config_diff(saved, self.cfg)
        runtime = {k: v for k, v in diff.items() if k in RUNTIME_KEYS}
        if runtime:
            logger.info("resuming with other run settings: %s", _describe(runtime))
        changes = {k: v for k, v in diff.items() if k not in RUNTIME_KEYS}
        if changes and not apply_changes:
            raise ConfigError(f"the config differs from the one {path} was trained with: {_describe(changes)}. "
                              f"Run with the checkpoint's values, pass --apply_config_changes to continue with the "
                              f"new ones, or --no_resume to start over")
        return changes

    def _apply_config_changes(self, changes: dict[str, tuple]) -> None:
        """Make the optimizer and schedule follow the new config (their loaded state holds the old values), log
        the change and record it beside config.yaml."""
        kwargs = optimizer_kwargs(self.cfg)
        for group in self.optimizer.param_groups:
            group.update({k: v for k, v in kwargs.items() if k != "lr"})
            group["initial_lr"] = kwargs["lr"]
        self.scheduler.base_lrs = [kwargs["lr"]] * len(self.optimizer.param_groups)
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                       self.scheduler.lr_lambdas):
            group["lr"] = base * factor(self.scheduler.last_epoch)
        logger.warning("resuming at iteration %d with config changes: %s", self.iteration, _describe(changes))
        if is_main_process():
            save_config(self.cfg, self.run_dir / "config.yaml")
            record = self.run_dir / "config_changes.yaml"
            history = yaml.safe_load(record.read_text()) if record.is_file() else []
            history.append({"iteration": self.iteration, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "changes": {k: {"old": a, "new": b} for k, (a, b) in changes.items()}})
            write_text(record, yaml.safe_dump(history, sort_keys=False, allow_unicode=True))

    # ------------------------------------------------------------------------------------------------ data
    def batches(self):
        """Endless (micro-)batches in a reproducible order: epoch e uses seed + e, and a resumed run skips what was
        done (``accum_steps`` batches per optimiser step)."""
        per_epoch = len(self.train_loader)
        if per_epoch == 0:
            raise ValueError(f"the training split has fewer images than trBatch={self.cfg.trBatch}")
        epoch, skip = divmod(self.iteration * self.accum_steps, per_epoch)
        while True:
            sampler = self.train_loader.sampler
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            if self.train_loader.generator is not None:
                self.train_loader.generator.manual_seed(self.seed + epoch)
            transform = getattr(self.train_loader.dataset, "transform", None)
            if hasattr(transform, "reseed"):
                transform.reseed(self.seed + epoch)
            for i, batch in enumerate(self.train_loader):
                if i >= skip:
                    yield batch
            epoch, skip = epoch + 1, 0

    # ------------------------------------------------------------------------------------------------ steps
    def step(self, micro_batches: Sequence[dict]) -> dict[str, float]:
        """One optimiser step over ``accum_steps`` micro-batches; returns their mean detached losses.

        Each micro-batch's loss is divided by their number, so the accumulated gradient is the mean of the
        micro-batch gradients: what DDP computes over as many ranks with one micro-batch each. DDP all-reduces only
        on the last micro-batch. Raises FloatingPointError on a non-finite loss (on every rank, when any rank has
        one), before the optimiser moves.
        """
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = len(micro_batches)
        means: dict[str, float] = {}
        for k, batch in enumerate(micro_batches):
            skip_sync = self.dist.is_distributed and k < n - 1
            with self.model.no_sync() if skip_sync else contextlib.nullcontext():
                inputs = batch_inputs(self.model, batch, self.device)
                targets = {t: batch[t].to(self.device, non_blocking=True) for t in self.cfg.TASKS.NAMES}
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    preds = self.model(*inputs)
                # at least fp32 (bf16/fp16 outputs of autocast are upcast, a float64 model stays float64)
                losses = self.loss_fn({t: p.to(torch.promote_types(p.dtype, torch.float32)) for t, p in preds.items()},
                                      targets)
                self._check_finite(losses)
                self.scaler.scale(losses["total"] / n).backward()
            for t, v in losses.items():
                means[t] = means.get(t, 0.0) + v.item() / n
        if self.cfg.get("grad_clip"):
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), float(self.cfg.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        return means

    def _check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        finite = torch.stack([torch.isfinite(v) for v in losses.values()]).float()
        if self.dist.is_distributed:
            finite = all_reduce_sum(finite) / self.dist.world_size
        if not bool((finite == 1).all()):
            bad = [t for t, ok in zip(losses, finite.tolist()) if ok != 1]
            path = self.save(f"nonfinite_iter{self.iteration}.pth")
            raise FloatingPointError(f"non-finite loss for {', '.join(bad)} at iteration {self.iteration}; "
                                     f"the state before this step is in {path} (last.pth is untouched)")

    def validate(self) -> dict[str, dict[str, float]]:
        """Evaluate, log, and save best.pth when the metric of :func:`~evaluation.evaluator.selection_metric`
        improves (at every validation when there is none); the training random stream is untouched."""
        with preserved_rng():
            evaluation = evaluate(self.model, self.val_loader, self.cfg, self.device, amp_dtype=self.amp_dtype)
            if self.writer is not None:
                self.log_prediction_images()
        results = evaluation.metrics
        baseline = default_baseline(self.cfg.train_db_name)
        if baseline is not None:
            results["delta_m_proxy"] = {"value": delta_m(results, baseline, proxy=True).value}
        selection = selection_metric(results)
        score = None
        if selection is not None:
            sel_task, sel_metric, higher_is_better = selection
            score = results[sel_task][sel_metric] if higher_is_better else -results[sel_task][sel_metric]
        if self.writer is not None:
            for task, metrics in results.items():
                for name, value in metrics.items():
                    self.writer.add_scalar(f"val/{task}/{name}", value, self.iteration)
        logger.info("iteration %d validation: %s", self.iteration,
                    "; ".join(f"{t} " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()) for t, m in results.items()))
        problems = evaluation.describe_nonfinite()
        if problems or (score is not None and not math.isfinite(score)):
            logger.warning("best.pth not updated at iteration %d: the validation has %s", self.iteration,
                           problems or f"a non-finite {sel_task} {sel_metric}")
        elif score is None or score > self.best_score:
            self.best_score = self.best_score if score is None else score
            self.save("best.pth")
            if score is not None:
                where = " on the test split" if eval_split(self.cfg.val_db_name) == "test" else ""
                logger.info("best.pth: iteration %d, best %s %s %.4f%s", self.iteration, sel_task, sel_metric,
                            results[sel_task][sel_metric], where)
        self.validated_at = self.iteration
        return results

    @torch.no_grad()
    def log_prediction_images(self) -> None:
        """TensorBoard grids (input | events, when the batch has them | prediction | target) of the first
        validation batch, one per task."""
        batch = next(iter(self.val_loader))
        model = unwrap_model(self.model).eval()    # rank 0 only: bypass DDP and its collectives
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            preds = model(*batch_inputs(model, batch, self.device))
        grids = prediction_grid(batch["image"], {t: p.float().cpu() for t, p in preds.items()}, batch,
                                self.cfg.TASKS.NAMES, dataset=self.cfg.train_db_name,
                                normalized=normalizes_frames(self.cfg.val_db_name))
        for task, grid in grids.items():
            self.writer.add_image(f"val/{task}", grid, self.iteration)

    def check_replicas(self) -> None:
        """Raise if the ranks' parameters differ (they never should under DDP); logs the checksum."""
        checksum = float(sum(p.detach().double().sum() for p in unwrap_model(self.model).parameters()))
        sums = all_gather_object(checksum)
        if len(set(sums)) > 1:
            raise RuntimeError(f"model replicas differ across ranks after training: parameter sums {sums}")
        logger.info("parameter checksum %.10e identical on %d rank(s)", checksum, len(sums))

    # ------------------------------------------------------------------------------------------------ loop
    def fit(self, until: int | None = None) -> None:
        """Train to ``max_iter``, or stop at iteration ``until`` (e.g. a time budget; resume later from last.pth).

        A SIGTERM / SIGINT saves last.pth and returns early with :attr:`stop_signal` set."""
        cfg, max_iter = self.cfg, int(self.cfg.max_iter)
        stop = max_iter if until is None else min(until, max_iter)
        self.open_writer()
        per_epoch = len(self.train_loader)
        logger.info("effective batch %d = %d rank(s) x trBatch %d x accum_steps %d; max_iter %d = %.2f epochs of %.1f "
                    "optimiser steps (%d training images)", self.dist.world_size * int(cfg.trBatch) * self.accum_steps,
                    self.dist.world_size, int(cfg.trBatch), self.accum_steps, max_iter,
                    max_iter * self.accum_steps / max(per_epoch, 1), per_epoch / self.accum_steps,
                    len(self.train_loader.dataset))
        bar = tqdm(total=max_iter, initial=self.iteration, desc="train", disable=not is_main_process(),
                   dynamic_ncols=True)
        start = time.perf_counter()
        with self.stop_on_signals():
            if self._validation_due():                 # saved before a validation that did not finish
                self.validate()
            self._loop(self.batches(), bar, stop, max_iter)
        bar.close()
        self.check_replicas()
        logger.info("trained to iteration %d of %d in %.1f s", self.iteration, max_iter, time.perf_counter() - start)
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _validation_due(self) -> bool:
        val_every, max_iter = int(self.cfg.val_interval), int(self.cfg.max_iter)
        at_mark = self.iteration % val_every == 0 or self.iteration == max_iter
        return self.iteration > self.validated_at and at_mark

    @contextlib.contextmanager
    def stop_on_signals(self):
        """While training, SIGTERM / SIGINT request a clean stop: last.pth is saved and ``fit`` returns."""
        self.stop_signal = None

        def request_stop(signum, frame):
            self.stop_signal = signum

        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop_requested(self) -> bool:
        """True on every rank as soon as any rank received a stop signal."""
        flag = torch.tensor([float(self.stop_signal is not None)], device=self.device)
        return bool(all_reduce_sum(flag).item() > 0) if self.dist.is_distributed else bool(flag.item())

    def _loop(self, batches, bar, stop: int, max_iter: int) -> None:
        log_every, ckpt_every = int(self.cfg.log_interval), int(self.cfg.ckpt_interval)
        while self.iteration < stop:
            losses = self.step([next(batches) for _ in range(self.accum_steps)])
            bar.update(1)
            lr = self.optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{losses['total']:.4f}", lr=f"{lr:.2e}")
            if self.writer is not None and self.iteration % log_every == 0:
                for name, value in losses.items():
                    self.writer.add_scalar(f"train/loss_{name}", value, self.iteration)
                self.writer.add_scalar("train/lr", lr, self.iteration)
            if self.iteration % ckpt_every == 0 or self.iteration == stop:
                self.save("last.pth")
            if self._validation_due():
                self.validate()
            if self.stop_requested():
                self.save("last.pth")
                if self.stop_signal is None:           # another rank was signalled
                    self.stop_signal = signal.SIGTERM
                logger.warning("stop signal: saved last.pth at iteration %d; rerun the same command to resume",
                               self.iteration)
                return


def _describe(changes: dict[str, tuple]) -> str:
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())


def train(cfg: Any, run_dir: Path | None = None, dist_info: DistInfo | None = None, resume: bool = True,
          apply_changes: bool = False) -> Trainer:
    """Train as the config says; resume from ``run_dir/checkpoints/last.pth`` when it exists and ``resume``.

    A new run writes ``config.yaml``; a resumed one checks its config against the checkpoint's (see
    :meth:`Trainer.resume`; ``apply_changes`` lets changed keys take effect). ``run_dir`` defaults to
    ``out_dir/version_name``; ``dist_info`` to :func:`utils.distributed.init_distributed`.
    """
    from utils.distributed import init_distributed

    run_dir = Path(cfg.out_dir) / cfg.version_name if run_dir is None else Path(run_dir)
    trainer = Trainer(cfg, run_dir, init_distributed() if dist_info is None else dist_info)
    last = trainer.ckpt_dir / "last.pth"
    if resume and last.is_file():
        trainer.resume(last, apply_changes)
    elif is_main_process():
        save_config(cfg, run_dir / "config.yaml")
    trainer.fit()
    return trainer

"""The training loop: optimizer and poly schedule, AMP, checkpoints with exact resume, validation and logs.

``train(cfg)`` runs under torchrun (any number of processes) or as a plain process. Checkpoints go to
``run_dir/checkpoints/last.pth`` (atomic; resumed from automatically) and ``best.pth`` (best validation Δm proxy,
or the latest validation where no baseline exists). A run resumed from ``last.pth`` reaches the same weights as an
uninterrupted run: the data order and augmentations are a function of (seed, epoch), and the skipped part of the
interrupted epoch is replayed through the loader.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from data import build_dataloaders
from evaluation.delta_m import default_baseline, delta_m
from evaluation.evaluator import evaluate
from losses import build_loss
from models import build_model
from models.execution import compile_decoder
from utils.checkpoint import load_checkpoint, load_model_state, rng_state, save_checkpoint, set_rng_state, unwrap_model
from utils.config import config_to_dict
from utils.distributed import DistInfo, all_gather_object, all_reduce_sum, barrier, is_main_process
from utils.visualize import prediction_grid

__all__ = ["AMP_DTYPES", "build_optimizer", "poly_schedule", "Trainer", "train"]

logger = logging.getLogger(__name__)

AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW or Adam over all parameters in one group, as the official recipes do (weight decay on everything)."""
    kwargs = dict(cfg.optimizer_kwargs)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    optimizers = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
    if cfg.optimizer not in optimizers:
        raise ValueError(f"optimizer={cfg.optimizer!r} is not valid; valid: {sorted(optimizers)}")
    return optimizers[cfg.optimizer](model.parameters(), **kwargs)


def poly_schedule(optimizer: torch.optim.Optimizer, max_iter: int, power: float) -> torch.optim.lr_scheduler.LambdaLR:
    """lr · (1 − it / max_iter)^power, stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: max(0.0, 1 - it / max_iter) ** power)


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
        torch.manual_seed(self.seed)
        model = compile_decoder(build_model(cfg).to(self.device), cfg.model.compile)
        if dist_info.is_distributed:
            ids = [dist_info.local_rank] if self.device.type == "cuda" else None
            if self.device.type == "cuda":
                # BatchNorm statistics over all GPUs, as the official MTMamba++ LiteHead (SyncBatchNorm is GPU-only)
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model = model
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = poly_schedule(self.optimizer, int(cfg.max_iter), float(cfg.scheduler_kwargs.power))
        self.amp_dtype = AMP_DTYPES[cfg.get("amp")]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.loss_fn = build_loss(cfg)
        self.train_loader, self.val_loader = build_dataloaders(cfg, seed=self.seed)
        self.iteration, self.best_score = 0, -math.inf
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.writer = None
        if is_main_process():
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.run_dir / "tb"))

    # ------------------------------------------------------------------------------------------------ state
    def state(self) -> dict:
        return {"model": unwrap_model(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "iteration": self.iteration, "best_score": self.best_score, "rng": rng_state(),
                "config": config_to_dict(self.cfg)}

    def save(self, name: str) -> Path:
        """Write ``checkpoints/<name>`` atomically (rank 0)."""
        path = self.ckpt_dir / name
        if is_main_process():
            save_checkpoint(path, self.state())
        return path

    def resume(self, path: Path) -> None:
        state = load_checkpoint(path, map_location="cpu")
        load_model_state(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.best_score = int(state["iteration"]), float(state["best_score"])
        set_rng_state(state["rng"])
        logger.info("resumed from %s at iteration %d", path, self.iteration)

    # ------------------------------------------------------------------------------------------------ data
    def batches(self):
        """Endless batches in a reproducible order: epoch e uses seed + e, and a resumed run skips what was done."""
        per_epoch = len(self.train_loader)
        if per_epoch == 0:
            raise ValueError(f"the training split has fewer images than trBatch={self.cfg.trBatch}")
        epoch, skip = divmod(self.iteration, per_epoch)
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
    def step(self, batch: dict) -> dict[str, float]:
        """One optimisation step; returns the detached losses. Raises FloatingPointError on a non-finite loss."""
        self.model.train()
        image = batch["image"].to(self.device, non_blocking=True)
        targets = {t: batch[t].to(self.device, non_blocking=True) for t in self.cfg.TASKS.NAMES}
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            preds = self.model(image)
        losses = self.loss_fn({t: p.float() for t, p in preds.items()}, targets)
        bad = [t for t, v in losses.items() if not torch.isfinite(v)]
        if bad:
            path = self.save(f"nonfinite_iter{self.iteration}.pth")
            raise FloatingPointError(f"non-finite loss for {', '.join(bad)} at iteration {self.iteration}; "
                                     f"the state before this step is in {path} (last.pth is untouched)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["total"]).backward()
        if self.cfg.get("grad_clip"):
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), float(self.cfg.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        return {t: v.item() for t, v in losses.items()}

    def validate(self) -> dict[str, dict[str, float]]:
        results = evaluate(self.model, self.val_loader, self.cfg, self.device, amp_dtype=self.amp_dtype)
        baseline = default_baseline(self.cfg.train_db_name)
        score = -math.inf
        if baseline is not None:
            d = delta_m(results, baseline, proxy=True)
            score = d.value
            results["delta_m_proxy"] = {"value": d.value}
        if self.writer is not None:
            for task, metrics in results.items():
                for name, value in metrics.items():
                    self.writer.add_scalar(f"val/{task}/{name}", value, self.iteration)
            self.log_prediction_images()
        logger.info("iteration %d validation: %s", self.iteration,
                    "; ".join(f"{t} " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()) for t, m in results.items()))
        if baseline is None or score > self.best_score:
            self.best_score = max(score, self.best_score)
            self.save("best.pth")
        return results

    @torch.no_grad()
    def log_prediction_images(self) -> None:
        """TensorBoard grids (input | prediction | target) of the first validation batch, one per task."""
        batch = next(iter(self.val_loader))
        model = unwrap_model(self.model).eval()    # rank 0 only: bypass DDP and its collectives
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            preds = model(batch["image"].to(self.device))
        grids = prediction_grid(batch["image"], {t: p.float().cpu() for t, p in preds.items()}, batch,
                                self.cfg.TASKS.NAMES)
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
        """Train to ``max_iter``, or stop at iteration ``until`` (e.g. a time budget; resume later from last.pth)."""
        cfg, max_iter = self.cfg, int(self.cfg.max_iter)
        stop = max_iter if until is None else min(until, max_iter)
        log_every, val_every = int(cfg.get("log_interval", 20)), int(cfg.get("val_interval", 0) or 0)
        ckpt_every = int(cfg.get("ckpt_interval", 1000))
        bar = tqdm(total=max_iter, initial=self.iteration, desc="train", disable=not is_main_process(),
                   dynamic_ncols=True)
        batches, start = self.batches(), time.perf_counter()
        with self.stop_on_signals():
            self._loop(batches, bar, stop, max_iter, log_every, val_every, ckpt_every)
        bar.close()
        self.check_replicas()
        logger.info("trained to iteration %d of %d in %.1f s", self.iteration, max_iter, time.perf_counter() - start)
        if self.writer is not None:
            self.writer.close()

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

    def _loop(self, batches, bar, stop: int, max_iter: int, log_every: int, val_every: int, ckpt_every: int) -> None:
        while self.iteration < stop:
            losses = self.step(next(batches))
            bar.update(1)
            lr = self.optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{losses['total']:.4f}", lr=f"{lr:.2e}")
            if self.writer is not None and self.iteration % log_every == 0:
                for name, value in losses.items():
                    self.writer.add_scalar(f"train/loss_{name}", value, self.iteration)
                self.writer.add_scalar("train/lr", lr, self.iteration)
            if self.iteration % ckpt_every == 0 or self.iteration == stop:
                self.save("last.pth")
                barrier()
            if val_every and (self.iteration % val_every == 0 or self.iteration == max_iter):
                self.validate()
            if self.stop_requested():
                self.save("last.pth")
                barrier()
                logger.warning("stop signal: saved last.pth at iteration %d; rerun the same command to resume",
                               self.iteration)
                return


def train(cfg: Any, run_dir: Path | None = None, dist_info: DistInfo | None = None, resume: bool = True) -> Trainer:
    """Train as the config says; resume from ``run_dir/checkpoints/last.pth`` when it exists and ``resume``.

    ``run_dir`` defaults to ``out_dir/version_name``; ``dist_info`` to :func:`utils.distributed.init_distributed`.
    """
    from utils.distributed import init_distributed

    run_dir = Path(cfg.out_dir) / cfg.version_name if run_dir is None else Path(run_dir)
    trainer = Trainer(cfg, run_dir, init_distributed() if dist_info is None else dist_info)
    last = trainer.ckpt_dir / "last.pth"
    if resume and last.is_file():
        trainer.resume(last)
    trainer.fit()
    return trainer

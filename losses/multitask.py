"""Weighted combination of the per-task losses and its construction from a config (MODELS.md §4).

Schemes (the "loss scheme" row of the §4 training-recipe table):

* ``"sum"``: total = Σ_t w_t · L_t (MTMamba++ NYUD, PAME);
* ``"log"``: total = Σ_t w_t · log(L_t + 1e-8) (MTMamba NYUD/PASCAL, MTMamba++ PASCAL). Its gradient is
  Σ_t (w_t / (L_t + 1e-8)) · ∇L_t, i.e. every task loss is rescaled by its own current value.

A model may add an auxiliary load-balancing loss to its predictions under ``LOAD_BALANCE_KEY`` (PAME's CV² loss on
the expert gates, MODELS.md §3.2); it is added as λ_lb · L_lb under either scheme (§4).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .tasks import (IGNORE_INDEX, BalancedBCEWithLogitsLoss, BalancedCrossEntropyLoss, CrossEntropyLoss,
                    DepthL1Loss, NormalsL1Loss)

__all__ = ["LOSS_SCHEMES", "LOG_EPS", "LOAD_BALANCE_KEY", "MultiTaskLoss", "build_task_loss", "build_loss"]

LOSS_SCHEMES = ("sum", "log")
LOG_EPS = 1e-8
LOAD_BALANCE_KEY = "load_balance"   # reserved prediction key: a model's load-balancing loss (not a task)


class MultiTaskLoss(nn.Module):
    """Combine one loss per task into a single training objective.

    Args:
        task_losses: {task: loss module}; each is called as ``loss(preds[task], batch[task])``.
        weights: {task: w_t}, one finite non-negative weight for every task of ``task_losses``
            (extra entries are ignored).
        scheme: ``"sum"`` (Σ w_t L_t) or ``"log"`` (Σ w_t log(L_t + 1e-8)).
        lb_weight: λ_lb of a load-balancing loss the model returns under ``LOAD_BALANCE_KEY``.

    ``forward(preds, batch)`` returns ``{task: L_t (unweighted, with graph), ..., "total": combined}``, plus
    ``LOAD_BALANCE_KEY: L_lb`` (unweighted) when ``preds`` has it; total += λ_lb · L_lb.
    Other keys of ``preds``/``batch`` that are not tasks (``image``, ``meta``) are ignored.
    """

    def __init__(self, task_losses: Mapping[str, nn.Module], weights: Mapping[str, float],
                 scheme: str = "sum", lb_weight: float = 0.0) -> None:
        super().__init__()
        if scheme not in LOSS_SCHEMES:
            raise ValueError(f"loss scheme {scheme!r} is not supported; valid choices: {list(LOSS_SCHEMES)}")
        if not task_losses:
            raise ValueError("MultiTaskLoss needs at least one task loss")
        reserved = {"total", LOAD_BALANCE_KEY} & set(task_losses)
        if reserved:
            raise ValueError(f"{sorted(reserved)} are reserved loss keys and cannot name a task")
        if not math.isfinite(lb_weight) or lb_weight < 0:
            raise ValueError(f"load-balancing weight must be finite and >= 0, got {lb_weight!r}")
        self.lb_weight = float(lb_weight)
        missing = [t for t in task_losses if t not in weights]
        if missing:
            raise ValueError(f"no loss weight for task(s) {missing}; given weights: {sorted(weights)}")
        self.weights: dict[str, float] = {}
        for t in task_losses:
            w = float(weights[t])
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"loss weight of task {t!r} must be finite and >= 0, got {weights[t]!r}")
            self.weights[t] = w
        self.task_losses = nn.ModuleDict(dict(task_losses))
        self.scheme = scheme

    @property
    def tasks(self) -> list[str]:
        return list(self.task_losses.keys())

    def forward(self, preds: Mapping[str, Tensor], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """preds: {task: (B, n_t, H, W)}; batch: the collated batch holding {task: target}."""
        out: dict[str, Tensor] = {}
        terms = []
        for task, loss_fn in self.task_losses.items():
            if task not in preds:
                raise KeyError(f"prediction for task {task!r} is missing (got {sorted(preds)})")
            if task not in batch:
                raise KeyError(f"target for task {task!r} is missing from the batch (got {sorted(batch)})")
            loss_t = loss_fn(preds[task], batch[task])
            out[task] = loss_t
            if self.scheme == "log":
                terms.append(self.weights[task] * torch.log(loss_t + LOG_EPS))
            else:
                terms.append(self.weights[task] * loss_t)
        if LOAD_BALANCE_KEY in preds:
            out[LOAD_BALANCE_KEY] = preds[LOAD_BALANCE_KEY]
            terms.append(self.lb_weight * preds[LOAD_BALANCE_KEY])
        out["total"] = torch.stack(terms).sum()
        return out

    def extra_repr(self) -> str:
        return f"scheme={self.scheme!r}, weights={self.weights}, lb_weight={self.lb_weight}"


def _get(obj: Any, key: str, where: str) -> Any:
    if isinstance(obj, Mapping) and key in obj:
        return obj[key]
    raise ValueError(f"config key {where}{key} is required by the loss")


def build_task_loss(task: str, loss_kwargs: Mapping[str, Any]) -> nn.Module:
    """The §4 loss module of one task; ``loss_kwargs`` is ``cfg.loss_kwargs`` (``edge_w`` for edges,
    ``depth_ignore_invalid`` for depth)."""
    if task in ("semseg", "human_parts"):
        return CrossEntropyLoss()
    if task == "sal":
        return BalancedCrossEntropyLoss()
    if task == "edge":
        return BalancedBCEWithLogitsLoss(pos_weight=_get(loss_kwargs, "edge_w", "loss_kwargs."))
    if task == "normals":
        return NormalsL1Loss()
    if task == "depth":   # official: only 255 is ignored; depth_ignore_invalid also masks GT <= 0 (Cityscapes)
        return DepthL1Loss(ignore_values=(IGNORE_INDEX,),
                           ignore_nonpositive=bool(loss_kwargs.get("depth_ignore_invalid", False)))
    raise ValueError(f"no loss defined for task {task!r}; valid tasks: "
                     "['semseg', 'human_parts', 'sal', 'edge', 'normals', 'depth']")


def build_loss(cfg: Mapping[str, Any]) -> MultiTaskLoss:
    """Build the multi-task loss from a loaded config (``utils.config.load_config``).

    Reads ``cfg.TASKS.NAMES``, ``cfg.loss_kwargs.loss_scheme`` (``"sum"`` | ``"log"``),
    ``cfg.loss_kwargs.loss_weights`` ({task: w}; entries for tasks not trained are ignored) and, when edge is a
    task, ``cfg.loss_kwargs.edge_w``; ``cfg.model.pame.lb_weight`` (default 0) weights a load-balancing loss the
    model returns. Raises ``ValueError`` naming the offending key/task/scheme.
    """
    tasks = list(_get(_get(cfg, "TASKS", ""), "NAMES", "TASKS."))
    loss_kwargs = _get(cfg, "loss_kwargs", "")
    scheme = _get(loss_kwargs, "loss_scheme", "loss_kwargs.")
    if scheme not in LOSS_SCHEMES:
        raise ValueError(f"loss_kwargs.loss_scheme={scheme!r} is not supported; valid choices: {list(LOSS_SCHEMES)}")
    weights = _get(loss_kwargs, "loss_weights", "loss_kwargs.")
    missing = [t for t in tasks if t not in weights]
    if missing:
        raise ValueError(f"loss_kwargs.loss_weights has no weight for task(s) {missing}")
    task_losses = {t: build_task_loss(t, loss_kwargs) for t in tasks}
    lb_weight = ((cfg.get("model") or {}).get("pame") or {}).get("lb_weight", 0.0)   # model.pame.lb_weight
    return MultiTaskLoss(task_losses, {t: weights[t] for t in tasks}, scheme, lb_weight)

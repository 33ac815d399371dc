"""Task losses and their multi-task combination (MODELS.md §4)."""
from .multitask import LOG_EPS, LOSS_SCHEMES, MultiTaskLoss, build_loss, build_task_loss
from .tasks import (IGNORE_INDEX, BalancedBCEWithLogitsLoss, BalancedCrossEntropyLoss, CrossEntropyLoss,
                    DepthL1Loss, NormalsL1Loss)

__all__ = [
    "IGNORE_INDEX",
    "CrossEntropyLoss",
    "BalancedCrossEntropyLoss",
    "BalancedBCEWithLogitsLoss",
    "NormalsL1Loss",
    "DepthL1Loss",
    "LOSS_SCHEMES",
    "LOG_EPS",
    "MultiTaskLoss",
    "build_task_loss",
    "build_loss",
]

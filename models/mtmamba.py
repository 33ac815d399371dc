"""MTMamba: "MTMamba: Enhancing Multi-Task Dense Scene Understanding by Mamba-Based Decoders"
(Lin et al., ECCV 2024, https://arxiv.org/abs/2407.02228).

What this paper adds to the shared skeleton: a decoder stage made of task-specific STM blocks
followed by one shared CTM block (Fig. 1), and the stochastic-depth schedule of the official code.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .blocks import CTM, STM
from .decoder import ThreeStageDecoder
from .encoders import build_encoder
from .heads import MultiTaskModel, TaskHead
from .registry import register_model

__all__ = ["MTMambaStage", "build_mtmamba"]


class MTMambaStage(nn.Module):
    """``n_stm`` STM blocks per task, then one CTM block shared by all tasks.

    Args:
        dim: stage width C.
        tasks: task names.
        drop_path: one rate per block, in order STM_1..STM_n then CTM.
        n_stm: STM blocks per task.
        ctm: whether the stage ends with a CTM block.
        ssm_kwargs: passed to every SS2D.
    """

    def __init__(self, dim: int, tasks: Sequence[str], drop_path: Sequence[float], n_stm: int = 2,
                 ctm: bool = True, **ssm_kwargs) -> None:
        super().__init__()
        if len(drop_path) != n_stm + int(ctm):
            raise ValueError(f"need {n_stm + int(ctm)} drop-path rates, got {len(drop_path)}")
        self.stm = nn.ModuleDict({
            t: nn.Sequential(*(STM(dim, drop_path[i], **ssm_kwargs) for i in range(n_stm))) for t in tasks})
        self.ctm = CTM(dim, tasks, drop_path[-1], **ssm_kwargs) if ctm else None

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = {t: blocks(x[t]) for t, blocks in self.stm.items()}
        return self.ctm(x) if self.ctm is not None else x


def drop_path_schedule(rate: float, n_stages: int, blocks_per_stage: int) -> list[list[float]]:
    """Official schedule: ``linspace(rate, 0, stages·blocks)``, largest at the deepest stage (MODELS.md §1.5)."""
    rates = torch.linspace(rate, 0, n_stages * blocks_per_stage, device="cpu").tolist()
    return [rates[s * blocks_per_stage:(s + 1) * blocks_per_stage] for s in range(n_stages)]


@register_model("mtmamba")
def build_mtmamba(cfg) -> MultiTaskModel:
    m = cfg.model
    encoder = build_encoder(m.backbone, img_size=tuple(cfg.TRAIN.SCALE), pretrained=m.pretrained,
                            pretrained_path=m.pretrained_path, pad_mode=m.swin_pad_mode,
                            drop_path_rate=m.encoder_drop_path_rate, **(m.get("backbone_kwargs") or {}))
    tasks = cfg.TASKS.NAMES
    widths = encoder.channels[::-1][1:]                          # 768, 384, 192 for Swin-L
    ssm = dict(d_state=m.d_state, ssm_ratio=m.ssm_ratio, dt_rank=m.dt_rank, scan_backend=m.scan_backend)
    rates = drop_path_schedule(m.drop_path_rate, len(widths), m.stm_blocks + int(m.ctm))
    stages = [MTMambaStage(c, tasks, r, n_stm=m.stm_blocks, ctm=m.ctm, **ssm) for c, r in zip(widths, rates)]
    decoder = ThreeStageDecoder(encoder.channels, tasks, stages)
    heads = {t: TaskHead(decoder.out_channels, cfg.TASKS.NUM_OUTPUT[t]) for t in tasks}
    return MultiTaskModel(encoder, decoder, heads)

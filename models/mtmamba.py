"""MTMamba: "MTMamba: Enhancing Multi-Task Dense Scene Understanding by Mamba-Based Decoders"
(Lin et al., ECCV 2024, https://arxiv.org/abs/2407.02228).

What this paper adds to the shared skeleton: a decoder stage made of task-specific STM blocks
followed by one shared CTM block (Fig. 1), the stochastic-depth schedule of the official code, and
the switches of the paper's ablations (Tables 2, 5, 6): the number of task blocks, STM or Swin task
blocks, with or without CTM, the CTM fusion, and the encoder size.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .attention import swin_block
from .blocks import CTM, STM
from .decoder import INPUT_MULTIPLE, ThreeStageDecoder
from .encoders import build_encoder
from .heads import MultiTaskModel, TaskHead
from .pretrained import uses_timm_download
from .registry import register_model
from .task_batched import grouped_ctm, grouped_stm

__all__ = ["TASK_BLOCKS", "MTMambaStage", "build_mtmamba", "encoder_from_config", "assemble_model"]

TASK_BLOCKS = ("mamba", "swin")


class MTMambaStage(nn.Module):
    """``n_blocks`` task-specific blocks per task, then optionally one CTM block shared by all tasks.

    Args:
        dim: stage width C.
        tasks: task names.
        drop_path: one rate per block, in order: task blocks 1..n, then the CTM.
        n_blocks: task-specific blocks per task.
        block: "mamba" (STM, the paper's model) or "swin" (the "2×Swin" rows of Table 2).
        ctm: whether the stage ends with a CTM block.
        ctm_fusion: how the CTM mixes its shared and task branches (Table 5), see :class:`CTM`.
        resolution: (H, W) of the stage's maps at the configured input size (Swin blocks' window clamping).
        ssm_kwargs: passed to every SS2D.
    """

    def __init__(self, dim: int, tasks: Sequence[str], drop_path: Sequence[float], n_blocks: int = 2,
                 block: str = "mamba", ctm: bool = True, ctm_fusion: str = "adaptive",
                 resolution: tuple[int, int] | None = None, **ssm_kwargs) -> None:
        super().__init__()
        if block not in TASK_BLOCKS:
            raise ValueError(f"task block {block!r} is not valid; valid: {list(TASK_BLOCKS)}")
        if len(drop_path) != n_blocks + int(ctm):
            raise ValueError(f"need {n_blocks + int(ctm)} drop-path rates, got {len(drop_path)}")

        def task_block(i: int) -> nn.Module:
            if block == "mamba":
                return STM(dim, drop_path[i], **ssm_kwargs)
            return swin_block(dim, resolution, shift=i % 2 == 1, drop_path=drop_path[i])

        self.task_blocks = nn.ModuleDict({t: nn.Sequential(*(task_block(i) for i in range(n_blocks))) for t in tasks})
        self.ctm = CTM(dim, tasks, drop_path[-1], fusion=ctm_fusion, **ssm_kwargs) if ctm else None
        self.exec_mode = "reference"   # models.execution: per-task loops | "fast": task-batched blocks
        plain_ss2d = ssm_kwargs.get("mixer", "ss2d") == "ss2d" and ssm_kwargs.get("gate_mixer", "linear") == "linear"
        self._grouped_blocks = block == "mamba" and plain_ss2d
        self._grouped_ctm = ctm and ctm_fusion == "adaptive" and plain_ss2d

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.exec_mode == "fast" and self._grouped_blocks:
            return self._forward_grouped(x)
        x = {t: blocks(x[t]) for t, blocks in self.task_blocks.items()}
        return self.ctm(x) if self.ctm is not None else x

    def _forward_grouped(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The same function with the T task blocks of each depth as one grouped computation (models.task_batched)."""
        tasks = list(self.task_blocks)
        z = torch.stack([x[t] for t in tasks])                                   # (T, B, H, W, C)
        for i in range(len(self.task_blocks[tasks[0]])):
            z = grouped_stm([self.task_blocks[t][i] for t in tasks], z)
        if self._grouped_ctm:
            return dict(zip(tasks, grouped_ctm(self.ctm, z).unbind(0)))
        x = dict(zip(tasks, z.unbind(0)))
        return self.ctm(x) if self.ctm is not None else x


def drop_path_schedule(rate: float, n_stages: int, blocks_per_stage: int) -> list[list[float]]:
    """Official schedule: ``linspace(rate, 0, stages·blocks)``, largest at the deepest stage (MODELS.md §1.5)."""
    rates = torch.linspace(rate, 0, n_stages * blocks_per_stage, device="cpu").tolist()
    return [rates[s * blocks_per_stage:(s + 1) * blocks_per_stage] for s in range(n_stages)]


def encoder_from_config(cfg) -> nn.Module:
    """The configured Swin encoder (MODELS.md §0.1), built for TRAIN.SCALE; its weights follow the rule of
    :mod:`models.pretrained`."""
    m = cfg.model
    train_size, test_size = tuple(cfg.TRAIN.SCALE), tuple(cfg.TEST.SCALE)
    return build_encoder(m.backbone, img_size=train_size, pretrained=uses_timm_download(cfg),
                         pretrained_path=m.pretrained_path, pad_mode=m.swin_pad_mode,
                         drop_path_rate=m.encoder_drop_path_rate, dynamic_img_size=test_size != train_size,
                         **(m.get("backbone_kwargs") or {}))


def assemble_model(cfg, encoder: nn.Module, stages: Sequence[nn.Module]) -> MultiTaskModel:
    """The encoder, the three-stage decoder around a variant's ``stages`` and one head per task (Eqs. 26-29)."""
    decoder = ThreeStageDecoder(encoder.channels, cfg.TASKS.NAMES, stages)
    heads = {t: TaskHead(decoder.out_channels, cfg.TASKS.NUM_OUTPUT[t]) for t in cfg.TASKS.NAMES}
    return MultiTaskModel(encoder, decoder, heads)


@register_model("mtmamba", input_multiple=INPUT_MULTIPLE)
def build_mtmamba(cfg) -> MultiTaskModel:
    m = cfg.model
    encoder = encoder_from_config(cfg)
    tasks = cfg.TASKS.NAMES
    widths = encoder.channels[::-1][1:]                          # 768, 384, 192 for Swin-L
    resolutions = [(cfg.TRAIN.SCALE[0] // s, cfg.TRAIN.SCALE[1] // s) for s in encoder.strides[::-1][1:]]
    ssm = dict(d_state=m.d_state, ssm_ratio=m.ssm_ratio, dt_rank=m.dt_rank, scan_backend=m.scan_backend,
               mixer=m.mfe, gate_mixer=m.gate, wmsa_heads=m.wmsa_heads)
    rates = drop_path_schedule(m.drop_path_rate, len(widths), m.stm_blocks + int(m.ctm))
    stages = [MTMambaStage(c, tasks, r, n_blocks=m.stm_blocks, block=m.block, ctm=m.ctm, ctm_fusion=m.ctm_fusion,
                           resolution=res, **ssm) for c, r, res in zip(widths, rates, resolutions)]
    return assemble_model(cfg, encoder, stages)

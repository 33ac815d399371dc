#!/usr/bin/env python
"""Train or evaluate a multi-task dense-prediction model.

    torchrun --nproc_per_node 8 main.py --run_mode train --config_exp configs/mtmamba_nyud.yml
    torchrun --nproc_per_node 1 main.py --run_mode infer --config_exp configs/mtmamba_nyud.yml \\
        --trained_model runs/mtmamba_nyud/checkpoints/best.pth
    python main.py --run_mode train --config_exp configs/demo_nyud.yml --opts max_iter=100 db_root=/data

Runs write to ``out_dir/version_name/`` (config.yaml, log.txt, tb/, checkpoints/, metrics.json, metrics.md).
Training resumes from ``checkpoints/last.pth`` when it exists, unless ``--no_resume``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from utils.config import load_config, save_config
from utils.distributed import cleanup, init_distributed
from utils.logger import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_mode", required=True, choices=["train", "infer"])
    parser.add_argument("--config_exp", required=True, help="experiment YAML")
    parser.add_argument("--trained_model", help="checkpoint to evaluate (infer)")
    parser.add_argument("--opts", nargs="*", default=[], help="dotted overrides, e.g. max_iter=1000 db_root=/data")
    parser.add_argument("--seed", type=int, help="overrides the config's seed")
    parser.add_argument("--no_resume", action="store_true", help="start from scratch even if last.pth exists")
    args = parser.parse_args(argv)
    if args.run_mode == "infer" and not args.trained_model:
        parser.error("--run_mode infer needs --trained_model CHECKPOINT")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config_exp, [*args.opts, *([f"seed={args.seed}"] if args.seed is not None else [])])
    info = init_distributed()
    run_dir = Path(cfg.out_dir) / cfg.version_name
    setup_logging(run_dir, info.rank)
    if info.is_main:
        save_config(cfg, run_dir / "config.yaml")
    try:
        if args.run_mode == "train":
            from utils.trainer import train
            train(cfg, run_dir, info, resume=not args.no_resume)
        else:
            from evaluation.evaluator import infer
            infer(cfg, args.trained_model, run_dir, info.device)
    finally:
        cleanup()


if __name__ == "__main__":
    main()

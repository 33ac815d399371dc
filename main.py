#!/usr/bin/env python
"""Train, evaluate or predict with a multi-task dense-prediction model.

    torchrun --nproc_per_node 8 main.py --run_mode train --config_exp configs/mtmamba_nyud.yml
    torchrun --nproc_per_node 1 main.py --run_mode infer --config_exp configs/mtmamba_nyud.yml \\
        --trained_model runs/mtmamba_nyud/checkpoints/best.pth
    python main.py --run_mode train --config_exp configs/demo_nyud.yml --opts max_iter=100 db_root=/data
    python main.py --run_mode predict --config_exp configs/mtmamba_nyud.yml --trained_model CKPT \\
        --inputs photos/ extra.jpg --out preds/

Runs write to ``out_dir/version_name/`` (config.yaml, log.txt, tb/, checkpoints/, metrics.json, metrics.md);
predict writes to ``--out`` (maps per task, panels/, predictions.json, log.txt; see evaluation/predict.py).
Training resumes from ``checkpoints/last.pth`` when it exists, unless ``--no_resume``. Exit status: 0 on success,
1 on an error (one line names the culprit; the traceback is in log.txt, or printed with ``--debug``), 128 + the
signal number (143 SIGTERM, 130 SIGINT) when a stop signal ended training after saving last.pth.
"""
from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path

from utils.config import load_config
from utils.distributed import cleanup, init_distributed
from utils.logger import log_fatal, setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_mode", required=True, choices=["train", "infer", "predict"])
    parser.add_argument("--config_exp", required=True, help="experiment YAML")
    parser.add_argument("--trained_model", help="checkpoint to evaluate (infer) or predict with (predict)")
    parser.add_argument("--inputs", nargs="+", default=[], metavar="PATH",
                        help="predict: image files, folders and glob patterns (PNG, JPEG, BMP, WebP)")
    parser.add_argument("--events", nargs="+", default=[], metavar="PATH",
                        help="predict, image + event models: event files named like the images (.npy voxel grid, "
                             ".npz / .h5 with x, y, t, p), folders or glob patterns")
    parser.add_argument("--out", help="predict: output folder")
    parser.add_argument("--batch", type=int, default=1, help="predict: images per forward pass")
    parser.add_argument("--save_raw", action="store_true", help="predict: also write the network outputs as .npy")
    parser.add_argument("--opts", nargs="*", default=[], help="dotted overrides, e.g. max_iter=1000 db_root=/data")
    parser.add_argument("--seed", type=int, help="overrides the config's seed")
    parser.add_argument("--no_resume", action="store_true", help="start from scratch even if last.pth exists")
    parser.add_argument("--apply_config_changes", action="store_true",
                        help="resume although the config differs from the checkpoint's; the new values take effect")
    parser.add_argument("--debug", action="store_true", help="print the full traceback of an error")
    args = parser.parse_args(argv)
    if args.run_mode in ("infer", "predict") and not args.trained_model:
        parser.error(f"--run_mode {args.run_mode} needs --trained_model CHECKPOINT")
    if args.run_mode == "predict" and not (args.inputs and args.out):
        parser.error("--run_mode predict needs --inputs PATH [PATH ...] and --out DIR")
    if args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}")
    return args


def run(args: argparse.Namespace, run_dir_box: list[Path]) -> int:
    cfg = load_config(args.config_exp, [*args.opts, *([f"seed={args.seed}"] if args.seed is not None else [])])
    info = init_distributed(timeout=timedelta(seconds=float(cfg.dist_timeout)))
    run_dir = Path(args.out) if args.run_mode == "predict" else Path(cfg.out_dir) / cfg.version_name
    run_dir_box.append(run_dir)
    setup_logging(run_dir, info.rank)
    try:
        if args.run_mode == "train":
            from utils.trainer import train
            trainer = train(cfg, run_dir, info, resume=not args.no_resume, apply_changes=args.apply_config_changes)
            return 128 + trainer.stop_signal if trainer.stop_signal else 0
        if args.run_mode == "predict":
            from evaluation.predict import predict
            predict(cfg, args.trained_model, args.inputs, run_dir, events=args.events, batch_size=args.batch,
                    save_raw=args.save_raw, device=info.device)
            return 0
        from evaluation.evaluator import infer
        infer(cfg, args.trained_model, run_dir, info.device)
        return 0
    finally:
        cleanup()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (see the module docstring)."""
    args = parse_args(argv)
    run_dir_box: list[Path] = []
    try:
        return run(args, run_dir_box)
    except Exception as e:
        if args.debug:
            raise
        where = f"{run_dir_box[0] / 'log.txt'}, or rerun with --debug" if run_dir_box else "rerun with --debug"
        log_fatal(e, f"{type(e).__name__}: {e} (traceback: {where})")
        return 1


if __name__ == "__main__":
    sys.exit(main())

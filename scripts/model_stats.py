#!/usr/bin/env python
"""Print a config's exact parameter count and its FLOPs under the paper's convention.

    python scripts/model_stats.py --config_exp configs/mtmamba_nyud.yml
    python scripts/model_stats.py --config_exp configs/mtmamba_nyud.yml --params-only

Output lines: ``params: N`` (exact integer), ``params_M: X`` (millions, truncated to 2 decimals as
the paper prints them), ``flops: N`` and ``gflops: X`` (truncated to 2 decimals) at batch 1 and the
config's TRAIN.SCALE. The model is built with random weights (no download); the FLOP count traces one
forward pass on the CPU, with the scans counted from their shapes. ``--params-only`` builds on the meta
device and takes about a second.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models import build_model  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.flops import count_flops, count_params, truncate  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_exp", required=True, help="experiment YAML")
    parser.add_argument("--opts", nargs="*", default=[], help="dotted overrides, e.g. model.stm_blocks=1")
    parser.add_argument("--params-only", action="store_true", help="skip the FLOP count")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="input size for the FLOP count (default: TRAIN.SCALE)")
    args = parser.parse_args(argv)

    cfg = load_config(args.config_exp, [*args.opts, "model.pretrained=false", "model.pretrained_path=null"])
    # parameters need no storage: --params-only builds on the meta device, in about a second
    with torch.device("meta") if args.params_only else contextlib.nullcontext():
        model = build_model(cfg)
    stats = {"params": count_params(model)}
    print(f"params: {stats['params']}")
    print(f"params_M: {truncate(stats['params'] / 1e6):.2f}")
    if not args.params_only:
        size = args.input_size or cfg.TRAIN.SCALE
        stats["flops"] = count_flops(model, size)
        print(f"flops: {stats['flops']}")
        print(f"gflops: {truncate(stats['flops'] / 1e9):.2f}")
    return stats


if __name__ == "__main__":
    main()

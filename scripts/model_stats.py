#!/usr/bin/env python
"""Print a config's exact parameter count and its FLOPs under the paper's convention.

    python scripts/model_stats.py --config_exp configs/mtmamba_nyud.yml
    python scripts/model_stats.py --config_exp configs/mtmamba_nyud.yml --params-only
    python scripts/model_stats.py --config_exp configs/ablations/table2_single_task_*.yml   # a row of several models

Output lines per config: ``params: N`` (exact integer), ``params_M: X`` (millions, truncated to 2 decimals as
the paper prints them), ``flops: N``, ``gflops: X`` (truncated to 2 decimals, as the MTMamba paper prints them) and
``gflops_rounded: X`` (the same count rounded, the form quoted for MTMamba++: 523.91 / 609.57), at batch 1 and the
config's TRAIN.SCALE. With several configs (the paper's single-task row is four models), each block is headed by
``== FILE ==`` and the closing ``sum params_M:`` / ``sum gflops:`` lines add the truncated per-model values,
as the paper does. The models are built with random weights (no download); the FLOP count traces one forward
pass on the CPU, with the scans counted from their shapes. ``--params-only`` builds on the meta device.
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


def model_stats(config: str, opts: list[str], params_only: bool = False,
                input_size: tuple[int, int] | None = None) -> dict[str, int]:
    """``{"params": N}`` and, unless ``params_only``, ``"flops"`` for one config (random weights)."""
    cfg = load_config(config, [*opts, "model.pretrained=false", "model.pretrained_path=null"])
    # parameters need no storage: --params-only builds on the meta device, in about a second
    with torch.device("meta") if params_only else contextlib.nullcontext():
        model = build_model(cfg)
    stats = {"params": count_params(model)}
    if not params_only:
        stats["flops"] = count_flops(model, input_size or cfg.TRAIN.SCALE)
    return stats


def main(argv: list[str] | None = None) -> list[dict[str, int]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_exp", required=True, nargs="+", help="experiment YAML(s)")
    parser.add_argument("--opts", nargs="*", default=[], help="dotted overrides, e.g. model.stm_blocks=1")
    parser.add_argument("--params-only", action="store_true", help="skip the FLOP count")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="input size for the FLOP count (default: TRAIN.SCALE)")
    args = parser.parse_args(argv)

    results = []
    for config in args.config_exp:
        if len(args.config_exp) > 1:
            print(f"== {config} ==")
        stats = model_stats(config, args.opts, args.params_only, args.input_size)
        print(f"params: {stats['params']}")
        print(f"params_M: {truncate(stats['params'] / 1e6):.2f}")
        if "flops" in stats:
            print(f"flops: {stats['flops']}")
            print(f"gflops: {truncate(stats['flops'] / 1e9):.2f}")
            print(f"gflops_rounded: {stats['flops'] / 1e9:.2f}")
        results.append(stats)
    if len(results) > 1:
        print(f"sum params_M: {sum(truncate(r['params'] / 1e6) for r in results):.2f}")
        if not args.params_only:
            print(f"sum gflops: {sum(truncate(r['flops'] / 1e9) for r in results):.2f}")
    return results


if __name__ == "__main__":
    main()

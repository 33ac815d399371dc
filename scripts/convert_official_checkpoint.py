#!/usr/bin/env python
"""Convert a released MTMamba / MTMamba++ checkpoint to our format, or one of ours to the official format.

    python scripts/convert_official_checkpoint.py mtmamba_plus_nyud.pth.tar mtmamba_plus_nyud.pth
    python scripts/convert_official_checkpoint.py mtmamba_cityscapes.pth.tar mtmamba_cityscapes.pth
    python scripts/convert_official_checkpoint.py --to-official runs/mtmamba_nyud/checkpoints/best.pth \\
        mtmamba_nyud_ours.pth.tar

Official -> ours: the output is ``{"model": our state dict, "swin_pad_mode": "mmseg", "converted_from": IN}``;
``main.py --run_mode infer --trained_model OUT`` reads the recorded pad mode and builds the encoder with mmseg's
window order, as it does for the official file itself. Ours -> official (``--to-official``): the output is
``{'model': {'module.<key>': tensor}}`` in the official key order, which the official code loads strictly.

The model the keys are checked against is built on the meta device (no memory, no weights) from ``--config_exp``,
by default ``configs/<model>_<dataset>.yml``: the model from the decoder keys, the dataset from the tasks.
Every key and shape is checked; any missing, unmapped or mismatched key is an error that lists them.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from models import build_model  # noqa: E402
from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from utils.config import DATASET_TASKS, load_config  # noqa: E402
from utils.official import (  # noqa: E402
    PAD_MODE_KEY,
    is_official_checkpoint,
    official_model_name,
    official_tasks,
    official_to_ours,
    ours_to_official,
)

# dataset -> the suffix of its config files (configs/<model>_<suffix>.yml)
CONFIG_SUFFIX = {"NYUD": "nyud", "PASCALContext": "pascal", "Cityscapes": "cityscapes"}


def default_config(model_name: str, tasks: list[str]) -> Path:
    """``configs/<model>_<dataset>.yml`` for the dataset whose task set is ``tasks``."""
    datasets = [d for d, t in DATASET_TASKS.items() if set(t) == set(tasks)]
    if not datasets:
        raise CheckpointError(f"no dataset has exactly the tasks {tasks}; pass --config_exp")
    return REPO / "configs" / f"{model_name}_{CONFIG_SUFFIX[datasets[0]]}.yml"


def meta_model(config: Path, opts: list[str]) -> torch.nn.Module:
    """The model of ``config`` on the meta device (shapes only); the Swin window order does not change keys."""
    cfg = load_config(config, ["model.pretrained=false", "model.pretrained_path=null", *opts])
    with torch.device("meta"):
        return build_model(cfg)


def convert(src: Path, dst: Path, to_official: bool, config: Path | None = None, opts: list[str] = ()) -> Path:
    """Convert the checkpoint file ``src`` and write ``dst``; returns the config used."""
    checkpoint = load_checkpoint(src)
    if to_official:
        state = checkpoint.get("model", checkpoint)
        if is_official_checkpoint(checkpoint):
            raise CheckpointError(f"{src} is already in the official format")
        name = "mtmamba_plus" if any(k.startswith("decoder.stages.0.sctm.") for k in state) else "mtmamba"
        tasks = [m.group(1) for k in state if (m := re.fullmatch(r"heads\.(\w+)\.project\.weight", k))]
        config = config or default_config(name, tasks)
        save_checkpoint(dst, ours_to_official(state, meta_model(config, list(opts))))
    else:
        if not is_official_checkpoint(checkpoint):
            raise CheckpointError(f"{src} is not an official MTMamba/MTMamba++ checkpoint ({{'model': ...}} with "
                                  "module.backbone.* keys); for our own checkpoints use --to-official")
        config = config or default_config(official_model_name(checkpoint), official_tasks(checkpoint))
        state = official_to_ours(checkpoint, meta_model(config, list(opts)))
        save_checkpoint(dst, {"model": state, PAD_MODE_KEY: "mmseg", "converted_from": str(src)})
    return config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="checkpoint to convert (official format, or ours with --to-official)")
    parser.add_argument("dst", type=Path, help="output file")
    parser.add_argument("--to-official", "--reverse", dest="to_official", action="store_true",
                        help="convert one of our checkpoints to the official format")
    parser.add_argument("--config_exp", type=Path, help="config of the model (default: found from the checkpoint)")
    parser.add_argument("--opts", nargs="*", default=[], help="dotted overrides of the config")
    args = parser.parse_args(argv)
    config = convert(args.src, args.dst, args.to_official, args.config_exp, args.opts)
    direction = "ours -> official" if args.to_official else "official -> ours"
    print(f"{args.src} -> {args.dst} ({direction}, model of {config})")


if __name__ == "__main__":
    main()

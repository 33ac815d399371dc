#!/usr/bin/env python
"""Convert a released MTMamba / MTMamba++ / PAMM / MambaSeg checkpoint to our format, or one of ours to the
official format.

    python scripts/convert_official_checkpoint.py mtmamba_plus_nyud.pth.tar mtmamba_plus_nyud.pth
    python scripts/convert_official_checkpoint.py mtmamba_cityscapes.pth.tar mtmamba_cityscapes.pth
    python scripts/convert_official_checkpoint.py --to-official runs/mtmamba_nyud/checkpoints/best.pth \\
        mtmamba_nyud_ours.pth.tar
    python scripts/convert_official_checkpoint.py PAME_pascal.pth.tar pame_pascal.pth      # PAMM (utils/official_pamm)

Official -> ours: the output is ``{"model": our state dict, "swin_pad_mode": "mmseg", "converted_from": IN}``;
``main.py --run_mode infer --trained_model OUT`` reads the recorded pad mode and builds the encoder with mmseg's
window order, as it does for the official file itself. Ours -> official (``--to-official``): the output is
``{'model': {'module.<key>': tensor}}`` in the official key order, which the official code loads strictly.
MambaSeg (``{'epoch': e, 'state_dict': sd}``, official key names): official -> ours gives
``{"model": state dict, "epoch": e, "converted_from": IN}``; ``--to-official`` writes ``{'epoch': e, 'state_dict': sd}``
with the keys in the official order (:mod:`utils.official_mambaseg`).

The model the keys are checked against is built on the meta device (no memory, no weights) from ``--config_exp``;
by default from the config a checkpoint of ours stores, and for an official file from
``configs/<model>_<dataset>.yml``: the model from the decoder keys, the dataset from the tasks (MambaSeg:
from the number of classes).
Every key and shape is checked; any missing, unmapped or mismatched key is an error that lists them.

PAMM (the official trainer's ``{'optimizer', 'scheduler', 'model', 'epoch', 'iter_count'}`` file, see
:mod:`utils.official_pamm`): the default config is ``configs/ablations/pame_code_faithful{,_pascal}.yml``; official ->
ours also takes the released switches and widths from the file (as ``infer`` does) and drops the discarded
local-conv MoE; ours -> official writes ``{'model': ...}`` with that MoE as zeros and without the priors.
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
from utils import official_mambaseg  # noqa: E402
from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from utils import official_pamm  # noqa: E402
from utils.config import DATASET_TASKS, config_from_dict, load_config  # noqa: E402
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
# dataset -> the config of the released PAMM model
PAMM_CONFIGS = {"NYUD": "ablations/pame_code_faithful.yml", "PASCALContext": "ablations/pame_code_faithful_pascal.yml"}


def default_config(model_name: str, tasks: list[str]) -> Path:
    """``configs/<model>_<dataset>.yml`` (PAMM: the released model's config) of the dataset with the tasks ``tasks``."""
    datasets = [d for d, t in DATASET_TASKS.items() if set(t) == set(tasks)]
    if not datasets:
        raise CheckpointError(f"no dataset has exactly the tasks {tasks}; pass --config_exp")
    if model_name == "pame_vit":
        return REPO / "configs" / PAMM_CONFIGS[datasets[0]]
    return REPO / "configs" / f"{model_name}_{CONFIG_SUFFIX[datasets[0]]}.yml"


def meta_model(config: Path | dict, opts: list[str]) -> torch.nn.Module:
    """The model of ``config`` (a YAML file, or the config a checkpoint stores) on the meta device (shapes only);
    the Swin window order does not change keys."""
    opts = ["model.pretrained=false", "model.pretrained_path=null", *opts]
    cfg = config_from_dict(config, opts, "stored in the checkpoint") if isinstance(config, dict) else \
        load_config(config, opts)
    with torch.device("meta"):
        return build_model(cfg)


def convert(src: Path, dst: Path, to_official: bool, config: Path | None = None,
            opts: list[str] = ()) -> Path | dict:
    """Convert the checkpoint file ``src`` and write ``dst``; returns the config used (a file, or the dict stored
    in the checkpoint: ``--to-official`` builds the model a checkpoint of ours was trained as)."""
    checkpoint = load_checkpoint(src)
    if official_mambaseg.is_mambaseg_checkpoint(checkpoint) or \
            official_mambaseg.is_mambaseg_state_dict(checkpoint.get("model", {})):
        return _convert_mambaseg(src, dst, checkpoint, to_official, config, opts)
    if to_official:
        state = checkpoint.get("model", checkpoint)
        if is_official_checkpoint(checkpoint):
            raise CheckpointError(f"{src} is already in the official format")
        pamm = any(k.startswith("decoder.taps.") for k in state)
        if config is None and isinstance(checkpoint.get("config"), dict):
            config = checkpoint["config"]          # the model the checkpoint was trained as
        elif config is None:
            name = "pame_vit" if pamm else "mtmamba_plus" if any(k.startswith("decoder.stages.0.sctm.")
                                                                 for k in state) else "mtmamba"
            tasks = [m.group(1) for k in state if (m := re.fullmatch(r"heads\.(\w+)\.project\.weight", k))]
            config = default_config(name, tasks)
        export = official_pamm.ours_to_official if pamm else ours_to_official
        save_checkpoint(dst, export(state, meta_model(config, list(opts))))
    elif official_pamm.is_pamm_checkpoint(checkpoint):
        config = config or default_config("pame_vit", official_pamm.pamm_tasks(checkpoint))
        cfg, _ = official_pamm.released_config(load_config(config, list(opts)), checkpoint)
        with torch.device("meta"):
            model = build_model(cfg)
        save_checkpoint(dst, {"model": official_pamm.official_to_ours(checkpoint, model), "converted_from": str(src)})
    else:
        if not is_official_checkpoint(checkpoint):
            raise CheckpointError(f"{src} is not an official MTMamba/MTMamba++/PAMM checkpoint ({{'model': ...}} with "
                                  "module.backbone.* keys); for our own checkpoints use --to-official")
        config = config or default_config(official_model_name(checkpoint), official_tasks(checkpoint))
        state = official_to_ours(checkpoint, meta_model(config, list(opts)))
        save_checkpoint(dst, {"model": state, PAD_MODE_KEY: "mmseg", "converted_from": str(src)})
    return config


def _convert_mambaseg(src: Path, dst: Path, checkpoint: dict, to_official: bool, config: Path | None,
                      opts: list[str]) -> Path:
    """MambaSeg: the keys are the official ones; only the wrapper and the key order change."""
    official = official_mambaseg.is_mambaseg_checkpoint(checkpoint)
    if official == to_official:
        raise CheckpointError(f"{src} is already in the {'official' if official else 'our'} format")
    state = checkpoint["state_dict" if official else "model"]
    config = config or REPO / "configs" / f"{official_mambaseg.default_config_name(state)}.yml"
    model = meta_model(config, list(opts))
    epoch = int(checkpoint.get("epoch", 0))
    if to_official:
        save_checkpoint(dst, official_mambaseg.ours_to_official(state, model, epoch))
    else:
        save_checkpoint(dst, {"model": official_mambaseg.official_to_ours(checkpoint, model), "epoch": epoch,
                              "converted_from": str(src)})
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
    source = "the config stored in the checkpoint" if isinstance(config, dict) else config
    print(f"{args.src} -> {args.dst} ({direction}, model of {source})")


if __name__ == "__main__":
    main()

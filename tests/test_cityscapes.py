"""Cityscapes for MTMamba and MTMamba++ (CITYSCAPES.md): config keys, the depth loss switch, the disparity metric,
predictions at the label size, the released Cityscapes checkpoint layouts (derived from the NYUD manifests as
CITYSCAPES.md §3 says), exact sizes, and main.py training with 2 ranks then inference from an official-format file.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import main as cli
from data.synthetic import write_cityscapes
from evaluation.depth import DepthMeter
from evaluation.evaluator import build_meters
from losses import build_loss
from models import build_model
from scripts import convert_official_checkpoint as converter
from scripts import model_stats
from tests.engine.test_training import run_main
from tests.test_official_checkpoints import (MANIFESTS, TINY, assert_decoder_matches_official,
                                             random_official_state_dict, randomize)
from utils.checkpoint import load_checkpoint
from utils.config import ConfigError, load_config
from utils.flops import count_params
from utils.official import (is_official_checkpoint, official_layout, official_model_name, official_tasks,
                            official_to_ours, ours_to_official)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"mtmamba": REPO / "configs/mtmamba_cityscapes.yml",
           "mtmamba_plus": REPO / "configs/mtmamba_plus_cityscapes.yml"}
# a tiny model of the official kind on synthetic Cityscapes: 64x128 labels, images resized to 32x64
SMALL = ["TRAIN.SCALE=[32,64]", "TEST.SCALE=[32,64]", "LABEL_SCALE=[64,128]"]
TINY_CS = ["model.pretrained=false", "model.backbone=custom", "model.swin_pad_mode=mmseg", *SMALL,
           "model.backbone_kwargs={embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 1, 2, 2], window_size: 4}"]


# --------------------------------------------------------------------------------------------------------
# Config, loss, metric


def test_configs_hold_the_official_recipe_and_validate_the_new_keys():
    for name, path in CONFIGS.items():
        cfg = load_config(path)
        assert cfg.model.name == name and cfg.TASKS.NAMES == ["semseg", "depth"]
        assert cfg.TASKS.NUM_OUTPUT == {"semseg": 19, "depth": 1}
        assert (cfg.TRAIN.SCALE, cfg.TEST.SCALE, cfg.LABEL_SCALE) == ([512, 1024], [512, 1024], [1024, 2048])
        assert (cfg.optimizer, cfg.optimizer_kwargs.lr, cfg.optimizer_kwargs.weight_decay) == ("adamw", 1e-4, 1e-6)
        assert (cfg.scheduler, cfg.scheduler_kwargs.power, cfg.max_iter, cfg.trBatch) == ("poly", 0.9, 40000, 1)
        assert cfg.loss_kwargs.loss_scheme == "log" and cfg.grad_clip is None
        assert (cfg.loss_kwargs.loss_weights.semseg, cfg.loss_kwargs.loss_weights.depth) == (1.0, 1.0)
        assert cfg.cityscapes.sky_label_id == 10 and cfg.loss_kwargs.depth_ignore_invalid is False
    for opt, message in (("cityscapes.sky_label_id=11", "cityscapes.sky_label_id=11 is not valid; valid: [10, 23]"),
                         ("loss_kwargs.depth_ignore_invalid=1",
                          "loss_kwargs.depth_ignore_invalid=1 is not valid; valid: [True, False]"),
                         ("LABEL_SCALE=[1024]", "LABEL_SCALE=[1024] must be null")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(CONFIGS["mtmamba"], [opt])


def test_depth_loss_switch():
    """Official: the L1 loss ignores only 255, so -1 (no measurement) and 0 (labelId 10) are fitted; the switch
    masks every GT <= 0."""
    pred = torch.tensor([1.0, 1.0, 1.0, 1.0, 5.0]).view(1, 1, 1, 5)
    gt = torch.tensor([-1.0, 0.0, 2.0, 255.0, 3.0]).view(1, 1, 1, 5)
    for ignore_invalid, want in ((False, (2 + 1 + 1 + 2) / 4), (True, (1 + 2) / 2)):
        cfg = load_config(CONFIGS["mtmamba"], [f"loss_kwargs.depth_ignore_invalid={str(ignore_invalid).lower()}"])
        loss = build_loss(cfg).task_losses["depth"]
        assert loss(pred, gt).item() == pytest.approx(want)


def test_disparity_metric_counts_0_to_80_and_adds_abs_err():
    meter = build_meters(load_config(CONFIGS["mtmamba"]))["depth"]
    assert meter.valid_range == (0.0, 80.0)
    assert build_meters(load_config(REPO / "configs/mtmamba_nyud.yml"))["depth"].valid_range is None
    gt = np.array([-1.0, 0.0, 0.5, 40.0, 79.9, 80.0, 120.0, 255.0])
    pred = np.array([3.0, 3.0, -2.0, 42.0, 70.0, 1.0, 1.0, 1.0])
    sums, n = np.zeros(5), 0
    for p, g in zip(pred, gt):
        if not 0 < g < 80:
            continue
        p = max(p, 0.0)
        lp = math.log(max(p, 1e-9))
        sums += [(p - g) ** 2, (math.log(g) - lp) ** 2, abs(p - g) / g, (p - g) ** 2 / g, abs(p - g)]
        n += 1
    assert n == 3
    meter.update(torch.tensor(pred).view(1, 1, 2, 4), torch.tensor(gt).view(1, 1, 2, 4))
    got = meter.compute()
    want = {"rmse": math.sqrt(sums[0] / n), "log_rmse": math.sqrt(sums[1] / n), "abs_rel": sums[2] / n,
            "sq_rel": sums[3] / n, "abs_err": sums[4] / n}
    assert got == pytest.approx(want, rel=1e-12)
    assert DepthMeter(valid_range=(0, 80)).state()["sums"].shape == (5,)


# --------------------------------------------------------------------------------------------------------
# Predictions at the label size


def test_predictions_are_upsampled_once_to_the_label_size():
    torch.manual_seed(0)
    model = build_model(load_config(CONFIGS["mtmamba_plus"], TINY_CS)).eval()
    assert model.output_size == (64, 128)
    image = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        out = model(image)
        x = model.decoder(model.encoder(image))
        for t in ("semseg", "depth"):
            head = model.heads[t](x[t])                                    # LiteHead output at 8x16 (H/4)
            assert out[t].shape == (1, model.heads[t].project.out_channels, 64, 128)
            assert torch.equal(out[t], F.interpolate(head, (64, 128), mode="bilinear", align_corners=False))
            two_steps = F.interpolate(F.interpolate(head, (32, 64), mode="bilinear", align_corners=False),
                                      (64, 128), mode="bilinear", align_corners=False)
            assert not torch.allclose(out[t], two_steps, atol=1e-4)         # one step, as the official model
    assert build_model(load_config(CONFIGS["mtmamba_plus"], [*TINY_CS, "LABEL_SCALE=null"])).output_size is None


@pytest.mark.slow
@pytest.mark.parametrize("model,params,flops,rounded", [("mtmamba", 252_271_688, 758_018_424_160, "758.02"),
                                                        ("mtmamba_plus", 258_595_976, 747_631_181_248, "747.63")])
def test_full_size_parameters_and_flops(model, params, flops, rounded, capsys):
    """At 512x1024, counting the upsampling of the predictions to 1024x2048 (computed here, not published): MTMamba
    252,271,688 params, 758.02 GFLOPs; MTMamba++ 258,595,976, 747.63 (rounded; the paper's display rule truncates)."""
    stats = model_stats.main(["--config_exp", str(CONFIGS[model])])
    assert stats == [{"params": params, "flops": flops}]
    assert f"gflops_rounded: {rounded}\n" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------
# Released checkpoints: mtmamba_cityscapes.pth.tar (673 keys), mtmamba_plus_cityscapes.pth.tar (663 keys)


def cityscapes_manifest(name: str) -> dict:
    """CITYSCAPES.md §3: the NYUD manifest without every key that has a dotted component normals, edge, normals_<s> or
    edge_<s>; semseg has 19 outputs; the shared inputs of the CTM / S-CTM take 2 tasks' channels instead of 4."""
    nyud = MANIFESTS[name.replace("cityscapes", "nyud")]
    dropped = re.compile(r"(normals|edge)(_\d)?")
    entries = []
    for key, shape in nyud["entries"]:
        if any(dropped.fullmatch(part) for part in key.split(".")):
            continue
        shape = list(shape)
        if re.fullmatch(r"module\.final_project\.semseg\.(weight|bias)", key):
            shape[0] = 19
        elif re.fullmatch(r"module\.(block_3\.\d|block_ctm\.\d\.0)\.norm_share\.(weight|bias)", key):
            shape[0] //= 2                                                 # [4C] -> [2C]
        elif re.fullmatch(r"module\.(block_3\.\d\.op_share\.in_proj|block_ctm\.\d\.0\.conv_share\.0)\.weight", key):
            shape[1] //= 2                                                 # [2C, 4C] -> [2C, 2C]; [C, 4C] -> [C, 2C]
        entries.append([key, shape])
    kept = {k for k, _ in entries}
    return {"entries": entries, "non_float32": {k: v for k, v in nyud["non_float32"].items() if k in kept}}


# (official key, our key) pairs written out from MODELS.md §1.4/§1.8, for the weights whose shapes cannot tell a
# wrong pairing (square with two tasks, or equal to another module's)
HAND_MAPPED = {
    "mtmamba": [(f"block_3.{s}.{off}", f"decoder.stages.{s}.ctm.{ours}") for s in range(3) for off, ours in (
        ("op_share.in_proj.weight", "mfe_shared.in_proj.weight"), ("norm_share.weight", "norm_shared.weight"),
        ("in_proj.semseg.weight", "gate.semseg.weight"), ("in_proj.depth.weight", "gate.depth.weight"),
        ("op.semseg.in_proj.weight", "mfe.semseg.in_proj.weight"),
        ("op.depth.in_proj.weight", "mfe.depth.in_proj.weight"), ("out_proj.depth.weight", "out_proj.depth.weight"))],
    "mtmamba_plus": [(f"block_ctm.{s}.0.{off}", f"decoder.stages.{s}.sctm.{ours}") for s in range(3) for off, ours in (
        ("conv_share.0.weight", "reduce_shared.weight"), ("conv_share.1.weight", "conv_shared.weight"),
        ("norm_share.weight", "norm_shared.weight"),
        ("op.semseg.in_proj_cross.weight", "css2d.semseg.in_proj_cross.weight"),
        ("op.depth.in_proj_cross.weight", "css2d.depth.in_proj_cross.weight"))],
}


@pytest.mark.parametrize("kind,n_keys,params,entries_total", [("mtmamba", 673, 252_271_688, 252_769_352),
                                                             ("mtmamba_plus", 663, 258_595_976, 259_094_026)])
def test_released_cityscapes_layout_converts_strictly_and_exports_back(kind, n_keys, params, entries_total):
    manifest = cityscapes_manifest(f"{kind}_cityscapes")
    assert len(manifest["entries"]) == n_keys and sum(math.prod(s) for _, s in manifest["entries"]) == entries_total
    with torch.device("meta"):
        model = build_model(load_config(CONFIGS[kind], ["model.pretrained=false"]))
    assert count_params(model) == params
    layout = official_layout(model)
    assert ["module." + off for off, _ in layout] == [k for k, _ in manifest["entries"]]     # keys and order
    own = dict(model.state_dict()) | dict(model.named_buffers())
    assert [list(own[k].shape) for _, k in layout] == [s for _, s in manifest["entries"]]

    official = random_official_state_dict(manifest)
    checkpoint = {"model": official}
    assert is_official_checkpoint(checkpoint) and official_model_name(checkpoint) == kind
    assert official_tasks(checkpoint) == ["semseg", "depth"]
    converted = official_to_ours(checkpoint, model)
    for off, ours in HAND_MAPPED[kind]:                                    # values through the mapping
        assert converted[ours] is official["module." + off], off
    model.load_state_dict(converted, strict=True, assign=True)
    back = ours_to_official(model.state_dict(), model)["model"]
    assert list(back) == list(official)                                    # byte-equal keys, official order
    for key, value in official.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


@pytest.mark.parametrize("kind", ["mtmamba", "mtmamba_plus"])
def test_two_task_decoder_computes_the_official_forward(kind):
    # with two tasks the shared CTM in_proj is square: the official forward on the exported names catches any
    # pairing that shapes cannot
    opts = [*TINY, "TRAIN.SCALE=[64,64]", "TEST.SCALE=[64,64]", "LABEL_SCALE=null"]
    torch.manual_seed(0)
    model = randomize(build_model(load_config(CONFIGS[kind], opts)).eval()).double()
    assert_decoder_matches_official(model, ["semseg", "depth"], (128, 128))


# --------------------------------------------------------------------------------------------------------
# main.py: 2-rank training, conversion to the official format, inference from the official file


def _validation_metrics(log: str) -> dict[str, dict[str, float]]:
    """The metrics of the last 'iteration N validation: task k v, k v; task ...' line of a log."""
    line = [ln for ln in log.splitlines() if " validation: " in ln][-1].split(" validation: ", 1)[1]
    metrics = {}
    for part in line.split("; "):
        task, rest = part.split(" ", 1)
        metrics[task] = {k: float(v) for k, v in (kv.rsplit(" ", 1) for kv in rest.split(", "))}
    return metrics


def test_main_trains_on_two_ranks_and_infers_from_the_official_format(tmp_path):
    write_cityscapes(tmp_path / "data", n_train=2, n_val=2)
    config = str(CONFIGS["mtmamba_plus"])
    opts = [f"db_root={tmp_path / 'data'}", *TINY_CS, "max_iter=2", "val_interval=1000", "trBatch=1",
            "valBatch=1", "nworkers=0", "log_interval=1"]
    run_main(["--run_mode", "train", "--config_exp", config, "--opts", *opts, f"out_dir={tmp_path / 'runs'}"], 2,
             tmp_path)
    run = tmp_path / "runs" / "mtmamba_plus_cityscapes"
    log = (run / "log.txt").read_text()
    assert "identical on 2 rank(s)" in log
    validated = _validation_metrics(log)                 # the 2-rank evaluation at the last iteration

    # our checkpoint -> the official format -> main.py infer on one process, straight from that file
    converter.main(["--to-official", str(run / "checkpoints" / "last.pth"), str(tmp_path / "official.pth.tar"),
                    "--config_exp", config, "--opts", *TINY_CS])
    official = torch.load(tmp_path / "official.pth.tar", weights_only=True)
    assert official_tasks(official) == ["semseg", "depth"] and official_model_name(official) == "mtmamba_plus"
    # and back, with the config found from the checkpoint's model and tasks
    found = converter.convert(tmp_path / "official.pth.tar", tmp_path / "ours.pth", False, None, TINY_CS)
    assert found == CONFIGS["mtmamba_plus"]
    trained = load_checkpoint(run / "checkpoints" / "last.pth")["model"]
    ours = torch.load(tmp_path / "ours.pth", weights_only=True)["model"]
    assert list(ours) == list(trained) and all(torch.equal(ours[k], trained[k]) for k in trained)
    cli.main(["--run_mode", "infer", "--config_exp", config, "--trained_model", str(tmp_path / "official.pth.tar"),
              "--opts", *opts, f"out_dir={tmp_path / 'infer'}"])
    saved = json.loads((tmp_path / "infer" / "mtmamba_plus_cityscapes" / "metrics.json").read_text())
    assert saved["delta_m"] == "Δm: n/a (no published single-task baseline)"
    results = saved["results"]
    assert set(results["depth"]) == {"rmse", "log_rmse", "abs_rel", "sq_rel", "abs_err"}
    assert "mIoU" in results["semseg"]
    assert set(validated) == set(results)
    for task, metrics in validated.items():
        for name, value in metrics.items():
            assert results[task][name] == pytest.approx(value, abs=1e-4), (task, name)

"""The released PAMM model (official format, CQC-gogopro/PAMM) against ``pame_vit`` with the code-faithful switches.

Full size, on the meta device: the parameter totals of the NYUD and PASCAL models against the manifests
(tests/assets/pamm_state_dict_manifests.json), and state dicts with exactly their keys, order and shapes (random
values) converting strictly and exporting back byte-equal. On a tiny model: our forward against a float64 reference of
the released forward written below from the official state dict (MODELS.md §3.1-3.2, §3.6), the strict errors, and
``main.py infer`` from the official trainer's file and the converter script both ways.
"""
import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import main as cli
from data.synthetic import write_nyud
from models import build_model
from models.ops.scan_orders import scan_order
from models.ops.selective_scan import selective_scan_ref
from models.pame import PAMELayer, draw_priors
from scripts import convert_official_checkpoint as converter
from tests.test_official_checkpoints import random_official_state_dict
from utils.checkpoint import CheckpointError
from utils.config import load_config
from utils.official import checkpoint_model_state, config_for_checkpoint, is_official_checkpoint
from utils.official_pamm import (
    RELEASED_SWITCHES,
    TRAINER_KEYS,
    is_pamm_checkpoint,
    official_to_ours,
    ours_to_official,
    pamm_layout,
    pamm_tasks,
)

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = json.loads((REPO / "tests/assets/pamm_state_dict_manifests.json").read_text())
FAITHFUL = {"pamm_nyud": ("configs/ablations/pame_code_faithful.yml", ["model.pame.backbone_dim=768"]),
            "pamm_pascal": ("configs/ablations/pame_code_faithful_pascal.yml", [])}
DEAD = ".conv2d0."                       # the released local-conv MoE, whose output is overwritten
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
# tiny released model: a 4-block ViT (width 32, patch 8) on 32×48 images (4×6 tokens), d = 32, N = 4, 2 tasks
TINY = ["model.pretrained=false", "model.backbone=vit_custom", "TRAIN.SCALE=[32,48]", "TEST.SCALE=[32,48]",
        "model.backbone_kwargs={embed_dim: 32, depth: 4, num_heads: 2, patch_size: 8}", "model.pame.dim=32",
        "model.d_state=4", "model.encoder_drop_path_rate=0",
        "task_dictionary={include_semseg: true, include_depth: true}"]


@pytest.fixture(scope="module")
def full_models():
    """The full-size released NYUD and PASCAL models (code-faithful switches) on the meta device."""
    models = {}
    for name, (config, opts) in FAITHFUL.items():
        with torch.device("meta"):
            models[name] = build_model(load_config(REPO / config, ["model.pretrained=false", *opts]))
    return models


# --------------------------------------------------------------------------------------------------------
# The released NYUD and PASCAL models, full size


@pytest.mark.parametrize("name,params,entries,moe", [("pamm_nyud", 625_807_261, 625_822_181, 36_239_808),
                                                     ("pamm_pascal", 996_460_982, 996_494_352, 63_226_752)])
def test_parameter_totals_are_the_released_ones_without_the_discarded_moe(full_models, name, params, entries, moe):
    """Ours = official total − the local-conv MoE (never used) + nothing: A, D are constants outside both state
    dicts, and our only extra entries are the frozen priors (buffers, 2·T·N per tap)."""
    model, manifest = full_models[name], MANIFESTS[name]
    dead = [(k, s) for k, s in manifest["entries"] if DEAD in k]
    dead_params = sum(math.prod(s) for k, s in dead if not k.endswith(BUFFERS))
    assert dead_params == moe
    n_tasks, d_state = len(manifest["build"]["tasks"]), model.decoder.taps[0].layers[0].d_state
    assert sum(p.numel() for p in model.parameters()) == params == manifest["param_total"] - dead_params
    assert sum(v.numel() for v in model.state_dict().values()) == entries == \
        manifest["entries_total"] - sum(math.prod(s) for _, s in dead) + 4 * 2 * n_tasks * d_state
    assert not any(k.endswith(("A_logs", "Ds")) for k in model.state_dict())


@pytest.mark.parametrize("name", list(FAITHFUL))
def test_released_layout_converts_strictly_and_exports_back(full_models, name):
    model, entries = full_models[name], MANIFESTS[name]["entries"]
    layout = pamm_layout(model)
    assert ["module." + e.official for e in layout] == [k for k, _ in entries]          # same keys, same order
    assert [list(e.shape) for e in layout] == [s for _, s in entries]

    official = random_official_state_dict(MANIFESTS[name])
    checkpoint = {"optimizer": {"state": {}, "param_groups": []}, "scheduler": {"last_epoch": 7}, "model": official,
                  "epoch": 3, "iter_count": 40000}
    assert set(checkpoint) == TRAINER_KEYS and is_pamm_checkpoint(checkpoint)
    assert pamm_tasks(checkpoint) == MANIFESTS[name]["build"]["tasks"]
    converted = official_to_ours(checkpoint, model)
    assert list(converted) == list(model.state_dict())
    # the stacked tensors hold the experts / tasks in order; the priors come from the layer seeds
    layer = "decoder.taps.2.layers.0"
    stage, tasks = "module.backbone.stage_MTLoRA_mamba.2", MANIFESTS[name]["build"]["tasks"]
    r = official[f"{stage}.B_proj0.MoE.0.W.weight"].shape[0]
    assert torch.equal(converted[f"{layer}.pe_b.expert_down.weight"][5 * r:6 * r],
                       official[f"{stage}.B_proj0.MoE.5.W.weight"])
    assert torch.equal(converted[f"{layer}.dt_projs_bias"][1], official[f"{stage}.dt_proj0.{tasks[1]}.bias"])
    n = model.decoder.taps[2].layers[0].d_state
    assert torch.equal(converted[f"{layer}.priors"], draw_priors(len(tasks), n, 2))

    model.load_state_dict(converted, strict=True, assign=True)   # the meta model now holds the converted tensors
    back = ours_to_official(model.state_dict(), model)["model"]
    assert list(back) == list(official)                          # byte-equal keys, in order
    for key, value in official.items():
        got = back[key]
        assert got.dtype == value.dtype and got.shape == value.shape, key
        if DEAD in key:                                          # the discarded MoE comes back as zeros
            assert not got.any(), key
        elif (got.data_ptr(), got.stride()) != (value.data_ptr(), value.stride()):   # else the same memory
            assert torch.equal(got, value), key                  # the packed experts and per-task Δ rows


# --------------------------------------------------------------------------------------------------------
# Independent reference: the released forward, functionally, on an official state dict (float64)


def sub(sd, prefix):
    return {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}


def conv(x, p, name, padding=0):
    return F.conv2d(x, p[f"{name}.weight"], p[f"{name}.bias"], padding=padding)


def bn(x, p, name):
    return F.batch_norm(x, p[f"{name}.running_mean"], p[f"{name}.running_var"], p[f"{name}.weight"],
                        p[f"{name}.bias"], training=False, eps=1e-5)


def channel_ln(x, p, name):
    """nn.LayerNorm (eps 1e-5) over the channels of an NCHW map."""
    return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], p[f"{name}.weight"], p[f"{name}.bias"],
                        eps=1e-5).permute(0, 3, 1, 2)


def ref_vit(image, p, heads, patch, taps):
    """ViT without class token: patch embedding + pos_embed[:, 1:], pre-norm blocks (LayerNorm eps 1e-6), taps."""
    x = F.conv2d(image, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=patch)
    b, c, h, w = x.shape
    x = x.flatten(2).transpose(1, 2) + p["pos_embed"][:, 1:]
    depth = len({k.split(".")[1] for k in p if k.startswith("blocks.")})
    outs = []
    for i in range(depth):
        q = sub(p, f"blocks.{i}.")
        y = F.layer_norm(x, (c,), q["norm1.weight"], q["norm1.bias"], eps=1e-6)
        qkv = F.linear(y, q["attn.qkv.weight"], q["attn.qkv.bias"]).view(b, h * w, 3, heads, c // heads)
        qh, kh, vh = qkv.permute(2, 0, 3, 1, 4)
        attn = (qh @ kh.transpose(-2, -1) * (c // heads) ** -0.5).softmax(-1)
        x = x + F.linear((attn @ vh).transpose(1, 2).reshape(b, h * w, c), q["attn.proj.weight"], q["attn.proj.bias"])
        y = F.layer_norm(x, (c,), q["norm2.weight"], q["norm2.bias"], eps=1e-6)
        x = x + F.linear(F.gelu(F.linear(y, q["mlp.fc1.weight"], q["mlp.fc1.bias"])), q["mlp.fc2.weight"],
                         q["mlp.fc2.bias"])
        if i + 1 in taps:
            tap = F.layer_norm(x, (c,), p["norm.weight"], p["norm.bias"], eps=1e-6) if i + 1 == depth else x
            outs.append(tap.transpose(1, 2).reshape(b, c, h, w))
    return outs


def ref_moe(x, p, t, topk):
    """The released MoE for task t (eval): router (channel path conv1-ln-GELU-conv3-mean, spatial path
    convsp-ln_sp-GELU-conv2), softmax, the E − k smallest zeroed, Σ_e g_e·M_e(W_e(x)) -> Bn_all, + mix·proj_task +
    proj_gerneral -> Bn."""
    n, c, h, w = x.shape
    r = sub(p, f"router.{t}.")
    feat = conv(F.gelu(channel_ln(conv(x, r, "0.conv1"), r, "0.ln")), r, "0.conv3").mean(dim=(2, 3))
    sp = F.linear(x.reshape(n, c, h * w), r["0.convsp.weight"], r["0.convsp.bias"]).reshape(n, c)
    sp = F.gelu(F.layer_norm(sp, (c,), r["0.ln_sp.weight"], r["0.ln_sp.bias"], eps=1e-5))
    sp = conv(sp[:, :, None, None], r, "0.conv2")[:, :, 0, 0]
    logits = conv(torch.cat([feat, sp], 1)[:, :, None, None], r, "1")[:, :, 0, 0]
    e = (logits.shape[1] - 1) // 2
    gates = logits[:, :e].softmax(1)
    gates = gates * (gates >= gates.sort(dim=1).values[:, e - topk:e - topk + 1])
    kernel = p["MoE.0.W.weight"].shape[-1]
    experts = sum(gates[:, i, None, None, None] * conv(conv(x, p, f"MoE.{i}.W", kernel // 2), p, f"MoE.{i}.M")
                  for i in range(e))
    task = conv(conv(x, p, f"proj_task.{t}.W", kernel // 2), p, f"proj_task.{t}.M")
    out = bn(experts, p, f"Bn_all.{t}") + task * logits[:, 2 * e, None, None, None] + conv(x, p, "proj_gerneral",
                                                                                            kernel // 2)
    return bn(out, p, f"Bn.{t}")


def ref_pame(feature, p, tasks, priors, topk=9):
    """The released PAME module of one tap (MODELS.md §3.2 with §3.6): A = −(1..N), D = 1, 4 Hilbert orders."""
    f = F.group_norm(conv(feature, p, "first_decode", 1), 32, p["input_norm.weight"], p["input_norm.bias"])
    out = {}
    for i, t in enumerate(tasks):
        shortcut = conv(f, p, f"task_conv.{t}", 1)
        a = F.group_norm(shortcut, 32, p[f"task_input_norm0.{t}.weight"], p[f"task_input_norm0.{t}.bias"])
        z = F.silu(conv(a, p, f"proj_z0.{t}"))
        x = conv(F.silu(a), p, f"dim_expand_proj_x0.{t}")                        # the local-conv MoE is overwritten
        b_mat = ref_moe(x, sub(p, "B_proj0."), t, topk).flatten(2) + priors[0, i][:, None]
        c_mat = ref_moe(x, sub(p, "C_proj0."), t, topk).flatten(2) + priors[1, i][:, None]
        n, di, h, w = x.shape
        u = x.flatten(2)
        dt = p[f"dt_proj0.{t}.weight"] @ (p[f"x2dt_proj0.{t}.weight"] @ u)
        a_mat = -torch.arange(1, b_mat.shape[1] + 1, dtype=u.dtype).repeat(di, 1)
        y = torch.zeros_like(u)
        for k in range(4):
            perm, inv = scan_order(f"hilbert_rot{k}", h, w)
            y += selective_scan_ref(u[..., perm], dt[..., perm], a_mat, b_mat[..., perm], c_mat[..., perm],
                                    torch.ones(di, dtype=u.dtype), delta_bias=p[f"dt_proj0.{t}.bias"],
                                    delta_softplus=True)[..., inv]
        out[t] = shortcut + conv(y.view(n, di, h, w), p, f"dim_decrease_proj0.{t}") * z
    return out


def ref_pamm(image, sd, tasks, priors, heads=2, patch=8):
    """The released model: ViT taps -> PAME per tap -> task_mask softmax fusion, ×4 -> ConvHead -> image size."""
    feats = ref_vit(image, sub(sd, "backbone."), heads, patch, taps=(1, 2, 3, 4))
    per_tap = [ref_pame(f, sub(sd, f"backbone.stage_MTLoRA_mamba.{i}."), tasks, priors[i]) for i, f in enumerate(feats)]
    out = {}
    for t in tasks:
        m = sub(sd, f"backbone.task_mask.{t}.")
        maps = torch.stack([o[t] for o in per_tap], 1)                           # (B, taps, d, h, w)
        weights = conv(F.gelu(bn(conv(maps.flatten(1, 2), m, "0"), m, "1")), m, "3", 1).softmax(1)
        fused = F.interpolate((weights[:, :, None] * maps).sum(1), scale_factor=4, mode="bilinear", align_corners=False)
        h = sub(sd, f"heads.{t}.")
        y = conv(F.gelu(bn(conv(fused, h, "mt_proj.0", 1), h, "mt_proj.1")), h, "linear_pred")
        out[t] = F.interpolate(y, image.shape[-2:], mode="bilinear", align_corners=False)
    return out


def tiny_model(config="configs/ablations/pame_code_faithful.yml", seed=0, opts=()):
    torch.manual_seed(seed)
    return build_model(load_config(REPO / config, [*TINY, *opts])).eval()


@torch.no_grad()
def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim < 2 else p[0].numel() ** -0.5))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    return model


def test_our_model_computes_the_released_forward():
    """Exported to the official format, our tiny code-faithful model equals the released forward computed from the
    official names (the reference gets our seeded priors, which the official format does not hold)."""
    model = randomize(tiny_model()).double()
    official = {k.removeprefix("module."): v for k, v in ours_to_official(model.state_dict(), model)["model"].items()}
    priors = [tap.layers[0].priors for tap in model.decoder.taps]
    image = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        got = model(image)
        want = ref_pamm(image, official, model.tasks, priors)
    for t in want:
        torch.testing.assert_close(got[t], want[t], rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------------------------
# Strictness, infer and the converter


def test_code_faithful_configs_set_the_switches_infer_applies():
    for config, _ in FAITHFUL.values():
        cfg = load_config(REPO / config)
        assert {k: cfg.model.pame[k] for k in RELEASED_SWITCHES} == RELEASED_SWITCHES, config
        assert (cfg.model.pame.pe_kernel, cfg.model.pame.n_experts, cfg.model.pame.expert_rank) == (9, 15, 4)


def test_strict_errors_name_every_key_and_switch():
    model = tiny_model()
    official = ours_to_official(model.state_dict(), model)["model"]
    official.pop("module.backbone.stage_MTLoRA_mamba.1.B_proj0.MoE.3.M.bias")
    official["module.backbone.stage_MTLoRA_mamba.1.extra.weight"] = torch.zeros(1)
    official["module.heads.depth.linear_pred.weight"] = torch.zeros(2, 32, 1, 1)
    with pytest.raises(CheckpointError) as e:
        official_to_ours({"model": official}, model)
    msg = str(e.value)
    assert "1 missing, 1 unmapped, 1 mismatched" in msg
    for part in ("missing: module.backbone.stage_MTLoRA_mamba.1.B_proj0.MoE.3.M.bias",
                 "unmapped: module.backbone.stage_MTLoRA_mamba.1.extra.weight",
                 "module.heads.depth.linear_pred.weight (2, 32, 1, 1), expected (1, 32, 1, 1)"):
        assert part in msg
    for opt, match in (("model.pame.local_conv=dw", "local_conv=none"), ("model.pame.a_d=learnable", "a_d=constant"),
                       ("model.pame.router_spatial=gap", "router_spatial=linear")):
        with pytest.raises(CheckpointError, match=match):
            pamm_layout(tiny_model(opts=[opt]))
    cfg = load_config(REPO / "configs/pame_swin_nyud.yml", ["model.pretrained=false"])
    with pytest.raises(CheckpointError, match="pame_code_faithful"):
        config_for_checkpoint(cfg, {"model": official})


def test_main_infers_from_the_official_trainer_file_and_the_converter_goes_both_ways(tmp_path, caplog):
    write_nyud(tmp_path / "data", n_train=1, n_val=2)
    opts = ["TRAIN.SCALE=[96,128]", "TEST.SCALE=[96,128]"]           # 6×8 tokens: the synthetic images fit
    source = randomize(tiny_model(opts=opts))
    official = ours_to_official(source.state_dict(), source)["model"]
    trainer_file = {"optimizer": {"state": {}, "param_groups": []}, "scheduler": {"last_epoch": 5},
                    "model": official, "epoch": 2, "iter_count": 400}
    torch.save(trainer_file, tmp_path / "PAME_tiny.pth.tar")
    assert is_official_checkpoint(trainer_file)                     # the MTMamba test passes too: PAMM goes first

    # config_for_checkpoint switches a default pame_vit config to the released model (widths from the file)
    cfg = load_config(REPO / "configs/pame_vit_nyud.yml", [*TINY, *opts, "model.pame.dim=64", "model.d_state=16"])
    with caplog.at_level(logging.INFO, logger="utils.official_pamm"):
        released = config_for_checkpoint(cfg, trainer_file)
        state = checkpoint_model_state(trainer_file, tiny_model(opts=opts, seed=1))
    assert {k: released.model.pame[k] for k in ("local_conv", "priors", "pe_kernel", "router_spatial", "a_d", "dim")} \
        == {"local_conv": "none", "priors": "frozen", "pe_kernel": 9, "router_spatial": "linear", "a_d": "constant",
            "dim": 32} and released.model.d_state == 4 and cfg.model.pame.dim == 64
    assert "model.pame.local_conv: 'dw' -> 'none'" in caplog.text
    assert "backbone.stage_MTLoRA_mamba.0.conv2d0.*" in caplog.text and "discarded local-conv MoE" in caplog.text
    assert all(torch.equal(state[k], v) for k, v in source.state_dict().items())

    # main.py infer straight from the trainer's file, with the default (our-switches) pame_vit config
    run_opts = [f"db_root={tmp_path / 'data'}", f"out_dir={tmp_path / 'runs'}", *TINY, *opts, "valBatch=2",
                "nworkers=0", "eval_boundary=false"]
    assert cli.main(["--run_mode", "infer", "--config_exp", str(REPO / "configs/pame_vit_nyud.yml"),
                     "--trained_model", str(tmp_path / "PAME_tiny.pth.tar"), "--opts", *run_opts]) == 0
    results = json.loads((tmp_path / "runs" / "pame_vit_nyud" / "metrics.json").read_text())["results"]
    assert set(results) == {"semseg", "depth"}

    # the converter: official -> ours -> official gives the file's model back
    args = ["--config_exp", str(REPO / "configs/ablations/pame_code_faithful.yml"), "--opts", *TINY, *opts]
    converter.main([str(tmp_path / "PAME_tiny.pth.tar"), str(tmp_path / "ours.pth"), *args])
    ours = torch.load(tmp_path / "ours.pth", weights_only=True)
    assert list(ours["model"]) == list(source.state_dict())
    converter.main(["--to-official", str(tmp_path / "ours.pth"), str(tmp_path / "back.pth.tar"), *args])
    back = torch.load(tmp_path / "back.pth.tar", weights_only=True)["model"]
    assert list(back) == list(official) and all(torch.equal(back[k], v) for k, v in official.items())
    layers = [m for m in source.modules() if isinstance(m, PAMELayer)]
    assert [m.prior_seed for m in layers] == [0, 1, 2, 3]

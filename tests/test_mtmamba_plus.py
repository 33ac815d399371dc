"""MTMamba++: exact parameter counts (MODELS.md §1.6, §1.8), CSS2D / S-CTM / LiteHead against independent
functional references, and a tiny model trained and evaluated through main.py on synthetic data."""
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import main as cli
from data.synthetic import write_nyud
from models import build_model
from models.execution import exec_mode
from models.mtmamba_plus import CSS2D, SCTM, LiteHead, PointwiseConv
from models.ops.selective_scan import selective_scan_ref
from utils.config import load_config
from utils.flops import count_params

# a tiny MTMamba++ on a tiny Swin: 64x96 input, decoder widths 64/32/16
TINY = ["model.pretrained=false", "model.backbone=custom", "TRAIN.SCALE=[64,96]", "TEST.SCALE=[64,96]",
        "model.backbone_kwargs={embed_dim: 16, depths: [2, 2, 2, 2], num_heads: [1, 1, 2, 2], window_size: 4}"]


def core_params(c):  # MODELS.md §0.3: dwconv + x_proj + dt_proj + A + D + out_norm
    return 16 * c * math.ceil(c / 16) + 424 * c


# --------------------------------------------------------------------------------------------------------
# Independent references (plain functional code on the modules' state dicts)


def ref_ss2d(a, p, s=None):
    """SS2D of the official code on its state dict ``p``, the four scan sequences written out (MODELS.md §0.3).

    With ``out_proj.weight`` in ``p`` (STM, CSS2D) in_proj also gives the gate z, else (CTM's MFE) only x. With a
    shared map ``s`` (CSS2D, §1.8) the SSM parameters Δ, B, C come from ``in_proj_cross(s)`` and u from the task.
    """
    b, h, w, _ = a.shape
    gated = "out_proj.weight" in p
    x, z = F.linear(a, p["in_proj.weight"]).chunk(2, dim=-1) if gated else (F.linear(a, p["in_proj.weight"]), None)
    d = x.shape[-1]
    x = F.silu(F.conv2d(x.permute(0, 3, 1, 2), p["conv2d.weight"], p["conv2d.bias"], padding=1, groups=d))
    q = x if s is None else F.linear(s, p["in_proj_cross.weight"]).permute(0, 3, 1, 2)

    def sequences(m):       # raster, column-major, and both reversed: (B, D, L) each
        seqs = [m.flatten(2), m.transpose(2, 3).flatten(2)]
        return seqs + [t.flip(-1) for t in seqs]

    rank = p["dt_projs_weight"].shape[-1]
    n = p["A_logs"].shape[-1]
    y = torch.zeros(b, d, h, w, dtype=a.dtype)
    for k, (u, v) in enumerate(zip(sequences(x), sequences(q))):
        dt, bs, cs = torch.einsum("bdl,cd->bcl", v, p["x_proj_weight"][k]).split([rank, n, n], dim=1)
        sl = slice(k * d, (k + 1) * d)
        out = selective_scan_ref(u, torch.einsum("brl,dr->bdl", dt, p["dt_projs_weight"][k]),
                                 -torch.exp(p["A_logs"][sl]), bs, cs, p["Ds"][sl],
                                 delta_bias=p["dt_projs_bias"][k], delta_softplus=True)
        if k >= 2:
            out = out.flip(-1)
        y += out.view(b, d, w, h).transpose(2, 3) if k % 2 else out.view(b, d, h, w)
    y = F.layer_norm(y.permute(0, 2, 3, 1), (d,), p["out_norm.weight"], p["out_norm.bias"])
    return F.linear(y * F.silu(z), p["out_proj.weight"]) if gated else y


def sub(p, prefix):
    """The entries of ``p`` under ``prefix``, without it."""
    return {k.removeprefix(prefix): v for k, v in p.items() if k.startswith(prefix)}


def ref_sctm(z, p, tasks):
    """S-CTM: s = Conv3x3(Conv1x1(LN(concat))) on NCHW maps, z_t + CSS2D_t(LN_t(z_t), s)."""
    cat = torch.cat([z[t] for t in tasks], dim=-1)
    shared = F.layer_norm(cat, cat.shape[-1:], p["norm_shared.weight"], p["norm_shared.bias"]).permute(0, 3, 1, 2)
    shared = F.conv2d(shared, p["reduce_shared.weight"], p["reduce_shared.bias"])
    shared = F.conv2d(shared, p["conv_shared.weight"], p["conv_shared.bias"], padding=1).permute(0, 2, 3, 1)
    out = {}
    for t in tasks:
        a = F.layer_norm(z[t], z[t].shape[-1:], p[f"norm.{t}.weight"], p[f"norm.{t}.bias"])
        out[t] = z[t] + ref_ss2d(a, sub(p, f"css2d.{t}."), shared)
    return out


@torch.no_grad()
def randomize(module, seed=0):
    """Weights far from init so that a wrong wiring shows (norm affines and statistics, biases, SSM parameters)."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if p.ndim < 2 else p[0].numel() ** -0.5))
    for m in module.modules():
        if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            m.weight.add_(1.0)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    return module


# --------------------------------------------------------------------------------------------------------
# Parameter counts


@pytest.mark.parametrize("path,total,decoder", [
    ("configs/mtmamba_plus_nyud.yml", 315_021_249, 119_820_045),
    ("configs/mtmamba_plus_pascal.yml", 343_231_606, 148_030_402),
])
def test_exact_parameter_counts(path, total, decoder):
    with torch.device("meta"):
        model = build_model(load_config(path, ["model.pretrained=false"]))
    assert count_params(model) == total
    assert count_params(model) - count_params(model.encoder) == decoder
    assert count_params(model.encoder) == 195_201_204


@pytest.mark.parametrize("c", [768, 384, 192])
def test_block_parameter_closed_forms(c):
    t = 4                                    # MODELS.md §1.8
    css2d = 8 * c * c + core_params(c)
    with torch.device("meta"):
        assert count_params(CSS2D(c)) == css2d
        assert count_params(SCTM(c, ["a", "b", "c", "d"])) == \
            2 * t * c + t * c * c + c + 9 * c * c + c + t * (2 * c + css2d)


def test_recipes():
    nyud = load_config("configs/mtmamba_plus_nyud.yml")
    pascal = load_config("configs/mtmamba_plus_pascal.yml")
    for cfg in (nyud, pascal):
        assert cfg.model.name == "mtmamba_plus" and cfg.max_iter == 40000 and cfg.optimizer == "adamw"
        assert cfg.optimizer_kwargs.weight_decay == 1e-6 and cfg.loss_kwargs.edge_w == 0.95
    assert nyud.optimizer_kwargs.lr == 2e-5 and nyud.loss_kwargs.loss_scheme == "sum"
    assert {t: nyud.loss_kwargs.loss_weights[t] for t in nyud.TASKS.NAMES} == \
        {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0}
    assert pascal.optimizer_kwargs.lr == 8e-5 and pascal.loss_kwargs.loss_scheme == "log"
    assert all(pascal.loss_kwargs.loss_weights[t] == 1.0 for t in pascal.TASKS.NAMES)


def test_mtmamba_ablation_switches_are_rejected():
    for opt, key in (("model.ctm_fusion=task_only", "ctm_fusion"), ("model.mfe=wmsa", "mfe"),
                     ("model.block=swin", "block"), ("model.ctm=false", "ctm")):
        with pytest.raises(ValueError, match=rf"model\.{key}=.*mtmamba_plus"):
            build_model(load_config("configs/mtmamba_plus_nyud.yml", [*TINY, opt]))


# --------------------------------------------------------------------------------------------------------
# Blocks against the references


def test_css2d_matches_reference():
    torch.manual_seed(0)
    m = randomize(CSS2D(8, d_state=4).double())
    a, s = torch.randn(2, 3, 5, 8, dtype=torch.float64), torch.randn(2, 3, 5, 8, dtype=torch.float64)
    p = {k: v for k, v in m.state_dict().items()}
    with torch.no_grad():
        torch.testing.assert_close(m(a, s), ref_ss2d(a, p, s))
        # the SSM parameters come from s: another shared map changes the output, the same one does not
        assert not torch.allclose(m(a, s), m(a, torch.randn_like(s)))


@pytest.mark.parametrize("mode", ["reference", "fast"])
def test_sctm_matches_reference(mode):
    torch.manual_seed(0)
    tasks = ["semseg", "depth", "edge"]
    m = randomize(SCTM(8, tasks, d_state=4).double()).eval()
    z = {t: torch.randn(1, 4, 6, 8, dtype=torch.float64) for t in tasks}
    with torch.no_grad(), exec_mode(m, mode):
        got = m(z)
    want = ref_sctm(z, dict(m.state_dict()), tasks)
    for t in tasks:
        torch.testing.assert_close(got[t], want[t])


def test_pointwise_conv_and_lite_head():
    torch.manual_seed(0)
    conv = PointwiseConv(6, 4)
    x = torch.randn(2, 3, 5, 6)
    torch.testing.assert_close(conv(x), F.conv2d(x.permute(0, 3, 1, 2), conv.weight, conv.bias).permute(0, 2, 3, 1))
    head = randomize(LiteHead(192, 5)).eval()
    assert head.conv[0].weight.shape == (96, 192, 3, 3) and isinstance(head.conv[1], nn.BatchNorm2d)
    assert LiteHead(192, 5).conv[0].weight.std().item() == pytest.approx(0.02, rel=0.05)   # trunc-normal init
    x = torch.randn(1, 4, 6, 192)
    bn = head.conv[1]
    y = F.conv2d(x.permute(0, 3, 1, 2), head.conv[0].weight, head.conv[0].bias, padding=1)
    y = F.relu(F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps))
    with torch.no_grad():
        torch.testing.assert_close(head(x), F.conv2d(y, head.project.weight, head.project.bias))


def test_tiny_model_forward_backward_and_exec_modes_agree():
    torch.manual_seed(0)
    no_drop = ["model.drop_path_rate=0", "model.encoder_drop_path_rate=0"]
    cfg = load_config("configs/mtmamba_plus_nyud.yml", [*TINY, *no_drop, "model.exec=reference"])
    model = build_model(cfg)
    stage0 = model.decoder.stages[0]
    assert [type(b).__name__ for b in stage0.task_blocks["semseg"]] == ["STM", "STM"]
    assert isinstance(model.decoder.fuse[0]["semseg"], PointwiseConv)
    image = torch.randn(1, 3, 64, 96)
    out = model(image)
    assert {t: tuple(v.shape) for t, v in out.items()} == \
        {"semseg": (1, 40, 64, 96), "depth": (1, 1, 64, 96), "normals": (1, 3, 64, 96), "edge": (1, 1, 64, 96)}
    sum(v.square().mean() for v in out.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad
    model.eval()
    with torch.no_grad(), exec_mode(model, "fast"):
        fast = model(image)
    with torch.no_grad():
        ref = model(image)
    for t in ref:
        torch.testing.assert_close(fast[t], ref[t], atol=1e-5, rtol=1e-4)


def test_drop_path_schedule():
    # MODELS.md §1.5: linspace(0.2, 0, 9) over (STM 1, STM 2, S-CTM) of the three stages, deepest first
    with torch.device("meta"):
        model = build_model(load_config("configs/mtmamba_plus_nyud.yml", TINY))
    rates = [r for s in model.decoder.stages for r in (
        s.task_blocks["depth"][0].drop_path.drop_prob, s.task_blocks["depth"][1].drop_path.drop_prob,
        getattr(s.sctm.drop_path, "drop_prob", 0.0))]
    assert rates == pytest.approx([0.2, 0.175, 0.15, 0.125, 0.1, 0.075, 0.05, 0.025, 0.0])
    assert isinstance(model.decoder.stages[2].sctm.drop_path, nn.Identity)


# --------------------------------------------------------------------------------------------------------
# main.py end to end


def test_tiny_model_trains_and_infers_through_main(tmp_path):
    write_nyud(tmp_path / "data", n_train=4, n_val=2)
    # two of the four tasks keep it fast; 64x96 crops of the 85x112 images, which are padded to 96x128 for testing
    opts = [f"db_root={tmp_path / 'data'}", f"out_dir={tmp_path / 'runs'}", *TINY, "TEST.SCALE=[96,128]",
            "task_dictionary={include_semseg: true, include_depth: true}", "max_iter=2", "trBatch=2", "valBatch=2",
            "nworkers=0", "log_interval=1", "val_interval=1000", "ckpt_interval=1000", "eval_boundary=false"]
    assert cli.main(["--run_mode", "train", "--config_exp", "configs/mtmamba_plus_nyud.yml", "--opts", *opts]) == 0
    run = tmp_path / "runs" / "mtmamba_plus_nyud"
    assert "trained to iteration 2 of 2" in (run / "log.txt").read_text()
    ckpt = torch.load(run / "checkpoints" / "last.pth", weights_only=True)
    assert ckpt["iteration"] == 2 and any(k.endswith("conv.1.running_mean") for k in ckpt["model"])
    assert cli.main(["--run_mode", "infer", "--config_exp", "configs/mtmamba_plus_nyud.yml", "--trained_model",
                     str(run / "checkpoints" / "last.pth"), "--opts", *opts[:1], f"out_dir={tmp_path / 'infer'}",
                     *opts[2:]]) == 0
    results = json.loads((tmp_path / "infer" / "mtmamba_plus_nyud" / "metrics.json").read_text())["results"]
    assert set(results) == {"semseg", "depth"} and all(math.isfinite(v) for r in results.values()
                                                                 for v in r.values())

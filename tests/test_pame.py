"""PAME / PAMM (MODELS.md §3): parameter totals, the MDHS scan, Parameter Experts and routing, load balancing,
priors, the ViT encoder taps, config validation, and tiny end-to-end runs of both layouts through main.py."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import main as cli
from data.synthetic import write_nyud, write_pascal
from losses import build_loss
from losses.multitask import LOAD_BALANCE_KEY
from models import build_model
from models.ops.scan_orders import scan_order
from models.ops.selective_scan import selective_scan_ref
from models.pame import PAMELayer, ParameterExperts, Router, cv_squared, load_balance_loss
from models.vit import ViTEncoder, resize_grid
from utils.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from utils.config import ConfigError, load_config
from utils.flops import count_params

REPO = Path(__file__).resolve().parents[1]
SWIN_TINY = ["model.backbone=custom", "model.pretrained=false",
             "model.backbone_kwargs={embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 1, 2, 2], window_size: 4}"]
VIT_TINY = ["model.backbone=vit_custom", "model.pretrained=false", "model.pame.dim=16",
            "model.backbone_kwargs={embed_dim: 32, depth: 4, num_heads: 2}"]
TASKS = ["a", "b"]
# a tiny layer on a non-power-of-two grid (the Hilbert curve is cropped from 8×8)
SMALL = dict(d_state=4, n_experts=15, expert_rank=4, topk=9, grid=(5, 7))


def small_layer(**kwargs) -> PAMELayer:
    torch.manual_seed(0)
    return PAMELayer(8, TASKS, **{**SMALL, **kwargs})


def small_inputs(layer: PAMELayer, seed: int = 1, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {t: torch.randn(2, 8, 5, 7, generator=g, dtype=dtype) for t in layer.tasks}


# --------------------------------------------------------------------------------------------------------
# Parameter counts


@pytest.mark.parametrize("config,kernel,decoder_m,total_m", [
    ("pame_swin_nyud", 1, 92.6, 287.8), ("pame_swin_nyud", 3, 96.6, 291.8), ("pame_swin_nyud", 9, 132.2, 327.4),
    ("pame_swin_pascal", 1, 115.7, 310.9), ("pame_swin_pascal", 3, 119.8, 315.0),
    ("pame_swin_pascal", 9, 156.9, 352.1),
])
def test_pame_swin_parameter_totals_match_models_md(config, kernel, decoder_m, total_m):
    """MODELS.md §3.5 table (decoder incl. MTMamba's ECR and heads; total with Swin-L), to 0.1 M."""
    cfg = load_config(REPO / "configs" / f"{config}.yml", ["model.pretrained=false", f"model.pame.pe_kernel={kernel}"])
    with torch.device("meta"):
        model = build_model(cfg)
    total, encoder = count_params(model), count_params(model.encoder)
    assert encoder == 195_201_204
    assert round((total - encoder) / 1e6, 1) == decoder_m
    assert round(total / 1e6, 1) == total_m


def pame_layer_params(d, n_tasks, n, kernel, e=15, r=4, local=True, moe=(True, True), priors=True, a_d=True):
    """Closed form of one PAME layer from the module list of MODELS.md §3.2 (Di = 2d, R = ceil(d/16))."""
    di, rank_dt, k2, q = 2 * d, math.ceil(d / 16), kernel * kernel, d // 2
    # Task Conv, GN, gate, depthwise conv, expand, reduce
    per_task = (9 * d * d + d) + 2 * d + (d * d + d) + 10 * d * local + (di * d + di) + (di * d + d)
    per_task += di * rank_dt + (rank_dt * di + di) + (di * n + di) * a_d + 2 * n * priors           # Δ, A, D, priors
    experts = e * (k2 * di * r + r + r * n + n) + (k2 * di * n + n)                                  # shared + general
    router = (di * q + q) + 2 * q + (q * q + q) + 2 * di + (di * q + q) + (2 * q * (2 * e + 1) + 2 * e + 1)
    per_task_pe = router + (k2 * di * r + r + r * n + n) + 4 * n                                     # + task path, 2 BN
    pe = [experts + n_tasks * per_task_pe if m else n_tasks * (di * n + n) for m in moe]
    return n_tasks * per_task + sum(pe)


@pytest.mark.parametrize("kwargs", [{}, {"pe_kernel": 3, "local_conv": "none"}, {"moe_b": False, "priors": "frozen"},
                                    {"moe_c": False, "priors": "none", "a_d": "constant"}])
def test_pame_layer_parameter_closed_form(kwargs):
    with torch.device("meta"):
        layer = PAMELayer(32, ["a", "b", "c"], d_state=16, **kwargs)
    expected = pame_layer_params(32, 3, 16, kwargs.get("pe_kernel", 1), local=kwargs.get("local_conv", "dw") == "dw",
                                 moe=(kwargs.get("moe_b", True), kwargs.get("moe_c", True)),
                                 priors=kwargs.get("priors", "learnable") == "learnable",
                                 a_d=kwargs.get("a_d", "learnable") == "learnable")
    assert count_params(layer) == expected


def test_vit_large_parameters():
    """timm ViT-L/16 without head or class token: 24·(12C² + 13C) + patch embed + (1 + L)·C positions (the first
    slot unused, as released) + final norm."""
    c, tokens = 1024, 28 * 36
    with torch.device("meta"):
        enc = ViTEncoder("vit_large", img_size=(448, 576))
    assert count_params(enc) == 24 * (12 * c * c + 13 * c) + (16 * 16 * 3 * c + c) + (1 + tokens) * c + 2 * c
    assert tuple(enc.vit.pos_embed.shape) == (1, 1 + tokens, c) and getattr(enc.vit, "cls_token", None) is None
    assert enc.channels == [c] * 4 and enc.strides == [16] * 4 and enc.taps == (6, 12, 18, 24)


# --------------------------------------------------------------------------------------------------------
# ViT taps


def ref_vit_taps(x, vit, taps, patch):
    """float64 reference of the released ViT (MODELS.md §3.6 item 1): patch embedding + pos_embed[:, 1:], no class
    token; pre-norm blocks (LayerNorm eps 1e-6, softmax attention, GELU MLP); taps, the last after the final norm."""
    p = {k: v.double() for k, v in vit.state_dict().items()}
    t = F.conv2d(x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=patch)
    b, c, h, w = t.shape
    t = t.flatten(2).transpose(1, 2) + p["pos_embed"][:, 1:]
    heads, outs = vit.blocks[0].attn.num_heads, []
    for i in range(len(vit.blocks)):
        def q(name):
            return p[f"blocks.{i}.{name}"]
        y = F.layer_norm(t, (c,), q("norm1.weight"), q("norm1.bias"), eps=1e-6)
        qkv = (y @ q("attn.qkv.weight").T + q("attn.qkv.bias")).view(b, h * w, 3, heads, c // heads)
        qh, kh, vh = qkv.permute(2, 0, 3, 1, 4)
        attn = torch.softmax(qh @ kh.transpose(-2, -1) / math.sqrt(c // heads), dim=-1)
        t = t + (attn @ vh).transpose(1, 2).reshape(b, h * w, c) @ q("attn.proj.weight").T + q("attn.proj.bias")
        y = F.layer_norm(t, (c,), q("norm2.weight"), q("norm2.bias"), eps=1e-6)
        t = t + F.gelu(y @ q("mlp.fc1.weight").T + q("mlp.fc1.bias")) @ q("mlp.fc2.weight").T + q("mlp.fc2.bias")
        if i + 1 in taps:
            tap = F.layer_norm(t, (c,), p["norm.weight"], p["norm.bias"], eps=1e-6) if i + 1 == len(vit.blocks) else t
            outs.append(tap.transpose(1, 2).reshape(b, c, h, w))
    return outs


def test_vit_forward_without_class_token_matches_float64_reference():
    torch.manual_seed(0)
    enc = ViTEncoder("vit_custom", img_size=(32, 48), embed_dim=16, depth=4, num_heads=2, patch_size=8).eval()
    with torch.no_grad():
        enc.vit.pos_embed.normal_()                                   # slot 0 included: it must not matter
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64)
    with torch.no_grad():
        taps = enc.double()(x)
        want = ref_vit_taps(x, enc.vit, (1, 2, 3, 4), 8)
        enc.vit.pos_embed[:, 0] += 1.0
        assert all(torch.equal(a, b) for a, b in zip(taps, enc(x)))
    assert [tuple(t.shape) for t in taps] == [(2, 16, 4, 6)] * 4
    for got, ref in zip(taps, want):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def ref_bicubic(grid, size):
    """Bicubic resize with align_corners=False, written out: cubic convolution (a = −0.75), source coordinate
    (i + 0.5)·in/out − 0.5, the 4 taps clamped to the border, one axis after the other. grid (C, h, w), float64."""
    def weights(t):
        a = -0.75
        t = abs(t)
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1 if t <= 1 else a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a

    def resize_axis(x, n_out, axis):
        n_in = x.shape[axis]
        rows = []
        for i in range(n_out):
            src = (i + 0.5) * n_in / n_out - 0.5
            base = math.floor(src)
            acc = 0
            for k in range(base - 1, base + 3):
                acc = acc + weights(src - k) * x.select(axis, min(max(k, 0), n_in - 1))
            rows.append(acc)
        return torch.stack(rows, dim=axis)

    return resize_axis(resize_axis(grid, size[0], 1), size[1], 2)


def test_position_grid_resize_is_plain_bicubic():
    """timm 0.5.4 / released resize_pos_embed: bicubic, align_corners=False, no antialiasing (timm 1.x antialiases)."""
    g = torch.Generator().manual_seed(0)
    cells = torch.randn(1, 4 * 4, 5, generator=g, dtype=torch.float64)
    for size in ((5, 7), (3, 2), (8, 8)):
        got = resize_grid(cells, (4, 4), size)
        want = ref_bicubic(cells[0].T.reshape(5, 4, 4), size).reshape(5, -1).T[None]
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_vit_loads_imagenet_weights_without_class_token(tmp_path):
    """A timm ViT file (class token, classifier, 4×4 table) loads strictly: the class token and the classifier are
    dropped, the class slot of the table is kept, its grid resized by the plain bicubic (here to 4×6)."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    src = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=4, num_heads=2, num_classes=10)
    torch.save(src.state_dict(), tmp_path / "vit.pth")
    enc = ViTEncoder("vit_custom", img_size=(32, 48), embed_dim=16, depth=4, num_heads=2, patch_size=8,
                     pretrained_path=tmp_path / "vit.pth")
    table = src.pos_embed.detach().double()
    want = torch.cat([table[:, :1], ref_bicubic(table[0, 1:].T.reshape(16, 4, 4), (4, 6)).reshape(16, -1).T[None]], 1)
    torch.testing.assert_close(enc.vit.pos_embed.detach().double(), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(enc.vit.blocks[3].mlp.fc2.weight, src.blocks[3].mlp.fc2.weight)
    assert "cls_token" not in enc.state_dict() and "vit.cls_token" not in enc.state_dict()


# --------------------------------------------------------------------------------------------------------
# The MDHS selective scan


def test_scan_equals_per_task_per_direction_reference():
    """All tasks and directions in one call == per task, per Hilbert order: permute, S6 (sequential reference),
    un-permute, sum; with task t's Δ projection, A, D and Δ bias."""
    layer = small_layer().double()
    g = torch.Generator().manual_seed(2)
    x = {t: torch.randn(2, 16, 5, 7, generator=g, dtype=torch.float64) for t in TASKS}      # Di = 16
    b_par = {t: torch.randn(2, 4, 5, 7, generator=g, dtype=torch.float64) for t in TASKS}
    c_par = {t: torch.randn(2, 4, 5, 7, generator=g, dtype=torch.float64) for t in TASKS}
    with torch.no_grad():
        got = layer.scan(x, b_par, c_par)
        for i, t in enumerate(TASKS):
            u = x[t].flatten(2)                                                   # (B, Di, L)
            dt = layer.dt_projs_weight[i] @ (layer.x_proj_weight[i] @ u)
            rows = slice(i * 16, (i + 1) * 16)
            want = torch.zeros_like(u)
            for k in range(4):
                perm, inv = scan_order(f"hilbert_rot{k}", 5, 7)
                y = selective_scan_ref(u[..., perm], dt[..., perm], -torch.exp(layer.A_logs[rows]),
                                       b_par[t].flatten(2)[..., perm], c_par[t].flatten(2)[..., perm],
                                       layer.Ds[rows], delta_bias=layer.dt_projs_bias[i], delta_softplus=True)
                want += y[..., inv]
            torch.testing.assert_close(got[t].flatten(2), want, rtol=1e-10, atol=1e-10)


def test_layer_shapes_gradients_and_dtype():
    layer = small_layer()
    out = layer(small_inputs(layer))
    assert {t: tuple(v.shape) for t, v in out.items()} == {t: (2, 8, 5, 7) for t in TASKS}
    sum(v.square().mean() for v in out.values()).backward()
    assert all(p.grad is not None for p in layer.parameters())


# --------------------------------------------------------------------------------------------------------
# Parameter Experts and routing


def test_router_keeps_topk_without_renormalising():
    torch.manual_seed(0)
    router = Router(16, n_experts=15, topk=9)
    x = torch.randn(4, 16, 5, 7)
    for mode in (router.train, router.eval):
        mode()
        gates, mix = router(x)
        assert gates.shape == (4, 15) and mix.shape == (4,)
        assert ((gates == 0).sum(dim=1) == 6).all()                           # exactly E - k zeros per image
        assert (gates.sum(dim=1) < 1).all() and (gates >= 0).all()           # softmax, then zeroed: no renormalisation
    with torch.no_grad():                                                      # eval gates: top-9 of softmax(ℓ)
        c = router.channel(x).mean(dim=(2, 3))
        logits = router.head(torch.cat([c, router.spatial(x.mean(dim=(2, 3)))], dim=1))[:, :15]
        probs = logits.softmax(dim=1)
        want = torch.where(probs >= probs.sort(dim=1).values[:, 6:7], probs, torch.zeros_like(probs))
    torch.testing.assert_close(router(x)[0], want)


def test_router_layer_norms_are_the_released_nn_layernorm():
    """float64 reference of the router (eval): channel LayerNorm with nn.LayerNorm's eps 1e-5 (MODELS.md §3.6 item 3),
    on features of variance ~1e-5, where eps 1e-6 would differ."""
    torch.manual_seed(0)
    router = Router(16, n_experts=15, topk=9, spatial="linear", grid=(5, 7)).double().eval()
    x = 3e-3 * torch.randn(2, 16, 5, 7, dtype=torch.float64)
    p = {k: v for k, v in router.state_dict().items()}

    def ln(v, prefix, eps):
        return F.layer_norm(v, v.shape[-1:], p[f"{prefix}.weight"], p[f"{prefix}.bias"], eps=eps)

    def reference(eps):
        c = F.conv2d(x, p["channel.0.weight"], p["channel.0.bias"])
        c = F.gelu(ln(c.permute(0, 2, 3, 1), "channel.1", eps)).permute(0, 3, 1, 2)
        c = F.conv2d(c, p["channel.3.weight"], p["channel.3.bias"]).mean(dim=(2, 3))
        sp = (x.flatten(2) @ p["pool.weight"].T + p["pool.bias"]).squeeze(-1)
        sp = F.gelu(ln(sp, "spatial.0", 1e-5)) @ p["spatial.2.weight"].T + p["spatial.2.bias"]
        out = torch.cat([c, sp], 1) @ p["head.weight"].T + p["head.bias"]
        probs = out[:, :15].softmax(1)
        return probs * (probs >= probs.sort(dim=1).values[:, 6:7]), out[:, 30]

    with torch.no_grad():
        (gates, mix), (want_gates, want_mix), (other, _) = router(x), reference(1e-5), reference(1e-6)
    torch.testing.assert_close(gates, want_gates, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mix, want_mix, rtol=1e-12, atol=1e-12)
    assert (gates - other).abs().max() > 1e-6


def test_routing_is_noisy_in_training_and_deterministic_in_eval():
    torch.manual_seed(0)
    pe = ParameterExperts(16, 4, TASKS, n_experts=15, rank=4, topk=9)
    x = {t: torch.randn(3, 16, 5, 7) for t in TASKS}
    pe.train()
    pe(x)
    g1 = pe.gates
    assert g1.shape == (len(TASKS) * 3, 15) and ((g1 == 0).sum(dim=1) == 6).all()   # per (image, task)
    pe(x)
    assert not torch.equal(g1, pe.gates)                                      # fresh noise every call
    pe.eval()
    with torch.no_grad():
        out1, out2 = pe(x), pe(x)
    assert pe.gates is None
    assert all(torch.equal(out1[t], out2[t]) for t in TASKS)


def test_expert_mixture_equals_the_sum_over_experts():
    """The grouped up-projection with gates on the rank-r features == Σ_e g_e · Up_e(Down_e(x))."""
    torch.manual_seed(0)
    pe = ParameterExperts(16, 4, TASKS, n_experts=15, rank=4, topk=9, kernel=3)
    with torch.no_grad():
        for p in pe.parameters():
            p.normal_()
    x = torch.randn(2, 16, 5, 7)
    gates = torch.rand(2, 15)
    with torch.no_grad():
        want = 0
        for e in range(15):
            rows = slice(4 * e, 4 * e + 4)                                      # expert e: rank 4, N = 4
            down = F.conv2d(x, pe.expert_down.weight[rows], pe.expert_down.bias[rows], padding=1)
            up = F.conv2d(down, pe.expert_up.weight[rows], pe.expert_up.bias[rows])
            want = want + gates[:, e, None, None, None] * up
        torch.testing.assert_close(pe.mixture(pe.expert_down(x), gates), want, rtol=1e-4, atol=1e-4)


def test_general_path_reads_a_detached_input():
    """With the experts and task paths silenced, B depends on x only through the general conv, whose input is
    detached: x gets no gradient, the general conv's weights do."""
    torch.manual_seed(0)
    pe = ParameterExperts(16, 4, TASKS, n_experts=15, rank=4, topk=9)
    with torch.no_grad():
        for conv in (pe.expert_down, *(p[0] for p in pe.task_paths.values())):
            conv.weight.zero_()
    x = {t: torch.randn(2, 16, 5, 7, requires_grad=True) for t in TASKS}
    out = pe(x)
    sum(v.sum() * v.detach().sum() for v in out.values()).backward()
    assert all(x[t].grad is None or not x[t].grad.any() for t in TASKS)
    assert pe.general.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------------
# Load balancing


def test_load_balance_loss_zero_for_uniform_importance_positive_otherwise():
    e = 15
    assert load_balance_loss(torch.full((4, e), 1 / e)) == 0
    # different experts per row, uniform on average (what balancing asks for)
    assert load_balance_loss(torch.eye(e)) == 0
    gates = torch.rand(6, e) * (torch.rand(6, e) > 0.4)
    imp = gates.mean(0).numpy().astype(np.float64)
    want = imp.var(ddof=1) / imp.mean() ** 2
    assert load_balance_loss(gates).item() == pytest.approx(want, rel=1e-5) and want > 0
    assert cv_squared(torch.tensor([3.0])) == 0


def test_model_returns_load_balance_in_training_only_and_loss_weights_it():
    cfg = load_config(REPO / "configs/pame_swin_nyud.yml", [*SWIN_TINY, "TRAIN.SCALE=[64,96]", "TEST.SCALE=[64,96]"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    out = model(torch.randn(2, 3, 64, 96))
    pes = [m for m in model.modules() if isinstance(m, ParameterExperts)]
    assert len(pes) == 6                                                       # B and C of 3 stages
    want = sum(float(np.var(g, ddof=1) / np.mean(g) ** 2) for g in (pe.gates.mean(0).detach().numpy() for pe in pes))
    assert out[LOAD_BALANCE_KEY].item() == pytest.approx(want, rel=1e-5)

    batch = {"semseg": torch.randint(0, 40, (2, 64, 96)), "depth": torch.rand(2, 1, 64, 96) + 0.5,
             "normals": F.normalize(torch.randn(2, 3, 64, 96), dim=1),
             "edge": (torch.rand(2, 1, 64, 96) > 0.9).float()}
    loss_fn = build_loss(cfg)
    losses = loss_fn(out, batch)
    task_part = sum(loss_fn.weights[t] * torch.log(losses[t] + 1e-8) for t in cfg.TASKS.NAMES)  # log scheme
    assert losses[LOAD_BALANCE_KEY] is out[LOAD_BALANCE_KEY]
    torch.testing.assert_close(losses["total"], task_part + 5e-4 * out[LOAD_BALANCE_KEY])
    model.eval()
    with torch.no_grad():
        assert sorted(model(torch.randn(1, 3, 64, 96))) == sorted(cfg.TASKS.NAMES)


# --------------------------------------------------------------------------------------------------------
# Parameter Priors


def test_priors_come_from_the_documented_seed():
    """Layer i of a model draws its priors from seed PRIOR_SEED + i (taps in order), whatever the global RNG."""
    from models.pame import draw_priors

    layer = small_layer(priors="frozen", prior_seed=7)
    torch.manual_seed(99)
    assert torch.equal(layer.priors, draw_priors(2, 4, 7)) and torch.equal(small_layer(prior_seed=7).priors.data,
                                                                           layer.priors)
    g = torch.Generator().manual_seed(7)
    want = torch.nn.init.trunc_normal_(torch.empty(2, 2, 4), std=0.02, generator=g)
    assert torch.equal(layer.priors, want) and 0.005 < want.std() < 0.05
    cfg = load_config(REPO / "configs/pame_vit_nyud.yml", [*VIT_TINY, "TRAIN.SCALE=[32,48]", "TEST.SCALE=[32,48]",
                                                           "model.d_state=4"])
    layers = [m for m in build_model(cfg).modules() if isinstance(m, PAMELayer)]
    assert [m.prior_seed for m in layers] == [0, 1, 2, 3]
    assert all(torch.equal(m.priors.data, draw_priors(4, 4, i)) for i, m in enumerate(layers))


def test_constant_a_and_d_are_untrained_buffers_outside_the_state_dict():
    layer = small_layer(a_d="constant")
    assert "A_logs" not in dict(layer.named_parameters()) and "A_logs" not in layer.state_dict()
    assert torch.equal(-torch.exp(layer.A_logs), -torch.arange(1.0, 5.0).repeat(2 * 16, 1))   # A = −(1..N)
    assert torch.equal(layer.Ds, torch.ones(2 * 16))
    out = layer(small_inputs(layer))
    sum(v.square().mean() for v in out.values()).backward()
    assert not layer.A_logs.requires_grad and layer.Ds.grad is None
    with torch.no_grad():                                     # the constants are the learnable layer's initial values
        assert torch.equal(small_layer().A_logs, layer.A_logs) and torch.equal(small_layer().Ds, layer.Ds)


def test_released_initialisation():
    """init: official (MODELS.md §3.6 item 6): Δ projections trunc-normal(0.02) with zero bias (softplus 0.693),
    the routers' Linear(H·W -> 1) trunc-normal(0.02) with zero bias, the heads' first conv trunc-normal(0.02) and
    their last bias N(0, 0.02); the default keeps Mamba's Δ init (softplus(bias) in [1e-3, 0.1])."""
    opts = [*VIT_TINY, "TRAIN.SCALE=[64,96]", "TEST.SCALE=[64,96]", "model.pame.router_spatial=linear"]
    torch.manual_seed(0)
    released = build_model(load_config(REPO / "configs/pame_vit_nyud.yml", [*opts, "model.pame.init=official"]))
    torch.manual_seed(0)
    default = build_model(load_config(REPO / "configs/pame_vit_nyud.yml", opts))
    layers = [m for m in released.modules() if isinstance(m, PAMELayer)]
    for m in layers:
        assert not m.dt_projs_bias.any()
        for w in (m.x_proj_weight, m.dt_projs_weight):
            assert 0.01 < w.std() < 0.03 and w.abs().max() < 0.2
    pools = [m.pool for m in released.modules() if isinstance(m, Router)]
    assert pools and all(not p.bias.any() and p.weight.std() < 0.04 for p in pools)
    for head in released.heads.values():
        assert 0.015 < head.body[0].weight.std() < 0.025 and head.project.bias.abs().max() < 0.1
    dt = F.softplus(torch.cat([m.dt_projs_bias for m in default.modules() if isinstance(m, PAMELayer)]))
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 0.1 + 1e-7
    assert torch.equal(released.encoder.vit.blocks[0].attn.qkv.weight, default.encoder.vit.blocks[0].attn.qkv.weight)


def test_backbone_dim_is_the_first_decode_input():
    """The released NYUD yml's backbone_dim 768 builds (its checkpoints load) but cannot run on the ViT's width."""
    cfg = load_config(REPO / "configs/pame_vit_nyud.yml", [*VIT_TINY, "TRAIN.SCALE=[32,48]", "TEST.SCALE=[32,48]",
                                                           "model.pame.backbone_dim=24"])
    model = build_model(cfg)
    assert model.decoder.taps[0].first_decode[0].in_channels == 24
    with pytest.raises(ValueError, match=r"first_decode takes 24 channels.*gives 32"):
        model(torch.randn(1, 3, 32, 48))
    with pytest.raises(ValueError, match="pame_vit only"):
        build_model(load_config(REPO / "configs/pame_swin_nyud.yml", [*SWIN_TINY, "model.pame.backbone_dim=24"]))


def test_priors_gradients_learnable_vs_frozen():
    for priors in ("learnable", "frozen"):
        layer = small_layer(priors=priors)
        out = layer(small_inputs(layer))
        sum(v.square().mean() for v in out.values()).backward()
        names = dict(layer.named_parameters())
        if priors == "learnable":
            assert "priors" in names and layer.priors.grad is not None and layer.priors.grad.abs().sum() > 0
        else:
            assert "priors" not in names and not layer.priors.requires_grad and layer.priors.grad is None
            assert "priors" in layer.state_dict()
    assert small_layer(priors="none").priors is None


@pytest.mark.parametrize("priors", ["learnable", "frozen"])
def test_priors_round_trip_through_a_checkpoint(priors, tmp_path):
    layer = small_layer(priors=priors)
    with torch.no_grad():
        layer.priors.normal_()
    save_checkpoint(tmp_path / "ckpt.pth", {"model": layer.state_dict()})
    torch.manual_seed(123)
    fresh = PAMELayer(8, TASKS, **SMALL, priors=priors)
    assert not torch.equal(fresh.priors, layer.priors)
    load_model_state(fresh, load_checkpoint(tmp_path / "ckpt.pth")["model"])
    assert torch.equal(fresh.priors, layer.priors)


# --------------------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize("opt,match", [
    ("model.pame.scan=peano", r"model\.pame\.scan.*'hilbert', 'z', 's'"),
    ("model.pame.priors=off", r"model\.pame\.priors.*'learnable', 'frozen', 'none'"),
    ("model.pame.router_spatial=max", r"model\.pame\.router_spatial.*'gap', 'linear'"),
    ("model.pame.local_conv=moe", r"model\.pame\.local_conv.*'dw', 'none'"),
    ("model.pame.moe_b=1", r"model\.pame\.moe_b"),
    ("model.pame.topk=16", r"model\.pame\.topk"),
    ("model.pame.pe_kernel=2", r"model\.pame\.pe_kernel"),
    ("model.pame.depth=0", r"model\.pame\.depth"),
    ("model.pame.lb_weight=-1", r"model\.pame\.lb_weight"),
    ("model.pame.a_d=fixed", r"model\.pame\.a_d.*'learnable', 'constant'"),
    ("model.pame.init=vit", r"model\.pame\.init.*'mamba', 'official'"),
    ("model.pame.backbone_dim=0", r"model\.pame\.backbone_dim"),
])
def test_bad_pame_config_values_name_key_and_choices(opt, match):
    with pytest.raises(ConfigError, match=match):
        load_config(REPO / "configs/pame_swin_nyud.yml", [opt])


def test_every_pame_config_loads():
    files = [*sorted((REPO / "configs").glob("pame_*.yml")), *sorted((REPO / "configs/ablations").glob("pame_*.yml"))]
    assert len(files) >= 14
    for f in files:
        cfg = load_config(f)
        assert cfg.model.name in ("pame_vit", "pame_swin"), f.name


def test_router_linear_is_bound_to_its_grid():
    router = Router(16, 15, 9, spatial="linear", grid=(5, 7))
    router(torch.randn(1, 16, 5, 7))
    with pytest.raises(ValueError, match="router_spatial='gap'"):
        router(torch.randn(1, 16, 6, 7))


# --------------------------------------------------------------------------------------------------------
# End to end through main.py


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pame_data")
    write_nyud(root, n_train=4, n_val=2)
    write_pascal(root, n_train=4, n_val=2)
    return root


PASCAL = ["TEST.SCALE=[128,128]"]


@pytest.mark.parametrize("config,opts", [
    ("pame_swin_nyud", [*SWIN_TINY, "TEST.SCALE=[96,128]"]),
    ("pame_swin_pascal", [*SWIN_TINY, *PASCAL]),
    ("pame_vit_nyud", [*VIT_TINY, "TEST.SCALE=[96,128]"]),
    ("pame_vit_pascal", [*VIT_TINY, *PASCAL]),
])
def test_tiny_models_train_and_infer_through_main(config, opts, data_root, tmp_path):
    common = [f"db_root={data_root}", "TRAIN.SCALE=[64,96]", "trBatch=2", "valBatch=2", "nworkers=0", "max_iter=2",
              "val_interval=1000", "log_interval=1", "eval_boundary=false", "model.d_state=4", *opts]
    path = str(REPO / "configs" / f"{config}.yml")
    assert cli.main(["--run_mode", "train", "--config_exp", path, "--opts", f"out_dir={tmp_path}/train", *common]) == 0
    ckpt = tmp_path / "train" / config / "checkpoints" / "last.pth"
    state = load_checkpoint(ckpt)
    assert state["iteration"] == 2
    assert any(k.endswith(".priors") for k in state["model"])                  # learnable priors are saved
    assert cli.main(["--run_mode", "infer", "--config_exp", path, "--trained_model", str(ckpt), "--opts",
                     f"out_dir={tmp_path}/infer", *common]) == 0
    results = json.loads((tmp_path / "infer" / config / "metrics.json").read_text())["results"]
    assert set(results) == set(load_config(path, common).TASKS.NAMES) - {"edge"}
    assert all(math.isfinite(v) for metrics in results.values() for v in metrics.values())

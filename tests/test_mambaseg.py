"""MambaSeg (models/mambaseg.py, utils/official_mambaseg.py).

Against independent float64 references written here: the TSSM channel-axis scan in both directions with both
merges, the official CrossMerge_channel quirk against an element-by-element construction, the CBAM and cross
attentions, and one DDIM. Full-size models only on the meta device: exact parameter counts, the released key
layout, strict loading of manifest-shaped state dicts and export in the official order. A tiny model: forward and
backward on every CPU backend and execution mode, gradient checkpointing, the input-size error, bf16 autocast with
fp32 scans, VMamba weights into both encoders, and released-format checkpoints through the inference loader and the
converter script.
"""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import models.ss2d as ss2d_module
from models import build_model
from models.execution import enable_grad_checkpointing, set_exec_mode
from models.mambaseg import (DDIM, ChannelAttention, CrossSpatialAttention, CrossTemporalAttention, InputSizeError,
                             SpatialAttention, TemporalSSM, channel_cross_merge, channel_cross_scan, stage_sizes)
from models.vmamba import VMambaEncoder
from scripts import convert_official_checkpoint as converter
from scripts import model_stats
from tests.test_vmamba import CPU_BACKENDS, MANIFESTS, randomize, ref_layer_norm, ref_scan_set, ref_ss2d, rel_err
from utils.checkpoint import CheckpointError, load_checkpoint, load_model_state
from utils.config import ConfigError, load_config
from utils.official import checkpoint_model_state, config_for_checkpoint
from utils.flops import count_flops
from utils.official_mambaseg import official_key_order, official_to_ours, ours_to_official

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"ddd17": REPO / "configs/mambaseg_ddd17.yml", "dsec": REPO / "configs/mambaseg_dsec.yml"}
PARAMS = {"ddd17": 97_548_766, "dsec": 256_181_331}     # the official model's sum of numel (MAMBASEG.md §4)
# tiny DDD17-like model: stage maps 7x9, 4x5, 2x3, 1x2
SIZE = (26, 34)
TINY = [f"TRAIN.SCALE=[{SIZE[0]},{SIZE[1]}]", f"TEST.SCALE=[{SIZE[0]},{SIZE[1]}]", "model.mambaseg.dims=[16,16,32,32]",
        "model.mambaseg.depths=[1,1,1,1]", "model.mambaseg.head_dim=16", "model.encoder_drop_path_rate=0"]


# --------------------------------------------------------------------------------------------------------------------
# Independent float64 references
# --------------------------------------------------------------------------------------------------------------------
def ref_ln2d(x, m):
    return ref_layer_norm(x.permute(0, 2, 3, 1), m.weight, m.bias).permute(0, 3, 1, 2)


def ref_conv1x1(conv, x):
    return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x) + conv.bias[None, :, None, None]


def ref_cross_temporal(m, img, ev):
    """Odd channels exchanged one by one; gate σ(W2·ReLU(W1·mean_hw)) of the other swapped map."""
    i2, e2 = img.clone(), ev.clone()
    for c in range(1, img.shape[1], 2):
        i2[:, c], e2[:, c] = ev[:, c], img[:, c]
    w1, w2 = m.shared_fc[1].weight[:, :, 0, 0], m.shared_fc[3].weight[:, :, 0, 0]

    def gate(x):
        return torch.sigmoid(F.relu(x.mean((2, 3)) @ w1.T) @ w2.T)[:, :, None, None]

    return i2 * gate(e2), e2 * gate(i2)


def ref_cross_spatial(m, img, ev):
    stats = torch.stack([img.mean(1), img.max(1).values, ev.mean(1), ev.max(1).values], dim=-1)   # (B, H, W, 4)
    w0, w2 = m.mlp[0].weight[:, :, 0, 0], m.mlp[2].weight[:, :, 0, 0]
    att = torch.sigmoid(F.relu(stats @ w0.T + m.mlp[0].bias) @ w2.T + m.mlp[2].bias)          # (B, H, W, 2)
    return img * att[..., 1][:, None], ev * att[..., 0][:, None]


def ref_channel_attention(m, x):
    w1, w2 = m.fc[0].weight[:, :, 0, 0], m.fc[2].weight[:, :, 0, 0]

    def mlp(v):
        return F.relu(v @ w1.T) @ w2.T

    return torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))[:, :, None, None]


def ref_spatial_attention(m, x):
    """7×7 convolution written as a sum over the 49 shifted windows of the zero-padded [mean, max] maps."""
    maps = F.pad(torch.stack([x.mean(1), x.amax(1)], dim=1), (3, 3, 3, 3))
    k, (h, w) = m.conv1.weight[0], x.shape[-2:]
    out = torch.zeros(x.shape[0], h, w, dtype=x.dtype)
    for dy in range(7):
        for dx in range(7):
            out += (maps[:, :, dy:dy + h, dx:dx + w] * k[:, dy, dx][None, :, None, None]).sum(1)
    return torch.sigmoid(out)[:, None]


def ref_official_merge(y0, y1, h, w):
    """CrossMerge_channel as the official TSSM calls it, element by element. y_k (P, D): direction k's output, in
    memory order f = p·D + j. The op views that memory as a (D·h, w) matrix, reverses each row of direction 1, adds,
    transposes to (w, D·h) and reads the result row-major as (D, h, w)."""
    d = y0.shape[1]
    flat0, flat1 = y0.reshape(-1), y1.reshape(-1)
    y = torch.zeros(d, h, w, dtype=y0.dtype)
    for j in range(d):
        for a in range(h):
            for c in range(w):
                col, row = divmod((j * h + a) * w + c, d * h)        # entry of the transposed (w, D·h) matrix
                y[j, a, c] = flat0[row * w + col] + flat1[row * w + (w - 1 - col)]
    return y


def ref_flip_merge(y0, y1, h, w):
    """Direction 1 un-flipped along the channel sequence: y[j, a, c] = y0[p, j] + y1[p, D-1-j], p = a·w + c."""
    d = y0.shape[1]
    y = torch.zeros(d, h, w, dtype=y0.dtype)
    for j in range(d):
        for a in range(h):
            for c in range(w):
                y[j, a, c] = y0[a * w + c, j] + y1[a * w + c, d - 1 - j]
    return y


def ref_tssm(m, x, merge):
    """Temporal_SSM ``vc_noz``: per position Linear C -> D, depthwise conv, SiLU; scan channel p = each position, the
    sequence runs over the D channels (direction 1 reversed); merge; LayerNorm over D; Linear D -> C."""
    b, _, h, w = x.shape
    pos = [(a, c) for a in range(h) for c in range(w)]
    out = torch.zeros_like(x)
    for bi in range(b):
        z = torch.stack([x[bi, :, a, c] for a, c in pos]) @ m.in_proj.weight.T            # (P, D)
        d = z.shape[1]
        zmap = torch.zeros(d, h, w, dtype=x.dtype)
        for p, (a, c) in enumerate(pos):
            zmap[:, a, c] = z[p]
        zmap = F.silu(F.conv2d(zmap[None], m.conv2d.weight, m.conv2d.bias, padding=1, groups=d))[0]
        seq = torch.stack([zmap[:, a, c] for a, c in pos])                                # (P, D)
        params = (m.x_proj_weight, m.dt_projs_weight, m.dt_projs_bias, m.A_logs, m.Ds)
        y0 = ref_scan_set(seq, 0, *params)
        y1 = ref_scan_set(seq[:, list(range(d - 1, -1, -1))], 1, *params)
        y = (ref_official_merge if merge == "official" else ref_flip_merge)(y0, y1, h, w)
        for a, c in pos:
            out[bi, :, a, c] = ref_layer_norm(y[:, a, c], m.out_norm.weight, m.out_norm.bias) @ m.out_proj.weight.T
    return out


def ref_ddim(m, img, ev, merge):
    img_n, ev_n = ref_ln2d(img, m.norm_i), ref_ln2d(ev, m.norm_e)
    img_t, ev_t = ref_cross_temporal(m.cca, img_n, ev_n)
    img_s, ev_s = ref_cross_spatial(m.csa, img_n, ev_n)

    def body(x, x_t, x_s, tssm, conv1, ca, ss2d, conv2, sa, conv3):
        x_c = ref_tssm(tssm, x_t, merge) + ref_conv1x1(conv1, x_t)
        x_c = x_c * ref_channel_attention(ca, x_c)
        x_s = ref_ss2d(ss2d, x_s.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) + ref_conv1x1(conv2, x_s)
        x_s = x_s * ref_spatial_attention(sa, x_s)
        return x + ref_conv1x1(conv3, torch.cat([x_c, x_s], dim=1))

    return (body(img, img_t, img_s, m.ssm_i, m.conv_i1, m.ca1, m.ss2d_i, m.conv_i2, m.sa1, m.conv_i3),
            body(ev, ev_t, ev_s, m.ssm_e, m.conv_e1, m.ca2, m.ss2d_e, m.conv_e2, m.sa2, m.conv_e3))


def check_fp64_and_fp32(module, inputs, ref):
    """The module in float64 (rel. 1e-10) and in fp32 (rel. 1e-5) against the float64 reference."""
    with torch.no_grad():
        outs = module.double()(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        refs = ref if isinstance(ref, tuple) else (ref,)
        assert all(rel_err(o, r) < 1e-10 for o, r in zip(outs, refs))
        outs = module.float()(*(x.float() for x in inputs))
        outs = outs if isinstance(outs, tuple) else (outs,)
        assert all(rel_err(o, r) < 1e-5 for o, r in zip(outs, refs))
    module.double()


# --------------------------------------------------------------------------------------------------------------------
# Layout helpers, TSSM, attentions, DDIM
# --------------------------------------------------------------------------------------------------------------------
def test_stage_sizes_are_ceil_divisions():
    assert stage_sizes((200, 346)) == [(50, 87), (25, 44), (13, 22), (7, 11)]
    assert stage_sizes((440, 640)) == [(110, 160), (55, 80), (28, 40), (14, 20)]


def test_channel_scan_and_both_merges_match_explicit_construction():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, 4, generator=g, dtype=torch.float64)
    xs = channel_cross_scan(x)
    for a in range(3):
        for c in range(4):
            assert torch.equal(xs[:, 0, a * 4 + c], x[:, :, a, c])
            assert torch.equal(xs[:, 1, a * 4 + c], x[:, range(5, -1, -1), a, c])
    y = torch.randn(2, 2, 12, 6, generator=g, dtype=torch.float64)
    for b in range(2):
        assert torch.equal(channel_cross_merge(y, 3, 4, "official")[b], ref_official_merge(y[b, 0], y[b, 1], 3, 4))
        assert torch.equal(channel_cross_merge(y, 3, 4, "flip")[b], ref_flip_merge(y[b, 0], y[b, 1], 3, 4))
    # the plain flip-back inverts the scan; the official merge does not (MAMBASEG.md §3, "the merge quirk")
    assert torch.equal(channel_cross_merge(xs, 3, 4, "flip"), 2 * x)
    assert not torch.allclose(channel_cross_merge(xs, 3, 4, "official"), 2 * x)
    with pytest.raises(ValueError, match="official"):
        channel_cross_merge(y, 3, 4, "transpose")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("merge", ["official", "flip"])
def test_tssm_matches_float64_reference(merge, backend):
    torch.manual_seed(0)
    m = randomize(TemporalSSM(8, (3, 4), merge=merge, scan_backend=backend)).double()
    assert m.x_proj_weight.shape == (2, 1 + 32, 12) and m.A_logs.shape == (24, 16)    # R = ⌈12/16⌉, N = 16
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    check_fp64_and_fp32(m, (x,), ref_tssm(m, x, merge))
    with pytest.raises(InputSizeError, match="built for 3×4 maps, got 4×3"):
        m(torch.randn(1, 8, 4, 3, dtype=torch.float64))


def test_cbam_and_cross_attentions_match_references():
    torch.manual_seed(0)
    img, ev = torch.randn(2, 32, 5, 6, dtype=torch.float64), torch.randn(2, 32, 5, 6, dtype=torch.float64)
    ca, sa = randomize(ChannelAttention(32)).double(), randomize(SpatialAttention()).double()
    check_fp64_and_fp32(ca, (img,), ref_channel_attention(ca, img))
    check_fp64_and_fp32(sa, (img,), ref_spatial_attention(sa, img))
    cta, csa = randomize(CrossTemporalAttention(32)).double(), randomize(CrossSpatialAttention()).double()
    check_fp64_and_fp32(cta, (img, ev), ref_cross_temporal(cta, img, ev))
    check_fp64_and_fp32(csa, (img, ev), ref_cross_spatial(csa, img, ev))


def test_ddim_matches_float64_reference():
    torch.manual_seed(0)
    m = randomize(DDIM(16, (3, 4))).double()
    img, ev = torch.randn(2, 16, 3, 4, dtype=torch.float64), torch.randn(2, 16, 3, 4, dtype=torch.float64)
    check_fp64_and_fp32(m, (img, ev), ref_ddim(m, img, ev, "official"))


# --------------------------------------------------------------------------------------------------------------------
# Full size on the meta device: counts, layout, released state dicts
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_models():
    models = {}
    for name, path in CONFIGS.items():
        with torch.device("meta"):
            models[name] = build_model(load_config(path, ["model.pretrained=false"]))
    return models


@pytest.mark.parametrize("name", ["ddd17", "dsec"])
def test_full_size_parameter_count_and_keys(full_models, name):
    model, manifest = full_models[name], MANIFESTS[f"mambaseg_{name}"]
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name] == manifest["param_total"]
    sd = model.state_dict()
    assert [[k, list(v.shape)] for k, v in sd.items()] != manifest["entries"]      # the SSM modules' order differs
    assert [[k, list(sd[k].shape)] for k in official_key_order(model)] == manifest["entries"]


@pytest.fixture(scope="module")
def random_pool():
    """One random pool, large enough for the largest released tensor (DSEC TSSM x_proj, 2·1132·17600)."""
    n = max(math.prod(s) for m in ("mambaseg_ddd17", "mambaseg_dsec") for _, s in MANIFESTS[m]["entries"])
    return torch.randn(n + 1000, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["ddd17", "dsec"])
def test_released_state_dict_loads_strictly_and_exports_in_official_order(full_models, random_pool, name):
    manifest = MANIFESTS[f"mambaseg_{name}"]
    sd = {}
    for i, (key, shape) in enumerate(manifest["entries"]):                  # views of the pool, different offsets
        if key in manifest["non_float32"]:
            sd[key] = torch.tensor(1234 + i)
        else:
            sd[key] = random_pool[i:i + math.prod(shape)].view(shape)
    model = full_models[name]
    ours = official_to_ours({"epoch": 41, "state_dict": sd}, model)
    assert list(ours) == list(model.state_dict())
    model.load_state_dict(ours, strict=True, assign=True)                  # a real strict load, no copies
    exported = ours_to_official(model.state_dict(), model, epoch=41)
    assert exported["epoch"] == 41 and list(exported["state_dict"]) == [k for k, _ in manifest["entries"]]
    assert all(torch.equal(exported["state_dict"][k], v) and exported["state_dict"][k].dtype == v.dtype
               for k, v in sd.items())


def test_model_stats_prints_the_exact_counts(capsys):
    model_stats.main(["--params-only", "--config_exp", str(CONFIGS["ddd17"]), str(CONFIGS["dsec"])])
    out = capsys.readouterr().out
    assert "params: 97548766\nparams_M: 97.54" in out and "params: 256181331\nparams_M: 256.18" in out


# --------------------------------------------------------------------------------------------------------------------
# Tiny model
# --------------------------------------------------------------------------------------------------------------------
def tiny_cfg(*opts, config="ddd17"):
    return load_config(CONFIGS[config], [*TINY, *opts])


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = randomize(build_model(tiny_cfg()), seed=3)
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randn(2, 1, *SIZE, generator=g), torch.randn(2, 10, *SIZE, generator=g))
    return model, inputs


def forward_backward(model, inputs):
    model.zero_grad()
    out = model(*inputs)["semseg"]
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def set_scan_backend(model, backend):
    for m in model.modules():
        if hasattr(m, "scan_backend"):
            m.scan_backend = backend


def test_tiny_forward_backward_on_every_backend_and_mode(tiny):
    model, inputs = tiny
    assert type(model).inputs == ("image", "events")
    model.eval()                     # BatchNorm on running statistics: the biases before it get gradients
    results = {}
    for backend in CPU_BACKENDS:
        for mode in ("fast", "reference"):
            set_exec_mode(model, mode)
            set_scan_backend(model, backend)
            results[backend, mode] = forward_backward(model, inputs)
    set_exec_mode(model, "fast")
    set_scan_backend(model, "auto")
    out, grads = results["torch", "fast"]
    assert out.shape == (2, 6, *SIZE) and torch.isfinite(out).all()
    assert all(torch.isfinite(g).all() for g in grads.values())
    # every parameter gets a gradient, except where a tiny CBAM MLP (C/16 = 1 or 2 hidden units) has no active ReLU
    assert all(g.abs().sum() > 0 for n, g in grads.items() if ".ca" not in n)
    flat = torch.cat([g.flatten() for g in grads.values()]).double()
    for other, other_grads in results.values():
        assert rel_err(other, out.double()) < 1e-5
        assert rel_err(torch.cat([g.flatten() for g in other_grads.values()]), flat) < 1e-5


def test_grad_ckpt_gives_the_same_gradients(tiny):
    model, inputs = tiny
    model.eval()
    out, grads = forward_backward(model, inputs)
    enable_grad_checkpointing(model)                                         # model.grad_ckpt: per stage
    try:
        out_ckpt, grads_ckpt = forward_backward(model, inputs)
    finally:
        enable_grad_checkpointing(model, False)
    assert torch.equal(out, out_ckpt)
    assert all(torch.allclose(grads_ckpt[n], g, rtol=1e-5, atol=1e-7) for n, g in grads.items())


def test_wrong_input_size_or_channels_is_a_named_error(tiny):
    model, (image, events) = tiny
    with pytest.raises(InputSizeError, match=r"built for 26×34 inputs \(TRAIN.SCALE\) but got image of 32×34"):
        model(torch.zeros(2, 1, 32, 34), torch.zeros(2, 10, 32, 34))
    with pytest.raises(InputSizeError, match="events of 26×30"):
        model(image, events[..., :30])
    with pytest.raises(ValueError, match=r"image must be \(B, 1, H, W\) \(model.mambaseg.image_channels\)"):
        model(events, events)
    with pytest.raises(ValueError, match=r"built for \(26, 34\) inputs; FLOPs at \(32, 34\)"):
        count_flops(model, (32, 34))


def test_bf16_autocast_is_finite_with_fp32_scans(tiny, monkeypatch):
    model, inputs = tiny
    model.eval()
    dtypes = []
    scan = ss2d_module.selective_scan

    def recording_scan(u, delta, *args, **kwargs):
        y = scan(u, delta, *args, **kwargs)
        dtypes.extend([u.dtype, delta.dtype, y.dtype])
        return y

    monkeypatch.setattr(ss2d_module, "selective_scan", recording_scan)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*inputs)["semseg"]
    assert torch.isfinite(out).all()
    # per stage: the 2 encoder blocks, 2 TSSMs and 2 SS2Ds of the DDIM; u, delta and the output
    assert len(dtypes) == 3 * 4 * (2 + 2 + 2) and set(dtypes) == {torch.float32}


def test_vmamba_weights_load_into_both_encoders(tmp_path):
    source = randomize(VMambaEncoder(3, dims=(16, 16, 32, 32), depths=(1, 1, 1, 1)), seed=5)
    sd = {k: v for k, v in source.state_dict().items() if not k.startswith("outnorm")}
    torch.save({"model": sd | {"classifier.head.weight": torch.zeros(3, 32)}}, tmp_path / "vssm.pth")
    for config, channels in (("ddd17", 1), ("dsec", 3)):
        torch.manual_seed(0)
        model = build_model(tiny_cfg(f"model.pretrained_path={tmp_path / 'vssm.pth'}", config=config))
        assert model.encoder_img.in_chans == channels
        for encoder, keeps_stem in ((model.encoder_img, channels == 3), (model.encoder_ev, False)):
            for k, v in encoder.state_dict().items():
                loaded = k in sd and (keeps_stem or not k.startswith("patch_embed."))
                assert (k in sd and torch.equal(v, sd[k])) == loaded, k


def test_released_format_through_the_inference_loader_and_the_converter(tiny, tmp_path):
    model, inputs = tiny
    model.eval()
    official = ours_to_official(model.state_dict(), model, epoch=7)
    assert list(official["state_dict"]) == official_key_order(model)
    torch.save(official, tmp_path / "mambaseg.pth")

    # main.py --run_mode infer: config_for_checkpoint, build_model, load_model_state(checkpoint_model_state(...))
    checkpoint = load_checkpoint(tmp_path / "mambaseg.pth")
    cfg = config_for_checkpoint(tiny_cfg(), checkpoint)
    fresh = build_model(cfg).eval()
    load_model_state(fresh, checkpoint_model_state(checkpoint, fresh))
    with torch.no_grad():
        assert torch.equal(fresh(*inputs)["semseg"], model(*inputs)["semseg"])
    with pytest.raises(CheckpointError, match="model.name='mtmamba'"):
        config_for_checkpoint(load_config(REPO / "configs/mtmamba_nyud.yml"), checkpoint)
    with pytest.raises(CheckpointError, match="predicts 6 classes, the config's dataset DSEC has 11"):
        config_for_checkpoint(tiny_cfg(config="dsec"), checkpoint)

    # the converter, both ways, back to the same file contents
    opts = ["--config_exp", str(CONFIGS["ddd17"]), "--opts", *TINY]
    converter.main([str(tmp_path / "mambaseg.pth"), str(tmp_path / "ours.pth"), *opts])
    ours = load_checkpoint(tmp_path / "ours.pth")
    assert ours["epoch"] == 7 and list(ours["model"]) == list(model.state_dict())
    converter.main(["--to-official", str(tmp_path / "ours.pth"), str(tmp_path / "back.pth"), *opts])
    back = load_checkpoint(tmp_path / "back.pth")
    assert back["epoch"] == 7 and list(back["state_dict"]) == list(official["state_dict"])
    assert all(torch.equal(back["state_dict"][k], v) for k, v in official["state_dict"].items())


def test_strict_loading_lists_every_problem(tiny):
    model, _ = tiny
    sd = dict(ours_to_official(model.state_dict(), model)["state_dict"])
    del sd["ccbs.0.ssm_i.Ds"]
    sd["ccbs.0.extra.weight"] = torch.zeros(1)
    sd["decoder.linear_pred.weight"] = torch.zeros(11, 16, 1, 1)
    with pytest.raises(CheckpointError) as err:
        official_to_ours({"epoch": 0, "state_dict": sd}, model)
    text = str(err.value)
    assert "1 missing, 1 unexpected, 1 mismatched" in text and "missing: ccbs.0.ssm_i.Ds" in text
    assert "unexpected: ccbs.0.extra.weight" in text
    assert "mismatch: decoder.linear_pred.weight: expected (6, 16, 1, 1), got (11, 16, 1, 1)" in text


def test_configs_and_their_validation():
    for name in CONFIGS:
        cfg = load_config(CONFIGS[name])
        assert cfg.model.name == "mambaseg" and cfg.TASKS.NAMES == ["semseg"]
    assert load_config(CONFIGS["ddd17"]).TRAIN.SCALE == [200, 346]
    assert load_config(CONFIGS["dsec"]).model.mambaseg.image_channels == 3
    for opt, message in (("model.mambaseg.merge=swap", r"model.mambaseg.merge='swap' is not valid; valid: "
                                                       r"\['official', 'flip'\]"),
                         ("model.mambaseg.dims=[16,24,32,48]", "multiples of 16"),
                         ("model.mambaseg.depths=[2,2,8]", "list of 4 positive integers"),
                         ("TEST.SCALE=[200,352]", "TEST.SCALE=.* must equal TRAIN.SCALE")):
        with pytest.raises(ConfigError, match=message):
            load_config(CONFIGS["ddd17"], [opt])
    assert load_config(CONFIGS["ddd17"]).model.pretrained is True          # VMamba-T's ImageNet file is required

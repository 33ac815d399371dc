"""MTMamba model: exact parameter counts (MODELS.md §1.6), block shapes and layouts, and a CPU train step."""
import math

import pytest
import torch
import torch.nn as nn

from models import build_model
from models.blocks import CTM, STM, PatchExpand
from models.mtmamba import drop_path_schedule
from models.ss2d import SS2D
from utils.config import ConfigError, load_config
from utils.flops import count_params

TINY = ["model.pretrained=false", "model.backbone=custom", "TRAIN.SCALE=[64,96]",
        "model.backbone_kwargs={embed_dim: 24, depths: [2, 2, 2, 2], num_heads: [1, 2, 3, 6], window_size: 4}"]


def build_on_meta(path, *opts):
    cfg = load_config(path, ["model.pretrained=false", *opts])
    with torch.device("meta"):
        return build_model(cfg)


def decoder_params(model):
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("encoder."))


def stm_params(c):   # MODELS.md §1.3
    return 6 * c * c + 16 * c * math.ceil(c / 16) + 426 * c


def core_params(c):  # MODELS.md §0.3: dwconv + x_proj + dt_proj + A + D + out_norm
    return 16 * c * math.ceil(c / 16) + 424 * c


@pytest.mark.parametrize("path,total,decoder", [
    ("configs/mtmamba_nyud.yml", 307_999_137, 112_797_933),
    ("configs/mtmamba_pascal.yml", 335_858_326, 140_657_122),
])
def test_exact_parameter_counts(path, total, decoder):
    model = build_on_meta(path)
    assert count_params(model) == total
    assert decoder_params(model) == decoder
    assert count_params(model.encoder) == 195_201_204


@pytest.mark.parametrize("c", [768, 384, 192])
def test_block_parameter_closed_forms(c):
    with torch.device("meta"):
        assert count_params(STM(c)) == stm_params(c)
        ctm = CTM(c, ["a", "b", "c", "d"])
    assert count_params(ctm) == 8 * 4 * c * c + 4 * 4 * c + 5 * core_params(c)
    assert [stm_params(c) for c in (768, 384, 192)] == [4_455_936, 1_195_776, 339_840]


def test_ss2d_initialisation():
    torch.manual_seed(0)
    m = SS2D(32, d_state=16)
    assert m.dt_rank == 2 and m.d_inner == 64
    assert m.x_proj_weight.shape == (4, 2 + 32, 64) and m.dt_projs_weight.shape == (4, 64, 2)
    torch.testing.assert_close(-torch.exp(m.A_logs), -torch.arange(1, 17.).expand(256, 16))
    assert torch.equal(m.Ds, torch.ones(256))
    dt = torch.nn.functional.softplus(m.dt_projs_bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert m.dt_projs_weight.abs().max() <= 2 ** -0.5


def test_ss2d_equals_per_direction_loop():
    """SS2D's fused 4-direction scan equals four separate scans over explicitly laid-out sequences."""
    from models.ops.selective_scan import selective_scan_ref

    torch.manual_seed(0)
    m = SS2D(8, d_state=4, gate=False, out_proj=False).double()
    h, w = 3, 5
    x = torch.randn(2, m.d_inner, h, w, dtype=torch.float64)
    got = m.scan(x)                                                             # (B, H, W, D)
    seqs = [x.flatten(2), x.transpose(2, 3).flatten(2)]
    seqs += [s.flip(-1) for s in seqs]
    total = torch.zeros(2, m.d_inner, h * w, dtype=torch.float64)
    for k, s in enumerate(seqs):
        proj = torch.einsum("bdl,cd->bcl", s, m.x_proj_weight[k])
        dt, b, c = proj.split([m.dt_rank, m.d_state, m.d_state], dim=1)
        sl = slice(k * m.d_inner, (k + 1) * m.d_inner)
        y = selective_scan_ref(s, torch.einsum("brl,dr->bdl", dt, m.dt_projs_weight[k]), -torch.exp(m.A_logs[sl]),
                               b, c, m.Ds[sl], delta_bias=m.dt_projs_bias[k], delta_softplus=True)
        if k >= 2:
            y = y.flip(-1)
        if k % 2:
            y = y.view(2, -1, w, h).transpose(2, 3).reshape(2, -1, h * w)
        total += y
    torch.testing.assert_close(got, total.view(2, -1, h, w).permute(0, 2, 3, 1))


def test_patch_expand_channel_layout():
    """The expanded vector is read as [p1][p2][c]: channel (p1·2 + p2)·C + c lands at (2i + p1, 2j + p2)."""
    pe = PatchExpand(8, scale=2)
    nn.init.eye_(pe.expand.weight)                       # 8 -> 16 channels, identity on the first 8
    nn.init.ones_(pe.norm.weight), nn.init.zeros_(pe.norm.bias)
    pe.norm = nn.Identity()
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).view(1, 2, 3, 8)
    y = pe(x)
    assert y.shape == (1, 4, 6, 4)
    for p1 in range(2):
        for p2 in range(2):
            want = torch.cat([x, torch.zeros_like(x)], -1)[..., (p1 * 2 + p2) * 4:(p1 * 2 + p2 + 1) * 4]
            assert torch.equal(y[:, p1::2, p2::2], want)
    assert PatchExpand(192, scale=4).expand.weight.shape == (16 * 192, 192)


def test_drop_path_schedule():
    rates = drop_path_schedule(0.2, 3, 3)
    assert [[round(r, 4) for r in s] for s in rates] == [[0.2, 0.175, 0.15], [0.125, 0.1, 0.075], [0.05, 0.025, 0.0]]
    model = build_on_meta("configs/mtmamba_nyud.yml")
    stage0 = model.decoder.stages[0]
    assert stage0.task_blocks["semseg"][0].drop_path.drop_prob == pytest.approx(0.2)
    assert stage0.ctm.drop_path.drop_prob == pytest.approx(0.15)
    assert isinstance(model.decoder.stages[2].ctm.drop_path, nn.Identity)


def test_task_order_follows_the_dataset_not_the_yaml():
    cfg = load_config("configs/mtmamba_pascal.yml")
    assert cfg.TASKS.NAMES == ["semseg", "human_parts", "sal", "normals", "edge"]
    assert cfg.TASKS.NUM_OUTPUT == {"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1}


def test_bad_config_values_name_the_key_and_choices():
    with pytest.raises(ConfigError, match=r"model.swin_pad_mode.*\['timm', 'mmseg'\]"):
        load_config("configs/mtmamba_nyud.yml", ["model.swin_pad_mode=caffe"])
    with pytest.raises(ConfigError, match="human_parts.*NYUD"):
        load_config("configs/mtmamba_nyud.yml", ["task_dictionary.include_human_parts=true"])
    with pytest.raises(ConfigError, match=r"model\.name='nope' is not a registered model; valid: \[.*'mtmamba'"):
        load_config("configs/mtmamba_nyud.yml", ["model.name=nope"])


def test_tiny_mtmamba_forward_backward_on_cpu():
    torch.manual_seed(0)
    # no stochastic depth, so that no residual branch is dropped for the whole batch
    cfg = load_config("configs/mtmamba_nyud.yml", [*TINY, "model.drop_path_rate=0", "model.encoder_drop_path_rate=0"])
    model = build_model(cfg).train()
    image = torch.randn(2, 3, 64, 96)
    out = model(image)
    assert {t: tuple(v.shape) for t, v in out.items()} == {
        "semseg": (2, 40, 64, 96), "depth": (2, 1, 64, 96), "normals": (2, 3, 64, 96), "edge": (2, 1, 64, 96)}
    assert all(torch.isfinite(v).all() for v in out.values())
    sum(v.square().mean() for v in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith(("A_logs", "Ds")))

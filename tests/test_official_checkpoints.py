"""The released MTMamba / MTMamba++ checkpoints (official format) against our models.

For each of the four released files, a state dict with exactly its keys, order and shapes (from the reference
manifests in tests/assets, random values) converts and loads strictly into our full-size model, and exports back
to the same keys and equal tensors. On tiny models: the backbone and the PatchMerging permutation after import
against independent mmseg references, whole-model round trips, the strict errors, main.py inference straight from
an official file and the converter script both ways.
"""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import main as cli
from data.synthetic import write_nyud
from models import build_model
from scripts import convert_official_checkpoint as converter
from tests.test_encoders import TINY as TINY_SWIN
from tests.test_encoders import randomize as randomize_swin
from tests.test_encoders import ref_mmseg_swin, ref_patch_merging, ref_relative_position_index
from tests.test_mtmamba_plus import ref_ss2d, sub
from utils.checkpoint import CheckpointError
from models.registry import MODEL_INPUT_MULTIPLE
from utils.config import config_to_dict, load_config
from utils.official import (
    config_for_checkpoint,
    is_official_checkpoint,
    official_layout,
    official_model_name,
    official_tasks,
    official_to_ours,
    ours_to_official,
)

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = json.loads((REPO / "tests/assets/official_state_dict_manifests.json").read_text())["models"]
NAMES = list(MANIFESTS)          # mtmamba_nyud, mtmamba_pascal, mtmamba_plus_nyud, mtmamba_plus_pascal
INDEX = "relative_position_index"
# tiny models: the Swin of tests/test_encoders (embed 32, window 4), decoder widths 128 / 64 / 32
TINY = ["model.pretrained=false", "model.backbone=custom", "TRAIN.SCALE=[96,128]", "TEST.SCALE=[96,128]",
        "model.swin_pad_mode=mmseg", "model.drop_path_rate=0", "model.encoder_drop_path_rate=0",
        "model.backbone_kwargs={embed_dim: %d, depths: %s, num_heads: %s, window_size: %d}" % (
            TINY_SWIN["embed_dim"], list(TINY_SWIN["depths"]), list(TINY_SWIN["num_heads"]), TINY_SWIN["window_size"])]


def full_model(name):
    """The full-size model of a released checkpoint, on the meta device (no memory)."""
    with torch.device("meta"):
        return build_model(load_config(REPO / f"configs/{name}.yml", ["model.pretrained=false"]))


def tiny_model(config, seed=0, opts=()):
    torch.manual_seed(seed)
    return build_model(load_config(REPO / config, [*TINY, *opts])).eval()


def random_official_state_dict(name, seed=0):
    """Exactly the keys, order, shapes and dtypes of a released file (``name`` of a manifest, or a manifest), with
    random values.

    Every float tensor is a view of one random pool at its own offset (different tensors hold different values at
    no memory cost); the relative-position indices are mmseg's (its formula in tests/test_encoders), the BatchNorm
    counters random integers.
    """
    manifest = MANIFESTS[name] if isinstance(name, str) else name
    entries, ints = manifest["entries"], manifest["non_float32"]
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(max(math.prod(s) for _, s in entries) + len(entries), generator=g)
    offsets = torch.randperm(len(entries), generator=g).tolist()
    sd = {}
    for (key, shape), offset in zip(entries, offsets):
        if key.endswith(INDEX):
            sd[key] = ref_relative_position_index(math.isqrt(shape[0]))
        elif key in ints:
            assert ints[key] == "int64"
            sd[key] = torch.randint(0, 10**6, shape, generator=g)
        else:
            sd[key] = pool[offset:offset + math.prod(shape)].view(shape)
    return sd


@torch.no_grad()
def randomize(model, seed=0):
    """Random weights everywhere, far from init (encoder as in tests/test_encoders, BatchNorm statistics too)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim < 2 else p[0].numel() ** -0.5))
    randomize_swin(model.encoder, seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    return model


# --------------------------------------------------------------------------------------------------------
# Independent reference: the official decoders and heads, functionally, on an official state dict


def ref_layer_norm(x, p):
    return F.layer_norm(x, x.shape[-1:], p["weight"], p["bias"])


def ref_patch_expand(x, p, scale):
    """Swin-Unet PatchExpand (MODELS.md §1.2) on NHWC maps: Linear, the vector read as [p1][p2][c], LayerNorm."""
    b, h, w, _ = x.shape
    y = F.linear(x, p["expand.weight"])
    c = y.shape[-1] // scale ** 2
    y = y.view(b, h, w, scale, scale, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h * scale, w * scale, c)
    return ref_layer_norm(y, sub(p, "norm."))


def ref_ctm(z, p, tasks):
    """MTMamba's CTM (MODELS.md §1.4, the code's gate convention): the sigmoid gate in_proj.<t> weighs op_share."""
    shared = ref_ss2d(ref_layer_norm(torch.cat([z[t] for t in tasks], -1), sub(p, "norm_share.")), sub(p, "op_share."))
    out = {}
    for t in tasks:
        a = ref_layer_norm(z[t], sub(p, f"norm.{t}."))
        g = torch.sigmoid(F.linear(a, p[f"in_proj.{t}.weight"]))
        out[t] = z[t] + F.linear(g * shared + (1 - g) * ref_ss2d(a, sub(p, f"op.{t}.")), p[f"out_proj.{t}.weight"])
    return out


def ref_sctm(z, p, tasks):
    """MTMamba++'s S-CTM (MODELS.md §1.8): conv_share.0 (1x1), conv_share.1 (3x3), then CSS2D op.<t> per task."""
    cat = ref_layer_norm(torch.cat([z[t] for t in tasks], -1), sub(p, "norm_share.")).permute(0, 3, 1, 2)
    s = F.conv2d(F.conv2d(cat, p["conv_share.0.weight"], p["conv_share.0.bias"]), p["conv_share.1.weight"],
                 p["conv_share.1.bias"], padding=1).permute(0, 2, 3, 1)
    return {t: z[t] + ref_ss2d(ref_layer_norm(z[t], sub(p, f"norm.{t}.")), sub(p, f"op.{t}."), s) for t in tasks}


def ref_official_decode(features, sd, tasks, size):
    """The official decoder and heads (MODELS.md §1.1-§1.8) on an official state dict without ``module.``."""
    plus = any(k.startswith("block_ctm.") for k in sd)
    x = {t: features[-1] for t in tasks}                                           # NCHW
    for s in range(len(features) - 1):
        skip = features[-2 - s].permute(0, 2, 3, 1)
        z = {}
        for t in tasks:
            y = torch.cat([ref_patch_expand(x[t].permute(0, 2, 3, 1), sub(sd, f"expand_layers.{t}_{s}."), 2), skip], -1)
            y = F.linear(y, sd[f"concat_layers.{t}_{s}.weight"].flatten(1), sd[f"concat_layers.{t}_{s}.bias"])
            for blk in ([f"block_stm.{t}_{s}.0.", f"block_stm.{t}_{s}.1."] if plus else
                        [f"block_1.{t}_{s}.", f"block_2.{t}_{s}."]):
                y = y + ref_ss2d(ref_layer_norm(y, sub(sd, blk + "norm.")), sub(sd, blk + "op."))
            z[t] = y
        z = ref_sctm(z, sub(sd, f"block_ctm.{s}.0."), tasks) if plus else ref_ctm(z, sub(sd, f"block_3.{s}."), tasks)
        x = {t: v.permute(0, 3, 1, 2) for t, v in z.items()}
    out = {}
    for t in tasks:
        e = sub(sd, f"final_expand.{t}.")
        if plus:    # LiteHead, BatchNorm in eval mode
            y = F.conv2d(x[t], e["0.weight"], e["0.bias"], padding=1)
            y = F.relu(F.batch_norm(y, e["1.running_mean"], e["1.running_var"], e["1.weight"], e["1.bias"]))
        else:       # FinalPatchExpand_X4
            y = ref_patch_expand(x[t].permute(0, 2, 3, 1), e, 4).permute(0, 3, 1, 2)
        y = F.conv2d(y, sd[f"final_project.{t}.weight"], sd[f"final_project.{t}.bias"])
        out[t] = F.interpolate(y, size, mode="bilinear", align_corners=False)
    return out


# --------------------------------------------------------------------------------------------------------
# The four released files, full size


@pytest.mark.parametrize("name", NAMES)
def test_released_layout_converts_strictly_and_exports_back(name):
    model = full_model(name)
    assert sum(p.numel() for p in model.parameters()) == MANIFESTS[name]["param_total"]

    # keys: the official layout of our model is the released key list, each of our keys exactly once, same shapes
    layout = official_layout(model)
    entries = MANIFESTS[name]["entries"]
    assert ["module." + off for off, _ in layout] == [k for k, _ in entries]          # same keys, same order
    ours = [k for off, k in layout if not off.endswith(INDEX)]
    assert len(ours) == len(set(ours)) and set(ours) == set(model.state_dict())
    own = dict(model.state_dict()) | dict(model.named_buffers())
    assert [list(own[k].shape) for _, k in layout] == [s for _, s in entries]
    # the index buffers (persistent in mmseg) pair with timm's non-persistent ones: 24 Swin-L blocks
    index = [k for off, k in layout if off.endswith(INDEX)]
    assert len(index) == 24 and all(k.endswith(INDEX) and k not in model.state_dict() for k in index)

    # values: a random state dict in the released layout loads strictly and exports back to equal tensors
    official = random_official_state_dict(name)
    checkpoint = {"model": official}
    assert is_official_checkpoint(checkpoint)
    assert official_model_name(checkpoint) == ("mtmamba_plus" if "plus" in name else "mtmamba")
    assert official_tasks(checkpoint) == MANIFESTS[name]["tasks"]
    converted = official_to_ours(checkpoint, model)
    assert list(converted) == list(model.state_dict())
    model.load_state_dict(converted, strict=True, assign=True)   # the meta model now holds the converted tensors
    back = ours_to_official(model.state_dict(), model)["model"]
    assert list(back) == list(official)                          # byte-equal keys, in order
    for key, value in official.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


# --------------------------------------------------------------------------------------------------------
# Tiny models: numerics of the imported backbone


def test_patch_merging_permutation_through_import():
    # mmseg merges the 2x2 neighbours with nn.Unfold (channel-major); our (timm) PatchMerging, loaded from an
    # official checkpoint, must compute the same on the same mmseg-layout weights
    model = tiny_model("configs/mtmamba_nyud.yml")
    official = ours_to_official(model.state_dict(), model)["model"]
    c = TINY_SWIN["embed_dim"]
    mmseg = {"stages.0.downsample.norm.weight": 1 + 0.3 * torch.randn(4 * c),
             "stages.0.downsample.norm.bias": 0.3 * torch.randn(4 * c),
             "stages.0.downsample.reduction.weight": torch.randn(2 * c, 4 * c) / (4 * c) ** 0.5}
    official |= {f"module.backbone.{k}": v for k, v in mmseg.items()}
    model.load_state_dict(official_to_ours(official, model), strict=True)
    merge = model.encoder.swin.layers[1].downsample
    x = torch.randn(2, 6, 10, c)
    with torch.no_grad():
        torch.testing.assert_close(merge(x), ref_patch_merging(x, mmseg, "stages.0.downsample."))
    assert not torch.equal(merge.norm.weight, mmseg["stages.0.downsample.norm.weight"])   # permuted on import


def test_imported_backbone_matches_mmseg_reference_at_non_window_multiples(monkeypatch):
    # 164x204: stage sides 41x51, 21x26, 11x13, 6x7, none a multiple of the window 4 (mmseg pads, then shifts);
    # only the encoder runs, so the decoder's multiple-of-32 input rule is lifted
    monkeypatch.setitem(MODEL_INPUT_MULTIPLE, "mtmamba_plus", 1)
    opts = ["TRAIN.SCALE=[164,204]", "TEST.SCALE=[164,204]"]
    source = randomize(tiny_model("configs/mtmamba_plus_nyud.yml", 0, opts))
    official = ours_to_official(source.state_dict(), source)["model"]
    mmseg = {k.removeprefix("module.backbone."): v for k, v in official.items() if k.startswith("module.backbone.")}
    target = tiny_model("configs/mtmamba_plus_nyud.yml", 1, opts)
    target.load_state_dict(official_to_ours(official, target), strict=True)
    image = torch.randn(1, 3, 164, 204)
    with torch.no_grad():
        got = target.encoder(image)
        want = ref_mmseg_swin(image, mmseg, TINY_SWIN["depths"], TINY_SWIN["num_heads"], TINY_SWIN["window_size"])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("config", ["configs/mtmamba_nyud.yml", "configs/mtmamba_plus_pascal.yml"])
def test_tiny_model_round_trip_gives_the_same_outputs(config):
    opts = ["TRAIN.SCALE=[64,64]", "TEST.SCALE=[64,64]"]
    source = randomize(tiny_model(config, 0, opts))
    official = ours_to_official(source.state_dict(), source)
    target = tiny_model(config, 1, opts)
    target.load_state_dict(official_to_ours(official, target), strict=True)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want, got = source(image), target(image)
    for t in want:
        assert torch.equal(got[t], want[t]), t


@pytest.mark.parametrize("config,tasks", [
    ("configs/mtmamba_nyud.yml", "{include_semseg: true, include_depth: true, include_edge: true}"),
    ("configs/mtmamba_plus_pascal.yml", "{include_human_parts: true, include_sal: true, include_normals: true}"),
])
def test_exported_decoder_computes_the_official_forward(config, tasks):
    # our decoder and heads equal the official ones computed from the exported names: the decoder key mapping
    # pairs every module with its official counterpart (same-shape modules included, e.g. CTM gate and MFE in_proj)
    model = randomize(tiny_model(config, 0, ["TRAIN.SCALE=[64,64]", "TEST.SCALE=[64,64]", f"task_dictionary={tasks}"]))
    assert_decoder_matches_official(model.double(), model.tasks, (64, 64))


def assert_decoder_matches_official(model, tasks, out_size):
    """Our decoder and heads (float64) against the official forward computed from the exported state dict, on
    random features of a 64×64 image."""
    official = {k.removeprefix("module."): v for k, v in ours_to_official(model.state_dict(), model)["model"].items()}
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(1, c, 64 // s, 64 // s, generator=g, dtype=torch.float64)
                for c, s in zip(model.encoder.channels, model.encoder.strides)]
    with torch.no_grad():
        got = model.decode(features, out_size)
        want = ref_official_decode(features, official, tasks, out_size)
    for t in want:
        torch.testing.assert_close(got[t], want[t])


# --------------------------------------------------------------------------------------------------------
# Strictness


def test_every_missing_unmapped_and_mismatched_key_is_listed():
    model = tiny_model("configs/mtmamba_plus_nyud.yml")
    official = ours_to_official(model.state_dict(), model)["model"]
    official.pop("module.block_ctm.1.0.op.depth.in_proj_cross.weight")
    official["module.block_ctm.1.0.op.depth.extra.weight"] = torch.zeros(1)
    official["module.final_project.edge.weight"] = torch.zeros(2, 96, 1, 1)
    official["module.backbone.stages.1.blocks.0.attn.w_msa.relative_position_index"] = \
        ref_relative_position_index(TINY_SWIN["window_size"]).flip(0)
    with pytest.raises(CheckpointError) as e:
        official_to_ours(official, model)
    msg = str(e.value)
    assert "1 missing, 1 unmapped, 2 mismatched" in msg
    for part in ("missing: module.block_ctm.1.0.op.depth.in_proj_cross.weight",
                 "unmapped: module.block_ctm.1.0.op.depth.extra.weight",
                 "module.final_project.edge.weight (2, 96, 1, 1) -> heads.edge.project.weight (1, 96, 1, 1)",
                 "module.backbone.stages.1.blocks.0.attn.w_msa.relative_position_index differs"):
        assert part in msg


def test_wrong_model_kind_and_non_official_architectures_are_errors():
    plus = tiny_model("configs/mtmamba_plus_nyud.yml")
    official = ours_to_official(plus.state_dict(), plus)
    with pytest.raises(CheckpointError, match="official MTMamba_plus checkpoint.*model.name='mtmamba'"):
        official_to_ours(official, tiny_model("configs/mtmamba_nyud.yml"))
    with pytest.raises(CheckpointError, match="no official checkpoint format"):
        official_layout(tiny_model("configs/mtmamba_nyud.yml", opts=["model.stm_blocks=1"]))
    state = plus.state_dict()
    state.pop("heads.edge.project.bias")
    with pytest.raises(CheckpointError, match="missing: heads.edge.project.bias"):
        ours_to_official(state, plus)
    cfg = load_config(REPO / "configs/mtmamba_nyud.yml", TINY)
    with pytest.raises(CheckpointError, match="model.name='mtmamba_plus'"):
        config_for_checkpoint(cfg, official)


def test_config_for_checkpoint_switches_the_pad_mode():
    cfg = load_config(REPO / "configs/mtmamba_plus_nyud.yml", [*TINY, "model.swin_pad_mode=timm"])
    model = tiny_model("configs/mtmamba_plus_nyud.yml")
    for checkpoint in (ours_to_official(model.state_dict(), model), {"model": {}, "swin_pad_mode": "mmseg"}):
        switched = config_for_checkpoint(cfg, checkpoint)
        assert switched.model.swin_pad_mode == "mmseg" and cfg.model.swin_pad_mode == "timm"
    assert config_for_checkpoint(cfg, {"model": {}}) is cfg       # our own checkpoints: the config as it is


# --------------------------------------------------------------------------------------------------------
# main.py and the converter script


def test_main_infers_from_an_official_file_and_the_converter_goes_both_ways(tmp_path):
    write_nyud(tmp_path / "data", n_train=1, n_val=2)
    source = randomize(tiny_model("configs/mtmamba_plus_nyud.yml"))
    official = ours_to_official(source.state_dict(), source)
    torch.save(official, tmp_path / "mtmamba_plus_tiny.pth.tar")

    # main.py infer straight from the official file, with a config in timm's pad mode
    opts = [f"db_root={tmp_path / 'data'}", f"out_dir={tmp_path / 'runs'}", *TINY, "model.swin_pad_mode=timm",
            "valBatch=2", "nworkers=0", "eval_boundary=false"]
    assert cli.main(["--run_mode", "infer", "--config_exp", str(REPO / "configs/mtmamba_plus_nyud.yml"),
                     "--trained_model", str(tmp_path / "mtmamba_plus_tiny.pth.tar"), "--opts", *opts]) == 0
    run = tmp_path / "runs" / "mtmamba_plus_nyud"
    assert "switching model.swin_pad_mode from 'timm' to 'mmseg'" in (run / "log.txt").read_text()
    results = json.loads((run / "metrics.json").read_text())["results"]
    assert set(results) == {"semseg", "depth", "normals"}

    # the converter: official -> ours -> official gives the file back
    args = ["--config_exp", str(REPO / "configs/mtmamba_plus_nyud.yml"), "--opts", *TINY]
    converter.main([str(tmp_path / "mtmamba_plus_tiny.pth.tar"), str(tmp_path / "ours.pth"), *args])
    ours = torch.load(tmp_path / "ours.pth", weights_only=True)
    assert ours["swin_pad_mode"] == "mmseg" and list(ours["model"]) == list(source.state_dict())
    converter.main(["--to-official", str(tmp_path / "ours.pth"), str(tmp_path / "back.pth.tar"), *args])
    back = torch.load(tmp_path / "back.pth.tar", weights_only=True)["model"]
    assert list(back) == list(official["model"])
    assert all(torch.equal(back[k], v) for k, v in official["model"].items())
    with pytest.raises(CheckpointError, match="not an official"):
        converter.main([str(tmp_path / "ours.pth"), str(tmp_path / "x.pth"), *args])
    # a checkpoint of ours records its config: --to-official builds that model (not the full-size default)
    trained = {"model": source.state_dict(), "config": config_to_dict(load_config(
        REPO / "configs/mtmamba_plus_nyud.yml", TINY))}
    torch.save(trained, tmp_path / "trained.pth")
    converter.main(["--to-official", str(tmp_path / "trained.pth"), str(tmp_path / "trained.pth.tar")])
    assert list(torch.load(tmp_path / "trained.pth.tar", weights_only=True)["model"]) == list(official["model"])

"""Swin encoder: parameter count, outputs, checkpoint layouts and strict loading, and mmseg's window order
checked against an independent mmseg-order reference written below."""
import logging
import re

import pytest
import torch
import torch.nn.functional as F

from models.encoders import (
    SwinEncoder,
    build_encoder,
    detect_checkpoint_layout,
    mmseg_to_original_state_dict,
    timm_to_mmseg_state_dict,
)

TINY = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny(img_size, pad_mode="timm", **kwargs) -> SwinEncoder:
    return SwinEncoder("custom", img_size=img_size, pad_mode=pad_mode, **TINY, **kwargs).eval()


@torch.no_grad()
def randomize(enc: SwinEncoder, seed: int = 0, out_norms: bool = True) -> SwinEncoder:
    """Weights far from init (sharp attention, non-trivial LayerNorms), so order/permutation errors show."""
    g = torch.Generator().manual_seed(seed)
    for name, p in enc.named_parameters():
        if re.match(r"norm\d+\.", name) and not out_norms:
            continue
        r = torch.randn(p.shape, generator=g)
        if p.ndim >= 2:
            p.copy_(r / (p[0].numel() ** 0.5))
        elif "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.2 * r)
        else:
            p.copy_(0.2 * r)
    return enc


def assert_outputs_equal(a: SwinEncoder, b: SwinEncoder, x: torch.Tensor, atol: float = 0.0) -> None:
    with torch.no_grad():
        for fa, fb in zip(a(x), b(x)):
            torch.testing.assert_close(fa, fb, atol=atol, rtol=0 if atol == 0 else 1e-5)


# --------------------------------------------------------------------------------------------------------
# Independent mmseg-order reference (plain functional code on an mmseg-named state dict)


def ref_layer_norm(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + "weight"], sd[prefix + "bias"], eps=1e-5)


def ref_relative_position_index(window):
    """mmseg WindowMSA: double_step_seq(2w-1, w, 1, w), plus its transpose, flipped along columns."""
    seq = (torch.arange(0, (2 * window - 1) * window, 2 * window - 1)[:, None] + torch.arange(window)).reshape(1, -1)
    return (seq + seq.T).flip(1)


def ref_windows(t, window):
    """(B, Hp, Wp, C) -> (B·nW, window², C), windows in row-major order."""
    B, Hp, Wp, C = t.shape
    t = t.view(B, Hp // window, window, Wp // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return t.reshape(-1, window * window, C)


def ref_shifted_window_attention(x, sd, prefix, heads, window, shift):
    """mmseg ShiftWindowMSA: pad to window multiple, roll, region mask on the padded map, attend, undo."""
    B, H, W, C = x.shape
    pad_h, pad_w = (window - H % window) % window, (window - W % window) % window
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    labels = torch.zeros(1, Hp, Wp, 1)
    if shift:
        x = torch.roll(x, (-shift, -shift), (1, 2))
        cnt = 0
        for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
                labels[:, hs, ws] = cnt
                cnt += 1
    lw = ref_windows(labels, window)[..., 0]                                     # (nW, N)
    mask = torch.where(lw[:, :, None] == lw[:, None, :], 0.0, -100.0)            # (nW, N, N)
    nW, N, d = mask.shape[0], window * window, C // heads

    xw = ref_windows(x, window)
    q, k, v = F.linear(xw, sd[prefix + "qkv.weight"], sd[prefix + "qkv.bias"]).view(-1, N, 3, heads, d).permute(
        2, 0, 3, 1, 4)
    attn = (q * d ** -0.5) @ k.transpose(-2, -1)                                 # (B·nW, heads, N, N)
    idx = ref_relative_position_index(window)
    attn = attn + sd[prefix + "relative_position_bias_table"][idx.reshape(-1)].view(N, N, heads).permute(2, 0, 1)
    attn = (attn.view(B, nW, heads, N, N) + mask[None, :, None]).view(-1, heads, N, N).softmax(-1)
    y = F.linear((attn @ v).transpose(1, 2).reshape(-1, N, C), sd[prefix + "proj.weight"], sd[prefix + "proj.bias"])
    y = y.view(B, Hp // window, Wp // window, window, window, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
    if shift:
        y = torch.roll(y, (shift, shift), (1, 2))
    return y[:, :H, :W]


def ref_patch_merging(x, sd, prefix):
    """mmseg PatchMerging: pad bottom/right to even, nn.Unfold(2, stride 2) (channel-major), LN, Linear."""
    B, H, W, C = x.shape
    t = F.pad(x.permute(0, 3, 1, 2), (0, W % 2, 0, H % 2))
    t = F.unfold(t, kernel_size=2, stride=2).transpose(1, 2)                     # (B, L, 4C)
    t = F.linear(ref_layer_norm(t, sd, prefix + "norm."), sd[prefix + "reduction.weight"])
    return t.view(B, (H + 1) // 2, (W + 1) // 2, -1)


def ref_mmseg_swin(img, sd, depths, num_heads, window):
    """mmseg SwinTransformer forward (no clamping: window fixed, shift window//2 on odd blocks)."""
    x = F.conv2d(img, sd["patch_embed.projection.weight"], sd["patch_embed.projection.bias"], stride=4)
    x = ref_layer_norm(x.permute(0, 2, 3, 1), sd, "patch_embed.norm.")
    outs = []
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        for j in range(depth):
            p = f"stages.{i}.blocks.{j}."
            shift = window // 2 if j % 2 else 0
            x = x + ref_shifted_window_attention(ref_layer_norm(x, sd, p + "norm1."), sd, p + "attn.w_msa.", heads,
                                                 window, shift)
            h = F.gelu(F.linear(ref_layer_norm(x, sd, p + "norm2."), sd[p + "ffn.layers.0.0.weight"],
                                sd[p + "ffn.layers.0.0.bias"]))
            x = x + F.linear(h, sd[p + "ffn.layers.1.weight"], sd[p + "ffn.layers.1.bias"])
        outs.append(ref_layer_norm(x, sd, f"norm{i}.").permute(0, 3, 1, 2))
        if i < len(depths) - 1:
            x = ref_patch_merging(x, sd, f"stages.{i}.downsample.")
    return outs


# --------------------------------------------------------------------------------------------------------
# Construction and outputs


def test_swin_large_parameter_count_matches_mmseg():
    with torch.device("meta"):
        enc = build_encoder("swin_large", img_size=(448, 576))
    assert sum(p.numel() for p in enc.parameters()) == 195_201_204
    assert sum(p.numel() for p in enc.swin.parameters()) == 195_195_444
    assert not [k for k in enc.state_dict() if k.startswith(("swin.norm.", "swin.head."))]
    assert enc.channels == [192, 384, 768, 1536] and enc.strides == [4, 8, 16, 32]
    assert all(not m.fused_attn for m in enc.modules() if hasattr(m, "fused_attn"))


def test_tiny_forward_shapes():
    enc = tiny((64, 96))
    assert enc.channels == [32, 64, 128, 256] and enc.strides == [4, 8, 16, 32]
    with torch.no_grad():
        feats = enc(torch.randn(2, 3, 64, 96))
    assert len(feats) == 4
    for f, c, s in zip(feats, enc.channels, enc.strides):
        assert f.shape == (2, c, 64 // s, 96 // s) and f.is_contiguous() and torch.isfinite(f).all()


def test_window_clamping_per_pad_mode():
    # stage 3 of a 64x96 input is 2x3 < window 4: timm clamps the window and drops the shift, mmseg does not
    block_t = tiny((64, 96), "timm").swin.layers[3].blocks[1]
    block_m = tiny((64, 96), "mmseg").swin.layers[3].blocks[1]
    assert (block_t.window_size, block_t.shift_size) == ((2, 3), (0, 0))
    assert (block_m.window_size, block_m.shift_size) == ((4, 4), (2, 2))


def test_argument_errors():
    with pytest.raises(ValueError, match="timm, mmseg"):
        tiny((64, 96), "zeros")
    with pytest.raises(ValueError, match="swin_large"):
        build_encoder("swin_huge", img_size=224)
    with pytest.raises(ValueError, match="window_size"):
        SwinEncoder("custom", img_size=64, embed_dim=32, depths=(2,) * 4, num_heads=(1, 2, 4, 8))
    with pytest.raises(ValueError, match="only apply"):
        SwinEncoder("swin_tiny", img_size=224, window_size=4)
    with pytest.raises(ValueError, match="not both"):
        SwinEncoder("swin_tiny", img_size=224, pretrained=True, pretrained_path="x.pth")


# --------------------------------------------------------------------------------------------------------
# Checkpoint layouts


def test_mmseg_round_trip_with_prefixes_and_decoder_keys():
    src = randomize(tiny((64, 96)))
    mmseg = src.to_mmseg_state_dict()
    assert detect_checkpoint_layout(mmseg) == "mmseg"
    assert "stages.0.downsample.reduction.weight" in mmseg and "stages.3.downsample.norm.weight" not in mmseg
    assert "stages.0.blocks.0.attn.w_msa.relative_position_index" in mmseg and "norm3.bias" in mmseg
    # 4 patch-embed + 14 per block (incl. the index buffer) + 3 per PatchMerging + 2 per output norm
    assert len(mmseg) == 4 + 14 * 8 + 3 * 3 + 2 * 4
    ckpt = {"model": {**{f"module.backbone.{k}": v for k, v in mmseg.items()},
                      "module.decoder.stage0.weight": torch.zeros(3)}}
    dst = tiny((64, 96))
    dst.load_checkpoint(ckpt)
    assert_outputs_equal(src, dst, torch.randn(1, 3, 64, 96))
    for k, v in mmseg.items():  # and back: the export of the loaded encoder is the same dict
        assert torch.equal(dst.to_mmseg_state_dict()[k], v), k


def original_layout(timm_state_dict: dict) -> dict:
    """timm Swin names -> Microsoft's original names: PatchMerging at the end of the stage before, ``head.fc`` ->
    ``head``."""
    return {re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
            .replace("head.fc.", "head."): v for k, v in timm_state_dict.items()}


def test_original_microsoft_layout_round_trip_from_file(tmp_path, caplog):
    src = randomize(tiny((64, 96)), out_norms=False)
    original = original_layout(src.swin.state_dict())
    original |= {"norm.weight": torch.ones(256), "norm.bias": torch.zeros(256),
                 "head.weight": torch.zeros(10, 256), "head.bias": torch.zeros(10),
                 "layers.0.blocks.1.attn_mask": torch.zeros(24, 16, 16),
                 "layers.0.blocks.0.attn.relative_position_index": torch.zeros(16, 16, dtype=torch.long)}
    assert detect_checkpoint_layout(original) == "original"
    path = tmp_path / "swin_original.pth"
    torch.save({"model": original}, path)
    dst = randomize(tiny((64, 96)), seed=1, out_norms=False)
    with caplog.at_level(logging.INFO, logger="models.encoders"):
        dst.load_checkpoint(path)
    assert "no output norms" in caplog.text and "99." in caplog.text
    assert_outputs_equal(src, dst, torch.randn(1, 3, 64, 96))


def test_timm_layout():
    src = randomize(tiny((64, 96)))
    sd = {k.removeprefix("swin."): v for k, v in src.state_dict().items()}
    sd |= {"head.fc.weight": torch.zeros(10, 256), "head.fc.bias": torch.zeros(10)}
    assert detect_checkpoint_layout(sd) == "timm"
    dst = tiny((64, 96))
    dst.load_checkpoint(sd)
    assert_outputs_equal(src, dst, torch.randn(1, 3, 64, 96))


def test_strict_loading_lists_every_problem():
    mmseg = tiny((64, 96)).to_mmseg_state_dict()
    del mmseg["stages.1.blocks.0.ffn.layers.1.weight"]
    mmseg["stages.0.blocks.1.attn.w_msa.qkv.weight"] = torch.zeros(96, 31)
    mmseg["stages.2.blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError) as err:
        tiny((64, 96)).load_checkpoint(mmseg)
    msg = str(err.value)
    assert "missing: swin.layers.1.blocks.0.mlp.fc2.weight" in msg
    assert "mismatch: swin.layers.0.blocks.1.attn.qkv.weight: expected (96, 32), got (96, 31)" in msg
    assert "unexpected: swin.layers.2.blocks.0.extra.weight" in msg


def test_incomplete_output_norms_are_an_error():
    mmseg = tiny((64, 96)).to_mmseg_state_dict()
    for k in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias"):
        del mmseg[k]
    with pytest.raises(RuntimeError, match="missing: norm3.bias"):
        tiny((64, 96)).load_checkpoint(mmseg)


def test_unknown_layout_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not a Swin state dict"):
        detect_checkpoint_layout({"encoder.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        tiny((64, 96)).load_checkpoint(tmp_path / "nope.pth")


def test_patch_merging_permutation_matches_unfold():
    # mmseg merges with nn.Unfold; timm's PatchMerging with the converted weights must give the same result
    merge = tiny((64, 96)).swin.layers[1].downsample
    C = merge.dim
    sd = {"stages.0.downsample.reduction.weight": torch.randn(2 * C, 4 * C) / (4 * C) ** 0.5,
          "stages.0.downsample.norm.weight": torch.randn(4 * C), "stages.0.downsample.norm.bias": torch.randn(4 * C)}
    converted = mmseg_to_original_state_dict(sd)
    merge.reduction.weight.data.copy_(converted["layers.0.downsample.reduction.weight"])
    merge.norm.weight.data.copy_(converted["layers.0.downsample.norm.weight"])
    merge.norm.bias.data.copy_(converted["layers.0.downsample.norm.bias"])
    x = torch.randn(2, 5, 7, C)
    with torch.no_grad():
        torch.testing.assert_close(merge(x), ref_patch_merging(x, sd, "stages.0.downsample."))
    back = timm_to_mmseg_state_dict({k.replace("layers.0", "layers.1"): v for k, v in converted.items()})
    assert all(torch.equal(back[k], v) for k, v in sd.items())


# --------------------------------------------------------------------------------------------------------
# mmseg window order


def test_shifted_window_mask_on_padded_map():
    # stage 0 of a 12x24 input is 3x6; window 4 pads it to 4x8, shift 2. mmseg's region labels on the padded
    # map (rows: [0,-4) empty, [-4,-2), [-2,); cols: [0,-4), [-4,-2), [-2,)), label = 3·row_region + col_region:
    labels = torch.tensor([[3, 3, 3, 3, 4, 4, 5, 5],
                           [3, 3, 3, 3, 4, 4, 5, 5],
                           [6, 6, 6, 6, 7, 7, 8, 8],
                           [6, 6, 6, 6, 7, 7, 8, 8]])
    windows = [labels[:, :4].reshape(-1), labels[:, 4:].reshape(-1)]
    expected = torch.stack([torch.where(w[:, None] == w[None, :], 0.0, -100.0) for w in windows])
    block = tiny((12, 24), "mmseg").swin.layers[0].blocks[1]
    assert torch.equal(block.attn_mask, expected)


@pytest.mark.parametrize("img_size", [(164, 204), (72, 104)])
def test_mmseg_mode_matches_independent_reference(img_size):
    # 164x204: stage sides 41x51, 21x26, 11x13, 6x7, none a multiple of 4; 72x104: down to 3x4 < window
    enc = randomize(tiny(img_size, "mmseg"))
    x = torch.randn(1, 3, *img_size)
    with torch.no_grad():
        got = enc(x)
        want = ref_mmseg_swin(x, enc.to_mmseg_state_dict(), TINY["depths"], TINY["num_heads"], TINY["window_size"])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-5)


def test_pad_modes_agree_on_window_multiples_and_differ_otherwise():
    # 256x256: stage sides 64, 32, 16, 8, all multiples of 4 and larger than it (so timm does not clamp)
    timm_mode = randomize(tiny((256, 256), "timm"))
    mmseg_mode = tiny((256, 256), "mmseg")
    mmseg_mode.load_state_dict(timm_mode.state_dict())
    assert_outputs_equal(timm_mode, mmseg_mode, torch.randn(1, 3, 256, 256))

    # 164x204: stage sides 41x51, 21x26, 11x13, 6x7. (The orders coincide where pad == shift, i.e. side % 4 == 2
    # on both axes, so every stage here has an axis with side % 4 odd.)
    timm_mode = randomize(tiny((164, 204), "timm"))
    mmseg_mode = tiny((164, 204), "mmseg")
    mmseg_mode.load_state_dict(timm_mode.state_dict())
    x = torch.randn(1, 3, 164, 204)
    with torch.no_grad():
        for a, b in zip(timm_mode(x), mmseg_mode(x)):
            assert (a - b).abs().max() > 1e-2


def test_mmseg_mode_dynamic_masks_match_static():
    static = randomize(tiny((72, 104), "mmseg"))
    dynamic = tiny((72, 104), "mmseg", dynamic_img_size=True)
    dynamic.load_state_dict(static.state_dict())
    assert_outputs_equal(static, dynamic, torch.randn(1, 3, 72, 104))

"""VMamba encoder (models/vmamba.py): the VSS block with d_state 1 against an independent float64 reference on every
CPU scan backend and execution mode, the VMamba-T size and key layout against the released checkpoint's manifest
(meta device), the pretrained-weight filter and its errors, and a real load from a file with the skips logged.
"""
import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.execution import set_exec_mode
from models.ops.selective_scan import available_backends
from models.vmamba import VMambaEncoder, VSSBlock, select_pretrained

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = json.loads((REPO / "tests/assets/mambaseg_state_dict_manifests.json").read_text())
CPU_BACKENDS = [b for b in available_backends() if b != "cuda"]
TINY = dict(dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), drop_path_rate=0.0)


# --------------------------------------------------------------------------------------------------------------------
# Independent float64 references (element by element where the layout matters)
# --------------------------------------------------------------------------------------------------------------------
def ref_scan(u, dt_raw, A, Bm, Cm, D, bias):
    """Sequential S6 of one sequence set: u, dt_raw (d, L); A (d, N); Bm, Cm (N, L); D, bias (d,) -> (d, L).

    Δ = softplus(dt + bias); h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t; y_t = C_t·h_t + D u_t.
    """
    delta = F.softplus(dt_raw + bias[:, None])
    h = torch.zeros(A.shape, dtype=u.dtype)
    ys = []
    for t in range(u.shape[1]):
        h = torch.exp(delta[:, t, None] * A) * h + delta[:, t, None] * Bm[None, :, t] * u[:, t, None]
        ys.append((h * Cm[None, :, t]).sum(-1) + D * u[:, t])
    return torch.stack(ys, dim=-1)


def ref_scan_set(seq, k, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    """Direction k of an SSM with stacked parameter sets on one sequence set seq (d, L)."""
    d = seq.shape[0]
    n = A_logs.shape[1]
    r = dt_projs_weight.shape[2]
    dbl = x_proj_weight[k] @ seq                                              # (R + 2N, L)
    dt = dt_projs_weight[k] @ dbl[:r]                                         # (d, L)
    return ref_scan(seq, dt, -torch.exp(A_logs[k * d:(k + 1) * d]), dbl[r:r + n], dbl[r + n:],
                    Ds[k * d:(k + 1) * d], dt_projs_bias[k])


def ref_layer_norm(x, weight, bias, eps=1e-5):
    """LayerNorm over the last axis by its formula."""
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def ref_ss2d(m, x):
    """VMamba SS2D ``v05_noz`` on a channels-last map x (B, H, W, C): in_proj, depthwise conv, SiLU, the four scan
    directions (row-major, column-major, both reversed) listed position by position, S6 per direction, every output
    put back at its position and summed, out_norm, out_proj."""
    b, h, w, _ = x.shape
    z = x @ m.in_proj.weight.T                                                # (B, H, W, D)
    di = z.shape[-1]
    z = F.silu(F.conv2d(z.permute(0, 3, 1, 2), m.conv2d.weight, m.conv2d.bias, padding=m.conv2d.padding, groups=di))
    rows = [(i, j) for i in range(h) for j in range(w)]
    cols = [(i, j) for j in range(w) for i in range(h)]
    orders = [rows, cols, rows[::-1], cols[::-1]]
    out = torch.zeros(b, h, w, di, dtype=x.dtype)
    for bi in range(b):
        for k, order in enumerate(orders):
            seq = torch.stack([z[bi, :, i, j] for i, j in order], dim=-1)     # (D, L)
            y = ref_scan_set(seq, k, m.x_proj_weight, m.dt_projs_weight, m.dt_projs_bias, m.A_logs, m.Ds)
            for t, (i, j) in enumerate(order):
                out[bi, i, j] += y[:, t]
    return ref_layer_norm(out, m.out_norm.weight, m.out_norm.bias) @ m.out_proj.weight.T


def ref_vss_block(blk, x):
    """x + SS2D(LN(x)), then x + fc2(GELU(fc1(LN(x)))) (drop path 0)."""
    x = x + ref_ss2d(blk.op, ref_layer_norm(x, blk.norm.weight, blk.norm.bias))
    a = ref_layer_norm(x, blk.norm2.weight, blk.norm2.bias)
    hidden = F.gelu(a @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias)
    return x + hidden @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias


def rel_err(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


@torch.no_grad()
def randomize(module, seed=0):
    """Random parameters far from init (LayerNorms around 1, A_logs around log 1..N as trained)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if name.endswith("A_logs"):
            p.copy_(torch.log(torch.arange(1, p.shape[1] + 1)).expand_as(p) + 0.3 * torch.randn(p.shape, generator=g))
        elif p.ndim == 1 and "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            fan = p[0].numel() if p.ndim >= 2 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim < 2 else fan ** -0.5))
    return module


def random_state_dict(entries, seed=0):
    """Exactly the given (key, shape) entries, in order, as views of one random pool (no per-tensor storage)."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(max(math.prod(s) for _, s in entries) + len(entries), generator=g)
    return {k: pool[i:i + math.prod(s)].view(s) for i, (k, s) in enumerate(entries)}


# --------------------------------------------------------------------------------------------------------------------
# Numerics
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def block_case():
    torch.manual_seed(0)
    blk = randomize(VSSBlock(16, d_state=1, ssm_ratio=1.0, conv_bias=False)).double().eval()
    x = torch.randn(2, 5, 6, 16, dtype=torch.float64)
    with torch.no_grad():
        return blk, x, ref_vss_block(blk, x)


@pytest.mark.parametrize("exec_mode", ["fast", "reference"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_vss_block_d_state_1_matches_float64_reference(block_case, backend, exec_mode):
    blk, x, ref = block_case
    assert blk.op.d_state == 1 and blk.op.conv2d.bias is None and blk.op.A_logs.shape == (4 * 16, 1)
    set_exec_mode(blk, exec_mode)
    blk.op.scan_backend = backend
    with torch.no_grad():
        assert rel_err(blk(x), ref) < 1e-10
        assert rel_err(blk.float()(x.float()), ref) < 1e-5
    blk.double()


def test_vss_block_backward_runs_on_every_backend(block_case):
    blk, x, _ = block_case
    grads = {}
    for backend in CPU_BACKENDS:
        blk.op.scan_backend = backend
        blk.zero_grad()
        blk(x).square().sum().backward()
        grads[backend] = torch.cat([p.grad.flatten() for p in blk.parameters()])
    for g in grads.values():
        assert torch.isfinite(g).all() and rel_err(g, grads["torch"].double()) < 1e-9


# --------------------------------------------------------------------------------------------------------------------
# Size, layout and pretrained weights
# --------------------------------------------------------------------------------------------------------------------
def meta_vmamba_t(in_chans=3):
    with torch.device("meta"):
        return VMambaEncoder(in_chans)


def test_vmamba_t_size_and_keys_match_the_released_checkpoint():
    enc = meta_vmamba_t()
    manifest = MANIFESTS["vssm1_tiny_0230s"]
    classifier = {k: s for k, s in manifest["entries"] if k.startswith("classifier.")}
    out_norms = {k: list(v.shape) for k, v in enc.state_dict().items() if k.startswith("outnorm")}
    ours = {k: list(v.shape) for k, v in enc.state_dict().items()}
    assert ours == {k: s for k, s in manifest["entries"] if k not in classifier} | out_norms
    n_classifier = sum(math.prod(s) for s in classifier.values())
    n_out_norms = sum(math.prod(s) for s in out_norms.values())
    assert sum(p.numel() for p in enc.parameters()) == manifest["param_total"] - n_classifier + n_out_norms
    assert sum(p.numel() for p in enc.parameters()) == 29_481_408        # MAMBASEG.md §2: 29.48 M
    assert enc.channels == [96, 192, 384, 768] and enc.strides == [4, 8, 16, 32]


@pytest.mark.parametrize("in_chans,keep_stem", [(3, True), (10, False)])
def test_vmamba_t_manifest_loads_with_only_the_documented_skips(in_chans, keep_stem):
    enc = meta_vmamba_t(in_chans)
    sd = random_state_dict(MANIFESTS["vssm1_tiny_0230s"]["entries"])
    loaded, notes = select_pretrained({"module." + k: v for k, v in sd.items()}, enc.state_dict(),
                                      keep_stem=keep_stem, stem_note="stem rebuilt for 10 input channels")
    skipped = [k for k in sd if k.startswith("classifier.") or (not keep_stem and k.startswith("patch_embed."))]
    assert list(loaded) == [k for k in sd if k not in skipped]
    assert all(loaded[k] is sd[k] for k in loaded)
    assert notes[0] == "skipped classifier.* (4 keys, the ImageNet classifier)"
    assert ("skipped patch_embed.* (8 keys, stem rebuilt for 10 input channels)" in notes) == (not keep_stem)
    assert notes[-1] == "not in the file: outnorm0, outnorm1, outnorm2, outnorm3 (8 keys, keep their values)"


def test_pretrained_filter_lists_every_problem():
    enc = meta_vmamba_t(10)
    sd = random_state_dict(MANIFESTS["vssm1_tiny_0230s"]["entries"])
    del sd["layers.0.blocks.0.norm.bias"]
    sd["layers.9.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError) as err:                                  # keep_stem: the 3-channel stem misfits
        select_pretrained(sd, enc.state_dict(), keep_stem=True, context="vssm.pth")
    text = str(err.value)
    assert "vssm.pth" in text and "missing: layers.0.blocks.0.norm.bias" in text
    assert "unexpected: layers.9.extra" in text
    assert "mismatch: patch_embed.0.weight: expected (48, 10, 3, 3), got (48, 3, 3, 3)" in text


def test_load_from_file_logs_fraction_and_skips(tmp_path, caplog):
    torch.manual_seed(0)
    source = randomize(VMambaEncoder(3, **TINY), seed=1)
    sd = {k: v for k, v in source.state_dict().items() if not k.startswith("outnorm")}
    sd |= {"classifier.norm.weight": torch.ones(64), "classifier.head.weight": torch.zeros(5, 64)}
    torch.save({"model": sd}, tmp_path / "vmamba.pth")
    enc = VMambaEncoder(1, **TINY)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="models.vmamba"):
        enc.load_checkpoint(tmp_path / "vmamba.pth", keep_stem=False)
    for k, v in enc.state_dict().items():
        expected = before[k] if k.startswith(("patch_embed.", "outnorm")) else sd[k]
        assert torch.equal(v, expected), k
    n_total = sum(p.numel() for p in enc.parameters())
    n_skipped = sum(p.numel() for k, p in enc.named_parameters() if k.startswith(("patch_embed.", "outnorm")))
    assert f"{n_total - n_skipped} of {n_total} parameters" in caplog.text
    assert "skipped classifier.* (2 keys" in caplog.text and "skipped patch_embed.* (8 keys" in caplog.text
    with pytest.raises(FileNotFoundError, match="model.pretrained_path"):
        enc.load_checkpoint(tmp_path / "missing.pth")


def test_tiny_encoder_forward_shapes_and_init():
    enc = VMambaEncoder(10, **TINY)
    feats = enc(torch.randn(1, 10, 30, 45))
    assert [tuple(f.shape) for f in feats] == [(1, 16, 8, 12), (1, 32, 4, 6), (1, 48, 2, 3), (1, 64, 1, 2)]
    fc1 = enc.layers[0].blocks[0].mlp.fc1
    assert fc1.bias.abs().max() == 0 and abs(fc1.weight.std().item() - 0.02) < 0.003   # trunc_normal(std 0.02)
    assert torch.equal(enc.layers[0].blocks[0].op.A_logs, torch.zeros(4 * 16, 1))   # d_state 1: A = -1


class TrainingConfig(dict):
    """Stands in for the yacs config that VMamba's training checkpoints pickle beside the weights."""


def test_file_with_pickled_objects_is_refused_with_the_extraction_command(tmp_path):
    torch.save({"model": {}, "config": TrainingConfig(lr=1e-3)}, tmp_path / "ckpt_epoch_264.pth")
    with pytest.raises(RuntimeError) as err:
        VMambaEncoder(3, **TINY).load_checkpoint(tmp_path / "ckpt_epoch_264.pth")
    text = str(err.value)
    assert "tests.test_vmamba.TrainingConfig" in text and "weights_only=False)['model']" in text
    assert "model.pretrained_path=vmamba_weights.pth" in text

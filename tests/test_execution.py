"""Execution modes (models/execution.py, models/task_batched.py): the fast execution computes the reference function.

The same weights run in both modes; outputs and every parameter gradient must agree (fp32: relative error
<= 1e-5 per tensor; bf16 autocast: <= BF16_TOL, see docs). Gradient checkpointing must give the same gradients while
saving fewer activations.
"""
from __future__ import annotations

import pytest
import torch

from models import build_model
from models.execution import compile_decoder, enable_grad_checkpointing, exec_mode, set_exec_mode
from utils.config import ConfigError, load_config
from utils.flops import count_flops

TINY = ["model.backbone=custom", "model.pretrained=false",
        "model.backbone_kwargs={embed_dim: 24, depths: [2, 2, 2, 2], num_heads: [1, 2, 3, 6], window_size: 4}",
        "TRAIN.SCALE=[64,96]", "TEST.SCALE=[64,96]", "model.encoder_drop_path_rate=0"]
FP32_TOL = 1e-5
BF16_TOL = 2e-2   # fast vs reference outputs, both under bf16 autocast (measured ~1e-2, as bf16 vs fp32)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def tiny_model(dataset: str = "nyud", *opts: str) -> torch.nn.Module:
    cfg = load_config(f"configs/mtmamba_{dataset}.yml", [*TINY, "model.drop_path_rate=0", *opts])
    torch.manual_seed(0)
    return build_model(cfg)


def run(model, mode: str, image: torch.Tensor, amp: bool = False):
    """Outputs and parameter gradients of one forward/backward in ``mode``."""
    set_exec_mode(model, mode)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(image)
    sum(o.float().square().mean() for o in out.values()).backward()
    return ({t: o.detach().float() for t, o in out.items()},
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})


@pytest.mark.parametrize("dataset,one_call", [("nyud", False), ("pascal", False), ("nyud", True)])
def test_fast_equals_reference_fp32(dataset, one_call, monkeypatch):
    if one_call:   # the GPU's data movement on the CPU: one gather each way, one scan call for all layers
        import models.ops.scan_orders as so
        import models.task_batched as tb
        monkeypatch.setattr(tb, "scan_calls", lambda x, groups: 1)
        monkeypatch.setattr(so, "structured_layout", lambda orders, device: False)
    model = tiny_model(dataset).train()
    image = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    ref_out, ref_grad = run(model, "reference", image)
    fast_out, fast_grad = run(model, "fast", image)
    assert model.decoder.stages[0].exec_mode == "fast" and model.decoder.stages[0].ctm.mfe_shared.exec_mode == "fast"
    for t in ref_out:
        assert rel(fast_out[t], ref_out[t]) <= FP32_TOL, t
    assert ref_grad.keys() == fast_grad.keys() and len(ref_grad) == len(list(model.parameters()))
    worst = max((rel(fast_grad[n], ref_grad[n]), n) for n in ref_grad)
    assert worst[0] <= FP32_TOL, worst


def test_fast_equals_reference_bf16():
    """Under bf16 autocast the two modes round differently; the documented tolerance: their difference is within the
    reference's own bf16 error (against fp32), and outputs within BF16_TOL."""
    model = tiny_model().train()
    image = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    fp32_out, fp32_grad = run(model, "reference", image)
    ref_out, ref_grad = run(model, "reference", image, amp=True)
    fast_out, fast_grad = run(model, "fast", image, amp=True)
    for t in ref_out:
        assert torch.isfinite(fast_out[t]).all(), t
        assert rel(fast_out[t], ref_out[t]) <= min(BF16_TOL, 1.5 * rel(ref_out[t], fp32_out[t])), t
    big = [n for n in ref_grad if ref_grad[n].numel() > 1000]   # small tensors are dominated by bf16 rounding
    assert max(rel(fast_grad[n], ref_grad[n]) for n in big) <= 1.5 * max(rel(ref_grad[n], fp32_grad[n]) for n in big)


@pytest.mark.parametrize("opts", [["model.ctm_fusion=task_only"], ["model.ctm=false", "model.stm_blocks=1"],
                                  ["model.gate=wmsa"], ["model.mfe=wmsa"]])
def test_fast_equals_reference_for_ablation_switches(opts):
    """Blocks the task-batched path does not cover run per task, with the fast scan glue."""
    model = tiny_model("nyud", *opts).eval()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = {t: o for t, o in set_exec_mode(model, "reference")(image).items()}
        fast = set_exec_mode(model, "fast")(image)
    for t in ref:
        assert rel(fast[t], ref[t]) <= FP32_TOL, t


def test_stochastic_depth_is_drawn_per_task():
    """With drop-path, the fast path still drops each task's branch independently (per-task masks)."""
    model = tiny_model("nyud", "model.drop_path_rate=0.9").train()
    set_exec_mode(model, "fast")
    stage = model.decoder.stages[0]
    z = torch.randn(4, 64, 2, 3, stage.ctm.norm_shared.normalized_shape[0] // 4)
    from models.task_batched import grouped_stm
    torch.manual_seed(3)
    blocks = [stage.task_blocks[t][0] for t in stage.task_blocks]
    out = grouped_stm(blocks, z)
    kept = (out - z).flatten(2).abs().sum(-1) > 0            # (T, B): branch kept per task and sample
    assert 0 < kept.sum() < kept.numel()
    assert not (kept == kept[:1]).all(), "all tasks share one mask"


def test_grad_checkpointing_same_gradients_fewer_saved_activations():
    model = tiny_model().train()
    image = torch.randn(1, 3, 64, 96)
    saved: dict[bool, int] = {}
    grads = {}
    for ckpt in (False, True):
        enable_grad_checkpointing(model, ckpt)
        model.zero_grad(set_to_none=True)
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t
        features = [f.detach() for f in model.encoder(image)]      # count the decoder's activations only
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model.decode(features, image.shape[-2:])
        sum(o.square().mean() for o in out.values()).backward()
        saved[ckpt] = total
        grads[ckpt] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert saved[True] < 0.5 * saved[False], saved
    assert grads[True].keys() == grads[False].keys()
    for n in grads[False]:
        assert torch.allclose(grads[True][n], grads[False][n], rtol=1e-5, atol=1e-7), n


def test_mode_switches_and_errors():
    model = tiny_model()
    assert {m.exec_mode for m in model.modules() if hasattr(m, "exec_mode")} == {"fast"}   # the config default
    with exec_mode(model, "reference"):
        assert {m.exec_mode for m in model.modules() if hasattr(m, "exec_mode")} == {"reference"}
    assert model.decoder.stages[1].exec_mode == "fast"
    with pytest.raises(ValueError, match=r"model.exec='turbo' is not valid; valid: \['reference', 'fast'\]"):
        set_exec_mode(model, "turbo")
    with pytest.raises(ConfigError, match=r"model.exec='turbo' is not valid"):
        load_config("configs/mtmamba_nyud.yml", ["model.exec=turbo"])
    with pytest.raises(ValueError, match=r"model.compile='fastest' is not valid"):
        compile_decoder(model, "fastest")
    with pytest.raises(ValueError, match="has no decoder that supports gradient checkpointing"):
        enable_grad_checkpointing(torch.nn.Linear(2, 2))
    compile_decoder(model, "default")                       # compiled lazily at the first call, keys unchanged
    assert all(stage._compiled_call_impl is not None for stage in model.decoder.stages)
    assert "decoder.stages.0.ctm.gate.semseg.weight" in model.state_dict()


def test_flop_count_is_the_reference_count_in_either_mode():
    model = tiny_model()
    fast = count_flops(set_exec_mode(model, "fast"), (64, 96))
    assert model.decoder.stages[0].exec_mode == "fast"
    assert fast == count_flops(set_exec_mode(model, "reference"), (64, 96)) > 0


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (6, 4)])
def test_grouped_cross_scan_and_merge_both_implementations(hw):
    """The gather (GPU) and the structured (CPU) data movement equal the per-layer cross_scan / cross_merge."""
    from models.ops.scan_orders import (SS2D_ORDERS, cross_merge, cross_scan, gather_cross_merge, gather_cross_scan,
                                        ss2d_cross_merge, ss2d_cross_scan)
    h, w = hw
    x = torch.randn(2, h, w, 3, 5)                                           # (B, H, W, G, D)
    expected = torch.stack([cross_scan(x[..., g, :].permute(0, 3, 1, 2)) for g in range(3)], dim=1)
    assert torch.equal(gather_cross_scan(x, SS2D_ORDERS), expected)
    assert torch.equal(ss2d_cross_scan(x), expected)
    y = torch.randn(2, 3, 4, 5, h * w)                                       # (B, G, K, D, L)
    merged = torch.stack([cross_merge(y[:, g], h, w) for g in range(3)], dim=1).permute(0, 3, 4, 1, 2)
    torch.testing.assert_close(gather_cross_merge(y, h, w, SS2D_ORDERS), merged, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ss2d_cross_merge(y, h, w), merged, rtol=1e-6, atol=1e-6)


def test_fast_ss2d_with_other_orders_takes_the_gather_path():
    from models.ss2d import SS2D
    torch.manual_seed(0)
    layer = SS2D(8, orders=("transposed", "raster_rev"), scan_backend="torch")
    x = torch.randn(2, 5, 7, 8, requires_grad=True)
    grads = {}
    for mode in ("reference", "fast"):
        layer.exec_mode = mode
        out = layer(x)
        grads[mode] = torch.autograd.grad(out.square().sum(), [x, *layer.parameters()])
        grads[mode] = (out.detach(), *grads[mode])
    for ref, fast in zip(grads["reference"], grads["fast"]):
        assert rel(fast, ref) <= FP32_TOL

"""Losses of MODELS.md §4 against hand-computed values on tiny maps."""
from __future__ import annotations

import math

import pytest
import torch
from easydict import EasyDict

from losses import (BalancedBCEWithLogitsLoss, BalancedCrossEntropyLoss, CrossEntropyLoss, DepthL1Loss,
                    MultiTaskLoss, NormalsL1Loss, build_loss)

LN2, LN3, LN4 = math.log(2.0), math.log(3.0), math.log(4.0)
IGN = 255.0


def _close(t: torch.Tensor, value: float) -> None:
    assert t.dim() == 0
    assert t.item() == pytest.approx(value, rel=1e-6, abs=1e-7)


def _two_class_logits(rows):
    """rows: 2×2 nested list of (logit0, logit1) → (1, 2, 2, 2) leaf tensor."""
    t = torch.tensor(rows, dtype=torch.float64).permute(2, 0, 1).unsqueeze(0)
    return t.clone().requires_grad_(True)


# ---------------------------------------------------------------- cross entropy (semseg, human_parts)
def test_cross_entropy_hand_values_and_ignore():
    # softmax([0, 0]) = (1/2, 1/2); softmax([ln3, 0]) = (3/4, 1/4)
    #   pixel (0,0): logits [0,0],   y=0 -> ln 2
    #   pixel (0,1): logits [ln3,0], y=0 -> ln(4/3)
    #   pixel (1,0): logits [ln3,0], y=1 -> ln 4
    #   pixel (1,1): logits [9,-9],  y=255 -> ignored
    # mean over the 3 valid pixels = (ln2 + ln(4/3) + ln4) / 3 = ln(32/3) / 3
    pred = _two_class_logits([[(0, 0), (LN3, 0)], [(LN3, 0), (9, -9)]])
    target = torch.tensor([[[[0, 0], [1, IGN]]]])  # (B,1,H,W) float, as collated
    loss = CrossEntropyLoss()(pred, target)
    _close(loss, math.log(32 / 3) / 3)
    # the (B, H, W) long form gives the same value
    _close(CrossEntropyLoss()(pred, target[:, 0].long()), math.log(32 / 3) / 3)
    loss.backward()
    assert torch.all(pred.grad[0, :, 1, 1] == 0)  # ignored pixel gets no gradient
    # d/dz0 of -log softmax(z)[1] at [ln3, 0] = p0 = 3/4, divided by 3 valid pixels
    assert pred.grad[0, 0, 1, 0].item() == pytest.approx(0.25)


# ---------------------------------------------------------------- balanced CE (sal)
def test_balanced_cross_entropy_hand_values():
    # labels [[1,0],[0,255]]: #valid 3, #pos 1, #neg 2 -> w_pos = 2/3, w_neg = 1/3
    #   pos pixel logits [0, ln3] -> -log(3/4) = ln(4/3), weight 2/3
    #   neg pixels logits [0, 0]  -> ln 2 each,           weight 1/3
    # loss = (2/3·ln(4/3) + 2·1/3·ln2) / 3  (divided by #valid, not by Σ weights = 4/3)
    #      = 2·ln(8/3) / 9
    pred = _two_class_logits([[(0, LN3), (0, 0)], [(0, 0), (5, -5)]])
    target = torch.tensor([[[[1, 0], [0, IGN]]]])
    _close(BalancedCrossEntropyLoss()(pred, target), 2 * math.log(8 / 3) / 9)


def test_balanced_cross_entropy_weights_follow_the_batch():
    # labels [[1,1],[1,0]]: #pos 3, #neg 1 -> w_pos = 1/4, w_neg = 3/4; all logits [0,0] -> ln2 each
    # loss = (3·1/4·ln2 + 3/4·ln2) / 4 = 1.5·ln2 / 4 = 3·ln2 / 8
    pred = _two_class_logits([[(0, 0), (0, 0)], [(0, 0), (0, 0)]])
    target = torch.tensor([[[[1, 1], [1, 0]]]])
    _close(BalancedCrossEntropyLoss()(pred, target), 3 * LN2 / 8)


def test_balanced_cross_entropy_single_class_and_all_ignored():
    pred = _two_class_logits([[(0, 1), (2, 0)], [(1, 1), (0, 3)]])
    # only negatives: w_neg = #pos/#valid = 0 -> loss 0 (and no NaN from an empty class)
    loss = BalancedCrossEntropyLoss()(pred, torch.zeros(1, 1, 2, 2))
    _close(loss, 0.0)
    loss = BalancedCrossEntropyLoss()(pred, torch.full((1, 1, 2, 2), IGN))
    _close(loss, 0.0)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and torch.all(pred.grad == 0)


# ---------------------------------------------------------------- balanced BCE (edge)
def test_balanced_bce_hand_values():
    # w = 0.95: pos_weight = 19, then × (1 − w) = 0.05 -> per pixel
    #   y=1: 0.95·softplus(−x),  y=0: 0.05·softplus(x)
    #   (0,0) x=ln3, y=1 -> 0.95·ln(1 + 1/3) = 0.95·ln(4/3)
    #   (0,1) x=ln3, y=0 -> 0.05·ln(1 + 3)   = 0.05·ln4
    #   (1,0) x=0,   y=0 -> 0.05·ln2
    #   (1,1) x=50,  y=255 -> ignored
    # mean over the 3 valid pixels
    pred = torch.tensor([[[[LN3, LN3], [0.0, 50.0]]]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[[1, 0], [0, IGN]]]])
    expected = (0.95 * math.log(4 / 3) + 0.05 * LN4 + 0.05 * LN2) / 3
    loss = BalancedBCEWithLogitsLoss(0.95)(pred, target)
    _close(loss, expected)
    _close(BalancedBCEWithLogitsLoss(0.95)(pred, target[:, 0]), expected)  # (B, H, W) target
    loss.backward()
    assert pred.grad[0, 0, 1, 1].item() == 0.0
    # d/dx of 0.05·softplus(x) at x=0 is 0.05·1/2, divided by 3
    assert pred.grad[0, 0, 1, 0].item() == pytest.approx(0.025 / 3)


def test_balanced_bce_half_weight_is_half_plain_bce():
    # w = 0.5 -> pos_weight 1, factor 1/2: (ln2 + ln2) / 2 valid pixels × 1/2 = ln2 / 2
    pred = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1, 0], [IGN, IGN]]]])
    _close(BalancedBCEWithLogitsLoss(0.5)(pred, target), LN2 / 2)


def test_balanced_bce_all_ignored_and_bad_weight():
    pred = torch.randn(2, 1, 2, 2, requires_grad=True)
    loss = BalancedBCEWithLogitsLoss(0.95)(pred, torch.full((2, 1, 2, 2), IGN))
    _close(loss, 0.0)
    loss.backward()
    assert torch.all(pred.grad == 0)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="edge_w"):
            BalancedBCEWithLogitsLoss(bad)


# ---------------------------------------------------------------- normals
def test_normals_l1_normalises_prediction_and_ignores():
    # (0,0): pred (3,0,4) -> (0.6,0,0.8); gt (1,0,0) -> |−0.4| + 0 + 0.8 = 1.2
    # (0,1): pred (0,2,0) -> (0,1,0);     gt (0,1,0) -> 0
    # (1,0): gt (255,255,255) -> ignored
    # (1,1): gt (0,0,0) zero norm -> ignored
    # loss = (1.2 + 0) / 2 valid pixels = 0.6 (summed over components, divided by pixels).
    # Without normalisation it would be (|3−1| + 4 + |2−1|) / 2 = 3.5.
    pred = torch.tensor([[[3.0, 0.0], [7.0, 1.0]],
                         [[0.0, 2.0], [7.0, 1.0]],
                         [[4.0, 0.0], [7.0, 1.0]]], dtype=torch.float64).unsqueeze(0).requires_grad_(True)
    target = torch.tensor([[[1.0, 0.0], [IGN, 0.0]],
                           [[0.0, 1.0], [IGN, 0.0]],
                           [[0.0, 0.0], [IGN, 0.0]]], dtype=torch.float64).unsqueeze(0)
    loss = NormalsL1Loss()(pred, target)
    _close(loss, 0.6)
    loss.backward()
    assert torch.all(pred.grad[0, :, 1, :] == 0)  # both ignored pixels
    assert torch.isfinite(pred.grad).all()


def test_normals_all_ignored_is_zero_with_grad():
    pred = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = NormalsL1Loss()(pred, torch.full((1, 3, 2, 2), IGN))
    _close(loss, 0.0)
    assert loss.requires_grad
    loss.backward()
    assert torch.all(pred.grad == 0)


# ---------------------------------------------------------------- depth
def test_depth_l1_ignores_255_and_zero():
    # valid: (0,0) |1 − 1.5| = 0.5 and (1,1) |4 − 2| = 2; (0,1) GT 255 and (1,0) GT 0 ignored
    # loss = 2.5 / 2 = 1.25; gradient sign(pred − gt) / 2 = −0.5 at (0,0), +0.5 at (1,1)
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)
    target = torch.tensor([[[[1.5, IGN], [0.0, 2.0]]]])
    loss = DepthL1Loss()(pred, target)
    _close(loss, 1.25)
    loss.backward()
    assert pred.grad.tolist() == [[[[-0.5, 0.0], [0.0, 0.5]]]]


def test_depth_all_ignored_and_shape_errors():
    pred = torch.ones(1, 1, 2, 2, requires_grad=True)
    loss = DepthL1Loss()(pred, torch.tensor([[[[0.0, IGN], [IGN, 0.0]]]]))
    _close(loss, 0.0)
    loss.backward()
    assert torch.all(pred.grad == 0)
    with pytest.raises(ValueError, match="spatial"):
        DepthL1Loss()(pred, torch.ones(1, 1, 3, 3))


# ---------------------------------------------------------------- combination
def _depth_normals_inputs():
    # L_depth = 1.25 (test_depth_l1_ignores_255_and_zero), L_normals = 0.6 (test_normals_l1_...)
    preds = {
        "depth": torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64, requires_grad=True),
        "normals": torch.tensor([[[3.0, 0.0], [7.0, 1.0]], [[0.0, 2.0], [7.0, 1.0]], [[4.0, 0.0], [7.0, 1.0]]],
                                dtype=torch.float64).unsqueeze(0).requires_grad_(True),
        "aux": torch.zeros(1),  # extra outputs are ignored
    }
    batch = {
        "image": torch.zeros(1, 3, 2, 2),
        "depth": torch.tensor([[[[1.5, IGN], [0.0, 2.0]]]]),
        "normals": torch.tensor([[[1.0, 0.0], [IGN, 0.0]], [[0.0, 1.0], [IGN, 0.0]], [[0.0, 0.0], [IGN, 0.0]]],
                                dtype=torch.float64).unsqueeze(0),
        "meta": {"img_name": ["x"]},
    }
    return preds, batch


def test_multitask_sum_scheme():
    preds, batch = _depth_normals_inputs()
    mtl = MultiTaskLoss({"depth": DepthL1Loss(), "normals": NormalsL1Loss()}, {"depth": 2.0, "normals": 10.0}, "sum")
    out = mtl(preds, batch)
    assert set(out) == {"depth", "normals", "total"}
    _close(out["depth"], 1.25)  # unweighted
    _close(out["normals"], 0.6)
    _close(out["total"], 2.0 * 1.25 + 10.0 * 0.6)  # 8.5
    out["total"].backward()
    # d total / d depth_pred = 2 · (∓0.5) at the two valid pixels
    assert preds["depth"].grad[0, 0, 0, 0].item() == pytest.approx(-1.0)
    assert preds["depth"].grad[0, 0, 1, 1].item() == pytest.approx(1.0)
    assert preds["normals"].grad.abs().sum() > 0


def test_multitask_log_scheme():
    preds, batch = _depth_normals_inputs()
    mtl = MultiTaskLoss({"depth": DepthL1Loss(), "normals": NormalsL1Loss()}, {"depth": 2.0, "normals": 10.0}, "log")
    out = mtl(preds, batch)
    _close(out["depth"], 1.25)
    _close(out["total"], 2.0 * math.log(1.25 + 1e-8) + 10.0 * math.log(0.6 + 1e-8))
    out["total"].backward()
    # d/dpred 2·log(L) = 2 / 1.25 · (∓0.5) = ∓0.8
    assert preds["depth"].grad[0, 0, 0, 0].item() == pytest.approx(-0.8)
    assert preds["depth"].grad[0, 0, 1, 1].item() == pytest.approx(0.8)


def test_multitask_errors():
    with pytest.raises(ValueError, match="'sum'.*'log'"):
        MultiTaskLoss({"depth": DepthL1Loss()}, {"depth": 1.0}, "uncertainty")
    with pytest.raises(ValueError, match="normals"):
        MultiTaskLoss({"depth": DepthL1Loss(), "normals": NormalsL1Loss()}, {"depth": 1.0})
    mtl = MultiTaskLoss({"depth": DepthL1Loss()}, {"depth": 1.0})
    with pytest.raises(KeyError, match="depth"):
        mtl({}, {"depth": torch.ones(1, 1, 2, 2)})


# ---------------------------------------------------------------- build_loss
def _cfg(tasks, scheme="log", weights=None, edge_w=0.95):
    weights = {t: 1.0 for t in tasks} if weights is None else weights
    return EasyDict({"TASKS": {"NAMES": list(tasks)},
                     "loss_kwargs": {"loss_scheme": scheme, "loss_weights": weights, "edge_w": edge_w}})


def test_build_loss_pascal_all_tasks_finite_with_grad():
    tasks = {"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1}
    mtl = build_loss(_cfg(tasks, weights={"semseg": 1, "human_parts": 2, "sal": 5, "edge": 50, "normals": 10,
                                          "depth": 1}))
    assert mtl.scheme == "log" and mtl.tasks == list(tasks)
    assert mtl.task_losses["edge"].pos_weight == 0.95
    g = torch.Generator().manual_seed(0)
    preds = {t: torch.randn(2, n, 3, 3, generator=g, requires_grad=True) for t, n in tasks.items()}
    normals = torch.nn.functional.normalize(torch.randn(2, 3, 3, 3, generator=g), dim=1)
    normals[:, :, 0, 0] = IGN
    batch = {"semseg": torch.randint(0, 21, (2, 1, 3, 3), generator=g).float(),
             "human_parts": torch.full((2, 1, 3, 3), IGN),  # no person in the batch: all ignored
             "sal": torch.randint(0, 2, (2, 1, 3, 3), generator=g).float(),
             "normals": normals,
             "edge": torch.randint(0, 2, (2, 1, 3, 3), generator=g).float()}
    out = mtl(preds, batch)
    assert out["human_parts"].item() == 0.0
    assert torch.isfinite(out["total"])
    out["total"].backward()
    for t in tasks:
        assert torch.isfinite(preds[t].grad).all()
        assert (preds[t].grad.abs().sum() > 0) == (t != "human_parts")


def test_build_loss_from_repo_configs(monkeypatch):
    import utils.config
    # the model-key validation imports the whole model zoo (seconds); it is irrelevant to the loss keys
    monkeypatch.setattr(utils.config, "_validate_model", lambda cfg: None, raising=False)
    load_config = utils.config.load_config
    for name, tasks in (("nyud", ["semseg", "depth", "normals", "edge"]),
                        ("pascal", ["semseg", "human_parts", "sal", "normals", "edge"])):
        mtl = build_loss(load_config(f"configs/mtmamba_{name}.yml"))
        assert mtl.tasks == tasks and mtl.scheme == "log"
        assert mtl.task_losses["edge"].pos_weight == pytest.approx(0.95)


def test_build_loss_errors():
    with pytest.raises(ValueError, match="'sum', 'log'"):
        build_loss(_cfg(["depth"], scheme="gradnorm"))
    with pytest.raises(ValueError, match="edge"):
        build_loss(_cfg(["semseg", "edge"], weights={"semseg": 1.0}))
    cfg = _cfg(["edge"])
    del cfg.loss_kwargs["edge_w"]
    with pytest.raises(ValueError, match="edge_w"):
        build_loss(cfg)
    with pytest.raises(ValueError, match="keypoints"):
        build_loss(_cfg(["keypoints"]))

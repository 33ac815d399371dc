"""Meters against straightforward per-pixel reference loops on tiny random arrays (EVALUATION.md §2–6),
and merge(state of half A) + half B == the whole."""
import math

import numpy as np
import pytest
import torch

from evaluation.depth import DepthMeter
from evaluation.miou import MIoUMeter
from evaluation.normals import NormalsMeter
from evaluation.saliency import SAL_THRESHOLDS, SaliencyMeter


def _halves(meter_cls, kwargs, preds, gts):
    whole, a, b = meter_cls(**kwargs), meter_cls(**kwargs), meter_cls(**kwargs)
    for p, g in zip(preds, gts):
        whole.update(p, g)
    a.update(preds[0], gts[0])
    b.update(preds[1], gts[1])
    a.merge(b.state())
    return whole.compute(), a.compute()


def _assert_same(x, y):
    assert x.keys() == y.keys()
    for k in x:
        np.testing.assert_allclose(x[k], y[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("num_classes", [40, 21, 7])
def test_miou_against_loop(num_classes):
    rng = np.random.default_rng(num_classes)
    logits = [rng.normal(size=(2, num_classes, 5, 6)).astype(np.float32) for _ in range(2)]
    gts = [rng.integers(0, num_classes, size=(2, 1, 5, 6)) for _ in range(2)]
    for g in gts:
        g[rng.random(g.shape) < 0.2] = 255
    tp, fp, fn = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    for lg, g in zip(logits, gts):
        for b in range(2):
            for y in range(5):
                for x in range(6):
                    t = g[b, 0, y, x]
                    if t == 255:
                        continue
                    p = int(np.argmax(lg[b, :, y, x]))
                    if p == t:
                        tp[t] += 1
                    else:
                        fp[p] += 1
                        fn[t] += 1
    expected = 100 * np.mean(tp / np.maximum(tp + fp + fn, 1e-8))
    whole, merged = _halves(MIoUMeter, {"num_classes": num_classes}, logits, gts)
    assert whole["mIoU"] == pytest.approx(expected, abs=1e-10)
    _assert_same(whole, merged)


def test_miou_integer_predictions_and_empty_class_warning(caplog):
    m = MIoUMeter(3)
    m.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 255]]))
    out = m.compute()
    assert out["IoU"] == [100.0, 100.0, 0.0] and "no GT and no prediction" in caplog.text
    with pytest.raises(ValueError, match="GT labels"):
        m.update(torch.tensor([[0]]), torch.tensor([[7]]))


def test_depth_against_loop():
    rng = np.random.default_rng(0)
    preds = [rng.uniform(-0.2, 5, size=(2, 1, 4, 5)) for _ in range(2)]
    gts = [rng.uniform(0.5, 6, size=(2, 1, 4, 5)) for _ in range(2)]
    gts[0][0, 0, 0, :3] = 0
    gts[1][1, 0, 2, :2] = 255
    s = np.zeros(4)
    n = 0
    for p_all, g_all in zip(preds, gts):
        for p, g in zip(p_all.ravel(), g_all.ravel()):
            if g == 0 or g == 255:
                continue
            p = max(p, 0.0)
            s += [(p - g) ** 2, (math.log(g) - math.log(max(p, 1e-9))) ** 2, abs(p - g) / g, (p - g) ** 2 / g]
            n += 1
    whole, merged = _halves(DepthMeter, {}, preds, gts)
    exp = {"rmse": math.sqrt(s[0] / n), "log_rmse": math.sqrt(s[1] / n), "abs_rel": s[2] / n, "sq_rel": s[3] / n}
    for k, v in exp.items():
        assert whole[k] == pytest.approx(v, rel=1e-12)
    _assert_same(whole, merged)


def test_normals_against_loop():
    rng = np.random.default_rng(1)
    preds = [rng.normal(size=(2, 3, 6, 7)) for _ in range(2)]
    gts = [rng.normal(size=(2, 3, 6, 7)) for _ in range(2)]
    for g in gts:
        g /= np.linalg.norm(g, axis=1, keepdims=True)
    gts[0][0, :, 0, :4] = 255
    gts[1][1, :, 3, :2] = 0
    angles = []
    for p_all, g_all in zip(preds, gts):
        for b in range(2):
            for y in range(6):
                for x in range(7):
                    g = g_all[b, :, y, x]
                    if np.any(g == 255) or not np.any(g):
                        continue
                    p = p_all[b, :, y, x] / np.linalg.norm(p_all[b, :, y, x])
                    c = np.clip(np.dot(p, g / np.linalg.norm(g)), -1, 1)
                    angles.append(math.degrees(math.acos(c)))
    angles = np.array(angles)
    whole, merged = _halves(NormalsMeter, {}, preds, gts)
    assert whole["mErr"] == pytest.approx(angles.mean(), abs=1e-6)
    assert whole["rmse"] == pytest.approx(np.sqrt((angles ** 2).mean()), abs=1e-6)
    lo, hi = np.sort(angles)[[(len(angles) - 1) // 2, len(angles) // 2]]  # histogram median: within one bin
    assert lo - 0.01 <= whole["median"] <= hi + 0.01
    for t in (11.25, 22.5, 30):
        assert whole[f"acc_{t:g}"] == pytest.approx(100 * np.mean(angles < t))
    _assert_same(whole, merged)


def _maxf_reference(probs, gts, compat):
    thresholds = torch.arange(0.05, 1, 0.05).numpy()       # the official grid (float32)
    best = 0.0
    for t in thresholds:
        tp = pp = ap = 0
        for p_all, g_all in zip(probs, gts):
            for p, g in zip(p_all.ravel(), g_all.ravel()):
                if g == 255:
                    continue
                s = 1 / (1 + math.exp(-float(p))) if compat else p
                pos = s >= t
                tp += pos and g == 1
                pp += pos
                ap += g == 1
        prec, rec = (tp / pp if pp else float("nan")), tp / ap
        f = 1.3 * prec * rec / (0.3 * prec + rec) if pp and tp else 0.0
        best = max(best, f)
    return 100 * best


@pytest.mark.parametrize("mode", ["invpt_compat", "atrc"])
def test_saliency_against_loop(mode):
    rng = np.random.default_rng(2)
    probs = [rng.random(size=(2, 1, 6, 6)).astype(np.float32) for _ in range(2)]
    gts = [(rng.random(size=(2, 1, 6, 6)) < 0.4).astype(np.int64) for _ in range(2)]
    gts[0][0, 0, 0] = 255
    whole, merged = _halves(SaliencyMeter, {"mode": mode}, probs, gts)
    assert whole["maxF_atrc"] == pytest.approx(_maxf_reference(probs, gts, False), abs=1e-9)
    assert whole["maxF_invpt_compat"] == pytest.approx(_maxf_reference(probs, gts, True), abs=1e-9)
    assert whole["maxF"] == whole[f"maxF_{mode}"]
    _assert_same(whole, merged)


def test_saliency_rejects_unknown_mode_and_accepts_logits():
    with pytest.raises(ValueError, match="sal_maxF_mode"):
        SaliencyMeter(mode="mti")
    m = SaliencyMeter("atrc")
    m.update(torch.tensor([[[[4.0]], [[-4.0]]]]).permute(1, 0, 2, 3).reshape(1, 2, 1, 1), torch.tensor([[[0]]]))
    assert m.state()["pp"][1].sum() == 0  # softmax foreground ≈ 0.0003 < 0.05


def test_merge_rejects_foreign_state():
    with pytest.raises(ValueError, match="state keys"):
        DepthMeter().merge(MIoUMeter(3).state())


def test_saliency_grid_is_the_official_one_and_a_score_on_a_threshold_counts():
    official = torch.arange(0.05, 1, 0.05)
    assert SAL_THRESHOLDS.dtype == official.dtype == torch.float32 and torch.equal(SAL_THRESHOLDS, official)
    numpy_grid = torch.from_numpy(np.arange(0.05, 1, 0.05, dtype=np.float32))
    moved = torch.nonzero(numpy_grid != official).flatten()
    assert len(moved) == 7                                  # where a float32 NumPy grid would differ
    m = SaliencyMeter("atrc")
    scores = official[moved].reshape(1, 1, 1, -1)           # each score exactly on its threshold
    m.update(scores, torch.ones_like(scores, dtype=torch.int64))
    positives = m.state()["pp"][1]
    for i in moved.tolist():                                # p >= τ_i holds for the score equal to τ_i
        assert positives[i] == int((official[moved] >= official[i]).sum())


def test_normals_tiny_prediction_along_the_gt_has_zero_angle():
    """A prediction shorter than F.normalize's eps, along the GT: the official pipeline (normalised twice) gives
    0°; one clamped normalisation would give 2·atan2(0.9, 1.1) = 78.6°."""
    gt = torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64).reshape(1, 3, 1, 1)
    m = NormalsMeter()
    m.update(1e-13 * gt, gt)
    assert m.compute()["mErr"] == pytest.approx(0.0, abs=1e-6)
    m = NormalsMeter()
    m.update(torch.zeros_like(gt), gt)                      # a zero prediction: 90°, as in the official pipeline
    assert m.compute()["mErr"] == pytest.approx(90.0, abs=1e-6)

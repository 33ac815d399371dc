"""§11.6 aggregation tables and §11.7 properties of EVALUATION.md, plus the per-image pipeline."""
import numpy as np
import pytest
from scipy import ndimage

from evaluation.boundary.gt import build_gt
from evaluation.boundary.seism import HED_THRESHOLDS, PROXY_THRESHOLDS, aggregate, eval_image, image_prf

# [cntR, sumR, cntP, sumP] for 2 images × 3 thresholds
COUNTS = np.array([
    [[8, 10, 8, 20], [6, 10, 6, 8], [2, 10, 2, 2]],   # image A: best per-image F at t1
    [[5, 5, 5, 6], [4, 5, 4, 4], [0, 5, 0, 0]],       # image B: best at t0; t2 has an empty prediction
])
THR = np.array([0.1, 0.5, 0.9])


def _interp_ap(points):
    """Straightforward AP: linear interpolation between recall-sorted points at R = k/100 inside the range."""
    points = sorted(points)
    total = 0.0
    for k in range(101):
        r = k / 100
        for (r0, p0), (r1, p1) in zip(points, points[1:]):
            if r0 <= r <= r1:
                total += p0 + (p1 - p0) * (r - r0) / (r1 - r0)
                break
    return total / 100


def test_hand_made_table():
    s = aggregate(COUNTS, THR)
    # pooled: t0 13/15, 13/26 → F 26/41; t1 10/15, 10/12 → F 20/27; t2 2/15, 2/2 → F 4/17
    assert s.ods_f == pytest.approx(20 / 27) and s.ods_threshold == 0.5
    assert (s.ods_r, s.ods_p) == (pytest.approx(10 / 15), pytest.approx(10 / 12))
    # OIS: A at t1 + B at t0 = [11, 15, 11, 14]
    assert s.ois_f == pytest.approx(22 / 29) and s.ois_r == pytest.approx(11 / 15)
    assert s.ap == pytest.approx(_interp_ap([(13 / 15, 0.5), (10 / 15, 10 / 12), (2 / 15, 1.0)]))
    assert s.num_images == 2


def test_per_image_empty_rules():
    prf = image_prf(np.array([[0, 0, 0, 5], [0, 5, 0, 0], [3, 5, 3, 3]]))
    np.testing.assert_allclose(prf[0], [0, 1, 0])        # no GT: R = 1, P = 0
    np.testing.assert_allclose(prf[1], [1, 0, 0])        # empty prediction: P = 1, R = 0
    np.testing.assert_allclose(prf[2], [1, 0.6, 0.75])
    with pytest.raises(ValueError, match="without GT"):
        image_prf(np.array([[0, 0, 2, 5]]))


def test_pooled_empty_rules():
    no_gt = aggregate(np.array([[[0, 0, 0, 4]]]), np.array([0.5]))
    assert (no_gt.ods_r, no_gt.ods_p, no_gt.ods_f) == (1.0, 0.0, 0.0)
    no_pred = aggregate(np.array([[[0, 5, 0, 0]]]), np.array([0.5]))
    assert (no_pred.ods_r, no_pred.ods_p) == (0.0, 1.0)
    no_match = aggregate(np.array([[[0, 5, 0, 3]]]), np.array([0.5]))   # "anything else stays 0"
    assert (no_match.ods_r, no_match.ods_p) == (0.0, 0.0)


def test_first_max_on_ties():
    c = np.array([[[5, 10, 5, 10], [5, 10, 5, 10], [2, 10, 2, 2]]])
    s = aggregate(c, THR)
    assert s.ods_threshold == 0.1 and s.ods_f == pytest.approx(0.5)
    # AP keeps the precision of the first (lowest-threshold) occurrence of a recall value
    c = np.array([[[10, 10, 10, 20], [10, 10, 10, 10], [5, 10, 5, 5]]])
    assert aggregate(c, THR).ap == pytest.approx(sum(1 - k / 100 for k in range(51)) / 100)   # 0.3825


def test_ods_invariant_to_image_order():
    rng = np.random.default_rng(0)
    sum_r = rng.integers(1, 50, size=(6, 1))
    cnt = rng.integers(0, 50, size=(6, 5))
    cnt = np.minimum(cnt, sum_r)
    sum_p = cnt + rng.integers(0, 30, size=(6, 5))
    c = np.stack([cnt, np.broadcast_to(sum_r, cnt.shape), cnt, sum_p], axis=-1)
    thr = np.linspace(0.1, 0.9, 5)
    assert aggregate(c, thr) == aggregate(c[::-1], thr)


def test_thresholds():
    assert len(HED_THRESHOLDS) == 101 and HED_THRESHOLDS[0] == 0.001 and HED_THRESHOLDS[-1] == 0.999
    np.testing.assert_allclose(HED_THRESHOLDS[1:-1], np.arange(1, 100) / 100)
    assert len(PROXY_THRESHOLDS) == 19 and PROXY_THRESHOLDS[0] == 0.05 and PROXY_THRESHOLDS[-1] == 0.95


def test_eval_image_pipeline_and_strict_threshold():
    labels = np.zeros((60, 80), int)
    labels[:, 40:] = 1
    gt = build_gt(labels, relabel=True)
    dist = ndimage.distance_transform_edt(~gt)
    pred = np.where(dist == 0, 51, 0).astype(np.uint8)   # 51/255 == 0.2 exactly in float32
    counts = eval_image(pred, gt, 0.0075, thresholds=np.array([0.1, 0.2, 0.3]))
    assert counts[0, 3] > 0 and counts[0, 0] == counts[0, 2]
    assert counts[1, 3] == 0   # strict '>': a value equal to the threshold is cut
    assert (counts[:, 1] == gt.sum()).all()
    s = aggregate(counts[None], np.array([0.1, 0.2, 0.3]))
    assert s.ods_threshold == 0.1 and s.ods_p == 1.0
    with pytest.raises(ValueError, match="centre-cropped"):
        eval_image(pred[:-1], gt, 0.0075)

"""§11.5 matching table and §11.7 matcher properties of EVALUATION.md."""
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from evaluation.boundary.match import disc_offsets, get_matcher, match_csa, match_hk, max_dist_pixels

H, W, MAX_DIST = 425, 560, 0.011


def _line(dy=0, dx=0):
    m = np.zeros((H, W), bool)
    m[200 + dy, 50 + dx:500 + dx] = True
    return m


def test_d_max_and_disc():
    assert max_dist_pixels(MAX_DIST, (H, W)) == pytest.approx(7.733, abs=1e-3)
    assert len(disc_offsets(max_dist_pixels(MAX_DIST, (H, W)))) == 185


@pytest.mark.parametrize("shift, expected", [((0, 0), 450), ((3, 0), 450), ((7, 0), 450), ((8, 0), 0),
                                             ((10, 0), 0), ((5, 5), 450), ((6, 6), 448)])
def test_line_shift_table_hk_exact(shift, expected):
    assert match_hk(_line(*shift), _line(), MAX_DIST) == (expected, expected)


def test_double_line_precision_half():
    pred = _line(-1) | _line(1)
    cnt_r, cnt_p = match_hk(pred, _line(), MAX_DIST)
    assert cnt_r == 450 and cnt_p / pred.sum() == 0.5   # one-to-one: precision exactly 0.5


def _reference_max_matching(pred, gt, max_dist):
    d_max = max_dist_pixels(max_dist, gt.shape)
    p, g = np.argwhere(pred), np.argwhere(gt)
    if len(p) == 0 or len(g) == 0:
        return 0
    d2 = ((p[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(-(d2 <= d_max * d_max).astype(int))
    return int((d2[rows, cols] <= d_max * d_max).sum())


def test_hk_is_maximum_on_random_maps():
    rng = np.random.default_rng(0)
    for _ in range(30):
        pred, gt = rng.random((30, 40)) < rng.uniform(0.02, 0.3), rng.random((30, 40)) < rng.uniform(0.02, 0.3)
        k, k2 = match_hk(pred, gt, 0.05)
        assert k == k2 == _reference_max_matching(pred, gt, 0.05)
        assert k <= min(pred.sum(), gt.sum())


def test_empty_and_errors():
    assert match_hk(np.zeros((5, 5), bool), _line()[:5, :5], 0.1) == (0, 0)
    with pytest.raises(ValueError, match="differ"):
        match_hk(np.zeros((5, 5), bool), np.zeros((5, 6), bool), 0.1)
    with pytest.raises(ValueError, match="valid"):
        get_matcher("bsds")


def test_csa_missing_message_or_bound():
    try:
        import pyEdgeEval  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pyEdgeEval"):
            match_csa(_line(), _line(), MAX_DIST)
        pytest.skip("pyEdgeEval not installed; checked the install hint only")
    for shift in [(0, 0), (3, 0), (7, 0), (5, 5), (6, 6)]:
        k_hk = match_hk(_line(*shift), _line(), MAX_DIST)[0]
        cnt_r, cnt_p = match_csa(_line(*shift), _line(), MAX_DIST)
        assert cnt_r == cnt_p <= k_hk and k_hk - cnt_r <= 0.01 * k_hk

"""§11.2 (convTri) and §11.3 (NMS) of EVALUATION.md."""
import numpy as np
import pytest

from evaluation.boundary.nms import conv_tri, edge_nms, orientation


def test_conv_tri_equals_explicit_2d_convolution():
    rng = np.random.default_rng(0)
    img = rng.random((13, 17)).astype(np.float32)
    k1 = np.array([1, 2, 3, 4, 5, 4, 3, 2, 1], np.float64) / 25
    k2 = np.outer(k1, k1)
    padded = np.pad(img.astype(np.float64), 4, mode="symmetric")
    ref = np.zeros_like(img, dtype=np.float64)
    for y in range(img.shape[0]):
        for x in range(img.shape[1]):
            ref[y, x] = (padded[y:y + 9, x:x + 9] * k2).sum()
    out = conv_tri(img)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-6)
    np.testing.assert_allclose(conv_tri(np.full((9, 11), 0.3, np.float32)), 0.3, atol=1e-7)


def test_ridge_keeps_only_centre_row():
    e = np.zeros((20, 30), np.float32)
    ramp = np.linspace(0.8, 0.9, 30, dtype=np.float32)
    e[9], e[10], e[11] = 0.5 * ramp, ramp, 0.6 * ramp
    out = edge_nms(e)
    assert (out[10, 5:-5] > 0).all()
    assert not (out[9] > 0).any() and not (out[11] > 0).any()
    np.testing.assert_array_equal(out[10, 5:-5], e[10, 5:-5])   # survivors keep their value, not e·1.01


def test_orientation_sign_zero_quirk():
    """O = mod(atan(Oyy·sign(−Oxy)/(Oxx+1e-5)), π) (§7.2): on an exactly symmetric, x-uniform ridge Oxy = 0, so
    sign(0) = 0 gives O = 0 (sampling along the ridge) and NMS keeps all three rows; faithful to MATLAB."""
    e = np.zeros((20, 30), np.float32)
    e[9], e[10], e[11] = 0.5, 0.9, 0.5
    assert (orientation(e)[10] == 0).all()
    assert ((edge_nms(e)[9:12, 5:-5]) > 0).all()


def test_border_attenuation_factors():
    e = np.full((40, 50), 0.5, np.float32)   # constant: nothing is suppressed, only the borders are scaled
    out = edge_nms(e) / 0.5
    factors = np.array([0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(out[20, :5], factors, atol=1e-6)
    np.testing.assert_allclose(out[20, -5:], factors[::-1], atol=1e-6)
    np.testing.assert_allclose(out[:5, 25], factors, atol=1e-6)
    np.testing.assert_allclose(out[:5, :5], np.outer(factors, factors), atol=1e-6)   # corners twice
    np.testing.assert_allclose(out[5:-5, 5:-5], 1.0)


def test_border_width_capped_for_small_images():
    out = edge_nms(np.full((6, 40), 0.5, np.float32)) / 0.5   # s = min(5, w//2, h//2) = 3
    np.testing.assert_allclose(out[:, 20], [0, 1 / 3, 2 / 3, 2 / 3, 1 / 3, 0], atol=1e-6)


def test_nms_against_pyedgeeval():
    pee = pytest.importorskip("pyEdgeEval")
    rng = np.random.default_rng(1)
    e = (rng.integers(0, 256, size=(60, 80)).astype(np.float32) / 255).astype(np.float32)
    e = conv_tri(e, 1)   # spatially correlated map
    e = (np.floor(e * 255) / 255).astype(np.float32)
    ours = edge_nms(e)
    theirs = pee.nms(e.astype(np.float64), orientation(e).astype(np.float64), r=1, s=5, m=1.01)
    differ = (ours > 0) != (theirs > 0)
    assert differ.sum() <= 0.001 * e.size   # only float32 vs float64 near-ties may differ

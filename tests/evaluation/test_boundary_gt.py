"""§11.1 (seg2bmap, relabel) and §11.4 (thinning) of EVALUATION.md."""
import numpy as np
import pytest
from scipy import ndimage

from evaluation.boundary.gt import build_gt, relabel4, seg2bmap
from evaluation.boundary.thin import thin, thin_skimage


def test_seg2bmap_hand_made():
    labels = np.array([[1, 1, 2, 2],
                       [1, 1, 2, 2],
                       [3, 3, 3, 3],
                       [3, 3, 3, 3]])
    expected = np.array([[0, 1, 0, 0],
                         [1, 1, 1, 1],   # last column: only the lower neighbour (2 vs 3)
                         [0, 0, 0, 0],
                         [0, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(seg2bmap(labels), expected)


def test_seg2bmap_last_row_column_and_corner():
    labels = np.zeros((4, 4), int)
    labels[3, 1] = 5   # on the last row
    labels[3, 3] = 7   # bottom-right corner: itself never a boundary
    expected = np.array([[0, 0, 0, 0],
                         [0, 0, 0, 0],
                         [1, 1, 1, 1],   # (2,0) lower-right, (2,1) lower, (2,2) lower-right, (2,3) lower
                         [1, 1, 1, 0]], dtype=bool)  # last row: right neighbour only; corner 0
    np.testing.assert_array_equal(seg2bmap(labels), expected)


def test_seg2bmap_matches_pixel_loop():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(7, 9))
    h, w = labels.shape
    ref = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            nbrs = [(y, x + 1), (y + 1, x), (y + 1, x + 1)] if y < h - 1 and x < w - 1 else \
                [(y, x + 1)] if y == h - 1 and x < w - 1 else [(y + 1, x)] if x == w - 1 and y < h - 1 else []
            ref[y, x] = any(labels[y, x] != labels[n] for n in nbrs)
    np.testing.assert_array_equal(seg2bmap(labels), ref)


def test_relabel_diagonal_vs_4_adjacent():
    diagonal = relabel4(np.array([[1, 0], [0, 1]]))
    assert len(np.unique(diagonal)) == 4          # the two 1s touch only diagonally: separate components
    adjacent = relabel4(np.array([[1, 1], [0, 1]]))
    assert adjacent[0, 0] == adjacent[0, 1] == adjacent[1, 1] != adjacent[1, 0]
    # same-label pixels touching diagonally are separated by a boundary
    b = seg2bmap(relabel4(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]])))
    assert b[0, 0]


def test_relabel_never_changes_seg2bmap():
    """With the right/lower/lower-right rule, two diagonal same-label neighbours that lie in different
    4-components always have a different-label right neighbour, so relabel cannot add a boundary pixel."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        labels = rng.integers(0, 3, size=(12, 15))
        np.testing.assert_array_equal(seg2bmap(relabel4(labels)), seg2bmap(labels))


def test_nyud_gt_is_outline_of_strokes():
    edge = np.zeros((12, 14), np.uint8)
    edge[:, 6] = 255                          # 1-px stroke → 2-px seg2bmap band → 1-px after thinning
    band = seg2bmap(edge.astype(np.int32))
    assert band[3].sum() == 2
    g = build_gt(edge.astype(np.int32), relabel=False)
    assert (g[1:-1].sum(axis=1) == 1).all()   # thinning may shorten the band ends
    thick = np.zeros((12, 20), np.uint8)
    thick[:, 6:10] = 255                      # 4-px stroke → two parallel lines
    assert (build_gt(thick.astype(np.int32), relabel=False)[2:-2].sum(axis=1) == 2).all()


def _random_blobs(rng, n):
    for _ in range(n):
        m = ndimage.binary_dilation(rng.random((30, 40)) < 0.03, iterations=int(rng.integers(1, 4)))
        yield m | (rng.random((30, 40)) < 0.08)


def test_thin_equals_skimage_on_random_blobs():
    rng = np.random.default_rng(2)
    diffs = sum(not np.array_equal(thin(m), thin_skimage(m)) for m in _random_blobs(rng, 300))
    assert diffs == 0


def test_thin_lines_and_idempotence():
    line2 = np.zeros((10, 30), bool)
    line2[4:6, 3:27] = True
    t = thin(line2)
    assert (t[:, 5:25].sum(axis=0) == 1).all()
    line1 = np.zeros((10, 30), bool)
    line1[4, 3:27] = True
    np.testing.assert_array_equal(thin(line1), line1)
    rng = np.random.default_rng(3)
    for m in _random_blobs(rng, 20):
        once = thin(m)
        np.testing.assert_array_equal(thin(once), once)   # only 1-px structures remain
        assert not (once & ~m).any()


def test_thin_rejects_3d():
    with pytest.raises(ValueError, match="2-D"):
        thin(np.zeros((2, 2, 2), bool))

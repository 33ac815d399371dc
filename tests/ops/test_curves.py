"""MDHS scan orders (PAMM, MODELS.md §3.2, §3.6): Hilbert / Z / S curves in four rotations, checked against the spec's
verified facts, the released code's examples and independent curve generators written below."""
from functools import lru_cache

import pytest
import torch

from models.ops.curves import CURVES, curve_orders
from models.ops.scan_orders import SCAN_ORDERS, scan_order

SIZES = [(28, 36), (32, 32), (7, 5), (1, 9)]


# --------------------------------------------------------------------------------------------------------
# Independent references: the classic Hilbert d -> (x, y) walk, recursive Z quadrants, row snake


@lru_cache(maxsize=None)
def hilbert_cells(n: int) -> list[tuple[int, int]]:
    """Cells (row, col) of an n×n Hilbert curve in visiting order (the textbook d2xy; row = y, col = x)."""
    cells = []
    for d in range(n * n):
        x = y = 0
        t, s = d, 1
        while s < n:
            rx = 1 & (t // 2)
            ry = 1 & (t ^ rx)
            if ry == 0:
                if rx == 1:
                    x, y = s - 1 - x, s - 1 - y
                x, y = y, x
            x, y = x + s * rx, y + s * ry
            t //= 4
            s *= 2
        cells.append((y, x))
    return cells


@lru_cache(maxsize=None)
def z_cells(n: int) -> list[tuple[int, int]]:
    """Z order: quadrants top-left, top-right, bottom-left, bottom-right, recursively."""
    if n == 1:
        return [(0, 0)]
    h = n // 2
    sub = z_cells(h)
    return [(r + dr, c + dc) for dr, dc in ((0, 0), (0, h), (h, 0), (h, h)) for r, c in sub]


@lru_cache(maxsize=None)
def s_cells(n: int) -> list[tuple[int, int]]:
    """S order: even rows left to right, odd rows right to left."""
    return [(r, c if r % 2 == 0 else n - 1 - c) for r in range(n) for c in range(n)]


REFERENCE = {"hilbert": hilbert_cells, "z": z_cells, "s": s_cells}


def reference_perm(curve: str, rotation: int, h: int, w: int) -> torch.Tensor:
    """Rank grid of the curve's square, rotated counter-clockwise, cropped top-left, read in rank order.

    The square: the enclosing 2^p one for Hilbert; for Z and S the max(H, W) one of the released get_z_order_4 /
    get_s_order_4, whose ranks are those of the 2^p curve restricted to its top-left max(H, W) corner."""
    n = 2
    while n < max(h, w):
        n *= 2
    rank = torch.empty(n, n, dtype=torch.long)
    for i, (r, c) in enumerate(REFERENCE[curve](n)):
        rank[r, c] = i
    side = n if curve == "hilbert" else max(h, w)
    return torch.argsort(torch.rot90(rank[:side, :side], rotation, dims=(0, 1))[:h, :w].reshape(-1))


def cells(perm: torch.Tensor, w: int) -> list[tuple[int, int]]:
    return [(int(i) // w, int(i) % w) for i in perm]


# --------------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("curve", CURVES)
@pytest.mark.parametrize("h,w", SIZES)
def test_orders_are_permutations_with_exact_inverses(curve, h, w):
    x = torch.randn(2, 3, h * w)
    for name in curve_orders(curve):
        assert name in SCAN_ORDERS
        perm, inv = scan_order(name, h, w)
        assert torch.equal(torch.sort(perm).values, torch.arange(h * w))
        assert torch.equal(x[..., perm][..., inv], x) and torch.equal(x[..., inv][..., perm], x)


@pytest.mark.parametrize("curve", CURVES)
@pytest.mark.parametrize("h,w", [*SIZES, (4, 4), (3, 8), (2, 3), (1, 3), (5, 5), (6, 10), (9, 7)])
def test_orders_match_independent_curves(curve, h, w):
    for k, name in enumerate(curve_orders(curve)):
        assert torch.equal(scan_order(name, h, w)[0], reference_perm(curve, k, h, w)), (name, h, w)


def test_released_z_and_s_examples():
    """MODELS.md §3.6: the released get_z_order_4 / get_s_order_4 use the max(H, W) square (not the power of two)."""
    assert scan_order("z_rot1", 2, 3)[0].tolist() == [3, 4, 0, 1, 5, 2]
    assert scan_order("s_rot2", 1, 3)[0].tolist() == [2, 1, 0]


def test_z_order_28x36_reads_the_36x36_square():
    """Z at NYUD's 28×36: rotation k visits the cells by the Morton index of the cell they came from in the 36×36
    square rotated k times (Morton values written out bit by bit here); rotations 1-3 differ from the 64×64 crop."""
    def morton(r, c):
        return sum((((r >> b) & 1) << (2 * b + 1)) | (((c >> b) & 1) << (2 * b)) for b in range(6))

    for k in range(4):
        cells = []
        for r in range(28):
            for c in range(36):
                rr, cc = r, c
                for _ in range(k):             # undo one counter-clockwise rotation of the 36×36 square
                    rr, cc = cc, 35 - rr
                cells.append(morton(rr, cc))
        want = sorted(range(28 * 36), key=cells.__getitem__)
        assert scan_order(f"z_rot{k}", 28, 36)[0].tolist() == want
        if k:
            assert (scan_order(f"z_rot{k}", 28, 36)[0] != reference_pow2(k, 28, 36)).sum() > 800


def reference_pow2(rotation: int, h: int, w: int) -> torch.Tensor:
    """Z order on the enclosing power-of-two square (what these orders were before the released code was matched)."""
    rank = torch.empty(64, 64, dtype=torch.long)
    for i, (r, c) in enumerate(z_cells(64)):
        rank[r, c] = i
    return torch.argsort(torch.rot90(rank, rotation, dims=(0, 1))[:h, :w].reshape(-1))


def test_hilbert_32x32_has_only_unit_steps():
    for name in curve_orders("hilbert"):
        rc = torch.tensor(cells(scan_order(name, 32, 32)[0], 32))
        assert (rc.diff(dim=0).abs().sum(dim=1) == 1).all(), name


def test_hilbert_28x36_corners_and_jumps():
    """MODELS.md §3.2: start/end cells of the four rotations on 28×36, and the jumps of the cropped 64×64 curve."""
    ends = {0: ((0, 0), (0, 35)), 1: ((24, 35), (0, 0)), 2: ((3, 35), (27, 0)), 3: ((27, 32), (27, 27))}
    max_jump = {0: 31, 1: 7, 2: 7, 3: 7}
    starts = set()
    for k, name in enumerate(curve_orders("hilbert")):
        rc = cells(scan_order(name, 28, 36)[0], 36)
        assert (rc[0], rc[-1]) == ends[k]
        steps = torch.tensor(rc).diff(dim=0).abs().sum(dim=1)
        assert 3 <= int((steps > 1).sum()) <= 6 and int(steps.max()) == max_jump[k]
        starts.add(rc[0])
    assert len(starts) == 4


def test_four_rotations_start_at_four_corners():
    for curve in CURVES:
        firsts = {cells(scan_order(name, 32, 32)[0], 32)[0] for name in curve_orders(curve)}
        assert firsts == {(0, 0), (0, 31), (31, 0), (31, 31)}, curve


def test_hilbert_4x4_visiting_order():
    """MODELS.md §3.2: position in the sequence of every cell of a 4×4 map, rotation 0."""
    _, inv = scan_order("hilbert_rot0", 4, 4)
    assert inv.view(4, 4).tolist() == [[0, 1, 14, 15], [3, 2, 13, 12], [4, 7, 8, 11], [5, 6, 9, 10]]


def test_unknown_curve_names_the_choices():
    with pytest.raises(ValueError, match="hilbert"):
        curve_orders("peano")

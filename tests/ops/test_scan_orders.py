"""Scan orders: each is a permutation with an exact inverse; cross_scan/cross_merge match direct layouts."""
import pytest
import torch

from models.ops.scan_orders import SCAN_ORDERS, SS2D_ORDERS, cross_merge, cross_scan, scan_order

SIZES = [(1, 1), (1, 7), (7, 1), (3, 5), (5, 3), (4, 4), (9, 13)]


@pytest.mark.parametrize("name", sorted(SCAN_ORDERS))
@pytest.mark.parametrize("h,w", SIZES)
def test_order_composed_with_inverse_is_identity(name, h, w):
    perm, inv = scan_order(name, h, w)
    x = torch.randn(2, 3, h * w)
    assert torch.equal(x[..., perm][..., inv], x)
    assert torch.equal(x[..., inv][..., perm], x)
    assert torch.equal(torch.sort(perm).values, torch.arange(h * w))


@pytest.mark.parametrize("h,w", SIZES)
def test_orders_match_their_definition(h, w):
    x = torch.arange(h * w).view(h, w)
    expected = {
        "raster": x.reshape(-1),
        "transposed": x.t().reshape(-1),
        "raster_rev": x.reshape(-1).flip(0),
        "transposed_rev": x.t().reshape(-1).flip(0),
    }
    for name, want in expected.items():
        perm, _ = scan_order(name, h, w)
        assert torch.equal(x.reshape(-1)[perm], want), name


@pytest.mark.parametrize("h,w", SIZES)
def test_cross_scan_and_merge(h, w):
    x = torch.randn(2, 5, h, w)
    xs = cross_scan(x)
    assert xs.shape == (2, len(SS2D_ORDERS), 5, h * w)
    # the official layout: raster, transposed, and both reversed
    assert torch.equal(xs[:, 0], x.flatten(2))
    assert torch.equal(xs[:, 1], x.transpose(2, 3).flatten(2))
    assert torch.equal(xs[:, 2], x.flatten(2).flip(-1))
    assert torch.equal(xs[:, 3], x.transpose(2, 3).flatten(2).flip(-1))
    torch.testing.assert_close(cross_merge(xs, h, w), len(SS2D_ORDERS) * x)


def test_cross_scan_gradient_is_cross_merge():
    x = torch.randn(1, 3, 4, 6, requires_grad=True)
    g = torch.randn(1, 4, 3, 24)
    (cross_scan(x) * g).sum().backward()
    torch.testing.assert_close(x.grad, cross_merge(g, 4, 6))


def test_unknown_order_names_valid_choices():
    with pytest.raises(KeyError, match="raster"):
        scan_order("zigzag", 3, 3)

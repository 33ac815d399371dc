"""Scan orders: how a 2-D map is serialised into a 1-D sequence for the selective scan.

An order is a permutation ``perm`` of the raster (row-major, W fastest) positions of an
H×W map: ``seq[i] = x_raster[perm[i]]``. Its inverse ``inv`` maps the sequence back,
``x_raster[j] = seq[inv[j]]``. Index tables are pure functions of (name, H, W) and are
cached per (name, H, W, device).

VMamba's SS2D cross-scan (MTMamba Eqs. 13-15, MODELS.md §0.3) reads the map in the four
orders of ``SS2D_ORDERS``: raster, transposed (column-major), and both reversed. Two implementations:
``cross_scan``/``cross_merge`` move the data with one gather per call for all orders (the fast execution), and
``cross_scan_copies``/``cross_merge_copies`` build the four sequences from transpose, flip and concatenation copies,
the way the official MTMamba code does (the reference execution, PERFORMANCE.md §4.1). The fast execution reads
G layers' maps straight from their channels-last layout (B, H, W, G, D) with ``cross_scan_channels_last`` /
``cross_merge_channels_last``: one gather each way on the GPU, and on the CPU, where a gather costs more than a copy,
VMamba's four orders built from their structure (``ss2d_cross_scan`` / ``ss2d_cross_merge``).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence

import torch

from .curves import CURVE_ORDERS

__all__ = ["SCAN_ORDERS", "SS2D_ORDERS", "scan_order", "stacked_orders", "cross_scan", "cross_merge",
           "cross_scan_copies", "cross_merge_copies", "gather_cross_scan", "gather_cross_merge", "ss2d_cross_scan",
           "ss2d_cross_merge", "structured_layout", "cross_scan_channels_last", "cross_merge_channels_last"]


def _raster(h: int, w: int) -> torch.Tensor:
    return torch.arange(h * w)


def _transposed(h: int, w: int) -> torch.Tensor:
    # column-major: W slowest, H fastest
    return torch.arange(h * w).view(h, w).t().reshape(-1)


SCAN_ORDERS: dict[str, Callable[[int, int], torch.Tensor]] = {
    "raster": _raster,
    "transposed": _transposed,
    "raster_rev": lambda h, w: _raster(h, w).flip(0),
    "transposed_rev": lambda h, w: _transposed(h, w).flip(0),
}
SS2D_ORDERS: tuple[str, ...] = ("raster", "transposed", "raster_rev", "transposed_rev")
SCAN_ORDERS.update(CURVE_ORDERS)  # PAMM's MDHS: Hilbert / Z / S curves in four rotations (MODELS.md §3.2)


@lru_cache(maxsize=None)
def _order_cpu(name: str, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    if name not in SCAN_ORDERS:
        raise KeyError(f"unknown scan order {name!r}; valid orders: {sorted(SCAN_ORDERS)}")
    perm = SCAN_ORDERS[name](h, w)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(h * w)
    return perm, inv


@lru_cache(maxsize=None)
def _stacked(names: tuple[str, ...], h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    perms, invs = zip(*(_order_cpu(n, h, w) for n in names))
    return torch.stack(perms).to(device), torch.stack(invs).to(device)


def stacked_orders(orders: Sequence[str], h: int, w: int,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(perms, invs)`` of several orders, each a (K, H·W) int64 tensor on ``device`` (cached)."""
    return _stacked(tuple(orders), h, w, torch.device(device))


def scan_order(name: str, h: int, w: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(perm, inv)``, each a (H·W,) int64 tensor on ``device``."""
    perm, inv = _stacked((name,), h, w, torch.device(device))
    return perm[0], inv[0]


def cross_scan(x: torch.Tensor, orders: Sequence[str] = SS2D_ORDERS) -> torch.Tensor:
    """Serialise a map in every order: (B, D, H, W) -> (B, K, D, L), K = len(orders), L = H·W."""
    b, d, h, w = x.shape
    perm, _ = _stacked(tuple(orders), h, w, x.device)         # (K, L)
    k, length = perm.shape
    flat = x.reshape(b, 1, d, length).expand(b, k, d, length)  # (B, K, D, L) raster, a view
    return torch.gather(flat, 3, perm.view(1, k, 1, length).expand(b, k, d, length))


def cross_merge(y: torch.Tensor, h: int, w: int, orders: Sequence[str] = SS2D_ORDERS) -> torch.Tensor:
    """Map every sequence back to raster order and sum over K: (B, K, D, L) -> (B, D, H, W)."""
    b, k, d, _ = y.shape
    _, inv = _stacked(tuple(orders), h, w, y.device)           # (K, L)
    out = torch.gather(y, 3, inv.view(1, k, 1, -1).expand(b, k, d, -1))
    return out.sum(dim=1).view(b, d, h, w)


def cross_scan_copies(x: torch.Tensor) -> torch.Tensor:
    """``cross_scan`` for ``SS2D_ORDERS`` from copies, as the official code builds it: (B, D, H, W) -> (B, 4, D, L).

    The raster and the transposed sequence are stacked, then the pair is concatenated with its flip.
    """
    b, d, h, w = x.shape
    pair = torch.stack([x.reshape(b, d, h * w), x.transpose(2, 3).contiguous().view(b, d, h * w)], dim=1)
    return torch.cat([pair, pair.flip(-1)], dim=1)


def cross_merge_copies(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``cross_merge`` for ``SS2D_ORDERS`` from copies: un-flip, un-transpose and add. (B, 4, D, L) -> (B, D, H, W)."""
    b, _, d, length = y.shape
    unflipped = y[:, 2:4].flip(-1)                                          # raster, transposed
    transposed = torch.stack([y[:, 1], unflipped[:, 1]], dim=1)            # (B, 2, D, L) in (w, h) order
    transposed = transposed.view(b, 2, d, w, h).transpose(3, 4).contiguous().view(b, 2, d, length)
    return (y[:, 0] + unflipped[:, 0] + transposed[:, 0] + transposed[:, 1]).view(b, d, h, w)


def gather_cross_scan(x: torch.Tensor, orders: Sequence[str]) -> torch.Tensor:
    """The K sequences of every group with one gather from the channels-last map: (B, H, W, G, D) -> (B, G, K, D, L)."""
    b, h, w, g, d = x.shape
    perm, _ = _stacked(tuple(orders), h, w, x.device)                          # (K, L)
    k, length = perm.shape
    src = x.reshape(b, length, g, d).permute(0, 2, 3, 1).unsqueeze(2)        # (B, G, 1, D, L), a view
    return torch.gather(src.expand(b, g, k, d, length), 4, perm.view(1, 1, k, 1, length).expand(b, g, k, d, length))


def gather_cross_merge(y: torch.Tensor, h: int, w: int, orders: Sequence[str]) -> torch.Tensor:
    """Every sequence back to raster order with one gather, summed over K: (B, G, K, D, L) -> (B, H, W, G, D) view."""
    b, g, k, d, length = y.shape
    _, inv = _stacked(tuple(orders), h, w, y.device)
    merged = torch.gather(y, 4, inv.view(1, 1, k, 1, length).expand(b, g, k, d, length)).sum(2)   # (B, G, D, L)
    return merged.view(b, g, d, h, w).permute(0, 3, 4, 1, 2)


def ss2d_cross_scan(x: torch.Tensor) -> torch.Tensor:
    """:func:`gather_cross_scan` for VMamba's four orders, from their structure: the raster and the transposed read,
    each also flipped (cheaper than a gather on the CPU)."""
    b, h, w, g, d = x.shape
    raster = x.permute(0, 3, 4, 1, 2).reshape(b, g, d, h * w)
    transposed = x.permute(0, 3, 4, 2, 1).reshape(b, g, d, h * w)
    return torch.stack([raster, transposed, raster.flip(-1), transposed.flip(-1)], dim=2)


def ss2d_cross_merge(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """:func:`gather_cross_merge` for VMamba's four orders, from their structure."""
    b, g, _, d, _ = y.shape
    y0, y1, y2, y3 = y.unbind(2)
    raster = (y0 + y2.flip(-1)).view(b, g, d, h, w)
    transposed = (y1 + y3.flip(-1)).view(b, g, d, w, h).transpose(3, 4)
    return (raster + transposed).permute(0, 3, 4, 1, 2)


def structured_layout(orders: Sequence[str], device: torch.device) -> bool:
    """Whether the channels-last cross-scan builds VMamba's orders from their structure (CPU) instead of gathering."""
    return tuple(orders) == SS2D_ORDERS and device.type != "cuda"


def cross_scan_channels_last(x: torch.Tensor, orders: Sequence[str]) -> torch.Tensor:
    """(B, H, W, G, D) -> (B, G, K, D, L): the K sequences of every group, in the cheaper way for the device."""
    return ss2d_cross_scan(x) if structured_layout(orders, x.device) else gather_cross_scan(x, orders)


def cross_merge_channels_last(y: torch.Tensor, h: int, w: int, orders: Sequence[str]) -> torch.Tensor:
    """(B, G, K, D, L) -> (B, H, W, G, D) (a view), summed over K, in the cheaper way for the device."""
    return ss2d_cross_merge(y, h, w) if structured_layout(orders, y.device) else gather_cross_merge(y, h, w, orders)

"""Fast execution: G layers of the same shape (the T task-specific blocks of a stage) as one grouped computation.

The functions read the parameters of ordinary modules (:class:`~models.ss2d.SS2D`, :class:`~models.blocks.STM`,
:class:`~models.blocks.CTM`) and compute exactly what those modules compute one by one, with the levers of
PERFORMANCE.md: the G groups share every kernel launch (batched matmuls, one depthwise conv over G·D channels, one
selective-scan call over G·K groups), the four scan directions are read and merged with one gather each, fused
with the layout change around the scan, and the maps stay channels-last. Stacking the weights costs one copy of
them per call, small next to the activations.

Tensors carry the group axis first, ``(G, B, H, W, C)``, except inside the scan, whose channel-last layout is
``(B, H, W, G, D)`` so that the depthwise conv sees an ordinary channels-last map of G·D channels.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops.scan_orders import cross_merge_channels_last, cross_scan_channels_last
from .ss2d import scan_parameter_sets

__all__ = ["stack_parameters", "grouped_linear", "grouped_layer_norm", "scan_calls", "grouped_scan",
           "grouped_ss2d_core", "grouped_stm",
           "grouped_ctm"]


def stack_parameters(modules: Sequence[nn.Module], name: str) -> torch.Tensor:
    """The parameter ``name`` of every module, stacked on a new leading group axis (a view for one module)."""
    params = [getattr(m, name) for m in modules]
    return params[0].unsqueeze(0) if len(params) == 1 else torch.stack(params)


def grouped_linear(x: torch.Tensor, linears: Sequence[nn.Linear]) -> torch.Tensor:
    """``linears[g](x[g])`` for every g in one batched matmul: (G, ..., in) -> (G, ..., out)."""
    g, *rest, c = x.shape
    w = stack_parameters(linears, "weight")                                    # (G, out, in)
    y = torch.bmm(x.reshape(g, -1, c), w.transpose(1, 2))
    if linears[0].bias is not None:
        y = y + stack_parameters(linears, "bias").unsqueeze(1)
    return y.view(g, *rest, w.shape[1])


def grouped_layer_norm(x: torch.Tensor, norms: Sequence[nn.LayerNorm], group_dim: int = 0) -> torch.Tensor:
    """``norms[g]`` applied to the slice g of ``x`` along ``group_dim``, normalising the last axis."""
    y = F.layer_norm(x, x.shape[-1:], eps=norms[0].eps)
    shape = [1] * x.dim()
    shape[group_dim], shape[-1] = len(norms), x.shape[-1]
    return torch.addcmul(stack_parameters(norms, "bias").view(shape), y, stack_parameters(norms, "weight").view(shape))


def scan_calls(x: torch.Tensor, groups: int) -> int:
    """Selective-scan calls for ``groups`` layers: one for all G·K groups on the GPU; the pure-PyTorch scan blocks
    channels within groups, and many groups per call shrink its blocks, so off the GPU one call per layer."""
    return 1 if x.is_cuda else groups


def grouped_scan(x: torch.Tensor, ss2ds: Sequence[nn.Module]) -> torch.Tensor:
    """The 2-D selective scan of G SS2D layers in one call: (B, H, W, G, D) -> (B, H, W, G, D), before out_norm.

    MTMamba Eqs. 13-15 (MODELS.md §0.3): K orders per layer, per-order x/dt projections, one S6 call over G·K groups,
    sequences mapped back to raster order and summed over K.
    """
    ref = ss2ds[0]
    b, h, w, g, d = x.shape
    xs = cross_scan_channels_last(x, ref.orders)                               # (B, G, K, D, L)
    k = xs.shape[2]
    y = scan_parameter_sets(xs.flatten(1, 2), *(stack_parameters(ss2ds, name).flatten(0, 1) for name in (
        "x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds")), backend=ref.scan_backend,
        calls=scan_calls(x, g))                                                # G·K parameter sets
    return cross_merge_channels_last(y.view(b, g, k, d, h * w), h, w, ref.orders).reshape(b, h, w, g, d).to(x.dtype)


def grouped_ss2d_core(x: torch.Tensor, ss2ds: Sequence[nn.Module]) -> torch.Tensor:
    """DWConv3x3 + SiLU, 2-D scan and out_norm of G SS2D layers: (G, B, H, W, D) after in_proj -> (B, H, W, G, D)."""
    g, b, h, w, d = x.shape
    x = x.permute(1, 2, 3, 0, 4).reshape(b, h, w, g * d)                   # channels-last map of G·D channels
    conv = ss2ds[0].conv2d
    x = F.conv2d(x.permute(0, 3, 1, 2), stack_parameters([m.conv2d for m in ss2ds], "weight").flatten(0, 1),
                 stack_parameters([m.conv2d for m in ss2ds], "bias").flatten(), padding=conv.padding, groups=g * d)
    x = F.silu(x).permute(0, 2, 3, 1).reshape(b, h, w, g, d)
    return grouped_layer_norm(grouped_scan(x, ss2ds), [m.out_norm for m in ss2ds], group_dim=3)


def _residual(z: torch.Tensor, branch: torch.Tensor, drop_paths: Sequence[nn.Module]) -> torch.Tensor:
    """``z[g] + drop_paths[g](branch[g])``; stochastic depth draws its mask per group, as the per-task blocks do."""
    if all(isinstance(dp, nn.Identity) for dp in drop_paths) or not drop_paths[0].training:
        return z + branch
    return z + torch.stack([dp(b) for dp, b in zip(drop_paths, branch.unbind(0))])


def grouped_stm(blocks: Sequence[nn.Module], z: torch.Tensor) -> torch.Tensor:
    """G STM blocks (MTMamba Eqs. 13-18) at once: (G, B, H, W, C) -> (G, B, H, W, C)."""
    ops = [blk.op for blk in blocks]
    a = grouped_layer_norm(z, [blk.norm for blk in blocks])
    x, gate = grouped_linear(a, [op.in_proj for op in ops]).chunk(2, dim=-1)  # Eq. 13: MFE and gate branches
    y = grouped_ss2d_core(x, ops).permute(3, 0, 1, 2, 4)                      # Eqs. 14-15, (G, B, H, W, 2C)
    y = grouped_linear(y * F.silu(gate), [op.out_proj for op in ops])        # Eqs. 16-17
    return _residual(z, y, [blk.drop_path for blk in blocks])                 # Eq. 18


def grouped_ctm(ctm: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The adaptive CTM block (MTMamba Eqs. 19-25) with the shared and the T task MFEs in one grouped scan.

    ``z``: (T, B, H, W, C) in ``ctm.tasks`` order -> (T, B, H, W, C).
    """
    tasks = ctm.tasks
    t, b, h, w, c = z.shape
    shared = ctm.norm_shared(z.permute(1, 2, 3, 0, 4).reshape(b, h, w, t * c))  # Eq. 19: LN(concat_c z_t)
    a = grouped_layer_norm(z, [ctm.norm[k] for k in tasks])                    # Eq. 21
    mfes = [ctm.mfe_shared] + [ctm.mfe[k] for k in tasks]
    x = torch.cat([ctm.mfe_shared.in_proj(shared).unsqueeze(0), grouped_linear(a, [m.in_proj for m in mfes[1:]])])
    y = grouped_ss2d_core(x, mfes)                                             # Eqs. 20, 22: (B, H, W, T+1, 2C)
    x_sh, x_t = y[:, :, :, :1].permute(3, 0, 1, 2, 4), y[:, :, :, 1:].permute(3, 0, 1, 2, 4)
    g = torch.sigmoid(grouped_linear(a, [ctm.gate[k] for k in tasks]))        # Eq. 23
    m = g * x_sh + (1 - g) * x_t                                               # Eq. 24, code convention (blocks.CTM)
    out = grouped_linear(m, [ctm.out_proj[k] for k in tasks])
    return _residual(z, out, [ctm.drop_path] * t)                              # Eq. 25

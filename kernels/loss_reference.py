"""Pure-PyTorch reference for the calibration-loss ops: the specification the Triton kernels in `loss.py` must match.

Inputs arrive validated (see `faircalib.kernels.weighted_mse` / `clip_search`). All math is fp32.

weighted_mse:  loss = sum_i w_i * ||a_i - b_i||^2 over rows i (the last dim is reduced), w broadcast to the rows.
    reduction "sum" -> fp32 scalar; "none" -> fp32 [*rows], the weighted per-row terms.
    gradient: dL/da_i = 2 * w_i * g_i * (a_i - b_i) (g = dL/dloss, per row for "none"); dL/db = -dL/da.

clip_search:  for each candidate clip ratio r, the squared error of symmetric fake quantization with clip r,
    err(r) = sum over a group of (fake_quant(x, clip=r) - x)^2, computed on x in fp32 (the dequantized value
    codes * scale is fp32 in the deployed W4A4 GEMM too, never rounded to x's dtype), times the row's weight.
    Groups: the whole last dim (group_size -1) or `group_size` consecutive elements along it. The quantizer is
    `quant_reference.fake_quant_act` (scale = r * absmax / qmax, round half to even, clamp): an all-zero group has
    error 0, a group holding NaN/Inf has error NaN.
"""
from __future__ import annotations

import torch

from . import quant_reference, registry


@registry.register("weighted_mse", "reference")
def weighted_mse(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor, reduction: str) -> torch.Tensor:
    """a, b: [*rows, D] float; weights: broadcastable to [*rows] -> fp32 [] ("sum") or [*rows] ("none")."""
    diff = a.float() - b.float()
    per_row = weights.float() * (diff * diff).sum(-1)
    return per_row.sum() if reduction == "sum" else per_row


@registry.register("weighted_mse_backward", "reference")
def weighted_mse_backward(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """dL/da = 2 * w * grad * (a - b): grad fp32 [] or [*rows], a, b [*rows, D] -> [*rows, D] a.dtype.

    dL/db is this op with a and b swapped (exactly -dL/da)."""
    coef = (2.0 * weights.float()) * grad.float()
    return (coef.unsqueeze(-1) * (a.float() - b.float())).to(a.dtype)


@registry.register("clip_search", "reference")
def clip_search(x: torch.Tensor, ratios: torch.Tensor, bits: int, weights: torch.Tensor, group_size: int,
                reduce: str) -> torch.Tensor:
    """x: [*rows, K] float, ratios: [C] float in (0, 1], weights: broadcastable to [*rows], group_size: -1 or a
    divisor of K -> fp32 [C] ("sum") or [*rows, G, C] ("none"), G = K / group_size (1 for -1)."""
    k = x.shape[-1]
    group_len = k if group_size == -1 else group_size
    n_groups = 1 if group_size == -1 else k // group_size
    groups = x.float().reshape(*x.shape[:-1], n_groups, group_len)
    errors = [((quant_reference.fake_quant_act(groups, ratio, bits) - groups) ** 2).sum(-1) for ratio in ratios]
    per_group = torch.stack(errors, dim=-1) if errors else groups.new_zeros(*groups.shape[:-1], 0)
    weighted = weights.float().unsqueeze(-1).unsqueeze(-1) * per_group
    return weighted.flatten(0, -2).sum(0) if reduce == "sum" else weighted

"""GPTQ weight quantization (Frantar et al. 2022) for a `QuantLinear` whose transform is already folded.

Quantizes columns left to right and pushes each column's rounding error onto the not-yet-quantized columns
through the inverse Hessian of the layer's (transformed) inputs, H = 2·XᵀX/n.
"""
from __future__ import annotations

import torch

from faircalib.calib.quant_linear import QuantLinear


class HessianAccumulator:
    """Running H = 2·XᵀX/n over calibration inputs x [..., K] (fp64 accumulation)."""

    def __init__(self, k: int, device: torch.device | str = "cpu"):
        self.h = torch.zeros(k, k, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        self.h.mul_(self.n / (self.n + x.shape[0])).add_(x.t() @ x, alpha=2.0 / (self.n + x.shape[0]))
        self.n += x.shape[0]


@torch.no_grad()
def gptq_quantize(layer: QuantLinear, hessian: torch.Tensor, damp: float = 0.01, block: int = 128) -> None:
    """Replace `layer.weight` by its GPTQ-quantized (dequantized) value and pin the scales it used.

    hessian: [K, K] fp64 from `HessianAccumulator`. Afterwards `layer.quantized_weight()` returns GPTQ's codes."""
    spec = layer.weight_spec
    if spec is None or not spec.symmetric:
        raise ValueError("gptq_quantize: needs symmetric weight quantization")
    if not layer.folded:
        raise ValueError("gptq_quantize: fold the input transform first (layer.fold())")
    w = layer.weight.detach().double().clone()
    n, k = w.shape
    qmax = 2 ** (spec.bits - 1) - 1
    g = k if spec.group_size == -1 else spec.group_size
    clip = layer.weight_clip_ratio()
    clip = torch.ones(n, 1, dtype=torch.float64) if clip is None else clip.detach().double().reshape(n, 1)

    h = hessian.clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diagonal(h).mean() * torch.eye(k, dtype=h.dtype, device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    scales = torch.zeros(n, k // g, dtype=torch.float32, device=w.device)
    q_all = torch.zeros_like(w)
    for start in range(0, k, block):
        end = min(start + block, k)
        w_blk, err_blk = w[:, start:end].clone(), torch.zeros(n, end - start, dtype=w.dtype, device=w.device)
        for j in range(end - start):
            col = start + j
            if col % g == 0:  # scale of a group comes from the (error-updated) weights it starts with
                group = torch.cat([w_blk[:, j:], w[:, end:]], 1)[:, :g]
                scales[:, col // g] = ((clip * group.abs().amax(1, keepdim=True)).float() / qmax).squeeze(1)
            s = scales[:, col // g].double()
            safe = torch.where(s > 0, s, torch.ones_like(s))
            q = torch.clamp(torch.round(w_blk[:, j] / safe), -qmax - 1, qmax) * s
            q_all[:, col] = q
            err = (w_blk[:, j] - q) / hinv[col, col]
            w_blk[:, j:] -= err[:, None] * hinv[col, start + j:end][None, :]
            err_blk[:, j] = err
        w[:, end:] -= err_blk @ hinv[start:end, end:]
    layer.weight.copy_(q_all.to(layer.weight.dtype))
    layer.fixed_weight_scale = scales

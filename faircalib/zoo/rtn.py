"""A deliberately plain W4A4 round-to-nearest fake quantization, torch only, to show what naive W4A4 does to
the tiny models (the reference point every calibration method must beat).

Weights: per output channel, symmetric; activations: per token, symmetric, dynamic, at the input of every
block linear (q k v o gate up down). Numerics as in docs/design.md: `scale = absmax / (2^(b-1) - 1)`,
`q = clamp(round_half_even(x / scale), -2^(b-1), 2^(b-1) - 1)`, an all-zero row stays zero. The real
quantizers live in `faircalib.kernels` and `faircalib.calib`; this module only serves the zoo's report.
"""
from __future__ import annotations

import copy

import torch

from faircalib.models import get_adapter


def fake_quant_rows(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric round-to-nearest over the last dim: x [..., K] float -> same shape and dtype."""
    qmax = 2 ** (bits - 1) - 1
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(xf / safe), -qmax - 1, qmax)
    return (q * scale).to(x.dtype)


def rtn_w4a4(model: torch.nn.Module, weight_bits: int = 4, act_bits: int = 4) -> torch.nn.Module:
    """A fake-quantized copy of `model` (the original is untouched): block-linear weights rounded in place,
    their inputs rounded per token by a forward pre-hook. Embeddings, norms and the LM head stay in full
    precision, as in the W4A4 literature."""
    quantized = copy.deepcopy(model)
    adapter = get_adapter(quantized)

    def quantize_input(module, args):
        return (fake_quant_rows(args[0], act_bits),) + tuple(args[1:])

    with torch.no_grad():
        for block in adapter.blocks:
            for linear in adapter.linears(block).values():
                linear.weight.copy_(fake_quant_rows(linear.weight, weight_bits))
                linear.register_forward_pre_hook(quantize_input)
    return quantized

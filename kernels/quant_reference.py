"""Pure-PyTorch reference for the quantization ops: the specification the Triton kernels in `quant.py` must match.

Every quantizer here works on *groups*: the last dimension of a tensor `xg [..., C]` is one group with one scale
(`scale [..., 1]`). Activations are per-token (the group is the whole row, `C = K`); weights `[N, K]` are viewed
as `[N, G, K/G]` (per-group) or `[N, 1, K]` (per-output-channel). All math is fp32; outputs take the input dtype.

Symmetric (activations, default weights), `qmax = 2^(b-1) - 1`, code range `[qmin, qmax] = [-2^(b-1), 2^(b-1)-1]`:
    scale = (clip * absmax) / qmax            v = x / scale (true division)
    q     = clamp(round_half_even(v), qmin, qmax)        y = q * scale
Asymmetric (weights, `symmetric=False`), `levels = 2^b - 1`, a pair of ratios `(clip_max, clip_min)`:
    hi = clip_max * max(max(x), 0)            lo = clip_min * min(min(x), 0)     (the range always holds 0)
    scale = (hi - lo) / levels                zu = clamp(round_half_even(-lo / scale), 0, levels)
    code  = clamp(round_half_even(v) + zu, 0, levels) - 2^(b-1)         zero = zu - 2^(b-1)
    y     = (code - zero) * scale             (code and zero both lie in [qmin, qmax])
Special groups: scale 0 (all-zero group, or clip 0) -> codes 0, zero 0, y 0. A group holding NaN or ±Inf ->
scale NaN, codes 0, zero 0, y NaN (errors surface instead of becoming finite numbers).

Gradients (straight-through estimator with LSQ-style learnable clipping; `g = dL/dy`, absmax/max/min constant):
    inside  = qmin <= v <= qmax               (asymmetric: -zu <= v <= levels - zu), on the *unrounded* v
    dL/dx   = g where inside, else 0
    dy/ds   = round(v) - v where inside; on clamped elements q (asymmetric: (code - zero) - lo / scale)
    symmetric:  dL/dclip = sum_group(g * dy/ds) * absmax / qmax
    asymmetric: dL/dclip_max = S / levels * max(max(x), 0),
                dL/dclip_min = (sum_group(g where not inside) - S / levels) * min(min(x), 0),
                with S = sum_group(g * dy/ds); the second term is the zero point's straight-through path.
Scale-0 groups pass g straight through and give clip gradient 0; NaN/Inf groups give NaN gradients.
"""
from __future__ import annotations

import torch

from . import registry


def code_range(bits: int) -> tuple[int, int]:
    """(qmin, qmax) = (-2^(b-1), 2^(b-1) - 1): the signed integer codes of a `bits`-bit quantizer."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def true_div(a: torch.Tensor, b: int) -> torch.Tensor:
    """a / b as an IEEE-rounded division on every device. PyTorch's CUDA kernels turn division by a Python scalar
    into multiplication by its reciprocal (up to one ulp off), which would break bit-exactness with the kernels."""
    return a / torch.full_like(a, b)


def num_groups(k: int, group_size: int) -> int:
    """Groups per weight row: 1 for per-output-channel (group_size == -1), else K / group_size."""
    return 1 if group_size == -1 else k // group_size


def weight_groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """w: [N, K] -> [N, G, K/G] (G = 1 when group_size == -1), a view when w allows it."""
    n, k = w.shape
    groups = num_groups(k, group_size)
    return w.reshape(n, groups, k // groups)


class GroupParams:
    """Per-group quantization parameters of `xg [..., C]` (all fp32, shape [..., 1]).

    `scale`, `zu` (unsigned zero point, 0 for symmetric), `hi`/`lo` (clipped range; symmetric: hi = clip*absmax),
    `bad` (group holds NaN/Inf), `flat` (scale is 0).
    """

    def __init__(self, xg: torch.Tensor, clip_max: torch.Tensor, clip_min: torch.Tensor, bits: int, symmetric: bool):
        x = xg.float()
        self.bits, self.symmetric = bits, symmetric
        self.bad = ~torch.isfinite(x).all(-1, keepdim=True)
        if symmetric:
            self.absmax = x.abs().amax(-1, keepdim=True)
            self.hi = clip_max.float() * self.absmax
            scale = true_div(self.hi, code_range(bits)[1])
            self.zu = torch.zeros_like(scale)
        else:
            self.xmax = x.amax(-1, keepdim=True).clamp(min=0)
            self.xmin = x.amin(-1, keepdim=True).clamp(max=0)
            self.hi, self.lo = clip_max.float() * self.xmax, clip_min.float() * self.xmin
            levels = (1 << bits) - 1
            scale = true_div(self.hi - self.lo, levels)
            self.zu = torch.round(-self.lo / scale).clamp(0, levels)
        self.flat = scale == 0
        self.scale = torch.where(self.bad, torch.nan, scale)
        self.zu = torch.where(self.bad | self.flat, 0.0, self.zu)

    def ratio(self, x: torch.Tensor) -> torch.Tensor:
        """v = x / scale, with v = 0 in scale-0 groups (so they quantize to 0 and pass gradients)."""
        return torch.where(self.flat, 0.0, x.float() / torch.where(self.flat, 1.0, self.scale))

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The clamp interval of v: [qmin, qmax] (symmetric) or [-zu, levels - zu] (asymmetric)."""
        if self.symmetric:
            qmin, qmax = code_range(self.bits)
            return torch.full_like(self.zu, qmin), torch.full_like(self.zu, qmax)
        return -self.zu, (1 << self.bits) - 1 - self.zu

    def levels(self, x: torch.Tensor) -> torch.Tensor:
        """Integer level of each element relative to the zero point, q - zero (fp32, 0 in NaN/Inf groups)."""
        low, high = self.bounds()
        q = torch.minimum(torch.maximum(torch.round(self.ratio(x)), low), high)
        return torch.where(self.bad, 0.0, q)


def _fake_quant_groups(xg: torch.Tensor, clip_max: torch.Tensor, clip_min: torch.Tensor, bits: int,
                       symmetric: bool) -> torch.Tensor:
    p = GroupParams(xg, clip_max, clip_min, bits, symmetric)
    return (p.levels(xg) * p.scale).to(xg.dtype)


def _fake_quant_groups_backward(grad_y: torch.Tensor, xg: torch.Tensor, clip_max: torch.Tensor,
                                clip_min: torch.Tensor, bits: int, symmetric: bool):
    """-> (grad_x like xg, grad_clip_max [..., 1] fp32, grad_clip_min [..., 1] fp32); formulas in the module doc."""
    p = GroupParams(xg, clip_max, clip_min, bits, symmetric)
    g = grad_y.float()
    v = p.ratio(xg)
    low, high = p.bounds()
    inside = (v >= low) & (v <= high)
    q = p.levels(xg)
    if symmetric:
        dyds = torch.where(inside, q - v, q)
    else:
        dyds = torch.where(inside, q - v, q - torch.where(p.flat, 0.0, p.lo / p.scale))
    dyds = torch.where(p.flat, 0.0, dyds)
    s_sum = (g * dyds).sum(-1, keepdim=True)
    if symmetric:
        grad_max = true_div(s_sum * p.absmax, code_range(bits)[1])
        grad_min = torch.zeros_like(grad_max)
    else:
        levels = (1 << bits) - 1
        outside_sum = torch.where(inside | p.flat, 0.0, g).sum(-1, keepdim=True)
        grad_max = true_div(s_sum, levels) * p.xmax
        grad_min = (outside_sum - true_div(s_sum, levels)) * p.xmin
    grad_x = torch.where(p.bad, torch.nan, torch.where(inside, g, 0.0)).to(xg.dtype)
    return grad_x, torch.where(p.bad, torch.nan, grad_max), torch.where(p.bad, torch.nan, grad_min)


def _quantize_groups(xg: torch.Tensor, bits: int, symmetric: bool):
    """xg: [..., C] -> (codes int8 [..., C], scale fp32 [..., 1], zero int8 [..., 1])."""
    one = torch.ones((), dtype=torch.float32, device=xg.device)
    p = GroupParams(xg, one, one, bits, symmetric)
    offset = 0 if symmetric else 1 << (bits - 1)
    codes = torch.where(p.bad | p.flat, 0.0, p.levels(xg) + p.zu - offset)
    zero = torch.where(p.bad | p.flat, 0.0, p.zu - offset)
    return codes.to(torch.int8), p.scale, zero.to(torch.int8)


@registry.register("fake_quant_act", "reference")
def fake_quant_act(x: torch.Tensor, clip: torch.Tensor, bits: int) -> torch.Tensor:
    """x: [..., K] float, clip: broadcastable to [..., 1] -> [..., K] x.dtype (per-token symmetric)."""
    return _fake_quant_groups(x, clip, clip, bits, True)


@registry.register("fake_quant_act_backward", "reference")
def fake_quant_act_backward(grad_y: torch.Tensor, x: torch.Tensor, clip: torch.Tensor, bits: int):
    """-> (grad_x [..., K] x.dtype, grad_clip per row [..., 1] fp32, not yet reduced to clip's shape)."""
    grad_x, grad_clip, _ = _fake_quant_groups_backward(grad_y, x, clip, clip, bits, True)
    return grad_x, grad_clip


@registry.register("fake_quant_weight", "reference")
def fake_quant_weight(w: torch.Tensor, clip_max: torch.Tensor, clip_min: torch.Tensor, bits: int, group_size: int,
                      symmetric: bool) -> torch.Tensor:
    """w: [N, K] float, clips broadcastable to [N, G] -> [N, K] w.dtype. Symmetric ignores clip_min."""
    wg = weight_groups(w, group_size)
    return _fake_quant_groups(wg, clip_max.unsqueeze(-1), clip_min.unsqueeze(-1), bits, symmetric).reshape(w.shape)


@registry.register("fake_quant_weight_backward", "reference")
def fake_quant_weight_backward(grad_y: torch.Tensor, w: torch.Tensor, clip_max: torch.Tensor,
                               clip_min: torch.Tensor, bits: int, group_size: int, symmetric: bool):
    """-> (grad_w [N, K] w.dtype, grad_clip_max [N, G] fp32, grad_clip_min [N, G] fp32) per group."""
    wg = weight_groups(w, group_size)
    grad_w, grad_max, grad_min = _fake_quant_groups_backward(
        weight_groups(grad_y, group_size), wg, clip_max.unsqueeze(-1), clip_min.unsqueeze(-1), bits, symmetric)
    return grad_w.reshape(w.shape), grad_max.squeeze(-1), grad_min.squeeze(-1)


@registry.register("quantize_act", "reference")
def quantize_act(x: torch.Tensor, bits: int):
    """x: [..., K] float -> (codes int8 [..., K], scales fp32 [..., 1]); x ≈ codes * scales."""
    codes, scales, _ = _quantize_groups(x, bits, True)
    return codes, scales


@registry.register("quantize_weight", "reference")
def quantize_weight(w: torch.Tensor, bits: int, group_size: int, symmetric: bool):
    """w: [N, K] float -> (codes int8 [N, K], scales fp32 [N, G], zeros int8 [N, G]); w ≈ (codes - zeros) * scales
    per group (zeros are all 0 when symmetric)."""
    codes, scales, zeros = _quantize_groups(weight_groups(w, group_size), bits, symmetric)
    return codes.reshape(w.shape), scales.squeeze(-1), zeros.squeeze(-1)


@registry.register("pack_int4", "reference")
def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """codes: int8 [..., K] in [-8, 7] -> uint8 [..., ceil(K/2)]: element 2i in the low nibble, 2i+1 in the high
    nibble, each as a 4-bit two's complement; an odd K is padded with a 0 code."""
    if codes.shape[-1] % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    nibbles = codes.to(torch.int16) & 0xF
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).to(torch.uint8)


@registry.register("unpack_int4", "reference")
def unpack_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    """packed: uint8 [..., P] -> int8 [..., k] (k <= 2P), the inverse of `pack_int4`."""
    p = packed.to(torch.int16)
    nibbles = torch.stack((p & 0xF, p >> 4), dim=-1).flatten(-2)
    return ((nibbles ^ 8) - 8)[..., :k].to(torch.int8)

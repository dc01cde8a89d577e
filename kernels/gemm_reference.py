"""Pure-PyTorch reference for the W4A4 deployment ops: the specification `gemm.py` must match.

Two ops, the online half and the GEMM half of a W4A4 linear:
- `quantize_act_packed(x, channel_scale, left, right, clip, bits)`: the online input transform
  x' = leftᵀ · (X ⊙ C) · right (X, C = x, channel_scale viewed as [n1, n2] per token; each part optional), then
  per-token symmetric quantization with the numerics of `quant_reference` (scale = clip·absmax/qmax in fp32,
  round half to even, clamp; all-zero rows -> scale 0, codes 0; rows with NaN/Inf -> scale NaN, codes 0).
  Output: int8 codes, one per byte, K-contiguous ("packed" as the GEMM's A operand: Hopper's MMA reads int8, so
  nibble-packing activations would only add an unpack to the GEMM) and fp32 per-token scales.
- `quantize_swiglu_packed(gate, up, ...)`: the same of silu(gate) · up (a down projection's input), so the SwiGLU
  product is never written to memory.
- `w4a4_matmul(a_codes, a_scales, w_packed, w_scales, bias, out_dtype)`: y = (A·Wᵀ as an exact int32 sum)
  · a_scale[m] · w_scale[n] (+ bias[n]), fp32 epilogue, cast to `out_dtype`.

GEMM weight layout (`pack_weight_for_gemm`): K is padded with zero codes to a multiple of GEMM_K_GROUP = 128; in
each 128-element group g, byte j (0 <= j < 64) holds element g·128 + j in its low nibble and g·128 + 64 + j in its
high nibble. A kernel unpacks a [rows, 64]-byte tile with two shifts into two K-contiguous int8 tiles (the first
and second half of the group), each a ready MMA operand: no interleaving shuffle in the main loop.
"""
from __future__ import annotations

import torch

from . import registry
from .quant_reference import GroupParams, pack_int4, unpack_int4

GEMM_K_GROUP = 128


def padded_k(k: int) -> int:
    """K rounded up to a multiple of GEMM_K_GROUP (the packed weight holds padded_k(k) / 2 bytes per row)."""
    return -(-k // GEMM_K_GROUP) * GEMM_K_GROUP


def _gemm_order(k_padded: int, device: torch.device) -> torch.Tensor:
    """Index map: position 2j (2j+1) of a packed group holds element j (64 + j) of that group."""
    half = GEMM_K_GROUP // 2
    j = torch.arange(half, device=device)
    group = torch.stack((j, j + half), dim=-1).flatten()
    starts = torch.arange(0, k_padded, GEMM_K_GROUP, device=device)
    return (starts[:, None] + group[None, :]).flatten()


def pack_weight_for_gemm(codes: torch.Tensor) -> torch.Tensor:
    """codes: int8 [N, K] in [-8, 7] -> int8 [N, padded_k(K) / 2] in the GEMM layout (module doc)."""
    n, k = codes.shape
    kp = padded_k(k)
    codes = torch.nn.functional.pad(codes, (0, kp - k))
    return pack_int4(codes[:, _gemm_order(kp, codes.device)]).view(torch.int8)


def unpack_weight_for_gemm(packed: torch.Tensor, k: int) -> torch.Tensor:
    """packed: int8 [N, padded_k(k) / 2] in the GEMM layout -> int8 codes [N, k]; the inverse of
    `pack_weight_for_gemm`."""
    kp = 2 * packed.shape[-1]
    arranged = unpack_int4(packed.view(torch.uint8), kp)
    codes = torch.empty_like(arranged)
    codes[:, _gemm_order(kp, packed.device)] = arranged
    return codes[:, :k]


def kronecker_apply(x: torch.Tensor, channel_scale: torch.Tensor | None, left: torch.Tensor | None,
                    right: torch.Tensor | None) -> torch.Tensor:
    """x: [M, K] float -> fp32 [M, K], leftᵀ · (X ⊙ C) · right per token, X viewed as [n1, n2] (n1 = left's size,
    else K / right's size). Missing parts are the identity."""
    y = x.float()
    if channel_scale is not None:
        y = y * channel_scale.float()
    if left is None and right is None:
        return y
    n2 = right.shape[0] if right is not None else x.shape[-1] // left.shape[0]
    y = y.reshape(x.shape[0], -1, n2)
    # Left first, as calib.transforms.KroneckerTransform does: the same fp32 sums, so the same codes.
    if left is not None:
        y = left.float().t() @ y
    if right is not None:
        y = y @ right.float()
    return y.reshape(x.shape)


@registry.register("quantize_act_packed", "reference")
def quantize_act_packed(x: torch.Tensor, channel_scale: torch.Tensor | None, left: torch.Tensor | None,
                        right: torch.Tensor | None, clip: torch.Tensor | None, bits: int):
    """x: [M, K] float, channel_scale [K] | None, left [n1, n1] | None, right [n2, n2] | None, clip [] | None
    -> (codes int8 [M, K], scales fp32 [M, 1])."""
    y = kronecker_apply(x, channel_scale, left, right)
    one = torch.ones((), dtype=torch.float32, device=x.device)
    clip = one if clip is None else clip.float()
    p = GroupParams(y, clip, clip, bits, True)
    codes = torch.where(p.bad | p.flat, 0.0, p.levels(y))
    return codes.to(torch.int8), p.scale


@registry.register("quantize_swiglu_packed", "reference")
def quantize_swiglu_packed(gate: torch.Tensor, up: torch.Tensor, channel_scale: torch.Tensor | None,
                           left: torch.Tensor | None, right: torch.Tensor | None, clip: torch.Tensor | None, bits: int):
    """`quantize_act_packed` of silu(gate) · up, computed as the models compute it (`F.silu(gate) * up` in the
    inputs' dtype: each op rounds to it). gate, up: [M, K] of one float dtype."""
    return quantize_act_packed(torch.nn.functional.silu(gate) * up, channel_scale, left, right, clip, bits)


# float32 holds every integer up to 2^24: with |a|, |b| <= 128 a partial sum stays within 128 · 128 · K, so rows up
# to this K multiply exactly in float32 (twice float64's speed on a CPU: the tiny models' W4A4 linears). Not
# `torch._int_mm`, ~3x faster still on the CPU: with torch 2.13 it returns wrong sums there for K = 1 (every shape
# with N >= 2 tried, 2026-12-07; silent CPU failures of that op are reported upstream, pytorch/pytorch#195066 and,
# on AMD CPUs, #136746), and the reference must not depend on such an op.
FLOAT32_EXACT_K = 2 ** 24 // (128 * 128)


def int_matmul_exact(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a: int8 [M, K], b: int8 [N, K] -> int32 [M, N] = a · bᵀ, exact: the float type holds every partial sum
    (float64: |sum| <= 128 · 128 · K < 2^53; float32 up to FLOAT32_EXACT_K, on the CPU at full fp32 matmul
    precision), so any summation order gives the same integer."""
    fp32 = (a.device.type == "cpu" and a.shape[1] <= FLOAT32_EXACT_K
            and torch.get_float32_matmul_precision() == "highest")
    dtype = torch.float32 if fp32 else torch.float64
    return (a.to(dtype) @ b.to(dtype).t()).to(torch.int32)


@registry.register("w4a4_matmul", "reference")
def w4a4_matmul(a_codes: torch.Tensor, a_scales: torch.Tensor, w_packed: torch.Tensor, w_scales: torch.Tensor,
                bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """a_codes int8 [M, K], a_scales fp32 [M, 1], w_packed int8 [N, padded_k(K) / 2] (GEMM layout), w_scales fp32
    [N], bias [N] | None -> [M, N] out_dtype = (acc · a_scale) · w_scale (+ bias) in fp32."""
    return int8_matmul(a_codes, a_scales, unpack_weight_int8(w_packed), w_scales, bias, out_dtype)


@registry.register("unpack_weight_int8", "reference")
def unpack_weight_int8(w_packed: torch.Tensor) -> torch.Tensor:
    """w_packed int8 [N, Kp / 2] (GEMM layout) -> int8 codes [N, Kp] in natural order (zero K tail)."""
    return unpack_weight_for_gemm(w_packed, 2 * w_packed.shape[1])


@registry.register("w4a4_matmul_stacked", "reference")
def w4a4_matmul_stacked(a_codes: torch.Tensor, a_scales: torch.Tensor, w_packed: list[torch.Tensor],
                        w_scales: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """`w4a4_matmul` against the weights w_packed[i] [N_i, Kp / 2] stacked along N (w_scales, bias [sum N_i])."""
    return int8_matmul(a_codes, a_scales, torch.cat([unpack_weight_int8(w) for w in w_packed]), w_scales, bias,
                       out_dtype)


def swiglu_scaled(gate: torch.Tensor, up: torch.Tensor, channel_scale: torch.Tensor | None,
                  out_dtype: torch.dtype) -> torch.Tensor:
    """silu(gate) · up (· channel_scale [F]) in out_dtype, rounded as eager PyTorch rounds `F.silu(gate) * up` and
    then the down projection's channel-scale pass its fp32 product (`gemm.scaled_input`)."""
    h = torch.nn.functional.silu(gate) * up
    return h if channel_scale is None else (h.float() * channel_scale.float()).to(out_dtype)


@registry.register("w4a4_matmul_swiglu", "reference")
def w4a4_matmul_swiglu(a_codes: torch.Tensor, a_scales: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                       w_scales: torch.Tensor, bias: torch.Tensor | None, channel_scale: torch.Tensor | None,
                       out_dtype: torch.dtype) -> torch.Tensor:
    """A SwiGLU's gate and up projections and the SwiGLU: `w4a4_matmul_stacked` against [w_gate, w_up] ([F, Kp / 2]
    each; w_scales, bias [2F], gate's first), its two halves (each rounded to out_dtype) -> `swiglu_scaled`
    [M, F]."""
    both = w4a4_matmul_stacked(a_codes, a_scales, [w_gate, w_up], w_scales, bias, out_dtype)
    f = w_gate.shape[0]
    return swiglu_scaled(both[:, :f], both[:, f:], channel_scale, out_dtype)


@registry.register("int8_matmul", "reference")
def int8_matmul(a_codes: torch.Tensor, a_scales: torch.Tensor, w_int8: torch.Tensor, w_scales: torch.Tensor,
                bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """`w4a4_matmul` on a weight already unpacked: w_int8 int8 [N, padded_k(K)] (`unpack_weight_int8`)."""
    acc = int_matmul_exact(a_codes, w_int8[:, :a_codes.shape[1]]).float()
    out = acc * a_scales.float() * w_scales.float()[None, :]
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)

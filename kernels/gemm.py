"""Triton kernels for W4A4 deployment; `gemm_reference.py` is their specification (formulas and weight layout).

`quantize_act_packed`: one pass per token. A program loads the transform factors once, then sweeps its tokens:
load x (viewed as an [n1, n2] tile, padded to powers of two), scale by the channel scale, right- and
left-multiply on tensor cores (in the factors' dtype: tf32 for fp32 factors, bf16 for bf16 factors), then absmax,
scale, round half to even, clamp, store int8 codes and the fp32 scale. Factors whose padded tiles exceed
MAX_FUSED_SMEM do not fit one program: the transform then runs as a torch matmul and the kernel only
quantizes (reported by `fused_transform_supported`). A variant that batched several tokens per step (one
[BT·n1, n2] MMA, then a regrouped [BT·n2, n1] MMA) measured 5x slower on H100 (0.21 vs 1.19 TB/s at
16384 x 4096, 2026-11-22): the 3-D regrouping costs more than the larger MMAs gain.

`w4a4_matmul`: two launches. (1) A memory-bound pass unpacks the split-nibble INT4 weight into a transient
int8 [N, Kp] buffer (1.5 bytes per weight: two shifts per byte, contiguous 64-byte stores). (2) A plain INT8
tensor-core GEMM, int32 accumulation (exact: |sum| <= 128·8·K < 2^31), autotuned per shape; epilogue
(acc · a_scale) · w_scale (+ bias) in fp32, cast to the output dtype.
Why not unpack inside the GEMM's main loop: measured on H100 (BENCHMARKS.md, 2026-11-22), the same split-nibble
layout unpacked in-loop (two shifts, no shuffle) ran at 0.70-0.84x bf16 cuBLAS, 0.83-0.99x with the weight as the
register operand, while the separate pass + INT8 GEMM ran at 1.11-1.39x for M >= 4096: the unpacked tile's
register -> shared-memory round trip in every K-step costs more than re-reading 1.5 bytes per weight once.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import registry
from .gemm_reference import GEMM_K_GROUP, kronecker_apply
from .triton_math import round_half_even

# Shared-memory budget of the fused transform: its padded factors and the [n1, n2] tile staged for the two MMAs
# take about elem_bytes * (p1 + p2)^2 (measured on H100: 128x128 in fp32, 256 KiB, does not fit; 228 KiB max).
MAX_FUSED_SMEM = 160 * 1024


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def fused_transform_supported(n1: int, n2: int, dtype: torch.dtype) -> bool:
    """Whether a Kronecker transform with factors (n1, n2) of `dtype` runs inside the quantization kernel."""
    p1, p2 = _pow2(n1), _pow2(n2)
    elem = torch.finfo(dtype).bits // 8
    return elem * (p1 + p2) ** 2 <= MAX_FUSED_SMEM


@triton.jit
def _quantize_act_kernel(x_ptr, cs_ptr, left_ptr, right_ptr, clip_ptr, codes_ptr, scales_ptr,
                         M, N1, N2, stride_xm, stride_cm,
                         HAS_CS: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                         HAS_CLIP: tl.constexpr, BITS: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr):
    qmax: tl.constexpr = (1 << (BITS - 1)) - 1
    qmin: tl.constexpr = -(1 << (BITS - 1))
    i = tl.arange(0, B1)
    j = tl.arange(0, B2)
    inside = (i[:, None] < N1) & (j[None, :] < N2)
    flat = i[:, None] * N2 + j[None, :]
    if HAS_CS:
        cs = tl.load(cs_ptr + flat, mask=inside, other=0.0).to(tl.float32)
    if HAS_RIGHT:
        right = tl.load(right_ptr + j[:, None] * N2 + j[None, :], mask=(j[:, None] < N2) & (j[None, :] < N2),
                        other=0.0)
    if HAS_LEFT:
        # leftᵀ[a, b] = left[b, a]
        left_t = tl.load(left_ptr + i[None, :] * N1 + i[:, None], mask=(i[:, None] < N1) & (i[None, :] < N1),
                         other=0.0)
    clip = tl.load(clip_ptr).to(tl.float32) if HAS_CLIP else 1.0
    for t in range(tl.program_id(0), M, tl.num_programs(0)):
        y = tl.load(x_ptr + t * stride_xm + flat, mask=inside, other=0.0).to(tl.float32)
        if HAS_CS:
            y = y * cs
        if HAS_RIGHT:
            y = tl.dot(y.to(right.dtype), right)
        if HAS_LEFT:
            y = tl.dot(left_t, y.to(left_t.dtype))
        bad = tl.max(tl.max(((y != y) | (tl.abs(y) == float("inf"))).to(tl.int32), axis=1), axis=0)
        absmax = tl.max(tl.max(tl.abs(y), axis=1), axis=0)
        scale = tl.math.div_rn(clip * absmax, tl.full(absmax.shape, qmax, tl.float32))
        v = tl.math.div_rn(y, tl.zeros_like(y) + tl.where(scale > 0, scale, 1.0))
        q = round_half_even(tl.minimum(tl.maximum(v, qmin * 1.0), qmax * 1.0))
        q = tl.where((bad > 0) | (scale == 0), 0.0, q)
        tl.store(codes_ptr + t * stride_cm + flat, q.to(tl.int8), mask=inside)
        tl.store(scales_ptr + t, tl.where(bad > 0, float("nan"), scale))


@registry.register("quantize_act_packed", "triton")
def quantize_act_packed(x: torch.Tensor, channel_scale: torch.Tensor | None, left: torch.Tensor | None,
                        right: torch.Tensor | None, clip: torch.Tensor | None, bits: int):
    """x: [M, K] float (row stride free, unit column stride) -> (codes int8 [M, K], scales fp32 [M, 1])."""
    m, k = x.shape
    n1 = left.shape[0] if left is not None else (k // right.shape[0] if right is not None else 1)
    n2 = k // n1
    factor = left if left is not None else right
    if factor is not None and not fused_transform_supported(n1, n2, factor.dtype):
        x, channel_scale, left, right = kronecker_apply(x, channel_scale, left, right), None, None, None
        n1, n2 = 1, k
    if x.stride(1) != 1:
        x = x.contiguous()
    codes = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scales = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m == 0:
        return codes, scales
    b1 = _pow2(n1) if left is not None or right is not None else triton.next_power_of_2(n1)
    b2 = _pow2(n2) if left is not None or right is not None else triton.next_power_of_2(n2)
    programs = m if x.device.type != "cuda" else min(m, 8 * _num_sms(x.device.index or 0))
    dummy = scales
    _quantize_act_kernel[(programs,)](
        x, dummy if channel_scale is None else channel_scale.contiguous(),
        dummy if left is None else left.contiguous(), dummy if right is None else right.contiguous(),
        dummy if clip is None else clip.reshape(()), codes, scales, m, n1, n2, x.stride(0), codes.stride(0),
        HAS_CS=channel_scale is not None, HAS_LEFT=left is not None, HAS_RIGHT=right is not None,
        HAS_CLIP=clip is not None, BITS=bits, B1=b1, B2=b2, num_warps=8 if b1 * b2 > 4096 else 4)
    return codes, scales


def _gemm_configs() -> list[triton.Config]:
    if registry.triton_interpreted():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "GROUP_M": 2}, num_warps=4, num_stages=1)]
    shapes = [(128, 256, 8, 3), (128, 256, 8, 4), (256, 128, 8, 3), (256, 128, 8, 4), (128, 128, 4, 4),
              (128, 128, 8, 4), (64, 128, 4, 4)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for bm, bn, w, s in shapes]


def _tune_bench(fn, quantiles):
    """Short timing for autotuning, so the first call per shape costs well under a second."""
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


@triton.jit
def _unpack_weight_kernel(packed_ptr, out_ptr, GROUPS, BLOCK_G: tl.constexpr, HALF: tl.constexpr):
    """packed int8 [GROUPS, HALF] (one 2·HALF-element group per row) -> int8 [GROUPS, 2·HALF]: low nibbles to
    the first half of the row, high nibbles to the second; two shifts, contiguous 64-byte loads and stores."""
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    j = tl.arange(0, HALF)
    mask = (g < GROUPS)[:, None]
    p = tl.load(packed_ptr + g[:, None] * HALF + j[None, :], mask=mask)
    row = out_ptr + g[:, None] * (2 * HALF) + j[None, :]
    tl.store(row, (p << 4) >> 4, mask=mask)
    tl.store(row + HALF, p >> 4, mask=mask)


def unpack_weight_int8(w_packed: torch.Tensor) -> torch.Tensor:
    """w_packed int8 [N, Kp / 2] (GEMM layout) -> int8 codes [N, Kp] in natural order (zero-padded K tail)."""
    n, half_kp = w_packed.shape
    out = torch.empty((n, 2 * half_kp), dtype=torch.int8, device=w_packed.device)
    groups = n * half_kp // (GEMM_K_GROUP // 2)
    block_g = 64
    if groups:
        _unpack_weight_kernel[(triton.cdiv(groups, block_g),)](w_packed.contiguous(), out, groups, BLOCK_G=block_g,
                                                               HALF=GEMM_K_GROUP // 2, num_warps=4)
    return out


@triton.autotune(configs=_gemm_configs(), key=["M_BUCKET", "N", "K"], do_bench=_tune_bench)
@triton.jit
def _int8_gemm_kernel(a_ptr, w_ptr, sa_ptr, sw_ptr, bias_ptr, c_ptr, M, N, K, M_BUCKET,
                      stride_am, stride_wn, stride_cm,
                      HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M row-tiles share each weight column-tile while it is in L2.
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % size_m
    pid_n = (pid % (GROUP_M * num_n)) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Out-of-range rows read row 0 instead of masking the main loop; they are never stored.
    rm_in = tl.where(rm < M, rm, 0)
    rn_in = tl.where(rn < N, rn, 0)
    kk = tl.arange(0, BLOCK_K)
    a_rows = a_ptr + rm_in[:, None] * stride_am
    w_rows = w_ptr + rn_in[:, None] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_rows + (k0 + kk)[None, :])
        else:
            a = tl.load(a_rows + (k0 + kk)[None, :], mask=(k0 + kk < K)[None, :], other=0)
        # The weight rows are zero-padded to a multiple of BLOCK_K: no mask.
        w = tl.load(w_rows + (k0 + kk)[None, :])
        acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)
    sa = tl.load(sa_ptr + rm_in)
    sw = tl.load(sw_ptr + rn_in)
    out = acc.to(tl.float32) * sa[:, None] * sw[None, :]
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + rn_in).to(tl.float32)[None, :]
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], out.to(c_ptr.dtype.element_ty), mask=mask)


def int8_gemm(a_codes: torch.Tensor, a_scales: torch.Tensor, w_int8: torch.Tensor, w_scales: torch.Tensor,
              bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """a_codes int8 [M, K], a_scales fp32 [M, 1], w_int8 int8 [N, Kp] (Kp = padded_k(K), zero tail), w_scales
    fp32 [N], bias [N] | None -> [M, N] out_dtype = (A·Wᵀ in int32) · a_scale · w_scale (+ bias)."""
    m, k = a_codes.shape
    n = w_int8.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a_codes.device)
    if m == 0 or n == 0:
        return out
    a_codes = a_codes.contiguous()
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _int8_gemm_kernel[grid](
        a_codes, w_int8, a_scales.reshape(-1).contiguous(), w_scales.reshape(-1).contiguous(),
        w_scales if bias is None else bias.contiguous(), out, m, n, k, triton.next_power_of_2(m),
        a_codes.stride(0), w_int8.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, EVEN_K=k % GEMM_K_GROUP == 0, BLOCK_K=GEMM_K_GROUP)
    return out


@registry.register("w4a4_matmul", "triton")
def w4a4_matmul(a_codes: torch.Tensor, a_scales: torch.Tensor, w_packed: torch.Tensor, w_scales: torch.Tensor,
                bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """a_codes int8 [M, K], a_scales fp32 [M, 1], w_packed int8 [N, padded_k(K) / 2], w_scales fp32 [N],
    bias [N] | None -> [M, N] out_dtype: unpack pass, then the INT8 GEMM."""
    return int8_gemm(a_codes, a_scales, unpack_weight_int8(w_packed), w_scales, bias, out_dtype)

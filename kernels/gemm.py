"""Triton kernels for W4A4 deployment; `gemm_reference.py` is their specification (formulas and weight layout).

`quantize_act_packed`: one pass per token. A program loads the transform factors once, then sweeps its tokens:
load x (viewed as an [n1, n2] tile, padded to powers of two), scale by the channel scale, right- and
left-multiply on tensor cores (in the factors' dtype: tf32 for fp32 factors, bf16 for bf16 factors), then absmax,
scale, round half to even, clamp, store int8 codes and the fp32 scale. Factors whose padded tiles exceed
MAX_FUSED_SMEM do not fit one program: the transform then runs as a torch matmul and the kernel only
quantizes (reported by `fused_transform_supported`).

`w4a4_matmul`: INT8 tensor-core GEMM with int32 accumulation (exact: |sum| <= 128·8·K < 2^31), weights in the
split-nibble GEMM layout: each K-step of 128 loads a [BLOCK_N, 64]-byte weight tile, and two shifts give the
int8 tiles of the first and second 64 elements, multiplied against the matching halves of the activation tile.
Epilogue: (acc · a_scale) · w_scale (+ bias) in fp32, cast to the output dtype. For few tokens (M <= 64) the
roles swap (weights as the MMA's row operand), so the tile's large side covers N instead of padding M.
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
# At or below this many tokens the GEMM swaps operand roles (see module doc).
SWAP_AB_MAX_M = 64


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
    shapes = [(128, 256, 8, 3), (256, 128, 8, 3), (128, 128, 4, 4), (128, 128, 8, 4), (64, 128, 4, 4),
              (64, 256, 4, 3)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for bm, bn, w, s in shapes]


@triton.jit
def _load_halves(ptr, rows, stride, k0, K, PACKED: tl.constexpr, EVEN_K: tl.constexpr, HALF: tl.constexpr):
    """Two K-contiguous int8 tiles [len(rows), HALF]: elements k0 .. k0+HALF and k0+HALF .. k0+2·HALF."""
    kk = tl.arange(0, HALF)
    if PACKED:
        p = tl.load(ptr + rows[:, None] * stride + (k0 // 2 + kk)[None, :])
        return (p << 4) >> 4, p >> 4
    if EVEN_K:
        lo = tl.load(ptr + rows[:, None] * stride + (k0 + kk)[None, :])
        hi = tl.load(ptr + rows[:, None] * stride + (k0 + HALF + kk)[None, :])
    else:
        lo = tl.load(ptr + rows[:, None] * stride + (k0 + kk)[None, :], mask=(k0 + kk < K)[None, :], other=0)
        hi = tl.load(ptr + rows[:, None] * stride + (k0 + HALF + kk)[None, :], mask=(k0 + HALF + kk < K)[None, :],
                     other=0)
    return lo, hi


def _tune_bench(fn, quantiles):
    """Short timing for autotuning, so the first call per shape costs well under a second."""
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


@triton.autotune(configs=_gemm_configs(), key=["M_BUCKET", "N", "K", "W_PACKED", "SWAP_AB"], do_bench=_tune_bench)
@triton.jit
def _w4a4_gemm_kernel(a_ptr, w_ptr, sa_ptr, sw_ptr, bias_ptr, c_ptr, M, N, K, M_BUCKET,
                      stride_am, stride_wn, stride_cm,
                      HAS_BIAS: tl.constexpr, W_PACKED: tl.constexpr, SWAP_AB: tl.constexpr, EVEN_K: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    HALF: tl.constexpr = BLOCK_K // 2
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
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        a_lo, a_hi = _load_halves(a_ptr, rm_in, stride_am, k0, K, False, EVEN_K, HALF)
        w_lo, w_hi = _load_halves(w_ptr, rn_in, stride_wn, k0, K, W_PACKED, EVEN_K, HALF)
        if SWAP_AB:
            acc = tl.dot(w_lo, tl.trans(a_lo), acc, out_dtype=tl.int32)
            acc = tl.dot(w_hi, tl.trans(a_hi), acc, out_dtype=tl.int32)
        else:
            acc = tl.dot(a_lo, tl.trans(w_lo), acc, out_dtype=tl.int32)
            acc = tl.dot(a_hi, tl.trans(w_hi), acc, out_dtype=tl.int32)
    if SWAP_AB:
        acc = tl.trans(acc)
    sa = tl.load(sa_ptr + rm_in)
    sw = tl.load(sw_ptr + rn_in)
    out = acc.to(tl.float32) * sa[:, None] * sw[None, :]
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + rn_in).to(tl.float32)[None, :]
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], out.to(c_ptr.dtype.element_ty), mask=mask)


def launch_w4a4_gemm(a_codes: torch.Tensor, a_scales: torch.Tensor, w: torch.Tensor, w_scales: torch.Tensor,
                     bias: torch.Tensor | None, out_dtype: torch.dtype, *, w_packed: bool = True,
                     swap_ab: bool | None = None) -> torch.Tensor:
    """The GEMM with an explicit variant: `w_packed` False takes plain int8 weight codes [N, K] (the
    separate-unpack design, kept for benchmarks); `swap_ab` None picks by M (SWAP_AB_MAX_M)."""
    m, k = a_codes.shape
    n = w.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a_codes.device)
    if m == 0 or n == 0:
        return out
    swap_ab = m <= SWAP_AB_MAX_M if swap_ab is None else swap_ab
    a_codes = a_codes.contiguous()
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _w4a4_gemm_kernel[grid](
        a_codes, w.contiguous(), a_scales.reshape(-1).contiguous(), w_scales.reshape(-1).contiguous(),
        w_scales if bias is None else bias.contiguous(), out, m, n, k, triton.next_power_of_2(m),
        a_codes.stride(0), w.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, W_PACKED=w_packed, SWAP_AB=swap_ab, EVEN_K=k % GEMM_K_GROUP == 0,
        BLOCK_K=GEMM_K_GROUP)
    return out


@registry.register("w4a4_matmul", "triton")
def w4a4_matmul(a_codes: torch.Tensor, a_scales: torch.Tensor, w_packed: torch.Tensor, w_scales: torch.Tensor,
                bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """a_codes int8 [M, K], a_scales fp32 [M, 1], w_packed int8 [N, padded_k(K) / 2], w_scales fp32 [N],
    bias [N] | None -> [M, N] out_dtype."""
    return launch_w4a4_gemm(a_codes, a_scales, w_packed, w_scales, bias, out_dtype)

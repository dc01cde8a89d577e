"""Triton math helpers shared by the kernels, written so they behave identically compiled on the GPU and under the
CPU interpreter (`TRITON_INTERPRET=1`, which runs the kernels on numpy).

Why a helper for rounding: `tl.extra.cuda.libdevice.rint` is the GPU's round-half-even, but the interpreter does not
implement libdevice calls, and `tl.math` has no rint. Adding and subtracting 1.5 * 2^23 rounds an fp32 value to the
nearest integer, ties to even, in both places, because both use IEEE round-to-nearest-even fp32 additions (and
Triton does not reassociate floating-point adds). It also runs on the full-rate FP32 adder, where the GPU's
rounding instruction runs on the slower conversion unit.
"""
from __future__ import annotations

import triton
import triton.language as tl

# 1.5 * 2^23: adding it leaves no fraction bits for |v| <= 2^22, so the add rounds v to an integer (ties to even).
_ROUNDING_MAGIC: tl.constexpr = tl.constexpr(12582912.0)


@triton.jit
def round_half_even(v):
    """fp32 -> fp32, v rounded to the nearest integer, ties to even (as `torch.round`), for |v| <= 2^22.

    Callers clamp v to the code range first (clamping to integer bounds commutes with rounding). Pass a value that
    is already an fp32 result, not a bare product `a * b`: the compiler may fuse `a * b + magic` into one FMA,
    which rounds the exact product instead of its fp32 value."""
    return (v + _ROUNDING_MAGIC) - _ROUNDING_MAGIC


@triton.jit
def cast_rne(v, dtype: tl.constexpr):
    """fp32 -> `dtype`, rounding to nearest even as torch's `.to(dtype)` does.

    The GPU's fp32 -> bf16 cast already rounds to nearest even, but the interpreter truncates (and ignores
    `fp_downcast_rounding`), so bf16 is rounded on the fp32 bits first and the cast then drops only zero bits.
    NaN and ±Inf keep their class; finite values past bf16's range round to ±Inf, as in torch."""
    if dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        v = bits.to(tl.float32, bitcast=True)
    return v.to(dtype)


_MAGIC_BITS: tl.constexpr = tl.constexpr(0x4B400000)  # the bit pattern of 1.5 * 2^23


@triton.jit
def clamp_round_to_int(v, lo, hi):
    """fp32 -> int32: v clamped to [lo, hi] and rounded half to even (as `round_half_even`), for |lo|, |hi| <= 2^22.

    After the magic add the fp32 value is 1.5·2^23 + k with an ULP of 1, so its bits are 0x4B400000 + k: an integer
    subtraction yields k without a float-to-int conversion (those run on the GPU's slower conversion unit). NaN
    clamps to a bound (PTX min/max return the non-NaN operand): callers mask bad rows themselves."""
    r = tl.minimum(tl.maximum(v, lo), hi) + _ROUNDING_MAGIC
    return r.to(tl.int32, bitcast=True) - _MAGIC_BITS


@triton.jit
def nan_max(a, b):
    """Combine function for `tl.reduce`: the maximum, NaN if either is NaN (`tl.max` drops NaN on the GPU, where
    PTX max returns the other operand, but keeps it under the interpreter's numpy)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def grouped_tile(tile, num_m, num_n, GROUP_M: tl.constexpr):
    """Output tile number `tile` of a grouped sweep -> (pid_m, pid_n): GROUP_M row-tiles take each weight
    column-tile in turn, so it is read from L2 while they share it."""
    first_m = tile // (GROUP_M * num_n) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    return first_m + (tile % (GROUP_M * num_n)) % size_m, (tile % (GROUP_M * num_n)) // size_m

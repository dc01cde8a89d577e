"""Triton kernels for W4A4 deployment; `gemm_reference.py` is their specification (formulas and weight layout).

`quantize_act_packed`, four paths (`ActLaunch` holds their settings; `act_path` picks one per call by factor size):
- no transform, K > 8192: the per-token quantizer of `quant.py` (rows swept twice in chunks), same numerics;
- whole tile (no transform with K <= 8192, or padded factor tiles <= 16384 elements that fit shared memory:
  K = 3584, 4096, and 12288 with bf16 factors when a channel scale or gate is applied): a program loads the
  factors once, then sweeps its tokens (small tiles stacked several per step), the loads pipelined `stages` deep:
  channel scale, right- and left-multiply on tensor cores (tf32 for fp32 factors, bf16 for bf16 factors), absmax,
  scale, round half to even, clamp, store int8 codes and fp32 scales;
- split (16-bit factors one of whose sizes splits into a power-of-two block and a narrower remainder block):
  Dream's 128x148 at K = 18944 with its columns held as a 128-wide and a 32-wide block (160 instead of 256
  padded); LLaDA's 96x128 at K = 12288 on the transposed view, rows as 64 + 32 (a third fewer MMA flops than the
  128x128 whole tile), where no channel scale or gate is applied (`act_path`; compiled blocks apply it in the
  traced graph). One token per step, six MMAs, values in registers until the token's absmax is known. A channel
  scale or gate is applied by a pass of its own first (`scaled_input`: in this kernel Triton 3.6 compiled it to
  illegal memory accesses on H100 for the column split). On Hopper, K = 12288 and 18944 go to `act_hopper.py`
  (Gluon) instead: the same arithmetic with the next token's first MMA running while this token is quantized,
  0.857x / 0.555x of memcpy against this kernel's 0.744x / 0.531x at 16384 tokens (H100, 2026-12-07;
  `ActLaunch.hopper`). In this kernel and those, a token's absmax is one reduction across the warps for both
  blocks (was one per block here: three CTA barriers fewer per token in the compiled loop, 1-3% faster at
  K = 12288 and 18944, H100, 2026-12-07 08:26 UTC);
- chunked (fp32 factors at K = 12288 and 18944): per token, the output in 64-column slices (contracting 32
  columns at a time), parked in an fp32 per-program scratch row until the token's absmax is known, then quantized.
Numerics: the no-transform paths match the reference bit for bit. With a transform, the codes may differ by one
where a value sits on a rounding boundary: the MMAs sum in another order than torch, and the kernels multiply by
the scale's reciprocal instead of dividing each element (an IEEE division per element was the bottleneck: the
reciprocal made the whole-tile kernel 1.4-3.5x faster on H100). NaN/Inf rows are found by a NaN-propagating
absmax, and codes come from the bits of the rounding add (no float-to-int conversion). The persistent launches
take no more programs per SM than fit at once (`_programs`). Measured (BENCHMARKS.md, H100, 2026-12-06 21:44 UTC,
bf16 factors, no channel scale, 16384 / 4096 tokens, CUDA-graph timed, `benchmarks/explore_w4a4_gpu.py --parts
act`): 0.84 / 0.63x (K = 3584; 0.76 / 0.60x with 8 programs per SM, of which 5 fit), 0.85 / 0.65x (4096), 0.73 /
0.65x (12288, rows split; the whole tile 0.60 / 0.54x) of memcpy; 0.52 / 0.48x (18944, columns split, 13:26 UTC;
the chunked kernel ran 0.15 / 0.14x). At 4096 tokens the pass's shortfall is mostly what a copy of the same bytes
also pays per call: against that copy, 0.74-0.87x at K = 3584 and 4096 (three ways of flushing L2; 0.64-0.71x at
12288, 0.48-0.50x at 18944; 2026-12-07 07:04 UTC, `explore_flush_gpu.py`). The factor sizes are compile-time
constants: as runtime values the split kernel held its tiles' offsets and masks in registers and spilled (0.34 /
0.32x then). Multiplying by the left factor first
keeps that product in registers as the right MMA's A operand: up to 2.2x faster at 4096 tokens and with a channel
scale, 4-6% slower without one at 16384 tokens. Tried and slower: stacking two 64-row tokens per step with a
blockdiag left factor, re-reading the factors each step, 8 warps, pipelining 1, 2 or 4 deep, the chunked kernel at
K = 12288; an earlier variant that regrouped a [BT·n1, n2] MMA result into [BT·n2, n1] for the left factor was 5x
slower; an earlier form of the split-column kernel (0.21x; miscompiled by Triton 3.6 with the right factor first);
the split-column kernel with 4 warps (0.07x), 2 programs per SM (no change), pipelining 1 or 2 deep (0.41x; 3 deep:
0.52x; 4 deep does not fit shared memory).
Also tried (commit fedf6bf, H100, 2026-12-06 19:22 UTC): a Gluon kernel that brought each token's tile by TMA,
pipelined 4 deep, and formed Yᵀ = (rightᵀ · Xᵀ) · left on wgmma from shared memory (K = 12288's 96 rows as 64 + 32
unpadded). At 16384 tokens it ran 0.74 / 0.77 / 0.69x of memcpy (K = 3584 / 4096 / 12288) against these kernels'
0.76 / 0.81 / 0.74x, and 0.50 / 0.51 / 0.59x against 0.61 / 0.64 / 0.66x at 4096 tokens. Its last form (commit
b0c5e47: no host-side factor copies, the first tiles' loads ahead of the factors') on an H200 (20:18 UTC): slower
too, except K = 4096 at 16384 tokens (0.73 against 0.71x). Dropped. Compiled offline for sm_90 with Triton 3.6
(2026-12-07), its token loop holds about 12 CTA barriers, five of them after its TMA issues. `act_hopper.py`
(2026-12-07), which does win at K = 12288, loads by cp.async (6 barriers per token).
`quantize_swiglu_packed` runs the same kernels on silu(gate) · up, computed from the two inputs as they load.

`w4a4_matmul`, "unpack" design: two launches. (1) A memory-bound pass unpacks the split-nibble INT4 weight into a
transient int8 [N, Kp] buffer (1.5 bytes per weight: two shifts per byte, contiguous 64-byte stores). (2) A persistent
INT8 tensor-core GEMM fed by TMA (tensor descriptors), int32 accumulation (exact: |sum| <= 128·8·K < 2^31), autotuned
per shape; epilogue (acc · a_scale) · w_scale (+ bias) in fp32, cast to the output dtype and written by TMA (whole tile
or two halves, autotuned; up to 1.2x faster than pointer stores on H100, 2026-12-06). `w4a4_matmul_stacked` unpacks
several weights into the rows of one int8 operand for one GEMM (q/k/v, gate/up). On H100 the persistent TMA kernel ran
1.42-1.91x bf16 cuBLAS at M >= 4096 against 1.23-1.59x for the one-program-per-tile kernel with pointer loads it
replaced (same run, 2026-11-22, `explore_w4a4_gpu.py --parts tma` at commit e9a979d); Triton's warp specialization added
nothing.
Tried and rejected, the FP8 e4m3 carrier (int4 values are exact in e4m3): with Hopper's default imprecise
accumulation it is 1.48-1.87x but wrong on worst-case data (error 163840 at K = 18944); promoting the partial sum
every 128 or 256 products (`max_num_imprecise_acc`) is exact but 1.03-1.54x, below the INT8 path.
Unpacking inside the GEMM's main loop in plain Triton (2026-11-22) ran at 0.70-0.84x bf16 cuBLAS, 0.83-0.99x with
the weight as the register operand: Triton's layout conversions sent the unpacked tile through shared memory in every
K-step. `gemm_regs.py` (Gluon) controls the layouts and loads the packed bytes straight into the register operand's
fragments: on Hopper `w4a4_design` times it against this path per shape and runs the faster (`w4a4_matmul_stacked`).
"""
from __future__ import annotations

import dataclasses
import functools
import gc
import warnings

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from . import gemm_reference, registry
from . import quant as quant_kernels
from .gemm_reference import GEMM_K_GROUP
from .triton_math import cast_rne, clamp_round_to_int, grouped_tile, nan_max

try:  # Gluon (Triton >= 3.5; its API still moves): the W4A4 GEMM that unpacks in registers, for Hopper
    from . import gemm_regs
except (ImportError, AttributeError):
    gemm_regs = None
try:  # Gluon again: the split kernel's transform with its MMAs overlapped across tokens, for Hopper
    from . import act_hopper
except (ImportError, AttributeError):
    act_hopper = None


@dataclasses.dataclass
class ActLaunch:
    """How `quantize_act_packed` runs (defaults picked on H100 with `benchmarks/explore_w4a4_gpu.py`).

    Transforms whose padded [p1, p2] tile holds <= `fused_max_tile` elements and fits `fused_max_smem` take the
    whole-tile kernel (tokens stacked up to `transform_rows` rows per step); larger ones whose n2 (or n1) splits
    into narrower blocks than its padding the split kernel (`split_layout`: tiles up to `split_max_tile` elements,
    factors up to `split_max_factor_bytes`; `split_programs_per_sm`, `split_stages`, `split_warps`), as Dream's
    128x148 at K = 18944; `split_over_tile`: the split kernel also where a whole tile fits but the split saves MMA
    work, for inputs without a channel scale or gate to apply (`act_path`: K = 12288's 96x128 as 128 x (64 + 32));
    the rest (fp32 factors at K = 12288, 18944) the chunked kernel: `chunk_j` output columns at a time,
    contracting over `chunk_k`-column slices, values parked in an fp32 per-program scratch row (L2-resident)
    until the token's absmax is known. Without a transform, rows of next_pow2(K) <= `plain_max_k` take the
    whole-tile kernel (`plain_tile` elements per step), longer ones `quant.py`'s two-pass quantizer. `stages`:
    software-pipelining depth of the whole-tile token loop; `programs_per_sm`, or `large_tile_programs_per_sm` for
    tiles of `fused_max_tile` elements (K = 12288). `fit_resident`: each kernel's programs per SM capped at what
    its registers and shared memory let an SM hold at once (`_programs`). `hopper`: on sm_90 GPUs the split path's
    inputs that `act_hopper.supported` takes (K = 12288 and 18944 with 16-bit factors) go to those Gluon kernels
    instead, pipelined `hopper_stages` deep (rows split: 12288) or `hopper_cols_stages` (columns split: 18944, whose
    3 stages fill shared memory), one program per SM."""
    fused_max_tile: int = 16384
    fused_max_smem: int = 160 * 1024
    stages: int = 3
    programs_per_sm: int = 8
    large_tile_programs_per_sm: int = 2
    transform_rows: int = 64
    plain_tile: int = 4096
    plain_max_k: int = 8192
    split_max_tile: int = 128 * 160
    split_max_factor_bytes: int = 96 * 1024
    split_over_tile: bool = True
    split_programs_per_sm: int = 1
    split_stages: int = 3
    split_warps: int = 8
    chunked_programs_per_sm: int = 4
    chunk_j: int = 64
    chunk_k: int = 32
    chunked_warps: int = 4
    fit_resident: bool = True
    hopper: bool = True
    hopper_stages: int = 4
    hopper_cols_stages: int = 3


ACT_LAUNCH = ActLaunch()


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _next_pow2(n: int) -> int:
    """The smallest power of two >= n (n >= 1), as `triton.next_power_of_2`, which is ~10x slower on the host (a
    constexpr function in recent Triton): these run in every call's launch path."""
    return 1 << (n - 1).bit_length()


def _pow2(n: int) -> int:
    return max(16, _next_pow2(n))


def fused_transform_supported(n1: int, n2: int, dtype: torch.dtype) -> bool:
    """Whether a Kronecker transform with factors (n1, n2) of `dtype` runs in the whole-tile kernel (else in the
    chunked one). Shared memory: the padded factors and the staged tile take about elem_bytes * (p1 + p2)^2."""
    p1, p2 = _pow2(n1), _pow2(n2)
    elem = torch.finfo(dtype).bits // 8
    return p1 * p2 <= ACT_LAUNCH.fused_max_tile and elem * (p1 + p2) ** 2 <= ACT_LAUNCH.fused_max_smem


def split_columns(n1: int, n2: int, dtype: torch.dtype) -> tuple[int, int, int] | None:
    """(B1, BA, BB) when a transform's [n1, n2] token view runs in the split-column kernel: n2 split into a
    power-of-two block BA and a remainder block BB = next_pow2(n2 - BA), which saves MMA work and registers over
    padding to next_pow2(n2) (K = 18944: 128 + 32 = 160 columns instead of 256); None where the blocks would not be
    narrower than the padded width or are under 16 columns. Limits: `ActLaunch.split_max_tile` elements per token
    tile and `split_max_factor_bytes` of factors."""
    b1, ba = _pow2(n1), 1 << (n2.bit_length() - 1)
    if ba == n2 or ba < 16:
        return None
    bb = _pow2(n2 - ba)
    elem = torch.finfo(dtype).bits // 8
    factor_bytes = elem * (b1 * b1 + (ba + bb) ** 2)
    if ba + bb >= _pow2(n2) or b1 * (ba + bb) > ACT_LAUNCH.split_max_tile or \
            factor_bytes > ACT_LAUNCH.split_max_factor_bytes:
        return None
    return b1, ba, bb


def split_layout(n1: int, n2: int, dtype: torch.dtype) -> tuple[int, int, int, bool] | None:
    """(B1, BA, BB, transposed) for the split kernel: the token's [n1, n2] view split by columns (`split_columns`),
    else its transpose [n2, n1] split by columns, i.e. the rows split (K = 12288's 96x128: 64 + 32 rows instead of
    a 128x128 padded tile, a third fewer MMA flops); None if neither saves work."""
    columns = split_columns(n1, n2, dtype)
    if columns is not None:
        return (*columns, False)
    rows = split_columns(n2, n1, dtype)
    return None if rows is None else (*rows, True)


def act_path(n1: int, n2: int, dtype: torch.dtype | None, input_ops: bool = False) -> str:
    """Which kernel `quantize_act_packed` runs for an (n1, n2) transform whose factors are `dtype` (None: no
    transform): "tile", "split" or "chunked". The split kernel also where a whole tile fits but a split saves MMA
    work (`ActLaunch.split_over_tile`: K = 12288), unless `input_ops` (a channel scale or gate for the kernel to
    apply): the whole tile applies them as it loads, the split kernel needs a pass in front (`scaled_input`), and
    at K = 12288 with a channel scale the whole tile ran 0.44x of memcpy against 0.36x (H100, 2026-12-06)."""
    if dtype is None:
        return "tile"
    split = split_layout(n1, n2, dtype) is not None
    prefer_split = split and ACT_LAUNCH.split_over_tile and not input_ops
    if fused_transform_supported(n1, n2, dtype) and not prefer_split:
        return "tile"
    return "split" if split else "chunked"


@triton.jit
def _swiglu(gate, up):
    """silu(gate) · up in the inputs' dtype, each op rounded to it as torch's `F.silu(gate) * up` does (fp32 math;
    exp and the division are the GPU's fast approximations: within an ulp of fp32, far below a bf16 rounding)."""
    g = gate.to(tl.float32)
    silu = cast_rne(g / (1.0 + tl.exp(-g)), up.dtype)
    return cast_rne(silu.to(tl.float32) * up.to(tl.float32), up.dtype)


@triton.jit
def _token_scale(absmax, clip, BITS: tl.constexpr):
    """A token's scale clip · absmax / (2^(BITS-1) - 1), with the IEEE division the reference does (once per
    token, so its cost does not matter)."""
    return tl.math.div_rn(clip * absmax, tl.full(absmax.shape, (1 << (BITS - 1)) - 1, tl.float32))


@triton.jit
def _codes(v, zero, BITS: tl.constexpr):
    """v (values already divided by their token's scale) -> int32 codes, rounded half to even and clamped to the
    BITS-bit range; 0 where `zero` (NaN/Inf tokens and all-zero ones)."""
    return tl.where(zero, 0, clamp_round_to_int(v, -(1 << (BITS - 1)) * 1.0, ((1 << (BITS - 1)) - 1) * 1.0))


@triton.jit
def _quantize_act_kernel(x_ptr, gate_ptr, cs_ptr, left_ptr, right_ptr, clip_ptr, codes_ptr, scales_ptr,
                         M, stride_xm, stride_cm, N1: tl.constexpr, N2: tl.constexpr,
                         GATED: tl.constexpr, HAS_CS: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                         HAS_CLIP: tl.constexpr, BITS: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr,
                         TOKENS: tl.constexpr, STAGES: tl.constexpr, RECIP: tl.constexpr):
    """Whole-tile path. A step takes TOKENS tokens stacked as a [TOKENS·B1, B2] tile (token t's [n1, n2] view in
    rows t·B1 ...): the left factor multiplies it as blockdiag(leftᵀ, ...) (one MMA; the zero blocks cost flops,
    not bytes), then the right one the whole stack (one MMA), then per-token absmax and quantization. The factors
    and the channel scale are loaded once per program. Steps are software-pipelined STAGES deep. RECIP (transform
    paths): multiply by the scale's reciprocal instead of dividing element by element. N1 and N2 are compile-time
    constants, so every element's offset folds into an immediate instead of taking a register."""
    ROWS: tl.constexpr = TOKENS * B1
    r = tl.arange(0, ROWS)
    a = r % B1
    j = tl.arange(0, B2)
    tile_in = (a[:, None] < N1) & (j[None, :] < N2)
    flat = a[:, None] * N2 + j[None, :]
    if HAS_CS:
        cs = tl.load(cs_ptr + flat, mask=tile_in, other=0.0).to(tl.float32)
    if HAS_RIGHT:
        right = tl.load(right_ptr + j[:, None] * N2 + j[None, :], mask=(j[:, None] < N2) & (j[None, :] < N2),
                        other=0.0)
    if HAS_LEFT:  # blockdiag(leftᵀ)[r, r'] = left[r' % B1, r % B1] where r and r' belong to the same token
        bd = tl.load(left_ptr + (r % B1)[None, :] * N1 + a[:, None],
                     mask=((r // B1)[:, None] == (r // B1)[None, :]) & (a[:, None] < N1) & ((r % B1)[None, :] < N1),
                     other=0.0)
    clip = tl.load(clip_ptr).to(tl.float32) if HAS_CLIP else 1.0
    for step in tl.range(tl.program_id(0), tl.cdiv(M, TOKENS), tl.num_programs(0), num_stages=STAGES):
        tok = step * TOKENS + r // B1
        mask = tile_in & (tok < M)[:, None]
        y = tl.load(x_ptr + tok[:, None] * stride_xm + flat, mask=mask, other=0.0)
        if GATED:
            y = _swiglu(tl.load(gate_ptr + tok[:, None] * stride_xm + flat, mask=mask, other=0.0), y)
        if HAS_CS:
            y = y.to(tl.float32) * cs
        if HAS_LEFT:
            y = tl.dot(bd, y.to(bd.dtype))
        if HAS_RIGHT:  # the left product stays in registers, as this MMA's A operand
            y = tl.dot(y.to(right.dtype), right)
        y = y.to(tl.float32)
        row_max = tl.reduce(tl.abs(y), 1, nan_max)
        tok_max = row_max
        if B1 > 1:  # a token's absmax over its B1 rows
            tok_max = tl.reduce(tl.reshape(row_max, (TOKENS, B1)), 1, nan_max)
        # A NaN-propagating absmax is NaN or +Inf exactly for tokens holding NaN or ±Inf: no per-element test
        tok_bad = ((tok_max != tok_max) | (tok_max == float("inf"))).to(tl.int32)
        tok_scale = _token_scale(tok_max, clip, BITS)
        bad, scale = tok_bad, tok_scale
        if B1 > 1:  # back to the token's rows
            bad = tl.reshape(tl.broadcast_to(tok_bad[:, None], (TOKENS, B1)), (ROWS,))
            scale = tl.reshape(tl.broadcast_to(tok_scale[:, None], (TOKENS, B1)), (ROWS,))
        if RECIP:  # the transform is approximate already; an exact division per element would triple the cost
            v = y * (1.0 / tl.where(scale > 0, scale, 1.0))[:, None]
        else:
            v = tl.math.div_rn(y, tl.zeros_like(y) + tl.where(scale > 0, scale, 1.0)[:, None])
        q = _codes(v, ((bad > 0) | (scale == 0))[:, None], BITS)
        tl.store(codes_ptr + tok[:, None] * stride_cm + flat, q.to(tl.int8), mask=mask)
        tok_ids = step * TOKENS + tl.arange(0, TOKENS)
        tl.store(scales_ptr + tok_ids, tl.where(tok_bad > 0, float("nan"), tok_scale), mask=tok_ids < M)


@triton.jit
def _scaled_input_kernel(x_ptr, gate_ptr, cs_ptr, out_ptr, K, stride_xm, GATED: tl.constexpr, HAS_CS: tl.constexpr,
                         BLOCK: tl.constexpr):
    """One [1, BLOCK] slice of the split kernel's input: x, or silu(gate) · x (`_swiglu`), times the channel scale
    in fp32, rounded to the output's dtype (the factors' dtype: what the whole-tile kernel feeds its MMA)."""
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < K
    row = tl.program_id(0).to(tl.int64)
    v = tl.load(x_ptr + row * stride_xm + cols, mask=inside, other=0.0)
    if GATED:
        v = _swiglu(tl.load(gate_ptr + row * stride_xm + cols, mask=inside, other=0.0), v)
    if HAS_CS:
        v = v.to(tl.float32) * tl.load(cs_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * K + cols, cast_rne(v.to(tl.float32), out_ptr.dtype.element_ty), mask=inside)


SCALED_INPUT_BLOCK = 2048


def scaled_input(x: torch.Tensor, gate: torch.Tensor | None, channel_scale: torch.Tensor | None,
                 dtype: torch.dtype) -> torch.Tensor:
    """x [M, K] (unit column stride; gate the same strides) -> contiguous [M, K] `dtype` = (F.silu(gate) * x if
    gate else x).float() * channel_scale, rounded to nearest even: one pass (read 2-4, write 2 bytes per element)."""
    m, k = x.shape
    out = torch.empty((m, k), dtype=dtype, device=x.device)
    if m and k:
        _scaled_input_kernel[(m, triton.cdiv(k, SCALED_INPUT_BLOCK))](
            x, x if gate is None else gate, x if channel_scale is None else channel_scale.contiguous(), out, k,
            x.stride(0), GATED=gate is not None, HAS_CS=channel_scale is not None, BLOCK=SCALED_INPUT_BLOCK,
            num_warps=4)
    return out


@triton.jit
def _quantize_act_split_kernel(x_ptr, left_ptr, right_ptr, clip_ptr, codes_ptr, scales_ptr, M, stride_xm, stride_cm,
                               N1: tl.constexpr, N2: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                               HAS_CLIP: tl.constexpr, BITS: tl.constexpr, B1: tl.constexpr, BA: tl.constexpr,
                               BB: tl.constexpr, TRANSPOSED: tl.constexpr, STAGES: tl.constexpr):
    """Split-column path (Dream's 128x148 at K = 18944): one token per step, its [N1, N2] view held as two column
    blocks, a = [0, BA) and b = [BA, BA + BB) (masked to N2), instead of one block padded to next_pow2(N2).
    W = leftᵀ · X per block, then Y_a = W_a · R_aa + W_b · R_ba and Y_b = W_a · R_ab + W_b · R_bb, all in
    registers until the token's absmax is known. TRANSPOSED: the view is the transpose of the token's (the wrapper
    swaps the factors: (Lᵀ X R)ᵀ = Rᵀ Xᵀ L), so rows of the transform are split (K = 12288's 96x128 as 128 x
    (64 + 32)); element (i, j) of the view lies at j·N1 + i. Factors are loaded once per program; quantization as
    the whole-tile kernel. No channel scale or gate here: the wrapper applies them first (`scaled_input`). In
    Triton 3.6 a channel-scale multiply in this kernel compiles to illegal memory accesses on H100 for the
    column split (K = 18944), in every form tried, also after the spill fix below (2026-12-06). N1 and N2 are
    compile-time constants: with them as runtime values, each element's offset and mask in both tile layouts took
    registers and the kernel spilled (255 registers, 74 spilled; 203 and none now; H100, 2026-12-06)."""
    i = tl.arange(0, B1)
    ja = tl.arange(0, BA)
    jb = BA + tl.arange(0, BB)
    row_in = i < N1
    in_a = row_in[:, None] & (ja < N2)[None, :]
    in_b = row_in[:, None] & (jb < N2)[None, :]
    if TRANSPOSED:
        flat_a = i[:, None] + ja[None, :] * N1
        flat_b = i[:, None] + jb[None, :] * N1
    else:
        flat_a = i[:, None] * N2 + ja[None, :]
        flat_b = i[:, None] * N2 + jb[None, :]
    if HAS_LEFT:  # leftᵀ
        left_t = tl.load(left_ptr + i[None, :] * N1 + i[:, None], mask=row_in[:, None] & row_in[None, :], other=0.0)
    if HAS_RIGHT:
        b_in = jb < N2
        r_aa = tl.load(right_ptr + ja[:, None] * N2 + ja[None, :])
        r_ab = tl.load(right_ptr + ja[:, None] * N2 + jb[None, :], mask=b_in[None, :], other=0.0)
        r_ba = tl.load(right_ptr + jb[:, None] * N2 + ja[None, :], mask=b_in[:, None], other=0.0)
        r_bb = tl.load(right_ptr + jb[:, None] * N2 + jb[None, :], mask=b_in[:, None] & b_in[None, :], other=0.0)
    clip = tl.load(clip_ptr).to(tl.float32) if HAS_CLIP else 1.0
    for t in tl.range(tl.program_id(0), M, tl.num_programs(0), num_stages=STAGES):
        xa = tl.load(x_ptr + t * stride_xm + flat_a, mask=in_a, other=0.0)
        xb = tl.load(x_ptr + t * stride_xm + flat_b, mask=in_b, other=0.0)
        if HAS_LEFT:
            xa = tl.dot(left_t, xa.to(left_t.dtype))
            xb = tl.dot(left_t, xb.to(left_t.dtype))
        if HAS_RIGHT:  # the left products stay in registers, as these MMAs' A operands
            wa = xa.to(r_aa.dtype)
            wb = xb.to(r_aa.dtype)
            ya = tl.dot(wb, r_ba, tl.dot(wa, r_aa))
            yb = tl.dot(wb, r_bb, tl.dot(wa, r_ab))
        else:
            ya = xa.to(tl.float32)
            yb = xb.to(tl.float32)
        # Both blocks' row maxima first, then one reduction across the warps (one shared-memory round, not two)
        absmax = tl.reduce(nan_max(tl.reduce(tl.abs(ya), 1, nan_max), tl.reduce(tl.abs(yb), 1, nan_max)), 0, nan_max)
        bad = (absmax != absmax) | (absmax == float("inf"))
        scale = _token_scale(absmax, clip, BITS)
        inv = 1.0 / tl.where(scale > 0, scale, 1.0)
        zero = bad | (scale == 0)
        qa = _codes(ya * inv, zero, BITS)
        qb = _codes(yb * inv, zero, BITS)
        tl.store(codes_ptr + t * stride_cm + flat_a, qa.to(tl.int8), mask=in_a)
        tl.store(codes_ptr + t * stride_cm + flat_b, qb.to(tl.int8), mask=in_b)
        tl.store(scales_ptr + t, tl.where(bad, float("nan"), scale))


@triton.jit
def _quantize_act_chunked_kernel(x_ptr, gate_ptr, cs_ptr, left_ptr, right_ptr, clip_ptr, codes_ptr, scales_ptr,
                                 scratch_ptr, M, N1, N2, stride_xm, stride_cm, GATED: tl.constexpr,
                                 HAS_CS: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_CLIP: tl.constexpr,
                                 BITS: tl.constexpr, B1: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
                                 SCRATCH_W: tl.constexpr):
    """Chunked path for large factors. Per token, pass 1: for each BJ-column slice of the output,
    z = (X ⊙ C) · right[:, slice] (contracted BK columns at a time), y = leftᵀ · z, running absmax, y to this
    program's fp32 scratch [B1, SCRATCH_W]; pass 2: quantize the scratch with the token's scale."""
    i = tl.arange(0, B1)
    jj = tl.arange(0, BJ)
    kk = tl.arange(0, BK)
    row_in = i < N1
    if HAS_LEFT:
        left_t = tl.load(left_ptr + i[None, :] * N1 + i[:, None], mask=row_in[:, None] & row_in[None, :], other=0.0)
    clip = tl.load(clip_ptr).to(tl.float32) if HAS_CLIP else 1.0
    scratch = scratch_ptr + tl.program_id(0) * (B1 * SCRATCH_W) + i[:, None] * SCRATCH_W
    for t in range(tl.program_id(0), M, tl.num_programs(0)):
        row_off = t * stride_xm + i[:, None] * N2
        absmax = tl.zeros((), tl.float32)
        bad = tl.zeros((), tl.int32)
        for j0 in range(0, N2, BJ):
            z = tl.zeros((B1, BJ), tl.float32)
            for k0 in range(0, N2, BK):
                k_in = (k0 + kk) < N2
                xk = tl.load(x_ptr + row_off + (k0 + kk)[None, :], mask=row_in[:, None] & k_in[None, :], other=0.0)
                if GATED:
                    xk = _swiglu(tl.load(gate_ptr + row_off + (k0 + kk)[None, :],
                                         mask=row_in[:, None] & k_in[None, :], other=0.0), xk)
                xk = xk.to(tl.float32)
                if HAS_CS:
                    xk = xk * tl.load(cs_ptr + i[:, None] * N2 + (k0 + kk)[None, :],
                                      mask=row_in[:, None] & k_in[None, :], other=0.0).to(tl.float32)
                r = tl.load(right_ptr + (k0 + kk)[:, None] * N2 + (j0 + jj)[None, :],
                            mask=k_in[:, None] & ((j0 + jj) < N2)[None, :], other=0.0)
                z = tl.dot(xk.to(r.dtype), r, z)
            y = z
            if HAS_LEFT:
                y = tl.dot(left_t, z.to(left_t.dtype))
            slice_max = tl.reduce(tl.reduce(tl.abs(y), 1, nan_max), 0, nan_max)
            bad = tl.maximum(bad, ((slice_max != slice_max) | (slice_max == float("inf"))).to(tl.int32))
            absmax = tl.maximum(absmax, tl.where(bad > 0, 0.0, slice_max))
            tl.store(scratch + (j0 + jj)[None, :], y)
        # Pass 2 reads values other threads wrote, and the next token overwrites them: barriers on both sides.
        tl.debug_barrier()
        scale = _token_scale(absmax, clip, BITS)
        inv = 1.0 / tl.where(scale > 0, scale, 1.0)
        for j0 in range(0, N2, BJ):
            q = _codes(tl.load(scratch + (j0 + jj)[None, :]) * inv, (bad > 0) | (scale == 0), BITS)
            tl.store(codes_ptr + t * stride_cm + i[:, None] * N2 + (j0 + jj)[None, :], q.to(tl.int8),
                     mask=row_in[:, None] & ((j0 + jj) < N2)[None, :])
        tl.store(scales_ptr + t, tl.where(bad > 0, float("nan"), scale))
        tl.debug_barrier()


# The kernels in this file address elements with int32 offsets (cheaper address math in every tile); an input or
# output reaching 2^31 elements is processed in row blocks that each stay below, by the wrappers.
MAX_OFFSET = 2 ** 31 - 1


def _rows_per_launch(row_stride: int, width: int) -> int:
    """Most rows, `row_stride` elements apart with `width` of them read, whose offsets all fit MAX_OFFSET."""
    return max(1, (MAX_OFFSET - width) // max(row_stride, width, 1) + 1)


def resident_per_sm(n_regs: int, shared: int, warps: int, max_shared: int, max_regs: int) -> int:
    """How many programs of a compiled kernel an SM holds at once: registers are allocated per warp in 8-register
    steps per thread out of `max_regs`, and each program takes its shared memory plus 1 KiB the hardware reserves
    (sm_80 and later) out of `max_shared` + 1 KiB (`max_shared`: the most one program may opt into, as Triton's
    driver reports it); at most 64 warps and 32 programs per SM."""
    warps_by_regs = max_regs // (32 * -(-max(n_regs, 1) // 8) * 8)
    by_smem = (max_shared + 1024) // (shared + 1024)
    return max(1, min(warps_by_regs // warps, by_smem, 64 // warps, 32))


@functools.lru_cache(maxsize=None)
def _sm_limits(device_index: int) -> tuple[int, int]:
    """(shared memory one program may opt into, registers per SM), as Triton's driver reports them."""
    props = triton.runtime.driver.active.utils.get_device_properties(device_index)
    return props["max_shared_mem"], props["max_num_regs"]


_resident: dict[tuple, int] = {}


def _programs(kernel, work: int, device: torch.device, per_sm: int, args: tuple, kwargs: dict) -> int:
    """Programs of a persistent launch of `kernel` over `work` items (tokens or token steps): `per_sm` per SM but
    no more than an SM holds at once (`ActLaunch.fit_resident`). The programs past that start as a second wave once
    the first ones end, each with its full share of the items: on H100 the 64x64-tile kernel (45 KiB of shared
    memory: 5 fit) ran 8 programs per SM as 5 + 3, at 0.76x of memcpy against 0.84x with 5 (K = 3584, 16384
    tokens). The kernel is compiled first (`warmup`, cached per launch settings) to read its registers and shared
    memory."""
    if device.type != "cuda":
        return work
    if ACT_LAUNCH.fit_resident:
        key = (kernel, device.index,
               tuple(a.dtype if isinstance(a, torch.Tensor) else None for a in args),
               tuple(kwargs.items()))  # each call site builds its kwargs in one order
        if key not in _resident:
            try:
                compiled = kernel.warmup(*args, grid=(1,), **kwargs)
                compiled._init_handles()
                _resident[key] = resident_per_sm(compiled.n_regs, compiled.metadata.shared,
                                                 compiled.metadata.num_warps, *_sm_limits(device.index or 0))
            except (AttributeError, KeyError, TypeError) as error:  # a Triton whose compiled-kernel API moved
                warnings.warn(f"faircalib.kernels.gemm: cannot read {getattr(kernel, '__name__', kernel)}'s "
                              f"registers and shared memory ({type(error).__name__}: {error}); launching {per_sm} "
                              f"programs per SM uncapped")
                _resident[key] = per_sm
        per_sm = min(per_sm, _resident[key])
    return min(work, per_sm * _num_sms(device.index or 0))


@registry.register("quantize_act_packed", "triton")
def quantize_act_packed(x: torch.Tensor, channel_scale: torch.Tensor | None, left: torch.Tensor | None,
                        right: torch.Tensor | None, clip: torch.Tensor | None, bits: int):
    """x: [M, K] float (row stride free, unit column stride) -> (codes int8 [M, K], scales fp32 [M, 1])."""
    return _quantize_packed(x, None, channel_scale, left, right, clip, bits)


@registry.register("quantize_swiglu_packed", "triton")
def quantize_swiglu_packed(gate: torch.Tensor, up: torch.Tensor, channel_scale: torch.Tensor | None,
                           left: torch.Tensor | None, right: torch.Tensor | None, clip: torch.Tensor | None, bits: int):
    """gate, up: [M, K] -> codes and scales of silu(gate) · up, computed inside the kernels (never stored)."""
    return _quantize_packed(up, gate, channel_scale, left, right, clip, bits)


def _quantize_packed(x: torch.Tensor, gate: torch.Tensor | None, channel_scale: torch.Tensor | None,
                     left: torch.Tensor | None, right: torch.Tensor | None, clip: torch.Tensor | None, bits: int):
    m, k = x.shape
    plain = channel_scale is None and left is None and right is None
    if plain and _next_pow2(k) > ACT_LAUNCH.plain_max_k:
        # No transform, long rows: the plain per-token quantizer (`quant.py`, rows swept twice in chunks), same
        # numerics. Shorter rows take the whole-tile kernel as one [1, K] tile: one launch, less host work.
        if gate is not None:
            x = torch.nn.functional.silu(gate) * x
        one = torch.ones((), dtype=torch.float32, device=x.device)
        clip = one if clip is None else clip.reshape(()).float()
        codes, scales, _ = quant_kernels._fake_quant(x, clip, clip, bits, None, True, codes=True)
        return codes, scales.reshape(m, 1)
    n1 = left.shape[0] if left is not None else (k // right.shape[0] if right is not None else 1)
    n2 = k // n1
    if x.stride(1) != 1 or (gate is not None and gate.stride() != x.stride()):
        x = x.contiguous()
        gate = None if gate is None else gate.contiguous()
    codes = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scales = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m == 0:
        return codes, scales
    rows = _rows_per_launch(x.stride(0), k)
    if m > rows:  # past int32 offsets (MAX_OFFSET): row blocks, each copied into place
        for start in range(0, m, rows):
            part = slice(start, start + rows)
            codes[part], scales[part] = _quantize_packed(x[part], None if gate is None else gate[part],
                                                         channel_scale, left, right, clip, bits)
        return codes, scales
    cfg, dummy = ACT_LAUNCH, scales
    common = (x, x if gate is None else gate, dummy if channel_scale is None else channel_scale.contiguous(),
              dummy if left is None else left.contiguous())
    flags = dict(GATED=gate is not None, HAS_CS=channel_scale is not None, HAS_LEFT=left is not None,
                 HAS_CLIP=clip is not None, BITS=bits)
    clip_arg = dummy if clip is None else clip.reshape(())
    factor = left if left is not None else right
    path = act_path(n1, n2, None if factor is None else factor.dtype, gate is not None or channel_scale is not None)
    if path == "tile":
        b1 = _pow2(n1) if factor is not None else 1
        b2 = _pow2(n2) if factor is not None else _next_pow2(n2)
        # Tokens per step: stack them up to `transform_rows` rows (transforms) or `plain_tile` elements (none).
        tokens = max(1, cfg.transform_rows // b1) if factor is not None else max(1, cfg.plain_tile // b2)
        per_sm = cfg.large_tile_programs_per_sm if b1 * b2 >= cfg.fused_max_tile else cfg.programs_per_sm
        args = (*common, dummy if right is None else right.contiguous(), clip_arg, codes, scales, m, x.stride(0),
                codes.stride(0), n1, n2)
        kwargs = dict(**flags, HAS_RIGHT=right is not None, B1=b1, B2=b2, TOKENS=tokens, STAGES=cfg.stages,
                      RECIP=factor is not None, num_warps=8 if tokens * b1 * b2 > 4096 else 4)
        programs = _programs(_quantize_act_kernel, triton.cdiv(m, tokens), x.device, per_sm, args, kwargs)
        _quantize_act_kernel[(programs,)](*args, **kwargs)
        return codes, scales
    if path == "split":
        if gate is not None or channel_scale is not None:
            # Rounded as the whole-tile kernel rounds the scaled input for its MMA.
            x = scaled_input(x, gate, channel_scale, factor.dtype)
        if cfg.hopper and act_hopper is not None and not registry.triton_interpreted() and \
                act_hopper.supported(x, None, None, left, right):
            act_hopper.quantize(x, left, right, None if clip is None else clip.reshape(()), bits, codes,
                                scales.view(-1), (cfg.hopper_stages, cfg.hopper_cols_stages),
                                min(m, _num_sms(x.device.index or 0)))
            return codes, scales
        b1, ba, bb, transposed = split_layout(n1, n2, factor.dtype)
        # A transposed view swaps the factors' roles: (leftᵀ X right)ᵀ = rightᵀ Xᵀ left.
        view_left, view_right = (right, left) if transposed else (left, right)
        args = (x, dummy if view_left is None else view_left.contiguous(),
                dummy if view_right is None else view_right.contiguous(), clip_arg, codes, scales, m, x.stride(0),
                codes.stride(0), n2 if transposed else n1, n1 if transposed else n2)
        kwargs = dict(HAS_LEFT=view_left is not None, HAS_RIGHT=view_right is not None, HAS_CLIP=clip is not None,
                      BITS=bits, B1=b1, BA=ba, BB=bb, TRANSPOSED=transposed, STAGES=cfg.split_stages,
                      num_warps=cfg.split_warps)
        programs = _programs(_quantize_act_split_kernel, m, x.device, cfg.split_programs_per_sm, args, kwargs)
        _quantize_act_split_kernel[(programs,)](*args, **kwargs)
        return codes, scales
    if right is None:  # the chunked kernel contracts through `right`: the identity stands in for a missing one
        right = torch.eye(n2, dtype=left.dtype, device=x.device)
    b1, bj, bk = _pow2(n1), cfg.chunk_j, cfg.chunk_k
    scratch_w = triton.cdiv(n2, bj) * bj
    head, tail = (*common, right.contiguous(), clip_arg, codes, scales), (m, n1, n2, x.stride(0), codes.stride(0))
    kwargs = dict(**flags, B1=b1, BJ=bj, BK=bk, SCRATCH_W=scratch_w, num_warps=cfg.chunked_warps)
    # The scratch is sized by the program count: an fp32 stand-in (`scales`) while that is worked out.
    programs = _programs(_quantize_act_chunked_kernel, m, x.device, cfg.chunked_programs_per_sm,
                         (*head, scales, *tail), kwargs)
    scratch = torch.empty((programs, b1 * scratch_w), dtype=torch.float32, device=x.device)
    _quantize_act_chunked_kernel[(programs,)](*head, scratch, *tail, **kwargs)
    return codes, scales


def _set_block_shapes(nargs: dict) -> None:
    """Autotune pre-hook: the TMA descriptors take the config's tile shapes (the output's: half a tile wide when
    the epilogue stores it in two halves)."""
    nargs["a_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]
    nargs["w_desc"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]
    if nargs["c_desc"] is not None:
        nargs["c_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_N"] // (2 if nargs["SUBTILE"] else 1)]


def _gemm_configs() -> list[triton.Config]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) x SUBTILE, flattened; the tile shapes that won unflattened also
    unflattened. Under the interpreter one config (the autotuner would time several on a GPU); tests swap in each
    epilogue and loop variant. FLATTEN (the tile and K loops pipelined as one) won at 1024 tokens, its absence at
    16384 (up to 1.2x on H100, BENCHMARKS.md); every config costs a compile on the first call."""
    if registry.triton_interpreted():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 8, "SUBTILE": True,
                               "FLATTEN": True}, num_warps=4, num_stages=1, pre_hook=_set_block_shapes)]
    flattened = [(128, 256, 128, 8, 3), (128, 256, 128, 8, 4), (256, 128, 128, 8, 3), (256, 128, 128, 8, 4),
                 (128, 128, 128, 8, 4), (128, 128, 128, 4, 5), (128, 256, 64, 8, 5), (256, 128, 64, 8, 5),
                 (128, 256, 64, 8, 6)]
    unflattened = [(128, 256, 128, 8, 3), (256, 128, 128, 8, 3)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "SUBTILE": sub,
                           "FLATTEN": flat}, num_warps=w, num_stages=st, pre_hook=_set_block_shapes)
            for flat, shapes in ((True, flattened), (False, unflattened))
            for bm, bn, bk, w, st in shapes for sub in (False, True)]


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


# (128-element groups per program, warps) of the unpack pass.
UNPACK_LAUNCH = (64, 4)


@registry.register("unpack_weight_int8", "triton")
def unpack_weight_int8(w_packed: torch.Tensor) -> torch.Tensor:
    """w_packed int8 [N, Kp / 2] (GEMM layout) -> int8 codes [N, Kp] in natural order (zero-padded K tail)."""
    out = torch.empty((w_packed.shape[0], 2 * w_packed.shape[1]), dtype=torch.int8, device=w_packed.device)
    unpack_into(w_packed, out)
    return out


def unpack_into(w_packed: torch.Tensor, out: torch.Tensor) -> None:
    """The unpack pass: w_packed int8 [N, Kp / 2] -> its int8 codes written into out [N, Kp] (contiguous)."""
    groups = w_packed.numel() // (GEMM_K_GROUP // 2)
    block_g, warps = UNPACK_LAUNCH
    if groups:
        _unpack_weight_kernel[(triton.cdiv(groups, block_g),)](w_packed.contiguous(), out, groups, BLOCK_G=block_g,
                                                               HALF=GEMM_K_GROUP // 2, num_warps=warps)


@triton.autotune(configs=_gemm_configs(), key=["M_BUCKET", "N", "K", "TMA_STORE"], do_bench=_tune_bench)
@triton.jit
def _int8_gemm_kernel(a_desc, w_desc, c_desc, sa_ptr, sw_ptr, bias_ptr, c_ptr, M, N, K, M_BUCKET, stride_cm,
                      PROGRAMS: tl.constexpr, HAS_BIAS: tl.constexpr, TMA_STORE: tl.constexpr, SUBTILE: tl.constexpr,
                      FLATTEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_M: tl.constexpr):
    """Persistent: PROGRAMS programs sweep the output tiles in grouped order (GROUP_M row-tiles share each weight
    column-tile while it is in L2); operands arrive by TMA (out-of-range rows and the K tail read as zeros).
    TMA_STORE: the output tile leaves by TMA too (asynchronous, clipped at the edges; SUBTILE: in two halves, half
    the staging buffer), which ran the GEMM up to 1.2x faster than pointer stores on H100 (BENCHMARKS.md); pointer
    stores where the output's row stride is not 16-byte aligned. FLATTEN: the tile and K loops software-pipelined
    as one loop (the next tile's loads overlap this one's epilogue)."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), num_m * num_n, PROGRAMS, flatten=FLATTEN):
        pid_m, pid_n = grouped_tile(tile, num_m, num_n, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            a = a_desc.load([pid_m * BLOCK_M, k0])
            w = w_desc.load([pid_n * BLOCK_N, k0])
            acc = tl.dot(a, w.T, acc, out_dtype=tl.int32)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        out = acc.to(tl.float32) * tl.load(sa_ptr + rm, mask=rm < M, other=0.0)[:, None] * \
            tl.load(sw_ptr + rn, mask=rn < N, other=0.0)[None, :]
        if HAS_BIAS:
            out = out + tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        out = out.to(c_ptr.dtype.element_ty)
        if TMA_STORE and SUBTILE:
            left, right = tl.split(tl.permute(tl.reshape(out, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
            c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], left)
            c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N + BLOCK_N // 2], right)
        elif TMA_STORE:
            c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], out)
        else:
            tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], out, mask=(rm < M)[:, None] & (rn < N)[None, :])


# TMA needs 16-byte aligned row strides: int8 codes with K % 16 != 0 are copied into a zero-padded buffer, and an
# output whose rows are not a multiple of 16 bytes is written by pointer stores (no LLaDA/Dream width needs either).
TMA_ALIGN = 16


def _tma_codes(a_codes: torch.Tensor) -> torch.Tensor:
    """a_codes int8 [M, K] as TMA reads them: contiguous rows of a multiple of 16 bytes (a zero-padded copy if not)."""
    m, k = a_codes.shape
    if k % TMA_ALIGN == 0 and a_codes.stride(1) == 1 and a_codes.stride(0) == k:
        return a_codes
    padded = torch.zeros((m, -(-k // TMA_ALIGN) * TMA_ALIGN), dtype=torch.int8, device=a_codes.device)
    padded[:, :k] = a_codes
    return padded


@registry.register("int8_matmul", "triton")
def int8_gemm(a_codes: torch.Tensor, a_scales: torch.Tensor, w_int8: torch.Tensor, w_scales: torch.Tensor,
              bias: torch.Tensor | None, out_dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """a_codes int8 [M, K], a_scales fp32 [M, 1], w_int8 int8 [N, Kp] (Kp = padded_k(K), zero tail), w_scales
    fp32 [N], bias [N] | None -> [M, N] out_dtype = (A·Wᵀ in int32) · a_scale · w_scale (+ bias), written into
    `out` when given (an [M, N] out_dtype view with unit column stride: a row block of the output, below)."""
    m, k = a_codes.shape
    n = w_int8.shape[0]
    if out is None:
        out = torch.empty((m, n), dtype=out_dtype, device=a_codes.device)
    if m == 0 or n == 0:
        return out
    rows = _rows_per_launch(out.stride(0), n)
    if m > rows:  # the epilogue's output offsets would pass int32 (MAX_OFFSET): row blocks
        for start in range(0, m, rows):
            part = slice(start, start + rows)
            int8_gemm(a_codes[part], a_scales[part], w_int8, w_scales, bias, out_dtype, out[part])
        return out
    a_codes = _tma_codes(a_codes)
    k = a_codes.shape[1]
    # Block shapes are placeholders: the autotune pre-hook sets each config's.
    a_desc = TensorDescriptor.from_tensor(a_codes, [1, 1])
    w_desc = TensorDescriptor.from_tensor(w_int8, [1, 1])
    tma_store = out.stride(0) * out.element_size() % TMA_ALIGN == 0 and out.data_ptr() % TMA_ALIGN == 0
    c_desc = TensorDescriptor.from_tensor(out, [1, 1]) if tma_store else None
    programs = 4 if a_codes.device.type != "cuda" else _num_sms(a_codes.device.index or 0)
    def grid(meta):
        return (min(programs, triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])),)

    _int8_gemm_kernel[grid](
        a_desc, w_desc, c_desc, a_scales.reshape(-1).contiguous(), w_scales.reshape(-1).contiguous(),
        w_scales if bias is None else bias.contiguous(), out, m, n, k, _next_pow2(m), out.stride(0),
        PROGRAMS=programs, HAS_BIAS=bias is not None, TMA_STORE=tma_store)
    return out


@registry.register("w4a4_matmul", "triton")
def w4a4_matmul(a_codes: torch.Tensor, a_scales: torch.Tensor, w_packed: torch.Tensor, w_scales: torch.Tensor,
                bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """a_codes int8 [M, K], a_scales fp32 [M, 1], w_packed int8 [N, padded_k(K) / 2], w_scales fp32 [N],
    bias [N] | None -> [M, N] out_dtype: unpack pass, then the INT8 GEMM."""
    return w4a4_matmul_stacked(a_codes, a_scales, [w_packed], w_scales, bias, out_dtype)


# The W4A4 GEMM's design: None = the faster per shape, timed on the shape's first call (`w4a4_design`); "unpack" or
# "regs:WARPS:STAGES:TOKENS" forces one (tests, benchmarks).
W4A4_DESIGN: str | None = None
_designs: dict[tuple, str] = {}
# The times (ms) each timed choice rested on, by `design_key`: what `bench_gemm` reports next to the choice.
DESIGN_TIMES: dict[tuple, dict[str, float]] = {}
# The register designs by name -> their (warps, stages, tokens per program) config: built once, not on every call.
REGS_DESIGNS: dict[str, tuple[int, int, int]] = {} if gemm_regs is None else {
    "regs:" + ":".join(map(str, config)): config for config in gemm_regs.CONFIGS}


@registry.register("w4a4_matmul_stacked", "triton")
def w4a4_matmul_stacked(a_codes: torch.Tensor, a_scales: torch.Tensor, w_packed: list[torch.Tensor],
                        w_scales: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """`w4a4_matmul` against the weights w_packed[i] [N_i, Kp / 2] stacked along N (w_scales, bias [sum N_i]) ->
    [M, sum N_i], by the design `w4a4_design` picks: "unpack" unpacks each weight into its rows of one int8 operand
    for one INT8 GEMM; "regs" (`gemm_regs`, Hopper) runs one register-unpack GEMM over all of them (up to
    `gemm_regs.MAX_MEMBERS` weights per launch)."""
    args = (a_codes, a_scales, w_packed, w_scales, bias, out_dtype)
    return _w4a4_run(w4a4_design(*args), *args)


def swiglu_in_epilogue(device: torch.device, k: int) -> bool:
    """Whether `w4a4_matmul_swiglu` forms the SwiGLU in its GEMM's epilogue for inputs of width k on `device`: the
    register kernel runs there (an sm_90 GPU, Triton with Gluon, not interpreted, padded K < `gemm_regs.MAX_K`)."""
    return (gemm_regs is not None and not registry.triton_interpreted() and gemm_regs.supported(device) and
            gemm_reference.padded_k(k) < gemm_regs.MAX_K)


@registry.register("w4a4_matmul_swiglu", "triton")
def w4a4_matmul_swiglu(a_codes: torch.Tensor, a_scales: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                       w_scales: torch.Tensor, bias: torch.Tensor | None, channel_scale: torch.Tensor | None,
                       out_dtype: torch.dtype) -> torch.Tensor:
    """`gemm_reference.w4a4_matmul_swiglu`. On Hopper one register-unpack GEMM computes the SwiGLU in its epilogue
    (`gemm_regs.w4a4_matmul_swiglu_regs`): gate and up never go to memory. Elsewhere (and for K >=
    `gemm_regs.MAX_K`) the stacked GEMM, then the SwiGLU in PyTorch."""
    m, f = a_codes.shape[0], w_gate.shape[0]
    if not swiglu_in_epilogue(a_codes.device, a_codes.shape[1]):
        both = w4a4_matmul_stacked(a_codes, a_scales, [w_gate, w_up], w_scales, bias, out_dtype)
        return gemm_reference.swiglu_scaled(both[:, :f], both[:, f:], channel_scale, out_dtype)
    out = torch.empty((m, f), dtype=out_dtype, device=a_codes.device)
    codes, scales = _tma_codes(a_codes), a_scales.reshape(-1).contiguous()
    w_gate, w_up, w_scales = w_gate.contiguous(), w_up.contiguous(), w_scales.reshape(-1).contiguous()
    bias = None if bias is None else bias.contiguous()
    channel_scale = None if channel_scale is None else channel_scale.float().contiguous()
    rows = _rows_per_launch(f, f)  # the epilogue's output offsets stay within int32
    for first in range(0, m, rows):
        part = slice(first, first + rows)
        gemm_regs.w4a4_matmul_swiglu_regs(codes[part], scales[part], w_gate, w_up, w_scales, bias, channel_scale,
                                          out[part], gemm_regs.SWIGLU_CONFIG)
    return out


# A candidate's time is the mean over DESIGN_GRAPHS CUDA graphs of one call, each captured anew, timed in turns with
# the other candidates' graphs: the same design read 1.44-1.65x cuBLAS bf16 in four graphs of one process (H100,
# 2026-12-06 21:52 UTC, Dream's gate+up stack at 4096 tokens, the unpack design), and candidates timed one after the
# other may meet the GPU at different clocks (the first one right after the GPU idled). The unpack design is kept
# only where it is faster than the register design chosen by more than the margin: it also allocates an int8 copy of
# the weights on every call (136 MB for Dream's gate+up stack), the register design nothing.
DESIGN_GRAPHS = 3
UNPACK_MARGIN = 0.97
# Another register design replaces the first (`gemm_regs.CONFIGS`) only when faster than it by more than this: the
# choice's times put regs:8:3:128 and regs:4:4:128 within 2% on most shapes, and it took either by chance, while in
# the benchmark, contenders in turns, regs:4:4:128 ran 2-6% faster in 12 of 20 shape and token-count cases, 17% in
# one, and within 1% in the other 7 (H100, 2026-12-07 01:27 UTC, BENCHMARKS.md).
REGS_MARGIN = 0.97


def w4a4_design(a_codes: torch.Tensor, a_scales: torch.Tensor, w_packed: list[torch.Tensor], w_scales: torch.Tensor,
                bias: torch.Tensor | None, out_dtype: torch.dtype) -> str:
    """The design this call runs: `W4A4_DESIGN` if set; "unpack" where the register kernel cannot run (not an sm_90
    GPU, Triton without Gluon, the interpreter, K >= gemm_regs.MAX_K); else the faster of "unpack" and each "regs"
    config on this shape (token count bucketed by powers of two), timed from CUDA graphs on its first call like an
    autotuner (or the first "regs" config untimed, when that call is being captured into a CUDA graph). A register
    design that fails to build, run or be captured is left out with a warning. Another register design must beat the
    first that runs by a margin (`REGS_MARGIN`), and the unpack design must beat the register design so chosen by a
    margin (`UNPACK_MARGIN`)."""
    if W4A4_DESIGN is not None:
        return W4A4_DESIGN
    device = a_codes.device
    key = design_key(a_codes, w_packed, bias, out_dtype)
    design = _designs.get(key)
    if design is None:
        if gemm_regs is None or registry.triton_interpreted() or not gemm_regs.supported(device) or \
                2 * w_packed[0].shape[1] >= gemm_regs.MAX_K:
            design = _designs[key] = "unpack"
            return design
        if torch.cuda.is_current_stream_capturing():
            return next(iter(REGS_DESIGNS))
        # A dead reference cycle that holds a CUDA graph, collected in the middle of a capture, destroys that graph
        # there and fails the capture (torch no longer collects when a capture begins): collected first, once.
        gc.collect()
        graphs, pool = {}, torch.cuda.graph_pool_handle()
        for candidate in ["unpack", *REGS_DESIGNS]:
            run = functools.partial(_w4a4_run, candidate, a_codes, a_scales, w_packed, w_scales, bias, out_dtype)
            try:
                run()  # compiles (and autotunes the INT8 GEMM) outside the timing
                graphs[candidate] = [_timing_graph(run, pool) for _ in range(DESIGN_GRAPHS)]
            except Exception as error:  # noqa: BLE001  (a Gluon build that fails here must not fail the model)
                if candidate == "unpack":
                    raise
                warnings.warn(f"faircalib.kernels.gemm: W4A4 design {candidate} failed on {tuple(a_codes.shape)} x "
                              f"{[tuple(w.shape) for w in w_packed]} ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}); not used for this shape")
        times = dict.fromkeys(graphs, 0.0)
        for turn in range(DESIGN_GRAPHS):  # in turns: a drift of the GPU's clock falls on every candidate alike
            for candidate, captured in graphs.items():
                times[candidate] += _replay_median_ms(captured[turn]) / DESIGN_GRAPHS
        del graphs
        DESIGN_TIMES[key] = times
        regs_times = {d: t for d, t in times.items() if d != "unpack"}
        design = "unpack"
        if regs_times:
            preferred, fastest = next(iter(regs_times)), min(regs_times, key=regs_times.get)
            regs = fastest if regs_times[fastest] < REGS_MARGIN * regs_times[preferred] else preferred
            if times["unpack"] >= UNPACK_MARGIN * regs_times[regs]:
                design = regs
        _designs[key] = design
    return design


def design_key(a_codes: torch.Tensor, w_packed: list[torch.Tensor], bias: torch.Tensor | None,
               out_dtype: torch.dtype) -> tuple:
    """What a design choice is cached by: device, token count bucketed by powers of two, the stacked weights' rows
    and packed row length, output dtype, whether a bias is added."""
    device = a_codes.device
    return (device.type, device.index, _next_pow2(max(a_codes.shape[0], 1)), tuple(w.shape[0] for w in w_packed),
            w_packed[0].shape[1], out_dtype, bias is not None)


def _timing_graph(run, pool) -> torch.cuda.CUDAGraph:
    """run() captured in a CUDA graph whose memory comes from `pool`: the graphs of one choice share it (their
    outputs are never read), so holding them all costs about one call's memory, not one per graph (12 graphs of
    1.2 GB outputs for Dream's gate+up stack at 16384 tokens)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        run()
    return graph


def _replay_median_ms(graph: torch.cuda.CUDAGraph) -> float:
    """Median GPU time of a graph's replay, L2 flushed before each replay (`do_bench`). The models run this way;
    launched one by one, the unpack design's two launches and the INT8 GEMM's autotuner dispatch cost more host time
    than the GPU work of a 4096-token GEMM, and the choice followed host time (H200, 2026-12-06 20:20 UTC: LLaDA's
    q/k/v/o at 4096 tokens picked a register design at 1.36x bf16, the unpack design ran 1.48x in the same process).
    Medians over ~20 ms: the designs can be within 10% of each other, so `w4a4_design` averages several captures."""
    return triton.testing.do_bench(graph.replay, warmup=5, rep=20, return_mode="median")


def _w4a4_run(design: str, a_codes: torch.Tensor, a_scales: torch.Tensor, w_packed: list[torch.Tensor],
              w_scales: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    n, kp = sum(w.shape[0] for w in w_packed), 2 * w_packed[0].shape[1]
    if design == "unpack":
        unpacked = torch.empty((n, kp), dtype=torch.int8, device=a_codes.device)
        start = 0
        for w in w_packed:
            unpack_into(w, unpacked[start:start + w.shape[0]])
            start += w.shape[0]
        return int8_gemm(a_codes, a_scales, unpacked, w_scales, bias, out_dtype)
    config = REGS_DESIGNS.get(design)
    if config is None:
        raise ValueError(f"faircalib.kernels.gemm: unknown W4A4 design {design!r}; choose 'unpack' or one of "
                         f"{list(REGS_DESIGNS)} (the register designs need Triton with Gluon)")
    if kp >= gemm_regs.MAX_K:
        raise ValueError(f"faircalib.kernels.gemm: W4A4 design {design!r} needs K < {gemm_regs.MAX_K} (its 16x int32 "
                         f"sums), got padded K = {kp}; use 'unpack'")
    m = a_codes.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a_codes.device)
    codes, scales = _tma_codes(a_codes), a_scales.reshape(-1).contiguous()
    w_scales = w_scales.reshape(-1).contiguous()
    rows = _rows_per_launch(n, n)  # the epilogue's output offsets stay within int32 (MAX_OFFSET)
    bias = None if bias is None else bias.contiguous()
    launches, c0 = [], 0  # (weights, their output columns): up to MAX_MEMBERS weights per launch
    for start in range(0, len(w_packed), gemm_regs.MAX_MEMBERS):
        group = [w.contiguous() for w in w_packed[start:start + gemm_regs.MAX_MEMBERS]]
        cols = slice(c0, c0 + sum(w.shape[0] for w in group))
        launches.append((group, cols))
        c0 = cols.stop
    for first in range(0, m, rows):
        part = slice(first, first + rows)
        for group, cols in launches:
            gemm_regs.w4a4_matmul_regs(codes[part], scales[part], group, w_scales[cols],
                                       None if bias is None else bias[cols], out[part, cols], config)
    return out

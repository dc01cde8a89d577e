"""Triton kernels for the quantization ops; `quant_reference.py` is their specification (formulas there).

Every quantizer is a *group* quantizer over a matrix of R groups of C elements: activations `[..., K]` are
R = prod(leading) groups of C = K (per-token); weights `[N, K]` are R = N*G groups of C = K/G. Group r is
element (r // G, (r % G) * C + c) of a strided 2-D input, so transposed or sliced inputs need no copy.
Each program owns BLOCK_M groups. A group that fits one register tile (C <= 8192 columns by default) is read
from memory once: statistics (absmax, or max/min, and whether it holds NaN/Inf) and quantization both work on the
tile in registers. Longer groups (LLaDA's 12288, Dream's 18944) are swept twice in BLOCK_N chunks: pass 1 for the
statistics, pass 2 to quantize; pass 2 mostly re-reads from L2. Tile sizes and warps: `LAUNCH` (a `LaunchConfig`;
on the H100, one 16384-column register tile ran at 47-56% of memcpy against 66-76% for two passes).
fp32 math: divisions are IEEE-rounded (`div_rn`); rounding is half-to-even and bf16 stores round to nearest even
(`triton_math`); FMA contraction is off (`enable_fp_fusion=False`: `clip_max * max - clip_min * min` must round
like torch's two steps). So codes, scales and outputs match `torch` bit for bit. Backward kernels write per-group
clip-gradient partials; the sum to the clip's shape is a deterministic torch reduction (no float atomics).
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from . import registry
from .quant_reference import num_groups
from .triton_math import cast_rne, round_half_even


@dataclasses.dataclass
class LaunchConfig:
    """Tile sizes. A group of C columns is held in registers whole (one read of x) when next_pow2(C) <= max_single_n;
    longer groups are swept twice in chunks of max_block_n columns. A program covers up to `tile` elements in
    BLOCK_M <= max_block_m groups (many groups per program cost registers: each thread holds per-group values
    for several of them) and gets one warp per `warp_elements` elements (2 to 16 warps)."""
    tile: int = 4096
    max_single_n: int = 8192
    max_block_n: int = 4096
    max_block_m: int = 8
    warp_elements: int = 512


LAUNCH = LaunchConfig()
PACK_TILE = 4096  # packed bytes per pack/unpack program
INTERPRETER_TILE = 65536


def _launch_shape(groups: int, cols: int) -> tuple[int, int, bool, int]:
    """-> (BLOCK_M, BLOCK_N, SINGLE_PASS, num_warps) for R groups of C columns."""
    whole = triton.next_power_of_2(max(cols, 1))
    single_pass = whole <= LAUNCH.max_single_n
    block_n = whole if single_pass else LAUNCH.max_block_n
    # The interpreter has no registers to spare but pays per program: give it few, tall programs.
    tile, max_block_m = (INTERPRETER_TILE, INTERPRETER_TILE) if registry.triton_interpreted() else \
        (LAUNCH.tile, LAUNCH.max_block_m)
    block_m = max(1, min(tile // block_n, max_block_m, triton.next_power_of_2(max(groups, 1))))
    num_warps = min(16, max(2, block_m * block_n // LAUNCH.warp_elements))
    return block_m, block_n, single_pass, num_warps


@triton.jit
def _load_tile(ptr, base, c, stride_k, row_mask, C):
    """[BLOCK_M, BLOCK_N] fp32 tile of groups at `base` (element offsets), columns c; masked lanes read 0."""
    mask = row_mask[:, None] & (c < C)[None, :]
    return tl.load(ptr + base[:, None] + c[None, :] * stride_k, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _tile_stats(x, SYMMETRIC: tl.constexpr):
    """Per-row (top, bottom, bad) of a tile: symmetric absmax and 0; asymmetric max and min; bad = NaN/Inf seen."""
    bad = tl.max(((x != x) | (tl.abs(x) == float("inf"))).to(tl.int32), axis=1)
    if SYMMETRIC:
        top = tl.max(tl.abs(x), axis=1)
        bottom = tl.zeros_like(top)
    else:
        top = tl.max(x, axis=1)
        bottom = tl.min(x, axis=1)
    return top, bottom, bad


@triton.jit
def _group_stats(x_ptr, base, row_mask, stride_k, C,
                 SYMMETRIC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """_tile_stats over whole groups longer than one tile: a sweep over BLOCK_N-column chunks."""
    cols = tl.arange(0, BLOCK_N)
    top = tl.zeros([BLOCK_M], dtype=tl.float32)
    bottom = tl.zeros([BLOCK_M], dtype=tl.float32)
    bad = tl.zeros([BLOCK_M], dtype=tl.int32)
    for start in range(0, C, BLOCK_N):
        chunk_top, chunk_bottom, chunk_bad = _tile_stats(
            _load_tile(x_ptr, base, start + cols, stride_k, row_mask, C), SYMMETRIC)
        top = tl.maximum(top, chunk_top)
        bottom = tl.minimum(bottom, chunk_bottom)
        bad = tl.maximum(bad, chunk_bad)
    return top, bottom, bad


@triton.jit
def _group_params(top, bottom, bad, clip_max, clip_min, BITS: tl.constexpr, SYMMETRIC: tl.constexpr):
    """Group statistics -> (scale, zu, low, high, flat, bad, range_max, range_min, lo), fp32 per group.

    range_max/range_min feed the clip gradient: symmetric absmax and 0; asymmetric max(max, 0) and min(min, 0).
    """
    range_max = tl.maximum(top, 0.0)
    range_min = tl.minimum(bottom, 0.0)
    if SYMMETRIC:
        qmax: tl.constexpr = (1 << (BITS - 1)) - 1
        lo = tl.zeros_like(top)
        scale = tl.math.div_rn(clip_max * range_max, tl.full(top.shape, qmax, tl.float32))
        zu = tl.zeros_like(top)
        low = tl.full(top.shape, -qmax - 1, tl.float32)
        high = tl.full(top.shape, qmax, tl.float32)
    else:
        levels: tl.constexpr = (1 << BITS) - 1
        hi = clip_max * range_max
        lo = clip_min * range_min
        scale = tl.math.div_rn(hi - lo, tl.full(top.shape, levels, tl.float32))
        safe = tl.where(scale == 0, 1.0, scale)
        zu = round_half_even(tl.minimum(tl.maximum(tl.math.div_rn(-lo, safe), 0.0), levels))
        low = -zu
        high = levels - zu
    flat = scale == 0
    is_bad = bad != 0
    scale = tl.where(is_bad, float("nan"), scale)
    zu = tl.where(is_bad | flat, 0.0, zu)
    low = tl.where(is_bad | flat, 0.0, low)
    high = tl.where(is_bad | flat, 0.0, high)
    return scale, zu, low, high, flat, is_bad, range_max, range_min, lo


@triton.jit
def _levels(x, scale, low, high, flat, bad):
    """-> (v = x / scale with 0 in scale-0 groups, q = clamped rounded level relative to the zero point)."""
    v = tl.where(flat[:, None], 0.0, tl.math.div_rn(x, tl.where(flat | bad, 1.0, scale)[:, None]))
    # clamp before rounding: equal to clamp(round(v)) because the bounds are integers
    q = round_half_even(tl.minimum(tl.maximum(v, low[:, None]), high[:, None]))
    return v, tl.where(bad[:, None], 0.0, q)


@triton.jit
def _store_quantized(x, c, rows, row_mask, C, out_ptr, scale, zu, low, high, flat, bad,
                     OFFSET: tl.constexpr, CODES: tl.constexpr):
    """Quantize a tile and store int8 codes (CODES) or the dequantized values in out's dtype."""
    v, q = _levels(x, scale, low, high, flat, bad)
    mask = row_mask[:, None] & (c < C)[None, :]
    out_offsets = rows[:, None] * C + c[None, :]
    if CODES:
        code = tl.where((bad | flat)[:, None], 0.0, q + zu[:, None] - OFFSET)
        tl.store(out_ptr + out_offsets, code.to(tl.int8), mask=mask)
    else:
        tl.store(out_ptr + out_offsets, cast_rne(q * scale[:, None], out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fake_quant_fwd_kernel(x_ptr, clip_max_ptr, clip_min_ptr, out_ptr, scale_ptr, zero_ptr,
                           R, C, G, stride_n, stride_k,
                           BITS: tl.constexpr, SYMMETRIC: tl.constexpr, CODES: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE_PASS: tl.constexpr):
    """CODES=False: out = dequantized x (out dtype). CODES=True: out = int8 codes, plus scale/zero per group.
    SINGLE_PASS: BLOCK_N covers the group, which is read once and kept in registers."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < R
    base = (rows // G) * stride_n + (rows % G) * C * stride_k
    cols = tl.arange(0, BLOCK_N)
    if SINGLE_PASS:
        x = _load_tile(x_ptr, base, cols, stride_k, row_mask, C)
        top, bottom, bad = _tile_stats(x, SYMMETRIC)
    else:
        top, bottom, bad = _group_stats(x_ptr, base, row_mask, stride_k, C, SYMMETRIC, BLOCK_M, BLOCK_N)
    clip_max = tl.load(clip_max_ptr + rows, mask=row_mask, other=1.0)
    clip_min = tl.load(clip_min_ptr + rows, mask=row_mask, other=1.0)
    scale, zu, low, high, flat, bad, range_max, range_min, lo = _group_params(
        top, bottom, bad, clip_max, clip_min, BITS, SYMMETRIC)
    offset: tl.constexpr = 0 if SYMMETRIC else 1 << (BITS - 1)
    if SINGLE_PASS:
        _store_quantized(x, cols, rows, row_mask, C, out_ptr, scale, zu, low, high, flat, bad, offset, CODES)
    else:
        for start in range(0, C, BLOCK_N):
            c = start + cols
            _store_quantized(_load_tile(x_ptr, base, c, stride_k, row_mask, C), c, rows, row_mask, C, out_ptr,
                             scale, zu, low, high, flat, bad, offset, CODES)
    if CODES:
        tl.store(scale_ptr + rows, scale, mask=row_mask)
        tl.store(zero_ptr + rows, tl.where(bad | flat, 0.0, zu - offset).to(tl.int8), mask=row_mask)


@triton.jit
def _grad_tile(x, g, c, rows, row_mask, C, grad_x_ptr, scale, low, high, flat, bad, lo_ratio,
               SYMMETRIC: tl.constexpr):
    """Store grad_x for a tile; -> per-row partial sums (sum g * dy/ds, sum of g where clamped)."""
    v, q = _levels(x, scale, low, high, flat, bad)
    inside = (v >= low[:, None]) & (v <= high[:, None])
    if SYMMETRIC:
        dyds = tl.where(inside, q - v, q)
        outside = tl.zeros_like(scale)
    else:
        dyds = tl.where(inside, q - v, q - lo_ratio[:, None])
        outside = tl.sum(tl.where(inside | flat[:, None], 0.0, g), axis=1)
    grad_x = tl.where(bad[:, None], float("nan"), tl.where(inside, g, 0.0))
    mask = row_mask[:, None] & (c < C)[None, :]
    tl.store(grad_x_ptr + rows[:, None] * C + c[None, :], grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)
    return tl.sum(g * tl.where(flat[:, None], 0.0, dyds), axis=1), outside


@triton.jit
def _fake_quant_bwd_kernel(x_ptr, grad_y_ptr, clip_max_ptr, clip_min_ptr, grad_x_ptr, grad_max_ptr, grad_min_ptr,
                           R, C, G, stride_n, stride_k, stride_gn, stride_gk,
                           BITS: tl.constexpr, SYMMETRIC: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE_PASS: tl.constexpr):
    """grad_x (straight-through inside the clamp range) and per-group clip-gradient partials."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < R
    base = (rows // G) * stride_n + (rows % G) * C * stride_k
    grad_base = (rows // G) * stride_gn + (rows % G) * C * stride_gk
    cols = tl.arange(0, BLOCK_N)
    if SINGLE_PASS:
        x = _load_tile(x_ptr, base, cols, stride_k, row_mask, C)
        top, bottom, bad = _tile_stats(x, SYMMETRIC)
    else:
        top, bottom, bad = _group_stats(x_ptr, base, row_mask, stride_k, C, SYMMETRIC, BLOCK_M, BLOCK_N)
    clip_max = tl.load(clip_max_ptr + rows, mask=row_mask, other=1.0)
    clip_min = tl.load(clip_min_ptr + rows, mask=row_mask, other=1.0)
    scale, zu, low, high, flat, bad, range_max, range_min, lo = _group_params(
        top, bottom, bad, clip_max, clip_min, BITS, SYMMETRIC)
    lo_ratio = tl.where(flat | bad, 0.0, tl.math.div_rn(lo, tl.where(flat | bad, 1.0, scale)))
    if SINGLE_PASS:
        s_sum, outside_sum = _grad_tile(x, _load_tile(grad_y_ptr, grad_base, cols, stride_gk, row_mask, C), cols,
                                        rows, row_mask, C, grad_x_ptr, scale, low, high, flat, bad, lo_ratio,
                                        SYMMETRIC)
    else:
        s_sum = tl.zeros_like(scale)
        outside_sum = tl.zeros_like(scale)
        for start in range(0, C, BLOCK_N):
            c = start + cols
            s_part, outside_part = _grad_tile(
                _load_tile(x_ptr, base, c, stride_k, row_mask, C),
                _load_tile(grad_y_ptr, grad_base, c, stride_gk, row_mask, C), c, rows, row_mask, C, grad_x_ptr,
                scale, low, high, flat, bad, lo_ratio, SYMMETRIC)
            s_sum += s_part
            outside_sum += outside_part
    if SYMMETRIC:
        qmax: tl.constexpr = (1 << (BITS - 1)) - 1
        grad_max = tl.math.div_rn(s_sum * range_max, tl.full(s_sum.shape, qmax, tl.float32))
        grad_min = tl.zeros_like(grad_max)
    else:
        levels: tl.constexpr = (1 << BITS) - 1
        s_per_level = tl.math.div_rn(s_sum, tl.full(s_sum.shape, levels, tl.float32))
        grad_max = s_per_level * range_max
        grad_min = (outside_sum - s_per_level) * range_min
    tl.store(grad_max_ptr + rows, tl.where(bad, float("nan"), grad_max), mask=row_mask)
    tl.store(grad_min_ptr + rows, tl.where(bad, float("nan"), grad_min), mask=row_mask)


@triton.jit
def _pack_int4_kernel(codes_ptr, packed_ptr, R, K, P, stride_r, stride_k,
                      BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr):
    """packed[r, i] = (codes[r, 2i] & 0xF) | (codes[r, 2i+1] & 0xF) << 4; a missing odd element reads as 0."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    row_mask = (rows < R)[:, None]
    base = codes_ptr + rows[:, None] * stride_r + 2 * cols[None, :] * stride_k
    low = tl.load(base, mask=row_mask & (2 * cols < K)[None, :], other=0).to(tl.int32)
    high = tl.load(base + stride_k, mask=row_mask & (2 * cols + 1 < K)[None, :], other=0).to(tl.int32)
    packed = (low & 0xF) | ((high & 0xF) << 4)
    tl.store(packed_ptr + rows[:, None] * P + cols[None, :], packed.to(tl.uint8), mask=row_mask & (cols < P)[None, :])


@triton.jit
def _unpack_int4_kernel(packed_ptr, codes_ptr, R, K, P, stride_r, stride_p,
                        BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr):
    """codes[r, 2i] = low nibble of packed[r, i], codes[r, 2i+1] = high nibble, sign-extended from 4 bits."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    row_mask = (rows < R)[:, None]
    packed = tl.load(packed_ptr + rows[:, None] * stride_r + cols[None, :] * stride_p,
                     mask=row_mask & (cols < P)[None, :], other=0).to(tl.int32)
    low = ((packed & 0xF) ^ 8) - 8
    high = ((packed >> 4) ^ 8) - 8
    out = codes_ptr + rows[:, None] * K + 2 * cols[None, :]
    tl.store(out, low.to(tl.int8), mask=row_mask & (2 * cols < K)[None, :])
    tl.store(out + 1, high.to(tl.int8), mask=row_mask & (2 * cols + 1 < K)[None, :])


def _packing_grid(rows: int, packed_cols: int) -> tuple[tuple[int, int], int, int]:
    block_p = min(triton.next_power_of_2(max(packed_cols, 1)), 1024)
    block_m = max(1, min(PACK_TILE // block_p, triton.next_power_of_2(max(rows, 1))))
    return (triton.cdiv(rows, block_m), triton.cdiv(packed_cols, block_p)), block_m, block_p


def _as_groups(t: torch.Tensor, group_size: int | None) -> tuple[torch.Tensor, int, int]:
    """-> (2-D strided matrix [N, K], groups per row G, group length C). group_size None: activations."""
    if group_size is None:
        m = t.reshape(-1, t.shape[-1])
        return m, 1, m.shape[1]
    groups = num_groups(t.shape[1], group_size)
    return t, groups, t.shape[1] // groups


def _per_group(clip: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A clip ratio broadcast to the per-group shape, flattened to fp32 [R]."""
    return clip.to(torch.float32).expand(shape).contiguous().reshape(-1)


def _fake_quant(x: torch.Tensor, clip_max: torch.Tensor, clip_min: torch.Tensor, bits: int, group_size: int | None,
                symmetric: bool, codes: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernel -> (out like x: dequantized x.dtype or int8 codes, scale fp32 [R], zero int8 [R]);
    scale and zero are written only when `codes`. group_size None: per-row activations."""
    m, groups, cols = _as_groups(x, group_size)
    rows = m.shape[0] * groups
    block_m, block_n, single_pass, num_warps = _launch_shape(rows, cols)
    clip_max_r = _per_group(clip_max, (m.shape[0], groups))
    clip_min_r = _per_group(clip_min, (m.shape[0], groups))
    out = torch.empty(x.shape, dtype=torch.int8 if codes else x.dtype, device=x.device)
    scale = torch.empty(rows, dtype=torch.float32, device=x.device)
    zero = torch.empty(rows, dtype=torch.int8, device=x.device)
    _fake_quant_fwd_kernel[(triton.cdiv(rows, block_m),)](
        m, clip_max_r, clip_min_r, out, scale, zero, rows, cols, groups, m.stride(0), m.stride(1),
        BITS=bits, SYMMETRIC=symmetric, CODES=codes, BLOCK_M=block_m, BLOCK_N=block_n, SINGLE_PASS=single_pass,
        num_warps=num_warps, enable_fp_fusion=False)
    return out, scale, zero


def _fake_quant_backward(grad_y: torch.Tensor, x: torch.Tensor, clip_max: torch.Tensor, clip_min: torch.Tensor,
                         bits: int, group_size: int | None, symmetric: bool):
    """Launch the backward kernel -> (grad_x like x, grad_clip_max [N, G] fp32, grad_clip_min [N, G] fp32)."""
    m, groups, cols = _as_groups(x, group_size)
    g, _, _ = _as_groups(grad_y, group_size)
    rows = m.shape[0] * groups
    block_m, block_n, single_pass, num_warps = _launch_shape(rows, cols)
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    grad_max = torch.empty(rows, dtype=torch.float32, device=x.device)
    grad_min = torch.empty(rows, dtype=torch.float32, device=x.device)
    _fake_quant_bwd_kernel[(triton.cdiv(rows, block_m),)](
        m, g, _per_group(clip_max, (m.shape[0], groups)), _per_group(clip_min, (m.shape[0], groups)),
        grad_x, grad_max, grad_min, rows, cols, groups, m.stride(0), m.stride(1), g.stride(0), g.stride(1),
        BITS=bits, SYMMETRIC=symmetric, BLOCK_M=block_m, BLOCK_N=block_n, SINGLE_PASS=single_pass,
        num_warps=num_warps, enable_fp_fusion=False)
    return grad_x, grad_max.reshape(m.shape[0], groups), grad_min.reshape(m.shape[0], groups)


def _row_scale_shape(x: torch.Tensor) -> tuple[int, ...]:
    return (*x.shape[:-1], 1)


@registry.register("fake_quant_act", "triton")
def fake_quant_act(x: torch.Tensor, clip: torch.Tensor, bits: int) -> torch.Tensor:
    clip = clip.expand(_row_scale_shape(x)).reshape(-1, 1)
    return _fake_quant(x, clip, clip, bits, None, True, codes=False)[0]


@registry.register("fake_quant_act_backward", "triton")
def fake_quant_act_backward(grad_y: torch.Tensor, x: torch.Tensor, clip: torch.Tensor, bits: int):
    clip = clip.expand(_row_scale_shape(x)).reshape(-1, 1)
    grad_x, grad_clip, _ = _fake_quant_backward(grad_y, x, clip, clip, bits, None, True)
    return grad_x, grad_clip.reshape(_row_scale_shape(x))


@registry.register("fake_quant_weight", "triton")
def fake_quant_weight(w: torch.Tensor, clip_max: torch.Tensor, clip_min: torch.Tensor, bits: int, group_size: int,
                      symmetric: bool) -> torch.Tensor:
    return _fake_quant(w, clip_max, clip_min, bits, group_size, symmetric, codes=False)[0]


@registry.register("fake_quant_weight_backward", "triton")
def fake_quant_weight_backward(grad_y: torch.Tensor, w: torch.Tensor, clip_max: torch.Tensor, clip_min: torch.Tensor,
                               bits: int, group_size: int, symmetric: bool):
    return _fake_quant_backward(grad_y, w, clip_max, clip_min, bits, group_size, symmetric)


@registry.register("quantize_act", "triton")
def quantize_act(x: torch.Tensor, bits: int):
    one = torch.ones((), dtype=torch.float32, device=x.device)
    codes, scale, _ = _fake_quant(x, one, one, bits, None, True, codes=True)
    return codes, scale.reshape(_row_scale_shape(x))


@registry.register("quantize_weight", "triton")
def quantize_weight(w: torch.Tensor, bits: int, group_size: int, symmetric: bool):
    groups = num_groups(w.shape[1], group_size)
    one = torch.ones((), dtype=torch.float32, device=w.device)
    codes, scale, zero = _fake_quant(w, one, one, bits, group_size, symmetric, codes=True)
    return codes, scale.reshape(w.shape[0], groups), zero.reshape(w.shape[0], groups)


@registry.register("pack_int4", "triton")
def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    m = codes.reshape(-1, codes.shape[-1])
    rows, k = m.shape
    p = (k + 1) // 2
    packed = torch.empty((*codes.shape[:-1], p), dtype=torch.uint8, device=codes.device)
    grid, block_m, block_p = _packing_grid(rows, p)
    _pack_int4_kernel[grid](m, packed, rows, k, p, m.stride(0), m.stride(1), BLOCK_M=block_m, BLOCK_P=block_p,
                            num_warps=4)
    return packed


@registry.register("unpack_int4", "triton")
def unpack_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    m = packed.reshape(-1, packed.shape[-1])
    rows, p = m.shape
    codes = torch.empty((*packed.shape[:-1], k), dtype=torch.int8, device=packed.device)
    grid, block_m, block_p = _packing_grid(rows, p)
    _unpack_int4_kernel[grid](m, codes, rows, k, p, m.stride(0), m.stride(1), BLOCK_M=block_m, BLOCK_P=block_p,
                              num_warps=4)
    return codes

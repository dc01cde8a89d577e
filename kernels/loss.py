"""Triton kernels for the calibration-loss ops; `loss_reference.py` is their specification.

weighted_mse: each program reduces a tile of rows to per-row weighted terms w_i * ||a_i - b_i||^2 (fp32), written
to a buffer; "sum" adds that buffer with one torch reduction. No float atomics, so results are bitwise
reproducible. The per-row weight (e.g. FAIR-Calib's prior [L] against hidden states [B, L, D]) is indexed by row
inside the kernel, never materialised at the rows' shape. The backward writes dL/da in one fused pass.

clip_search: each program quantizes its groups for all C candidate ratios at once: pass 1 finds each group's
absmax, pass 2 evaluates a [G, C, chunk] tile per chunk (G groups side by side when they are short, one long row
walked in chunks otherwise), so x is read from HBM once (pass 2 re-reads the tile from L1/L2). Per element and
candidate this is six fp32 instructions (multiply, clamp, two-add rounding, two FMAs): at C = 16 the kernel is bound
by arithmetic, not memory (estimate for 16384 x 4096 on an H100: ~0.2 ms, about two memory-bound fake-quant passes).

Numerics against the reference: scales are bit-exact (same fp32 operations, IEEE division). Candidates multiply by
the group's reciprocal scale instead of dividing by the scale, one instruction instead of an IEEE division per
element and candidate. That can move a code by one only where x / scale lies within ~2 ulp of a half-integer,
where both codes have the same error up to fp32 rounding; so errors match the reference to fp32 tolerance (sums
also differ in order). Outside this contract: groups of subnormal data whose scale is below 2^-128, where 1 / scale
overflows.

FMA contraction: on (explicitly, Triton 3.10 turns it off by default) for the sums of squares and clip_search's
`q * scale - x`, where it saves instructions and only changes rounding within the stated tolerance; off for the
backward, which must round like torch's separate multiplies.

Tuning knobs (module constants, read at each launch): `TILE_ELEMENTS` (fp32 elements of a program's register tile
per chunk: weighted_mse's [rows, cols] tile, clip_search's pass-2 [G, C, chunk] tile), `NUM_WARPS` (all three
kernels), `CLIP_SEARCH_PROGRAMS` (grid cap; beyond it a program walks several tiles of groups).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import registry
from .triton_math import cast_rne, round_half_even

TILE_ELEMENTS = 4096
NUM_WARPS = 8
CLIP_SEARCH_PROGRAMS = 8192


def _per_row_layout(t: torch.Tensor,
                    rows_shape: torch.Size) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int, int]]:
    """Address the element of `t` (broadcastable to `rows_shape`) that belongs to flat row r without expanding it.

    Returns (storage tensor, (n1, n2), (s0, s1, s2)): row r sits at i0*s0 + i1*s1 + i2*s2 where
    (i0, i1, i2) = (r // (n1*n2), r // n2 % n1, r % n2). Broadcast dims have stride 0 and adjacent dims that step
    uniformly are merged, so every broadcast of a prior [L] or [B, L] needs at most three; a rarer layout that
    needs more is copied to a contiguous tensor (one element per row)."""
    view = t.expand(rows_shape)
    dims: list[tuple[int, int]] = []
    for size, stride in zip(view.shape, view.stride()):
        if size == 1:
            continue
        if dims and dims[-1][1] == stride * size:
            dims[-1] = (dims[-1][0] * size, stride)
        else:
            dims.append((size, stride))
    if len(dims) > 3:
        view = view.contiguous()
        dims = [(view.numel(), 1)]
    dims = [(1, 0)] * (3 - len(dims)) + dims
    return view, (dims[1][0], dims[2][0]), (dims[0][1], dims[1][1], dims[2][1])


@triton.jit
def _load_per_row(ptr, rows, n1, n2, s0, s1, s2, mask):
    """fp32 values of a per-row operand laid out by `_per_row_layout`, for int64 row indices `rows`."""
    rest = rows // n2
    offsets = (rest // n1) * s0 + (rest % n1) * s1 + (rows % n2) * s2
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)


def _rows_2d(t: torch.Tensor) -> torch.Tensor:
    """[*rows, D] -> a [R, D] view (a copy only when the leading dims cannot be flattened as a view)."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def _row_tile(n_rows: int, n_cols: int) -> tuple[int, int]:
    """(BLOCK_ROWS, BLOCK_COLS): rows a program reduces, columns per chunk; tile of at most TILE_ELEMENTS."""
    block_cols = min(triton.next_power_of_2(max(n_cols, 1)), TILE_ELEMENTS)
    block_rows = min(triton.next_power_of_2(max(n_rows, 1)), max(1, TILE_ELEMENTS // block_cols))
    return block_rows, block_cols


@triton.jit
def _weighted_mse_rows_kernel(a_ptr, b_ptr, w_ptr, out_ptr, n_rows, n_cols,
                              stride_a_row, stride_a_col, stride_b_row, stride_b_col,
                              w_n1, w_n2, w_s0, w_s1, w_s2,
                              BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """out[r] = w[r] * sum_j (a[r, j] - b[r, j])^2 in fp32, for BLOCK_ROWS rows per program."""
    rows = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
    row_ok = rows < n_rows
    acc = tl.zeros([BLOCK_ROWS, BLOCK_COLS], tl.float32)
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        mask = row_ok[:, None] & (cols < n_cols)[None, :]
        a = tl.load(a_ptr + rows[:, None] * stride_a_row + cols[None, :] * stride_a_col, mask=mask, other=0.0)
        b = tl.load(b_ptr + rows[:, None] * stride_b_row + cols[None, :] * stride_b_col, mask=mask, other=0.0)
        diff = a.to(tl.float32) - b.to(tl.float32)
        acc += diff * diff
    w = _load_per_row(w_ptr, rows, w_n1, w_n2, w_s0, w_s1, w_s2, row_ok)
    tl.store(out_ptr + rows, w * tl.sum(acc, axis=1), mask=row_ok)


@registry.register("weighted_mse", "triton")
def weighted_mse(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor, reduction: str) -> torch.Tensor:
    """a, b: [*rows, D] float; weights: broadcastable to [*rows] -> fp32 [] ("sum") or [*rows] ("none")."""
    rows_shape = a.shape[:-1]
    a2, b2 = _rows_2d(a), _rows_2d(b)
    n_rows, n_cols = a2.shape
    per_row = torch.empty(n_rows, dtype=torch.float32, device=a.device)
    if n_rows:
        w, (n1, n2), (s0, s1, s2) = _per_row_layout(weights, rows_shape)
        block_rows, block_cols = _row_tile(n_rows, n_cols)
        _weighted_mse_rows_kernel[(triton.cdiv(n_rows, block_rows),)](
            a2, b2, w, per_row, n_rows, n_cols, a2.stride(0), a2.stride(1), b2.stride(0), b2.stride(1),
            n1, n2, s0, s1, s2, BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, num_warps=NUM_WARPS,
            enable_fp_fusion=True)
    return per_row.sum() if reduction == "sum" else per_row.reshape(rows_shape)


@triton.jit
def _weighted_mse_grad_kernel(g_ptr, a_ptr, b_ptr, w_ptr, out_ptr, n_rows, n_cols,
                              stride_a_row, stride_a_col, stride_b_row, stride_b_col,
                              g_n1, g_n2, g_s0, g_s1, g_s2, w_n1, w_n2, w_s0, w_s1, w_s2,
                              BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """out[r, j] = (2 * w[r]) * g[r] * (a[r, j] - b[r, j]) in fp32, stored in out's dtype; out is contiguous."""
    rows = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
    row_ok = rows < n_rows
    w = _load_per_row(w_ptr, rows, w_n1, w_n2, w_s0, w_s1, w_s2, row_ok)
    g = _load_per_row(g_ptr, rows, g_n1, g_n2, g_s0, g_s1, g_s2, row_ok)
    coef = ((2.0 * w) * g)[:, None]
    for start in range(0, n_cols, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        mask = row_ok[:, None] & (cols < n_cols)[None, :]
        a = tl.load(a_ptr + rows[:, None] * stride_a_row + cols[None, :] * stride_a_col, mask=mask, other=0.0)
        b = tl.load(b_ptr + rows[:, None] * stride_b_row + cols[None, :] * stride_b_col, mask=mask, other=0.0)
        grad = coef * (a.to(tl.float32) - b.to(tl.float32))
        tl.store(out_ptr + rows[:, None] * n_cols + cols[None, :], cast_rne(grad, out_ptr.dtype.element_ty), mask=mask)


@registry.register("weighted_mse_backward", "triton")
def weighted_mse_backward(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """dL/da = 2 * w * grad * (a - b): grad fp32 [] or [*rows], a, b [*rows, D] -> [*rows, D] a.dtype."""
    rows_shape = a.shape[:-1]
    a2, b2 = _rows_2d(a), _rows_2d(b)
    n_rows, n_cols = a2.shape
    out = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    if out.numel():
        g, (g_n1, g_n2), (g_s0, g_s1, g_s2) = _per_row_layout(grad, rows_shape)
        w, (w_n1, w_n2), (w_s0, w_s1, w_s2) = _per_row_layout(weights, rows_shape)
        block_rows, block_cols = _row_tile(n_rows, n_cols)
        _weighted_mse_grad_kernel[(triton.cdiv(n_rows, block_rows),)](
            g, a2, b2, w, out, n_rows, n_cols, a2.stride(0), a2.stride(1), b2.stride(0), b2.stride(1),
            g_n1, g_n2, g_s0, g_s1, g_s2, w_n1, w_n2, w_s0, w_s1, w_s2,
            BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, num_warps=NUM_WARPS, enable_fp_fusion=False)
    return out


@triton.jit
def _clip_search_kernel(x_ptr, ratios_ptr, w_ptr, out_ptr, n_segments, n_groups, group_len, stride_row,
                        n_candidates, blocks_per_program, qmax, w_n1, w_n2, w_s0, w_s1, w_s2,
                        BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_SCAN: tl.constexpr,
                        BLOCK_LEN: tl.constexpr, SUM: tl.constexpr):
    """Weighted quantization error of each segment (row r, group j) for every candidate ratio, BLOCK_G segments
    at a time (several short groups share a tile; a long row is one segment walked in chunks).

    SUM: out[program, c] = this program's sum over its segments; else out[segment, c] per segment."""
    pid = tl.program_id(0)
    cand = tl.arange(0, BLOCK_C)
    ratios = tl.load(ratios_ptr + cand, mask=cand < n_candidates, other=1.0).to(tl.float32)
    partial = tl.zeros([BLOCK_C], tl.float32)
    for block in range(0, blocks_per_program):
        segs = (pid * blocks_per_program + block).to(tl.int64) * BLOCK_G + tl.arange(0, BLOCK_G)
        seg_ok = segs < n_segments
        rows = segs // n_groups
        bases = rows * stride_row + (segs % n_groups) * group_len
        # Pass 1: absmax over the finite elements, and whether any element is NaN/Inf. Its chunks are wide
        # (BLOCK_SCAN): this pass streams from HBM with little arithmetic, so it needs many bytes in flight.
        vmax = tl.zeros([BLOCK_G, BLOCK_SCAN], tl.float32)
        nonfinite = tl.zeros([BLOCK_G, BLOCK_SCAN], tl.int32)
        for start in range(0, group_len, BLOCK_SCAN):
            offs = start + tl.arange(0, BLOCK_SCAN)
            mask = seg_ok[:, None] & (offs < group_len)[None, :]
            v = tl.abs(tl.load(x_ptr + bases[:, None] + offs[None, :], mask=mask, other=0.0).to(tl.float32))
            finite = v < float("inf")
            vmax = tl.maximum(vmax, tl.where(finite, v, 0.0))
            nonfinite += tl.where(finite, 0, 1)
        absmax = tl.max(vmax, axis=1)
        scales = tl.math.div_rn(ratios[None, :] * absmax[:, None], qmax)  # [BLOCK_G, BLOCK_C]
        # Scale 0 (all-zero group) quantizes every element to 0, as in the reference.
        nonzero = scales > 0.0
        inv_scales = tl.where(nonzero, tl.math.div_rn(tl.full([BLOCK_G, BLOCK_C], 1.0, tl.float32),
                                                      tl.where(nonzero, scales, 1.0)), 0.0)
        # Pass 2: every candidate on a [G, C, chunk] tile. Working on |x| is exact (rounding is symmetric); a
        # negative x may reach code -(qmax + 1), so its clamp bound is one larger.
        acc = tl.zeros([BLOCK_G, BLOCK_C, BLOCK_LEN], tl.float32)
        for start in range(0, group_len, BLOCK_LEN):
            offs = start + tl.arange(0, BLOCK_LEN)
            mask = seg_ok[:, None] & (offs < group_len)[None, :]
            x = tl.load(x_ptr + bases[:, None] + offs[None, :], mask=mask, other=0.0).to(tl.float32)
            v = tl.abs(x)[:, None, :]
            bound = tl.where(x < 0.0, qmax + 1.0, qmax)[:, None, :]
            q = round_half_even(tl.minimum(v * inv_scales[:, :, None], bound))
            diff = q * scales[:, :, None] - v
            acc += diff * diff
        err = tl.where((tl.sum(nonfinite, axis=1) > 0)[:, None], float("nan"), tl.sum(acc, axis=2))
        err = err * _load_per_row(w_ptr, rows, w_n1, w_n2, w_s0, w_s1, w_s2, seg_ok)[:, None]
        if SUM:
            partial += tl.sum(tl.where(seg_ok[:, None], err, 0.0), axis=0)
        else:
            tl.store(out_ptr + segs[:, None] * n_candidates + cand[None, :], err,
                     mask=seg_ok[:, None] & (cand < n_candidates)[None, :])
    if SUM:
        tl.store(out_ptr + pid * n_candidates + cand, partial, mask=cand < n_candidates)


def _clip_search_tiles(n_segments: int, group_len: int, n_candidates: int) -> tuple[int, int, int, int]:
    """(BLOCK_G, BLOCK_C, BLOCK_SCAN, BLOCK_LEN): segments per tile, candidates (padded to a power of 2), pass-1
    and pass-2 chunk lengths; pass 2's [G, C, chunk] tile holds at most TILE_ELEMENTS."""
    block_c = triton.next_power_of_2(n_candidates)
    group_pow2 = triton.next_power_of_2(max(group_len, 1))
    block_len = min(group_pow2, max(1, TILE_ELEMENTS // block_c))
    block_g = min(max(1, TILE_ELEMENTS // (block_c * block_len)), triton.next_power_of_2(n_segments))
    block_scan = min(group_pow2, max(1, TILE_ELEMENTS // block_g))
    return block_g, block_c, block_scan, block_len


@registry.register("clip_search", "triton")
def clip_search(x: torch.Tensor, ratios: torch.Tensor, bits: int, weights: torch.Tensor, group_size: int,
                reduce: str) -> torch.Tensor:
    """x: [*rows, K] float, ratios: [C] float in (0, 1], weights: broadcastable to [*rows], group_size: -1 or a
    divisor of K -> fp32 [C] ("sum") or [*rows, G, C] ("none"), G = K / group_size (1 for -1)."""
    rows_shape, k = x.shape[:-1], x.shape[-1]
    group_len = k if group_size == -1 else group_size
    n_groups = 1 if group_size == -1 else k // group_size
    n_candidates = ratios.numel()
    x2 = _rows_2d(x)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    n_segments = x2.shape[0] * n_groups
    if n_segments == 0 or n_candidates == 0:
        shape = (n_candidates,) if reduce == "sum" else (*rows_shape, n_groups, n_candidates)
        return torch.zeros(shape, dtype=torch.float32, device=x.device)
    block_g, block_c, block_scan, block_len = _clip_search_tiles(n_segments, group_len, n_candidates)
    n_blocks = triton.cdiv(n_segments, block_g)
    blocks_per_program = triton.cdiv(n_blocks, CLIP_SEARCH_PROGRAMS)
    n_programs = triton.cdiv(n_blocks, blocks_per_program)
    out = torch.empty(n_programs if reduce == "sum" else n_segments, n_candidates, dtype=torch.float32,
                      device=x.device)
    w, (n1, n2), (s0, s1, s2) = _per_row_layout(weights, rows_shape)
    _clip_search_kernel[(n_programs,)](
        x2, ratios.contiguous(), w, out, n_segments, n_groups, group_len, x2.stride(0), n_candidates,
        blocks_per_program, float((1 << (bits - 1)) - 1), n1, n2, s0, s1, s2,
        BLOCK_G=block_g, BLOCK_C=block_c, BLOCK_SCAN=block_scan, BLOCK_LEN=block_len, SUM=reduce == "sum",
        num_warps=NUM_WARPS, enable_fp_fusion=True)
    return out.sum(0) if reduce == "sum" else out.reshape(*rows_shape, n_groups, n_candidates)

"""The activation path's Kronecker transform + per-token quantization on Hopper, its MMAs overlapped across tokens
(Gluon: cp.async loads, asynchronous wgmma).

Per token, X (its [n1, n2] view) -> Y = leftᵀ · X · right -> absmax -> int8 codes (round half to even, clamped to the
BITS-bit range) and an fp32 scale, as `gemm._quantize_act_split_kernel` (Triton) does on the transposed view. That
kernel waits for every MMA group as soon as it is issued (Triton lowers each `tl.dot` outside a pipelined
accumulator loop to a wgmma followed by a wait): under ncu on H100 at K = 12288 (2026-12-07) its warps spent 27% of
their samples at those six waits per token, and 32% of all stalls were CTA barriers. Here, per token i:
1. wait for the first product of token i, P = rightᵀ · Xᵀ ([n2, n1] in row blocks a and b of n1, issued while token
   i-1 was quantized);
2. the second product Yᵀ = P · left, its four MMAs issued back to back, then one wait;
3. once token i+1's tile has landed (cp.async, pipelined `STAGES` deep), issue its first product, asynchronously;
4. quantize token i while the tensor cores run step 3: one absmax reduction across the warps for both blocks, the
   codes through shared memory (one barrier) into 16-byte stores, the scale.
The first product is rounded to the factors' dtype before the second MMA, as the Triton kernels round theirs, so the
codes agree with theirs up to the MMAs' summation order (within one step of the reference).

Two kernels, by which factor splits (`layout`): `_kron_quant_kernel` splits n1 into row blocks and forms the product
transposed, as above (K = 12288's 96x128: 64 + 32 rows, n2 = 128 as the MMAs' 128 rows); `_kron_quant_cols_kernel`
splits n2 into column blocks, W = leftᵀ · X then Y = W · right (Dream's 128x148 at K = 18944: 128 + 32 columns, the
last 12 zero), the same loop. The latter holds two 128x160 fp32 products at once (251 registers at 8 warps), and
its 3 stages fill shared memory.

Measured on H100 (BENCHMARKS.md, 2026-12-07 08:47 UTC, bf16 factors, CUDA-graph medians, `explore_w4a4_gpu.py
--parts act --act-k 12288`): 233 us over 16384 tokens, 0.857x of memcpy (0.873x of a copy of the same bytes), and
69.7 us over 4096 (0.716x, 0.79x), against the Triton split kernel's 268 / 75.6 us in the same run. Pipelined 3 or 5
deep: 260 / 238 us. Its first form wrote the codes to an unswizzled shared tile: 303 us, with 19.6 M shared-memory
bank conflicts per call (0.74 M now). At K = 18944 (09:12 UTC): 554 us over 16384 tokens (0.555x of memcpy) and
153 us over 4096, against the Triton split kernel's 580 / 160 us: the products' MMAs still add to the memory time
there (BENCHMARKS.md's ablation). Tried and not kept (21:52 UTC): the next tile's loads and the previous token's
code stores under the second product (239 / 547 us at K = 12288 / 18944), and the previous token's codes computed
there from its Y carried one step (259 / 555 us), against this loop's 233 / 552 us.

Runs where `supported` holds: an sm_90 GPU, both factors in the input's 16-bit dtype, a `layout`, no channel scale
or gate (compiled blocks apply those in the traced graph), a contiguous input. `gemm.act_path` says where it is
taken. Gluon kernels compile for NVIDIA GPUs only (no interpreter): CI compiles both for sm_90 without a GPU
(`tests/kernels/test_act_hopper.py`); the GPU tests check it against the reference.
"""
from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

from .triton_math import clamp_round_to_int, nan_max

# Triton 3.9 renamed these (3.6, on the GPU machines, has only the old names).
_cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
_async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
# The shared Triton helpers, compiled as Gluon functions (their bodies use only builtins Gluon shares).
_clamp_round_to_int = gluon.jit(clamp_round_to_int.fn)
_nan_max = gluon.jit(nan_max.fn)

# Columns per shared-memory tile and K step of the first MMA: 128 bytes of 16-bit values, one swizzle span
CHUNK = gl.constexpr(64)


def row_blocks(n1: int) -> tuple[int, int] | None:
    """(BA, BB): n1 as a power of two BA >= 16 plus a power of two BB >= 16 (BB = 0: BA alone), None otherwise."""
    ba = 1 << (n1.bit_length() - 1)
    bb = n1 - ba
    if ba < 16 or (bb and (bb < 16 or bb & (bb - 1))):
        return None
    return ba, bb


def column_blocks(n2: int) -> tuple[int, int] | None:
    """(BA, BB): n2 as a power of two BA of 64 or 128 plus a remainder of whole 8-byte pieces (4 elements) in a
    block of BB = next_pow2(remainder) >= 16 columns, narrower than BA (Dream's 148 = 128 + 20 in 32); None
    otherwise."""
    ba = 1 << (n2.bit_length() - 1)
    rem = n2 - ba
    if ba not in (64, 128) or rem == 0 or rem % 4:
        return None
    bb = max(16, 1 << (rem - 1).bit_length())
    return (ba, bb) if bb < ba else None


def layout(n1: int, n2: int) -> tuple[str, int, int] | None:
    """Which kernel runs an (n1, n2) transform: ("rows", BA, BB), `_kron_quant_kernel` (n2 of 64 or 128, n1 split
    by `row_blocks`: K = 12288); ("cols", BA, BB), `_kron_quant_cols_kernel` (n1 of 64 or 128, n2 split by
    `column_blocks`: K = 18944); None: neither."""
    rows = row_blocks(n1) if n2 in (64, 128) else None
    if rows is not None:
        return ("rows", *rows)
    cols = column_blocks(n2) if n1 in (64, 128) else None
    return None if cols is None else ("cols", *cols)


def supported(x: torch.Tensor, channel_scale, gate, left, right) -> bool:
    """Whether `quantize` can run this call (module doc)."""
    if x.device.type != "cuda" or torch.cuda.get_device_capability(x.device) != (9, 0):
        return False
    if channel_scale is not None or gate is not None or left is None or right is None:
        return False
    return (x.dtype in (torch.bfloat16, torch.float16) and left.dtype == right.dtype == x.dtype
            and layout(left.shape[0], right.shape[0]) is not None and x.is_contiguous())


@gluon.jit
def _load_token(x_ptr, bufs_a, bufs_b, stage, tok, M, N1: gl.constexpr, N2: gl.constexpr, BA: gl.constexpr,
                BB: gl.constexpr, num_warps: gl.constexpr):
    """cp.async of token tok's rows (block a: rows [0, BA), block b: [BA, BA + BB)) into stage `stage`, one
    [rows, CHUNK] tile per column chunk, 16 bytes per copy; zeros for tok >= M. One commit group."""
    CHUNKS: gl.constexpr = N2 // CHUNK
    load: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    cols = gl.arange(0, CHUNK, layout=gl.SliceLayout(0, load))
    rows_a = gl.arange(0, BA, layout=gl.SliceLayout(1, load))
    rows_b = BA + gl.arange(0, BB if BB > 0 else 16, layout=gl.SliceLayout(1, load))
    base = x_ptr + tok * (N1 * N2)
    # tok < M as a tile mask (the row and column tests always hold: they give it the tile's shape)
    valid_a = (rows_a[:, None] < N1) & (cols[None, :] < CHUNK) & (tok < M)
    valid_b = (rows_b[:, None] < N1) & (cols[None, :] < CHUNK) & (tok < M)
    for c in gl.static_range(CHUNKS):
        _async_load(bufs_a.index(stage * CHUNKS + c), base + rows_a[:, None] * N2 + (c * CHUNK + cols)[None, :],
                    mask=valid_a)
        if BB > 0:
            _async_load(bufs_b.index(stage * CHUNKS + c), base + rows_b[:, None] * N2 + (c * CHUNK + cols)[None, :],
                        mask=valid_b)
    async_copy.commit_group()


@gluon.jit
def _load_transposed(ptr, row0, col0, N: gl.constexpr, ROWS: gl.constexpr, COLS: gl.constexpr,
                     num_warps: gl.constexpr):
    """Rows row0 ... and columns col0 ... of the transpose of the [N, N] matrix at ptr, zero past N, into
    registers (each thread reads 8 consecutive elements of the matrix's rows, i.e. down the transpose's columns)."""
    load: gl.constexpr = gl.BlockedLayout([8, 1], [8, 4], [1, num_warps], [0, 1])
    r = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, load))
    c = col0 + gl.arange(0, COLS, layout=gl.SliceLayout(0, load))
    return gl.load(ptr + c[None, :] * N + r[:, None], mask=(r < N)[:, None] & (c < N)[None, :], other=0.0)


@gluon.jit
def _load_factor(ptr, row0, col0, N: gl.constexpr, ROWS: gl.constexpr, COLS: gl.constexpr, TRANSPOSED: gl.constexpr,
                 num_warps: gl.constexpr):
    """Rows row0 ... and columns col0 ... of the [N, N] matrix at ptr (of its transpose if TRANSPOSED,
    `_load_transposed`), zero past N, into shared memory laid out as an MMA operand."""
    if TRANSPOSED:
        values = _load_transposed(ptr, row0, col0, N, ROWS, COLS, num_warps)
    else:
        load: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
        r = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, load))
        c = col0 + gl.arange(0, COLS, layout=gl.SliceLayout(0, load))
        values = gl.load(ptr + r[:, None] * N + c[None, :], mask=(r < N)[:, None] & (c < N)[None, :], other=0.0)
    layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([ROWS, COLS], ptr.dtype.element_ty)
    return gl.allocate_shared_memory(ptr.dtype.element_ty, [ROWS, COLS], layout, values)


@gluon.jit
def _load_factor_t_chunks(ptr, N: gl.constexpr, num_warps: gl.constexpr):
    """The transpose of the [N, N] matrix at ptr in shared memory as N // CHUNK column blocks [N, CHUNK], the first
    MMA's A operand one K step each."""
    dtype: gl.constexpr = ptr.dtype.element_ty
    chunks = gl.allocate_shared_memory(dtype, [N // CHUNK, N, CHUNK],
                                       gl.NVMMASharedLayout.get_default_for([N, CHUNK], dtype))
    for c in gl.static_range(N // CHUNK):
        chunks.index(c).store(_load_transposed(ptr, 0, c * CHUNK, N, N, CHUNK, num_warps))
    return chunks


@gluon.jit
def _first_product(rt_smem, bufs_a, bufs_b, stage, N2: gl.constexpr, BA: gl.constexpr, BB: gl.constexpr,
                   mma_a: gl.constexpr, mma_b: gl.constexpr):
    """P = rightᵀ · Xᵀ of the token in `stage`, as row blocks a [N2, BA] and b [N2, BB], issued asynchronously."""
    CHUNKS: gl.constexpr = N2 // CHUNK
    pa = gl.zeros([N2, BA], gl.float32, layout=mma_a)
    pb = gl.zeros([N2, BB if BB > 0 else 16], gl.float32, layout=mma_b)
    for c in gl.static_range(CHUNKS):
        pa = warpgroup_mma(rt_smem.index(c), bufs_a.index(stage * CHUNKS + c).permute((1, 0)), pa, is_async=True)
    if BB > 0:
        for c in gl.static_range(CHUNKS):
            pb = warpgroup_mma(rt_smem.index(c), bufs_b.index(stage * CHUNKS + c).permute((1, 0)), pb,
                               is_async=True)
    return pa, pb


@gluon.jit
def _codes_and_scale(ya, yb, clip, BB: gl.constexpr, BITS: gl.constexpr):
    """A token's codes (int8) in its blocks ya and yb (yb a placeholder where BB = 0) and its scale: NaN for a token
    holding NaN or ±Inf (a NaN-propagating absmax is NaN or +Inf exactly then), codes 0 for it and for an all-zero
    token."""
    row_max = gl.reduce(gl.abs(ya), 1, _nan_max)
    if BB > 0:  # both blocks' row maxima, then one reduction across the warps
        row_max = _nan_max(row_max, gl.convert_layout(gl.reduce(gl.abs(yb), 1, _nan_max), row_max.type.layout))
    absmax = gl.reduce(row_max, 0, _nan_max)
    bad = (absmax != absmax) | (absmax == float("inf"))
    scale = gl.div_rn(clip * absmax, absmax * 0.0 + ((1 << (BITS - 1)) - 1))
    # The transform is approximate already (MMA summation order); an exact division per element costs 3x
    inv = 1.0 / gl.where(scale > 0, scale, 1.0)
    zero = bad | (scale == 0)
    lo: gl.constexpr = -(1 << (BITS - 1)) * 1.0
    hi: gl.constexpr = ((1 << (BITS - 1)) - 1) * 1.0
    qa = gl.where(zero, 0, _clamp_round_to_int(ya * inv, lo, hi)).to(gl.int8)
    qb = gl.where(zero, 0, _clamp_round_to_int(yb * inv, lo, hi)).to(gl.int8)
    return qa, qb, gl.where(bad, float("nan"), scale)


@gluon.jit
def _kron_quant_kernel(x_ptr, right_ptr, left_ptr, clip_ptr, codes_ptr, scales_ptr, M, N1: gl.constexpr,
                       N2: gl.constexpr, BA: gl.constexpr, BB: gl.constexpr, HAS_CLIP: gl.constexpr,
                       BITS: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    """Tokens pid, pid + P, ... of M (module doc); x [M, N1 · N2], right [N2, N2], left [N1, N1]. Yᵀ = P · left in
    row blocks a and b of n1, each summing over both of P's blocks (two MMAs)."""
    CHUNKS: gl.constexpr = N2 // CHUNK
    BBP: gl.constexpr = BB if BB > 0 else 16  # placeholder shapes where n1 is one block
    dtype: gl.constexpr = x_ptr.dtype.element_ty
    mma_a: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, BA, 16])
    mma_b: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, BBP, 16])
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_a, k_width=2)
    op_b: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_b, k_width=2)
    out: gl.constexpr = gl.BlockedLayout([1, 16], [32 * 16 // N2, N2 // 16], [num_warps, 1], [1, 0])

    tile_a: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BA, CHUNK], dtype)
    tile_b: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BBP, CHUNK], dtype)
    bufs_a = gl.allocate_shared_memory(dtype, [STAGES * CHUNKS, BA, CHUNK], tile_a)
    bufs_b = gl.allocate_shared_memory(dtype, [STAGES * CHUNKS if BB > 0 else 1, BBP, CHUNK], tile_b)
    # The codes go in as single bytes from the MMA layout (a warp: 4 rows x 8 consecutive columns per store) and out
    # as 16-byte row pieces: 16-byte units XOR-swizzled by row keep both free of bank conflicts (unswizzled rows
    # of 128 bytes all start in bank 0: 4-way conflicts on every store, H100 ncu 2026-12-07)
    rows_swizzled: gl.constexpr = gl.SwizzledSharedLayout(16, 1, 8, order=[1, 0])
    codes_a = gl.allocate_shared_memory(gl.int8, [BA, N2], rows_swizzled)
    codes_b = gl.allocate_shared_memory(gl.int8, [BBP, N2], rows_swizzled)

    pid = gl.program_id(0)
    programs = gl.num_programs(0)
    mine = gl.cdiv(M - pid, programs)
    for s in gl.static_range(STAGES - 1):  # the first tokens' tiles travel while the factors load
        _load_token(x_ptr, bufs_a, bufs_b, s, pid + s * programs, M, N1, N2, BA, BB, num_warps)

    # The factors, once per program: rightᵀ in CHUNKS column blocks (the first MMA's K steps); leftᵀ in its
    # [output rows, K rows] blocks (aa, ab, ba, bb), each read transposed as a K-major B operand.
    rt_smem = _load_factor_t_chunks(right_ptr, N2, num_warps)
    lt_aa = _load_factor(left_ptr, 0, 0, N1, BA, BA, True, num_warps)
    if BB > 0:
        lt_ab = _load_factor(left_ptr, 0, BA, N1, BA, BB, True, num_warps)
        lt_ba = _load_factor(left_ptr, BA, 0, N1, BB, BA, True, num_warps)
        lt_bb = _load_factor(left_ptr, BA, BA, N1, BB, BB, True, num_warps)
    clip = gl.load(clip_ptr).to(gl.float32) if HAS_CLIP else 1.0
    rows_a = gl.arange(0, BA, layout=gl.SliceLayout(1, out))
    rows_b = BA + gl.arange(0, BBP, layout=gl.SliceLayout(1, out))
    cols = gl.arange(0, N2, layout=gl.SliceLayout(0, out))

    async_copy.wait_group(STAGES - 2)  # token 0's tile (this thread's copies)
    fence_async_shared()  # the factors' stores and the copies, before the MMAs read them
    _cta_barrier()
    pa, pb = _first_product(rt_smem, bufs_a, bufs_b, 0, N2, BA, BB, mma_a, mma_b)
    for i in range(mine):
        tok = pid + i * programs
        pa, pb = warpgroup_mma_wait(0, deps=(pa, pb))
        ya = warpgroup_mma(gl.convert_layout(pa.to(dtype), op_a), lt_aa.permute((1, 0)),
                           gl.zeros([N2, BA], gl.float32, layout=mma_a), is_async=True)
        yb = gl.zeros([N2, BBP], gl.float32, layout=mma_b)
        if BB > 0:
            pb16 = pb.to(dtype)
            ya = warpgroup_mma(gl.convert_layout(pb16, op_a), lt_ab.permute((1, 0)), ya, is_async=True)
            yb = warpgroup_mma(gl.convert_layout(pa.to(dtype), op_b), lt_ba.permute((1, 0)), yb, is_async=True)
            yb = warpgroup_mma(gl.convert_layout(pb16, op_b), lt_bb.permute((1, 0)), yb, is_async=True)
        ya, yb = warpgroup_mma_wait(0, deps=(ya, yb))
        # Token i+1's tile (the tiles after it may still travel), then its first product. After the barrier
        # every warp is done with token i's stage: it takes token i + STAGES - 1's.
        async_copy.wait_group(STAGES - 3)
        _cta_barrier()
        pa, pb = _first_product(rt_smem, bufs_a, bufs_b, (i + 1) % STAGES, N2, BA, BB, mma_a, mma_b)
        nxt = i + STAGES - 1
        _load_token(x_ptr, bufs_a, bufs_b, nxt % STAGES, pid + nxt * programs, M, N1, N2, BA, BB, num_warps)

        # Quantize token i while those MMAs run
        qa, qb, scale = _codes_and_scale(ya, yb, clip, BB, BITS)
        codes_a.store(gl.permute(qa, (1, 0)))
        if BB > 0:
            codes_b.store(gl.permute(qb, (1, 0)))
        _cta_barrier()  # the codes in rows of Y, 16 bytes per thread and store
        base = codes_ptr + tok * (N1 * N2)
        gl.store(base + rows_a[:, None] * N2 + cols[None, :], codes_a.load(out))
        if BB > 0:
            gl.store(base + rows_b[:, None] * N2 + cols[None, :], codes_b.load(out))
        gl.store(scales_ptr + tok, scale)
    warpgroup_mma_wait(0, deps=(pa, pb))  # the last first product read a stage no token fills
    async_copy.wait_group(0)


@gluon.jit
def _load_token_cols(x_ptr, bufs_a, bufs_b, stage, tok, M, N1: gl.constexpr, N2: gl.constexpr, BA: gl.constexpr,
                     BB: gl.constexpr, num_warps: gl.constexpr):
    """cp.async of token tok's [N1, N2] view into stage `stage` as CHUNK-row K steps: columns [0, BA) into bufs_a,
    [BA, BA + BB) into bufs_b (zeros past N2), 8 bytes per copy (rows of N2 = 148 elements are 8-byte aligned, not
    16); zeros for tok >= M. One commit group."""
    CHUNKS: gl.constexpr = N1 // CHUNK
    load_a: gl.constexpr = gl.BlockedLayout([1, 4], [32 * 4 // BA, BA // 4], [num_warps, 1], [1, 0])
    load_b: gl.constexpr = gl.BlockedLayout([1, 4], [32 * 4 // BB, BB // 4], [num_warps, 1], [1, 0])
    rows_a = gl.arange(0, CHUNK, layout=gl.SliceLayout(1, load_a))
    cols_a = gl.arange(0, BA, layout=gl.SliceLayout(0, load_a))
    rows_b = gl.arange(0, CHUNK, layout=gl.SliceLayout(1, load_b))
    cols_b = BA + gl.arange(0, BB, layout=gl.SliceLayout(0, load_b))
    base = x_ptr + tok * (N1 * N2)
    valid_a = (rows_a[:, None] < CHUNK) & (cols_a[None, :] < N2) & (tok < M)
    valid_b = (rows_b[:, None] < CHUNK) & (cols_b[None, :] < N2) & (tok < M)
    for c in gl.static_range(CHUNKS):
        _async_load(bufs_a.index(stage * CHUNKS + c), base + (c * CHUNK + rows_a)[:, None] * N2 + cols_a[None, :],
                    mask=valid_a)
        _async_load(bufs_b.index(stage * CHUNKS + c), base + (c * CHUNK + rows_b)[:, None] * N2 + cols_b[None, :],
                    mask=valid_b)
    async_copy.commit_group()


@gluon.jit
def _first_product_cols(lt_smem, bufs_a, bufs_b, stage, N1: gl.constexpr, BA: gl.constexpr, BB: gl.constexpr,
                        mma_a: gl.constexpr, mma_b: gl.constexpr):
    """W = leftᵀ · X of the token in `stage`, as column blocks a [N1, BA] and b [N1, BB], issued asynchronously."""
    CHUNKS: gl.constexpr = N1 // CHUNK
    wa = gl.zeros([N1, BA], gl.float32, layout=mma_a)
    wb = gl.zeros([N1, BB], gl.float32, layout=mma_b)
    for c in gl.static_range(CHUNKS):
        wa = warpgroup_mma(lt_smem.index(c), bufs_a.index(stage * CHUNKS + c), wa, is_async=True)
    for c in gl.static_range(CHUNKS):
        wb = warpgroup_mma(lt_smem.index(c), bufs_b.index(stage * CHUNKS + c), wb, is_async=True)
    return wa, wb


@gluon.jit
def _kron_quant_cols_kernel(x_ptr, left_ptr, right_ptr, clip_ptr, codes_ptr, scales_ptr, M, N1: gl.constexpr,
                            N2: gl.constexpr, BA: gl.constexpr, BB: gl.constexpr, HAS_CLIP: gl.constexpr,
                            BITS: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    """The column-split form (Dream's 128x148 at K = 18944): W = leftᵀ · X in column blocks a [N1, BA] and b
    [N1, BB] (BB covering N2 - BA, zero past it), then Y = W · right, Y_a = W_a · R_aa + W_b · R_ba and Y_b = W_a ·
    R_ab + W_b · R_bb; the loop as `_kron_quant_kernel`'s. Codes leave as 4-byte pieces of Y's rows (N2 bytes
    apart: 4-byte aligned)."""
    CHUNKS: gl.constexpr = N1 // CHUNK
    dtype: gl.constexpr = x_ptr.dtype.element_ty
    mma_a: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, BA, 16])
    mma_b: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, BB, 16])
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_a, k_width=2)
    op_b: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_b, k_width=2)
    out_a: gl.constexpr = gl.BlockedLayout([1, 4], [32 * 4 // BA, BA // 4], [num_warps, 1], [1, 0])
    out_b: gl.constexpr = gl.BlockedLayout([1, 4], [32 * 4 // BB, BB // 4], [num_warps, 1], [1, 0])

    bufs_a = gl.allocate_shared_memory(dtype, [STAGES * CHUNKS, CHUNK, BA],
                                       gl.NVMMASharedLayout.get_default_for([CHUNK, BA], dtype))
    bufs_b = gl.allocate_shared_memory(dtype, [STAGES * CHUNKS, CHUNK, BB],
                                       gl.NVMMASharedLayout.get_default_for([CHUNK, BB], dtype))
    # Codes in from the MMA layout (a warp: 8 rows x 8 bytes per store), out as 4-byte row pieces; 16-byte units
    # XOR-swizzled by row keep the stores free of bank conflicts (`_kron_quant_kernel`)
    codes_a = gl.allocate_shared_memory(gl.int8, [N1, BA], gl.SwizzledSharedLayout(16, 1, 8, order=[1, 0]))
    codes_b = gl.allocate_shared_memory(gl.int8, [N1, BB], gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0]))

    pid = gl.program_id(0)
    programs = gl.num_programs(0)
    mine = gl.cdiv(M - pid, programs)
    for s in gl.static_range(STAGES - 1):  # the first tokens' tiles travel while the factors load
        _load_token_cols(x_ptr, bufs_a, bufs_b, s, pid + s * programs, M, N1, N2, BA, BB, num_warps)

    # The factors, once per program: leftᵀ in CHUNKS column blocks (the first MMA's K steps); right in its
    # [K rows, output columns] blocks (aa, ab, ba, bb), zero past N2
    lt_smem = _load_factor_t_chunks(left_ptr, N1, num_warps)
    r_aa = _load_factor(right_ptr, 0, 0, N2, BA, BA, False, num_warps)
    r_ab = _load_factor(right_ptr, 0, BA, N2, BA, BB, False, num_warps)
    r_ba = _load_factor(right_ptr, BA, 0, N2, BB, BA, False, num_warps)
    r_bb = _load_factor(right_ptr, BA, BA, N2, BB, BB, False, num_warps)
    clip = gl.load(clip_ptr).to(gl.float32) if HAS_CLIP else 1.0
    rows_a = gl.arange(0, N1, layout=gl.SliceLayout(1, out_a))
    cols_a = gl.arange(0, BA, layout=gl.SliceLayout(0, out_a))
    rows_b = gl.arange(0, N1, layout=gl.SliceLayout(1, out_b))
    cols_b = gl.arange(0, BB, layout=gl.SliceLayout(0, out_b))

    async_copy.wait_group(STAGES - 2)  # token 0's tile (this thread's copies)
    fence_async_shared()  # the factors' stores and the copies, before the MMAs read them
    _cta_barrier()
    wa, wb = _first_product_cols(lt_smem, bufs_a, bufs_b, 0, N1, BA, BB, mma_a, mma_b)
    for i in range(mine):
        tok = pid + i * programs
        wa, wb = warpgroup_mma_wait(0, deps=(wa, wb))
        wa16 = wa.to(dtype)
        wb16 = wb.to(dtype)
        ya = warpgroup_mma(gl.convert_layout(wa16, op_a), r_aa, gl.zeros([N1, BA], gl.float32, layout=mma_a),
                           is_async=True)
        ya = warpgroup_mma(gl.convert_layout(wb16, op_a), r_ba, ya, is_async=True)
        yb = warpgroup_mma(gl.convert_layout(wa16, op_b), r_ab, gl.zeros([N1, BB], gl.float32, layout=mma_b),
                           is_async=True)
        yb = warpgroup_mma(gl.convert_layout(wb16, op_b), r_bb, yb, is_async=True)
        ya, yb = warpgroup_mma_wait(0, deps=(ya, yb))
        # Token i+1's tile, then its first product; token i's stage then takes token i + STAGES - 1's
        async_copy.wait_group(STAGES - 3)
        _cta_barrier()
        wa, wb = _first_product_cols(lt_smem, bufs_a, bufs_b, (i + 1) % STAGES, N1, BA, BB, mma_a, mma_b)
        nxt = i + STAGES - 1
        _load_token_cols(x_ptr, bufs_a, bufs_b, nxt % STAGES, pid + nxt * programs, M, N1, N2, BA, BB, num_warps)

        # Quantize token i while those MMAs run
        qa, qb, scale = _codes_and_scale(ya, yb, clip, BB, BITS)
        codes_a.store(qa)
        codes_b.store(qb)
        _cta_barrier()
        base = codes_ptr + tok * (N1 * N2)
        gl.store(base + rows_a[:, None] * N2 + cols_a[None, :], codes_a.load(out_a))
        gl.store(base + rows_b[:, None] * N2 + (BA + cols_b)[None, :], codes_b.load(out_b),
                 mask=(rows_b[:, None] < N1) & ((BA + cols_b) < N2)[None, :])
        gl.store(scales_ptr + tok, scale)
    warpgroup_mma_wait(0, deps=(wa, wb))  # the last first product read a stage no token fills
    async_copy.wait_group(0)


def quantize(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor, clip: torch.Tensor | None, bits: int,
             codes: torch.Tensor, scales: torch.Tensor, stages: tuple[int, int], programs: int) -> None:
    """codes int8 [M, K], scales fp32 [M] <- the activation path of x [M, K = n1 · n2] where `supported` (module
    doc), token tiles pipelined stages[0] deep in the row-split kernel, stages[1] in the column-split one, `programs`
    persistent programs. Inputs are the caller's to check (`gemm.quantize_act_packed`, which also keeps M · K below
    2^31). At least 3 stages: the loop refills a stage while the next token's first product reads another, and with
    2 those are the same (wrong codes, not an error: the column-split kernel showed it on H100, 2026-12-07)."""
    if min(stages) < 3:
        raise ValueError(f"faircalib.kernels.act_hopper: the activation pipeline needs at least 3 stages, got {stages}"
                         " (ActLaunch.hopper_stages, hopper_cols_stages)")
    m = x.shape[0]
    if m == 0:
        return
    n1, n2 = left.shape[0], right.shape[0]
    kind, ba, bb = layout(n1, n2)
    rows = kind == "rows"
    left, right = left.contiguous(), right.contiguous()
    kernel = _kron_quant_kernel if rows else _kron_quant_cols_kernel
    # a warpgroup per 64 rows of the first product: n2 of them in the row split, n1 in the column split
    kernel[(programs,)](
        x, *((right, left) if rows else (left, right)), scales if clip is None else clip, codes, scales, m, N1=n1,
        N2=n2, BA=ba, BB=bb, HAS_CLIP=clip is not None, BITS=bits, STAGES=stages[0] if rows else stages[1],
        num_warps=(n2 if rows else n1) // 16)

"""The activation path's Kronecker transform + per-token quantization on Hopper (Gluon: TMA loads, wgmma).

Per token, X (its [n1, n2] view) -> Y = leftᵀ · X · right -> absmax -> int8 codes (round half to even, clamped to
the BITS-bit range) and an fp32 scale, as `gemm._quantize_act_kernel` (the whole-tile Triton kernel) does. Here the
token's tile comes by TMA into shared memory, pipelined `stages` deep over the program's tokens, and the MMAs read
it there: the Triton kernel loads tiles through registers, holds the factors in registers, and its MMAs need the
tile staged into shared memory again. The product is formed transposed, Yᵀ = (rightᵀ · Xᵀ) · left:
- the first MMA (A = rightᵀ, B = Xᵀ, both in shared memory) has n2 rows and n1 columns, so K = 12288's 96x128
  runs unpadded (Y = leftᵀ · X · right would pad its 96 rows to the warpgroup's 128), and
- its product stays in registers as the second MMA's A operand (rounded to the factors' dtype, as the Triton
  kernel rounds its intermediate).
A token whose n1 is not a multiple of 16 (K = 3584: 56x64) is read as B1 = 64 rows, the next token's first rows
included (zeros past the end, TMA); their columns of the first product are zeroed before the second MMA, so a NaN
there cannot leak in, and the second MMA's padded factor has zero columns there.
The codes go out by 16-byte stores after a layout conversion; the scale, NaN for tokens holding NaN/Inf (codes 0),
by one store per token.

Runs where `supported` holds: an sm_90 GPU, a left and a right factor in the input's 16-bit dtype, n2 in (64, 128),
n1 <= 128, no channel scale or gate to apply (compiled blocks apply those in the traced graph), contiguous input.
Gluon kernels compile for NVIDIA GPUs only (no interpreter): CI compiles this one for sm_90 without a GPU
(`tests/kernels/test_act_hopper.py`); the GPU tests check it against the reference.
"""
from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .triton_math import clamp_round_to_int, nan_max

# Triton 3.9 renamed these (3.6, on the GPU machines, has only the old names).
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
# The shared Triton helpers, compiled as Gluon functions (their bodies use only builtins Gluon shares).
_clamp_round_to_int = gluon.jit(clamp_round_to_int.fn)
_nan_max = gluon.jit(nan_max.fn)

CHUNK = 64  # columns per TMA box and per K step of the first MMA: 128 bytes of 16-bit values, one swizzle span
WIDTHS = (64, 128)  # n2: one or two K steps; the first MMA's rows, 64 per warpgroup


def row_blocks(n1: int) -> tuple[int, int]:
    """(BA, BB): the token's n1 rows as a power-of-two block BA and a remainder block BB (0: none), each >= 16 rows
    (tensor sides are powers of two), split where that is narrower than one padded block (96 = 64 + 32, not 128;
    56 stays one 64-row block)."""
    whole = max(16, 1 << (n1 - 1).bit_length())
    ba = max(16, 1 << (n1.bit_length() - 1))
    if ba >= n1:
        return whole, 0
    bb = max(16, 1 << (n1 - ba - 1).bit_length())
    return (ba, bb) if ba + bb < whole else (whole, 0)


def supported(x: torch.Tensor, channel_scale, gate, left, right) -> bool:
    """Whether `quantize` runs this call (module doc)."""
    if x.device.type != "cuda" or torch.cuda.get_device_capability(x.device) != (9, 0):
        return False
    if channel_scale is not None or gate is not None or left is None or right is None:
        return False
    n1, n2 = left.shape[0], right.shape[0]
    return (x.dtype in (torch.bfloat16, torch.float16) and left.dtype == right.dtype == x.dtype
            and n2 in WIDTHS and n1 <= 128 and x.is_contiguous() and x.shape[0] * n1 < 2 ** 31)


@gluon.jit
def _load_token(xa_desc, xb_desc, bar, bufs_a, bufs_b, stage, tok, N1: gl.constexpr, CHUNKS: gl.constexpr,
                BB: gl.constexpr, pred):
    """Token tok's rows into buffers stage · CHUNKS ... (block a) and the same of block b, arriving on bar."""
    BA: gl.constexpr = xa_desc.block_type.shape[0]
    CK: gl.constexpr = xa_desc.block_type.shape[1]
    nbytes: gl.constexpr = CHUNKS * (xa_desc.block_type.nbytes + (xb_desc.block_type.nbytes if BB > 0 else 0))
    mbarrier.expect(bar, nbytes, pred=pred)
    for c in gl.static_range(CHUNKS):
        _tma_load(xa_desc, [tok * N1, c * CK], bar, bufs_a.index(stage * CHUNKS + c), pred)
        if BB > 0:
            _tma_load(xb_desc, [tok * N1 + BA, c * CK], bar, bufs_b.index(stage * CHUNKS + c), pred)


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
def _load_factor_t(ptr, row0, col0, N: gl.constexpr, ROWS: gl.constexpr, COLS: gl.constexpr,
                   num_warps: gl.constexpr):
    """`_load_transposed` into shared memory, laid out as an MMA operand."""
    layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([ROWS, COLS], ptr.dtype.element_ty)
    return gl.allocate_shared_memory(ptr.dtype.element_ty, [ROWS, COLS], layout,
                                     _load_transposed(ptr, row0, col0, N, ROWS, COLS, num_warps))


@gluon.jit
def _store_codes(codes_ptr, base, y, inv, zero, row0, N1: gl.constexpr, BITS: gl.constexpr,
                 num_warps: gl.constexpr):
    """Codes of the token rows row0 ... of Yᵀ's block y [N2, rows] (values times inv, the scale's reciprocal; 0
    where `zero`), stored 16 bytes per thread."""
    N2: gl.constexpr = y.shape[0]
    ROWS: gl.constexpr = y.shape[1]
    out: gl.constexpr = gl.BlockedLayout([1, 16], [32 * 16 // N2, N2 // 16], [num_warps, 1], [1, 0])
    q = _clamp_round_to_int(y * inv, -(1 << (BITS - 1)) * 1.0, ((1 << (BITS - 1)) - 1) * 1.0)
    q = gl.convert_layout(gl.permute(gl.where(zero, 0, q).to(gl.int8), (1, 0)), out)
    r = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, out))
    c = gl.arange(0, N2, layout=gl.SliceLayout(0, out))
    gl.store(codes_ptr + base + r[:, None] * N2 + c[None, :], q, mask=(r < N1)[:, None])


@gluon.jit
def _kron_quant_kernel(xa_desc, xb_desc, right_ptr, left_ptr, clip_ptr, codes_ptr, scales_ptr, M, N1: gl.constexpr,
                       N2: gl.constexpr, BB: gl.constexpr, HAS_CLIP: gl.constexpr, BITS: gl.constexpr,
                       STAGES: gl.constexpr, num_warps: gl.constexpr):
    """Tokens pid, pid + P, ... of M (module doc); right [N2, N2], left [N1, N1].
    The token's rows come as block a (BA rows, xa_desc) and, if BB > 0, block b (BB rows, xb_desc): the first
    product P = rightᵀ · Xᵀ in column blocks Pa, Pb, and Yᵀ = P · left in column blocks Ya, Yb, each summing over
    both of P's blocks (two MMAs)."""
    BA: gl.constexpr = xa_desc.block_type.shape[0]
    CK: gl.constexpr = xa_desc.block_type.shape[1]
    CHUNKS: gl.constexpr = N2 // CK
    B1: gl.constexpr = BA + BB
    dtype: gl.constexpr = xa_desc.dtype
    mma_a: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, BA, 16])
    mma_b: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, BB if BB > 0 else BA, 16])
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_a, k_width=2)
    op_b: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_b, k_width=2)

    xa_bufs = gl.allocate_shared_memory(dtype, [STAGES * CHUNKS, BA, CK], xa_desc.layout)
    xb_bufs = gl.allocate_shared_memory(dtype, [STAGES * CHUNKS if BB > 0 else 1, BB if BB > 0 else 16, CK],
                                        xb_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    fence_async_shared()  # the barriers' inits, before TMA arrives on them
    _cta_barrier()
    pid = gl.program_id(0)
    programs = gl.num_programs(0)
    mine = gl.cdiv(M - pid, programs)
    for i in gl.static_range(STAGES - 1):  # the first tokens' tiles travel while the factors load
        _load_token(xa_desc, xb_desc, bars.index(i), xa_bufs, xb_bufs, i, pid + i * programs, N1, CHUNKS, BB,
                    i < mine)

    # The factors, once per program: rightᵀ in CHUNKS column blocks (the first MMA's K steps); leftᵀ in its
    # [output rows, K rows] blocks (aa, ab, ba, bb), each read transposed as a K-major B operand.
    rt_smem = gl.allocate_shared_memory(dtype, [CHUNKS, N2, CK], gl.NVMMASharedLayout.get_default_for([N2, CK], dtype))
    for c in gl.static_range(CHUNKS):
        rt_smem.index(c).store(_load_transposed(right_ptr, 0, c * CK, N2, N2, CK, num_warps))
    lt_aa = _load_factor_t(left_ptr, 0, 0, N1, BA, BA, num_warps)
    if BB > 0:
        lt_ab = _load_factor_t(left_ptr, 0, BA, N1, BA, BB, num_warps)
        lt_ba = _load_factor_t(left_ptr, BA, 0, N1, BB, BA, num_warps)
        lt_bb = _load_factor_t(left_ptr, BA, BA, N1, BB, BB, num_warps)
    fence_async_shared()  # the factors' stores, before the MMAs read them
    _cta_barrier()
    clip = gl.load(clip_ptr).to(gl.float32) if HAS_CLIP else 1.0
    cols_a = gl.arange(0, BA, layout=gl.SliceLayout(0, mma_a))
    cols_b = BA + gl.arange(0, BB if BB > 0 else BA, layout=gl.SliceLayout(0, mma_b))
    for i in range(mine):
        tok = pid + i * programs
        s = i % STAGES
        mbarrier.wait(bars.index(s), (i // STAGES) & 1)
        pa = gl.zeros([N2, BA], gl.float32, layout=mma_a)
        for c in gl.static_range(CHUNKS):
            pa = warpgroup_mma(rt_smem.index(c), xa_bufs.index(s * CHUNKS + c).permute((1, 0)), pa, is_async=True)
        if BB > 0:
            pb = gl.zeros([N2, BB], gl.float32, layout=mma_b)
            for c in gl.static_range(CHUNKS):
                pb = warpgroup_mma(rt_smem.index(c), xb_bufs.index(s * CHUNKS + c).permute((1, 0)), pb, is_async=True)
            pa, pb = warpgroup_mma_wait(0, deps=(pa, pb))
        else:
            pa = warpgroup_mma_wait(0, deps=(pa,))
        _cta_barrier()  # every warp's MMA has read stage s: TMA may refill the stage read one token ago
        nxt = i + STAGES - 1
        ns = nxt % STAGES
        _load_token(xa_desc, xb_desc, bars.index(ns), xa_bufs, xb_bufs, ns, pid + nxt * programs, N1, CHUNKS, BB,
                    nxt < mine)
        # Rows past the token's n1 are the next token's (module doc): their columns of P are zeroed
        if BB > 0:
            if B1 > N1:
                pb = gl.where((cols_b < N1)[None, :], pb, 0.0)
            pa16 = pa.to(dtype)
            pb16 = pb.to(dtype)
            ya = warpgroup_mma(gl.convert_layout(pa16, op_a), lt_aa.permute((1, 0)),
                               gl.zeros([N2, BA], gl.float32, layout=mma_a), is_async=True)
            ya = warpgroup_mma(gl.convert_layout(pb16, op_a), lt_ab.permute((1, 0)), ya, is_async=True)
            yb = warpgroup_mma(gl.convert_layout(pa16, op_b), lt_ba.permute((1, 0)),
                               gl.zeros([N2, BB], gl.float32, layout=mma_b), is_async=True)
            yb = warpgroup_mma(gl.convert_layout(pb16, op_b), lt_bb.permute((1, 0)), yb, is_async=True)
            ya, yb = warpgroup_mma_wait(0, deps=(ya, yb))
            absmax = _nan_max(gl.reduce(gl.reduce(gl.abs(ya), 1, _nan_max), 0, _nan_max),
                              gl.reduce(gl.reduce(gl.abs(yb), 1, _nan_max), 0, _nan_max))
        else:
            if BA > N1:
                pa = gl.where((cols_a < N1)[None, :], pa, 0.0)
            ya = warpgroup_mma(gl.convert_layout(pa.to(dtype), op_a), lt_aa.permute((1, 0)),
                               gl.zeros([N2, BA], gl.float32, layout=mma_a))
            absmax = gl.reduce(gl.reduce(gl.abs(ya), 1, _nan_max), 0, _nan_max)
        # A NaN-propagating absmax is NaN or +Inf exactly for tokens holding NaN or ±Inf
        bad = (absmax != absmax) | (absmax == float("inf"))
        scale = gl.div_rn(clip * absmax, absmax * 0.0 + ((1 << (BITS - 1)) - 1))
        # The transform is approximate already (MMA summation order); an exact division per element costs 3x
        inv = 1.0 / gl.where(scale > 0, scale, 1.0)
        zero = bad | (scale == 0)
        base = tok.to(gl.int64) * (N1 * N2)
        _store_codes(codes_ptr, base, ya, inv, zero, 0, N1, BITS, num_warps)
        if BB > 0:
            _store_codes(codes_ptr, base, yb, inv, zero, BA, N1, BITS, num_warps)
        gl.store(scales_ptr + tok, gl.where(bad, float("nan"), scale))
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))


def x_descriptors(x: torch.Tensor, n1: int, n2: int) -> tuple[TensorDescriptor, TensorDescriptor]:
    """TMA descriptors of x [M, n1 · n2] (contiguous) as [M · n1, n2] rows: [BA, CHUNK] and [BB, CHUNK] boxes (the
    second a placeholder [16, CHUNK] where the rows are one block)."""
    ba, bb = row_blocks(n1)
    dtype = gl.bfloat16 if x.dtype == torch.bfloat16 else gl.float16
    rows = x.view(-1, n2)
    return tuple(TensorDescriptor.from_tensor(rows, [b, CHUNK], gl.NVMMASharedLayout.get_default_for([b, CHUNK], dtype))
                 for b in (ba, bb or 16))


def quantize(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor, clip: torch.Tensor | None, bits: int,
             codes: torch.Tensor, scales: torch.Tensor, stages: int, programs: int) -> None:
    """codes int8 [M, K], scales fp32 [M] <- the activation path of x [M, K = n1 · n2] where `supported` (module
    doc), token tiles pipelined `stages` deep, `programs` persistent programs. Inputs are the caller's to check
    (`gemm.quantize_act_packed`)."""
    m = x.shape[0]
    if m == 0:
        return
    n1, n2 = left.shape[0], right.shape[0]
    _kron_quant_kernel[(programs,)](
        *x_descriptors(x, n1, n2), right.contiguous(), left.contiguous(), scales if clip is None else clip, codes,
        scales, m, N1=n1, N2=n2, BB=row_blocks(n1)[1], HAS_CLIP=clip is not None, BITS=bits, STAGES=stages, num_warps=n2 // 16)

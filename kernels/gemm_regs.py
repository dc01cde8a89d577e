"""W4A4 GEMM that unpacks the 4-bit weight in registers, as the tensor cores' register operand (Gluon, Hopper).

C[m, n] = (sum_k a[m, k] · w[n, k]) · a_scale[m] · w_scale[n] (+ bias[n]) is computed as Cᵀ = W · Aᵀ: a weight tile
is wgmma's A operand, which Hopper reads from registers; the activation codes are its B operand in shared memory.
Both arrive by TMA, pipelined `stages` deep. The packed layout (`gemm_reference.pack_weight_for_gemm`: per 128-code K
group 64 bytes, byte j holding code k = j in its low nibble and k = j + 64 in its high one) is what makes the unpack
cheap: a thread's fragment of packed bytes for codes k = j is, nibble for nibble, also its fragment for k = j + 64,
so `(p << 4) & 0xF0F0F0F0` (16 · the low codes) and `p & 0xF0F0F0F0` (16 · the high codes) give both A operands in
place, two 32-bit instructions per four codes, no shuffle and no trip through shared memory. The int32 sum is 16x
the true one, exact (|16 · w · a| <= 2^14 per product, 2^14 · K < 2^31 for K < 131072) and shifted back before the
fp32 epilogue, so outputs are those of `gemm.w4a4_matmul`'s unpack pass + INT8 GEMM bit for bit.

Each group's MMAs complete before the next group's fragments are written: an asynchronous MMA reads its register
operand until it is done, and Triton 3.6 cannot keep 8-bit operands alive across a wait (`warpgroup_mma_wait` deps).
Overlap comes from the two CTAs per SM instead, and from issuing the next TMA loads while a group's MMAs run
(Triton 3.6 follows each TMA issue and byte-count expect with a CTA-wide barrier, five per group, which stalled the
tensor cores when they came after the wait): forced to `regs:4:4:128` at 4096 tokens, 1.52 -> 1.55x cuBLAS bf16 on
Dream's gate/up and 1.58 -> 1.63x on both gate+up stacks (H100, 2026-12-07 01:19 UTC, same machine). A variant
that let the next group overwrite the registers early gave wrong sums on the H100, as expected; one that waited
only for the previous group (`warpgroup_mma_wait(2)`, next group's fragments unpacked while the current MMAs run)
compiles, for sm_90 with Triton 3.6, to a wait after every single wgmma (ptxas puts a WARPGROUP.DEPBAR after each
batch; offline SASS, 2026-12-07). The output tile goes through shared memory into rows of C (16 bytes per thread and
store): storing the MMA layout directly ran 10-20% slower.

A stack of weights that read the same input (q/k/v, gate/up: up to MAX_MEMBERS) runs as one launch whose programs
walk the members' row tiles in turn, each with its member's descriptor, scales, bias and output columns; one launch
per member left waves half empty on narrow members (Dream's 512-row k and v). Programs cover 128 or 64 tokens
(`CONFIGS`), the narrower for shapes too small to fill the GPU with 128-token tiles.
One program per output tile. A persistent form (two programs per SM, each sweeping its tiles in one K loop, the
next tile's loads under this tile's last groups and epilogue) took 248-253 registers and ran 1-27% slower, mostly
9-17%, on five shapes at 4096 and 16384 tokens (H100, 2026-12-07 11:32 UTC, BENCHMARKS.md). Two more, also not
kept (H100, 13:32 UTC, tag archive/ws-pdl): the loads in a producer warp (`gl.warp_specialize`, no CTA-wide barrier
in the K loop), from 0.6% faster to 2.9% slower; and launching the GEMM while the activation pass in front still runs
(programmatic dependent launch, its first weight stages fetched before it waits), within noise on the linear and
no change in a graphed step, as the earlier form without the early fetch (07:04 UTC).

Measured on H100 (BENCHMARKS.md, 2026-12-06 17:55 UTC, CUDA-graph medians against cuBLAS bf16 in the same run): 1.46x
/ 1.52x (LLaDA q/k/v/o, 1024 / 4096 tokens), 1.32x / 1.41x (gate+up as one weight), 1.58x / 1.55x (down), 1.06x /
1.37x (Dream q+k+v as one weight), against the unpack pass + INT8 GEMM's 1.09 / 1.37, 1.15 / 1.38, 1.13 / 1.35,
0.84 / 1.25x, and the INT8 GEMM alone on pre-unpacked weights 1.35 / 1.46, 1.50 / 1.50, 1.49 / 1.56, 0.98 / 1.33x.
`gemm.w4a4_design` times both designs per shape and keeps the faster; with it a compiled, graphed LLaDA-8B step
went from 1.17x to 1.39x bf16 at 1024 tokens (18:25 UTC), as fast as keeping int8 codes at half their memory.

A SwiGLU's gate and up run as one launch that forms silu(gate) · up in the epilogue (`_w4a4_swiglu_kernel`,
`w4a4_matmul_swiglu_regs`): a tile's 128 weight rows are 64 gate rows over the same 64 up rows (two TMA boxes into
one stage), so with one warpgroup the MMA layout holds each gate value and its up value in one thread (accumulator
rows r and r + 64) and the split costs no shuffle; the tile writes 64 columns. H100, 2026-12-07 10:16 UTC
(`explore_w4a4_gpu.py --parts swiglu`, 4096 / 16384 tokens): LLaDA's gate/up 676 / 2633 us against the stacked
GEMM's 648 / 2476 alone and 743 / 2882 followed by a compiled SwiGLU x channel scale; Dream's 922 / 3599 against
874 / 3402 and 1155 / 4540. In a compiled Dream-7B step at 4096 tokens the gate/up GEMMs took 23.7 ms with the
epilogue against 24.3 ms plus Inductor's 4.2 ms SwiGLU pass without it (BENCHMARKS.md).

Gluon kernels compile for NVIDIA GPUs only (no interpreter): CI compiles this one for sm_90 without a GPU
(`tests/kernels/test_gemm_regs.py`); the GPU tests check it against the reference.
"""
from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .gemm_reference import GEMM_K_GROUP
from .triton_math import grouped_tile

# Triton 3.9 renamed these (3.6, on the GPU machines, has only the old names).
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier

BLOCK_N = 128  # weight rows per program: wgmma's M, 64 per warpgroup
HALF = GEMM_K_GROUP // 2  # packed bytes of one K group, and the codes of one of its halves
MAX_K = 1 << 17  # the 16x sums stay within int32 below this K (module doc); longer rows take the unpack design
# Token blocks per group of the launch order: the programs of a group share each weight tile while it is in L2. In
# the earlier order (all weight tiles of one token block, then the next block), a weight larger than L2 (the gate+up
# stacks: 50 and 68 MB packed) came from HBM once per token block, 32 times at 4096 tokens; the INT8 GEMM sweeps in
# groups too. On weights that fit in L2 the two orders ran alike (H100, 2026-12-07 00:20 UTC, BENCHMARKS.md). On the
# gate+up stacks the two orders were not timed against each other: in this one they ran 1.58x cuBLAS bf16 at 4096
# tokens (regs:4:4:128, H100, 01:19 UTC).
GROUP_M = 8
# (warps, stages, tokens per program) the design choice times, the first one preferred (`gemm.REGS_MARGIN`). Tokens
# per program are wgmma's N (int8 allows up to 224; tile sides are powers of two). One warpgroup and 4 stages was the
# fastest of the three, or within 1% of the fastest, on every shape at 4096 and 16384 tokens (H100, 2026-12-07 01:27
# UTC; the H200 on 2026-12-06: every shape but Dream's k/v); two warpgroups and 3 stages ran up to 6% slower (17% on
# Dream's k/v at 4096 tokens); both 2 programs per SM. 64 tokens per program: narrow weights (Dream's 512-row k and
# v) fill 4 x 32 of the H100's 264 program slots at 4096 tokens with 128.
CONFIGS = ((4, 4, 128), (8, 3, 128), (4, 4, 64))
# The SwiGLU kernel's config (`w4a4_matmul_swiglu_regs`): one warpgroup, so that each gate value and its up value
# share a thread. 64 tokens per program ran 21-23% slower than 128 on LLaDA's and Dream's gate+up at 4096 and 16384
# tokens (H100, 2026-12-07 10:16 UTC, BENCHMARKS.md).
SWIGLU_CONFIG = (4, 4, 128)


@gluon.jit
def _low_codes_x16(p):
    return gl.inline_asm_elementwise("{ shl.b32 $0, $1, 4; and.b32 $0, $0, 0xF0F0F0F0; }", "=r,r", [p],
                                     dtype=gl.int8, is_pure=True, pack=4)


@gluon.jit
def _high_codes_x16(p):
    return gl.inline_asm_elementwise("and.b32 $0, $1, 0xF0F0F0F0;", "=r,r", [p], dtype=gl.int8, is_pure=True, pack=4)


@gluon.jit
def _load_group(w_desc, w2_desc, a_desc, bar, w_buf, a_low, a_high, off_n, off_m, g, pred, PAIRED: gl.constexpr):
    """K group g's packed weight rows and activation codes into one stage; PAIRED: w_desc's rows in the top half
    of w_buf, the same rows of w2_desc in the bottom half (`_swiglu_tile`)."""
    half: gl.constexpr = w_desc.block_type.shape[1]
    weight_bytes: gl.constexpr = w_desc.block_type.nbytes * (2 if PAIRED else 1)
    mbarrier.expect(bar, weight_bytes + 2 * a_desc.block_type.nbytes, pred=pred)
    if PAIRED:
        rows: gl.constexpr = w_desc.block_type.shape[0]
        _tma_load(w_desc, [off_n, g * half], bar, w_buf.slice(0, rows), pred)
        _tma_load(w2_desc, [off_n, g * half], bar, w_buf.slice(rows, rows), pred)
    else:
        _tma_load(w_desc, [off_n, g * half], bar, w_buf, pred)
    _tma_load(a_desc, [off_m, g * 2 * half], bar, a_low, pred)
    _tma_load(a_desc, [off_m, g * 2 * half + half], bar, a_high, pred)


@gluon.jit
def _accumulate(w_desc, w2_desc, a_desc, w_bufs, a_bufs, bars, K, off_n, off_m, mma: gl.constexpr,
                PAIRED: gl.constexpr, STAGES: gl.constexpr):
    """16 x the int32 sums of one [BLOCK_N weight rows, BM tokens] tile (w_bufs' rows: w_desc's from off_n on, or
    with PAIRED w_desc's, then w2_desc's, half of them each), in layout `mma`; K's tail reads as zeros (TMA)."""
    BN: gl.constexpr = w_bufs.shape[1]
    BM: gl.constexpr = a_desc.block_type.shape[0]
    HALF_K: gl.constexpr = w_desc.block_type.shape[1]  # packed bytes of a K group, codes of half of one
    fragment: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=4)
    groups = gl.cdiv(K, 2 * HALF_K)
    for i in gl.static_range(STAGES - 1):
        _load_group(w_desc, w2_desc, a_desc, bars.index(i), w_bufs.index(i), a_bufs.index(2 * i),
                    a_bufs.index(2 * i + 1), off_n, off_m, i, i < groups, PAIRED)
    acc = gl.zeros([BN, BM], gl.int32, layout=mma)
    for g in range(groups):
        s = g % STAGES
        mbarrier.wait(bars.index(s), (g // STAGES) & 1)
        packed = w_bufs.index(s).load(fragment)
        acc = warpgroup_mma(_low_codes_x16(packed), a_bufs.index(2 * s).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma(_high_codes_x16(packed), a_bufs.index(2 * s + 1).permute((1, 0)), acc, is_async=True)
        # While these MMAs run: group g + STAGES - 1 into the stage group g - 1 used, which every warp is done with
        # once all have passed the barrier (each waited for its group g - 1 MMAs in the previous step).
        _cta_barrier()
        nxt = g + STAGES - 1
        ns = nxt % STAGES
        _load_group(w_desc, w2_desc, a_desc, bars.index(ns), w_bufs.index(ns), a_bufs.index(2 * ns),
                    a_bufs.index(2 * ns + 1), off_n, off_m, nxt, nxt < groups, PAIRED)
        acc = warpgroup_mma_wait(0, deps=(acc,))  # the fragments' registers are free again (module doc)
    return acc


@gluon.jit
def _tile(w_desc, a_desc, sa_ptr, sw_ptr, bias_ptr, c_ptr, w_bufs, a_bufs, bars, M, N, K, stride_cm, off_n, off_m,
          col0, HAS_BIAS: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    """Writes one [BM tokens, BLOCK_N outputs] tile of C at rows off_m, columns col0 + off_n: the product with the
    weight of w_desc (N rows, its scales and bias from column col0 on)."""
    BN: gl.constexpr = w_desc.block_type.shape[0]
    BM: gl.constexpr = a_desc.block_type.shape[0]
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BM, 32])
    acc = _accumulate(w_desc, w_desc, a_desc, w_bufs, a_bufs, bars, K, off_n, off_m, mma, False, STAGES)
    rn = off_n + gl.arange(0, BN, layout=gl.SliceLayout(1, mma))
    rm = off_m + gl.arange(0, BM, layout=gl.SliceLayout(0, mma))
    out = (acc >> 4).to(gl.float32) * gl.load(sa_ptr + rm, mask=rm < M, other=0.0)[None, :] * \
        gl.load(sw_ptr + col0 + rn, mask=rn < N, other=0.0)[:, None]
    if HAS_BIAS:
        out = out + gl.load(bias_ptr + col0 + rn, mask=rn < N, other=0.0).to(gl.float32)[:, None]
    rows: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // BN, BN // 8], [num_warps, 1], [1, 0])
    out = gl.convert_layout(gl.permute(out.to(c_ptr.dtype.element_ty), (1, 0)), rows)
    sm = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, rows))
    sn = off_n + gl.arange(0, BN, layout=gl.SliceLayout(0, rows))
    gl.store(c_ptr + sm[:, None] * stride_cm + col0 + sn[None, :], out, mask=(sm < M)[:, None] & (sn < N)[None, :])


@gluon.jit
def _w4a4_regs_kernel(w0_desc, w1_desc, w2_desc, a_desc, sa_ptr, sw_ptr, bias_ptr, c_ptr, M, N0, N1, N2, K,
                      stride_cm, HAS_BIAS: gl.constexpr, MEMBERS: gl.constexpr, STAGES: gl.constexpr,
                      GROUP_M: gl.constexpr, num_warps: gl.constexpr):
    """The GEMM against MEMBERS (1-3) weights stacked along N (N0, N1, N2 rows; C's columns in that order), one
    launch: each program computes one [BLOCK_N]-row tile of the stack (each member's tiles counted in turn) for one
    block of tokens (`_tile`; tokens per program are a_desc's box rows), in grouped order. One launch instead of one
    per member: the tiles of all members share the waves (Dream's k and v alone fill 4 x 32 of 264 program slots at
    4096 tokens)."""
    BN: gl.constexpr = w0_desc.block_type.shape[0]
    BM: gl.constexpr = a_desc.block_type.shape[0]
    HALF_K: gl.constexpr = w0_desc.block_type.shape[1]
    w_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, BN, HALF_K], w0_desc.layout)
    a_bufs = gl.allocate_shared_memory(gl.int8, [2 * STAGES, BM, HALF_K], a_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    tiles0 = gl.cdiv(N0, BN)
    tiles1 = gl.cdiv(N1, BN)
    # Grouped order, the INT8 GEMM's: GROUP_M token blocks take each weight tile in turn, so it comes from HBM once
    # per group and their activation codes stay in L2 (`GROUP_M`).
    block_m, tile = grouped_tile(gl.program_id(0), gl.cdiv(M, BM), tiles0 + tiles1 + gl.cdiv(N2, BN), GROUP_M)
    off_m = block_m * BM
    if MEMBERS == 1:
        _tile(w0_desc, a_desc, sa_ptr, sw_ptr, bias_ptr, c_ptr, w_bufs, a_bufs, bars, M, N0, K, stride_cm,
              tile * BN, off_m, 0, HAS_BIAS, STAGES, num_warps)
    else:
        if tile < tiles0:
            _tile(w0_desc, a_desc, sa_ptr, sw_ptr, bias_ptr, c_ptr, w_bufs, a_bufs, bars, M, N0, K, stride_cm,
                  tile * BN, off_m, 0, HAS_BIAS, STAGES, num_warps)
        elif tile < tiles0 + tiles1:
            _tile(w1_desc, a_desc, sa_ptr, sw_ptr, bias_ptr, c_ptr, w_bufs, a_bufs, bars, M, N1, K, stride_cm,
                  (tile - tiles0) * BN, off_m, N0, HAS_BIAS, STAGES, num_warps)
        else:  # MEMBERS == 3 (a grid over two members has no tile past theirs)
            _tile(w2_desc, a_desc, sa_ptr, sw_ptr, bias_ptr, c_ptr, w_bufs, a_bufs, bars, M, N2, K, stride_cm,
                  (tile - tiles0 - tiles1) * BN, off_m, N0 + N1, HAS_BIAS, STAGES, num_warps)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))


@gluon.jit
def _swiglu_tile(wg_desc, wu_desc, a_desc, sa_ptr, sw_ptr, bias_ptr, cs_ptr, c_ptr, w_bufs, a_bufs, bars, M, F, K,
                 stride_cm, off_f, off_m, HAS_BIAS: gl.constexpr, HAS_CS: gl.constexpr, STAGES: gl.constexpr,
                 num_warps: gl.constexpr):
    """Writes one [BM tokens, BH channels] tile of C = silu(gate) · up (· channel scale) at rows off_m, columns
    off_f on. The tile's MMAs run on BH gate rows stacked over the same BH up rows, so the MMA layout puts each
    gate value and its up value in one thread (rows r and r + 64 of the accumulator): the SwiGLU needs no shuffle.
    Gate and up are rounded to C's dtype as the stacked GEMM writes them, then the SwiGLU and the channel scale as
    eager PyTorch rounds them (`gemm_reference.w4a4_matmul_swiglu`)."""
    BH: gl.constexpr = wg_desc.block_type.shape[0]
    BM: gl.constexpr = a_desc.block_type.shape[0]
    dtype: gl.constexpr = c_ptr.dtype.element_ty
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BM, 32])
    acc = _accumulate(wg_desc, wu_desc, a_desc, w_bufs, a_bufs, bars, K, off_f, off_m, mma, True, STAGES)
    r = gl.arange(0, 2 * BH, layout=gl.SliceLayout(1, mma))
    chan = off_f + r % BH
    row = chan + (r // BH) * F  # gate's scales and bias come first in the stack's, then up's
    rm = off_m + gl.arange(0, BM, layout=gl.SliceLayout(0, mma))
    out = (acc >> 4).to(gl.float32) * gl.load(sa_ptr + rm, mask=rm < M, other=0.0)[None, :] * \
        gl.load(sw_ptr + row, mask=chan < F, other=0.0)[:, None]
    if HAS_BIAS:
        out = out + gl.load(bias_ptr + row, mask=chan < F, other=0.0).to(gl.float32)[:, None]
    out = out.to(dtype).to(gl.float32)
    gate, up = gl.split(gl.permute(gl.reshape(out, [2, BH, BM]), (1, 2, 0)))
    y = (gate / (1.0 + gl.exp(-gate))).to(dtype).to(gl.float32) * up
    if HAS_CS:
        c = off_f + gl.arange(0, BH, layout=gl.SliceLayout(1, y.type.layout))
        y = y.to(dtype).to(gl.float32) * gl.load(cs_ptr + c, mask=c < F, other=0.0)[:, None]
    rows: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // BH, BH // 8], [num_warps, 1], [1, 0])
    y = gl.convert_layout(gl.permute(y.to(dtype), (1, 0)), rows)
    sm = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, rows))
    sf = off_f + gl.arange(0, BH, layout=gl.SliceLayout(0, rows))
    gl.store(c_ptr + sm[:, None] * stride_cm + sf[None, :], y, mask=(sm < M)[:, None] & (sf < F)[None, :])


@gluon.jit
def _w4a4_swiglu_kernel(wg_desc, wu_desc, a_desc, sa_ptr, sw_ptr, bias_ptr, cs_ptr, c_ptr, M, F, K, stride_cm,
                        HAS_BIAS: gl.constexpr, HAS_CS: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr,
                        num_warps: gl.constexpr):
    """C [M, F] = silu(gate) · up (· channel scale) of the W4A4 GEMMs against gate's and up's packed weights
    (F rows each), one `_swiglu_tile` of BLOCK_N / 2 channels per program, in grouped order."""
    BH: gl.constexpr = wg_desc.block_type.shape[0]
    BM: gl.constexpr = a_desc.block_type.shape[0]
    HALF_K: gl.constexpr = wg_desc.block_type.shape[1]
    w_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, 2 * BH, HALF_K], wg_desc.layout)
    a_bufs = gl.allocate_shared_memory(gl.int8, [2 * STAGES, BM, HALF_K], a_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    block_m, tile = grouped_tile(gl.program_id(0), gl.cdiv(M, BM), gl.cdiv(F, BH), GROUP_M)
    _swiglu_tile(wg_desc, wu_desc, a_desc, sa_ptr, sw_ptr, bias_ptr, cs_ptr, c_ptr, w_bufs, a_bufs, bars, M, F, K,
                 stride_cm, tile * BH, block_m * BM, HAS_BIAS, HAS_CS, STAGES, num_warps)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))


def supported(device: torch.device) -> bool:
    """Whether this kernel runs on `device`: an sm_90 GPU (wgmma), compiled, not interpreted."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) == (9, 0)


MAX_MEMBERS = 3  # q/k/v; gate/up are two


def weight_descriptor(w_packed: torch.Tensor, rows: int = BLOCK_N) -> TensorDescriptor:
    """The TMA descriptor of a packed weight [N, Kp / 2]: [rows, HALF] boxes, laid out as the kernels' [BLOCK_N,
    HALF] stage buffers (`_swiglu_tile` fills the halves of one with rows = BLOCK_N / 2)."""
    layout = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HALF], gl.int8)
    return TensorDescriptor.from_tensor(w_packed, [rows, HALF], layout)


def codes_descriptor(a_codes: torch.Tensor, block_m: int) -> TensorDescriptor:
    """The TMA descriptor of activation codes [M, K] (K % 16 == 0): [block_m, HALF] boxes."""
    layout = gl.NVMMASharedLayout.get_default_for([block_m, HALF], gl.int8)
    return TensorDescriptor.from_tensor(a_codes, [block_m, HALF], layout)


def w4a4_matmul_regs(a_codes: torch.Tensor, a_scales: torch.Tensor, w_packed: list[torch.Tensor],
                     w_scales: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
                     config: tuple[int, int, int]) -> torch.Tensor:
    """out [M, sum N_i] (unit column stride) = the W4A4 GEMM of a_codes int8 [M, K] (contiguous, K % 16 == 0),
    a_scales fp32 [M] against the 1 to MAX_MEMBERS weights w_packed[i] int8 [N_i, padded_k(K) / 2] (contiguous)
    stacked along N, w_scales fp32 [sum N_i], bias [sum N_i] | None, in one launch; config = (warps, stages, tokens per
    program) from CONFIGS. Inputs are the caller's to check (`gemm.w4a4_matmul_stacked`)."""
    m, k = a_codes.shape
    widths = [w.shape[0] for w in w_packed]
    if not 1 <= len(w_packed) <= MAX_MEMBERS:
        raise ValueError(f"faircalib.kernels.gemm_regs: 1 to {MAX_MEMBERS} stacked weights, got {len(w_packed)}")
    warps, stages, block_m = config
    if stages < 2:  # `_tile` refills the stage the previous group used while the current group's MMAs run
        raise ValueError(f"faircalib.kernels.gemm_regs: config {config} needs at least 2 stages")
    if m == 0 or sum(widths) == 0:
        return out
    w_descs = [weight_descriptor(w) for w in w_packed]
    w_descs += [w_descs[0]] * (MAX_MEMBERS - len(w_descs))
    widths += [0] * (MAX_MEMBERS - len(widths))
    grid = (sum(triton.cdiv(n, BLOCK_N) for n in widths) * triton.cdiv(m, block_m),)
    _w4a4_regs_kernel[grid](*w_descs, codes_descriptor(a_codes, block_m), a_scales, w_scales,
                            w_scales if bias is None else bias, out, m, *widths, k, out.stride(0),
                            HAS_BIAS=bias is not None, MEMBERS=len(w_packed), STAGES=stages, GROUP_M=GROUP_M,
                            num_warps=warps)
    return out


def w4a4_matmul_swiglu_regs(a_codes: torch.Tensor, a_scales: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                            w_scales: torch.Tensor, bias: torch.Tensor | None, channel_scale: torch.Tensor | None,
                            out: torch.Tensor, config: tuple[int, int, int]) -> torch.Tensor:
    """out [M, F] (unit column stride) = silu(gate) · up (· channel_scale [F]) where gate and up are the W4A4 GEMMs
    of a_codes int8 [M, K], a_scales fp32 [M] against w_gate and w_up int8 [F, padded_k(K) / 2] (contiguous), with
    w_scales and bias [2F] (gate's, then up's) as for their stack: `gemm_reference.w4a4_matmul_swiglu`, in one
    launch (`_swiglu_tile`); config as `w4a4_matmul_regs`'. Inputs are the caller's to check
    (`gemm.w4a4_matmul_swiglu`)."""
    m, f = a_codes.shape[0], w_gate.shape[0]
    warps, stages, block_m = config
    if warps != 4:  # `_swiglu_tile`: with 8 warps, rows r and r + 64 of the accumulator sit in different warps
        raise ValueError(f"faircalib.kernels.gemm_regs: the SwiGLU kernel runs one warpgroup (4 warps), got config "
                         f"{config}")
    if stages < 2:
        raise ValueError(f"faircalib.kernels.gemm_regs: config {config} needs at least 2 stages")
    if m == 0 or f == 0:
        return out
    grid = (triton.cdiv(f, BLOCK_N // 2) * triton.cdiv(m, block_m),)
    _w4a4_swiglu_kernel[grid](
        weight_descriptor(w_gate, BLOCK_N // 2), weight_descriptor(w_up, BLOCK_N // 2),
        codes_descriptor(a_codes, block_m), a_scales, w_scales, w_scales if bias is None else bias,
        w_scales if channel_scale is None else channel_scale, out, m, f, a_codes.shape[1], out.stride(0),
        HAS_BIAS=bias is not None, HAS_CS=channel_scale is not None, STAGES=stages, GROUP_M=GROUP_M, num_warps=warps)
    return out

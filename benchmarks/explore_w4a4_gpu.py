"""Design experiments for the W4A4 kernels (issue 5), one GPU run per call; BENCHMARKS.md records their results.

    python benchmarks/explore_w4a4_gpu.py [--out DIR]
        [--parts act,fp8,inloop,host,unpack,profile,epilogue,ablation,swiglu]

act:    `quantize_act_packed` (bf16 Kronecker factors from `kronecker_factors(K)`) under `gemm.ACT_LAUNCH` variants
        (whole-tile vs split-column vs chunked kernel, stacking, pipelining, slice sizes, programs per SM, warps;
        `--act-k` picks the widths, `--act-m` the token counts, env `ACT_VARIANTS` the variants); codes checked
        against the CPU reference first; bandwidth counts compulsory bytes (bf16 in, int8 + fp32 out) against an
        in-run memcpy of 1 GiB and a copy of the same bytes.
fp8:    the INT4 x INT4 product on FP8 e4m3 tensor cores (int4 values are exact in e4m3), fp32 accumulator, Triton's
        `max_num_imprecise_acc` at Hopper's default (never promote) or a window W <= BLOCK_K; exactness on worst-case
        data (every product ±64 over K = 18944) and random data, then speed against cuBLAS bf16 and the INT8 path.
(A `tma` part, at commit e9a979d and before, compared the INT8 GEMM with pointer loads against the persistent TMA
kernel that replaced it; BENCHMARKS.md has its numbers.)
inloop: the packed weight unpacked inside a persistent TMA GEMM's main loop (0.5 byte per weight read, no int8
        copy; weight as the MMA's B operand, or as its A operand from registers) against the shipped unpack pass +
        INT8 GEMM at M = 256, 1024, 4096: exactness, then speed against cuBLAS bf16.
host:   host time per call of each piece of a W4A4 linear (16 tokens, so the GPU work is negligible).
unpack: the weight unpack pass under launch variants, CUDA-graph timed, against a copy of the same bytes.
profile: the shipped activation kernels once per `--act-k` width at 16384 tokens (to run under `ncu`), then each
        compiled kernel's registers, spills, shared memory and MMA instructions (wgmma or mma.sync) from its PTX.
ablation: where the Triton split kernel's time goes (the `--act-k` widths it runs: 12288 and 18944 of the default): the
        pass with both factors, with the left factor only and with the right one only (the same layout and launch,
        one set of MMAs left out), against a copy of the same bytes, all CUDA-graph timed in one process. Equal
        times say the MMAs are hidden; times that fall by each product's share say they add to the memory time.
swiglu: gate/up of LLaDA-8B and Dream-7B (random packed weights, a channel scale) over `--act-m` tokens: the
        register GEMM with the SwiGLU in its epilogue (`gemm_regs.w4a4_matmul_swiglu_regs`, 128 and 64 tokens per
        program) against the stacked register GEMM alone and followed by silu(gate)·up·channel scale compiled by
        Inductor on its column halves (as a compiled block ran it before), CUDA graphs timed in turns; parity with
        eager PyTorch on the stacked GEMM's output first.
epilogue: the shipped INT8 GEMM (output written by TMA, whole tile or two halves) against the pointer stores it
        replaced, on single and stacked (q+k+v, gate+up) weight shapes.
(A `ws` part, at commit 397989f, ran the INT8 GEMM with the tile and K loops not flattened, now a tuned option of
the shipped kernel, and with Triton's automatic warp specialization, which Triton 3.6 failed to compile; BENCHMARKS.md.)
(An `l2chunk` part, at commit 1fc27d6 and before, ran `w4a4_matmul` in L2-sized weight slices; BENCHMARKS.md.)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
import triton.testing

# CUDA-graph replay timing and the copy baseline (run from the repo root)
from bench_gemm_gpu import act_traffic, kronecker_factors_seeded, median_ms as graph_median_ms, memcpy_tbps

from faircalib.calib.transforms import kronecker_factors
from faircalib.atomic import write_json
from faircalib.kernels import gemm, gemm_reference, triton_math
from faircalib.kernels.gemm_reference import GEMM_K_GROUP


def median_ms(fn) -> float:
    try:
        return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")
    except Exception as error:  # noqa: BLE001  (an experiment reports a failing variant and goes on)
        print(f"FAILED: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}", flush=True)
        return float("nan")


# Runs on 2026-11-22 (H100): pipelining depth 3 beat 1, 2 and 4 (+3-12%); 4, 8 or 16 programs per SM and 8 warps instead
# of 4 did not help; stacking 2 tokens per step (blockdiag left factor) or re-reading the factors every step was slower.
# The per-element IEEE division was the bottleneck: a reciprocal multiply ran 1.4-3.5x faster. 2026-12-06: with the left
# factor first, 2 programs per SM beat 8 for K = 12288's 128x128 tiles (+5-18%) and lost for the smaller tiles;
# pipelining 2 deep and 128-row stacks stayed slower. The split-column kernel (K = 18944): 0.34x memcpy with 8 warps
# against the chunked kernel's 0.15x; 4 warps 0.07x; stages and programs per SM changed nothing. Later that day, with
# the factor sizes as compile-time constants (no more register spills): 0.41x pipelined 2 deep, 0.52x 3 deep (shipped),
# 4 deep out of shared memory, 16 warps 0.19x; K = 12288 1 deep 0.63x against 3 deep's 0.57x without a channel scale but
# 0.41x against 0.44x with one (3 deep kept). 2026-12-06 13:26 UTC (H100, CUDA-graph timed, 16384 / 4096 / 1024 tokens):
# K = 12288's rows split (the split kernel on the transposed view, 128 x (64 + 32)) 0.74 / 0.65 / 0.47x against the
# whole tile's 0.58 / 0.46 / 0.26x (shipped where no channel scale is applied in the kernel: with one, 0.36x through
# the pass in front against the whole tile's 0.44x); pipelined 2 deep 0.48x, 2 programs per SM no change; the channel
# scale inside the split kernel 0.52x on the transposed view but again an illegal address at K = 18944 (dropped);
# fewer programs for short inputs (each at least 2 or 4 token steps) no gain at K = 3584 / 4096 (dropped). Variants
# run in one process; `ACT_VARIANTS=a,b` picks some (one process per variant survives a crash). 2026-12-06 21:44 UTC:
# programs capped at what fits an SM (5 of the 64x64 tiles, 1 of K = 12288's) 0.84 / 0.85 / 0.60x at K = 3584 / 4096 /
# 12288 (whole tile) against 0.76 / 0.81 / 0.56x uncapped (`tile_over`); the rows split 2 deep with 2 programs per SM
# (both fit) 0.70x against 0.73x. 2026-12-07 07:27 UTC, at 4096 tokens too: the shipped whole tile (`tile`) stays the
# fastest at K = 3584 and 4096 against 2 tokens per step (with 3 or 2 stages), 2 stages and 2 programs per SM.
# 2026-12-07 08:30-08:47 UTC, K = 12288 at 16384 tokens (Triton split kernel, 269-273 us): 4, 5 or 6 stages 271-273 us;
# one warpgroup per program (4 warps: 230 registers), 1 program 3 deep 280 us, 2 programs 2 deep 280 us, 1 program 2
# deep 420 us; the Gluon kernel (`act_hopper.py`, now `split`) 233 us 4 deep, 260 us 3 deep, 238 us 5 deep. At
# K = 4096 that kernel (2-4 programs per SM) took 28.8-29.4 / 80.4-82.4 us against the whole tile's 25.4 / 78.3 us at
# 4096 / 16384 tokens (08:58 UTC; variants on a branch, not kept).
ACT_VARIANTS = {
    "tile": dict(),
    "tile_rows128": dict(transform_rows=128),
    "tile_rows128_s2": dict(transform_rows=128, stages=2),  # two 64-row tokens per step, in the smem of 4 tokens
    "tile_s1": dict(stages=1),
    "tile_s2": dict(stages=2),
    "tile_lp1": dict(large_tile_programs_per_sm=1),
    "tile_p2": dict(programs_per_sm=2, large_tile_programs_per_sm=2),
    "tile_p8": dict(programs_per_sm=8, large_tile_programs_per_sm=8),
    "tile_over": dict(fit_resident=False),  # programs per SM past what fits at once (as before 2026-12-06 21:40 UTC)
    "chunk_j64k32_p4w4": dict(fused_max_tile=0, split_max_tile=0, chunk_j=64, chunk_k=32, chunked_programs_per_sm=4,
                              chunked_warps=4),
    "split": dict(),  # on H100 at K = 12288 and 18944: the Gluon kernels (`act_hopper.py`, `ActLaunch.hopper`)
    "split_triton": dict(hopper=False),
    "split_hopper_s3": dict(hopper_stages=3),
    "split_hopper_s5": dict(hopper_stages=5),
    "split_s1": dict(split_stages=1),
    "split_s2": dict(split_stages=2),
    "split_s4": dict(split_stages=4),
    "split_s5": dict(split_stages=5),  # K = 12288: 24 KiB per stage, 5 and 6 deep still fit shared memory
    "split_s6": dict(split_stages=6),
    "split_w4": dict(split_warps=4),
    "split_w16": dict(split_warps=16),
    "split_p2": dict(split_programs_per_sm=2),
    "split_p2w4": dict(split_programs_per_sm=2, split_warps=4),
    "split_s2p2": dict(split_stages=2, split_programs_per_sm=2),  # K = 12288: two programs fit an SM 2 deep
    # K = 12288: one warpgroup per token, two programs per SM (232 registers, 106 KiB of shared memory each: both fit)
    "split_w4_s2p2": dict(split_warps=4, split_stages=2, split_programs_per_sm=2),
    "split_w4_s2": dict(split_warps=4, split_stages=2),
}
PLAIN_TILES = (4096,)


def act_part(copy_tbps: float, log, widths: tuple[int, ...], token_counts: tuple[int, ...]) -> list[dict]:
    records = []
    default = dataclasses.asdict(gemm.ACT_LAUNCH)
    for k in widths:
        n1, n2 = kronecker_factors(k)
        left, right = kronecker_factors_seeded(k, torch.bfloat16)
        small = torch.randn(256, k, device="cuda").to(torch.bfloat16)
        channel_scale = torch.rand(k, device="cuda") + 0.5
        want_c, want_s = (t.cuda() for t in gemm_reference.quantize_act_packed(
            small.cpu(), None, left.float().cpu(), right.float().cpu(), None, 4))
        gemm.ACT_LAUNCH.__dict__.update(default)
        splittable = gemm.split_layout(n1, n2, torch.bfloat16) is not None
        only = os.environ.get("ACT_VARIANTS")
        for name, overrides in ACT_VARIANTS.items():
            if only and name not in only.split(","):
                continue
            if name.startswith("tile"):
                overrides = dict(overrides, split_over_tile=False)
            if name.startswith("tile") and k > 4096:
                overrides = dict(overrides, fused_max_tile=1 << 30, fused_max_smem=1 << 30)
            if name.startswith("tile") and triton.next_power_of_2(n2) > 128:
                continue  # 128x256 padded tiles do not fit shared memory
            if name.startswith("chunk") and k <= 4096:
                continue  # whole tiles fit: the chunked kernel is never chosen there
            if name.startswith("split") and not splittable:
                continue  # no block split narrower than the padded tile
            if name.startswith("tile_rows") and k > 4096:
                continue  # one token already fills 128 rows
            gemm.ACT_LAUNCH.__dict__.update(default, **overrides)
            rec = {"K": k, "kron": f"{n1}x{n2}", "variant": name}
            known = {id(compiled) for _, compiled in _compiled_act_kernels()}
            try:
                c, s = gemm.quantize_act_packed(small, None, left, right, None, 4)
                gemm.quantize_act_packed(small, channel_scale, left, right, None, 4)
                torch.cuda.synchronize()
                rec["compiled"] = " ".join(
                    f"{fn.fn.__name__.removeprefix('_quantize_act_')}:{compiled.n_regs}r/{compiled.n_spills}s"
                    for fn, compiled in _compiled_act_kernels() if id(compiled) not in known)
                diff = (c.int() - want_c.int()).abs()
                rec.update(code_max_diff=int(diff.max()), code_frac_diff=float((diff > 0).float().mean()),
                           scale_max_rel=float(((s - want_s).abs() / want_s.abs().clamp_min(1e-30)).max()))
            except Exception as error:  # noqa: BLE001
                rec["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                log(f"act K={k} {name}: {rec['error']}")
                records.append(rec)
                continue
            # Replayed from a CUDA graph: at 1024 tokens the wrapper's host time exceeds the kernel's.
            for m in token_counts:
                x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
                ms = graph_median_ms(lambda: gemm.quantize_act_packed(x, None, left, right, None, 4))
                tbps = act_traffic(m, k) / ms / 1e9
                rec[f"M{m}_us"], rec[f"M{m}_tbps"], rec[f"M{m}_x_memcpy"] = ms * 1e3, tbps, tbps / copy_tbps
                # Against a copy of the same bytes too: at a few thousand tokens a copy pays a fixed cost per call as
                # well (`explore_flush_gpu.py`: 0.74-0.87x of it at K = 3584 and 4096, H100, 2026-12-07).
                rec[f"M{m}_x_same_bytes_copy"] = tbps / memcpy_tbps(act_traffic(m, k))
            # With a channel scale, as FlatQuant's transforms deploy (the input passes through registers first).
            ms = graph_median_ms(lambda: gemm.quantize_act_packed(x, channel_scale, left, right, None, 4))
            rec[f"M{m}_cs_x_memcpy"] = act_traffic(m, k) / ms / 1e9 / copy_tbps
            log(f"act K={k} {n1}x{n2} {name}: " + ", ".join(
                f"{key}={val:.3g}" if isinstance(val, float) else f"{key}={val}" for key, val in rec.items()
                if key not in ("K", "kron", "variant")))
            records.append(rec)
        x = torch.randn(16384, k, device="cuda").to(torch.bfloat16)
        for plain_tile in PLAIN_TILES:
            gemm.ACT_LAUNCH.__dict__.update(default, plain_tile=plain_tile)
            ms = median_ms(lambda: gemm.quantize_act_packed(x, None, None, None, None, 4))
            tbps = act_traffic(16384, k) / ms / 1e9
            log(f"act K={k} no transform plain_tile={plain_tile} M=16384: {ms * 1e3:.1f} us, {tbps:.2f} TB/s, "
                f"{tbps / copy_tbps:.2f}x memcpy")
            records.append({"K": k, "variant": f"none_tile{plain_tile}", "M16384_us": ms * 1e3, "M16384_tbps": tbps,
                            "M16384_x_memcpy": tbps / copy_tbps})
    gemm.ACT_LAUNCH.__dict__.update(default)
    return records


def ablation_part(log, widths: tuple[int, ...], token_counts: tuple[int, ...]) -> list[dict]:
    # The Triton split kernel in every form (the Gluon kernels take only both factors)
    hopper, gemm.ACT_LAUNCH.hopper = gemm.ACT_LAUNCH.hopper, False
    records = []
    for k in widths:
        n1, n2 = kronecker_factors(k)
        left, right = kronecker_factors_seeded(k, torch.bfloat16)
        if gemm.act_path(n1, n2, torch.bfloat16) != "split":
            log(f"ablation K={k}: not a width of the split kernel, skipped")
            continue
        variants = {"both": (left, right), "left_only": (left, None), "right_only": (None, right)}
        small = torch.randn(256, k, device="cuda").to(torch.bfloat16)
        for name, factors in variants.items():  # the one-factor launches are not in the GPU tests: checked here
            codes, _ = gemm.quantize_act_packed(small, None, *factors, None, 4)
            want, _ = gemm_reference.quantize_act_packed(small.cpu(), None,
                                                         *(None if f is None else f.float().cpu() for f in factors),
                                                         None, 4)
            log(f"ablation K={k} {name}: codes max |diff| {int((codes.cpu().int() - want.int()).abs().max())} "
                f"against the reference")
        for m in token_counts:
            x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
            copy_tbps = memcpy_tbps(act_traffic(m, k))
            rec = {"K": k, "M": m, "same_bytes_copy_us": act_traffic(m, k) / copy_tbps / 1e6}
            for name, factors in variants.items():
                ms = graph_median_ms(lambda: gemm.quantize_act_packed(x, None, *factors, None, 4))
                rec[f"{name}_us"], rec[f"{name}_x_copy"] = ms * 1e3, rec["same_bytes_copy_us"] / (ms * 1e3)
            log(f"ablation K={k} M={m}: " + ", ".join(f"{key}={val:.3g}" for key, val in rec.items()
                                                      if key not in ("K", "M")))
            records.append(rec)
    gemm.ACT_LAUNCH.hopper = hopper
    return records


@triton.jit
def _unpack_fp8_kernel(packed_ptr, out_ptr, GROUPS, BLOCK_G: tl.constexpr, HALF: tl.constexpr):
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    j = tl.arange(0, HALF)
    mask = (g < GROUPS)[:, None]
    p = tl.load(packed_ptr + g[:, None] * HALF + j[None, :], mask=mask)
    row = out_ptr + g[:, None] * (2 * HALF) + j[None, :]
    tl.store(row, ((p << 4) >> 4).to(tl.float32).to(tl.float8e4nv), mask=mask)
    tl.store(row + HALF, (p >> 4).to(tl.float32).to(tl.float8e4nv), mask=mask)


def unpack_fp8(packed: torch.Tensor) -> torch.Tensor:
    n, half_kp = packed.shape
    out = torch.empty((n, 2 * half_kp), dtype=torch.float8_e4m3fn, device=packed.device)
    groups = n * half_kp // (GEMM_K_GROUP // 2)
    _unpack_fp8_kernel[(triton.cdiv(groups, 64),)](packed, out, groups, BLOCK_G=64, HALF=GEMM_K_GROUP // 2)
    return out


FP8_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8}, num_warps=w, num_stages=s)
               for bm, bn, w, s in [(128, 256, 8, 3), (128, 256, 8, 4), (256, 128, 8, 3), (128, 128, 8, 4),
                                    (128, 128, 4, 4), (128, 128, 4, 5), (128, 128, 8, 3), (128, 256, 8, 2)]]


@triton.autotune(configs=FP8_CONFIGS, key=["M", "N", "K", "WINDOW", "BLOCK_K"],
                 do_bench=lambda fn, quantiles: triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles))
@triton.jit
def _fp8_gemm_kernel(a_ptr, w_ptr, sa_ptr, sw_ptr, c_ptr, M, N, K, stride_am, stride_wn, stride_cm,
                     WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % size_m
    pid_n = (pid % (GROUP_M * num_n)) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm_in = tl.where(rm < M, rm, 0)
    rn_in = tl.where(rn < N, rn, 0)
    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(a_ptr + rm_in[:, None] * stride_am + (k0 + kk)[None, :])
        w = tl.load(w_ptr + rn_in[:, None] * stride_wn + (k0 + kk)[None, :])
        if WINDOW == 0:
            acc = tl.dot(a, tl.trans(w), acc)
        else:
            acc = tl.dot(a, tl.trans(w), acc, max_num_imprecise_acc=WINDOW)
    out = acc * tl.load(sa_ptr + rm_in)[:, None] * tl.load(sw_ptr + rn_in)[None, :]
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], out.to(c_ptr.dtype.element_ty), mask=mask)


def fp8_gemm(a8, sa, w8, sw, variant: tuple[int, int], out_dtype=torch.bfloat16):
    m, k = a8.shape
    n = w8.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a8.device)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    window, block_k = variant
    _fp8_gemm_kernel[grid](a8, w8, sa, sw, out, m, n, k, a8.stride(0), w8.stride(0), out.stride(0),
                           WINDOW=window, BLOCK_K=block_k)
    return out


# variant -> (max_num_imprecise_acc window, BLOCK_K); 0 = Triton's Hopper default (no promotion). Run 1 (2026-11-22
# 07:40 UTC) also timed windows 64 and 32: exact, and slower than 128 at every shape (0.77-1.25x bf16).
WINDOWS = {"imprecise": (0, 128), "w128": (128, 128), "w256": (256, 256)}
GEMM_SHAPES = [("llada q/k/v/o", 4096, 4096), ("llada gate/up", 4096, 12288), ("llada down", 12288, 4096),
               ("dream q/o", 3584, 3584), ("dream gate/up", 3584, 18944), ("dream down", 18944, 3584)]


def fp8_part(log) -> list[dict]:
    records = []
    k = 18944
    ones_m, ones_n = torch.ones(256, device="cuda"), torch.ones(256, device="cuda")
    rand_a = torch.randint(-8, 8, (256, k), device="cuda", dtype=torch.int8)
    rand_w = torch.randint(-8, 8, (256, k), device="cuda", dtype=torch.int8)
    want = (rand_a.double() @ rand_w.double().t())
    for name, variant in WINDOWS.items():
        rec = {"variant": name}
        for case, a, w, expect in (
                ("worst+", torch.full((256, k), -8, dtype=torch.int8, device="cuda"),
                 torch.full((256, k), -8, dtype=torch.int8, device="cuda"), 64.0 * k),
                ("worst-", torch.full((256, k), 8, dtype=torch.int8, device="cuda"),
                 torch.full((256, k), -8, dtype=torch.int8, device="cuda"), -64.0 * k),
                ("random", rand_a, rand_w, None)):
            w8 = unpack_fp8(gemm_reference.pack_weight_for_gemm(w.cpu()).cuda())
            out = fp8_gemm(a.float().to(torch.float8_e4m3fn), ones_m, w8, ones_n, variant, torch.float32)
            ref = want if expect is None else torch.full_like(out, expect, dtype=torch.float64)
            rec[f"{case}_max_err"] = float((out.double() - ref).abs().max())
        records.append(rec)
        log(f"fp8 exactness {name}: {rec}")
    for label, k, n in GEMM_SHAPES:
        w_codes = torch.randint(-8, 8, (n, k), dtype=torch.int8)
        packed = gemm_reference.pack_weight_for_gemm(w_codes).cuda()
        sw = torch.rand(n, device="cuda")
        w_bf16 = torch.randn(n, k, device="cuda").to(torch.bfloat16)
        for m in (4096, 16384):
            a = torch.randint(-8, 8, (m, k), device="cuda", dtype=torch.int8)
            a8 = a.float().to(torch.float8_e4m3fn)
            sa = torch.rand(m, 1, device="cuda")
            x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
            rec = {"shape": label, "M": m, "N": n, "K": k}
            t = {"bf16": median_ms(lambda: F.linear(x, w_bf16)),
                 "int8_path": median_ms(lambda: gemm.w4a4_matmul(a, sa, packed, sw, None, torch.bfloat16)),
                 "unpack_fp8": median_ms(lambda: unpack_fp8(packed))}
            for name, variant in WINDOWS.items():
                t[f"fp8_{name}"] = median_ms(
                    lambda variant=variant: fp8_gemm(a8, sa.reshape(-1), unpack_fp8(packed), sw, variant))
            rec["ms"] = t
            rec["vs_bf16"] = {key: t["bf16"] / v for key, v in t.items() if key != "unpack_fp8"}
            log(f"gemm {label} M={m}: " + ", ".join(f"{key} {v:.2f}x" for key, v in rec["vs_bf16"].items()))
            records.append(rec)
    return records


def host_part(log) -> list[dict]:
    """Host time per call of each piece of a W4A4 linear (16 tokens: the GPU work is negligible, so a loop of
    calls without synchronisation measures what Python, the custom-op dispatcher and the Triton launcher cost)."""
    from faircalib import kernels
    from faircalib.deploy.w4a4_linear import W4A4Linear
    from faircalib.kernels import ops

    k = n = 4096
    x = torch.randn(16, k, device="cuda").to(torch.bfloat16)
    lin = W4A4Linear(k, n, left_size=64, right_size=64, channel_scale=True).cuda()
    lin.left, lin.right = lin.left.to(torch.bfloat16), lin.right.to(torch.bfloat16)
    codes, scales = kernels.quantize_act_packed(x, 4, lin.act_clip, lin.channel_scale, lin.left, lin.right)
    unpacked = gemm.unpack_weight_int8(lin.weight_packed)
    pieces = {
        "W4A4Linear.forward": lambda: lin(x),
        "kernels.quantize_act_packed (public)": lambda: kernels.quantize_act_packed(
            x, 4, lin.act_clip, lin.channel_scale, lin.left, lin.right),
        "ops.quantize_act_packed (custom op)": lambda: ops.quantize_act_packed(
            x, lin.channel_scale, lin.left, lin.right, lin.act_clip, 4),
        "gemm.quantize_act_packed (Triton wrapper)": lambda: gemm.quantize_act_packed(
            x, lin.channel_scale, lin.left, lin.right, lin.act_clip, 4),
        "kernels.w4a4_matmul (public)": lambda: kernels.w4a4_matmul(codes, scales, lin.weight_packed,
                                                                    lin.weight_scale, None, torch.bfloat16),
        "gemm.w4a4_matmul (Triton wrapper)": lambda: gemm.w4a4_matmul(codes, scales, lin.weight_packed,
                                                                      lin.weight_scale, None, torch.bfloat16),
        "gemm.unpack_weight_int8": lambda: gemm.unpack_weight_int8(lin.weight_packed),
        "gemm.int8_gemm": lambda: gemm.int8_gemm(codes, scales, unpacked, lin.weight_scale, None, torch.bfloat16),
        "torch.empty (reference point)": lambda: torch.empty(16, n, device="cuda"),
    }
    records = []
    for name, fn in pieces.items():
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(200):
            fn()
        host_us = (time.perf_counter() - start) / 200 * 1e6
        torch.cuda.synchronize()
        log(f"host {name}: {host_us:.1f} us per call")
        records.append({"piece": name, "host_us": host_us})
    return records


def unpack_part(log) -> list[dict]:
    """The weight unpack pass (0.5 byte read + 1 byte written per weight) under launch variants, CUDA-graph timed,
    against an in-run memcpy of the same bytes."""
    records = []
    default = gemm.UNPACK_LAUNCH
    for n, k in ((4096, 4096), (12288, 4096), (4096, 12288), (18944, 3584)):
        packed = torch.randint(-128, 128, (n, k // 2), device="cuda", dtype=torch.int8)
        src = torch.empty(n * k * 3 // 4, dtype=torch.int8, device="cuda")
        dst = torch.empty_like(src)
        copy_ms = graph_median_ms(lambda: dst.copy_(src))
        want = None
        for block_g, warps in ((64, 4), (128, 4), (256, 4), (256, 8), (512, 8), (1024, 8)):
            gemm.UNPACK_LAUNCH = (block_g, warps)
            out = gemm.unpack_weight_int8(packed)
            want = out if want is None else want
            ms = graph_median_ms(lambda: gemm.unpack_weight_int8(packed))
            tbps = 1.5 * n * k / ms / 1e9
            log(f"unpack {n}x{k} block_g={block_g} warps={warps}: {ms * 1e3:.1f} us, {tbps:.2f} TB/s, "
                f"{copy_ms / ms:.2f}x memcpy, same output {torch.equal(out, want)}")
            records.append({"n": n, "k": k, "block_g": block_g, "warps": warps, "us": ms * 1e3, "tbps": tbps,
                            "x_memcpy": copy_ms / ms})
    gemm.UNPACK_LAUNCH = default
    return records


def _inloop_configs() -> list[triton.Config]:
    shapes = ([(16, 16, 4, 1)] if os.environ.get("TRITON_INTERPRET") == "1" else
              [(64, 128, 4, 4), (128, 128, 8, 3), (128, 128, 8, 4), (64, 256, 8, 3), (128, 256, 8, 3)])
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8}, num_warps=w, num_stages=st,
                          pre_hook=_inloop_block_shapes) for bm, bn, w, st in shapes]


def _inloop_block_shapes(nargs: dict) -> None:
    half = GEMM_K_GROUP // 2
    nargs["a_desc"].block_shape = [nargs["BLOCK_M"], half]
    nargs["w_desc"].block_shape = [nargs["BLOCK_N"], half]


@triton.autotune(configs=_inloop_configs(), key=["M_BUCKET", "N", "K", "SWAP_AB"], do_bench=gemm._tune_bench)
@triton.jit
def _inloop_gemm_kernel(a_desc, w_desc, sa_ptr, sw_ptr, c_ptr, M, N, K, M_BUCKET, stride_cm, PROGRAMS: tl.constexpr,
                        SWAP_AB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """The packed weight read by TMA as [BLOCK_N, 64] bytes per 128-element K group and unpacked in registers (two
    shifts) in the main loop: 0.5 byte per weight from memory, no int8 copy. SWAP_AB: the weight is the MMA's A
    operand (registers), the activation tile the B operand (shared memory)."""
    HALF: tl.constexpr = 64
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), num_m * num_n, PROGRAMS, flatten=True):
        pid_m, pid_n = triton_math.grouped_tile(tile, num_m, num_n, GROUP_M)
        if SWAP_AB:
            acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(0, K, 2 * HALF):
            a_lo = a_desc.load([pid_m * BLOCK_M, k0])
            a_hi = a_desc.load([pid_m * BLOCK_M, k0 + HALF])
            p = w_desc.load([pid_n * BLOCK_N, k0 // 2])
            w_lo = (p << 4) >> 4
            w_hi = p >> 4
            if SWAP_AB:
                acc = tl.dot(w_lo, a_lo.T, acc, out_dtype=tl.int32)
                acc = tl.dot(w_hi, a_hi.T, acc, out_dtype=tl.int32)
            else:
                acc = tl.dot(a_lo, w_lo.T, acc, out_dtype=tl.int32)
                acc = tl.dot(a_hi, w_hi.T, acc, out_dtype=tl.int32)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        sa = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)
        sw = tl.load(sw_ptr + rn, mask=rn < N, other=0.0)
        if SWAP_AB:
            out = acc.to(tl.float32) * sw[:, None] * sa[None, :]
            tl.store(c_ptr + rm[None, :] * stride_cm + rn[:, None], out.to(c_ptr.dtype.element_ty),
                     mask=(rn < N)[:, None] & (rm < M)[None, :])
        else:
            out = acc.to(tl.float32) * sa[:, None] * sw[None, :]
            tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], out.to(c_ptr.dtype.element_ty),
                     mask=(rm < M)[:, None] & (rn < N)[None, :])


def inloop_gemm(a_codes, a_scales, w_packed, w_scales, swap_ab: bool):
    """a_codes int8 [M, K] (K % 16 == 0), w_packed [N, padded_k(K) / 2] -> bf16 [M, N], unpacking in the loop."""
    m, k = a_codes.shape
    n = w_packed.shape[0]
    out = torch.empty((m, n), dtype=torch.bfloat16, device=a_codes.device)
    a_desc = gemm.TensorDescriptor.from_tensor(a_codes, [1, 1])
    w_desc = gemm.TensorDescriptor.from_tensor(w_packed, [1, 1])
    programs = 4 if a_codes.device.type != "cuda" else gemm._num_sms(a_codes.device.index or 0)

    def grid(meta):
        return (min(programs, triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])),)

    _inloop_gemm_kernel[grid](a_desc, w_desc, a_scales.reshape(-1), w_scales, out, m, n, 2 * w_packed.shape[1],
                              triton.next_power_of_2(m), out.stride(0), PROGRAMS=programs, SWAP_AB=swap_ab)
    return out


def inloop_part(log) -> list[dict]:
    """Unpacking the weight inside the GEMM's main loop (0.5 byte per weight read, no int8 copy) against the
    shipped unpack pass + INT8 GEMM, at small and mid M where the unpack pass is a large share: exactness on
    worst-case data first, then CUDA-graph-timed speed against cuBLAS bf16."""
    records = []
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)
    for n, k in ((4096, 4096), (12288, 4096), (4096, 12288), (3584, 18944)):
        w_codes = torch.randint(-8, 8, (n, k), device=dev, generator=gen, dtype=torch.int8)
        packed = gemm_reference.pack_weight_for_gemm(w_codes)
        w_scales = torch.rand(n, device=dev, generator=gen)
        for m in (256, 1024, 4096):
            a = torch.randint(-8, 8, (m, k), device=dev, generator=gen, dtype=torch.int8)
            sa = torch.rand(m, 1, device=dev, generator=gen)
            want = gemm.w4a4_matmul(a, sa, packed, w_scales, None, torch.bfloat16)
            rec = {"N": n, "K": k, "M": m}
            x = torch.randn(m, k, device=dev, generator=gen).to(torch.bfloat16)
            w = torch.randn(n, k, device=dev, generator=gen).to(torch.bfloat16)
            t = {"bf16": graph_median_ms(lambda: F.linear(x, w)),
                 "unpack+int8": graph_median_ms(lambda: gemm.w4a4_matmul(a, sa, packed, w_scales, None,
                                                                          torch.bfloat16))}
            for swap in (False, True):
                name = "inloop_swap" if swap else "inloop"
                try:
                    got = inloop_gemm(a, sa, packed, w_scales, swap)
                    rec[f"{name}_exact"] = bool(torch.equal(got, want))
                    t[name] = graph_median_ms(lambda: inloop_gemm(a, sa, packed, w_scales, swap))
                except Exception as error:  # noqa: BLE001
                    rec[f"{name}_error"] = f"{type(error).__name__}: {str(error)[:200]}"
                    t[name] = float("nan")
            rec["ms"] = t
            rec["vs_bf16"] = {key: t["bf16"] / v for key, v in t.items()}
            log(f"inloop N={n} K={k} M={m}: " + ", ".join(f"{key} {v:.2f}x" for key, v in rec["vs_bf16"].items())
                + f"; exact {rec.get('inloop_exact')} / {rec.get('inloop_swap_exact')}"
                + "".join(f"; {key}: {v}" for key, v in rec.items() if key.endswith("error")))
            records.append(rec)
    return records


def _pointer_store_configs() -> list[triton.Config]:
    """The shipped flattened tile configs, once each (SUBTILE only shapes TMA stores; the pointer-store kernel
    always flattens its loops, as it did when it shipped)."""
    configs = {}
    for c in gemm._gemm_configs():
        if not c.kwargs["FLATTEN"]:
            continue
        kwargs = {k: v for k, v in c.kwargs.items() if k not in ("SUBTILE", "FLATTEN")}
        configs.setdefault((tuple(sorted(kwargs.items())), c.num_warps, c.num_stages),
                           triton.Config({**kwargs, "SUBTILE": False}, num_warps=c.num_warps,
                                         num_stages=c.num_stages, pre_hook=c.pre_hook))
    return list(configs.values())


@triton.autotune(configs=_pointer_store_configs(), key=["M_BUCKET", "N", "K"], do_bench=gemm._tune_bench)
@triton.jit
def _pointer_store_gemm_kernel(a_desc, w_desc, c_desc, sa_ptr, sw_ptr, bias_ptr, c_ptr, M, N, K, M_BUCKET, stride_cm,
                               PROGRAMS: tl.constexpr, SUBTILE: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """The shipped persistent INT8 GEMM with the pointer-store epilogue it had until commit a505f6d."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), num_m * num_n, PROGRAMS, flatten=True):
        pid_m, pid_n = triton_math.grouped_tile(tile, num_m, num_n, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            acc = tl.dot(a_desc.load([pid_m * BLOCK_M, k0]), w_desc.load([pid_n * BLOCK_N, k0]).T, acc,
                         out_dtype=tl.int32)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        out = acc.to(tl.float32) * tl.load(sa_ptr + rm, mask=rm < M, other=0.0)[:, None] * \
            tl.load(sw_ptr + rn, mask=rn < N, other=0.0)[None, :]
        tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], out.to(c_ptr.dtype.element_ty),
                 mask=(rm < M)[:, None] & (rn < N)[None, :])


def pointer_store_gemm(a_codes, a_scales, w_int8, w_scales):
    m, k = a_codes.shape
    n = w_int8.shape[0]
    out = torch.empty((m, n), dtype=torch.bfloat16, device=a_codes.device)
    descs = [gemm.TensorDescriptor.from_tensor(t, [1, 1]) for t in (a_codes, w_int8)]
    programs = 4 if a_codes.device.type != "cuda" else gemm._num_sms(a_codes.device.index or 0)

    def grid(meta):
        return (min(programs, triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])),)

    _pointer_store_gemm_kernel[grid](*descs, None, a_scales.reshape(-1), w_scales, w_scales, out, m, n, k,
                                     triton.next_power_of_2(m), out.stride(0), PROGRAMS=programs)
    return out


def epilogue_part(log) -> list[dict]:
    """The INT8 GEMM alone (pre-unpacked weights) with the shipped TMA-store epilogue against the pointer stores it
    replaced, at M = 1024, 4096 and 16384 on LLaDA/Dream shapes and the stacked q+k+v / gate+up shapes: bitwise
    equal outputs first, then CUDA-graph-timed speed against cuBLAS bf16. (Up to commit d1d729b the roles were
    swapped: pointer stores shipped, the TMA kernel defined here.)"""
    records = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for label, k, n in (("llada q/k/v/o", 4096, 4096), ("llada gate/up, q+k+v", 4096, 12288),
                        ("llada gate+up", 4096, 24576), ("llada down", 12288, 4096), ("dream q/o", 3584, 3584),
                        ("dream q+k+v", 3584, 4608), ("dream down", 18944, 3584)):
        w = torch.randint(-8, 8, (n, k), device="cuda", generator=gen, dtype=torch.int8)
        sw = torch.rand(n, device="cuda", generator=gen)
        for m in (1024, 4096, 16384):
            a = torch.randint(-8, 8, (m, k), device="cuda", generator=gen, dtype=torch.int8)
            sa = torch.rand(m, 1, device="cuda", generator=gen)
            x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
            wb = torch.randn(n, k, device="cuda", generator=gen).to(torch.bfloat16)
            want = gemm.int8_gemm(a, sa, w, sw, None, torch.bfloat16)
            try:
                exact = bool(torch.equal(pointer_store_gemm(a, sa, w, sw), want))
            except Exception as error:  # noqa: BLE001
                exact = f"{type(error).__name__}: {str(error)[:200]}"
            t = {"bf16": graph_median_ms(lambda: F.linear(x, wb)),
                 "int8 pointer store": graph_median_ms(lambda: pointer_store_gemm(a, sa, w, sw)),
                 "int8 tma store (shipped)": graph_median_ms(lambda: gemm.int8_gemm(a, sa, w, sw, None,
                                                                                    torch.bfloat16))}
            best = gemm._int8_gemm_kernel.best_config
            rec = {"shape": label, "M": m, "N": n, "K": k, "exact": exact, "ms": t, "best": str(best),
                   "vs_bf16": {key: t["bf16"] / v for key, v in t.items()}}
            log(f"epilogue {label} M={m}: " + ", ".join(f"{key} {v:.2f}x" for key, v in rec["vs_bf16"].items())
                + f"; bitwise equal {exact}; tma config {best}")
            records.append(rec)
    return records


def swiglu_part(log, token_counts: tuple[int, ...]) -> list[dict]:
    from bench_gemm_gpu import interleaved_ms, stacked_weights

    from faircalib.kernels import gemm_regs

    swiglu_cs = torch.compile(lambda g, u, cs: ((F.silu(g) * u).float() * cs).to(g.dtype))
    gen = torch.Generator(device="cuda").manual_seed(0)
    records = []
    for name, k, f in (("llada-8b", 4096, 12288), ("dream-7b", 3584, 18944)):
        (w_gate, w_up), sw, _ = stacked_weights([f, f], k, gen)
        cs = torch.rand(f, device="cuda", generator=gen) + 0.5
        for m in token_counts:
            a = torch.randint(-8, 8, (m, k), device="cuda", dtype=torch.int8, generator=gen)
            sa = torch.rand(m, device="cuda", generator=gen) * 0.01
            both = torch.empty(m, 2 * f, device="cuda", dtype=torch.bfloat16)
            got = torch.empty(m, f, device="cuda", dtype=torch.bfloat16)

            def stacked_gemm():
                return gemm_regs.w4a4_matmul_regs(a, sa, [w_gate, w_up], sw, None, both, gemm_regs.SWIGLU_CONFIG)
            stacked_gemm()
            want = ((F.silu(both[:, :f]) * both[:, f:]).float() * cs).to(torch.bfloat16)
            gemm_regs.w4a4_matmul_swiglu_regs(a, sa, w_gate, w_up, sw, None, cs, got, gemm_regs.SWIGLU_CONFIG)
            rec = {"model": name, "M": m, "F": f, "K": k, "bitwise": float((got == want).float().mean())}

            def stacked_then_swiglu():
                stacked_gemm()
                return swiglu_cs(both[:, :f], both[:, f:], cs)
            stacked_then_swiglu()  # compiles
            fns = {"stacked_gemm": stacked_gemm, "stacked_gemm+swiglu": stacked_then_swiglu}
            for config in ((4, 4, 128), (4, 4, 64)):
                fns[f"epilogue_{config[2]}"] = lambda config=config: gemm_regs.w4a4_matmul_swiglu_regs(
                    a, sa, w_gate, w_up, sw, None, cs, got, config)
            rec.update({f"{key}_us": ms * 1e3 for key, ms in interleaved_ms(fns).items()})
            log(f"swiglu {name} M={m}: " + ", ".join(
                f"{key}={val:.4g}" if isinstance(val, float) else f"{key}={val}" for key, val in rec.items()
                if key not in ("model", "M")))
            records.append(rec)
    return records


def profile_part(log, widths: tuple[int, ...]) -> list[dict]:
    for k in widths:
        left, right = kronecker_factors_seeded(k, torch.bfloat16)
        x = torch.randn(16384, k, device="cuda").to(torch.bfloat16)
        for _ in range(3):
            gemm.quantize_act_packed(x, None, left, right, None, 4)
        torch.cuda.synchronize()
    records = []
    for fn, compiled in _compiled_act_kernels():
        ptx = compiled.asm.get("ptx", "")
        rec = {"kernel": fn.fn.__name__, "regs": compiled.n_regs, "spills": compiled.n_spills,
               "shared": compiled.metadata.shared, "warps": compiled.metadata.num_warps,
               "wgmma": ptx.count("wgmma.mma_async"), "mma_sync": ptx.count("mma.sync"),
               "wgmma_wait": ptx.count("wgmma.wait_group"), "cp_async": ptx.count("cp.async.")}
        log("profile " + ", ".join(f"{key}={val}" for key, val in rec.items()))
        records.append(rec)
    return records


def _compiled_act_kernels() -> list:
    """(jit function, compiled kernel) for every activation kernel compiled in this process so far."""
    kernels = [gemm._quantize_act_kernel, gemm._quantize_act_split_kernel, gemm._quantize_act_chunked_kernel]
    if gemm.act_hopper is not None:
        kernels += [gemm.act_hopper._kron_quant_kernel, gemm.act_hopper._kron_quant_cols_kernel]
    return [(fn, compiled) for fn in kernels for cache in fn.device_caches.values() for compiled in cache[0].values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--parts", default="act,fp8")
    parser.add_argument("--act-k", default="3584,4096,12288,18944", help="activation widths of the act part")
    parser.add_argument("--act-m", default="1024,4096,16384", help="token counts of the act part (the last one is "
                                                                   "also the one timed with a channel scale)")
    args = parser.parse_args()
    lines = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    started = time.time()
    copy_tbps = memcpy_tbps(2 * 2 ** 30)  # 1 GiB copied
    log(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__} "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; memcpy {copy_tbps:.2f} TB/s")
    result = {"memcpy_tbps": copy_tbps}
    widths = tuple(int(k) for k in args.act_k.split(","))
    token_counts = tuple(int(m) for m in args.act_m.split(","))
    for part in args.parts.split(","):
        result[part] = {"act": lambda: act_part(copy_tbps, log, widths, token_counts), "fp8": lambda: fp8_part(log),
                        "inloop": lambda: inloop_part(log), "epilogue": lambda: epilogue_part(log),
                        "host": lambda: host_part(log), "profile": lambda: profile_part(log, widths),
                        "unpack": lambda: unpack_part(log),
                        "ablation": lambda: ablation_part(log, widths, token_counts),
                        "swiglu": lambda: swiglu_part(log, token_counts)}[part]()
        result["log"], result["seconds"] = lines, time.time() - started
        os.makedirs(args.out, exist_ok=True)
        write_json(Path(args.out) / "explore_w4a4.json", result)


if __name__ == "__main__":
    main()

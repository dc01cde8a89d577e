"""W4A4 GEMM and W4A4 linear (with activation quantization) vs cuBLAS bf16, torch._int_mm and FP8 _scaled_mm, at
LLaDA-8B and Dream-7B linear shapes, all measured in one run on one GPU. Checks correctness first.

    python benchmarks/bench_gemm_gpu.py [--out DIR] [--ms 256,1024,4096,16384] [--only stacked] [--flush clean]

Prints a markdown table (TOPS = 2·M·N·K / time; ratio vs bf16 cuBLAS in the same run) and writes
`bench_gemm.json` to DIR (default $OUT or .). Times are medians (`bench_ms`, do_bench's method) over CUDA-graph replays
of each call (GPU time, no host overhead), the contenders of a shape timed in turn (a shuffled order each round)
over several rounds, two captures each (`interleaved_ms`); L2 is flushed before every repetition, so weights
come from HBM as they do in a real forward pass (`--flush dirty`, the default, zeroes a 256 MiB buffer as do_bench
does, which leaves the timed call dirty lines to write back; `--flush clean` reads it: `bench_ms`).
Columns: `w4a4_gemm` is the op, in the design `gemm.w4a4_design` picks for the shape (`design`: "unpack" = unpack
pass + INT8 GEMM, "regs:W:S:T" = `gemm_regs`, the weight unpacked in registers; the times the choice rested on are
printed per shape and kept in the JSON as `design_ms`); `w4a4_unpack` the op forced to the
unpack design, `w4a4_regs:...` to each register design; `int8_gemm` the INT8 GEMM alone on pre-unpacked weights;
`w4a4_linear_*` adds `quantize_act_packed` (transform + quantization) in front of the op.
Activation path: `quantize_act_packed` with the Kronecker transform of the layer's input size (FlatQuant factors,
fp32 factors = tf32 MMA, and bf16 factors), its bandwidth counting compulsory bytes (bf16 in, int8 + fp32 out)
against device-to-device copies measured in the same run: of 256 MiB, and of the pass's own bytes.
`bench_gemm.json` is rewritten after every shape, so a run cut short keeps the shapes it finished.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.testing

from faircalib import kernels
from faircalib.calib.transforms import kronecker_factors, random_orthogonal
from faircalib.atomic import write_json
from faircalib.kernels import gemm, gemm_reference

SHAPES = [  # (model, role, K, N)
    ("llada-8b", "q/k/v/o", 4096, 4096), ("llada-8b", "gate/up", 4096, 12288), ("llada-8b", "down", 12288, 4096),
    ("dream-7b", "q/o", 3584, 3584), ("dream-7b", "gate/up", 3584, 18944), ("dream-7b", "down", 18944, 3584),
    ("dream-7b", "k/v", 3584, 512),
    # The GEMM that a shared input's linears run together on their stacked weights (`SharedInputQuantization`);
    # LLaDA's q+k+v stack is the gate/up shape above.
    ("llada-8b", "gate+up stacked", 4096, 24576), ("dream-7b", "q+k+v stacked", 3584, 4608),
    ("dream-7b", "gate+up stacked", 3584, 37888),
]


def select_shapes(only: str) -> list[tuple]:
    """The SHAPES whose 'model role' contains one of the comma-separated substrings of `only` (all if empty); a
    ValueError naming the shapes if none does, before any GPU work."""
    wanted = [w for w in only.split(",") if w]
    shapes = [shape for shape in SHAPES if not wanted or any(w in f"{shape[0]} {shape[1]}" for w in wanted)]
    if not shapes:
        raise ValueError(f"--only {only!r} matches none of {[f'{model} {role}' for model, role, _, _ in SHAPES]}")
    return shapes


def captured(fn):
    """fn() captured in a CUDA graph after three warm-up calls (which compile, autotune and pick the W4A4 design),
    so the host time of Python wrappers and launches stays out of every contender's number (the W4A4 ops spend
    ~100 us of host time per call, more than their GPU time below ~1024 tokens; `explore_w4a4_gpu.py --parts
    host`). None (with the error printed once per kind) when it fails, so one broken path does not hide the others."""
    try:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        gc.collect()  # as in `gemm.w4a4_design`: no dead graph may be destroyed during the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph
    except Exception as error:  # noqa: BLE001  (report and go on: this is a benchmark, not a library)
        message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if message not in _FAILURES:
            _FAILURES.add(message)
            print(f"FAILED timing: {message}", flush=True)
        return None


# How L2 is emptied before each timed repetition (`--flush`). "dirty": `triton.testing.do_bench`'s way, zeroing a
# 256 MiB buffer, which leaves L2 full of dirty lines for the timed call to write back as it evicts them (up to
# ~17 us of HBM traffic on H100 by arithmetic); "clean": reading the same buffer, so L2 holds only clean lines.
# Measured (`explore_flush_gpu.py`, H100, 2026-12-07 07:04 UTC): dirty adds 3-5 us to the activation pass and to a
# copy of its bytes at 4096 tokens (K = 3584, 4096), and moves the linears' ratios to cuBLAS bf16 by at most 0.05.
FLUSH = "dirty"
_flush_buffer: list[torch.Tensor] = []


def l2_flush(kind: str):
    """A thunk that empties L2 the `kind` way ("dirty", "clean"; module comment above FLUSH)."""
    if not _flush_buffer:
        _flush_buffer.extend([torch.empty(256 * 2 ** 20 // 4, device="cuda"), torch.empty((), device="cuda")])
    cache, total = _flush_buffer
    return {"dirty": cache.zero_, "clean": lambda: torch.sum(cache, dim=0, out=total)}[kind]


def bench_ms(fn, warmup: int, rep: int) -> float:
    """Median ms of fn() over ~`rep` ms of repetitions after ~`warmup` ms, L2 emptied (`FLUSH`) before each:
    `do_bench` itself for "dirty", its method with the other flush otherwise."""
    if FLUSH == "dirty":
        return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    flush = l2_flush(FLUSH)
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush()
        fn()
    end.record()
    end.synchronize()
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup / estimate))):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(max(1, int(rep / estimate)))]
    for start, end in events:
        flush()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def median_ms(fn) -> float:
    """Median GPU time of fn()'s CUDA graph (`captured`) replayed by `bench_ms` (~40 ms); NaN if it failed."""
    graph = captured(fn)
    return float("nan") if graph is None else bench_ms(graph.replay, warmup=10, rep=40)


GRAPHS, ROUNDS = 2, 6


def interleaved_ms(fns: dict) -> dict:
    """Median GPU time of each thunk over ROUNDS rounds that take the contenders in turn, each round replaying one
    of the thunk's GRAPHS CUDA graphs (captured separately) by `bench_ms` (median over ~10 ms, L2 flushed): clock
    and temperature drift fall on every contender alike, and so does the spread between captures of the same call
    (the unpack design read 1.44-1.65x cuBLAS bf16 in four graphs of one process; H100, 2026-12-06). Each round
    takes them in its own order (shuffled from a fixed seed): in one fixed order the contender timed right after FP8
    `_scaled_mm` read 2-11% slower than the same kernels forced in a later column (H100, 2026-12-07 01:27 UTC, most
    at 16384 tokens), so no contender may always follow the same one. NaN for a thunk that failed."""
    graphs = {key: [captured(fn) for _ in range(GRAPHS)] for key, fn in fns.items()}
    times = {key: [] for key in fns}
    order, shuffle = list(graphs.items()), random.Random(0).shuffle
    for r in range(ROUNDS):
        shuffle(order)
        for key, captures in order:
            if captures[r % GRAPHS] is not None:
                times[key].append(bench_ms(captures[r % GRAPHS].replay, warmup=5, rep=10))
    return {key: statistics.median(v) if v else float("nan") for key, v in times.items()}


_FAILURES: set[str] = set()


# Linears whose activation pass is timed with them, as (name, input width K, output widths of the stacked members).
LINEARS = [("llada q/k/v/o", 4096, [4096]), ("llada down", 12288, [4096]), ("dream q/o", 3584, [3584]),
           ("dream down", 18944, [3584]), ("dream q+k+v", 3584, [3584, 512, 512])]


def act_traffic(m: int, k: int) -> int:
    """Compulsory bytes of the activation pass over m tokens of width k: bf16 in, int8 codes and fp32 scales out."""
    return 3 * m * k + 4 * m


def kronecker_factors_seeded(k: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Random orthogonal Kronecker factors (`kronecker_factors(k)` sizes, seeds 1 and 2) for a k-wide input, on the
    GPU as `dtype`: the transform every benchmark of the activation pass uses."""
    n1, n2 = kronecker_factors(k)
    return (random_orthogonal(n1, torch.Generator().manual_seed(1)).to("cuda", dtype),
            random_orthogonal(n2, torch.Generator().manual_seed(2)).to("cuda", dtype))


def stacked_weights(widths: list[int], k: int, gen: torch.Generator):
    """A stack of random weights (`widths` rows each, k wide) as the W4A4 linear holds it, packed INT4 codes per
    member and their per-channel scales concatenated, plus a bf16 weight of the whole stack for cuBLAS."""
    packed, scales = [], []
    for width in widths:
        codes, member_scales = kernels.quantize_weight(torch.randn(width, k, device="cuda", generator=gen), bits=4)
        packed.append(kernels.pack_weight_for_gemm(codes))
        scales.append(member_scales.reshape(-1))
    w_bf16 = torch.randn(sum(widths), k, device="cuda", generator=gen).to(torch.bfloat16)
    return packed, torch.cat(scales), w_bf16


_copies: dict[tuple[int, str], float] = {}


def memcpy_tbps(traffic: int = 2 * 256 * 2 ** 20) -> float:
    """TB/s of a device-to-device copy moving `traffic` bytes, read + written (by default 256 MiB copied: a 16384 x
    4096 bf16 activation, twice; the values do not matter to a copy), timed once per size and flush in a run (shapes
    of one width and token count move the same bytes). Launched directly: its host time is negligible, and a
    CUDA-graph replay of a 1 GiB copy measured only 2.43 TB/s on H100 against 3.0 for this (a copy captured in a
    graph becomes a memcpy node, probably the reason). L2 is flushed the `FLUSH` way (`bench_ms`)."""
    if (traffic, FLUSH) not in _copies:
        src = torch.empty(max(traffic // 8, 1), device="cuda")
        dst = torch.empty_like(src)
        ms = bench_ms(lambda: dst.copy_(src), warmup=10, rep=40)
        _copies[traffic, FLUSH] = 2 * src.numel() * 4 / ms / 1e9
    return _copies[traffic, FLUSH]


class _Log(list):
    """Check results, printed as they come (a later failure keeps what was found)."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


def designs() -> list[str]:
    """The W4A4 GEMM designs this GPU runs (`gemm.w4a4_design` picks among them per shape)."""
    regs = gemm.gemm_regs is not None and gemm.gemm_regs.supported(torch.device("cuda"))
    return ["unpack", *(gemm.REGS_DESIGNS if regs else [])]


@contextlib.contextmanager
def forced_design(design: str):
    """Every W4A4 GEMM inside runs `design` (`gemm.W4A4_DESIGN`), back to the per-shape choice afterwards."""
    gemm.W4A4_DESIGN = design
    try:
        yield
    finally:
        gemm.W4A4_DESIGN = None


def _check_gemm(gen: torch.Generator, lines: list[str], design: str) -> None:
    """One W4A4 GEMM design: exact integers on random and worst-case data at the longest K, the epilogue."""
    m, n, k = 512, 384, 18944
    dev = "cuda"
    a = torch.randint(-128, 128, (m, k), device=dev, generator=gen, dtype=torch.int8)
    w = torch.randint(-8, 8, (n, k), device=dev, generator=gen, dtype=torch.int8)
    packed = kernels.pack_weight_for_gemm(w)
    ok_unpack = torch.equal(gemm.unpack_weight_int8(packed)[:, :k], w)
    # Random sums stay far below 2^24, so the fp32 output of unit scales is the int32 accumulator itself.
    got = gemm.w4a4_matmul(a, torch.ones(m, 1, device=dev), packed, torch.ones(n, device=dev), None, torch.float32)
    ok_random = torch.equal(got.double(), gemm_reference.int_matmul_exact(a, w).double())
    worst = []
    for av, wv in ((-8, -8), (8, -8)):
        aw = torch.full((256, k), av, device=dev, dtype=torch.int8)
        ww = kernels.pack_weight_for_gemm(torch.full((256, k), wv, device=dev, dtype=torch.int8))
        out = gemm.w4a4_matmul(aw, torch.ones(256, 1, device=dev), ww, torch.ones(256, device=dev), None,
                               torch.float32)
        worst.append(bool((out == av * wv * k).all()))
    lines.append(f"{design}: unpack pass exact: {ok_unpack}; GEMM exact: random int8 x int4, K={k}: {ok_random}; "
                 f"worst case +64/-64 x {k}: {worst}")
    if not (ok_unpack and ok_random and all(worst)):
        raise SystemExit(f"FAIL: integer GEMM ({design}) not exact")
    sa, sw = torch.rand(m, 1, device=dev, generator=gen), torch.rand(n, device=dev, generator=gen)
    bias = torch.randn(n, device=dev, generator=gen)
    got = gemm.w4a4_matmul(a, sa, packed, sw, bias, torch.bfloat16).float()
    want = gemm_reference.w4a4_matmul(a.cpu(), sa.cpu(), packed.cpu(), sw.cpu(), bias.cpu(), torch.bfloat16)
    want = want.float().to(dev)
    rel = ((got - want).abs() / want.abs().clamp_min(1e-3)).max().item()
    lines.append(f"{design}: epilogue bf16 vs reference: max rel diff {rel:.2e} (1 bf16 ulp = 7.8e-3); "
                 f"exact elements {(got == want).float().mean().item():.4f}")


def check_correctness(gen: torch.Generator) -> list[str]:
    """Exact integers on random and worst-case data at the longest K; epilogue and activation path vs the reference
    run on the CPU (the specification: torch's CUDA division by a scalar multiplies by its reciprocal)."""
    lines = _Log()
    for design in designs():
        with forced_design(design):
            _check_gemm(gen, lines, design)
    for kx in (4096, 3584, 12288, 18944):
        try:
            _check_act(kx, gen, lines)
        except Exception as error:  # noqa: BLE001  (keep the GEMM results; the table shows NaN for this path)
            lines.append(f"act quant K={kx}: FAILED {type(error).__name__}: {str(error)[:300]}")
    return lines


def _check_act(kx: int, gen: torch.Generator, lines: list[str]) -> None:
    """quantize_act_packed at width kx (FlatQuant factors, fp32 and bf16) against the CPU reference."""
    dev = "cuda"
    n1, n2 = kronecker_factors(kx)
    x = torch.randn(2048, kx, device=dev, generator=gen).to(torch.bfloat16)
    left, right = kronecker_factors_seeded(kx)
    want_c, want_s = (t.to(dev) for t in gemm_reference.quantize_act_packed(x.cpu(), None, left.cpu(),
                                                                           right.cpu(), None, 4))
    for dtype in (torch.float32, torch.bfloat16):
        c, s = gemm.quantize_act_packed(x, None, left.to(dtype), right.to(dtype), None, 4)
        lines.append(f"act quant K={kx} ({n1}x{n2}, factors {str(dtype)[6:]}, fused="
                     f"{gemm.fused_transform_supported(n1, n2, dtype)}): codes differing "
                     f"{(c != want_c).float().mean():.2e}, "
                     f"max |diff| {(c.int() - want_c.int()).abs().max().item()}, scale rel err "
                     f"{(s / want_s - 1).abs().max().item():.1e}")
    c, s = gemm.quantize_act_packed(x, None, None, None, None, 4)
    ref_c, ref_s = (t.to(dev) for t in gemm_reference.quantize_act_packed(x.cpu(), None, None, None, None, 4))
    lines.append(f"act quant K={kx} no transform: bit-exact {torch.equal(c, ref_c) and torch.equal(s, ref_s)}")
    gate = torch.randn(2048, kx, device=dev, generator=gen).to(torch.bfloat16)
    bf16_factors = (left.to(torch.bfloat16), right.to(torch.bfloat16))
    for name, factors in (("bf16 factors", bf16_factors), ("none", (None, None))):
        c, s = gemm.quantize_swiglu_packed(gate, x, None, *factors, None, 4)
        want_c, want_s = (t.to(dev) for t in gemm_reference.quantize_swiglu_packed(
            gate.cpu(), x.cpu(), None, *(None if f is None else f.float().cpu() for f in factors), None, 4))
        lines.append(f"swiglu act quant K={kx} ({name}): codes differing {(c != want_c).float().mean():.2e}, "
                     f"max |diff| {(c.int() - want_c.int()).abs().max().item()}, scale rel err "
                     f"{(s / want_s - 1).abs().max().item():.1e}")


def fp8_scaled_mm(a_bf16: torch.Tensor, w_bf16: torch.Tensor):
    """FP8 e4m3 `_scaled_mm` with row-wise scales (falls back to tensor-wise); returns a thunk."""
    fp8 = torch.float8_e4m3fn
    sa = a_bf16.float().abs().amax(1, keepdim=True) / 448
    sw = w_bf16.float().abs().amax(1, keepdim=True).t() / 448
    a8 = (a_bf16.float() / sa).to(fp8)
    w8t = (w_bf16.float() / sw.t()).to(fp8).t()  # column-major [K, N]
    try:
        torch._scaled_mm(a8, w8t, scale_a=sa, scale_b=sw, out_dtype=torch.bfloat16)
        return lambda: torch._scaled_mm(a8, w8t, scale_a=sa, scale_b=sw, out_dtype=torch.bfloat16), "rowwise"
    except RuntimeError:
        one = torch.ones((), device=a_bf16.device)
        return lambda: torch._scaled_mm(a8, w8t, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), "tensorwise"


def bench_shape(model, role, k, n, m, gen) -> dict:
    dev = "cuda"
    x = torch.randn(m, k, device=dev, generator=gen).to(torch.bfloat16)
    w = (torch.randn(n, k, device=dev, generator=gen) / k ** 0.5).to(torch.bfloat16)
    w_codes, w_scales = kernels.quantize_weight(w.float(), bits=4)
    w_scales = w_scales.reshape(-1)
    packed = kernels.pack_weight_for_gemm(w_codes)
    n1, n2 = kronecker_factors(k)
    left, right = kronecker_factors_seeded(k)
    a_codes, a_scales = gemm_reference.quantize_act_packed(x, None, None, None, None, 4)  # GEMM input, any path
    a_i8_full = torch.randint(-128, 128, (m, k), device=dev, generator=gen, dtype=torch.int8)
    w_i8_colmajor = torch.randint(-128, 128, (n, k), device=dev, generator=gen, dtype=torch.int8).t()
    fp8_fn, fp8_mode = fp8_scaled_mm(x, w)

    unpacked = gemm.unpack_weight_int8(packed)

    def w4a4_gemm():
        return gemm.w4a4_matmul(a_codes, a_scales, packed, w_scales, None, torch.bfloat16)

    def forced(design):  # at capture: the graph replays that design's kernels
        def run():
            with forced_design(design):
                return w4a4_gemm()
        return run

    fns = {"bf16": lambda: F.linear(x, w), "int_mm": lambda: torch._int_mm(a_i8_full, w_i8_colmajor), "fp8": fp8_fn,
           "w4a4_gemm": w4a4_gemm, "w4a4_unpack": forced("unpack"),
           **{f"w4a4_{design}": forced(design) for design in designs()[1:]},
           "int8_gemm": lambda: gemm.int8_gemm(a_codes, a_scales, unpacked, w_scales, None, torch.bfloat16),
           "unpack_us": lambda: gemm.unpack_weight_int8(packed),
           "act_none": lambda: gemm.quantize_act_packed(x, None, None, None, None, 4)}
    for tag, dtype in (("tf32", torch.float32), ("bf16", torch.bfloat16)):
        lf, rf = left.to(dtype), right.to(dtype)
        fns[f"act_{tag}"] = lambda lf=lf, rf=rf: gemm.quantize_act_packed(x, None, lf, rf, None, 4)

        def linear(lf=lf, rf=rf):
            c, s = gemm.quantize_act_packed(x, None, lf, rf, None, 4)
            return gemm.w4a4_matmul(c, s, packed, w_scales, None, torch.bfloat16)

        fns[f"w4a4_linear_{tag}"] = linear
    t = interleaved_ms(fns)
    t["unpack_us"] *= 1e3
    design = gemm.w4a4_design(a_codes, a_scales, [packed], w_scales, None, torch.bfloat16)
    timing_only = {key for key in t if key.startswith("act") or key == "unpack_us"}
    flops = 2 * m * n * k
    act_bytes = act_traffic(m, k)
    design_ms = gemm.DESIGN_TIMES.get(gemm.design_key(a_codes, [packed], None, torch.bfloat16), {})
    rec = {"model": model, "role": role, "M": m, "N": n, "K": k, "kron": f"{n1}x{n2}", "design": design,
           "design_ms": design_ms,
           "fused_transform_bf16": gemm.fused_transform_supported(n1, n2, torch.bfloat16),
           "fused_transform_fp32": gemm.fused_transform_supported(n1, n2, torch.float32), "fp8_scaling": fp8_mode,
           "ms": t, "tops": {key: flops / v / 1e9 for key, v in t.items() if key not in timing_only},
           "act_tbps": {key: act_bytes / v / 1e9 for key, v in t.items() if key.startswith("act")},
           # A copy of the activation pass's own traffic: a fixed cost per call, which the 256 MiB copy spreads
           # thin, weighs on both at a few thousand tokens (~50 MB moved at 4096 tokens and K = 4096).
           "same_bytes_copy_tbps": memcpy_tbps(act_bytes)}
    rec["vs_bf16"] = {key: t["bf16"] / v for key, v in t.items() if key not in timing_only}
    return rec


def table(records: list[dict], copy_tbps: float) -> str:
    cols = ["bf16", "int_mm", "fp8", "w4a4_gemm", "w4a4_unpack", *(f"w4a4_{d}" for d in designs()[1:]), "int8_gemm",
            "w4a4_linear_tf32", "w4a4_linear_bf16"]
    head = "| model | role | M | N | K | design | " + " | ".join(f"{c} TOPS (×bf16)" for c in cols) + \
           " | act quant TB/s tf32 / bf16 / none (bf16: ×memcpy, ×copy of the same bytes) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        cells = [f"{r['tops'][c]:.0f} ({r['vs_bf16'][c]:.2f})" for c in cols]
        act = " / ".join(f"{r['act_tbps'][f'act_{tag}']:.2f}" for tag in ("tf32", "bf16", "none"))
        bf16 = r["act_tbps"]["act_bf16"]
        act += f" ({bf16 / copy_tbps:.2f}, {bf16 / r['same_bytes_copy_tbps']:.2f})"
        lines.append(f"| {r['model']} | {r['role']} | {r['M']} | {r['N']} | {r['K']} | {r['design']} | " +
                     " | ".join(cells) +
                     f" | {act} |")
    return "\n".join(lines)


def main() -> None:
    global FLUSH
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--ms", default="256,1024,4096,16384")
    parser.add_argument("--flush", choices=("dirty", "clean"), default=FLUSH,
                        help="how L2 is emptied before each timed call: zeroing a 256 MiB buffer (do_bench's way; "
                             "the timed call writes the dirty lines back) or reading it (bench_ms)")
    parser.add_argument("--only", default="",
                        help="comma-separated substrings of 'model role' (e.g. 'stacked,dream-7b down'): only the "
                             "shapes that contain one of them")
    args = parser.parse_args()
    FLUSH = args.flush
    try:
        shapes = select_shapes(args.only)
    except ValueError as error:
        sys.exit(f"bench_gemm_gpu: {error}")
    if not torch.cuda.is_available():
        sys.exit("bench_gemm_gpu: needs a CUDA GPU")
    gen = torch.Generator(device="cuda").manual_seed(0)
    started = time.time()
    checks = check_correctness(gen)
    copy_tbps = memcpy_tbps()
    records = []
    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "cuda": torch.version.cuda, "python": platform.python_version(), "memcpy_tbps": copy_tbps, "flush": FLUSH,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    os.makedirs(args.out, exist_ok=True)
    path = Path(args.out) / "bench_gemm.json"
    for model, role, k, n in shapes:
        for m in map(int, args.ms.split(",")):
            records.append(bench_shape(model, role, k, n, m, gen))
            r = records[-1]
            act = r["act_tbps"]["act_bf16"]
            print(f"{model} {role} M={m}: " + ", ".join(f"{key} {v:.2f}" for key, v in r["vs_bf16"].items()) +
                  f"; design {r['design']} from ms " + ", ".join(f"{d} {v:.4f}" for d, v in r["design_ms"].items()) +
                  f"; act bf16 {act:.2f} TB/s = {act / copy_tbps:.2f}x memcpy, "
                  f"{act / r['same_bytes_copy_tbps']:.2f}x a copy of its bytes", flush=True)
            # After every shape, atomically: a run cut short keeps what it measured.
            env["seconds"] = time.time() - started
            write_json(path, {"env": env, "checks": checks, "records": records})
    print(f"\n{env}\nmemcpy {copy_tbps:.2f} TB/s (read + write)\n")
    print(table(records, copy_tbps))


if __name__ == "__main__":
    main()

"""Experiment (issue 5): what the L2 flush in front of each timed call costs a memory-bound kernel.

`triton.testing.do_bench` flushes L2 by zeroing a 256 MiB buffer before every repetition, which leaves L2 full of
dirty lines: the timed call then pays for writing them back as it evicts them (up to L2's 50 MiB on H100, ~17 us at
3 TB/s). Over a 16384-token activation that is noise; at 4096 tokens it may be the ~8 us "fixed cost per call" the
activation pass showed (BENCHMARKS.md, 2026-12-07). Each contender (captured in a CUDA graph but the copy) is timed
after three kinds of flush, taken in turns: `dirty` (do_bench's zeroing), `clean` (reading the same buffer: L2 left
holding clean lines; `bench_gemm_gpu.l2_flush`) and `none` (a spin on the GPU instead: inputs that fit L2 stay
there). Contenders: the activation pass (`quantize_act_packed`, bf16 Kronecker factors) against a copy of its
compulsory bytes, and at 4096 tokens the W4A4 linear (activation pass + W4A4 GEMM, register design) against cuBLAS
bf16. Found (H100, 2026-12-07 07:04 UTC, BENCHMARKS.md): `dirty` adds 3-5 us to the pass and to the copy alike at
4096 tokens; against the copy the pass runs 0.74-0.87x at K = 3584 and 4096 under every flush, so most of that
"fixed cost" is one a copy of the same bytes pays too; the linears' ratios move by at most 0.05. Run from the repo root:

    python benchmarks/explore_flush_gpu.py [--tokens 1024,4096,16384]   # writes flush.json to $OUT or .
"""
import argparse
import json
import os
import random
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gemm_gpu import (LINEARS, act_traffic, captured, kronecker_factors_seeded, l2_flush,  # noqa: E402
                            stacked_weights)

from faircalib.atomic import write_json  # noqa: E402
from faircalib.kernels import gemm  # noqa: E402

WIDTHS = (3584, 4096, 12288, 18944)
REPS = 40


def timed_in_turns(thunks: dict, flush: dict) -> dict:
    """Median µs of each thunk after each flush, the (thunk, flush) pairs taken in shuffled turns; None thunks
    (a capture that failed: `captured` printed why) left out."""
    thunks = {name: fn for name, fn in thunks.items() if fn is not None}
    pairs = [(name, f) for name in thunks for f in flush]
    times = {pair: [] for pair in pairs}
    shuffle = random.Random(0).shuffle
    for fn in thunks.values():
        for _ in range(5):
            fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(REPS):
        shuffle(pairs)
        for name, f in pairs:
            flush[f]()
            start.record()
            thunks[name]()
            end.record()
            end.synchronize()
            times[name, f].append(start.elapsed_time(end) * 1e3)
    return {f"{name}/{f}": statistics.median(v) for (name, f), v in times.items()}


def replay(graph):
    return None if graph is None else graph.replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="1024,4096,16384")
    token_counts = [int(v) for v in parser.parse_args().tokens.split(",")]
    if not torch.cuda.is_available():
        sys.exit("explore_flush_gpu: needs a CUDA GPU")
    out_path = Path(os.environ.get("OUT", ".")) / "flush.json"
    gen = torch.Generator(device="cuda").manual_seed(0)
    # "none" spins instead (no memory traffic), so that, as behind a flush, the timed call is queued before the GPU
    # reaches it and its launch latency stays out of the time.
    flush = {"dirty": l2_flush("dirty"), "clean": l2_flush("clean"), "none": lambda: torch.cuda._sleep(100_000)}
    records = []

    def record(rec: dict) -> None:
        records.append(rec)
        print(json.dumps(rec), flush=True)
        write_json(out_path, records)

    for k in WIDTHS:
        left, right = kronecker_factors_seeded(k, torch.bfloat16)
        for m in token_counts:
            x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
            traffic = act_traffic(m, k)
            src = torch.empty(traffic // 4, dtype=torch.int16, device="cuda")  # read + written = traffic bytes
            dst = torch.empty_like(src)
            # The copy launched directly: captured in a graph it becomes a memcpy node, slower (`memcpy_tbps`).
            us = timed_in_turns({"act": replay(captured(lambda: gemm.quantize_act_packed(x, None, left, right, None,
                                                                                          4))),
                                 "copy": lambda: dst.copy_(src)}, flush)
            rec = {"K": k, "M": m, "us": us}
            if len(us) == 2 * len(flush):
                rec["act_x_copy"] = {f: us[f"copy/{f}"] / us[f"act/{f}"] for f in flush}
                rec["act_tbps"] = {f: traffic / us[f"act/{f}"] / 1e6 for f in flush}
            record(rec)
    # The register design `gemm.w4a4_design` picks for these shapes (BENCHMARKS.md, 2026-12-07), forced: choosing
    # would autotune the unpack design's INT8 GEMM too, a minute of compiles.
    gemm.W4A4_DESIGN = "regs:4:4:128" if gemm.gemm_regs is not None else "unpack"
    for name, k, widths in LINEARS:
        packed, w_scales, w_bf16 = stacked_weights(widths, k, gen)
        left, right = kronecker_factors_seeded(k, torch.bfloat16)
        x = torch.randn(4096, k, device="cuda", generator=gen).to(torch.bfloat16)

        def linear():
            c, s = gemm.quantize_act_packed(x, None, left, right, None, 4)
            return gemm.w4a4_matmul_stacked(c, s, packed, w_scales, None, torch.bfloat16)

        us = timed_in_turns({"w4a4": replay(captured(linear)), "bf16": replay(captured(lambda: F.linear(x, w_bf16)))},
                            flush)
        rec = {"linear": name, "M": 4096, "N": sum(widths), "K": k, "us": us}
        if len(us) == 2 * len(flush):
            rec["w4a4_x_bf16"] = {f: us[f"bf16/{f}"] / us[f"w4a4/{f}"] for f in flush}
        record(rec)


if __name__ == "__main__":
    main()

"""Quantization (and, when present, calibration-loss) kernels vs a device-to-device copy, PyTorch eager and
torch.compile of the reference, at LLaDA-8B / Dream-7B shapes, all measured in one run on one GPU.

    python benchmarks/bench_kernels_gpu.py [--out DIR] [--sweep] [--baselines all|eager|none] [--ops all|quant]

Bandwidth counts compulsory bytes only (each input read once, each output written once; bf16 data, int8 codes,
fp32 per-row scales). memcpy is `dst.copy_(src)` of a buffer as large as the op's main input, bytes read + written.
Every op is first checked on the GPU against the reference (codes/scales/outputs bit-exact, gradients to fp32
tolerance); a failed check is reported in the table, never timed silently.

Timing: each measured call is captured in a CUDA graph, rotating over enough input copies that they do not fit in
L2 (50 MB), and the graph is replayed; the median replay time over calls is reported. Launch overhead and L2 reuse
stay out of the numbers for every contender alike (ours, eager, compiled, memcpy).
`--sweep` first times a few launch configurations of the quantization kernels and keeps the best.
Writes `bench_kernels.json` to DIR (default $OUT or .) and prints a markdown table last.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import statistics
import sys
from pathlib import Path

import torch
import triton

import faircalib.kernels as K
from faircalib.atomic import write_json
from faircalib.kernels import quant, quant_reference, registry

ACT_SHAPES = [(16384, 3584), (16384, 4096), (16384, 12288), (16384, 18944)]
WEIGHT_SHAPES = [(4096, 4096), (12288, 4096), (4096, 12288), (3584, 18944), (18944, 3584)]
SWEEP = [quant.LaunchConfig(), quant.LaunchConfig(warp_elements=256), quant.LaunchConfig(warp_elements=1024),
         quant.LaunchConfig(tile=2048, max_block_m=4, max_block_n=2048)]
L2_BYTES = 50 * 2 ** 20
CALLS_PER_GRAPH = 12
DTYPE = torch.bfloat16


def graph_ms(make_call, input_bytes: int) -> float:
    """Median ms per call. `make_call(i)` returns a closure over input copy i; copies rotate so that together they
    exceed 4x L2. The calls are captured in one CUDA graph and replayed."""
    copies = max(1, min(CALLS_PER_GRAPH, math.ceil(4 * L2_BYTES / max(input_bytes, 1))))
    calls = [make_call(i) for i in range(copies)]
    calls = [calls[i % copies] for i in range(CALLS_PER_GRAPH)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls[:copies]:
            call()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    times = []
    for _ in range(8):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(calls))
    del graph
    return statistics.median(times[2:])


def rotating(fn, *tensors):
    """make_call for graph_ms: fn over the i-th copy of each tensor (copies made lazily, as many as asked)."""
    pools: list[list[torch.Tensor]] = [[t] for t in tensors]

    def make_call(i):
        for pool, t in zip(pools, tensors):
            while len(pool) <= i:
                pool.append(t.clone())
        args = [pool[i] for pool in pools]
        return lambda: fn(*args)
    return make_call


def memcpy_gbps(nbytes: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = graph_ms(rotating(lambda s: dst.copy_(s), src), nbytes)
    return 2 * nbytes / ms / 1e6


@dataclasses.dataclass
class Case:
    """One op at one shape: `ours` (Triton through the public op), the reference for eager/compile, the bytes."""
    op: str
    shape: tuple[int, int]
    nbytes: int
    input_bytes: int
    ours: object
    reference: object
    inputs: tuple
    check: object


def exact(a, b) -> bool:
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return all(torch.equal(torch.nan_to_num(x.float()), torch.nan_to_num(y.float())) for x, y in zip(a, b))


def grads_close(a, b) -> bool:
    return torch.equal(a[0], b[0]) and all(torch.allclose(x.float(), y.float(), rtol=1e-3, atol=1e-3 * y.abs().max())
                                           for x, y in zip(a[1:], b[1:]))


def quant_cases(gen: torch.Generator) -> list[Case]:
    cases = []
    for m, k in ACT_SHAPES:
        x = torch.randn(m, k, device="cuda", generator=gen).to(DTYPE)
        g = torch.randn(m, k, device="cuda", generator=gen).to(DTYPE)
        clip = torch.full((m, 1), 0.9, device="cuda")
        mk2 = m * k * 2
        cases += [
            Case("fake_quant_act fwd", (m, k), 2 * mk2, mk2, lambda x, c: K.fake_quant_act(x, 4, c),
                 lambda x, c: quant_reference.fake_quant_act(x, c, 4), (x, clip), exact),
            Case("fake_quant_act bwd", (m, k), 3 * mk2, 2 * mk2,
                 lambda g, x, c: torch.ops.faircalib.fake_quant_act_backward(g, x, c, 4),
                 lambda g, x, c: quant_reference.fake_quant_act_backward(g, x, c, 4), (g, x, clip), grads_close),
            Case("quantize_act", (m, k), mk2 + m * k + 4 * m, mk2, lambda x: K.quantize_act(x, 4),
                 lambda x: quant_reference.quantize_act(x, 4), (x,), exact),
        ]
    for n, k in WEIGHT_SHAPES:
        w = torch.randn(n, k, device="cuda", generator=gen).to(DTYPE)
        g = torch.randn(n, k, device="cuda", generator=gen).to(DTYPE)
        clip = torch.full((n, 1), 0.9, device="cuda")
        nk2 = n * k * 2
        cases += [
            Case("fake_quant_weight fwd", (n, k), 2 * nk2, nk2, lambda w, c: K.fake_quant_weight(w, 4, -1, True, c),
                 lambda w, c: quant_reference.fake_quant_weight(w, c, c, 4, -1, True), (w, clip), exact),
            Case("fake_quant_weight bwd", (n, k), 3 * nk2, 2 * nk2,
                 lambda g, w, c: torch.ops.faircalib.fake_quant_weight_backward(g, w, c, c, 4, -1, True),
                 lambda g, w, c: quant_reference.fake_quant_weight_backward(g, w, c, c, 4, -1, True),
                 (g, w, clip), grads_close),
            Case("quantize_weight g128 asym", (n, k), nk2 + n * k + 5 * n * k // 128, nk2,
                 lambda w: K.quantize_weight(w, 4, 128, False),
                 lambda w: quant_reference.quantize_weight(w, 4, 128, False), (w,), exact),
        ]
    return cases


def loss_cases(gen: torch.Generator) -> list[Case]:
    """weighted_mse fwd/bwd and clip_search(16 ratios), when the loss kernels exist (import guarded)."""
    try:
        from faircalib.kernels import loss, loss_reference  # noqa: F401  (registers the Triton loss kernels)
    except ImportError as error:
        print(f"loss kernels not benchmarked: {error}", flush=True)
        return []
    dev = torch.device("cuda")
    cases = []
    for m, k in ACT_SHAPES:
        a = torch.randn(m, k, device=dev, generator=gen).to(DTYPE)
        b = torch.randn(m, k, device=dev, generator=gen).to(DTYPE)
        weights = torch.rand(m, device=dev, generator=gen)
        grad = torch.ones((), device=dev)
        ratios = torch.linspace(0.55, 1.0, 16, device=dev)
        mk2 = m * k * 2
        with K.use_backend("triton"):
            mse, mse_bwd, search = (registry.implementation(op, dev)
                                    for op in ("weighted_mse", "weighted_mse_backward", "clip_search"))
        cases += [
            Case("weighted_mse fwd", (m, k), 2 * mk2, 2 * mk2, lambda a, b, w: mse(a, b, w, "sum"),
                 lambda a, b, w: loss_reference.weighted_mse(a, b, w, "sum"), (a, b, weights),
                 lambda x, y: torch.allclose(x, y, rtol=1e-4)),
            Case("weighted_mse bwd", (m, k), 3 * mk2, 2 * mk2, lambda a, b, w: mse_bwd(grad, a, b, w),
                 lambda a, b, w: loss_reference.weighted_mse_backward(grad, a, b, w), (a, b, weights),
                 lambda x, y: torch.allclose(x.float(), y.float(), rtol=1e-2, atol=1e-2)),
            Case("clip_search x16", (m, k), mk2, mk2, lambda x, w: search(x, ratios, 4, w, -1, "sum"),
                 lambda x, w: loss_reference.clip_search(x, ratios, 4, w, -1, "sum"), (a, weights),
                 lambda x, y: torch.allclose(x, y, rtol=1e-3)),
        ]
    return cases


def compiled(fn):
    return torch.compile(fn, dynamic=False)


def measure(case: Case, copy_gbps: float, baselines: str) -> dict:
    row = {"op": case.op, "shape": list(case.shape), "bytes": case.nbytes, "memcpy_GBps": copy_gbps}
    with K.use_backend("triton"):
        ours = case.ours(*case.inputs)
    row["check"] = bool(case.check(ours, case.reference(*case.inputs)))
    del ours
    contenders = [("triton", case.ours)]
    if baselines != "none":
        contenders.append(("eager", case.reference))
    if baselines == "all":
        contenders.append(("compile", compiled(case.reference)))
    for name, fn in contenders:
        try:
            with K.use_backend("triton"):
                ms = graph_ms(rotating(fn, *case.inputs), case.input_bytes)
            row[f"{name}_us"] = ms * 1e3
            row[f"{name}_GBps"] = case.nbytes / ms / 1e6
        except Exception as error:  # a baseline that cannot run is reported, not fatal
            row[f"{name}_error"] = f"{type(error).__name__}: {str(error)[:200]}"
        torch.cuda.empty_cache()
    print(json.dumps(row), flush=True)
    return row


def sweep(cases: list[Case]) -> quant.LaunchConfig:
    """Time the Triton quantization kernels under each SWEEP config on a few shapes; keep the fastest overall."""
    shapes = {ACT_SHAPES[1], ACT_SHAPES[-1], WEIGHT_SHAPES[0], WEIGHT_SHAPES[-1]}
    picked = [c for c in cases if c.shape in shapes and c.op.startswith(("fake_quant", "quantize_weight"))]
    best, best_score = quant.LAUNCH, -1.0
    for config in SWEEP:
        quant.LAUNCH = config
        with K.use_backend("triton"):
            gbps = [c.nbytes / graph_ms(rotating(c.ours, *c.inputs), c.input_bytes) / 1e6 for c in picked]
        score = math.exp(sum(math.log(v) for v in gbps) / len(gbps))
        print(f"sweep {config}: geomean {score:.0f} GB/s " + " ".join(f"{v:.0f}" for v in gbps), flush=True)
        if score > best_score:
            best, best_score = config, score
    quant.LAUNCH = best
    print(f"sweep picked {best}", flush=True)
    return best


def table(rows: list[dict]) -> str:
    lines = ["| op | shape | check | ours µs | ours GB/s | % memcpy | eager GB/s | compile GB/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def gbps(name):
            return f"{r[name + '_GBps']:.0f}" if name + "_GBps" in r else "err" if name + "_error" in r else "-"
        pct = f"{100 * r['triton_GBps'] / r['memcpy_GBps']:.0f}%" if "triton_GBps" in r else "-"
        check = "ok" if r["check"] else "FAIL"
        ours_us = f"{r['triton_us']:.1f}" if "triton_us" in r else "err"
        lines.append(f"| {r['op']} | {r['shape'][0]}x{r['shape'][1]} | {check} | {ours_us} "
                     f"| {gbps('triton')} | {pct} | {gbps('eager')} | {gbps('compile')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--sweep", action="store_true", help="tune the quantization kernels' launch config first")
    parser.add_argument("--baselines", choices=("all", "eager", "none"), default="all",
                        help="reference contenders to time: eager and torch.compile, eager only, or none")
    parser.add_argument("--ops", choices=("all", "quant"), default="all", help="quant: skip the loss kernels")
    args = parser.parse_args()
    for knob in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 256)
    gen = torch.Generator(device="cuda").manual_seed(0)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    print(json.dumps(meta), flush=True)
    cases = quant_cases(gen) + (loss_cases(gen) if args.ops == "all" else [])
    if args.sweep:
        meta["launch_config"] = dataclasses.asdict(sweep(cases))
    copy_gbps = {}
    rows = []
    for case in cases:
        if case.input_bytes not in copy_gbps:
            copy_gbps[case.input_bytes] = memcpy_gbps(case.input_bytes)
        try:
            rows.append(measure(case, copy_gbps[case.input_bytes], args.baselines))
        except Exception as error:  # one broken op must not hide the others' numbers
            rows.append({"op": case.op, "shape": list(case.shape), "check": False,
                         "error": f"{type(error).__name__}: {str(error)[:300]}"})
            print(json.dumps(rows[-1]), flush=True)
        write_json(Path(args.out) / "bench_kernels.json", {"meta": meta, "rows": rows}, indent=1)
    print(table(rows))
    print(clip_search_cost(rows))


def clip_search_cost(rows: list[dict]) -> str:
    """clip_search over 16 ratios against one fake_quant_act forward pass at the same shape (target <= 2x)."""
    fwd = {tuple(r["shape"]): r["triton_us"] for r in rows if r["op"] == "fake_quant_act fwd" and "triton_us" in r}
    return "\n".join(f"clip_search x16 / fake_quant_act fwd at {r['shape'][0]}x{r['shape'][1]}: "
                     f"{r['triton_us'] / fwd[tuple(r['shape'])]:.2f}x"
                     for r in rows if r["op"] == "clip_search x16" and "triton_us" in r and tuple(r["shape"]) in fwd)


if __name__ == "__main__":
    main()

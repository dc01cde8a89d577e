"""Experiment (issue 5): does programmatic dependent launch (`kernels/pdl.py`) speed up the W4A4 linear?

The linear is two kernels back to back, the activation pass and the W4A4 GEMM (register design `regs:4:4:128`,
forced: choosing would autotune the unpack design too). With PDL the GEMM launches under the activation pass's last
programs and waits for it on the GPU, instead of starting after it ends. Per linear of `bench_gemm_gpu.LINEARS`
and token count, two CUDA graphs, captured with PDL off and on, are checked equal bit for bit and timed in turns
(`explore_flush_gpu.timed_in_turns`) after a clean L2 flush and after none, against cuBLAS bf16 in the same turns.
Also a chain of the five linears in one graph (the step's shape of the problem: each activation pass then starts
under the previous GEMM). Run from the repo root:

    python benchmarks/explore_pdl_gpu.py [4096,1024]   # writes pdl.json to $OUT or .
"""
import gc
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gemm_gpu import LINEARS, captured, kronecker_factors_seeded, l2_flush, stacked_weights  # noqa: E402
from explore_flush_gpu import replay, timed_in_turns  # noqa: E402

from faircalib.deploy.checkpoint import write_json_atomic  # noqa: E402
from faircalib.kernels import gemm, pdl  # noqa: E402


def linear_of(name: str, k: int, widths: tuple, m: int, gen: torch.Generator):
    """(the W4A4 linear as a thunk, its bf16 counterpart) on fresh random inputs and weights."""
    packed, w_scales, w_bf16 = stacked_weights(widths, k, gen)
    left, right = kronecker_factors_seeded(k, torch.bfloat16)
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)

    def w4a4():
        codes, scales = gemm.quantize_act_packed(x, None, left, right, None, 4)
        return gemm.w4a4_matmul_stacked(codes, scales, packed, w_scales, None, torch.bfloat16)
    return w4a4, lambda: F.linear(x, w_bf16)


def graphs_off_and_on(fn):
    """{"off": graph, "on": graph} of fn captured without and with PDL, and whether their outputs are equal."""
    graphs, outs = {}, {}
    for mode in ("off", "on"):
        pdl.ENABLED = mode == "on"
        fn()  # compiled (the PDL launch option is part of the compiled kernel's key) before capture
        torch.cuda.synchronize()
        gc.collect()  # as `bench_gemm_gpu.captured`: no dead graph may be destroyed during the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs[mode] = fn()
        graph.replay()
        torch.cuda.synchronize()
        graphs[mode] = graph
    pdl.ENABLED = False
    equal = all(torch.equal(a, b) for a, b in zip(outs["off"], outs["on"])) if isinstance(outs["off"], list) \
        else torch.equal(outs["off"], outs["on"])
    return graphs, equal


def main() -> None:
    token_counts = [int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "4096,1024").split(",")]
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0):
        sys.exit("explore_pdl_gpu: needs a Hopper (or later) GPU")
    gemm.W4A4_DESIGN = "regs:4:4:128" if gemm.gemm_regs is not None else "unpack"
    out_path = Path(os.environ.get("OUT", ".")) / "pdl.json"
    gen = torch.Generator(device="cuda").manual_seed(0)
    flush = {"clean": l2_flush("clean"), "none": lambda: torch.cuda._sleep(100_000)}
    records = []
    for m in token_counts:
        chain_w4a4, chain_bf16 = [], []
        for name, k, widths in LINEARS:
            w4a4, bf16 = linear_of(name, k, widths, m, gen)
            chain_w4a4.append(w4a4)
            chain_bf16.append(bf16)
            graphs, equal = graphs_off_and_on(w4a4)
            us = timed_in_turns({"pdl_off": graphs["off"].replay, "pdl_on": graphs["on"].replay,
                                 "bf16": replay(captured(bf16))}, flush)
            records.append({"linear": name, "M": m, "K": k, "N": sum(widths), "equal": equal, "us": us,
                            "on_x_off": {f: us[f"pdl_off/{f}"] / us[f"pdl_on/{f}"] for f in flush},
                            "x_bf16": {f"{mode}/{f}": us[f"bf16/{f}"] / us[f"pdl_{mode}/{f}"]
                                       for mode in ("off", "on") for f in flush if f"bf16/{f}" in us}})
            print(records[-1], flush=True)
            write_json_atomic(out_path, records)
        graphs, equal = graphs_off_and_on(lambda: [fn() for fn in chain_w4a4])
        us = timed_in_turns({"pdl_off": graphs["off"].replay, "pdl_on": graphs["on"].replay,
                             "bf16": replay(captured(lambda: [fn() for fn in chain_bf16]))}, flush)
        records.append({"linear": "chain of " + "+".join(name for name, _, _ in LINEARS), "M": m, "equal": equal,
                        "us": us, "on_x_off": {f: us[f"pdl_off/{f}"] / us[f"pdl_on/{f}"] for f in flush}})
        print(records[-1], flush=True)
        write_json_atomic(out_path, records)


if __name__ == "__main__":
    main()

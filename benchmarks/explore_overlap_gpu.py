"""Experiment (issue 5; BENCHMARKS.md, 2026-12-07): hide the activation pass under the GEMM by chunking the tokens
over two streams. Run from the repo root: `python benchmarks/explore_overlap_gpu.py 4096,16384`; writes overlap.json
to $OUT or ..

Sequential: quantize_act_packed(x) then the register GEMM (regs:4:4:128). Overlapped: a side stream quantizes the
token chunks back to back; the main stream runs chunk i's GEMM once chunk i's codes are ready, so chunk i+1's
activation pass can run beside chunk i's GEMM. Checks the outputs are identical, then times all in CUDA graphs."""
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gemm_gpu import LINEARS, interleaved_ms, kronecker_factors_seeded, stacked_weights  # noqa: E402

from faircalib.atomic import write_json  # noqa: E402
from faircalib.kernels import gemm, gemm_regs  # noqa: E402

CONFIG = (4, 4, 128)


def main():
    ms_list = [int(v) for v in sys.argv[1].split(",")] if len(sys.argv) > 1 else [4096, 16384]
    out_path = Path(os.environ.get("OUT", ".")) / "overlap.json"
    gen = torch.Generator(device="cuda").manual_seed(0)
    side_normal = torch.cuda.Stream()
    side_high = torch.cuda.Stream(priority=-1)
    records = []
    for name, k, widths in LINEARS:
        n = sum(widths)
        packed, w_scales, w_bf16 = stacked_weights(widths, k, gen)
        left, right = kronecker_factors_seeded(k, torch.bfloat16)
        for m in ms_list:
            x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)

            def gemm_into(c, s, out):
                gemm_regs.w4a4_matmul_regs(c, s.reshape(-1), packed, w_scales, None, out, CONFIG)

            def sequential():
                out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
                c, s = gemm.quantize_act_packed(x, None, left, right, None, 4)
                gemm_into(c, s, out)
                return out

            codes_only, scales_only = gemm.quantize_act_packed(x, None, left, right, None, 4)

            def gemm_only():
                out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
                gemm_into(codes_only, scales_only, out)
                return out

            def overlapped(chunks, side):
                def run():
                    main_stream = torch.cuda.current_stream()
                    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
                    rows = -(-m // chunks)
                    side.wait_stream(main_stream)
                    parts, events = [], []
                    with torch.cuda.stream(side):
                        for i in range(chunks):
                            c, s = gemm.quantize_act_packed(x[i * rows:(i + 1) * rows], None, left, right, None, 4)
                            event = torch.cuda.Event()
                            event.record(side)
                            parts.append((c, s))
                            events.append(event)
                    for i, (c, s) in enumerate(parts):
                        main_stream.wait_event(events[i])
                        gemm_into(c, s, out[i * rows:(i + 1) * rows])
                    main_stream.wait_stream(side)
                    return out
                return run

            want = sequential()
            fns = {"bf16": lambda: F.linear(x, w_bf16), "act": lambda: gemm.quantize_act_packed(x, None, left, right,
                                                                                                 None, 4),
                   "gemm": gemm_only, "sequential": sequential}
            same = {}
            for chunks in (2, 4, 8):
                for tag, side in (("", side_normal), ("_hi", side_high)):
                    fn = overlapped(chunks, side)
                    got = fn()
                    torch.cuda.synchronize()
                    same[f"overlap{chunks}{tag}"] = bool(torch.equal(got, want))
                    fns[f"overlap{chunks}{tag}"] = fn
            t = interleaved_ms(fns)
            rec = {"shape": name, "M": m, "N": n, "K": k, "ms": t, "identical": same,
                   "vs_bf16": {key: t["bf16"] / v for key, v in t.items()}}
            records.append(rec)
            print(name, m, "identical:", same, flush=True)
            print("  " + ", ".join(f"{key} {v:.4f} ms ({t['bf16'] / v:.2f}x)" for key, v in t.items()), flush=True)
            write_json(out_path, records)


if __name__ == "__main__":
    main()

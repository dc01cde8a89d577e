"""One denoising step (a full forward pass) of a random-weight LLaDA-8B- (or Dream-7B-) config model, bf16 vs W4A4.

    python benchmarks/bench_e2e_gpu.py [--out DIR] [--tokens 1024,4096] [--variants bf16:shared,fp32:shared]
                                       [--family llada|dream] [--design regs:4:4:128]
    python benchmarks/bench_e2e_gpu.py --generate 512:256:64[:4[:ragged]][,...] [--tokens ''] ...  # generations
    python benchmarks/bench_e2e_gpu.py --tiny-cpu     # reference: generation tokens/s of the tiny models on CPU

bf16: `faircalib.models.build_random("llada", "llada-8b")` on the GPU (`--family dream`: "dream-7b", whose
18944-wide down-projection input takes the split-column activation kernel). W4A4: the same model with every block
linear replaced in place by a `W4A4Linear` (per-channel RTN codes of its weight, a FlatQuant-style online
Kronecker transform with random orthogonal factors and a channel scale per input group); embeddings,
norms, attention and the LM head stay bf16. Reports the median step time over CUDA events, the peak allocated
memory of a step and the bytes of the block linears' weights, and writes `bench_e2e.json` to DIR ($OUT or .), anew
after every run (a process cut short keeps the runs it finished).
Each step is also timed replayed from a CUDA graph (`faircalib.deploy.GraphedLogits`: no Python or launch overhead,
as a fixed-shape denoising loop runs it), and for W4A4 a torch.profiler table lists the kernels of a step.
`--variants`: transform factors in bf16 (bf16 MMA) or fp32 (tf32 MMA; the 96x128 factors of the 12288-wide down
projection input then take the chunked kernel), and q/k/v and gate/up quantizing their shared input once
(`share_model_input_quantization`, as deployed checkpoints load; each such group then runs one GEMM on its stacked
weights, or one per linear with an `:unfused` suffix; gate/up's GEMM forms the SwiGLU in its epilogue, or with a
`:noepilogue` suffix writes gate and up for the SwiGLU after it) or once per linear; a `:swiglu` suffix has the
down projections compute silu(gate)·up inside their activation kernel (`W4A4Linear.fuse_swiglu`), `:unpacked` keeps
int8 copies of the weights (`keep_weights_unpacked`: no unpack pass per call; the block-weight bytes reported are
then the packed weights and the int8 copies), `:int8only` keeps the int8 codes alone (`drop_packed=True`),
`:flattened` lets the INT8 GEMM's autotuner pick only among its flattened-loop configs (as shipped until the
unflattened ones joined; an A/B of that choice within one process), and
`:act.FIELD=VALUE` sets a field of the activation kernels' launch settings (`gemm.ACT_LAUNCH`, an integer or 0/1 for
a flag) for that variant, e.g. `bf16:shared:act.split_over_tile=1`.
`--generate PROMPT:GEN:STEPS[:BATCH][:ragged][,...]`: also whole generations of bf16 and each variant, tokens/s,
with the LM head on the positions the sampler reads (as `generate` runs a model) and on every position
(`generation_rows`); `ragged`: prompts of different lengths, left-padded.
`--tiny-cpu`: the shipped tiny-llada / tiny-dream, FP vs fake-quant W4A4 (QuantLinear, RTN) vs W4A4Linear (the
PyTorch reference kernels; packed, and with `keep_weights_unpacked`), generation tokens/s on the CPU
(`tiny_cpu.json`).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import triton

from faircalib import kernels
from faircalib.atomic import write_json
from faircalib.calib.transforms import kronecker_factors, random_orthogonal
from faircalib.deploy.cuda_graph import GraphedLogits, compile_model_blocks
from faircalib.deploy.shared_input import share_model_input_quantization, shared_input_groups
from faircalib.deploy.w4a4_linear import W4A4Linear, keep_weights_unpacked
from faircalib.diffusion.config import SamplerConfig
from faircalib.diffusion.generate import generate
from faircalib.diffusion.prompts import prompt_batch
from faircalib.kernels import gemm
from faircalib.models import build_random, get_adapter


def median_event_ms(fn, reps: int = 10) -> float:
    """Median ms of fn() over `reps` calls, each between CUDA events (synchronised)."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def step_stats(adapter, ids: torch.Tensor) -> dict:
    """Median ms of one forward over `ids` and the peak memory one step allocates."""
    with torch.no_grad():
        for _ in range(3):
            adapter.logits(ids)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        ms = median_event_ms(lambda: adapter.logits(ids))
    return {"ms": ms, "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30}


def graph_step_ms(adapter, ids: torch.Tensor) -> float:
    """Median ms of one step through `faircalib.deploy.GraphedLogits` (the forward replayed from a CUDA graph: no
    Python or launch overhead, as a fixed-shape denoising loop runs it). NaN, with the reason printed, if capture
    fails."""
    graphed = GraphedLogits(adapter, max_graphs=1, clone_output=False)
    with torch.no_grad():
        graphed.logits(ids)
        if graphed.fallback_reason is not None:
            print(graphed.fallback_reason, flush=True)
            return float("nan")
        torch.cuda.synchronize()
        ms = median_event_ms(lambda: graphed.logits(ids))
    graphed = None  # frees the graph's memory pool before the next measurement
    torch.cuda.empty_cache()
    return ms


def kernel_profile(adapter, ids: torch.Tensor, top: int = 12) -> list[dict]:
    """CUDA time per kernel name over one step (torch.profiler), the `top` largest: where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        adapter.logits(ids)
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:top]
    return [{"kernel": e.key[:90], "calls": e.count, "ms": e.device_time_total / 1e3} for e in rows]


def block_weight_bytes(adapter) -> int:
    total = 0
    for block in adapter.blocks:
        for module in adapter.linears(block).values():
            total += sum(t.numel() * t.element_size() for t in module.buffers()) + \
                sum(p.numel() * p.element_size() for p in module.parameters())
    return total


def to_w4a4(adapter, factor_dtype: torch.dtype, gen: torch.Generator, share: bool) -> None:
    """Replace every block linear by a W4A4Linear (RTN codes; one random Kronecker transform and channel scale per
    input group, as Stage II learns them), freeing bf16 weights; `share`: link each group so its input is
    transformed and quantized once."""
    for block in adapter.blocks:
        for group in adapter.input_groups(block).values():
            k = next(iter(group.values())).in_features
            n1, n2 = kronecker_factors(k)
            left = random_orthogonal(n1, gen).cuda().to(factor_dtype)
            right = random_orthogonal(n2, gen).cuda().to(factor_dtype)
            channel_scale = torch.empty(k).uniform_(0.5, 1.5, generator=gen).cuda()
            for role, linear in group.items():
                module = W4A4Linear(k, linear.out_features, bias=linear.bias is not None, left_size=n1,
                                    right_size=n2, channel_scale=True).cuda()
                with torch.no_grad(), kernels.use_backend("reference"):
                    codes, scales = kernels.quantize_weight(linear.weight.float(), bits=4)
                    module.weight_packed.copy_(kernels.pack_weight_for_gemm(codes))
                    module.weight_scale.copy_(scales.reshape(-1))
                    module.left, module.right = left, right
                    module.channel_scale.copy_(channel_scale)
                    if linear.bias is not None:
                        module.bias.copy_(linear.bias.float())
                adapter.set_linear(block, role, module)
                del linear, codes, scales
    if share:
        share_model_input_quantization(adapter.model)
    torch.cuda.empty_cache()


def generation_rows(adapter, label: str, prompt_len: int, gen_length: int, steps: int,
                    batch: int = 1, ragged: bool = False) -> list[dict]:
    """Generated tokens/s of LLaDA's sampler (`batch` prompts of `prompt_len` tokens, blocks of 32, temperature 0) with
    every step's forward replayed from a CUDA graph: the LM head on the positions the sampler reads
    (`GraphedLogits.logits_at`, as `generate` runs a model) and, for comparison, on every position (a logits
    function: the full [B, L, V] logits). `ragged`: the prompts' lengths spread from prompt_len down to about half
    of it, left-padded, so every forward takes an attention mask. Each after one untimed generation (graph capture,
    compiles); the median of three timed ones. `model_ms`: the model's call alone (CUDA events) on the first step's
    input, the first block read; a step's time beyond it is the sampler's (its kernels, host work and
    synchronisations)."""
    graphed = GraphedLogits(adapter, max_graphs=2, clone_output=False)
    full = torch.randint(0, graphed.mask_token_id, (batch, prompt_len), generator=torch.Generator().manual_seed(1))
    lengths = [prompt_len - (i * prompt_len) // (2 * batch) if ragged else prompt_len for i in range(batch)]
    prompts = prompt_batch([row[:n] for row, n in zip(full, lengths)], pad_token_id=0)
    config = SamplerConfig(gen_length=gen_length, block_length=32, steps=steps)
    paths = (("read rows", graphed), ("every position", graphed.logits))
    first_ids = torch.cat([prompts.ids, torch.full((batch, gen_length), graphed.mask_token_id)], dim=1).cuda()
    first_mask = torch.cat([prompts.attention_mask, torch.ones(batch, gen_length, dtype=torch.bool)], dim=1).cuda() \
        if prompts.padded else None
    first_rows = torch.zeros(first_ids.shape, dtype=torch.bool, device="cuda")
    first_rows[:, prompt_len:prompt_len + 32] = True
    model_calls = {"read rows": lambda: graphed.logits_at(first_ids, first_mask, first_rows),
                   "every position": lambda: graphed.logits(first_ids, first_mask)[first_rows]}
    rows, first_tokens = [], None
    for head, model in paths:
        times = []
        for _ in range(4):
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = generate(model, prompts.ids.cuda(), config, attention_mask=prompts.attention_mask.cuda(),
                           mask_token_id=graphed.mask_token_id, generator=torch.Generator().manual_seed(2))
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        first_tokens = out.tokens if first_tokens is None else first_tokens
        seconds = statistics.median(times[1:])
        with torch.no_grad():
            model_ms = median_event_ms(model_calls[head])
        rows.append({"model": label, "lm_head_on": head, "batch": batch, "prompt": prompt_len, "ragged": ragged,
                     "gen_length": gen_length, "steps": steps, "tokens_per_s": batch * gen_length / seconds,
                     "ms_per_step": 1e3 * seconds / steps, "model_ms": model_ms,
                     "same_tokens_as_read_rows": bool(torch.equal(out.tokens, first_tokens))})
        print(rows[-1], flush=True)
    if graphed.fallback_reason is not None:
        print(graphed.fallback_reason, flush=True)
    for row in rows:
        row["graph_fallback"] = graphed.fallback_reason
    return rows  # the graphs' memory goes with this frame (callers empty the cache after)


def tiny_cpu_throughput(out: str) -> None:
    """Generated tokens per second of the tiny models on CPU: FP, fake-quant W4A4 and deployed W4A4Linear."""
    import copy

    from faircalib.calib.layerwise import wrap_block
    from faircalib.calib.methods import get_method
    from faircalib.config import QuantConfig
    from faircalib.deploy.w4a4_linear import convert_to_w4a4
    from faircalib.models import load_model

    torch.set_num_threads(1)  # tiny models gain nothing from threads; spinning threads stall a shared machine
    rows = []
    for name, sampler in (("tiny-llada", "llada"), ("tiny-dream", "dream")):
        fp = load_model(name)
        fake = copy.deepcopy(fp)
        adapter = get_adapter(fake)
        for block in adapter.blocks:
            wrap_block(adapter, block, get_method("rtn"), QuantConfig.w_a(4, 4), torch.Generator().manual_seed(0))
        deployed = copy.deepcopy(fake)
        convert_to_w4a4(deployed)
        kept = copy.deepcopy(deployed)
        keep_weights_unpacked(kept)
        prompt = torch.randint(3, 20, (8, 16), generator=torch.Generator().manual_seed(0))
        config = SamplerConfig(sampler=sampler, gen_length=32, steps=32)
        for label, model in (("fp32", fp), ("fake-quant W4A4", fake), ("W4A4Linear", deployed),
                             ("W4A4Linear, kept unpacked", kept)):
            generate(model, prompt, config, generator=torch.Generator().manual_seed(1))
            start = time.perf_counter()
            generate(model, prompt, config, generator=torch.Generator().manual_seed(1))
            seconds = time.perf_counter() - start
            rows.append({"model": name, "variant": label, "tokens_per_s": prompt.shape[0] * 32 / seconds})
            print(rows[-1], flush=True)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or "cpu",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    os.makedirs(out, exist_ok=True)
    write_json(Path(out) / "tiny_cpu.json", {"env": env, "rows": rows})
    print(f"\n{env}\n\n| model | variant | generated tokens/s (batch 8, 32 tokens, 32 steps) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | {r['tokens_per_s']:.0f} |")


VARIANT_OPTIONS = ("swiglu", "unpacked", "int8only", "unfused", "noepilogue", "flattened")


def parse_variant(variant: str) -> tuple[str, str, list[str], dict]:
    """"dtype:(shared|separate)[:swiglu][:unpacked|:int8only][:unfused][:noepilogue][:flattened][:act.FIELD=VALUE
    ...]" -> (factor
    dtype name, sharing, options, `gemm.ActLaunch` fields to set); ValueError naming what is wrong."""
    factor_name, _, rest = variant.partition(":")
    sharing, *parts = rest.split(":")
    launch, options = {}, []
    fields = dataclasses.asdict(gemm.ACT_LAUNCH)
    for part in parts:
        if not part.startswith("act."):
            options.append(part)
            continue
        key, _, value = part[4:].partition("=")
        if key not in fields or not value.lstrip("-").isdigit():
            raise ValueError(f"bad variant {variant!r}: {part!r} needs a field of gemm.ActLaunch "
                             f"({', '.join(fields)}) and an integer value (0/1 for a flag)")
        launch[key] = type(fields[key])(int(value))
    if factor_name not in ("bf16", "fp32") or sharing not in ("shared", "separate") or \
            not set(options) <= set(VARIANT_OPTIONS):
        raise ValueError(f"bad variant {variant!r}: want (bf16|fp32):(shared|separate)[:swiglu][:unpacked|:int8only]"
                         f"[:unfused][:noepilogue][:flattened][:act.FIELD=VALUE]")
    return factor_name, sharing, options, launch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--tokens", default="1024,4096")
    parser.add_argument("--variants", default="bf16:shared,bf16:separate,fp32:shared",
                        help="W4A4 variants, factor dtype:(shared|separate) input quantization of q/k/v and gate/up"
                             "[:swiglu] (down projections take silu(gate)·up inside their activation kernel)"
                             "[:unpacked] (keep_weights_unpacked: int8 weight copies, no unpack pass per call)"
                             "[:int8only] (the same with the packed weights dropped: int8 codes alone)"
                             "[:unfused] (shared input groups run one GEMM per linear, not one on stacked weights)"
                             "[:noepilogue] (gate/up's GEMM writes gate and up; the SwiGLU runs after it)"
                             "[:flattened] (the INT8 GEMM autotuned over its flattened-loop configs only)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile every block (bf16 baseline and W4A4 alike): fuses the norms, RoPE, SwiGLU "
                             "and residual adds around the linears")
    parser.add_argument("--family", choices=("llada", "dream"), default="llada",
                        help="the LLaDA-8B or the Dream-7B config")
    parser.add_argument("--design", choices=("unpack", *gemm.REGS_DESIGNS),
                        help="every W4A4 GEMM runs this design (`gemm.W4A4_DESIGN`) instead of the one timed fastest "
                             "per shape: an A/B of one design, or a short run without the choice's compiles and timing")
    parser.add_argument("--generate", metavar="PROMPT:GEN:STEPS[:BATCH][:ragged][,...]",
                        help="also time whole generations (LLaDA's sampler, blocks of 32, CUDA graphs) of GEN tokens "
                             "after BATCH (default 1) random PROMPT-token prompts in STEPS steps, for bf16 and each "
                             "variant, the LM head on the read rows and on every position (`generation_rows`); "
                             ":ragged: prompts of PROMPT down to about PROMPT / 2 tokens, left-padded (every forward "
                             "takes an attention mask); several settings comma-separated, each on the same model; "
                             "with --tokens '' only these")
    parser.add_argument("--tiny-cpu", action="store_true")
    args = parser.parse_args()
    if args.tiny_cpu:
        return tiny_cpu_throughput(args.out)
    try:
        variants = [parse_variant(variant) for variant in args.variants.split(",")]
    except ValueError as error:
        sys.exit(f"bench_e2e_gpu: {error}")
    generations = []
    for spec in args.generate.split(",") if args.generate is not None else ():
        fields = spec.split(":")
        ragged = fields[-1] == "ragged"
        try:
            numbers = tuple(int(v) for v in fields[:-1 if ragged else None])
            if len(numbers) not in (3, 4) or numbers[0] < 1 or numbers[3:4] == (0,):
                raise ValueError("three or four integers, the prompt and the batch at least one")
            if ragged and (numbers[3:4] or (1,))[0] < 2:
                raise ValueError("ragged prompts need a batch of at least two")
            SamplerConfig(gen_length=numbers[1], block_length=32, steps=numbers[2])  # its own checks
        except ValueError as error:
            sys.exit(f"bench_e2e_gpu: --generate wants PROMPT:GEN:STEPS[:BATCH][:ragged][,...] ({error}), "
                     f"got {spec!r}")
        generations.append((*numbers, *(() if len(numbers) == 4 else (1,)), ragged))
    if not torch.cuda.is_available():
        sys.exit("bench_e2e_gpu: needs a CUDA GPU")
    tokens = [int(t) for t in args.tokens.split(",") if t]
    started = time.time()
    results = {"env": {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "triton": triton.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
               "runs": []}
    gen = torch.Generator().manual_seed(0)
    config = {"llada": "llada-8b", "dream": "dream-7b"}[args.family]
    vocab = build_random(args.family, config, device="meta").config.vocab_size
    ids = {n: torch.randint(0, vocab, (1, n), generator=gen).cuda() for n in tokens}
    results["env"]["model"] = config
    tag = ", compiled blocks" if args.compile else ""
    results["env"]["compiled_blocks"] = args.compile
    results["env"]["w4a4_design"] = args.design or "timed per shape"
    gemm.W4A4_DESIGN = args.design
    os.makedirs(args.out, exist_ok=True)
    path = Path(args.out) / "bench_e2e.json"

    def save() -> None:  # after every run, atomically: a process cut short keeps the runs it finished
        results["env"]["seconds"] = time.time() - started
        write_json(path, results)
    default_launch = gemm.ACT_LAUNCH
    gemm_configs = gemm._int8_gemm_kernel.configs
    for index, (variant, (factor_name, sharing, options, launch)) in enumerate(zip(args.variants.split(","),
                                                                                   variants)):
        gemm.ACT_LAUNCH = dataclasses.replace(default_launch, **launch)
        gemm._int8_gemm_kernel.configs = [c for c in gemm_configs if c.kwargs["FLATTEN"] or "flattened" not in options]
        gemm._int8_gemm_kernel.cache.clear()  # autotuned afresh over this variant's configs
        model = build_random(args.family, config, dtype=torch.bfloat16, device="cuda")
        adapter = get_adapter(model)
        if args.compile:
            compile_model_blocks(adapter)
        if index == 0:
            for generation in generations:
                results.setdefault("generation", []).extend(generation_rows(adapter, f"bf16{tag}", *generation))
                save()
            bf16_bytes = block_weight_bytes(adapter)
            for n in tokens:
                stats = step_stats(adapter, ids[n])
                stats["graph_ms"] = graph_step_ms(adapter, ids[n])
                results["runs"].append({"model": f"bf16{tag}", "tokens": n, **stats,
                                        "block_weight_bytes": bf16_bytes})
                print(results["runs"][-1], flush=True)
                save()
        to_w4a4(adapter, torch.float32 if factor_name == "fp32" else torch.bfloat16, gen, sharing == "shared")
        for block in adapter.blocks:
            adapter.linears(block)["down"].fuse_swiglu = "swiglu" in options
        if "unpacked" in options or "int8only" in options:
            keep_weights_unpacked(model, drop_packed="int8only" in options)
        for group in shared_input_groups(model):
            group.fused_gemm = "unfused" not in options
            group.swiglu_epilogue = "noepilogue" not in options
        if args.compile:
            compile_model_blocks(adapter)
        w4_bytes = block_weight_bytes(adapter)
        for generation in generations:
            results.setdefault("generation", []).extend(generation_rows(adapter, f"w4a4 ({variant}){tag}",
                                                                       *generation))
            save()
        for n in tokens:
            stats = step_stats(adapter, ids[n])
            stats["graph_ms"] = graph_step_ms(adapter, ids[n])
            bf16 = next(r for r in results["runs"] if r["model"] == f"bf16{tag}" and r["tokens"] == n)
            extra = (", SwiGLU fused into down's input" if "swiglu" in options else "") + \
                (", weights kept unpacked (int8)" if "unpacked" in options else "") + \
                (", int8 weights only" if "int8only" in options else "") + \
                (", one GEMM per linear" if "unfused" in options else "") + \
                (", SwiGLU after gate/up's GEMM" if "noepilogue" in options else "") + \
                (", GEMM configs flattened only" if "flattened" in options else "") + \
                "".join(f", act {key}={value}" for key, value in launch.items())
            results["runs"].append({"model": f"w4a4 ({factor_name} factors, {sharing} input quantization{extra}{tag})",
                                    "tokens": n, **stats,
                                    "block_weight_bytes": w4_bytes, "speedup_vs_bf16": bf16["ms"] / stats["ms"],
                                    "graph_speedup_vs_bf16": bf16["graph_ms"] / stats["graph_ms"],
                                    "weight_bytes_vs_bf16": w4_bytes / bf16["block_weight_bytes"],
                                    "profile": kernel_profile(adapter, ids[n])})
            print(results["runs"][-1], flush=True)
            save()
        # Compiled code cached by Dynamo can hold the finished variant's tensors; drop it so each variant's peak is
        # its own.
        del model, adapter
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()
        results["env"].setdefault("allocated_gib_between_variants", []).append(
            torch.cuda.memory_allocated() / 2 ** 30)
        print(f"allocated after {variant}, released: {results['env']['allocated_gib_between_variants'][-1]:.2f} GiB",
              flush=True)
    save()
    print(f"\n{results['env']}\n")
    print("| model | tokens | step ms | speedup vs bf16 | CUDA-graph step ms | graph speedup vs bf16 | peak GiB | "
          "block weights GB (x bf16) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        print(f"| {r['model']} | {r['tokens']} | {r['ms']:.1f} | {r.get('speedup_vs_bf16', 1.0):.2f} | "
              f"{r['graph_ms']:.1f} | {r.get('graph_speedup_vs_bf16', 1.0):.2f} | {r['peak_gib']:.1f} | "
              f"{r['block_weight_bytes'] / 1e9:.2f} ({r.get('weight_bytes_vs_bf16', 1.0):.3f}) |")
    if generations:
        print("\n| model | LM head on | batch × (prompt + generated tokens), steps | generated tokens/s | "
              "ms per step | model call ms | same tokens |\n|---|---|---|---|---|---|---|")
        for r in results["generation"]:
            prompts = f"{r['prompt']}{', ragged' if r['ragged'] else ''}"
            print(f"| {r['model']} | {r['lm_head_on']} | {r['batch']} × ({prompts} + {r['gen_length']}), "
                  f"{r['steps']} | {r['tokens_per_s']:.1f} | {r['ms_per_step']:.2f} | "
                  f"{r['model_ms']:.2f} | {r['same_tokens_as_read_rows']} |")
    for r in results["runs"]:
        if "profile" in r:
            print(f"\nKernels of one step, {r['model']}, {r['tokens']} tokens (CUDA ms, calls):")
            for row in r["profile"]:
                print(f"  {row['ms']:8.2f} ms {row['calls']:5d}x  {row['kernel']}")


if __name__ == "__main__":
    main()

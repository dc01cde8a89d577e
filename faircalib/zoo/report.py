"""The numbers that faircalib/zoo/README.md reports for the shipped models, recomputed on CPU:

    python -m faircalib.zoo.report [--models tiny-llada tiny-dream] [--out report.json]

Held-out exact match (default sampler) in full precision and under naive W4A4 round-to-nearest, then per-layer
|x| statistics at the four distinct block linear inputs (q/k/v share one input, gate/up another), measured on the
held-out prompts followed by a fully masked answer region (the input of the first denoising step).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from faircalib.atomic import write_json
from faircalib.diffusion import SamplerConfig
from faircalib.models import load_model
from faircalib.zoo import SHIPPED, checkpoint_dir, load_tasks
from faircalib.zoo.activation_stats import activation_stats
from faircalib.zoo.evaluate import evaluate
from faircalib.zoo.rtn import rtn_w4a4
from faircalib.zoo.tokenizer import CharTokenizer

# One role per distinct linear input; the adapter's role names.
INPUT_OF = {"q": "attn in (q,k,v)", "o": "o in", "gate": "mlp in (gate,up)", "down": "down in"}


def first_step_inputs(tokenizer: CharTokenizer, prompts: list[str], gen_length: int):
    """-> (input_ids [B, P + gen_length] int64 left-padded prompt + masks, attention_mask [B, P + gen_length] bool)."""
    encoded = [tokenizer.encode(p) for p in prompts]
    width = max(map(len, encoded)) + gen_length
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, prompt in enumerate(encoded):
        start = width - gen_length - len(prompt)
        ids[row, start : width - gen_length] = torch.tensor(prompt)
        ids[row, width - gen_length :] = tokenizer.mask_token_id
        mask[row, start:] = True
    return ids, mask


def report(name: str, per_task: int | None = None, seed: int = 0) -> dict:
    path = checkpoint_dir(name) if name in SHIPPED else Path(name)
    model = load_model(str(path), dtype=torch.float32).eval()
    tokenizer = CharTokenizer.load(path)
    heldout = load_tasks("heldout", per_task)
    config = SamplerConfig()
    start = time.time()
    fp = evaluate(model, tokenizer, heldout, config, generator=torch.Generator().manual_seed(seed))
    rtn = evaluate(rtn_w4a4(model), tokenizer, heldout, config, generator=torch.Generator().manual_seed(seed))
    ids, mask = first_step_inputs(tokenizer, [p.prompt for p in heldout], config.gen_length)
    stats = [s for s in activation_stats(model, ids, mask) if s["role"] in INPUT_OF]
    return {
        "model": name,
        "heldout_problems": len(heldout),
        "sampler": config.to_dict(),
        "accuracy_fp": fp,
        "accuracy_w4a4_rtn": rtn,
        "activation_stats": stats,
        "seconds": round(time.time() - start, 1),
    }


def markdown(results: list[dict]) -> str:
    tasks = [t for t in results[0]["accuracy_fp"] if t != "all"] + ["all"]
    lines = ["| model | precision | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for r in results:
        for label, key in (("FP32", "accuracy_fp"), ("W4A4 RTN", "accuracy_w4a4_rtn")):
            lines.append(f"| {r['model']} | {label} | " + " | ".join(f"{100 * r[key][t]:.1f}" for t in tasks) + " |")
    for r in results:
        lines += ["", f"{r['model']}: max / median |x| at each block linear input", ""]
        lines += ["| block | " + " | ".join(INPUT_OF.values()) + " |", "|---|" + "---|" * len(INPUT_OF)]
        for block in sorted({s["block"] for s in r["activation_stats"]}):
            cells = {s["role"]: s for s in r["activation_stats"] if s["block"] == block}
            lines.append(
                f"| {block} | "
                + " | ".join(f"{cells[role]['max']:.2f} / {cells[role]['median']:.3f}" for role in INPUT_OF)
                + " |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m faircalib.zoo.report", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SHIPPED), help="shipped names or checkpoint dirs")
    parser.add_argument("--per-task", type=int, default=None, help="held-out problems per task (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="also write the full results as JSON")
    args = parser.parse_args(argv)
    results = [report(name, args.per_task) for name in args.models]
    if args.out is not None:
        write_json(args.out, results, indent=1)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()

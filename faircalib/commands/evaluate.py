"""`faircalib eval`: exact-match accuracy per task on held-out problems, written as a JSON report."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from faircalib import atomic
from faircalib.commands.options import (add_model_arguments, add_sampler_arguments, generator, load_model,
                                        load_tokenizer, output_file, positive_int, sampler_config)

HELP = "exact-match accuracy per task of a model on the task suite (JSON report)"


def add_arguments(parser):
    parser.add_argument("--out", type=output_file, help="write the JSON report here (atomically); always printed too")
    parser.add_argument("--n", type=positive_int, help="problems per task (default: the whole split, 64 held-out)")
    parser.add_argument("--tasks", nargs="+", help="tasks to evaluate (default: all)")
    parser.add_argument("--split", default="heldout", help="task split (default: heldout)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="prompts per generate call (default 64)")
    add_model_arguments(parser)
    add_sampler_arguments(parser)


def run(args) -> int:
    from tqdm import tqdm

    from faircalib.zoo import exact_match, load_tasks
    from faircalib.zoo.evaluate import answers

    try:
        problems = load_tasks(args.split, n=args.n, tasks=args.tasks)
    except ValueError as error:
        args.parser.error(str(error))
    config, tokenizer = sampler_config(args), load_tokenizer(args)
    model, rng = load_model(args), generator(args)
    hits, totals = Counter(), Counter(p.task for p in problems)
    start = time.perf_counter()
    with tqdm(total=len(problems), desc=f"eval {args.model}", unit="problem", disable=None) as progress:
        for first in range(0, len(problems), args.batch_size):
            chunk = problems[first:first + args.batch_size]
            for problem, pred in zip(chunk, answers(model, tokenizer, [p.prompt for p in chunk], config,
                                                    generator=rng)):
                hits[problem.task] += exact_match(pred, problem.answer)
            progress.update(len(chunk))
    report = {
        "model": str(args.model),
        "split": args.split,
        "n": len(problems),
        "accuracy": sum(hits.values()) / len(problems),
        "tasks": {task: {"accuracy": hits[task] / total, "n": total} for task, total in totals.items()},
        "sampler": config.to_dict(),
        "seed": args.seed,
        "dtype": args.dtype,
        "seconds": round(time.perf_counter() - start, 3),
    }
    text = json.dumps(report, indent=2)
    if args.out is not None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(args.out, text + "\n")
    print(text)
    return 0


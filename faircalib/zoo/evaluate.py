"""Exact-match accuracy of a dLLM on task-suite problems, generating with a diffusion sampler."""
from __future__ import annotations

from collections import defaultdict

import torch

from faircalib.diffusion import SamplerConfig, generate
from faircalib.zoo.tasks import Problem, exact_match
from faircalib.zoo.tokenizer import CharTokenizer


@torch.no_grad()
def answers(model, tokenizer: CharTokenizer, prompts: list[str], config: SamplerConfig | None = None,
            *, generator: torch.Generator | None = None) -> list[str]:
    """Generates one answer per prompt in one batch (left-padded by the sampler); decoded up to the first eos."""
    config = SamplerConfig() if config is None else config
    device = next(model.parameters()).device
    ids = [torch.tensor(tokenizer.encode(p), dtype=torch.long, device=device) for p in prompts]
    tokens, _ = generate(model, ids, config, generator=generator)
    return [tokenizer.decode(row) for row in tokens[:, -config.gen_length:].tolist()]


def evaluate(model, tokenizer: CharTokenizer, problems: list[Problem], config: SamplerConfig | None = None,
             *, batch_size: int = 256, generator: torch.Generator | None = None) -> dict[str, float]:
    """-> {task: exact-match accuracy, ..., "all": accuracy over every problem}. Default sampler: `SamplerConfig()`."""
    hits = defaultdict(list)
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        preds = answers(model, tokenizer, [p.prompt for p in chunk], config, generator=generator)
        for problem, pred in zip(chunk, preds):
            hits[problem.task].append(exact_match(pred, problem.answer))
    hits["all"] = [h for task_hits in list(hits.values()) for h in task_hits]
    return {task: sum(h) / len(h) for task, h in hits.items()}

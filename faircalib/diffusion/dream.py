"""Dream's sampler (REFERENCE §5; Dream-org `generation_utils.py`, `_sample`).

The whole answer is denoised at once while time runs linearly from 1 to eps over `steps` steps. From t to s:
- origin: each masked position is committed independently with probability 1 - s/t (all at the last step);
- maskgit_plus / topk_margin / entropy: floor(masked * (1 - s/t)) positions (all at the last step) with the
  highest confidence over the whole row, or, with alg_temp > 0, drawn without replacement from
  softmax(confidence / alg_temp).
The logits are already aligned by the model adapter (Dream's shift); this sampler never shifts them again.
"""
from __future__ import annotations

import torch

from faircalib.diffusion.choice import dream_tokens, top_per_row, uniform
from faircalib.diffusion.config import SamplerConfig
from faircalib.diffusion.state import DenoisingState


def sample_dream(state: DenoisingState, config: SamplerConfig, generator: torch.Generator):
    """Runs `config.steps` Dream steps on `state`; every answer position is committed at the end."""
    timesteps = torch.linspace(1, config.eps, config.steps + 1)
    for i in range(config.steps):
        masked = state.masked
        logits = state.logits_at(masked)
        last = i == config.steps - 1
        keep_masked = timesteps[i + 1] / timesteps[i]
        confidence, tokens = dream_tokens(
            logits, config.remasking, generator,
            temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
        )
        candidates = state.spread(tokens, 0)
        if config.remasking == "origin":
            positions = masked if last else masked & (uniform(masked.shape, generator, masked.device) < 1 - keep_masked)
        else:
            counts = masked.sum(1)
            if not last:
                counts = (counts.float() * (1 - keep_masked)).long()
            scores = state.spread(confidence, float("-inf"))
            positions = top_per_row(_perturbed(scores, config.alg_temp, generator), counts)
        state.commit(positions, candidates)


def _perturbed(scores: torch.Tensor, alg_temp: float | None, generator: torch.Generator) -> torch.Tensor:
    """Top-k of scores / alg_temp + Gumbel noise is a draw without replacement from softmax(scores / alg_temp)
    (the Gumbel-top-k trick), which is what Dream's `multinomial(..., replacement=False)` samples."""
    if not alg_temp:
        return scores
    gumbel = -torch.log(-torch.log(uniform(scores.shape, generator, scores.device, torch.float64)))
    return scores.double() / alg_temp + gumbel

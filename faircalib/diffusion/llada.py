"""Blockwise samplers: LLaDA's semi-autoregressive sampler and its two relatives, Fast-dLLM's confidence
threshold and FAIR-Calib's random-order probe (REFERENCE §5; ML-GSAI/LLaDA `generate.py`).

The answer is cut into blocks of `block_length`, denoised left to right. Within a block, each step proposes a
candidate for every masked position (argmax, Gumbel-perturbed when temperature > 0) and commits some of them:
- llada / probe: `steps / num_blocks` steps per block, committing the even schedule's count of the
  highest-confidence positions; confidence = the candidate's probability (`low_confidence`) or uniform noise
  (`random`, and always for `probe`).
- threshold: every masked position of the block whose candidate probability is >= threshold, and at least the
  most confident one; the block takes as many steps as it needs.
Positions right of the current block are never committed.
"""
from __future__ import annotations

import torch

from faircalib.diffusion.choice import even_schedule, gumbel_argmax, probability_of, top_per_row, uniform
from faircalib.diffusion.config import SamplerConfig
from faircalib.diffusion.state import DenoisingState


def sample_blockwise(state: DenoisingState, config: SamplerConfig, generator: torch.Generator):
    """Runs `config` (sampler llada, threshold or probe) on `state` until every answer position is committed."""
    steps_per_block = config.steps // config.num_blocks
    for block in range(config.num_blocks):
        start = state.prompt_len + block * config.block_length
        in_block = torch.zeros(state.x.shape[1], dtype=torch.bool, device=state.x.device)
        in_block[start:start + config.block_length] = True
        if config.sampler == "threshold":
            while state.count(eligible := state.masked & in_block):  # the step's read-back: no wait of its own
                _step(state, config, eligible, None, generator)
        else:
            counts = even_schedule((state.masked & in_block).sum(1), steps_per_block)
            for i in range(steps_per_block):
                _step(state, config, state.masked & in_block, counts[:, i], generator)


def _step(state, config, eligible, counts, generator):
    """One forward pass over the eligible positions ([B, L] bool: masked, in the block) and its commits; counts [B]
    (None = threshold rule)."""
    logits = state.logits_at(eligible)
    tokens = gumbel_argmax(logits, config.temperature, generator)
    candidates = state.spread(tokens, 0)
    if config.remasking == "random":
        confidence = uniform(eligible.shape, generator, eligible.device, torch.float64)
    else:
        confidence = state.spread(probability_of(logits, tokens), 0.0)
    confidence = confidence.masked_fill(~eligible, float("-inf"))
    if counts is None:
        positions = top_per_row(confidence, eligible.any(1).long()) | (confidence >= config.threshold)
    else:
        positions = top_per_row(confidence, counts)
    state.commit(positions, candidates)

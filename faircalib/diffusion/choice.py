"""Token and position choices shared by the samplers: noise, candidates, confidences, top-k commits.

All randomness comes from a caller's `torch.Generator`; draws happen on the generator's device and move to the
data, so a CPU generator drives a GPU run reproducibly.
"""
from __future__ import annotations

import torch


def uniform(shape, generator: torch.Generator, device, dtype=torch.float32) -> torch.Tensor:
    """U[0, 1) of `shape`, drawn from `generator`."""
    # non_blocking: a CPU generator's draws reach a GPU without the host waiting for the GPU's queue
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device, non_blocking=True)


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """LLaDA's candidate: logits [..., V] -> ids [...] int64. Greedy at temperature 0; otherwise
    argmax(exp(logits) / (-log u)^temperature) in float64 (low-precision Gumbel noise hurts generation quality,
    arXiv:2409.02908)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.to(torch.float64)
    noise = (-torch.log(uniform(logits.shape, generator, logits.device, torch.float64))) ** temperature
    return (logits.exp() / noise).argmax(-1)


def probability_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Softmax probability (float64, as LLaDA) of `tokens` [...] under `logits` [..., V]."""
    probs = torch.softmax(logits.to(torch.float64), dim=-1)
    return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def filter_logits(logits: torch.Tensor, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """Dream's nucleus / top-k filtering of logits [N, V] (removed entries get the dtype's minimum)."""
    floor = torch.finfo(logits.dtype).min
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        beyond = sorted_logits.softmax(-1).cumsum(-1) > top_p
        beyond[..., 1:] = beyond[..., :-1].clone()  # keep the token that crosses top_p
        beyond[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(beyond).scatter(-1, order, beyond), floor)
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, floor)
    return logits


def dream_tokens(
    logits: torch.Tensor, confidence: str, generator: torch.Generator, *, temperature=0.0, top_p=None, top_k=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's `sample_tokens`: logits [N, V] -> (confidence [N] float32, ids [N] int64).

    Tokens are the argmax at temperature 0, else a categorical sample of softmax(logits / temperature) after
    top-p/top-k filtering (drawn by Gumbel-max, which samples the same distribution). confidence: `maskgit_plus`
    / `origin` = probability of the chosen token, `topk_margin` = top-1 minus top-2 probability, `entropy` =
    negative entropy (higher = more certain).
    """
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    probs = filter_logits(logits, top_p, top_k).softmax(-1)
    if temperature > 0:
        gumbel = -torch.log(-torch.log(uniform(probs.shape, generator, probs.device, torch.float64)))
        tokens = (probs.double().log() + gumbel).argmax(-1)
    else:
        tokens = probs.argmax(-1)
    if confidence == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[:, 0] - top2[:, 1], tokens
    if confidence == "entropy":
        return (probs * torch.log(probs + 1e-10)).sum(-1), tokens
    return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), tokens


def top_per_row(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """scores [B, L] (-inf = never), counts [B] int -> bool [B, L] marking each row's `counts[b]` highest
    finite scores (ties broken by position)."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, positions)
    return (ranks < counts.unsqueeze(1)) & torch.isfinite(scores)


def even_schedule(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's commit counts: masked [B] int -> [B, steps] int64; floor(n / steps) per step, the first
    n mod steps steps one more (a linear noise schedule moves the same expected number each step)."""
    base, extra = masked // steps, masked % steps
    return base.unsqueeze(1) + (torch.arange(steps, device=masked.device) < extra.unsqueeze(1)).long()

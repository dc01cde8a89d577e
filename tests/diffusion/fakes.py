"""Tiny fake denoisers: deterministic logits functions whose behaviour makes sampler schedules checkable."""

import torch

VOCAB = 16
MASK = 1
PAD = 0


def ramp_logits(input_ids, attention_mask=None):
    """State-independent: position i predicts token 3 + i % 13, more confidently the further right it is."""
    batch, length = input_ids.shape
    positions = torch.arange(length)
    logits = torch.zeros(batch, length, VOCAB)
    logits[:, positions, 3 + positions % 13] = 1.0 + 0.25 * positions.float()
    return logits


class ContextModel:
    """A state-dependent, padding-invariant fake model with exact float64 arithmetic.

    hidden_i = pos[relative position of i] + sum of tok[x_j] over attended j; logits = hidden @ out. Small integer
    weights keep every sum exact, so a padded row gives bit-identical logits to the same row alone.
    """

    def __init__(self, generator: torch.Generator, vocab=VOCAB, width=8, max_length=64):
        draw = lambda *shape: torch.randint(-3, 4, shape, generator=generator).double()  # noqa: E731
        self.pos, self.tok, self.out = draw(max_length, width), draw(vocab, width), draw(width, vocab)
        self.calls = []

    def __call__(self, input_ids, attention_mask=None):
        self.calls.append((input_ids.clone(), None if attention_mask is None else attention_mask.clone()))
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        relative = (mask.long().cumsum(1) - 1).clamp_min(0)
        context = (self.tok[input_ids] * mask.unsqueeze(-1)).sum(1, keepdim=True)
        return (self.pos[relative] + context) @ self.out


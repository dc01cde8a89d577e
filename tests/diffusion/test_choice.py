import math

import pytest
import torch

from faircalib.diffusion.choice import dream_tokens, even_schedule, filter_logits, gumbel_argmax, top_per_row


@pytest.mark.parametrize("masked, steps", [(10, 4), (32, 32), (3, 8), (0, 5), (17, 1)])
def test_even_schedule_floor_then_one_more_first(masked, steps):
    counts = even_schedule(torch.tensor([masked]), steps)[0].tolist()
    base, extra = divmod(masked, steps)
    assert counts == [base + 1] * extra + [base] * (steps - extra)
    assert sum(counts) == masked


def test_even_schedule_per_row():
    counts = even_schedule(torch.tensor([10, 3]), 4)
    assert counts.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0]]


def test_top_per_row_takes_each_rows_count_and_skips_never():
    scores = torch.tensor([[0.1, 0.9, -math.inf, 0.5], [0.3, -math.inf, -math.inf, 0.2]])
    picked = top_per_row(scores, torch.tensor([2, 3]))
    assert picked.tolist() == [[False, True, False, True], [True, False, False, True]]


def test_gumbel_argmax_is_greedy_at_zero_temperature(gen):
    logits = torch.randn(4, 7, 11, generator=gen)
    assert torch.equal(gumbel_argmax(logits, 0.0, gen), logits.argmax(-1))


def test_gumbel_argmax_samples_the_tempered_softmax(gen):
    logits = torch.tensor([0.0, math.log(3.0)]).expand(20000, 2)
    share = gumbel_argmax(logits, 1.0, gen).float().mean().item()
    assert abs(share - 0.75) < 0.02
    hot = gumbel_argmax(logits, 2.0, torch.Generator().manual_seed(1)).float().mean().item()
    assert abs(hot - math.sqrt(3) / (1 + math.sqrt(3))) < 0.02


def test_gumbel_argmax_is_seeded():
    logits = torch.zeros(50, 9)
    first = gumbel_argmax(logits, 1.0, torch.Generator().manual_seed(3))
    again = gumbel_argmax(logits, 1.0, torch.Generator().manual_seed(3))
    other = gumbel_argmax(logits, 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    floor = torch.finfo(logits.dtype).min
    kept_k = filter_logits(logits, None, 2) > floor
    assert kept_k.tolist() == [[True, True, False, False]]
    kept_p = filter_logits(logits, 0.7, None) > floor  # 0.5 < 0.7, 0.8 crosses it: keep the crossing token
    assert kept_p.tolist() == [[True, True, False, False]]


def test_dream_confidences(gen):
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    logits = probs.log()
    conf, tokens = dream_tokens(logits, "maskgit_plus", gen)
    assert tokens.tolist() == [0, 2]
    torch.testing.assert_close(conf, torch.tensor([0.6, 0.6]))
    margin, _ = dream_tokens(logits, "topk_margin", gen)
    torch.testing.assert_close(margin, torch.tensor([0.3, 0.4]))
    negative_entropy, _ = dream_tokens(logits, "entropy", gen)
    torch.testing.assert_close(negative_entropy, (probs * probs.log()).sum(-1), atol=1e-6, rtol=0)


def test_dream_tokens_sample_with_temperature(gen):
    logits = torch.tensor([0.0, math.log(3.0)]).expand(20000, 2)
    conf, tokens = dream_tokens(logits, "maskgit_plus", gen, temperature=1.0)
    assert abs(tokens.float().mean().item() - 0.75) < 0.02
    torch.testing.assert_close(conf, torch.where(tokens == 1, 0.75, 0.25))

"""Accuracy, recovery and masked-token NLL on fake logits functions with known answers."""
import math

import pytest
import torch

from faircalib.metrics import exact_match_accuracy, masked_token_nll, recovery

MASK, VOCAB = 1, 8
IDS = torch.tensor([[2, 3, 4, 5, 6, 7], [0, 2, 5, 5, 7, 3]])
ANSWER = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0]], dtype=torch.bool)


def test_exact_match_accuracy_and_recovery():
    assert exact_match_accuracy(["12", " 3 ", "x"], ["12", "3", "4"]) == pytest.approx(2 / 3)
    assert recovery(0.45, 0.5) == pytest.approx(0.9) and recovery(0.3, 0.0) is None
    with pytest.raises(ValueError, match="one prediction per answer"):
        exact_match_accuracy(["1"], ["1", "2"])


def test_uniform_model_has_nll_log_vocab():
    result = masked_token_nll(lambda ids, mask: torch.zeros(*ids.shape, VOCAB), IDS, ANSWER, MASK, samples=3)
    assert result.nll == pytest.approx(math.log(VOCAB))
    assert 2 * 3 <= result.tokens <= 6 * 3


def test_nll_reads_the_true_token_at_masked_positions_only():
    def half_sure(ids, attention_mask):
        """p(true token) = 1/2 at masked positions; elsewhere the true token is certain (would lower the mean)."""
        probs = torch.full((*ids.shape, VOCAB), 0.5 / (VOCAB - 1))
        probs.scatter_(-1, IDS.unsqueeze(-1), 0.5)
        probs[ids != MASK] = torch.nn.functional.one_hot(IDS, VOCAB)[ids != MASK].float() + 1e-9
        return probs.log()

    assert masked_token_nll(half_sure, IDS, ANSWER, MASK, samples=4).nll == pytest.approx(math.log(2))


def test_masks_are_seeded_inside_the_answer_and_never_empty():
    seen = []

    def recording(ids, attention_mask):
        seen.append(ids == MASK)
        return torch.zeros(*ids.shape, VOCAB)

    masked_token_nll(recording, IDS, ANSWER, MASK, samples=20, seed=3)
    first = torch.stack(seen)
    assert not (first & ~ANSWER).any() and first.any(-1).all()
    assert (first != first[0]).any()  # draws differ
    seen.clear()
    masked_token_nll(recording, IDS, ANSWER, MASK, samples=20, seed=3)
    assert torch.equal(torch.stack(seen), first)


def test_bad_answer_mask_is_named():
    with pytest.raises(ValueError, match="answer in every row"):
        masked_token_nll(lambda ids, mask: None, IDS, torch.zeros_like(ANSWER), MASK)

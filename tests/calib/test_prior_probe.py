"""`run_probe`: the Stage I loop over a fake teacher (batching, prompt cycling, early stopping, teacher lags)."""
import pytest
import torch

from faircalib.calib.prior import PriorConfig, accumulate_scores, run_probe
from faircalib.diffusion import SamplerConfig, generate

MASK, VOCAB = 1, 9
SAMPLER = SamplerConfig(sampler="probe", gen_length=6, steps=6)
PROMPTS = [[4, 5], [6], [7, 8, 4]]


def position_teacher(ids, attention_mask):
    """Logits that depend on the position only (a fixed random table): its top-1 never changes, so every
    stability lag is 0, while confidences differ between positions."""
    table = torch.randn(ids.shape[1], VOCAB, generator=torch.Generator().manual_seed(1))
    return table.expand(ids.shape[0], -1, -1).clone()


def probe(config, **kwargs):
    return run_probe(position_teacher, PROMPTS, config, SAMPLER, seq_len=10, mask_token_id=MASK, progress=False,
                     **kwargs)


def test_probe_scores_equal_the_rollouts_it_made():
    config = PriorConfig(n_probe=5, batch_size=2, tol=None, lag_rollouts=0)
    prior = probe(config, generator=torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    batches = [[PROMPTS[0], PROMPTS[1]], [PROMPTS[2], PROMPTS[0]], [PROMPTS[1]]]  # prompts cycle
    trajectories = [generate(position_teacher, b, SAMPLER, generator=generator, record=True, mask_token_id=MASK)
                    .trajectory for b in batches]
    torch.testing.assert_close(prior.scores, accumulate_scores(trajectories, config))
    assert prior.num_rollouts == 5 and len(prior.changes) == 2 and prior.sampler["sampler"] == "probe"
    assert prior.weights.shape == (10,) and prior.weights.mean().item() == pytest.approx(1.0)


def test_probe_is_seeded_by_the_config():
    config = PriorConfig(n_probe=4, batch_size=2, tol=None, lag_rollouts=0, seed=3)
    torch.testing.assert_close(probe(config).scores, probe(config).scores, rtol=0, atol=0)


def test_probe_stops_once_the_prior_saturates():
    prior = probe(PriorConfig(n_probe=100, batch_size=2, tol=10.0, lag_rollouts=0))
    assert prior.num_rollouts == 4 and len(prior.changes) == 1


def test_probe_measures_teacher_lags_on_the_first_rollouts():
    prior = probe(PriorConfig(n_probe=4, batch_size=2, tol=None, lag_rollouts=3, lag_max_states=None))
    assert prior.stability_lags == [0] * (3 * SAMPLER.gen_length)


def test_uniform_prior_needs_no_rollouts():
    def never_called(ids, attention_mask):
        raise AssertionError("the uniform prior must not query the model")

    prior = run_probe(never_called, PROMPTS, PriorConfig(terms="uniform"), SAMPLER, seq_len=7, mask_token_id=MASK)
    assert prior.weights.tolist() == [1.0] * 7 and prior.num_rollouts == 0


def test_probe_rejects_other_samplers_and_empty_prompts():
    with pytest.raises(ValueError, match="random commit order"):
        run_probe(position_teacher, PROMPTS, PriorConfig(), SamplerConfig(), seq_len=8, mask_token_id=MASK)
    with pytest.raises(ValueError, match="at least one prompt"):
        run_probe(position_teacher, [], PriorConfig(), SAMPLER, seq_len=8, mask_token_id=MASK)

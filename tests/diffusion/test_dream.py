import math

import pytest
import torch

from faircalib.diffusion import SamplerConfig, generate
from tests.diffusion.fakes import MASK, VOCAB, ContextModel, ramp_logits


def dream(model, prompts, seed=0, **settings):
    config = SamplerConfig(sampler="dream", **settings)
    return generate(model, prompts, config, mask_token_id=MASK, record=True,
                    generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("remasking", ["maskgit_plus", "topk_margin", "entropy"])
def test_commit_counts_follow_the_time_grid(remasking):
    steps, gen_length = 5, 24
    trajectory = dream(ramp_logits, [[5, 6]], remasking=remasking, gen_length=gen_length, steps=steps).trajectory
    timesteps = torch.linspace(1, 1e-3, steps + 1)
    masked = gen_length
    for i in range(steps):
        expected = masked if i == steps - 1 else int(masked * (1 - timesteps[i + 1] / timesteps[i]))
        assert int(trajectory.committed_at(i).sum()) == expected
        masked -= expected
    assert masked == 0


def test_top_k_runs_over_the_whole_row():
    # ramp_logits is most confident on the right: Dream has no blocks, so the rightmost positions go first.
    trajectory = dream(ramp_logits, [[5]], remasking="maskgit_plus", gen_length=12, steps=12).trajectory
    order = trajectory.commit_step[0, 1:]
    assert order[-1] < order[0]
    assert torch.equal(order.argsort(descending=True), torch.arange(12))


def test_origin_is_seeded_and_commits_everything():
    first = dream(ramp_logits, [[5]], remasking="origin", gen_length=32, steps=8, seed=0).trajectory
    again = dream(ramp_logits, [[5]], remasking="origin", gen_length=32, steps=8, seed=0).trajectory
    other = dream(ramp_logits, [[5]], remasking="origin", gen_length=32, steps=8, seed=1).trajectory
    assert torch.equal(first.commit_step, again.commit_step)
    assert not torch.equal(first.commit_step, other.commit_step)
    assert (first.commit_step[0, 1:] >= 0).all()
    assert torch.equal(first.tokens[0, 1:], 3 + torch.arange(1, 33) % 13)


def test_origin_unmasks_with_probability_one_minus_s_over_t():
    steps = 4
    trajectory = dream(ramp_logits, [[5]] * 64, remasking="origin", gen_length=64, steps=steps).trajectory
    timesteps = torch.linspace(1, 1e-3, steps + 1)
    masked = trajectory.masked_before(0).sum().item()
    committed = trajectory.committed_at(0).sum().item()
    p = 1 - (timesteps[1] / timesteps[0]).item()
    assert abs(committed / masked - p) < 4 * math.sqrt(p * (1 - p) / masked)


def test_alg_temp_draws_seeded_orders_with_the_same_counts():
    settings = dict(remasking="maskgit_plus", gen_length=16, steps=4, alg_temp=0.5)
    first, again, other = (dream(ramp_logits, [[5]], seed=s, **settings).trajectory for s in (0, 0, 1))
    assert torch.equal(first.commit_step, again.commit_step)
    assert not torch.equal(first.commit_step, other.commit_step)
    counts = lambda tr: [int(tr.committed_at(t).sum()) for t in range(4)]  # noqa: E731
    assert counts(first) == counts(other)


def test_temperature_top_k_one_is_greedy():
    greedy = dream(ramp_logits, [[5]], gen_length=8, steps=8).tokens
    sampled = dream(ramp_logits, [[5]], gen_length=8, steps=8, temperature=1.0, top_k=1).tokens
    assert torch.equal(greedy, sampled)


class ShiftedAdapter:
    """A Dream-style adapter: the raw network predicts position i + 1 from position i, and `logits` aligns it."""

    mask_token_id = MASK
    shift_logits = True

    def __init__(self, raw):
        self.raw = raw

    def logits(self, input_ids, attention_mask=None):
        raw = self.raw(input_ids, attention_mask)
        return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)


def raw_shifted(input_ids, attention_mask=None):
    """Raw (unaligned) output: the hidden state at i predicts token 3 + (i + 1) % 13 for position i + 1."""
    batch, length = input_ids.shape
    positions = torch.arange(length)
    logits = torch.zeros(batch, length, VOCAB)
    logits[:, positions, 3 + (positions + 1) % 13] = 5.0
    return logits


@pytest.mark.parametrize("sampler", ["dream", "llada"])
def test_adapter_aligned_logits_are_not_shifted_again(sampler):
    config = SamplerConfig(sampler=sampler, gen_length=8, steps=8)
    out = generate(ShiftedAdapter(raw_shifted), [[5, 6]], config)
    assert torch.equal(out.answer[0], 3 + torch.arange(2, 10) % 13)


def test_padded_prompts_get_the_same_count_schedule(gen):
    model = ContextModel(gen)
    trajectory = dream(model, [[4, 5, 6], [7]], remasking="entropy", gen_length=10, steps=3).trajectory
    counts = torch.stack([trajectory.committed_at(t).sum(1) for t in range(3)])
    assert torch.equal(counts[:, 0], counts[:, 1])

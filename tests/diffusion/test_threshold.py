import torch

from faircalib.diffusion import SamplerConfig, generate
from tests.diffusion.fakes import MASK, ContextModel, ramp_logits


def test_commits_everything_above_threshold_and_at_least_one(gen):
    model = ContextModel(gen)
    config = SamplerConfig(sampler="threshold", gen_length=16, block_length=8, threshold=0.6)
    trajectory = generate(model, [[4, 5, 6], [7, 8]], config, mask_token_id=MASK, record=True).trajectory
    for t in range(trajectory.num_steps):
        committed = trajectory.committed_at(t)
        masked = trajectory.masked_before(t)
        in_play = masked.any(1)
        counts = committed.sum(1)
        assert (counts[in_play] >= 1).all()
        # top1_prob is the candidate probability at temperature 0: every confident masked position in the
        # current block was taken.
        block = (masked.nonzero()[:, 1].min() - trajectory.prompt_len) // 8
        lo = trajectory.prompt_len + block * 8
        confident = (trajectory.top1_prob[t] >= 0.6) & masked
        confident[:, lo + 8:] = False
        assert (committed | ~confident).all()
        assert (committed.nonzero()[:, 1] < lo + 8).all()
    assert (trajectory.commit_step[:, trajectory.prompt_len:] >= 0).all()


def test_threshold_one_commits_one_per_step():
    config = SamplerConfig(sampler="threshold", gen_length=8, block_length=4, threshold=1.0)
    trajectory = generate(ramp_logits, [[5]], config, mask_token_id=MASK, record=True).trajectory
    assert trajectory.num_steps == 8
    assert trajectory.commit_step[0, 1:].tolist() == [3, 2, 1, 0, 7, 6, 5, 4]


def test_low_threshold_fills_a_block_per_step():
    config = SamplerConfig(sampler="threshold", gen_length=8, block_length=4, threshold=0.01)
    trajectory = generate(ramp_logits, [[5]], config, mask_token_id=MASK, record=True).trajectory
    assert trajectory.num_steps == 2
    assert trajectory.commit_step[0, 1:].tolist() == [0] * 4 + [1] * 4
    assert torch.equal(trajectory.tokens[0, 1:], 3 + torch.arange(1, 9) % 13)

import torch

from faircalib.diffusion import SamplerConfig, generate
from tests.diffusion.fakes import MASK, ContextModel, ramp_logits

CONFIG = SamplerConfig(sampler="probe", gen_length=32, steps=32)


def probe(model, seed):
    return generate(model, [[5, 6]], CONFIG, mask_token_id=MASK, record=True,
                    generator=torch.Generator().manual_seed(seed)).trajectory


def test_probe_order_is_random_but_seeded():
    first, again, other = probe(ramp_logits, 0), probe(ramp_logits, 0), probe(ramp_logits, 1)
    assert torch.equal(first.commit_step, again.commit_step)
    assert not torch.equal(first.commit_step, other.commit_step)
    order = first.commit_step[0, 2:]
    assert sorted(order.tolist()) == list(range(32))  # one commit per step
    # ramp_logits' confidence order (right to left) would give a strictly decreasing order
    assert not torch.equal(order, torch.arange(31, -1, -1))


def test_probe_commits_the_teachers_greedy_token(gen):
    model = ContextModel(gen)
    trajectory = probe(model, 2)
    for t in range(trajectory.num_steps):
        committed = trajectory.committed_at(t)
        assert torch.equal(trajectory.tokens[committed], trajectory.top1[t][committed])


def test_probe_respects_the_schedule():
    config = SamplerConfig(sampler="probe", gen_length=16, block_length=8, steps=6)
    trajectory = generate(ramp_logits, [[5]], config, mask_token_id=MASK, record=True,
                          generator=torch.Generator().manual_seed(0)).trajectory
    counts = [int(trajectory.committed_at(t).sum()) for t in range(6)]
    assert counts == [3, 3, 2] * 2
    assert (trajectory.commit_step[0, 1:9] < 3).all() and (trajectory.commit_step[0, 9:] >= 3).all()

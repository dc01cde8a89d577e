import pytest
import torch

from faircalib.diffusion import SamplerConfig, generate
from tests.diffusion.fakes import MASK, VOCAB, ContextModel, ramp_logits

PROMPT = [[5, 6, 7]]


def commits_per_step(trajectory):
    """[S, B] number of positions committed at each step."""
    return torch.stack([trajectory.committed_at(t).sum(1) for t in range(trajectory.num_steps)])


def test_schedule_counts_and_block_order():
    config = SamplerConfig(gen_length=24, block_length=8, steps=9)  # 3 blocks x 3 steps: 3, 3, 2 commits
    out = generate(ramp_logits, PROMPT, config, mask_token_id=MASK, record=True)
    trajectory = out.trajectory
    assert trajectory.num_steps == 9
    assert commits_per_step(trajectory)[:, 0].tolist() == [3, 3, 2] * 3
    block_of_step = torch.arange(9) // 3
    for t in range(9):
        columns = trajectory.committed_at(t)[0].nonzero().flatten() - out.prompt_len
        assert (columns // 8 == block_of_step[t]).all(), f"step {t} committed outside its block"


def test_low_confidence_commits_most_confident_first():
    # ramp_logits grows more confident to the right, and blocks are still filled left to right.
    config = SamplerConfig(gen_length=8, block_length=4, steps=8)
    out = generate(ramp_logits, PROMPT, config, mask_token_id=MASK, record=True)
    assert out.trajectory.commit_step[0, 3:].tolist() == [3, 2, 1, 0, 7, 6, 5, 4]
    expected = 3 + torch.arange(3, 11) % 13
    assert torch.equal(out.answer[0], expected)


def test_fewer_masks_than_steps_leaves_empty_steps():
    config = SamplerConfig(gen_length=4, steps=8)
    trajectory = generate(ramp_logits, PROMPT, config, mask_token_id=MASK, record=True).trajectory
    assert commits_per_step(trajectory)[:, 0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_committed_tokens_never_change(gen):
    model = ContextModel(gen)
    config = SamplerConfig(gen_length=16, block_length=4, steps=16, temperature=1.0)
    generate(model, [[4, 5, 6], [7]], config, mask_token_id=MASK, generator=gen)
    inputs = [x for x, _ in model.calls]
    for before, after in zip(inputs, inputs[1:]):
        visible = before != MASK
        assert torch.equal(after[visible], before[visible])
        assert ((after != MASK) & ~visible).sum(1).max() <= 1  # one commit per step and row here


def flat_logits(input_ids, attention_mask=None):
    """Every token equally likely: all that differs between runs is the noise."""
    return torch.zeros(*input_ids.shape, VOCAB)


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_seeded_runs_repeat_and_seeds_differ(remasking):
    config = SamplerConfig(gen_length=16, block_length=8, steps=8, temperature=1.0, remasking=remasking)

    def run(seed):
        return generate(flat_logits, PROMPT, config, mask_token_id=MASK,
                        generator=torch.Generator().manual_seed(seed), record=True).trajectory

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.commit_step, again.commit_step)
    assert not torch.equal(first.tokens, other.tokens)
    if remasking == "random":
        assert not torch.equal(first.commit_step, other.commit_step)


def test_classifier_free_guidance_masks_the_prompt_and_extrapolates(gen):
    model = ContextModel(gen)
    config = SamplerConfig(gen_length=4, steps=4, cfg_scale=2.0)
    out = generate(model, PROMPT, config, mask_token_id=MASK, record=True)
    x, _ = model.calls[0]
    assert x.shape == (2, 7)
    assert x[1, :3].eq(MASK).all() and torch.equal(x[0, :3], torch.tensor(PROMPT[0]))
    with torch.no_grad():
        cond, uncond = model(x[:1]), model(x[1:])
    guided = uncond + 3.0 * (cond - uncond)
    guided[..., MASK] = float("-inf")
    first = out.trajectory.committed_at(0)[0]
    assert torch.equal(out.tokens[0][first], guided[0].argmax(-1)[first])

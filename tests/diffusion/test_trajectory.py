import math

import pytest
import torch

from faircalib.diffusion import SamplerConfig, Trajectory, generate
from tests.diffusion.fakes import MASK, ContextModel

CONFIGS = {
    "llada": SamplerConfig(gen_length=12, block_length=4, steps=6, temperature=0.7),
    "dream": SamplerConfig(sampler="dream", remasking="entropy", gen_length=12, steps=5),
    "dream_origin": SamplerConfig(sampler="dream", remasking="origin", gen_length=12, steps=5),
    "threshold": SamplerConfig(sampler="threshold", gen_length=12, block_length=4, threshold=0.8),
    "probe": SamplerConfig(sampler="probe", gen_length=12, steps=12),
    "llada_cfg": SamplerConfig(gen_length=12, steps=6, cfg_scale=1.5),
}
PROMPTS = [[4, 5, 6, 7], [8, 9]]


def recorded_run(name, gen):
    model = ContextModel(gen)
    out = generate(model, PROMPTS, CONFIGS[name], mask_token_id=MASK, record=True,
                   generator=torch.Generator().manual_seed(0))
    return model, out.trajectory


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_before_reconstructs_what_the_model_saw(name, gen):
    model, trajectory = recorded_run(name, gen)
    assert len(model.calls) == trajectory.num_steps
    for t, (seen, attention_mask) in enumerate(model.calls):
        batch = trajectory.tokens.shape[0]
        assert torch.equal(trajectory.state_before(t), seen[:batch])
        assert torch.equal(attention_mask[:batch], trajectory.attention_mask)
    assert torch.equal(trajectory.state_before(trajectory.num_steps), trajectory.tokens)
    assert (trajectory.commit_step[:, trajectory.prompt_len:] >= 0).all()
    assert (trajectory.commit_step[:, :trajectory.prompt_len] == -1).all()


def test_statistics_describe_the_masked_positions(gen):
    model, trajectory = recorded_run("llada", gen)
    for t, (seen, attention_mask) in enumerate(list(model.calls)):
        masked = trajectory.masked_before(t)
        logits = model(seen, attention_mask).float()
        logits[..., MASK] = -math.inf
        probs = logits.softmax(-1)
        assert torch.equal(trajectory.top1[t][masked], logits.argmax(-1)[masked])
        assert (trajectory.top1[t][~masked] == -1).all()
        torch.testing.assert_close(trajectory.top1_prob[t][masked], probs.max(-1).values[masked])
        top2 = probs.topk(2, -1).values
        torch.testing.assert_close(trajectory.margin[t][masked], (top2[..., 0] - top2[..., 1])[masked])
        entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
        torch.testing.assert_close(trajectory.entropy[t][masked], entropy[masked], atol=1e-5, rtol=1e-5)
        for stat in (trajectory.top1_prob, trajectory.margin, trajectory.entropy):
            assert stat[t][~masked].isnan().all()


def test_committed_at_partitions_the_answer(gen):
    _, trajectory = recorded_run("threshold", gen)
    total = sum(trajectory.committed_at(t).long() for t in range(trajectory.num_steps))
    assert torch.equal(total.bool(), trajectory.commit_step >= 0)
    assert total.max() == 1


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_save_load_round_trip(suffix, gen, tmp_path):
    _, trajectory = recorded_run("dream", gen)
    loaded = Trajectory.load(trajectory.save(tmp_path / f"run{suffix}"))
    assert loaded.prompt_len == trajectory.prompt_len and loaded.num_steps == trajectory.num_steps
    assert loaded.mask_token_id == trajectory.mask_token_id
    for name in ("tokens", "commit_step", "attention_mask", "top1", "top1_prob", "margin", "entropy"):
        expected, got = getattr(trajectory, name), getattr(loaded, name)
        assert got.dtype == expected.dtype
        torch.testing.assert_close(got, expected, equal_nan=True, atol=0, rtol=0)
    assert torch.equal(loaded.state_before(2), trajectory.state_before(2))


def test_bad_paths_and_steps_raise(gen, tmp_path):
    _, trajectory = recorded_run("probe", gen)
    with pytest.raises(ValueError, match="use a .pt or .npz"):
        trajectory.save(tmp_path / "run.json")
    with pytest.raises(IndexError, match="outside 0..12"):
        trajectory.state_before(13)
    with pytest.raises(IndexError, match="outside 0..11"):
        trajectory.committed_at(12)

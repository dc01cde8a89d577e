import pytest
import torch

from faircalib.diffusion import Denoiser, SamplerConfig, generate
from faircalib.diffusion.prompts import prompt_batch
from faircalib.diffusion.state import DenoisingState
from faircalib.models import load_model
from tests.diffusion.fakes import MASK, PAD, VOCAB, ContextModel, ramp_logits

DETERMINISTIC = {
    "llada": SamplerConfig(gen_length=8, block_length=4, steps=8),
    "llada_cfg": SamplerConfig(gen_length=8, steps=4, cfg_scale=1.0),
    "dream": SamplerConfig(sampler="dream", remasking="maskgit_plus", gen_length=8, steps=4),
    "dream_margin": SamplerConfig(sampler="dream", remasking="topk_margin", gen_length=8, steps=8),
    "threshold": SamplerConfig(sampler="threshold", gen_length=8, block_length=4, threshold=0.7),
}
PROMPTS = [[4, 5, 6, 7, 8], [9], [10, 11, 12]]


def alone(model, config):
    return [generate(model, [p], config, mask_token_id=MASK).answer[0] for p in PROMPTS]


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_padded_batch_equals_each_prompt_alone(name, gen):
    model, config = ContextModel(gen), DETERMINISTIC[name]
    expected = torch.stack(alone(model, config))
    from_list = generate(model, PROMPTS, config, mask_token_id=MASK, pad_token_id=PAD)
    assert from_list.prompt_len == 5
    assert torch.equal(from_list.answer, expected)

    width = max(map(len, PROMPTS))
    right = torch.full((3, width), PAD)
    left, mask = right.clone(), torch.zeros(3, width, dtype=torch.bool)
    for i, p in enumerate(PROMPTS):
        right[i, :len(p)] = torch.tensor(p)
        left[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = True
    from_right = generate(model, right, config, mask_token_id=MASK, pad_token_id=PAD)
    from_left = generate(model, left, config, mask_token_id=MASK, attention_mask=mask)
    assert torch.equal(from_right.answer, expected) and torch.equal(from_left.answer, expected)
    assert torch.equal(from_right.tokens, from_left.tokens)


@pytest.mark.parametrize("prompts", [PROMPTS, torch.tensor([[4, 5, 6], [7, 8, 9]])], ids=["list", "tensor"])
def test_width_multiple_pads_on_the_left_to_a_multiple(prompts):
    batch = prompt_batch(prompts, pad_token_id=PAD, width_multiple=4)
    plain = prompt_batch(prompts, pad_token_id=PAD)
    extra = batch.ids.shape[1] - plain.ids.shape[1]
    assert batch.ids.shape[1] % 4 == 0 and 0 < extra < 4
    assert torch.equal(batch.ids[:, extra:], plain.ids) and torch.equal(batch.attention_mask[:, extra:],
                                                                        plain.attention_mask)
    assert not batch.attention_mask[:, :extra].any() and batch.padded
    assert prompt_batch(prompts, pad_token_id=PAD, width_multiple=plain.ids.shape[1]).ids.shape == plain.ids.shape
    with pytest.raises(ValueError, match="width_multiple must be at least 1"):
        prompt_batch(prompts, width_multiple=0)


@pytest.mark.parametrize("prompts", [[[]], torch.zeros(2, 0, dtype=torch.long)], ids=["list", "tensor"])
def test_a_batch_of_empty_prompts_list_or_tensor_generates_unconditionally(prompts):
    out = generate(ramp_logits, prompts, SamplerConfig(gen_length=4, steps=4), mask_token_id=MASK)
    assert out.prompt_len == 0 and out.answer.shape == (len(prompts), 4) and (out.answer != MASK).all()


def test_unpadded_batch_passes_no_attention_mask(gen):
    model = ContextModel(gen)
    generate(model, torch.tensor([[4, 5], [6, 7]]), SamplerConfig(gen_length=4, steps=4), mask_token_id=MASK)
    assert all(mask is None for _, mask in model.calls)


def test_unpacks_as_tokens_and_trajectory():
    tokens, trajectory = generate(ramp_logits, [[4]], SamplerConfig(gen_length=4, steps=4), mask_token_id=MASK)
    assert tokens.shape == (1, 5) and trajectory is None


def test_denoiser_and_adapter_supply_the_mask_id():
    denoiser = Denoiser(ramp_logits, MASK)
    assert generate(denoiser, [[4]], SamplerConfig(gen_length=4, steps=4)).tokens.shape == (1, 5)


class NoMaskAdapter:
    mask_token_id = None

    def logits(self, input_ids, attention_mask=None):
        return ramp_logits(input_ids)


def test_model_without_mask_token_is_refused():
    with pytest.raises(ValueError, match="has no mask token"):
        generate(ramp_logits, [[4]])
    with pytest.raises(ValueError, match="NoMaskAdapter has no mask token"):
        generate(NoMaskAdapter(), [[4]])


def test_prompt_plus_answer_longer_than_context_is_refused():
    denoiser = Denoiser(ramp_logits, MASK, max_length=10)
    with pytest.raises(ValueError, match=r"prompt length 3 \+ gen_length 8 = 11 exceeds the model context of 10"):
        generate(denoiser, [[4, 5, 6]], SamplerConfig(gen_length=8, steps=8))


@pytest.mark.parametrize(
    "prompts, kwargs, message",
    [
        (torch.zeros(2, 3, 4, dtype=torch.long), {}, r"shape \[B, P\] or \[P\], got \(2, 3, 4\)"),
        (torch.zeros(2, 3), {}, "integer token ids"),
        (torch.tensor([[4, PAD, 5]]), {"pad_token_id": PAD}, "row 0 .* has padding between its tokens"),
        (torch.tensor([[4, 5]]), {"attention_mask": torch.ones(1, 3)}, "attention_mask has shape"),
        ([[4], [5]], {"attention_mask": torch.ones(2, 1)}, "only accepted with a"),
        ([], {}, "non-empty sequence"),
        ([[4, 5], [2.5]], {}, "prompt 1 holds torch.float32 values; prompts are integer token ids"),
        ([torch.tensor([True, False])], {}, "prompt 0 holds torch.bool values"),
        (torch.tensor([[True, False]]), {}, "integer token ids"),
        ([[4, -1]], {}, r"must lie in the model's vocabulary \[0, vocab_size\), got ids from -1 to 4"),
    ],
)
def test_bad_prompts_are_refused(prompts, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(ramp_logits, prompts, mask_token_id=MASK, **kwargs)


def test_prompt_ids_outside_the_vocabulary_are_refused_before_the_model_runs():
    """A model that knows its vocabulary (an nn.Module with input embeddings) refuses ids past its end, padding
    included (the model embeds it, masked or not)."""
    model = load_model("tiny-llada")
    vocab = model.get_input_embeddings().num_embeddings
    with pytest.raises(ValueError, match=rf"vocabulary \[0, {vocab}\), got ids from 3 to {vocab}; encode the prompts"):
        generate(model, [[3, vocab]], SamplerConfig(gen_length=2, steps=1))
    with pytest.raises(ValueError, match=r"\(padding included\) .* got ids from -7 to 4"):
        generate(model, torch.tensor([[-7, 3, 4]]), SamplerConfig(gen_length=2, steps=1),
                 attention_mask=torch.tensor([[False, True, True]]))
    assert generate(model, [[3, vocab - 1]], SamplerConfig(gen_length=2, steps=1)).answer.shape == (1, 2)


def test_bad_model_outputs_are_refused():
    with pytest.raises(TypeError, match="cannot generate with a str.*load_model"):
        generate("tiny-llada", [[4]])
    with pytest.raises(ValueError, match=r"logits of shape \(1, 272\) for input_ids \(1, 17\); it must return"):
        generate(lambda x, m: torch.zeros(x.shape[0], x.shape[1] * VOCAB), [[4]], mask_token_id=MASK)
    with pytest.raises(ValueError, match="mask_token_id=40 is outside the vocabulary of 16"):
        generate(ramp_logits, [[4]], mask_token_id=40)
    with pytest.raises(FloatingPointError, match="NaN logits at step 0"):
        generate(lambda x, m: torch.full((*x.shape, VOCAB), float("nan")), [[4]], mask_token_id=MASK)


@pytest.mark.parametrize("sampler", ["llada", "dream", "threshold", "probe"])
def test_seeded_generation_repeats(sampler):
    model = ContextModel(torch.Generator().manual_seed(1))
    config = SamplerConfig(sampler=sampler, gen_length=8, steps=8, temperature=5.0)
    runs = [generate(model, PROMPTS, config, mask_token_id=MASK, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)


def test_empty_prompts_generate_unconditionally(gen):
    model = ContextModel(gen)
    config = SamplerConfig(gen_length=6, steps=6)
    out = generate(model, [[], [4, 5]], config, mask_token_id=MASK, pad_token_id=PAD)
    assert out.prompt_len == 2
    assert torch.equal(out.answer[0], generate(model, [[]], config, mask_token_id=MASK).answer[0])


def test_logits_of_selected_rows_come_from_rows_fn_or_the_full_logits():
    rows = torch.zeros(2, 17, dtype=torch.bool)
    rows[0, 3] = rows[1, 5:8] = True
    ids = torch.full((2, 17), MASK)
    plain = Denoiser(ramp_logits, MASK)
    assert torch.equal(plain.logits_at(ids, None, rows), ramp_logits(ids)[rows])
    asked = []
    selective = Denoiser(ramp_logits, MASK, rows_fn=lambda x, m, r, count: asked.append(r) or ramp_logits(x)[r])
    config = SamplerConfig(gen_length=16, block_length=8, steps=16)
    out = generate(selective, [[4]] * 2, config)
    assert torch.equal(out.tokens, generate(plain, [[4]] * 2, config).tokens)
    assert [int(r.sum()) for r in asked[:2]] == [16, 14]  # the first block's masked positions, one committed a step
    # a rows_fn from before `count` existed is called without it
    older = Denoiser(ramp_logits, MASK, rows_fn=lambda x, m, r: ramp_logits(x)[r])
    assert torch.equal(generate(older, [[4]] * 2, config).tokens, out.tokens)
    wrong = Denoiser(ramp_logits, MASK, rows_fn=lambda x, m, r, count: ramp_logits(x))
    with pytest.raises(ValueError, match=r"logits of shape \(2, 17, 16\) for 4 selected positions; it must return "
                                         r"\[4, V\]"):
        wrong.logits_at(ids, None, rows)


def test_state_refuses_to_read_committed_positions():
    state = DenoisingState(Denoiser(ramp_logits, MASK), prompt_batch([[4, 5]]), 4)
    assert state.logits_at(state.masked).shape == (4, VOCAB)
    with pytest.raises(RuntimeError, match="step 0 asked for the logits of committed positions"):
        state.logits_at(torch.ones_like(state.masked))


def test_state_spreads_values_to_the_rows_it_read():
    state = DenoisingState(Denoiser(ramp_logits, MASK), prompt_batch([[4, 5], [6]]), 4)
    with pytest.raises(RuntimeError, match="call logits_at first"):
        state.spread(torch.zeros(0), 0.0)
    rows = state.masked.clone()
    rows[0, 3] = rows[1, 5] = False
    logits = state.logits_at(rows)
    expected = torch.full(rows.shape, -1.0, dtype=logits.dtype)
    expected[rows] = logits[:, 2]
    assert torch.equal(state.spread(logits[:, 2], -1.0), expected)


def test_a_commit_over_committed_positions_is_reported_at_the_next_check():
    state = DenoisingState(Denoiser(ramp_logits, MASK), prompt_batch([[4, 5]]), 4)
    state.logits_at(state.masked)
    state.commit(state.masked.clone(), torch.full_like(state.x, 3))
    state.commit(state.prompt_tokens.clone(), torch.full_like(state.x, 3))  # a sampler bug, found without waiting
    with pytest.raises(RuntimeError, match="step 1 tried to overwrite committed positions; a sampler bug"):
        state.check()
    state.check()  # reported once


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_the_output_counts_the_steps_run(name, gen):
    config = DETERMINISTIC[name]
    out = generate(ContextModel(gen), PROMPTS, config, mask_token_id=MASK, pad_token_id=PAD, record=True)
    assert out.num_steps == out.trajectory.num_steps
    if config.sampler == "threshold":  # at least one commit per step, at least one step per block
        assert config.gen_length // config.block_length <= out.num_steps <= config.gen_length
    else:
        assert out.num_steps == config.steps

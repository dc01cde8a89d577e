"""Samplers on the project's native tiny LLaDA and Dream models (random weights), through their adapters."""
import functools

import pytest
import torch
from torch.overrides import TorchFunctionMode

from faircalib.deploy import GraphedLogits
from faircalib.diffusion import SamplerConfig, as_denoiser, generate
from faircalib.diffusion.state import DenoisingState
from faircalib.models import build_random, get_adapter
from tests.models.conftest import lm_head_rows

VOCAB, MASK, PAD = 20, 1, 0
CONFIGS = {
    "llada": dict(d_model=32, n_heads=2, n_kv_heads=2, n_layers=2, mlp_hidden_size=64, vocab_size=VOCAB,
                  embedding_size=VOCAB, max_sequence_length=24, mask_token_id=MASK),
    "dream": dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2,
                  intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=24, mask_token_id=MASK),
}
PROMPTS = [[4, 5, 6, 7, 8], [9], [10, 11, 12]]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
    model = build_random(request.param, CONFIGS[request.param], generator=torch.Generator().manual_seed(0))
    # Random weights predict almost uniformly, so rounding could reorder near-tied confidences; a sharper head
    # keeps decisions clear of ties, and the comparison below tests the padding, not float luck.
    with torch.no_grad():
        get_adapter(model).lm_head.weight.mul_(30)
    return model


@pytest.mark.parametrize("sampler", ["llada", "dream"])
def test_padded_batch_equals_each_prompt_alone(model, sampler):
    config = SamplerConfig(sampler=sampler, gen_length=8, steps=8)
    batch = generate(model, PROMPTS, config, pad_token_id=PAD, record=True)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, [prompt], config, record=True)
        assert torch.equal(batch.answer[row], alone.answer[0])
        width = len(prompt) + config.gen_length
        for stat in ("top1_prob", "entropy"):
            torch.testing.assert_close(getattr(batch.trajectory, stat)[:, row, -width:],
                                       getattr(alone.trajectory, stat)[:, 0], equal_nan=True, atol=1e-5, rtol=1e-4)


def test_mask_id_context_and_device_come_from_the_model(model):
    denoiser = as_denoiser(model)
    assert (denoiser.mask_token_id, denoiser.max_length, denoiser.device) == (MASK, 24, torch.device("cpu"))
    out = generate(model, [[4, 5]], SamplerConfig(gen_length=8, steps=8), record=True)
    assert out.trajectory.mask_token_id == MASK
    with pytest.raises(ValueError, match="exceeds the model context of 24 tokens"):
        generate(model, [[4] * 10], SamplerConfig(gen_length=16, steps=16))


def test_model_without_mask_token_is_refused():
    config = dict(CONFIGS["llada"], mask_token_id=None)
    model = build_random("llada", config, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="LLaDAModelLM has no mask token"):
        generate(model, [[4, 5]])


@pytest.mark.parametrize("config", [
    SamplerConfig(gen_length=8, block_length=4, steps=8, temperature=1.0),
    SamplerConfig(gen_length=8, steps=4, cfg_scale=1.0),
    SamplerConfig(sampler="dream", remasking="entropy", gen_length=8, steps=4, temperature=0.5),
    SamplerConfig(sampler="threshold", gen_length=8, block_length=4, threshold=0.5),
], ids=["llada", "llada_cfg", "dream", "threshold"])
@pytest.mark.parametrize("record", [False, True])
def test_head_on_the_read_rows_generates_as_the_full_logits_do(model, config, record):
    """Through the adapter the LM head runs on the masked positions only (`logits_at`); a logits function gives
    every position's logits. Same tokens, same statistics."""
    adapter, seed = get_adapter(model), 3
    with lm_head_rows(adapter) as rows_seen:
        fast = generate(model, PROMPTS, config, pad_token_id=PAD, record=record,
                        generator=torch.Generator().manual_seed(seed))
    full = generate(adapter.logits, PROMPTS, config, pad_token_id=PAD, record=record, mask_token_id=MASK,
                    generator=torch.Generator().manual_seed(seed))
    assert torch.equal(fast.tokens, full.tokens)
    if record:
        for stat in ("top1", "top1_prob", "margin", "entropy"):
            torch.testing.assert_close(getattr(fast.trajectory, stat), getattr(full.trajectory, stat),
                                       equal_nan=True, atol=1e-6, rtol=1e-5)
    positions = len(PROMPTS) * (5 + config.gen_length) * (2 if config.cfg_scale else 1)
    assert rows_seen and max(rows_seen) < positions  # the prompts are never read


# Torch calls that make the host wait for a GPU: a value read back, or an output whose size depends on values.
WAITING_CALLS = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "argwhere",
                 "masked_select", "unique"}
INDEXING_CALLS = {"__getitem__", "__setitem__", "index_put", "index_put_"}


def _bool_index(index) -> bool:
    parts = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(part, torch.Tensor) and part.dtype == torch.bool for part in parts)


class WaitingCalls(TorchFunctionMode):
    """Records, in order, the calls that would make the host wait for a GPU (boolean indexing among them), next to
    markers the test appends to `events`."""

    def __init__(self):
        super().__init__()
        self.events = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in WAITING_CALLS or (name in INDEXING_CALLS and len(args) > 1 and _bool_index(args[1])):
            self.events.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("config", [
    SamplerConfig(gen_length=8, block_length=4, steps=8),
    SamplerConfig(gen_length=8, steps=4, cfg_scale=1.0, temperature=1.0),
    SamplerConfig(sampler="threshold", gen_length=8, block_length=4, threshold=0.5),
    SamplerConfig(sampler="probe", gen_length=8, steps=8),
    SamplerConfig(sampler="dream", remasking="maskgit_plus", gen_length=8, steps=4, temperature=0.5, top_p=0.9),
    SamplerConfig(sampler="dream", remasking="origin", gen_length=8, steps=4),
], ids=["llada", "llada_cfg", "threshold", "probe", "dream", "dream_origin"])
@pytest.mark.parametrize("graphed,record", [(False, False), (True, False), (False, True)],
                         ids=["model", "graphed", "record"])
def test_a_step_queues_its_forward_choices_and_commit_without_waiting(model, config, graphed, record, monkeypatch):
    # On a GPU each wait drains the queue, and the host's launches after it leave the GPU idle: a step may wait before
    # its forward (the rows it reads), not between the forward and its commit. CUDA itself checks the same in
    # tests/deploy/test_cuda_graph.py; here the calls that would wait are caught on the CPU.
    recorder = WaitingCalls()
    adapter_type, hidden = type(get_adapter(model)), type(get_adapter(model)).hidden
    commit = DenoisingState.commit

    @functools.wraps(hidden)
    def hidden_then_mark(self, *args, **kwargs):
        recorder.events.append("forward-start")
        out = hidden(self, *args, **kwargs)
        recorder.events.append("forward")
        return out

    def commit_then_mark(self, *args, **kwargs):
        commit(self, *args, **kwargs)
        recorder.events.append("committed")

    monkeypatch.setattr(adapter_type, "hidden", hidden_then_mark)
    monkeypatch.setattr(DenoisingState, "commit", commit_then_mark)
    runner = GraphedLogits(model) if graphed else model
    with recorder:
        out = generate(runner, PROMPTS, config, pad_token_id=PAD, generator=torch.Generator().manual_seed(3),
                       record=record)
    monkeypatch.undo()
    assert torch.equal(out.tokens, generate(model, PROMPTS, config, pad_token_id=PAD,
                                            generator=torch.Generator().manual_seed(3)).tokens)
    waits, before, phase = [], [[]], "before"
    for event in recorder.events:
        if event in ("forward-start", "forward", "committed"):
            phase = {"forward-start": "forward", "forward": "between", "committed": "before"}[event]
            if event == "committed":
                before.append([])
        elif phase == "between":
            waits.append(event)
        elif phase == "before":
            before[-1].append(event)
    assert recorder.events.count("forward") == recorder.events.count("committed") > 0
    assert waits == []
    # Before its forward, a step reads back one stack of flags and counts (`DenoisingState.logits_at`, or the
    # threshold sampler's loop condition `DenoisingState.count`, which also ends each block with a read of zero). The
    # first step follows the set-up's reads (the prompts' padding); after the last one, `check()` reads the last
    # step's flags where no read did. (An eager model may wait in its forward: a padded batch's mask, `models.base`.)
    assert before[0][-1:] == ["tolist"]
    assert all(b in (["tolist"], ["tolist", "tolist"]) for b in before[1:])
    extra_reads = config.num_blocks - 1 if config.sampler == "threshold" else 0
    assert sum(map(len, before[1:])) == out.num_steps + extra_reads

"""GraphedLogits: eager fallback on CPU (same logits, same generation), argument checks, and on CUDA replayed graphs
equal to the eager forward for every captured shape (run on the GPU machine; skipped in CPU-only CI)."""
import warnings

import pytest
import torch

from faircalib.deploy import GraphedLogits, convert_to_w4a4
from faircalib.diffusion.config import SamplerConfig
from faircalib.diffusion.generate import generate
from faircalib.diffusion.prompts import prompt_batch
from faircalib.diffusion.state import DenoisingState
from faircalib.models import get_adapter

from .conftest import quantized_tiny


def test_cpu_inputs_run_eagerly_and_generate_the_same(family):
    model = quantized_tiny(family, "flatquant")
    convert_to_w4a4(model)
    graphed = GraphedLogits(model)
    ids = torch.randint(0, 48, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(graphed(ids), get_adapter(model).logits(ids))
    prompt = torch.randint(0, 48, (2, 6), generator=torch.Generator().manual_seed(1))
    config = SamplerConfig(sampler=family, gen_length=8, steps=8)
    want = generate(model, prompt, config, generator=torch.Generator().manual_seed(2))
    got = generate(graphed, prompt, config, generator=torch.Generator().manual_seed(2))
    assert torch.equal(got.tokens, want.tokens)
    rows = torch.rand(2, 10, generator=torch.Generator().manual_seed(3)) < 0.5
    with torch.no_grad():
        assert torch.equal(graphed.logits_at(ids, None, rows), get_adapter(model).logits_at(ids, None, rows))
    assert graphed.fallback_reason is None and not graphed._graphs  # nothing captured on the CPU


def test_bad_arguments_are_named(family):
    model = quantized_tiny(family, "rtn")
    with pytest.raises(ValueError, match="max_graphs"):
        GraphedLogits(model, max_graphs=0)


def test_a_failed_capture_warns_once_and_runs_eagerly(family, monkeypatch):
    # The capture's own failure needs a GPU (the test below); here the first CUDA call of the capture fails.
    model = quantized_tiny(family, "rtn")
    graphed = GraphedLogits(model)

    def no_stream(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(torch.cuda, "Stream", no_stream)
    ids = torch.randint(0, 48, (2, 10), generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning, match="GraphedLogits: CUDA graph capture failed, running eagerly: operation not "
                                            "permitted when stream is capturing$"):
        assert graphed._capture(get_adapter(model).hidden, ids, None) is None
    assert graphed.fallback_reason.endswith("operation not permitted when stream is capturing")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_a_forward_that_waits_for_the_gpu_is_not_captured_but_runs(family, monkeypatch):
    model = quantized_tiny(family, "rtn")
    model.cuda()
    adapter = get_adapter(model)
    hidden = type(adapter).hidden

    def hidden_that_waits(self, *args, **kwargs):
        out = hidden(self, *args, **kwargs)
        out.sum().item()  # a synchronisation: not allowed while a graph is captured
        return out

    ids = torch.randint(0, 48, (2, 10), generator=torch.Generator().manual_seed(0)).cuda()
    rows = torch.ones(2, 10, dtype=torch.bool, device="cuda")
    with torch.no_grad():
        want = adapter.logits_at(ids, None, rows)
        monkeypatch.setattr(type(adapter), "hidden", hidden_that_waits)
        graphed = GraphedLogits(model)
        with pytest.warns(RuntimeWarning, match="CUDA graph capture failed, running eagerly"):
            got = graphed.logits_at(ids, None, rows)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once: later calls run eagerly without a word
            graphed.logits_at(ids, None, rows)
    assert graphed.fallback_reason is not None and not graphed._graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_replayed_graphs_match_the_eager_forward(family):
    model = quantized_tiny(family, "flatquant")
    convert_to_w4a4(model)
    model.cuda()
    adapter, graphed = get_adapter(model), GraphedLogits(model, max_graphs=2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for shape in [(2, 10), (1, 7), (2, 10), (3, 5)]:
            ids = torch.randint(0, 48, shape, generator=gen).cuda()
            torch.testing.assert_close(graphed(ids), adapter.logits(ids), rtol=0, atol=0)
    assert graphed.fallback_reason is None and len(graphed._graphs) == 2  # least recently used evicted


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_logits_at_replays_the_blocks_and_runs_the_head_on_the_rows(family):
    model = quantized_tiny(family, "flatquant")
    convert_to_w4a4(model)
    model.cuda()
    adapter, graphed = get_adapter(model), GraphedLogits(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(3):  # one graph of the blocks, replayed for other rows of the same shape
            ids = torch.randint(0, 48, (2, 10), generator=gen).cuda()
            rows = (torch.rand(2, 10, generator=gen) < 0.5).cuda()
            torch.testing.assert_close(graphed.logits_at(ids, None, rows), adapter.logits_at(ids, None, rows),
                                       rtol=0, atol=0)
        assert [key[0] for key in graphed._graphs] == ["hidden"]
        prompt = torch.randint(0, 48, (2, 6), generator=gen)
        config = SamplerConfig(sampler=family, gen_length=8, steps=8)
        want = generate(model, prompt, config, generator=torch.Generator("cuda").manual_seed(2))
        got = generate(graphed, prompt, config, generator=torch.Generator("cuda").manual_seed(2))
    assert torch.equal(got.tokens, want.tokens) and graphed.fallback_reason is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("sampler,record", [("llada", False), ("probe", False), ("probe", True), ("dream", True)])
def test_a_generation_step_does_not_wait_for_the_gpu_between_its_replay_and_its_commit(family, sampler, record,
                                                                                       monkeypatch):
    # CUDA's own check of what tests/diffusion/test_native_models.py checks by call names: any synchronisation between
    # the replayed forward and the commit raises. A CPU generator (probe's random order) sends draws to the GPU.
    model = quantized_tiny(family, "flatquant")
    convert_to_w4a4(model)
    model.cuda()
    replay, commit = GraphedLogits._replay, DenoisingState.commit

    def replay_then_forbid_waits(self, *args, **kwargs):
        out = replay(self, *args, **kwargs)
        torch.cuda.set_sync_debug_mode("error")
        return out

    def commit_then_allow_waits(self, *args, **kwargs):
        commit(self, *args, **kwargs)
        torch.cuda.set_sync_debug_mode("default")

    prompt = torch.randint(0, 48, (2, 6), generator=torch.Generator().manual_seed(1))
    config = SamplerConfig(sampler=sampler, gen_length=8, steps=8)
    want = generate(model, prompt, config, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(GraphedLogits, "_replay", replay_then_forbid_waits)
    monkeypatch.setattr(DenoisingState, "commit", commit_then_allow_waits)
    graphed = GraphedLogits(model)
    try:
        got = generate(graphed, prompt, config, generator=torch.Generator().manual_seed(2), record=record)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(got.tokens, want.tokens) and graphed.fallback_reason is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_a_padded_batch_is_captured_and_generates_as_the_eager_model(family):
    # Prompts of different lengths pass an attention mask; reading it on the host made every capture fail (eager).
    model = quantized_tiny(family, "flatquant")
    convert_to_w4a4(model)
    model.cuda()
    prompts = [torch.tensor([5, 6, 7, 8]), torch.tensor([9])]
    config = SamplerConfig(sampler=family, gen_length=8, steps=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture warns
        graphed = GraphedLogits(model)
        got = generate(graphed, prompts, config, pad_token_id=0, generator=torch.Generator().manual_seed(2))
    want = generate(model, prompts, config, pad_token_id=0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(got.tokens, want.tokens)
    assert graphed.fallback_reason is None and [key[0] for key in graphed._graphs] == ["hidden"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_prompts_padded_to_one_width_share_one_graph(family):
    # `generate --pad-multiple 8`: prompts of 6, 2 and 4 tokens, one at a time, all run as [1, 8 + 8]
    model = quantized_tiny(family, "flatquant")
    convert_to_w4a4(model)
    model.cuda()
    config = SamplerConfig(sampler=family, gen_length=8, steps=8)
    graphed = GraphedLogits(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture warns
        for prompt in ([5, 6, 7, 8, 9, 10], [9, 5], [7, 8, 9, 10]):
            batch = prompt_batch([torch.tensor(prompt)], pad_token_id=0, width_multiple=8)
            ids, mask = batch.ids.cuda(), batch.attention_mask.cuda()
            got = generate(graphed, ids, config, attention_mask=mask, generator=torch.Generator().manual_seed(2))
            want = generate(model, ids, config, attention_mask=mask, generator=torch.Generator().manual_seed(2))
            assert ids.shape == (1, 8) and torch.equal(got.tokens, want.tokens)
    assert graphed.fallback_reason is None and len(graphed._graphs) == 1


def test_compile_blocks_option_compiles_every_block_and_keeps_the_logits(family):
    model = quantized_tiny(family, "flatquant")
    convert_to_w4a4(model)
    ids = torch.randint(0, 48, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = get_adapter(model).logits(ids)
        graphed = GraphedLogits(model, compile_blocks=True, compile_kwargs={"backend": "aot_eager"})
        assert all(block._compiled_call_impl is not None for block in get_adapter(model).blocks)
        assert torch.equal(graphed(ids), want)

"""Configs (published and synthetic) and build_random."""
import pytest
import torch

from faircalib.models import DreamModel, LLaDAModelLM, build_random, make_config
from faircalib.models.build import shipped_configs

from .conftest import TINY, tiny_model


def test_published_llada_config_builds_the_8b_shapes_on_meta():
    model = build_random("llada", "llada-8b", torch.bfloat16, "meta")
    assert isinstance(model, LLaDAModelLM)
    c = model.config
    assert (c.d_model, c.n_heads, c.kv_heads(), c.n_layers, c.mlp_width()) == (4096, 32, 32, 32, 12288)
    assert (c.vocab_size, c.rows(), c.rope_theta, c.rms_norm_eps) == (126464, 126464, 500000.0, 1e-5)
    assert (c.mask_token_id, c.eos_token_id, c.weight_tying) == (126336, 126081, False)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["model.transformer.blocks.31.ff_out.weight"] == (4096, 12288)
    assert shapes["model.transformer.ff_out.weight"] == (126464, 4096)
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 8_015_581_184


def test_published_dream_config_builds_the_7b_shapes_on_meta():
    model = build_random("dream", "dream-7b", torch.bfloat16, "meta")
    assert isinstance(model, DreamModel)
    c = model.config
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.num_hidden_layers) == (3584, 28, 4, 28)
    assert (c.intermediate_size, c.vocab_size, c.rope_theta, c.rms_norm_eps) == (18944, 152064, 1e6, 1e-6)
    assert (c.mask_token_id, c.pad_token_id, c.tie_word_embeddings) == (151666, 151643, False)
    assert model.rope_spec() == (128, 1e6)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["model.layers.27.self_attn.k_proj.weight"] == (512, 3584)
    assert shapes["model.layers.27.self_attn.k_proj.bias"] == (512,)
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (3584, 18944)
    assert shapes["lm_head.weight"] == (152064, 3584)
    assert sum(p.numel() for p in model.parameters()) == 7_615_616_512


def test_shipped_config_names():
    assert shipped_configs() == ["dream-7b", "llada-8b"]


def test_build_random_is_reproducible_and_local(family):
    state = torch.random.get_rng_state()
    a, b, c = tiny_model(family, seed=1), tiny_model(family, seed=1), tiny_model(family, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y), name
    assert not torch.equal(a.get_input_embeddings().weight, c.get_input_embeddings().weight)


def test_build_random_in_bf16(family):
    model = build_random(family, TINY[family], torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in model.parameters())
    norm = model.model.norm if family == "dream" else model.model.transformer.ln_f
    assert torch.equal(norm.weight, torch.ones_like(norm.weight))


def test_tied_weights_survive_materialisation():
    model = build_random("dream", {**TINY["dream"], "tie_word_embeddings": True})
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_family_and_model_type_must_agree():
    with pytest.raises(ValueError, match="model_type 'llada' but family='dream'"):
        make_config(TINY["llada"], "dream")
    with pytest.raises(ValueError, match="not a native family"):
        make_config({**TINY["llada"], "model_type": "llama"})
    with pytest.raises(FileNotFoundError, match="shipped names"):
        make_config("llada-80b")

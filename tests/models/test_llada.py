"""LLaDA native implementation against a straightforward re-implementation of the public modeling_llada.py math.

The reference below is written from the published formulas (OLMo-style RotaryEmbedding with the view(..., 2, hs/2)
rotate-half, RMSLayerNorm, LLaDALlamaBlock, LLaDAModel.forward), works on the raw state dict, and uses an
explicit softmax instead of SDPA, so it shares no code with faircalib.models.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from faircalib.models import LLaDAConfig, LLaDAModelLM

from .conftest import TINY, random_ids, tiny_model


def reference_llada_logits(state: dict, config: dict, input_ids: torch.Tensor) -> torch.Tensor:
    d, n_heads, theta = config["d_model"], config["n_heads"], config["rope_theta"]
    n_kv, hs, eps = config.get("n_kv_heads") or n_heads, d // n_heads, config.get("rms_norm_eps", 1e-5)

    def rms(x, prefix):
        og = x.dtype
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        out = state[prefix + ".weight"] * x32.to(og)
        return out + state[prefix + ".bias"] if prefix + ".bias" in state else out

    def linear(x, prefix):
        return F.linear(x, state[prefix + ".weight"], state.get(prefix + ".bias"))

    def rotate_half(t):
        b, nh, length, h = t.size()
        x1, x2 = t.view(b, nh, length, 2, h // 2).unbind(dim=-2)
        return torch.cat((-x2, x1), dim=-1)

    batch, length = input_ids.shape
    inv_freq = 1.0 / (theta ** (torch.arange(0, hs, 2, dtype=torch.float) / hs))
    freqs = torch.einsum("i , j -> i j", torch.arange(length, dtype=torch.float), inv_freq)
    positions = torch.cat((freqs, freqs), dim=-1)
    pos_sin, pos_cos = positions.sin()[None, None], positions.cos()[None, None]

    x = F.embedding(input_ids, state["model.transformer.wte.weight"])
    for i in range(config["n_layers"]):
        p = f"model.transformer.blocks.{i}"
        h = rms(x, f"{p}.attn_norm")
        q = linear(h, f"{p}.q_proj").view(batch, length, n_heads, hs).transpose(1, 2)
        k = linear(h, f"{p}.k_proj").view(batch, length, n_kv, hs).transpose(1, 2)
        v = linear(h, f"{p}.v_proj").view(batch, length, n_kv, hs).transpose(1, 2)
        qf, kf = q.float(), k.float()
        q = ((qf * pos_cos) + (rotate_half(qf) * pos_sin)).to(q.dtype)
        k = ((kf * pos_cos) + (rotate_half(kf) * pos_sin)).to(k.dtype)
        k = k.repeat_interleave(n_heads // n_kv, dim=1)
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
        weights = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(hs), dim=-1)
        att = (weights @ v).transpose(1, 2).contiguous().view(batch, length, d)
        x = x + linear(att, f"{p}.attn_out")
        h = rms(x, f"{p}.ff_norm")
        x = x + linear(F.silu(linear(h, f"{p}.ff_proj")) * linear(h, f"{p}.up_proj"), f"{p}.ff_out")
    x = rms(x, "model.transformer.ln_f")
    if config.get("weight_tying"):
        return F.linear(x, state["model.transformer.wte.weight"])
    return linear(x, "model.transformer.ff_out")


@pytest.mark.parametrize(
    "overrides",
    [{}, {"n_kv_heads": 2}, {"include_qkv_bias": True}, {"weight_tying": True}, {"include_bias": True}],
    ids=["plain", "gqa", "qkv-bias", "tied", "all-bias"],
)
def test_logits_match_public_formulas(overrides, gen):
    model = tiny_model("llada", **overrides)
    for name, tensor in model.named_parameters():
        if name.endswith("bias") or "norm" in name or "ln_f" in name:  # make biases and norm weights non-trivial
            tensor.data.normal_(0.3, 0.5, generator=gen)
    ids = random_ids(gen)
    expected = reference_llada_logits(model.state_dict(), {**TINY["llada"], **overrides}, ids)
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_bf16_model_tracks_the_bf16_reference(gen):
    model = tiny_model("llada").to(torch.bfloat16)
    ids = random_ids(gen)
    expected = reference_llada_logits(model.state_dict(), TINY["llada"], ids)
    logits = model(ids).logits
    assert logits.dtype == torch.bfloat16
    # Only the attention kernel differs (SDPA vs explicit softmax): a few bf16 ulps on logits of size ~1.
    torch.testing.assert_close(logits.float(), expected.float(), atol=2e-2, rtol=2e-2)


def test_logits_cover_embedding_size_rows(gen):
    logits = tiny_model("llada")(random_ids(gen)).logits
    assert logits.shape == (2, 11, TINY["llada"]["embedding_size"])


def test_tied_model_has_one_matrix():
    model = tiny_model("llada", weight_tying=True)
    assert model.model.transformer.ff_out.weight is model.model.transformer.wte.weight
    assert model.model.transformer.ff_out.bias is None
    assert model.tied_weights() == {"model.transformer.ff_out.weight": "model.transformer.wte.weight"}


def test_bias_options_create_the_published_parameters():
    names = set(tiny_model("llada", include_qkv_bias=True).state_dict())
    assert "model.transformer.blocks.0.q_proj.bias" in names and "model.transformer.blocks.1.v_proj.bias" in names
    assert "model.transformer.blocks.0.attn_out.bias" not in names
    assert "model.transformer.blocks.0.ff_out.bias" not in names


@pytest.mark.parametrize(
    "option", [{"block_type": "sequential"}, {"activation_type": "swiglu"}, {"alibi": True}, {"rope": False},
               {"layer_norm_type": "default"}, {"block_group_size": 2}])
def test_unsupported_variants_are_refused_before_allocation(option):
    with pytest.raises(ValueError, match="faircalib.models.llada: unsupported LLaDA config options"):
        LLaDAModelLM(LLaDAConfig(**{**TINY["llada"], **option}))


def test_inconsistent_head_counts_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        LLaDAModelLM(LLaDAConfig(**{**TINY["llada"], "n_kv_heads": 3}))

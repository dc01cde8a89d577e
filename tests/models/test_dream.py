"""Dream native implementation against a straightforward re-implementation of the public modeling_dream.py math.

The reference follows the published Qwen2-derived code (DreamRMSNorm, DreamRotaryEmbedding with cos/sin cast to
the activation dtype, apply_rotary_pos_emb, repeat_kv via expand, DreamSdpaAttention with is_causal=False,
DreamMLP, lm_head) on the raw state dict, with an explicit softmax instead of SDPA.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from faircalib.models import DreamConfig, DreamModel

from .conftest import TINY, random_ids, tiny_model


def reference_dream_logits(state: dict, config: dict, input_ids: torch.Tensor) -> torch.Tensor:
    d, n_heads, n_kv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    hd, eps, theta = d // n_heads, config.get("rms_norm_eps", 1e-6), config["rope_theta"]
    batch, length = input_ids.shape

    def rms(x, name):
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return state[name] * x.to(dtype)

    def rotate_half(x):
        return torch.cat((-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]), dim=-1)

    def repeat_kv(x, n_rep):
        b, kv, s, h = x.shape
        return x[:, :, None].expand(b, kv, n_rep, s, h).reshape(b, kv * n_rep, s, h)

    hidden = F.embedding(input_ids, state["model.embed_tokens.weight"])
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    position_ids = torch.arange(length)[None].float()
    freqs = (inv_freq[None, :, None] @ position_ids[:, None, :]).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(hidden.dtype)[:, None], emb.sin().to(hidden.dtype)[:, None]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        residual = hidden
        h = rms(hidden, f"{p}.input_layernorm.weight")
        q = F.linear(h, state[f"{p}.self_attn.q_proj.weight"], state[f"{p}.self_attn.q_proj.bias"])
        k = F.linear(h, state[f"{p}.self_attn.k_proj.weight"], state[f"{p}.self_attn.k_proj.bias"])
        v = F.linear(h, state[f"{p}.self_attn.v_proj.weight"], state[f"{p}.self_attn.v_proj.bias"])
        q = q.view(batch, length, n_heads, hd).transpose(1, 2)
        k = k.view(batch, length, n_kv, hd).transpose(1, 2)
        v = v.view(batch, length, n_kv, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = repeat_kv(k, n_heads // n_kv), repeat_kv(v, n_heads // n_kv)
        weights = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(hd), dim=-1, dtype=torch.float32).to(q.dtype)
        att = (weights @ v).transpose(1, 2).reshape(batch, length, d)
        hidden = residual + F.linear(att, state[f"{p}.self_attn.o_proj.weight"])
        h = rms(hidden, f"{p}.post_attention_layernorm.weight")
        gate = F.linear(h, state[f"{p}.mlp.gate_proj.weight"])
        up = F.linear(h, state[f"{p}.mlp.up_proj.weight"])
        hidden = hidden + F.linear(F.silu(gate) * up, state[f"{p}.mlp.down_proj.weight"])
    return F.linear(rms(hidden, "model.norm.weight"), state["lm_head.weight"])


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_logits_match_public_formulas(kv_heads, gen):
    model = tiny_model("dream", num_key_value_heads=kv_heads)
    for name, tensor in model.named_parameters():
        if name.endswith("bias") or "norm" in name:
            tensor.data.normal_(0.3, 0.5, generator=gen)
    ids = random_ids(gen)
    expected = reference_dream_logits(model.state_dict(), {**TINY["dream"], "num_key_value_heads": kv_heads}, ids)
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_bf16_model_tracks_the_bf16_reference(gen):
    model = tiny_model("dream").to(torch.bfloat16)
    ids = random_ids(gen)
    logits = model(ids).logits
    assert logits.dtype == torch.bfloat16
    expected = reference_dream_logits(model.state_dict(), TINY["dream"], ids)
    torch.testing.assert_close(logits.float(), expected.float(), atol=2e-2, rtol=2e-2)


def test_biases_on_qkv_only_and_gqa_shapes():
    state = tiny_model("dream").state_dict()
    assert {"model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.k_proj.bias",
            "model.layers.0.self_attn.v_proj.bias"} <= set(state)
    assert not any(n.endswith("bias") and ("o_proj" in n or "mlp" in n or "lm_head" in n) for n in state)
    assert state["model.layers.1.self_attn.k_proj.weight"].shape == (32, 64)  # 2 KV heads x 16
    assert state["model.layers.1.self_attn.q_proj.weight"].shape == (64, 64)


def test_padding_embedding_row_is_zero_at_init():
    model = tiny_model("dream")
    assert torch.count_nonzero(model.model.embed_tokens.weight[TINY["dream"]["pad_token_id"]]) == 0


@pytest.mark.filterwarnings("ignore:`rope_scaling` is deprecated:FutureWarning")
@pytest.mark.parametrize(
    "option, message",
    [({"hidden_act": "gelu"}, "hidden_act"), ({"use_sliding_window": True}, "use_sliding_window"),
     ({"num_key_value_heads": 3}, "num_key_value_heads"), ({"pad_token_id": 50}, "pad_token_id"),
     ({"rope_scaling": {"rope_type": "linear", "factor": 4.0}}, "rope_scaling")])
def test_unsupported_configs_are_refused_before_allocation(option, message):
    with pytest.raises(ValueError, match=f"faircalib.models.dream: unsupported Dream config.*{message}"):
        DreamModel(DreamConfig(**{**TINY["dream"], **option}))

"""RMSNorm and bidirectional attention building blocks."""
import math

import torch

from faircalib.models.layers import RMSNorm, bidirectional_attention
from faircalib.models.rope import apply_rotary, rotary_cos_sin


def test_rmsnorm_normalises_in_fp32_then_scales_in_the_input_dtype(gen):
    norm = RMSNorm(8, eps=1e-5).to(torch.bfloat16)
    norm.weight.data = torch.randn(8, generator=gen).bfloat16()
    x = (torch.randn(3, 8, generator=gen) * 50).bfloat16()
    xf = x.float()
    normalised = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
    assert torch.equal(norm(x), norm.weight * normalised)


def test_rmsnorm_bias_is_added_after_scaling(gen):
    norm = RMSNorm(4, eps=1e-6, bias=True)
    norm.bias.data = torch.tensor([1.0, 2.0, 3.0, 4.0])
    x = torch.randn(2, 4, generator=gen)
    torch.testing.assert_close(norm(x) - norm.bias, RMSNorm(4, eps=1e-6)(x))


def _attention(q, k, v, mask, n_heads=4, n_kv_heads=2):
    cos, sin = rotary_cos_sin(torch.arange(q.shape[1])[None], q.shape[-1] // n_heads, 10000.0)
    return bidirectional_attention(q, k, v, n_heads=n_heads, n_kv_heads=n_kv_heads, position_embeddings=(cos, sin),
                                   attention_mask=mask, rope_in_fp32=True)


def test_attention_is_full_softmax_with_default_scale(gen):
    q, k, v = (torch.randn(1, 6, width, generator=gen) for width in (16, 8, 8))
    cos, sin = rotary_cos_sin(torch.arange(6)[None], 4, 10000.0)
    qh = apply_rotary(q.view(1, 6, 4, 4).transpose(1, 2), cos, sin, in_fp32=True)
    kh = apply_rotary(k.view(1, 6, 2, 4).transpose(1, 2), cos, sin, in_fp32=True).repeat_interleave(2, dim=1)
    vh = v.view(1, 6, 2, 4).transpose(1, 2).repeat_interleave(2, dim=1)
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(4), dim=-1)  # every query sees every key
    expected = (weights @ vh).transpose(1, 2).reshape(1, 6, 16)
    torch.testing.assert_close(_attention(q, k, v, None), expected)


def test_gqa_shares_each_kv_head_with_consecutive_query_heads(gen):
    q, k, v = (torch.randn(2, 5, width, generator=gen) for width in (16, 8, 8))
    grouped = _attention(q, k, v, None, n_heads=4, n_kv_heads=2)
    kh, vh = k.view(2, 5, 2, 4), v.view(2, 5, 2, 4)
    k_full = kh[:, :, [0, 0, 1, 1]].reshape(2, 5, 16)
    v_full = vh[:, :, [0, 0, 1, 1]].reshape(2, 5, 16)
    torch.testing.assert_close(grouped, _attention(q, k_full, v_full, None, n_heads=4, n_kv_heads=4))


def test_masked_keys_get_no_weight(gen):
    q, k, v = (torch.randn(1, 6, width, generator=gen) for width in (16, 8, 8))
    mask = torch.tensor([True, True, True, True, False, False])[None, None, None]
    out = _attention(q, k, v, mask)
    v2 = v.clone()
    v2[:, 4:] = 1e3
    torch.testing.assert_close(_attention(q, k, v2, mask), out)
    assert math.isfinite(out.abs().max().item())

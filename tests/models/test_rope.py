"""Rotary embeddings: layout, precision modes, and the relative-position property."""
import torch

from faircalib.models.rope import apply_rotary, positions_from_padding, rotary_cos_sin, rotate_half


def test_rotate_half_layout():
    x = torch.arange(1.0, 7.0)
    assert torch.equal(rotate_half(x), torch.tensor([-4.0, -5.0, -6.0, 1.0, 2.0, 3.0]))


def test_cos_sin_frequencies_repeat_over_both_halves():
    cos, sin = rotary_cos_sin(torch.arange(5)[None], head_dim=8, theta=10000.0)
    assert cos.shape == (1, 5, 8) and cos.dtype == torch.float32
    assert torch.equal(cos[..., :4], cos[..., 4:]) and torch.equal(sin[..., :4], sin[..., 4:])
    assert torch.equal(cos[0, 0], torch.ones(8)) and torch.equal(sin[0, 0], torch.zeros(8))
    torch.testing.assert_close(sin[0, 3, 1], torch.tensor(3 * 10000.0 ** (-2 / 8)).sin())


def test_scores_depend_only_on_relative_position(gen):
    q, k = torch.randn(1, 1, 1, 16, generator=gen), torch.randn(1, 1, 1, 16, generator=gen)
    cos, sin = rotary_cos_sin(torch.arange(40)[None], 16, 500000.0)

    def score(i, j):
        qi = apply_rotary(q, cos[:, i:i + 1], sin[:, i:i + 1], in_fp32=True)
        kj = apply_rotary(k, cos[:, j:j + 1], sin[:, j:j + 1], in_fp32=True)
        return (qi * kj).sum()

    torch.testing.assert_close(score(3, 7), score(30, 34), atol=1e-5, rtol=1e-5)


def test_fp32_mode_rounds_once_and_dtype_mode_rotates_in_bf16(gen):
    x = torch.randn(2, 3, 5, 8, generator=gen).to(torch.bfloat16)
    cos, sin = rotary_cos_sin(torch.arange(100, 105)[None], 8, 10000.0)
    exact = x.float() * cos[:, None] + rotate_half(x.float()) * sin[:, None]
    assert torch.equal(apply_rotary(x, cos, sin, in_fp32=True), exact.to(torch.bfloat16))
    low = apply_rotary(x, cos, sin, in_fp32=False)
    assert low.dtype == torch.bfloat16
    assert torch.equal(low, x * cos[:, None].bfloat16() + rotate_half(x) * sin[:, None].bfloat16())


def test_positions_skip_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert positions_from_padding(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]

"""The PyTorch reference (the specification) against hand-computed values and an autograd derivation of its
gradient formulas."""
import pytest
import torch

from faircalib.kernels import quant_reference as ref


def _one(value: float) -> torch.Tensor:
    return torch.tensor(value)


def test_symmetric_codes_scale_and_round_half_even():
    # absmax 7 at 4 bits: scale = 7 / 7 = 1, so codes are x rounded half-to-even
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -2.5, 7.0, -7.0, 3.49]])
    codes, scales = ref.quantize_act(x, 4)
    assert scales.tolist() == [[1.0]]
    assert codes.tolist() == [[0, 2, 2, 0, -2, 7, -7, 3]]
    assert torch.equal(ref.fake_quant_act(x, _one(1.0), 4), codes.float() * scales)


def test_clip_ratio_scales_the_range_and_clamps():
    x = torch.tensor([[-8.0, 1.0, 7.0]])
    y = ref.fake_quant_act(x, _one(0.5), 4)  # scale 4/7: x/scale = [-14, 1.75, 12.25] -> codes [-8, 2, 7]
    scale = 0.5 * 8 / 7
    assert torch.allclose(y, torch.tensor([[-8 * scale, 2 * scale, 7 * scale]]))


def test_asymmetric_zero_point_and_range():
    # range [-1, 3] at 2 bits: scale = 4 / 3, zu = round(0.75) = 1, zero = 1 - 2 = -1
    w = torch.tensor([[-1.0, 0.0, 3.0, 1.4]])
    codes, scales, zeros = ref.quantize_weight(w, 2, -1, False)
    assert scales.tolist() == [[pytest.approx(4 / 3)]]
    assert zeros.tolist() == [[-1]]
    assert codes.tolist() == [[-2, -1, 1, 0]]
    y = ref.fake_quant_weight(w, _one(1.0), _one(1.0), 2, -1, False)
    assert torch.allclose(y, (codes - zeros).float() * scales)


def test_asymmetric_range_always_holds_zero():
    w = torch.tensor([[1.0, 2.0, 3.0]])  # min > 0: the range becomes [0, 3]
    codes, scales, zeros = ref.quantize_weight(w, 4, -1, False)
    assert scales.item() == pytest.approx(3 / 15) and zeros.item() == -8


def test_all_zero_groups_give_zero_scale_codes_and_output():
    w = torch.zeros(2, 8)
    w[1, 4:] = torch.arange(1.0, 5.0)
    for symmetric in (True, False):
        codes, scales, zeros = ref.quantize_weight(w, 4, 4, symmetric)
        assert scales[:, 0].tolist() == [0, 0] and scales[0, 1] == 0 and scales[1, 1] > 0
        assert (codes[:, :4] == 0).all() and (codes[0] == 0).all() and (zeros[:, 0] == 0).all()
        y = ref.fake_quant_weight(w, _one(1.0), _one(1.0), 4, 4, symmetric)
        assert torch.isfinite(y).all() and (y[:, :4] == 0).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_row_is_nan_with_zero_codes(bad):
    x = torch.ones(3, 5)
    x[1, 2] = bad
    codes, scales = ref.quantize_act(x, 4)
    assert torch.isnan(scales[1]).all() and torch.isfinite(scales[[0, 2]]).all()
    assert (codes[1] == 0).all()
    y = ref.fake_quant_act(x, _one(1.0), 4)
    assert torch.isnan(y[1]).all() and torch.equal(y[[0, 2]], x[[0, 2]])
    grad_x, grad_clip = ref.fake_quant_act_backward(torch.ones_like(x), x, _one(1.0), 4)
    assert torch.isnan(grad_x[1]).all() and torch.isnan(grad_clip[1]).all()
    assert torch.isfinite(grad_x[[0, 2]]).all() and torch.isfinite(grad_clip[[0, 2]]).all()


def _ste_round(v):
    return v + (torch.round(v) - v).detach()


def _fake_quant_ste(x, clip_max, clip_min, bits, symmetric):
    """The module doc's gradient, as autograd of a straight-through formulation (x: [R, C] fp64, clips [R, 1])."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        s = clip_max * x.detach().abs().amax(-1, keepdim=True) / qmax
        return s * _ste_round(torch.clamp(x / s, -qmax - 1, qmax))
    levels = 2 ** bits - 1
    hi = clip_max * x.detach().amax(-1, keepdim=True).clamp(min=0)
    lo = clip_min * x.detach().amin(-1, keepdim=True).clamp(max=0)
    s = (hi - lo) / levels
    zu = _ste_round(-lo / s)
    return s * (_ste_round(torch.clamp(x / s + zu, 0, levels)) - zu)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_backward_formulas_match_autograd_of_the_straight_through_form(gen, symmetric, bits):
    x = torch.randn(6, 37, generator=gen, dtype=torch.float64)
    clip_max = torch.rand(6, 1, generator=gen, dtype=torch.float64) * 0.5 + 0.5
    clip_min = torch.rand(6, 1, generator=gen, dtype=torch.float64) * 0.5 + 0.5
    grad_y = torch.randn(6, 37, generator=gen, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, clip_max, clip_min)]
    _fake_quant_ste(*leaves, bits, symmetric).backward(grad_y)
    grad_x, grad_max, grad_min = ref._fake_quant_groups_backward(grad_y, x, clip_max, clip_min, bits, symmetric)
    torch.testing.assert_close(grad_x, leaves[0].grad)
    torch.testing.assert_close(grad_max.double(), leaves[1].grad, rtol=1e-4, atol=1e-4)
    expected_min = torch.zeros_like(clip_min) if symmetric else leaves[2].grad
    torch.testing.assert_close(grad_min.double(), expected_min, rtol=1e-4, atol=1e-4)


def test_gradient_is_straight_through_inside_and_zero_where_clamped():
    x = torch.tensor([[-4.0, -1.0, 0.2, 1.0, 4.0]])
    grad_x, _ = ref.fake_quant_act_backward(torch.ones_like(x), x, _one(0.25), 2)  # scale 1: codes [-2, 1]
    assert grad_x.tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]


def test_clip_gradient_lowers_a_loss_the_clip_can_improve(gen):
    # heavy-tailed rows: the reconstruction error falls when the clip shrinks, so dL/dclip > 0 at clip 1
    x = torch.randn(64, 256, generator=gen) ** 3
    y = ref.fake_quant_act(x, _one(1.0), 4)
    _, grad_clip = ref.fake_quant_act_backward(2 * (y - x), x, _one(1.0), 4)
    assert grad_clip.sum() > 0


@pytest.mark.parametrize("k", [1, 2, 7, 32])
def test_pack_layout_and_round_trip(gen, k):
    codes = torch.randint(-8, 8, (3, k), generator=gen, dtype=torch.int8)
    packed = ref.pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (3, (k + 1) // 2)
    assert torch.equal(ref.unpack_int4(packed, k), codes)
    assert (packed[:, 0] & 0xF).tolist() == (codes[:, 0].to(torch.int16) & 0xF).tolist()


def test_pack_nibble_order():
    packed = ref.pack_int4(torch.tensor([[1, -2, 7]], dtype=torch.int8))
    assert packed.tolist() == [[0xE1, 0x07]]  # low nibble 1, high nibble -2 = 0xE; odd K padded with 0

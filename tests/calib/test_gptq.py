"""GPTQ: lower output error than round-to-nearest on correlated inputs, codes in range, and the pinned scales
that make `quantized_weight()` reproduce GPTQ's stored weight exactly."""
import pytest
import torch
from torch import nn

from faircalib.calib.gptq import HessianAccumulator, gptq_quantize
from faircalib.calib.quant_linear import QuantLinear
from faircalib.calib.transforms import KroneckerTransform
from faircalib.config import QuantSpec

K, N, ROWS = 64, 24, 512


def _correlated_inputs(gen: torch.Generator) -> torch.Tensor:
    """[ROWS, K]: a few latent factors mixed into every feature, plus a little noise (strongly correlated)."""
    latent = torch.randn(ROWS, 8, generator=gen)
    mixing = torch.randn(8, K, generator=gen)
    return latent @ mixing + 0.05 * torch.randn(ROWS, K, generator=gen)


def _layer(gen: torch.Generator, spec: QuantSpec, **kwargs) -> QuantLinear:
    lin = nn.Linear(K, N, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=gen))
    return QuantLinear(lin, spec, None, **kwargs)


def _hessian(x: torch.Tensor) -> torch.Tensor:
    acc = HessianAccumulator(K)
    acc.add(x)
    return acc.h


def _output_error(x: torch.Tensor, quantized: torch.Tensor, weight: torch.Tensor) -> float:
    return float((x.double() @ (quantized.double() - weight.double()).t()).square().sum())


def _dequantize(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    n, k = codes.shape
    return (codes.float().reshape(n, scales.shape[1], -1) * scales[..., None]).reshape(n, k)


@pytest.mark.parametrize("spec", [QuantSpec(4), QuantSpec(4, group_size=16), QuantSpec(3)])
def test_gptq_beats_rtn_on_correlated_inputs(spec, gen):
    x = _correlated_inputs(gen)
    layer = _layer(gen, spec)
    weight = layer.weight.detach().clone()
    with torch.no_grad():
        rtn = layer.fake_quant_weight().clone()
    gptq_quantize(layer, _hessian(x))
    gptq_error, rtn_error = _output_error(x, layer.weight, weight), _output_error(x, rtn, weight)
    assert gptq_error < 0.5 * rtn_error, (gptq_error, rtn_error)


@pytest.mark.parametrize("spec", [QuantSpec(4), QuantSpec(4, group_size=16), QuantSpec(2, group_size=8)])
def test_codes_in_range_and_reproduce_the_stored_weight(spec, gen):
    x = _correlated_inputs(gen)
    layer = _layer(gen, spec)
    gptq_quantize(layer, _hessian(x), block=24)  # a block size that does not divide K nor align with groups
    codes, scales = layer.quantized_weight()
    qmax = 2 ** (spec.bits - 1) - 1
    assert codes.dtype == torch.int8 and codes.min() >= -qmax - 1 and codes.max() <= qmax
    groups = 1 if spec.group_size == -1 else K // spec.group_size
    assert scales.shape == (N, groups) and torch.equal(scales, layer.fixed_weight_scale)
    assert (scales > 0).all()
    assert torch.equal(_dequantize(codes, scales), layer.weight)
    with torch.no_grad():
        assert torch.equal(layer.fake_quant_weight(), layer.weight)


def test_learned_clip_bounds_the_scales(gen):
    x = _correlated_inputs(gen)
    layer = _layer(gen, QuantSpec(4), learn_clips=True)
    with torch.no_grad():
        layer.weight_clip_logit.fill_(0.0)  # clip 0.5
    absmax = layer.weight.abs().amax(1)
    gptq_quantize(layer, _hessian(x))
    _, scales = layer.quantized_weight()
    torch.testing.assert_close(scales[:, 0], 0.5 * absmax / 7, rtol=1e-6, atol=0)
    assert layer.weight.abs().amax(1).le(8 * scales[:, 0] * (1 + 1e-6)).all()


def test_dead_input_channel(gen):
    x = _correlated_inputs(gen)
    x[:, 5] = 0
    layer = _layer(gen, QuantSpec(4))
    gptq_quantize(layer, _hessian(x))
    codes, _ = layer.quantized_weight()
    assert torch.isfinite(layer.weight).all()
    assert codes[:, 5].eq(0).all()


def test_hessian_accumulates_a_running_mean(gen):
    x = torch.randn(3, 10, K, generator=gen)
    acc = HessianAccumulator(K)
    acc.add(x[:1])
    acc.add(x[1:])
    flat = x.reshape(-1, K).double()
    assert acc.n == 30 and acc.h.dtype == torch.float64
    torch.testing.assert_close(acc.h, 2 * flat.t() @ flat / 30, rtol=1e-12, atol=1e-12)


def test_gptq_rejects_unfolded_or_asymmetric_layers(gen):
    h = _hessian(_correlated_inputs(gen))
    unfolded = _layer(gen, QuantSpec(4), input_transform=KroneckerTransform(K))
    with pytest.raises(ValueError, match=r"fold the input transform first"):
        gptq_quantize(unfolded, h)
    with pytest.raises(ValueError, match="symmetric"):
        gptq_quantize(_layer(gen, QuantSpec(4, symmetric=False)), h)

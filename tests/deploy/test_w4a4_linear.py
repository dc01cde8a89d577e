"""W4A4Linear against the fake-quant QuantLinear it is built from, per linear and over whole tiny models."""
import copy

import pytest
import torch
from torch import nn

from faircalib import kernels
from faircalib.calib.quant_linear import QuantLinear
from faircalib.calib.transforms import HadamardTransform, KroneckerTransform
from faircalib.config import QuantSpec
from faircalib.deploy.w4a4_linear import W4A4Linear, convert_to_w4a4, kronecker_form
from faircalib.diffusion.config import SamplerConfig
from faircalib.diffusion.generate import generate
from faircalib.models import get_adapter

from .conftest import quantized_tiny


def _quant_linear(transform, gen, k=96, n=40, act_bits=4):
    ql = QuantLinear(nn.Linear(k, n, bias=True), QuantSpec(4), QuantSpec(act_bits), transform, learn_clips=True)
    with torch.no_grad():
        ql.act_clip_logit.fill_(1.5)  # clip ratio sigmoid(1.5) ~ 0.82: the clip must reach the kernels
        ql.weight_clip_logit.copy_(torch.randn(n, 1, generator=gen) + 3)
    ql.fold()
    return ql


def _transforms(gen):
    return {"none": None, "kronecker": KroneckerTransform(96, orthogonal_init=gen),
            "hadamard": HadamardTransform(96, gen)}


@pytest.mark.parametrize("kind", ["none", "kronecker", "hadamard"])
def test_matches_fake_quant_linear(gen, kind):
    ql = _quant_linear(_transforms(gen)[kind], gen)
    deployed = W4A4Linear.from_quant_linear(ql)
    x = torch.randn(3, 7, 96, generator=gen)
    with torch.no_grad():
        want, got = ql(x), deployed(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    # Same codes, exact integer products: only fp32 rounding of the epilogue differs.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_stores_the_quant_linears_codes(gen):
    ql = _quant_linear(None, gen)
    deployed = W4A4Linear.from_quant_linear(ql)
    codes, scales = ql.quantized_weight()
    assert torch.equal(deployed.weight_codes(), codes)
    assert torch.equal(deployed.weight_scale, scales.reshape(-1))
    assert deployed.act_clip.item() == pytest.approx(torch.sigmoid(torch.tensor(1.5)).item())


def test_hadamard_becomes_an_equal_kronecker(gen):
    transform = HadamardTransform(96, gen)
    channel_scale, left, right = kronecker_form(transform, 96)
    x = torch.randn(5, 96, generator=gen, dtype=torch.float64)
    got = (x * channel_scale.double()) @ torch.kron(left.double(), right.double())
    torch.testing.assert_close(got.float(), transform(x.float()), rtol=1e-5, atol=1e-5)


def test_triton_path_matches_reference(gen):
    deployed = W4A4Linear.from_quant_linear(_quant_linear(KroneckerTransform(96, orthogonal_init=gen), gen))
    x = torch.randn(20, 96, generator=gen)
    with torch.no_grad():
        want = deployed(x)
        with kernels.use_backend("triton"):
            got = deployed(x)
    # The fused kernel sums the transform in another order: a value on a rounding boundary may flip one code.
    close = torch.isclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    assert close.float().mean() > 0.95


def test_refuses_what_it_cannot_deploy(gen):
    ql = QuantLinear(nn.Linear(64, 8), QuantSpec(4, group_size=32), QuantSpec(4))
    with pytest.raises(ValueError, match="group_size=-1"):
        W4A4Linear.from_quant_linear(ql)
    with pytest.raises(ValueError, match="quantized activations"):
        W4A4Linear.from_quant_linear(QuantLinear(nn.Linear(64, 8), QuantSpec(4), None))


@pytest.mark.parametrize("method", ["rtn", "quarot", "flatquant"])
def test_model_logits_and_generation_match_fake_quant(family, method):
    fake = quantized_tiny(family, method)
    deployed = copy.deepcopy(fake)
    assert convert_to_w4a4(deployed) == []
    linears = [m for m in deployed.modules() if isinstance(m, W4A4Linear)]
    assert len(linears) == 7 * len(get_adapter(deployed).blocks)
    ids = torch.randint(0, 48, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = get_adapter(fake).logits(ids), get_adapter(deployed).logits(ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    if method == "quarot":
        # The Hadamard runs as Kronecker factors, summed in another order: a code on a rounding boundary may flip,
        # and a random tiny model has near-tied logits, so tokens are compared only where the sums are the same.
        return
    config = SamplerConfig(sampler="llada" if family == "llada" else "dream", gen_length=8, steps=8)
    prompt = ids[:, :6]
    a = generate(fake, prompt, config, generator=torch.Generator().manual_seed(3)).tokens
    b = generate(deployed, prompt, config, generator=torch.Generator().manual_seed(3)).tokens
    assert torch.equal(a, b)

"""W4A4Linear against the fake-quant QuantLinear it is built from, per linear and over whole tiny models."""
import copy

import pytest
import torch
from torch import nn

from faircalib import kernels
from faircalib.calib.quant_linear import QuantLinear
from faircalib.calib.transforms import HadamardTransform, KroneckerTransform
from faircalib.config import QuantSpec
from faircalib.deploy.w4a4_linear import W4A4Linear, convert_to_w4a4, keep_weights_unpacked, kronecker_form
from faircalib.diffusion.config import SamplerConfig
from faircalib.diffusion.generate import generate
from faircalib.zoo import CharTokenizer
from faircalib.models import get_adapter

from .conftest import count_kernel_calls, linears_of_one_input, quantized_tiny


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


@pytest.mark.triton_on_cpu
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
    if method != "rtn":
        # A transform sums in another order than the fake-quant model (integer GEMM, Kronecker factors for
        # QuaRot's Hadamard): last-bit differences, and a random model's near-tied logits may then pick other
        # tokens. Tokens are compared on the trained models (next test).
        return
    config = SamplerConfig(sampler="llada" if family == "llada" else "dream", gen_length=8, steps=8)
    prompt = ids[:, :6]
    a = generate(fake, prompt, config, generator=torch.Generator().manual_seed(3)).tokens
    b = generate(deployed, prompt, config, generator=torch.Generator().manual_seed(3)).tokens
    assert torch.equal(a, b)


def test_a_kept_unpacked_weight_gives_the_same_outputs_and_follows_changes(family):
    model = quantized_tiny(family, "flatquant")
    convert_to_w4a4(model)
    ids = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(0))
    keys = set(model.state_dict())
    with torch.no_grad():
        want = get_adapter(model).logits(ids)
        assert keep_weights_unpacked(model) == 14
        assert torch.equal(get_adapter(model).logits(ids), want)
    assert set(model.state_dict()) == keys  # the int8 copies never reach a checkpoint
    linear = next(m for m in model.modules() if isinstance(m, W4A4Linear))
    assert linear.weight_int8.shape == (linear.out_features, kernels.padded_k(linear.in_features))
    x = torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        linear.weight_packed.zero_()  # changed in place after unpacking: the next call unpacks again
        assert not linear(x).any()
        linear.keep_weight_unpacked(False)
        assert linear.weight_int8 is None and not linear(x).any()


def test_int8_only_weights_give_the_same_outputs_and_checkpoints(family, tmp_path):
    """keep_weights_unpacked(drop_packed=True): the int8 codes alone hold the weights (1 byte per element); outputs,
    state dict, weight codes and saved checkpoints are those of the packed model; a loaded state dict takes effect;
    keep=False packs the weights back as they were."""
    from faircalib.deploy.checkpoint import load_quantized, save_quantized

    model = quantized_tiny(family, "flatquant")
    convert_to_w4a4(model)
    adapter = get_adapter(model)
    ids = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(0))
    linears = [m for m in model.modules() if isinstance(m, W4A4Linear)]
    packed = {name: t.clone() for name, t in model.state_dict().items()}
    codes = [m.weight_codes() for m in linears]
    with torch.no_grad():
        want = adapter.logits(ids)
        assert keep_weights_unpacked(model, drop_packed=True) == 14
        assert all(m.packed_dropped and m.weight_packed.numel() == 0 for m in linears)
        assert sum(m.weight_int8.numel() for m in linears) == 2 * sum(packed[n].numel() for n in packed
                                                                       if n.endswith("weight_packed"))
        assert torch.equal(adapter.logits(ids), want)
    state = model.state_dict()
    assert state.keys() == packed.keys() and all(torch.equal(state[n], packed[n]) for n in packed)
    assert all(torch.equal(m.weight_codes(), c) for m, c in zip(linears, codes))
    with torch.no_grad():
        assert torch.equal(get_adapter(load_quantized(save_quantized(model, tmp_path))).logits(ids), want)

        changed = dict(packed)
        name = next(n for n in packed if n.endswith("weight_packed"))
        changed[name] = torch.zeros_like(packed[name])
        model.load_state_dict(changed)
        linear = model.get_submodule(name.rsplit(".", 1)[0])
        assert linear.packed_dropped and not linear(torch.randn(3, linear.in_features)).any()
        model.load_state_dict(packed)
        assert torch.equal(adapter.logits(ids), want)
        model.load_state_dict({n: t for n, t in packed.items() if not n.endswith("weight_packed")}, strict=False)
        assert torch.equal(adapter.logits(ids), want)  # a state dict without the weights leaves them as they are

        keep_weights_unpacked(model, False)
    assert all(not m.packed_dropped and m.weight_int8 is None for m in linears)
    assert all(torch.equal(t, packed[n]) for n, t in model.state_dict().items())


@pytest.mark.parametrize("method", ["flatquant", "quarot"])
def test_shipped_models_generate_the_same_answers_deployed(family, method):
    """The trained tiny models: the deployed W4A4 model writes the fake-quant model's tokens, step for step."""
    fake = quantized_tiny(family, method, shipped=True)
    deployed = copy.deepcopy(fake)
    assert convert_to_w4a4(deployed) == []
    tokenizer = CharTokenizer()
    prompt = torch.tensor([tokenizer.encode(p) for p in ("12+34=", "71-25=", "9*8+1=")])
    config = SamplerConfig(sampler="llada" if family == "llada" else "dream", gen_length=8, steps=8)
    a = generate(fake, prompt, config, generator=torch.Generator().manual_seed(3)).tokens
    b = generate(deployed, prompt, config, generator=torch.Generator().manual_seed(3)).tokens
    assert torch.equal(a, b)


def test_eager_fast_path_gives_the_same_output_and_still_checks(gen):
    lin = linears_of_one_input(gen, n_sizes=(24,))[0]
    x = torch.randn(2, 3, 96, generator=gen)
    first = lin(x)  # through the public ops: validates the buffers
    assert lin._checked_buffers is not None and lin._fast_path(x)
    assert torch.equal(lin(x), first)
    with pytest.raises(ValueError, match=r"W4A4Linear\(96 -> 24\): the input of shape \(2, 95\) has 95 features; "
                                         r"this linear takes 96"):
        lin(torch.randn(2, 95, generator=gen))  # a wrong width leaves the fast path and is named there
    with pytest.raises(ValueError, match=r"the input of shape \(4, 95\) has 95 features"):
        lin.forward_swiglu(torch.randn(4, 95, generator=gen), torch.randn(4, 95, generator=gen))
    lin.left = torch.eye(7)  # a replaced buffer is validated again by the public ops
    assert not lin._fast_path(x)
    with pytest.raises(ValueError, match="factor"):
        lin(x)


def test_down_projection_takes_the_swiglu_inside_its_kernel(family, monkeypatch):
    deployed = quantized_tiny(family, "flatquant")
    convert_to_w4a4(deployed)
    unfused = copy.deepcopy(deployed)
    for module in deployed.modules():
        if isinstance(module, W4A4Linear):
            module.fuse_swiglu = True  # only down projections are called through layers.swiglu_down
    calls = count_kernel_calls(monkeypatch)
    ids = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = get_adapter(deployed).logits(ids)
        assert calls.count("quantize_swiglu_packed") == len(get_adapter(deployed).blocks)
        assert torch.equal(got, get_adapter(unfused).logits(ids))  # reference kernels: the same numbers

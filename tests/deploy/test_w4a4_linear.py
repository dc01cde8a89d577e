"""W4A4Linear against the fake-quant QuantLinear it is built from, per linear and over whole tiny models."""
import copy

import pytest
import torch
from torch import nn

from faircalib import kernels
from faircalib.kernels import registry
from faircalib.calib.quant_linear import QuantLinear
from faircalib.calib.transforms import HadamardTransform, KroneckerTransform
from faircalib.config import QuantSpec
from faircalib.deploy.w4a4_linear import (W4A4Linear, convert_to_w4a4, keep_weights_unpacked, kronecker_form,
                                          share_input_quantization)
from faircalib.diffusion.config import SamplerConfig
from faircalib.diffusion.generate import generate
from faircalib.zoo import CharTokenizer
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


# ---------------------------------------------------------------------------------------------------------------
# One quantization per shared input: q/k/v and gate/up are linked and quantize their input once
# ---------------------------------------------------------------------------------------------------------------

def _count(monkeypatch, names=("quantize_act_packed", "quantize_swiglu_packed")) -> list:
    """Count runs of the activation kernels (the down projection takes the SwiGLU variant): every path (public op,
    custom op, W4A4Linear's eager fast path) gets its implementation from the registry."""
    calls, original = [], registry.implementation

    def counting(op, device):
        impl = original(op, device)
        if op not in names:
            return impl

        def counted(*args, **kwargs):
            calls.append(op)
            return impl(*args, **kwargs)
        return counted

    monkeypatch.setattr(registry, "implementation", counting)
    return calls


def _unlinked(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, W4A4Linear):
            share_input_quantization([m])
    return twin


def _readers(gen, n_sizes=(40, 24, 16)) -> list[W4A4Linear]:
    """Three W4A4Linears of one input (equal transform and clip, different weights), unlinked."""
    transform = KroneckerTransform(96, orthogonal_init=gen)
    modules = []
    for n in n_sizes:
        ql = QuantLinear(nn.Linear(96, n, bias=True), QuantSpec(4), QuantSpec(4), transform, learn_clips=True)
        with torch.no_grad():
            ql.act_clip_logit.fill_(1.5)
        ql.fold()
        modules.append(W4A4Linear.from_quant_linear(ql))
    return modules


def test_convert_links_the_linears_of_each_input(family):
    deployed = quantized_tiny(family, "flatquant")
    convert_to_w4a4(deployed)
    adapter = get_adapter(deployed)
    for block in adapter.blocks:
        lin = adapter.linears(block)
        assert lin["q"].shared_input is lin["k"].shared_input is lin["v"].shared_input is not None
        assert lin["gate"].shared_input is lin["up"].shared_input is not None
        assert lin["q"].shared_input is not lin["gate"].shared_input
        assert lin["o"].shared_input is None and lin["down"].shared_input is None
        assert torch.equal(lin["q"].act_clip, lin["v"].act_clip) and torch.equal(lin["q"].left, lin["k"].left)


@pytest.mark.parametrize("method", ["rtn", "flatquant"])
def test_a_forward_quantizes_each_input_once(family, method, monkeypatch):
    deployed = quantized_tiny(family, method)
    convert_to_w4a4(deployed)
    separate = _unlinked(deployed)
    calls = _count(monkeypatch)
    ids = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = get_adapter(deployed).logits(ids)
        assert len(calls) == 4 * len(get_adapter(deployed).blocks)  # q/k/v, o, gate/up, down
        want = get_adapter(separate).logits(ids)
        assert len(calls) == 4 * 2 + 7 * 2
    assert torch.equal(got, want)  # the same codes: linking changes the work, not the numbers


GEMMS = ("w4a4_matmul", "w4a4_matmul_stacked", "int8_matmul")


def test_each_shared_input_takes_one_gemm(family, monkeypatch):
    """q/k/v and gate/up: one unpack of their stacked weights and one INT8 GEMM, whose column slices equal the
    members' separate outputs bitwise; `fused_gemm = False` goes back to a GEMM per member."""
    deployed = quantized_tiny(family, "flatquant")
    convert_to_w4a4(deployed)
    adapter = get_adapter(deployed)
    unfused = copy.deepcopy(deployed)
    for m in unfused.modules():
        if isinstance(m, W4A4Linear) and m.shared_input is not None:
            m.shared_input.fused_gemm = False
    ids = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(0))
    calls = _count(monkeypatch, GEMMS)
    with torch.no_grad():
        got = adapter.logits(ids)
        blocks = len(adapter.blocks)
        assert sorted(calls) == sorted(["w4a4_matmul_stacked", "w4a4_matmul"] * 2 * blocks)
        calls.clear()
        assert torch.equal(get_adapter(unfused).logits(ids), got)
        assert calls == ["w4a4_matmul"] * 7 * blocks


def test_group_gemm_slices_equal_the_members_outputs(gen, monkeypatch):
    q, k, v = _readers(gen, n_sizes=(40, 7, 17))
    k.bias = None  # a member without a bias: zeros in the stacked epilogue
    separate = [copy.deepcopy(m) for m in (q, k, v)]
    share_input_quantization([q, k, v])
    calls = _count(monkeypatch, GEMMS)
    x = torch.randn(2, 5, 96, generator=gen)
    with torch.no_grad():
        got = [m(x) for m in (q, k, v)]
        assert calls == ["w4a4_matmul_stacked"]
        assert [tuple(y.shape) for y in got] == [(2, 5, 40), (2, 5, 7), (2, 5, 17)]
        assert all(torch.equal(y, s(x)) for y, s in zip(got, separate))
        assert torch.equal(q(x[:, :0]), separate[0](x[:, :0]))  # no tokens
        calls.clear()
        with torch.inference_mode():  # inference tensors are not memoized: a GEMM per member, the same outputs
            x = x.clone()
            assert all(torch.equal(m(x), y) for m, y in zip((q, k, v), got))
        assert calls == ["w4a4_matmul"] * 3
    x = torch.randn(3, 96, generator=gen)
    with torch.no_grad():
        q(x)
        for m in (v, separate[2]):
            m.weight_scale.mul_(2.0)  # a weight changed in place after q's call: the stacked GEMM is computed again
        assert torch.equal(v(x), separate[2](x))
        v.weight_scale = torch.ones(3)
        with pytest.raises(ValueError, match="weight_scale \\(3,\\) or bias of a 17-output member"):
            q(torch.randn(2, 96, generator=gen))


def test_a_modified_or_different_input_is_quantized_again(gen, monkeypatch):
    q, k, v = _readers(gen)
    separate = [copy.deepcopy(m) for m in (q, k, v)]
    share_input_quantization([q, k, v])
    calls = _count(monkeypatch)
    x = torch.randn(5, 96, generator=gen)
    with torch.no_grad():
        q(x)
        x.mul_(4.0)
        got_k = k(x)
        assert len(calls) == 2
        twin = x.clone()
        got_v = v(twin)
        assert len(calls) == 3
        assert torch.equal(got_k, separate[1](x)) and torch.equal(got_v, separate[2](twin))
        y = torch.randn(5, 96, generator=gen)
        assert [torch.equal(m(y), s(y)) for m, s in zip((q, k, v), separate)] == [True] * 3
    assert len(calls) == 3 + 2 + 1 + 3  # the two unlinked checks, one for the linked readers of y, three unlinked


def test_members_that_differ_are_refused(gen):
    q, k, v = _readers(gen)
    with torch.no_grad():
        k.act_clip.fill_(0.5)
    with pytest.raises(ValueError, match=r"\(q, k, v\) cannot share one activation quantization: act_clip of "
                                         r"member 1 differs from member 0 \(0.5 vs 0.8"):
        share_input_quantization([q, k, v], names=["q", "k", "v"])
    with torch.no_grad():
        k.act_clip.copy_(q.act_clip)
        v.left[0, 0] += 1e-6
    with pytest.raises(ValueError, match="left of member 2 differs"):
        share_input_quantization([q, k, v])
    other = W4A4Linear(64, 8)
    with pytest.raises(ValueError, match="in_features of member 1"):
        share_input_quantization([q, other])
    assert q.shared_input is None and k.shared_input is None


def test_a_member_changed_after_linking_is_checked_again(gen):
    q, k, v = _readers(gen)
    share_input_quantization([q, k, v])
    x = torch.randn(3, 96, generator=gen)
    with torch.no_grad():
        q(x)
        k.act_clip.fill_(0.5)  # only one member: the codes would differ
        with pytest.raises(ValueError, match="no longer agree: act_clip of member 1"):
            k(x)
        for m in (q, v):
            m.act_clip.fill_(0.5)  # every member: linked again, the new clip used
        want = copy.deepcopy(k)
        share_input_quantization([want])
        assert torch.equal(k(x), want(x)) and torch.equal(q(x), _unlinked(q)(x))


def test_unlinking_a_member_leaves_the_others_linked(gen):
    q, k, v = _readers(gen)
    share_input_quantization([q, k, v])
    group = q.shared_input
    share_input_quantization([v])
    assert v.shared_input is None and q.shared_input is k.shared_input is group and group.members == [q, k]
    with torch.no_grad():
        v.act_clip.fill_(0.3)
        x = torch.randn(2, 96, generator=gen)
        assert torch.equal(q(x), _unlinked(q)(x)) and torch.equal(v(x), _unlinked(v)(x))


def test_a_group_pickled_before_the_group_gemm_loads_with_it_on(gen):
    q, k, v = _readers(gen)
    share_input_quantization([q, k, v])
    state = q.shared_input.__getstate__()
    del state["fused_gemm"]
    old = q.shared_input.__class__.__new__(q.shared_input.__class__)
    old.__setstate__(state)
    assert old.fused_gemm is True


def test_copies_are_linked_among_themselves(gen):
    q, k, v = _readers(gen)
    share_input_quantization([q, k, v])
    model = nn.ModuleList([q, k, v])
    twin = copy.deepcopy(model)
    assert twin[0].shared_input is twin[2].shared_input is not q.shared_input
    assert twin[0].shared_input.members == list(twin)
    x = torch.randn(2, 96, generator=gen)
    with torch.no_grad():
        assert all(torch.equal(a(x), b(x)) for a, b in zip(model, twin))


def test_eager_fast_path_gives_the_same_output_and_still_checks(gen):
    lin = _readers(gen, n_sizes=(24,))[0]
    x = torch.randn(2, 3, 96, generator=gen)
    first = lin(x)  # through the public ops: validates the buffers
    assert lin._checked_buffers is not None and lin._fast_path(x)
    assert torch.equal(lin(x), first)
    with pytest.raises(ValueError, match="in_features|K=|96|shape"):
        lin(torch.randn(2, 95, generator=gen))  # a wrong width leaves the fast path and gets the ops' error
    lin.left = torch.eye(7)  # a replaced buffer is validated again by the public ops
    assert not lin._fast_path(x)
    with pytest.raises(ValueError, match="factor"):
        lin(x)


@pytest.mark.parametrize("unpacked", [False, True])
def test_compiled_blocks_quantize_each_input_once(monkeypatch, unpacked):
    import torch._dynamo

    deployed = quantized_tiny("llada", "flatquant")
    convert_to_w4a4(deployed)
    keep_weights_unpacked(deployed, unpacked)  # kept int8 weights: int8_matmul in the graph, still no breaks
    adapter = get_adapter(deployed)
    ids = torch.randint(0, 48, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = adapter.logits(ids)
        torch._dynamo.reset()
        for block in adapter.blocks:
            block.compile(backend="aot_eager")
        adapter.logits(ids)  # compiles
        calls = _count(monkeypatch)
        got = adapter.logits(ids)
    assert len(calls) == 4 * len(adapter.blocks)  # q/k/v, o, gate/up, down: as in eager
    calls = _count(monkeypatch, GEMMS)
    with torch.no_grad():
        adapter.logits(ids)
    # packed weights: one GEMM per shared input, as in eager; kept int8 copies: one per linear
    assert len(calls) == (7 if unpacked else 4) * len(adapter.blocks)
    assert torch.equal(got, want)
    assert not torch._dynamo.utils.counters["graph_break"]
    assert all(group._handed is None for group in {m.shared_input for m in deployed.modules()
                                                   if isinstance(m, W4A4Linear) and m.shared_input is not None})


def test_down_projection_takes_the_swiglu_inside_its_kernel(family, monkeypatch):
    deployed = quantized_tiny(family, "flatquant")
    convert_to_w4a4(deployed)
    unfused = copy.deepcopy(deployed)
    for module in deployed.modules():
        if isinstance(module, W4A4Linear):
            module.fuse_swiglu = True  # only down projections are called through layers.swiglu_down
    calls = _count(monkeypatch)
    ids = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = get_adapter(deployed).logits(ids)
        assert calls.count("quantize_swiglu_packed") == len(get_adapter(deployed).blocks)
        assert torch.equal(got, get_adapter(unfused).logits(ids))  # reference kernels: the same numbers

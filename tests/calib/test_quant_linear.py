"""QuantLinear: the fake-quant forward, the codes deployment packs (`quantized_weight`), folding, and state loading.

The contract under test (docs/design.md): forward(x) = F.linear(fake_quant_act(T(x)), dequant(quantized_weight()),
bias), bit for bit, before and after `fold()`, with learned clips, groups and GPTQ's pinned scales."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from faircalib import kernels
from faircalib.calib.gptq import HessianAccumulator, gptq_quantize
from faircalib.calib.input_memo import InputMemo
from faircalib.calib.quant_linear import CLIP_LOGIT_INIT, QuantLinear, quantized_linears
from faircalib.calib.transforms import HadamardTransform, KroneckerTransform
from faircalib.config import QuantSpec

K, N = 48, 20


def _linear(gen: torch.Generator, bias: bool = True, k: int = K, n: int = N) -> nn.Linear:
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=gen))
        if bias:
            lin.bias.copy_(torch.randn(n, generator=gen))
    return lin


def _kronecker(gen: torch.Generator, d: int = K) -> KroneckerTransform:
    t = KroneckerTransform(d, orthogonal_init=gen)
    with torch.no_grad():
        t.left.add_(0.2 * torch.randn(t.left.shape, generator=gen))  # no longer orthogonal
        t.channel_scale.copy_(torch.rand(d, generator=gen) + 0.5)
    return t


def _random_clips(layer: QuantLinear, gen: torch.Generator) -> None:
    with torch.no_grad():
        if layer.weight_clip_logit is not None:
            layer.weight_clip_logit.copy_(torch.randn(layer.weight_clip_logit.shape, generator=gen) + 1.0)
        if layer.act_clip_logit is not None:
            layer.act_clip_logit.fill_(0.7)


def _dequantize(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Plain per-group dequantization, written independently of the module: codes [N, K] · scales [N, G]."""
    n, k = codes.shape
    groups = scales.shape[1]
    return (codes.float().reshape(n, groups, k // groups) * scales[..., None]).reshape(n, k)


def _expected_forward(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """The design's forward, assembled from quantized_weight() and the kernels."""
    if layer.input_transform is not None:
        x = layer.input_transform(x)
    if layer.act_spec is not None:
        clip = layer.act_clip_ratio()
        x = kernels.fake_quant_act(x, bits=layer.act_spec.bits, clip_ratio=1.0 if clip is None else clip)
    codes, scales = layer.quantized_weight()
    return F.linear(x, _dequantize(codes, scales), layer.bias)


def test_unquantized_is_the_linear(gen):
    lin = _linear(gen)
    layer = QuantLinear(lin, None, None)
    x = torch.randn(3, 5, K, generator=gen)
    with torch.no_grad():
        assert torch.equal(layer(x), lin(x))
    assert layer.folded and layer.weight_clip_logit is None and layer.act_clip_logit is None
    assert not layer.weight.requires_grad


def test_unquantized_with_transform_matches_to_fp32_tolerance(gen):
    lin = _linear(gen)
    layer = QuantLinear(lin, None, None, _kronecker(gen))
    x = torch.randn(4, K, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), lin(x), rtol=1e-4, atol=1e-4)


CASES = {
    "per-channel": dict(w=QuantSpec(4), a=QuantSpec(4), transform=None, clips=False),
    "per-channel clips": dict(w=QuantSpec(4), a=QuantSpec(4), transform=None, clips=True),
    "groups": dict(w=QuantSpec(4, group_size=16), a=QuantSpec(4), transform=None, clips=False),
    "groups clips 3-bit": dict(w=QuantSpec(3, group_size=8), a=QuantSpec(6), transform=None, clips=True),
    "kronecker clips": dict(w=QuantSpec(4), a=QuantSpec(4), transform="kronecker", clips=True),
    "kronecker groups": dict(w=QuantSpec(4, group_size=12), a=None, transform="kronecker", clips=True),
    "hadamard": dict(w=QuantSpec(4), a=QuantSpec(4), transform="hadamard", clips=False),
}


def _layer(case: dict, gen: torch.Generator) -> QuantLinear:
    transform = {None: lambda: None, "kronecker": lambda: _kronecker(gen),
                 "hadamard": lambda: HadamardTransform(K, gen)}[case["transform"]]()
    layer = QuantLinear(_linear(gen), case["w"], case["a"], transform, learn_clips=case["clips"])
    _random_clips(layer, gen)
    return layer


@pytest.mark.parametrize("name", list(CASES))
def test_quantized_weight_is_the_forward_weight_bit_exactly(name, gen):
    layer = _layer(CASES[name], gen)
    codes, scales = layer.quantized_weight()
    groups = 1 if layer.weight_spec.group_size == -1 else K // layer.weight_spec.group_size
    qmax = 2 ** (layer.weight_spec.bits - 1) - 1
    assert codes.dtype == torch.int8 and codes.shape == (N, K)
    assert scales.dtype == torch.float32 and scales.shape == (N, groups)
    assert codes.min() >= -qmax - 1 and codes.max() <= qmax
    with torch.no_grad():
        assert torch.equal(_dequantize(codes, scales), layer.fake_quant_weight())
        x = torch.randn(2, 3, K, generator=gen)
        assert torch.equal(layer(x), _expected_forward(layer, x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA divides by a Python number with a reciprocal")
@pytest.mark.parametrize("name", ["per-channel", "groups clips 3-bit"])
def test_quantized_weight_is_the_forward_weight_on_cuda(name, gen):
    layer = _layer(CASES[name], gen).cuda()
    codes, scales = layer.quantized_weight()
    with torch.no_grad():
        assert torch.equal(_dequantize(codes, scales), layer.fake_quant_weight())


def test_learned_clips_shrink_the_scales(gen):
    layer = QuantLinear(_linear(gen), QuantSpec(4), QuantSpec(4), learn_clips=True)
    assert layer.weight_clip_logit.shape == (N, 1) and layer.weight_clip_logit.requires_grad
    assert torch.allclose(layer.weight_clip_ratio(), torch.sigmoid(torch.tensor(CLIP_LOGIT_INIT)))
    _, scales = layer.quantized_weight()
    absmax = layer.weight.abs().amax(1, keepdim=True)
    torch.testing.assert_close(scales, layer.weight_clip_ratio().detach() * absmax / 7, rtol=1e-6, atol=0)


def test_all_zero_group_quantizes_to_zero(gen):
    lin = _linear(gen, bias=False)
    with torch.no_grad():
        lin.weight[3] = 0
        lin.weight[5, :16] = 0
    layer = QuantLinear(lin, QuantSpec(4, group_size=16), None)
    codes, scales = layer.quantized_weight()
    assert scales[3].eq(0).all() and scales[5, 0] == 0 and codes[3].eq(0).all() and codes[5, :16].eq(0).all()
    assert torch.equal(_dequantize(codes, scales), layer.fake_quant_weight())


@pytest.mark.parametrize("name", ["kronecker clips", "kronecker groups", "hadamard"])
def test_fold_keeps_the_forward(name, gen):
    layer = _layer(CASES[name], gen)
    x = torch.randn(4, K, generator=gen)
    with torch.no_grad():
        before, codes_before = layer(x), layer.quantized_weight()
        weight_before = layer.weight.clone()
        layer.fold()
        assert layer.folded and not torch.equal(layer.weight, weight_before)
        assert torch.equal(layer(x), before)
        assert all(torch.equal(a, b) for a, b in zip(layer.quantized_weight(), codes_before))
        folded = layer.weight.clone()
        layer.fold()  # idempotent
        assert torch.equal(layer.weight, folded)
    assert layer.input_transform is not None  # the transform of the input stays online


def test_shared_transform_folds_each_reader_once(gen):
    transform = _kronecker(gen)
    a = QuantLinear(_linear(gen), QuantSpec(4), QuantSpec(4), transform)
    b = QuantLinear(_linear(gen, n=12), QuantSpec(4), QuantSpec(4), transform)
    x = torch.randn(5, K, generator=gen)
    with torch.no_grad():
        ya, yb = a(x), b(x)
        a.fold()
        assert torch.equal(a(x), ya) and torch.equal(b(x), yb)
        b.fold()
        assert torch.equal(a(x), ya) and torch.equal(b(x), yb)


def test_forward_keeps_the_input_dtype(gen):
    layer = _layer(CASES["kronecker clips"], gen)
    with torch.no_grad():
        assert layer(torch.randn(2, K, generator=gen).to(torch.bfloat16)).dtype == torch.bfloat16


def test_gradients_reach_the_transform_and_clips(gen):
    layer = _layer(CASES["kronecker clips"], gen)
    layer(torch.randn(6, K, generator=gen)).square().sum().backward()
    for p in (layer.input_transform.left, layer.input_transform.channel_scale, layer.weight_clip_logit,
              layer.act_clip_logit):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert layer.weight.grad is None


def _gptq_layer(gen: torch.Generator, group_size: int = -1) -> QuantLinear:
    layer = QuantLinear(_linear(gen), QuantSpec(4, group_size=group_size), QuantSpec(4), _kronecker(gen),
                        learn_clips=True)
    _random_clips(layer, gen)
    layer.fold()
    acc = HessianAccumulator(K)
    acc.add(layer.input_transform(torch.randn(64, K, generator=gen)).detach())
    gptq_quantize(layer, acc.h)
    return layer


@pytest.mark.parametrize("group_size", [-1, 16])
def test_state_dict_round_trip_with_gptq_scales(group_size, gen):
    layer = _gptq_layer(gen, group_size)
    assert layer.fixed_weight_scale is not None
    state = layer.state_dict()
    assert "fixed_weight_scale" in state
    fresh = QuantLinear(nn.Linear(K, N), QuantSpec(4, group_size=group_size), QuantSpec(4), KroneckerTransform(K),
                        learn_clips=True)
    fresh.fold()
    assert fresh.fixed_weight_scale is None
    fresh.load_state_dict(state, strict=True)
    x = torch.randn(3, K, generator=gen)
    with torch.no_grad():
        assert torch.equal(fresh.fixed_weight_scale, layer.fixed_weight_scale)
        assert all(torch.equal(a, b) for a, b in zip(fresh.quantized_weight(), layer.quantized_weight()))
        assert torch.equal(fresh(x), layer(x))
        assert torch.equal(fresh(x), _expected_forward(fresh, x))


def test_state_dict_without_gptq_has_no_pinned_scales(gen):
    layer = _layer(CASES["per-channel clips"], gen)
    assert "fixed_weight_scale" not in layer.state_dict()
    fresh = QuantLinear(nn.Linear(K, N), QuantSpec(4), QuantSpec(4), learn_clips=True)
    fresh.load_state_dict(layer.state_dict(), strict=True)
    assert fresh.fixed_weight_scale is None
    x = torch.randn(3, K, generator=gen)
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))


def test_rejects_a_group_size_that_does_not_divide_k(gen):
    with pytest.raises(ValueError, match=r"QuantLinear\(20x48\): group_size 32 does not divide in_features 48"):
        QuantLinear(_linear(gen), QuantSpec(4, group_size=32), None)


def test_asymmetric_weights_are_not_deployable(gen):
    layer = QuantLinear(_linear(gen), QuantSpec(4, symmetric=False), None)
    with torch.no_grad():
        assert torch.isfinite(layer(torch.randn(2, K, generator=gen))).all()
    with pytest.raises(ValueError, match="only symmetric"):
        layer.quantized_weight()
    with pytest.raises(ValueError, match="only symmetric"):
        QuantLinear(_linear(gen), None, QuantSpec(4)).quantized_weight()


def test_quantized_linears_names_every_wrapped_module(gen):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(QuantLinear(_linear(gen, k=4, n=4), QuantSpec(), None)))
    assert [name for name, _ in quantized_linears(model)] == ["1.0"]


# ---------------------------------------------------------------------------------------------------------------
# One activation quantizer per shared input (q/k/v, gate/up): one clip parameter, one computation per forward
# ---------------------------------------------------------------------------------------------------------------

SIZES = (N, 12, 8)  # three readers of one input, as q, k and v


def _readers(gen: torch.Generator, transform, shared: bool = True, clip: float = 0.7) -> list[QuantLinear]:
    """Three QuantLinears reading one input through `transform`: with one shared clip and memo, or (shared=False)
    each with its own clip parameter of the same value and its own memo (the unshared formulation)."""
    logit, memo = nn.Parameter(torch.tensor(clip)), InputMemo()
    layers = []
    for n in SIZES:
        kwargs = dict(act_clip_logit=logit, input_memo=memo) if shared else {}
        layer = QuantLinear(_linear(gen, n=n), QuantSpec(4), QuantSpec(4), transform, learn_clips=True, **kwargs)
        with torch.no_grad():
            layer.act_clip_logit.fill_(clip)
            layer.weight_clip_logit.copy_(torch.randn(n, 1, generator=gen) + 2.0)
        layers.append(layer)
    return layers


def _count_calls(monkeypatch, module, name: str) -> list:
    calls, original = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_readers_of_one_input_share_one_clip_parameter(gen):
    layers = _readers(gen, _kronecker(gen))
    assert layers[0].act_clip_logit is layers[1].act_clip_logit is layers[2].act_clip_logit
    assert all(layer.act_clip_ratio() == torch.sigmoid(torch.tensor(0.7)) for layer in layers)
    model = nn.ModuleList(layers)
    clips = [p for name, p in model.named_parameters() if name.endswith("act_clip_logit")]
    assert len(clips) == 1  # one parameter, registered under every reader
    assert {k for k in model.state_dict() if k.endswith("act_clip_logit")} == {"0.act_clip_logit",
                                                                                 "1.act_clip_logit",
                                                                                 "2.act_clip_logit"}


@pytest.mark.parametrize("grad", [False, True])
def test_shared_input_is_transformed_and_quantized_once_per_forward(grad, gen, monkeypatch):
    layers = _readers(gen, _kronecker(gen))
    quantized = _count_calls(monkeypatch, kernels, "fake_quant_act")
    transformed = _count_calls(monkeypatch, layers[0].input_transform, "forward")
    with torch.set_grad_enabled(grad):
        for step in range(2):
            x = torch.randn(3, 5, K, generator=gen)
            before = len(quantized), len(transformed)
            outs = [layer(x) for layer in layers]
            assert (len(quantized) - before[0], len(transformed) - before[1]) == (1, 1)
            for out, layer in zip(outs, layers):  # each reader quantizing its own copy, in the same grad mode
                xq = kernels.fake_quant_act(layer.input_transform(x), bits=4, clip_ratio=layer.act_clip_ratio())
                assert torch.equal(out, F.linear(xq, layer.fake_quant_weight(), layer.bias))


def test_a_modified_or_different_input_is_quantized_again(gen, monkeypatch):
    layers = _readers(gen, _kronecker(gen))
    calls = _count_calls(monkeypatch, kernels, "fake_quant_act")
    x = torch.randn(4, K, generator=gen)
    with torch.no_grad():
        layers[0](x)
        x.mul_(3.0)
        got = layers[1](x)
        assert len(calls) == 2
        twin = x.clone()
        got_twin = layers[2](twin)
        assert len(calls) == 3
        assert torch.equal(got, _expected_forward(layers[1], x))
        assert torch.equal(got_twin, _expected_forward(layers[2], twin))


def test_a_changed_clip_is_not_served_from_the_memo(gen):
    layers = _readers(gen, _kronecker(gen))
    x = torch.randn(4, K, generator=gen)
    with torch.no_grad():
        layers[0](x)
        layers[0].act_clip_logit.fill_(-0.5)  # e.g. an optimizer step between two readers
        assert torch.equal(layers[1](x), _expected_forward(layers[1], x))


def _explicit_loss(layers, x, targets, left, right, channel_scale, clip_logit):
    """Σ_j ⟨F.linear(fake_quant_act(T(x), sigmoid(clip)), W'_j), target_j⟩ with T written out and each reader
    quantizing its own copy of the input (the unshared formulation), the folded weights held constant."""
    n1, n2 = left.shape[0], right.shape[0]
    loss = 0.0
    for layer, target in zip(layers, targets):
        xt = (left.t() @ (x * channel_scale).reshape(-1, n1, n2) @ right).reshape(x.shape)
        xq = kernels.fake_quant_act(xt, bits=4, clip_ratio=torch.sigmoid(clip_logit))
        codes, scales = layer.quantized_weight()
        loss = loss + (F.linear(xq, _dequantize(codes, scales), layer.bias) * target).sum()
    return loss


def test_shared_gradients_equal_the_explicit_unshared_computation(gen):
    transform = _kronecker(gen)
    layers = _readers(gen, transform)
    for layer in layers:
        layer.fold()
    x = torch.randn(6, K, generator=gen, requires_grad=True)
    targets = [torch.randn(6, n, generator=gen) for n in SIZES]
    sum((layer(x) * t).sum() for layer, t in zip(layers, targets)).backward()
    leaves = [p.detach().clone().requires_grad_() for p in (transform.left, transform.right,
                                                           transform.channel_scale, layers[0].act_clip_logit)]
    x2 = x.detach().clone().requires_grad_()
    _explicit_loss(layers, x2, targets, *leaves).backward()
    for got, want in zip((transform.left, transform.right, transform.channel_scale, layers[0].act_clip_logit, x),
                         (*leaves, x2)):
        assert got.grad is not None and want.grad.abs().sum() > 0
        _close(got.grad, want.grad)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal up to the order of fp32 sums (the shared input sums its readers' gradients before the transform)."""
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def test_shared_gradients_while_training_equal_the_unshared_readers(gen):
    """Unfolded (the transform's inverse also in the weights): the shared clip's gradient is the sum of the three
    per-reader clips' gradients, and every other gradient is the unshared formulation's."""
    shared = _readers(torch.Generator().manual_seed(5), _kronecker(torch.Generator().manual_seed(6)))
    unshared = _readers(torch.Generator().manual_seed(5), _kronecker(torch.Generator().manual_seed(6)), shared=False)
    assert len({id(layer.act_clip_logit) for layer in unshared}) == 3
    x = torch.randn(6, K, generator=gen)
    targets = [torch.randn(6, n, generator=gen) for n in SIZES]
    for layers in (shared, unshared):
        sum((layer(x) * t).sum() for layer, t in zip(layers, targets)).backward()
    _close(shared[0].act_clip_logit.grad, sum(layer.act_clip_logit.grad for layer in unshared))
    for name in ("left", "right", "channel_scale"):
        _close(getattr(shared[0].input_transform, name).grad, getattr(unshared[0].input_transform, name).grad)
    for a, b in zip(shared, unshared):
        _close(a.weight_clip_logit.grad, b.weight_clip_logit.grad)


def test_a_shared_clip_needs_an_activation_spec(gen):
    with pytest.raises(ValueError, match="needs act_spec"):
        QuantLinear(_linear(gen), QuantSpec(4), None, act_clip_logit=nn.Parameter(torch.tensor(1.0)))

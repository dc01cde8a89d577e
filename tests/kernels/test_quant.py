"""Triton quantization kernels (run on CPU under TRITON_INTERPRET=1) against the PyTorch reference: integer
codes, scales, zero points and fake-quant outputs bit-exact; gradients to fp32 summation-order tolerance."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import faircalib.kernels as K
from faircalib.kernels import quant
from tests.kernels.backends import on_both

pytestmark = pytest.mark.triton_on_cpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1), (7, 17), (33, 100), (17, 1025), (1025, 7), (0, 33), (5, 0)]


def assert_identical(expected, actual):
    if isinstance(expected, tuple):
        assert len(expected) == len(actual)
        for e, a in zip(expected, actual):
            assert_identical(e, a)
        return
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def sample(shape, dtype, gen, zero_rows=()):
    """Heavy-tailed data (so clamping happens), with some all-zero rows."""
    x = torch.randn(shape, generator=gen) * torch.rand(shape, generator=gen).pow(4).mul(8).add(0.1)
    x[list(zero_rows)] = 0
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_act_codes_scales_and_output_bit_exact(gen, shape, dtype):
    x = sample(shape, dtype, gen, zero_rows=[0] if shape[0] > 2 else [])
    assert_identical(*on_both(K.quantize_act, x, 4))
    assert_identical(*on_both(K.fake_quant_act, x, 4, 0.9))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("n, k, group_size", [(1, 1, -1), (7, 17, -1), (33, 100, 25), (17, 1025, -1),
                                              (100, 64, 16), (0, 32, 8)])
def test_weight_codes_scales_zeros_and_output_bit_exact(gen, n, k, group_size, symmetric, dtype):
    w = sample((n, k), dtype, gen, zero_rows=[1] if n > 2 else [])
    if n > 2 and group_size != -1:
        w[2, :group_size] = 0  # one all-zero group in an otherwise live row
    assert_identical(*on_both(K.quantize_weight, w, 4, group_size, symmetric))
    clip = 0.8 if symmetric else (0.9, 0.7)
    assert_identical(*on_both(K.fake_quant_weight, w, 4, group_size, symmetric, clip))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rows_match_the_reference(gen, bad):
    x = sample((6, 40), torch.float32, gen)
    x[2, 7] = bad
    assert_identical(*on_both(K.quantize_act, x, 4))
    assert_identical(*on_both(K.quantize_weight, x, 4, 8, False))
    assert_identical(*on_both(K.fake_quant_act, x, 4))


def test_non_contiguous_and_leading_dims(gen):
    base = sample((12, 66), torch.bfloat16, gen)
    views = [base.t(), base[:, ::2], base[::3], base.reshape(3, 4, 66).transpose(0, 1)]
    for x in views:
        expected, actual = on_both(K.fake_quant_act, x, 4)
        assert_identical(expected, actual)
        assert_identical(expected, K.fake_quant_act(x.contiguous(), 4))
        assert_identical(*on_both(K.quantize_act, x, 3))
    for w in views[:3]:
        assert_identical(*on_both(K.quantize_weight, w, 4, -1, False))
    assert_identical(*on_both(K.quantize_weight, base.t(), 4, 4, True))


def _grads(fn, x, clips, grad_y):
    leaves = [t.detach().clone().requires_grad_() for t in (x, *clips)]
    fn(leaves[0], *leaves[1:]).backward(grad_y)
    return tuple(t.grad for t in leaves)


def _assert_grads_close(expected, actual):
    torch.testing.assert_close(actual[0], expected[0], rtol=0, atol=0)  # grad_x is g or 0, no arithmetic
    for e, a in zip(expected[1:], actual[1:]):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 7), (4, 3, 33), (17, 1025)])
def test_act_gradients_match_the_reference(gen, shape, dtype):
    x = sample(shape, dtype, gen, zero_rows=[0] if shape[0] > 1 else [])
    clip = torch.rand((*shape[:-1], 1), generator=gen) * 0.5 + 0.5
    grad_y = torch.randn(shape, generator=gen).to(dtype)

    def fn(x, clip):
        return K.fake_quant_act(x, 4, clip)

    expected, actual = on_both(_grads, fn, x, (clip,), grad_y)
    _assert_grads_close(expected, actual)
    assert expected[1].abs().sum() > 0
    shared = torch.tensor(0.8)  # one scalar clip for every row: its gradient is the (deterministic) sum
    _assert_grads_close(*on_both(_grads, fn, x, (shared,), grad_y))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("n, k, group_size", [(7, 17, -1), (12, 96, 32), (9, 1025, -1)])
def test_weight_gradients_match_the_reference(gen, n, k, group_size, symmetric, dtype):
    w = sample((n, k), dtype, gen, zero_rows=[3])
    groups = 1 if group_size == -1 else k // group_size
    clips = [torch.rand(n, groups, generator=gen) * 0.5 + 0.5 for _ in range(1 if symmetric else 2)]
    grad_y = torch.randn(n, k, generator=gen).to(dtype)

    def fn(w, *clips):
        return K.fake_quant_weight(w, 3, group_size, symmetric, clips[0] if symmetric else tuple(clips))

    expected, actual = on_both(_grads, fn, w, clips, grad_y)
    _assert_grads_close(expected, actual)
    assert all(g.abs().sum() > 0 for g in expected[1:])


def test_non_contiguous_gradient_input(gen):
    x = sample((9, 40), torch.float32, gen)
    grad_y = torch.randn(40, 9, generator=gen).t()  # a transposed upstream gradient
    clip = torch.full((9, 1), 0.9)
    expected, actual = on_both(_grads, lambda x, c: K.fake_quant_act(x, 4, c), x, (clip,), grad_y)
    _assert_grads_close(expected, actual)


@pytest.mark.parametrize("k", [1, 7, 8, 33])
def test_pack_unpack_bit_exact(gen, k):
    codes = torch.randint(-8, 8, (3, 5, k), generator=gen, dtype=torch.int8)
    expected, actual = on_both(K.pack_int4, codes)
    assert_identical(expected, actual)
    assert_identical(*on_both(K.unpack_int4, expected, k))
    with K.use_backend("triton"):
        assert torch.equal(K.unpack_int4(K.pack_int4(codes[:, ::2]), k), codes[:, ::2])


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 24), groups=st.integers(1, 3), group_len=st.integers(1, 70),
       dtype=st.sampled_from(DTYPES), bits=st.integers(2, 8), symmetric=st.booleans(), seed=st.integers(0, 2**16))
def test_fuzz_codes_and_outputs_bit_exact(rows, groups, group_len, dtype, bits, symmetric, seed):
    gen = torch.Generator().manual_seed(seed)
    w = sample((rows, groups * group_len), dtype, gen)
    group_size = -1 if groups == 1 else group_len
    assert_identical(*on_both(K.quantize_weight, w, bits, group_size, symmetric))
    assert_identical(*on_both(K.fake_quant_weight, w, bits, group_size, symmetric, 0.85))
    assert_identical(*on_both(K.quantize_act, w, bits))


@pytest.fixture
def chunked(monkeypatch):
    """Launch config that sends groups longer than 64 columns down the two-pass chunked path."""
    monkeypatch.setattr(quant, "LAUNCH", quant.LaunchConfig(tile=256, max_single_n=64, max_block_n=32))


@pytest.mark.parametrize("symmetric", [True, False])
def test_two_pass_chunked_path_matches_the_reference(gen, chunked, symmetric):
    for rows, cols, group_size in [(9, 200, -1), (5, 1025, -1), (6, 256, 128), (4, 64, -1)]:
        w = sample((rows, cols), torch.bfloat16, gen, zero_rows=[1])
        w[2, 3] = float("nan")
        assert_identical(*on_both(K.quantize_weight, w, 4, group_size, symmetric))
        assert_identical(*on_both(K.fake_quant_weight, w, 4, group_size, symmetric))
        if symmetric:
            assert_identical(*on_both(K.quantize_act, w, 4))
        clips = [torch.rand(rows, 1, generator=gen) * 0.5 + 0.5 for _ in range(1 if symmetric else 2)]
        grad_y = torch.randn(rows, cols, generator=gen).to(torch.bfloat16)
        finite = torch.ones(rows, dtype=torch.bool)
        finite[2] = False

        def fn(w, *clips):
            return K.fake_quant_weight(w, 4, group_size, symmetric, clips[0] if symmetric else tuple(clips))

        expected, actual = on_both(_grads, fn, w, clips, grad_y)
        torch.testing.assert_close(actual[0], expected[0], rtol=0, atol=0, equal_nan=True)
        if group_size == -1:  # a NaN row poisons its clip gradient; compare the finite rows
            for e, a in zip(expected[1:], actual[1:]):
                torch.testing.assert_close(a[finite], e[finite], rtol=1e-5, atol=1e-5)
                assert torch.isnan(a[2]).all()


def test_broadcast_upstream_gradient_of_a_sum(gen):
    # .sum().backward() hands the backward a zero-stride gradient
    w = sample((6, 48), torch.float16, gen)
    x = sample((2, 3, 40), torch.float32, gen)
    for fn, t in ((lambda t: K.fake_quant_weight(t, 4, 16, False), w), (lambda t: K.fake_quant_act(t, 4), x)):
        grads = []
        for backend in ("reference", "triton"):
            leaf = t.clone().requires_grad_()
            with K.use_backend(backend):
                fn(leaf).float().sum().backward()
            grads.append(leaf.grad)
        assert_identical(*grads)

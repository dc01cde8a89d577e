"""clip_search: the Triton kernel (on CPU under TRITON_INTERPRET=1) and the reference against the specification, an
explicit loop over candidates calling the reference fake-quant; special groups, dtypes, layouts, bad inputs.

Tolerance: scales are bit-exact and each candidate's codes match the reference's, except where x / scale lies
within ~2 ulp of a half-integer (the kernel multiplies by 1 / scale): there both codes give the same error up to
fp32 rounding. Sums run in another order. So errors match to rtol 1e-5, plus an absolute 1e-5 times the group's
energy sum(x^2) for candidates whose error is nearly 0 (cancellation).
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import faircalib.kernels as K
from faircalib.kernels import loss

pytestmark = pytest.mark.triton_on_cpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
RATIOS = torch.linspace(0.5, 1.0, 16)


def sample(shape, dtype, gen):
    """Heavy-tailed data, so small clip ratios clamp real outliers."""
    x = torch.randn(shape, generator=gen) * torch.rand(shape, generator=gen).pow(4).mul(8).add(0.1)
    return x.to(dtype)


def as_groups(x, group_size):
    """x [*rows, K] -> fp32 [*rows, G, K/G] (G = 1 for group_size -1)."""
    k = x.shape[-1]
    group_len = k if group_size == -1 else group_size
    return x.float().reshape(*x.shape[:-1], k // group_len if group_len else 1, group_len)


def spec_errors(x, ratios, bits, weights, group_size):
    """The definition, one candidate at a time: each group's sum of (fake_quant(x, r) - x)^2 in fp32 with the
    reference fake-quant, times the row's weight -> [*rows, G, C]."""
    groups = as_groups(x, group_size)
    with K.use_backend("reference"):
        errors = [((K.fake_quant_act(groups, bits, float(r)) - groups) ** 2).sum(-1) for r in ratios]
    return torch.stack(errors, -1) * weights.float().reshape(weights.shape + (1, 1))


def assert_errors_close(actual, expected, x, group_size):
    """Errors per group [*rows, G, C], or their sums [C], equal to fp32 tolerance; NaN exactly where expected."""
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    energy = (as_groups(x, group_size) ** 2).sum(-1, keepdim=True)
    energy = energy.sum() if actual.dim() == 1 else energy.expand_as(expected)
    assert torch.equal(torch.isnan(actual), torch.isnan(expected))
    finite = ~torch.isnan(expected)
    excess = (actual - expected).abs() - 1e-5 * (expected.abs() + energy)
    assert (excess[finite] <= 0).all(), f"max excess {excess[finite].max().item()}"


def on_both(x, ratios, **kwargs):
    """clip_search under the reference and under the Triton backend -> (reference, triton)."""
    with K.use_backend("reference"):
        expected = K.clip_search(x, ratios, **kwargs)
    with K.use_backend("triton"):
        actual = K.clip_search(x, ratios, **kwargs)
    return expected, actual


def check_against_spec(x, ratios, bits, weights, group_size, reductions=("none", "sum")):
    """Both backends against the explicit loop, for each of `reductions`."""
    expected = spec_errors(x, ratios, bits, weights, group_size)
    for reduce in reductions:
        spec = expected if reduce == "none" else expected.flatten(0, -2).sum(0)
        for out in on_both(x, ratios, bits=bits, weights=weights, group_size=group_size, reduce=reduce):
            assert_errors_close(out, spec, x, group_size)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, k", [(1, 1), (7, 7), (17, 17), (33, 33), (3, 100), (2, 1025), (100, 5)])
def test_per_row_matches_spec(gen, rows, k, dtype):
    x = sample((rows, k), dtype, gen)
    check_against_spec(x, RATIOS, 4, torch.rand(rows, generator=gen), -1, ("none",))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, k, group_size", [(7, 128, 16), (5, 96, 32), (4, 100, 25), (33, 64, 64), (3, 1025, 205)])
def test_per_group_matches_spec_with_zero_groups(gen, n, k, group_size, dtype):
    w = sample((n, k), dtype, gen)
    w[1] = 0  # an all-zero row
    w[2, :group_size] = 0  # an all-zero group in a live row
    check_against_spec(w, RATIOS, 4, torch.rand(n, generator=gen), group_size, ("none",))


def test_special_groups(gen):
    """All-zero group -> error 0 for every candidate; a group holding NaN or ±Inf -> NaN; the others unaffected."""
    x = sample((4, 32), torch.float32, gen)
    x[0, :8] = 0
    x[1, 9] = float("nan")
    x[2, 17] = float("inf")
    x[3, 30] = -float("inf")
    for errors in on_both(x, RATIOS, group_size=8, reduce="none"):
        assert (errors[0, 0] == 0).all()
        nan_groups = torch.zeros(4, 4, dtype=torch.bool)
        nan_groups[1, 1] = nan_groups[2, 2] = nan_groups[3, 3] = True
        assert torch.equal(torch.isnan(errors).all(-1), nan_groups)
        assert torch.isfinite(errors[~nan_groups]).all()
    for total in on_both(x, RATIOS, group_size=8):
        assert torch.isnan(total).all()


def test_broadcast_weights_and_non_contiguous_inputs(gen):
    """Hidden states [B, L, D] viewed through a transpose, with a position prior [L] (and keepdim [B, L, 1])."""
    x = sample((24, 5, 3), torch.bfloat16, gen).permute(2, 1, 0)  # [3, 5, 24], last dim strided
    prior = torch.rand(5, generator=gen)
    check_against_spec(x, RATIOS, 4, prior, -1)
    dense = prior.expand(3, 5)
    for keepdim, plain in zip(on_both(x, RATIOS, weights=dense[..., None], reduce="none"),
                              on_both(x, RATIOS, weights=prior, reduce="none")):
        assert torch.equal(keepdim, plain)


def test_many_groups_per_program_and_many_chunks(gen, monkeypatch):
    """Small tiles and few programs: several chunks per group, several tiles of groups per program (with a partial
    last program), the paths the GPU takes on large inputs."""
    monkeypatch.setattr(loss, "TILE_ELEMENTS", 64)
    monkeypatch.setattr(loss, "CLIP_SEARCH_PROGRAMS", 3)
    x = sample((5, 200), torch.float32, gen)
    x[3, 100:] = 0
    check_against_spec(x, RATIOS, 4, torch.rand(5, generator=gen), 100)
    check_against_spec(x, RATIOS[:5], 3, torch.rand(5, generator=gen), -1)
    check_against_spec(x[:, :40], RATIOS[:4], 4, torch.rand(5, generator=gen), 4)  # 4 groups per tile


def test_deterministic_bitwise(gen):
    x = sample((3, 4, 64), torch.float16, gen)
    weights = torch.rand(4, generator=gen)
    with K.use_backend("triton"):
        first = K.clip_search(x, RATIOS, weights=weights, group_size=16)
        second = K.clip_search(x, RATIOS, weights=weights, group_size=16)
    assert torch.equal(first, second)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), rows=st.integers(0, 5), group_len=st.integers(1, 40), n_groups=st.integers(1, 3),
       per_row=st.booleans(), bits=st.integers(2, 8), n_candidates=st.integers(1, 17),
       dtype=st.sampled_from(DTYPES))
def test_fuzz_against_spec(data, rows, group_len, n_groups, per_row, bits, n_candidates, dtype):
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    x = sample((rows, group_len * n_groups), dtype, gen)
    ratios = 1.0 - torch.rand(n_candidates, generator=gen)  # in (0, 1]
    check_against_spec(x, ratios, bits, torch.rand(rows, generator=gen), -1 if per_row else group_len)


@pytest.mark.parametrize("shape, group_size, n_candidates", [((0, 16), None, 4), ((3, 0), None, 4),
                                                             ((3, 0), 4, 4), ((2, 8), 4, 0)])
def test_empty_inputs(shape, group_size, n_candidates):
    x = torch.ones(shape)
    ratios = torch.ones(n_candidates)
    groups = 1 if group_size is None else shape[1] // group_size
    for reduce, out_shape in (("sum", (n_candidates,)), ("none", (shape[0], groups, n_candidates))):
        for out in on_both(x, ratios, group_size=group_size, reduce=reduce):
            assert out.shape == out_shape and out.dtype == torch.float32 and not out.any()


def test_ratios_as_a_sequence_parameters_and_custom_op_registration(gen):
    x = sample((3, 16), torch.float32, gen)
    assert torch.equal(K.clip_search(x, [0.5, 1.0]), K.clip_search(x, torch.tensor([0.5, 1.0])))
    from_parameter = K.clip_search(torch.nn.Parameter(x), [0.5, 1.0])
    assert not from_parameter.requires_grad and torch.equal(from_parameter, K.clip_search(x, [0.5, 1.0]))
    ratios, weights = torch.tensor([0.5, 1.0]), torch.rand(3, generator=gen)
    torch.library.opcheck(torch.ops.faircalib.clip_search.default, (x, ratios, 4, weights, 8, "none"))
    torch.library.opcheck(torch.ops.faircalib.clip_search.default, (x, ratios, 4, weights, -1, "sum"))


@pytest.mark.parametrize("kwargs, error, argument", [
    (dict(ratios=[0.5, 0.0]), ValueError, "ratios must lie in \\(0, 1\\]"),
    (dict(ratios=[1.5]), ValueError, "ratios must lie in \\(0, 1\\]"),
    (dict(ratios=[-0.5]), ValueError, "ratios must lie in \\(0, 1\\]"),
    (dict(ratios=[float("nan")]), ValueError, "ratios must lie in \\(0, 1\\]"),
    (dict(ratios=torch.ones(2, 2)), ValueError, "ratios must have exactly 1"),
    (dict(ratios=torch.ones(2, dtype=torch.int32)), TypeError, "ratios must be a floating-point"),
    (dict(x=torch.ones(3, 16, dtype=torch.int8)), TypeError, "x must be a floating-point"),
    (dict(x=torch.tensor(1.0)), ValueError, "x needs at least 1"),
    (dict(group_size=5), ValueError, "group_size=5 must be -1 or a positive divisor"),
    (dict(group_size=0), ValueError, "group_size=0"),
    (dict(group_size=4.0), TypeError, "group_size must be an int"),
    (dict(bits=1), ValueError, "bits=1 is out of range"),
    (dict(bits=9), ValueError, "bits=9 is out of range"),
    (dict(weights=torch.ones(4)), ValueError, "weights of shape \\(4,\\)"),
    (dict(weights=torch.ones(3, dtype=torch.int64)), TypeError, "weights must be a floating-point"),
    (dict(reduce="mean"), ValueError, "reduce='mean'"),
])
def test_bad_inputs_name_the_argument(kwargs, error, argument):
    args = dict(x=torch.ones(3, 16), ratios=[0.5, 1.0]) | kwargs
    with pytest.raises(error, match=argument):
        K.clip_search(**args)

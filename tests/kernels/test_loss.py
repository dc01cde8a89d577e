"""weighted_mse: the Triton kernels (on CPU under TRITON_INTERPRET=1) against the PyTorch reference, the reference
against torch autograd, determinism, broadcasting of the per-row weights, custom-op registration and bad inputs.

Tolerances: the forward computes the same fp32 squared differences as the reference and only sums them in another
order (a [rows, chunk] tile, then a tree), so it matches to fp32 summation error (rtol 1e-5 at these sizes). The
backward does the same fp32 operations in the same order per element, with no sum, so it is bit-exact.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import faircalib.kernels as K
from faircalib.kernels import loss
from tests.kernels.backends import on_both

pytestmark = pytest.mark.triton_on_cpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def pair(shape, dtype, gen):
    a = torch.randn(shape, generator=gen)
    b = a + 0.3 * torch.randn(shape, generator=gen)
    return a.to(dtype), b.to(dtype)


def loss_and_grads(a, b, weights, reduction, grad_out):
    """Forward through the public op, backward with upstream gradient `grad_out` -> (loss, dL/da, dL/db)."""
    a, b = a.detach().requires_grad_(), b.detach().requires_grad_()
    loss = K.weighted_mse(a, b, weights, reduction)
    loss.backward(grad_out)
    return loss.detach(), a.grad, b.grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 7, 17), (3, 33, 100), (1, 5, 1025), (100, 7)])
def test_forward_and_backward_match_reference(gen, shape, reduction, dtype):
    a, b = pair(shape, dtype, gen)
    weights = torch.rand(shape[-2], generator=gen)
    grad_out = torch.tensor(1.5) if reduction == "sum" else torch.randn(shape[:-1], generator=gen)
    (loss_ref, ga_ref, gb_ref), (loss, ga, gb) = on_both(loss_and_grads, a, b, weights, reduction, grad_out)
    assert loss.dtype == torch.float32 and loss.shape == loss_ref.shape
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    assert ga.dtype == dtype and gb.dtype == dtype
    torch.testing.assert_close(ga, ga_ref, rtol=0, atol=0)
    torch.testing.assert_close(gb, gb_ref, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(5, 7, 100), (7, 20)])
def test_small_tiles_many_chunks_and_partial_row_blocks(gen, shape, monkeypatch):
    """A 64-element tile: rows longer than a chunk loop over chunks; short rows share a tile, the last one partial."""
    monkeypatch.setattr(loss, "TILE_ELEMENTS", 64)
    a, b = pair(shape, torch.float32, gen)
    weights = torch.rand(shape[:-1], generator=gen)
    (loss_ref, ga_ref, gb_ref), (out, ga, gb) = on_both(loss_and_grads, a, b, weights, "none",
                                                         torch.randn(shape[:-1], generator=gen))
    torch.testing.assert_close(out, loss_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ga, ga_ref, rtol=0, atol=0)
    torch.testing.assert_close(gb, gb_ref, rtol=0, atol=0)


def test_reference_matches_torch_autograd(gen):
    a, b = pair((3, 5, 16), torch.float64, gen)
    weights = torch.rand(3, 5, generator=gen, dtype=torch.float64)
    a32, b32 = a.float().requires_grad_(), b.float().requires_grad_()
    with K.use_backend("reference"):
        loss = K.weighted_mse(a32, b32, weights.float())
    loss.backward()
    a64 = a.clone().requires_grad_()
    expected = (weights * ((a64 - b) ** 2).sum(-1)).sum()
    expected.backward()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(a32.grad.double(), a64.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b32.grad, -a32.grad, rtol=0, atol=0)


@pytest.mark.parametrize("weight_shape", [(9,), (4, 9), (4, 9, 1), (), (4, 1), (1, 9)])
def test_weights_broadcast_to_rows(gen, weight_shape):
    """A per-position prior [L], a per-token weight [B, L] (also in keepdim form [B, L, 1]), a scalar, per-sequence
    [B, 1] and [1, L] against hidden states [B, L, D]: equal to the loss with the weight expanded by hand."""
    a, b = pair((4, 9, 24), torch.float32, gen)
    weights = torch.rand(weight_shape, generator=gen) + 0.5
    dense = weights.reshape(weight_shape[:2]) if len(weight_shape) == 3 else weights
    dense = dense.expand(4, 9).contiguous()
    expected_ref, expected_triton = on_both(K.weighted_mse, a, b, dense, "none")
    actual_ref, actual_triton = on_both(K.weighted_mse, a, b, weights, "none")
    torch.testing.assert_close(actual_ref, expected_ref, rtol=0, atol=0)
    torch.testing.assert_close(actual_triton, expected_triton, rtol=0, atol=0)
    torch.testing.assert_close(actual_triton, expected_ref, rtol=1e-5, atol=1e-6)


def test_weights_none_is_unweighted_and_odd_broadcasts_work(gen):
    a, b = pair((2, 3, 4, 5, 6), torch.float32, gen)
    expected = ((a - b) ** 2).sum()
    ref, tri = on_both(K.weighted_mse, a, b)
    torch.testing.assert_close(ref, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(tri, expected, rtol=1e-5, atol=0)
    # a layout that cannot be written with three strides: broadcast dims alternate with real ones
    weights = torch.rand(2, 1, 4, 1, generator=gen)
    ref, tri = on_both(K.weighted_mse, a, b, weights, "none")
    torch.testing.assert_close(tri, ref, rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), rows=st.lists(st.integers(0, 4), max_size=4), d=st.integers(0, 40),
       dtype=st.sampled_from(DTYPES), reduction=st.sampled_from(["sum", "none"]))
def test_fuzz_shapes_and_weight_broadcasts(data, rows, d, dtype, reduction):
    """Any rows shape, any weight shape that broadcasts to it (dims dropped from the left or set to 1, possibly
    transposed in memory): forward to fp32 summation tolerance, gradients bit-exact."""
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    a, b = pair((*rows, d), dtype, gen)
    kept = rows[data.draw(st.integers(0, len(rows)), label="dropped leading dims"):]
    weight_shape = [n if data.draw(st.booleans(), label=f"keep dim {i}") else 1 for i, n in enumerate(kept)]
    weights = torch.rand(weight_shape[::-1], generator=gen).permute(list(range(len(weight_shape)))[::-1])
    grad_out = torch.randn(() if reduction == "sum" else tuple(rows), generator=gen)
    (loss_ref, ga_ref, gb_ref), (out, ga, gb) = on_both(loss_and_grads, a, b, weights, reduction, grad_out)
    torch.testing.assert_close(out, loss_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ga, ga_ref, rtol=0, atol=0)
    torch.testing.assert_close(gb, gb_ref, rtol=0, atol=0)


def test_deterministic_bitwise(gen):
    a, b = pair((4, 33, 257), torch.bfloat16, gen)
    weights = torch.rand(33, generator=gen)
    with K.use_backend("triton"):
        first = loss_and_grads(a, b, weights, "sum", torch.tensor(1.0))
        second = loss_and_grads(a, b, weights, "sum", torch.tensor(1.0))
    for x, y in zip(first, second):
        assert torch.equal(x, y)


def test_non_contiguous_and_mixed_dtypes(gen):
    a, b = pair((40, 3, 17), torch.float32, gen)
    a_t, b_t = a.transpose(0, 2), b.to(torch.bfloat16).transpose(0, 2)  # [17, 3, 40], last dim strided
    weights = torch.rand(3, 17, generator=gen).t()  # [17, 3], non-contiguous
    (loss_ref, ga_ref, gb_ref), (loss, ga, gb) = on_both(loss_and_grads, a_t, b_t, weights, "none",
                                                          torch.randn(17, 3, generator=gen))
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    assert ga.dtype == torch.float32 and gb.dtype == torch.bfloat16
    torch.testing.assert_close(ga, ga_ref, rtol=0, atol=0)
    torch.testing.assert_close(gb, gb_ref, rtol=0, atol=0)


def test_only_target_needs_grad(gen):
    a, b = pair((3, 10), torch.float32, gen)
    b = b.requires_grad_()
    weights = torch.rand(3, generator=gen)
    with K.use_backend("triton"):
        K.weighted_mse(a, b, weights).backward()
    torch.testing.assert_close(b.grad, -2 * weights[:, None] * (a - b.detach()), rtol=0, atol=0)


def test_nan_and_inf_propagate(gen):
    a, b = pair((3, 8), torch.float32, gen)
    a[1, 2] = float("nan")
    b[2, 0] = float("inf")
    ref, tri = on_both(K.weighted_mse, a, b, None, "none")
    torch.testing.assert_close(tri, ref, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert torch.isnan(tri[1]) and torch.isinf(tri[2]) and torch.isfinite(tri[0])


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0,), (2, 0, 4)])
def test_empty_inputs(shape):
    a = torch.zeros(shape)
    for reduction, rows in (("sum", ()), ("none", shape[:-1])):
        for out in on_both(K.weighted_mse, a, a.clone(), None, reduction):
            assert out.shape == rows and out.dtype == torch.float32 and not out.any()
    a.requires_grad_()
    with K.use_backend("triton"):
        K.weighted_mse(a, torch.ones(shape)).backward()
    assert a.grad.shape == shape and not a.grad.any()


def test_custom_op_registration(gen):
    a, b = pair((2, 3, 8), torch.float32, gen)
    weights = torch.rand(3, generator=gen)
    torch.library.opcheck(torch.ops.faircalib.weighted_mse_backward.default, (torch.tensor(2.0), a, b, weights))
    torch.library.opcheck(torch.ops.faircalib.weighted_mse.default, (a.requires_grad_(), b, weights, "sum"))
    torch.library.opcheck(torch.ops.faircalib.weighted_mse.default, (a, b.requires_grad_(), weights, "none"))


def test_traces_into_one_graph_with_autograd(gen):
    """torch.compile sees the op through its fake kernel and autograd formula, without graph breaks."""
    a, b = pair((2, 5, 8), torch.float32, gen)
    weights = torch.rand(5, generator=gen)
    compiled = torch.compile(K.weighted_mse, backend="aot_eager", fullgraph=True)
    expected = loss_and_grads(a, b, weights, "sum", torch.tensor(1.0))
    a, b = a.requires_grad_(), b.requires_grad_()
    loss = compiled(a, b, weights)
    loss.backward()
    for actual, wanted in zip((loss.detach(), a.grad, b.grad), expected):
        torch.testing.assert_close(actual, wanted, rtol=0, atol=0)


@pytest.mark.parametrize("call, error, argument", [
    (lambda a, b, w: K.weighted_mse(a, b[:, :2], w), ValueError, "a and b must have the same shape"),
    (lambda a, b, w: K.weighted_mse(a.long(), b, w), TypeError, "a must be a floating-point"),
    (lambda a, b, w: K.weighted_mse(a, b.int(), w), TypeError, "b must be a floating-point"),
    (lambda a, b, w: K.weighted_mse(a, b, w.long()), TypeError, "weights must be a floating-point"),
    (lambda a, b, w: K.weighted_mse(a, b, torch.rand(5)), ValueError, "weights of shape \\(5,\\)"),
    (lambda a, b, w: K.weighted_mse(a, b, torch.rand(2, 4, 1)), ValueError, "weights of shape \\(2, 4\\)"),
    (lambda a, b, w: K.weighted_mse(a, b, w, "mean"), ValueError, "reduction='mean'"),
    (lambda a, b, w: K.weighted_mse(a[0, 0, 0], b[0, 0, 0], w), ValueError, "a needs at least 1"),
    (lambda a, b, w: K.weighted_mse(a, 1.0, w), TypeError, "b must be a torch.Tensor"),
])
def test_bad_inputs_name_the_argument(gen, call, error, argument):
    a, b = pair((2, 3, 4), torch.float32, gen)
    with pytest.raises(error, match=argument):
        call(a, b, torch.rand(3, generator=gen))

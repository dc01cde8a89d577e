"""The W4A4 reference ops: GEMM weight layout, transform, activation quantization, exact integer GEMM."""
import pytest
import torch

from faircalib import kernels
from faircalib.kernels import gemm_reference as ref
from faircalib.kernels import quant_reference


def _codes(shape, gen, low=-8, high=8):
    return torch.randint(low, high, shape, generator=gen, dtype=torch.int8)


@pytest.mark.parametrize("k", [1, 63, 128, 129, 200, 3584])
def test_gemm_layout_round_trips_any_k(gen, k):
    codes = _codes((5, k), gen)
    packed = kernels.pack_weight_for_gemm(codes)
    assert packed.dtype == torch.int8 and packed.shape == (5, kernels.padded_k(k) // 2)
    assert torch.equal(kernels.unpack_weight_for_gemm(packed, k), codes)


def test_gemm_layout_puts_half_groups_in_nibbles(gen):
    codes = _codes((3, 256), gen)
    nibbles = kernels.unpack_int4(kernels.pack_weight_for_gemm(codes).view(torch.uint8))  # [3, 256] byte order
    low, high = nibbles[:, 0::2], nibbles[:, 1::2]  # [3, 128]: byte j of the row
    for g in range(2):
        byte = slice(64 * g, 64 * g + 64)
        assert torch.equal(low[:, byte], codes[:, 128 * g:128 * g + 64])
        assert torch.equal(high[:, byte], codes[:, 128 * g + 64:128 * g + 128])


def test_kronecker_apply_is_x_times_kron(gen):
    x = torch.randn(4, 6 * 8, generator=gen, dtype=torch.float64)
    left, right = torch.randn(6, 6, generator=gen), torch.randn(8, 8, generator=gen)
    c = torch.rand(48, generator=gen) + 0.5
    got = ref.kronecker_apply(x, c, left, right)
    want = (x * c.double()) @ torch.kron(left.double(), right.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref.kronecker_apply(x, None, None, right), (x @ torch.kron(torch.eye(6).double(),
                                                                                        right.double())).float())


def test_act_reference_without_transform_is_quantize_act(gen):
    x = torch.randn(7, 200, generator=gen) * 3
    codes, scales = ref.quantize_act_packed(x, None, None, None, None, 4)
    want_codes, want_scales = quant_reference.quantize_act(x, 4)
    assert torch.equal(codes, want_codes) and torch.equal(scales, want_scales)


def test_act_reference_clip_scales_and_special_rows(gen):
    x = torch.randn(4, 64, generator=gen)
    x[1] = 0
    x[2, 5] = float("nan")
    x[3, 0] = float("inf")
    codes, scales = ref.quantize_act_packed(x, None, None, None, torch.tensor(0.5), 4)
    assert scales[0, 0] == 0.5 * x[0].abs().max() / 7
    assert codes[0].min() == -8 or codes[0].max() == 7  # clip 0.5 saturates the row's extremes
    assert scales[1, 0] == 0 and not codes[1].any()
    assert scales[2:].isnan().all() and not codes[2:].any()


def test_int_matmul_exact_worst_case_longest_k():
    k = 18944
    a = torch.full((2, k), -8, dtype=torch.int8)
    w = torch.full((3, k), -8, dtype=torch.int8)
    assert (ref.int_matmul_exact(a, w) == 64 * k).all()
    assert (ref.int_matmul_exact(-a, w) == -64 * k).all()


@pytest.mark.parametrize("k", [1, ref.FLOAT32_EXACT_K - 1, ref.FLOAT32_EXACT_K, ref.FLOAT32_EXACT_K + 1])
def test_int_matmul_exact_at_the_float32_bound(k, gen):
    """Around the longest K multiplied in float32: all-extreme int8 rows (every product ±2^14, sums up to ±2^24 and
    just past it in float64) and random ones against an int64 matmul."""
    a = torch.full((2, k), -128, dtype=torch.int8)
    assert (ref.int_matmul_exact(a, a) == 128 * 128 * k).all()
    assert (ref.int_matmul_exact(a, a.add(1).neg()) == -128 * 127 * k).all()
    x = torch.randint(-128, 128, (5, k), generator=gen, dtype=torch.int8)
    y = torch.randint(-128, 128, (7, k), generator=gen, dtype=torch.int8)
    assert torch.equal(ref.int_matmul_exact(x, y), (x.long() @ y.long().t()).int())


def test_w4a4_reference_matches_dequantized_matmul(gen):
    m, n, k = 6, 5, 300
    a, w = _codes((m, k), gen), _codes((n, k), gen)
    sa, sw, bias = torch.rand(m, 1, generator=gen), torch.rand(n, generator=gen), torch.randn(n, generator=gen)
    got = ref.w4a4_matmul(a, sa, kernels.pack_weight_for_gemm(w), sw, bias, torch.float32)
    want = (a.double() * sa.double()) @ (w.double() * sw.double()[:, None]).t() + bias.double()
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-5)

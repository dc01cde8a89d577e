"""Online input transforms: Kronecker factor sizes (REFERENCE §2), exact invariance of x·Wᵀ once the inverse is
folded into the weight, and the Hadamard rotation's orthogonality (also for widths that are not powers of two)."""
import pytest
import torch
from torch.testing import assert_close

from faircalib.calib.transforms import (HadamardTransform, KroneckerTransform, hadamard_block, hadamard_matrix,
                                        kronecker_factors, random_orthogonal)


@pytest.mark.parametrize("d, factors", [
    (4096, (64, 64)), (3584, (56, 64)), (18944, (128, 148)), (12288, (96, 128)), (14336, (112, 128)),
    (32, (4, 8)), (48, (6, 8)), (7, (1, 7)), (1, (1, 1)),
])
def test_kronecker_factors_reference_table(d, factors):
    assert kronecker_factors(d) == factors


@pytest.mark.parametrize("d", [0, -4])
def test_kronecker_factors_rejects_non_positive(d):
    with pytest.raises(ValueError, match="must be positive"):
        kronecker_factors(d)


def _randomised(d: int, gen: torch.Generator) -> KroneckerTransform:
    """Random *non-orthogonal* invertible factors (identity + noise) and channel scales in [0.5, 1.5)."""
    t = KroneckerTransform(d)
    with torch.no_grad():
        for factor in (t.left, t.right):
            n = factor.shape[0]
            factor.copy_(torch.eye(n) + 0.3 * torch.randn(n, n, generator=gen) / n ** 0.5)
        t.channel_scale.copy_(torch.rand(d, generator=gen) + 0.5)
    return t


def test_kronecker_identity_init_is_the_identity(gen):
    x = torch.randn(3, 5, 48, generator=gen)
    t = KroneckerTransform(48)
    assert torch.equal(t(x), x)
    w = torch.randn(7, 48, generator=gen)
    assert torch.equal(t.fold_into_weight(w), w)


def test_kronecker_forward_is_the_kronecker_product(gen):
    t = _randomised(48, gen)
    x = torch.randn(4, 48, generator=gen, dtype=torch.float64)
    expected = (x * t.channel_scale.double()) @ torch.kron(t.left.double(), t.right.double())
    with torch.no_grad():
        assert_close(t.double()(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [48, 32, 56, 7])
def test_kronecker_fold_keeps_x_wt(d, gen):
    t = _randomised(d, gen)
    x = torch.randn(2, 5, d, generator=gen)
    w = torch.randn(9, d, generator=gen)
    with torch.no_grad():
        assert_close(t(x) @ t.fold_into_weight(w).t(), x @ w.t(), rtol=1e-4, atol=1e-4)


def test_kronecker_fold_is_differentiable_in_the_factors(gen):
    t = _randomised(32, gen)
    w = torch.randn(5, 32, generator=gen)
    t.fold_into_weight(w).square().sum().backward()
    for p in (t.left, t.right, t.channel_scale):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_kronecker_keeps_the_input_dtype(gen):
    t = _randomised(32, gen)
    x = torch.randn(3, 32, generator=gen).to(torch.bfloat16)
    with torch.no_grad():
        assert t(x).dtype == torch.bfloat16


def test_random_orthogonal_is_orthogonal(gen):
    q = random_orthogonal(12, gen)
    assert q.dtype == torch.float32 and q.is_contiguous()
    assert_close(q @ q.t(), torch.eye(12), rtol=0, atol=1e-5)
    assert not torch.allclose(q, torch.eye(12))


def test_kronecker_orthogonal_init(gen):
    t = KroneckerTransform(48, orthogonal_init=gen)
    assert_close(t.left @ t.left.t(), torch.eye(6), rtol=0, atol=1e-5)
    assert_close(t.right @ t.right.t(), torch.eye(8), rtol=0, atol=1e-5)


def test_orthogonal_init_survives_a_state_dict_round_trip_bit_exactly(gen):
    """Factors are stored row-major: a reloaded transform (row-major after copy_) computes the same bits."""
    t = KroneckerTransform(48, orthogonal_init=gen)
    assert t.left.is_contiguous() and t.right.is_contiguous()
    reloaded = KroneckerTransform(48)
    reloaded.load_state_dict(t.state_dict())
    x = torch.randn(5, 48, generator=gen)
    w = torch.randn(7, 48, generator=gen)
    with torch.no_grad():
        assert torch.equal(reloaded(x), t(x))
        assert torch.equal(reloaded.fold_into_weight(w), t.fold_into_weight(w))


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_hadamard_matrix_is_orthonormal(n):
    h = hadamard_matrix(n)
    assert_close(h @ h.t(), torch.eye(n), rtol=0, atol=1e-6)
    assert_close(h.abs(), torch.full((n, n), n ** -0.5), rtol=0, atol=1e-7)  # entries ±1/√n


@pytest.mark.parametrize("n", [0, 6, 12])
def test_hadamard_matrix_rejects_non_powers_of_two(n):
    with pytest.raises(ValueError, match="power of two"):
        hadamard_matrix(n)


@pytest.mark.parametrize("d, block", [(4096, 4096), (3584, 512), (18944, 512), (56 * 8, 64), (96, 32), (7, 1)])
def test_hadamard_block(d, block):
    assert hadamard_block(d) == block


@pytest.mark.parametrize("d", [32, 56 * 8, 96, 7])
def test_hadamard_transform_is_orthogonal_and_keeps_x_wt(d, gen):
    t = HadamardTransform(d, gen)
    q = t.matrix()
    assert_close(q @ q.t(), torch.eye(d), rtol=0, atol=1e-5)
    assert set(t.signs.tolist()) <= {-1.0, 1.0}
    x = torch.randn(2, 3, d, generator=gen)
    w = torch.randn(5, d, generator=gen)
    assert_close(t(x), x @ q, rtol=1e-5, atol=1e-5)
    assert_close(t(x) @ t.fold_into_weight(w).t(), x @ w.t(), rtol=1e-4, atol=1e-4)


def test_hadamard_signs_come_from_the_generator():
    a = HadamardTransform(64, torch.Generator().manual_seed(3))
    b = HadamardTransform(64, torch.Generator().manual_seed(3))
    c = HadamardTransform(64, torch.Generator().manual_seed(4))
    assert torch.equal(a.signs, b.signs) and not torch.equal(a.signs, c.signs)

"""Online input transforms applied before activation quantization (FlatQuant's Kronecker affine, QuaRot's Hadamard).

A transform T maps a linear's input x [..., d] to x' = (x ⊙ c) · P with an invertible P and a per-channel scale c;
the linear's weight absorbs the inverse, W' = (W ⊘ c) · P^{-T}, so x'·W'^T = x·W^T exactly in real arithmetic and
only quantization sees the difference.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def kronecker_factors(d: int) -> tuple[int, int]:
    """The pair (n1 ≤ n2) with n1·n2 = d closest to √d: 4096 → (64, 64), 3584 → (56, 64), 18944 → (128, 148)."""
    if d < 1:
        raise ValueError(f"kronecker_factors: dimension must be positive, got {d}")
    n1 = max(i for i in range(1, math.isqrt(d) + 1) if d % i == 0)
    return n1, d // n1


def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal [n, n] fp32 matrix (QR of a Gaussian with the sign fix)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float().contiguous()  # LAPACK's Q is column-major


class KroneckerTransform(nn.Module):
    """x' = ((x ⊙ c) viewed as [.., n1, n2]) → leftᵀ · X · right, i.e. x'·(left ⊗ right) with learnable factors.

    `left [n1, n1]`, `right [n2, n2]` are plain matrices (inverted in float64 when folding, as FlatQuant's
    alternative parameterisation), `channel_scale [d]` is c. Initialised to random orthogonal factors (what
    calibration uses, as FlatQuant: they mix outlier channels from the first step) or, without a generator, to the
    identity (an untrained transform then reproduces plain RTN)."""

    def __init__(self, d: int, *, orthogonal_init: torch.Generator | None = None):
        super().__init__()
        n1, n2 = kronecker_factors(d)
        self.d = d
        init = (lambda n: random_orthogonal(n, orthogonal_init)) if orthogonal_init is not None else torch.eye
        self.left = nn.Parameter(init(n1))
        self.right = nn.Parameter(init(n2))
        self.channel_scale = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d] any float dtype → [..., d] same dtype (computed in the factors' dtype)."""
        shape = x.shape
        n1, n2 = self.left.shape[0], self.right.shape[0]
        xs = (x.to(self.left.dtype) * self.channel_scale).reshape(-1, n1, n2)
        y = torch.matmul(torch.matmul(self.left.t(), xs), self.right)
        return y.reshape(shape).to(x.dtype)

    def fold_into_weight(self, weight: torch.Tensor, exact: bool = True) -> torch.Tensor:
        """W [N, d] → W' = (W ⊘ c)·(left ⊗ right)^{-T}, cast back to W's dtype; differentiable.

        exact=True works in float64 (the final fold); exact=False inverts the small factors in float64 but transforms
        W in float32 (every training step: a quarter of the bytes and no fp64 GEMMs on 8B-sized weights). The
        inverses use `inv_ex`, which does not synchronise the device to check for singular factors."""
        n1, n2 = self.left.shape[0], self.right.shape[0]
        work = torch.float64 if exact else torch.float32
        left_inv = torch.linalg.inv_ex(self.left.double())[0].to(work)
        right_inv = torch.linalg.inv_ex(self.right.double())[0].to(work)
        w = (weight.to(work) / self.channel_scale.to(work)).reshape(-1, n1, n2)
        # Rows transform as P^{-T}: left^{-1} · Wrow · right^{-T}.
        w = torch.matmul(torch.matmul(left_inv, w), right_inv.t())
        return w.reshape(weight.shape).to(weight.dtype)


def hadamard_matrix(n: int) -> torch.Tensor:
    """Sylvester Hadamard [n, n] / √n (orthonormal), n a power of two."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"hadamard_matrix: size must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(n)).float()


def hadamard_block(d: int) -> int:
    """The largest power of two dividing d: a block-diagonal Hadamard of that block size rotates any width
    (3584 = 7·512, 18944 = 37·512)."""
    return d & -d


class HadamardTransform(nn.Module):
    """Randomised block Hadamard rotation: x' = (x ⊙ s) · blockdiag(H_b, ..., H_b), s = random ±1 signs.

    Orthogonal, so its inverse-transpose is itself and folding it into a weight is W' = (W ⊙ s)·H."""

    def __init__(self, d: int, generator: torch.Generator):
        super().__init__()
        b = hadamard_block(d)
        self.d = d
        self.register_buffer("hadamard", hadamard_matrix(b))
        signs = torch.randint(0, 2, (d,), generator=generator).float() * 2 - 1
        self.register_buffer("signs", signs)

    def matrix(self) -> torch.Tensor:
        """The full orthogonal [d, d] matrix Q (x' = x·Q)."""
        b = self.hadamard.shape[0]
        return self.signs[:, None] * torch.block_diag(*([self.hadamard] * (self.d // b)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.hadamard.shape[0]
        y = (x.float() * self.signs).reshape(*x.shape[:-1], self.d // b, b) @ self.hadamard
        return y.reshape(x.shape).to(x.dtype)

    def fold_into_weight(self, weight: torch.Tensor, exact: bool = True) -> torch.Tensor:
        """W [N, d] → W·Q (Q orthogonal, so Q^{-T} = Q), always in float64 (never trained: `exact` is ignored)."""
        return (weight.double() @ self.matrix().double()).to(weight.dtype)

"""Quantization schemes as data: what to quantize, how, and what to leave in 16 bits.

Validated once, here, at the boundary; the calibration loop and the kernels trust these objects.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

ROLES = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class QuantSpec:
    """One quantizer: `bits` in 2..8, symmetric or not, per-channel (`group_size=-1`) or per-group along K.

    Activations are always per-token dynamic and symmetric (`group_size` -1 and `symmetric` True for them)."""

    bits: int = 4
    symmetric: bool = True
    group_size: int = -1

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"QuantSpec: bits must be an int in 2..8, got {self.bits!r}")
        if self.group_size != -1 and (not isinstance(self.group_size, int) or self.group_size <= 0):
            raise ValueError(f"QuantSpec: group_size must be -1 (per channel) or a positive int, got {self.group_size!r}")

    def check_dim(self, k: int, where: str) -> None:
        """Raise when the group size does not divide the reduction dim `k` of the tensor at `where`."""
        if self.group_size != -1 and k % self.group_size:
            raise ValueError(f"{where}: group_size {self.group_size} does not divide in_features {k}; "
                             f"choose a divisor of {k} or group_size=-1")


@dataclass(frozen=True)
class QuantConfig:
    """Per-role quantization of the linear layers inside transformer blocks.

    `weight`/`act` apply to every role unless `overrides[role]` gives `(weight, act)`; `None` keeps that side in
    16 bits. Roles in `skip` stay fully in 16 bits. Embeddings and the LM head are never quantized."""

    weight: QuantSpec | None = field(default_factory=QuantSpec)
    act: QuantSpec | None = field(default_factory=QuantSpec)
    overrides: dict = field(default_factory=dict)
    skip: tuple = ()

    def __post_init__(self) -> None:
        unknown = (set(self.overrides) | set(self.skip)) - set(ROLES)
        if unknown:
            raise ValueError(f"QuantConfig: unknown roles {sorted(unknown)}; roles are {ROLES}")
        for role, (_, act) in {**self.overrides, None: (None, self.act)}.items():
            if act is not None and (act.group_size != -1 or not act.symmetric):
                raise ValueError(f"QuantConfig: activations are quantized per token and symmetric; act group_size "
                                 f"must be -1 and symmetric True (role {role or 'default'}, got {act})")

    @classmethod
    def w_a(cls, wbits: int = 4, abits: int | None = 4, group_size: int = -1) -> "QuantConfig":
        """The common WxAy preset: weights per-channel (or per-group) symmetric, activations per-token symmetric."""
        return cls(weight=QuantSpec(wbits, True, group_size), act=QuantSpec(abits) if abits is not None else None)

    def specs(self, role: str) -> tuple[QuantSpec | None, QuantSpec | None]:
        """(weight spec, act spec) for one role."""
        if role in self.skip:
            return None, None
        return self.overrides.get(role, (self.weight, self.act))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["overrides"] = {r: [asdict(w) if w else None, asdict(a) if a else None] for r, (w, a) in self.overrides.items()}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        spec = lambda s: QuantSpec(**s) if s else None  # noqa: E731
        return cls(weight=spec(d.get("weight")), act=spec(d.get("act")),
                   overrides={r: (spec(w), spec(a)) for r, (w, a) in d.get("overrides", {}).items()},
                   skip=tuple(d.get("skip", ())))

    def with_(self, **kw) -> "QuantConfig":
        return replace(self, **kw)

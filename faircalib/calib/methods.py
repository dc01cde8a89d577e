"""Calibration methods as data: every method is one configuration of the same pipeline (`layerwise.py`).

| method          | residual rotation | online input transform              | learned (weighted MSE) | position weights |
|-----------------|-------------------|-------------------------------------|------------------------|------------------|
| rtn             | no                | none                                | no                     | –                |
| quarot          | Hadamard          | Hadamard before o_proj and down_proj| no                     | –                |
| flatquant       | no                | Kronecker affine + channel scale    | yes                    | uniform          |
| fair            | no                | Kronecker affine + channel scale    | yes                    | FAIR prior (both terms) |
| fair-frontier   | no                | as fair                             | yes                    | frontier term only |
| fair-masked     | no                | as fair                             | yes                    | masked-stage term only |

`flatquant` is exactly `fair` with uniform weights (a tested identity). GPTQ weights are an option of every method.
"""
from __future__ import annotations

from dataclasses import dataclass

TRANSFORMS = ("none", "hadamard", "learned")
PRIORS = ("none", "uniform", "both", "frontier", "masked")


@dataclass(frozen=True)
class Method:
    name: str
    transform: str  # none | hadamard | learned
    prior: str  # none | uniform | both | frontier | masked  (the FAIR prior's terms; see calib/prior.py)

    def __post_init__(self):
        if self.transform not in TRANSFORMS or self.prior not in PRIORS:
            raise ValueError(f"calib.methods: method {self.name!r} has transform {self.transform!r} and prior "
                             f"{self.prior!r}; a transform is one of {TRANSFORMS}, a prior one of {PRIORS}")

    @property
    def learns(self) -> bool:
        """Whether Stage II optimises transforms and clips (otherwise weights are quantized as they are)."""
        return self.transform == "learned"

    @property
    def needs_probe(self) -> bool:
        """Whether Stage I (the teacher probe) must run to build the position prior."""
        return self.prior in ("both", "frontier", "masked")


METHODS = {m.name: m for m in (
    Method("rtn", "none", "none"),
    Method("quarot", "hadamard", "none"),
    Method("flatquant", "learned", "uniform"),
    Method("fair", "learned", "both"),
    Method("fair-frontier", "learned", "frontier"),
    Method("fair-masked", "learned", "masked"),
)}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown calibration method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]

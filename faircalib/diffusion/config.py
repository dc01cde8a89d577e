"""`SamplerConfig`: which diffusion sampler runs and with what settings. Data, validated once on construction.

Samplers (REFERENCE §5):
- `llada`: semi-autoregressive blocks, an even per-step commit schedule, `low_confidence` or `random` remasking,
  temperature with float64 Gumbel noise, optional classifier-free guidance.
- `dream`: one pass over the whole answer, time 1 -> eps; `origin`, `maskgit_plus`, `topk_margin`, `entropy`.
- `threshold`: Fast-dLLM parallel decoding; LLaDA's blocks, but every step commits each masked token of the
  current block whose confidence (top-1 probability) is >= `threshold`, and at least one. The step count varies.
- `probe`: FAIR-Calib Stage I; LLaDA's blocks and schedule with a uniformly random commit order (the order the
  models were trained under), whatever `remasking` says.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

SAMPLERS = ("llada", "dream", "threshold", "probe")
REMASKING = {
    "llada": ("low_confidence", "random"),
    "dream": ("origin", "maskgit_plus", "topk_margin", "entropy"),
    "threshold": ("low_confidence",),
    "probe": ("random",),
}
DEFAULT_REMASKING = {"llada": "low_confidence", "dream": "entropy", "threshold": "low_confidence", "probe": "random"}
BLOCKWISE = ("llada", "threshold", "probe")


@dataclass(frozen=True)
class SamplerConfig:
    """Settings of one generation run.

    gen_length: answer tokens appended to the prompt. steps: denoising steps in all (one forward pass each; for
    `threshold` only an upper bound is implied, the run stops when every position is committed).
    block_length: blockwise samplers only; None means one block over the whole answer.
    remasking: commit-order rule, see `REMASKING`; None picks the sampler's default.
    temperature: 0 is greedy. top_p/top_k/alg_temp/eps: Dream's sampling options (`dream` only).
    cfg_scale: classifier-free guidance (0 = off); the unconditional input is the prompt fully masked.
    """

    sampler: str = "llada"
    gen_length: int = 16
    steps: int = 16
    block_length: int | None = None
    remasking: str | None = None
    temperature: float = 0.0
    cfg_scale: float = 0.0
    threshold: float = 0.9
    top_p: float | None = None
    top_k: int | None = None
    alg_temp: float | None = None
    eps: float = 1e-3

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"diffusion.config: sampler {self.sampler!r} is unknown; use one of {SAMPLERS}")
        if self.remasking is None:
            object.__setattr__(self, "remasking", DEFAULT_REMASKING[self.sampler])
        if self.remasking not in REMASKING[self.sampler]:
            raise ValueError(
                f"diffusion.config: remasking {self.remasking!r} does not exist for sampler {self.sampler!r}; "
                f"use one of {REMASKING[self.sampler]}"
            )
        if self.gen_length < 1 or self.steps < 1:
            raise ValueError(
                f"diffusion.config: gen_length={self.gen_length} and steps={self.steps} must both be >= 1"
            )
        if self.sampler in BLOCKWISE:
            self._check_blocks()
        elif self.block_length is not None:
            raise ValueError(
                f"diffusion.config: block_length={self.block_length} has no meaning for sampler 'dream' "
                "(Dream denoises the whole answer at once); leave it None"
            )
        self._check_ranges()

    def _check_blocks(self):
        block = self.block_length
        if block is None:
            object.__setattr__(self, "block_length", self.gen_length)
            block = self.gen_length
        if block < 1 or self.gen_length % block:
            raise ValueError(
                f"diffusion.config: gen_length={self.gen_length} is not divisible by block_length={block}; "
                "choose a block_length that divides gen_length"
            )
        if self.sampler != "threshold" and self.steps % self.num_blocks:
            raise ValueError(
                f"diffusion.config: steps={self.steps} is not divisible by the number of blocks "
                f"{self.num_blocks} (= gen_length {self.gen_length} / block_length {block}); "
                f"use a multiple of {self.num_blocks}"
            )

    def _check_ranges(self):
        if self.temperature < 0 or self.cfg_scale < 0:
            raise ValueError(
                f"diffusion.config: temperature={self.temperature} and cfg_scale={self.cfg_scale} must be >= 0"
            )
        if not 0 < self.threshold <= 1:
            raise ValueError(f"diffusion.config: threshold={self.threshold} must lie in (0, 1]")
        if not 0 < self.eps < 1:
            raise ValueError(f"diffusion.config: eps={self.eps} must lie in (0, 1)")
        dream_only = {"top_p": self.top_p, "top_k": self.top_k, "alg_temp": self.alg_temp}
        used = [name for name, value in dream_only.items() if value is not None]
        if used and self.sampler != "dream":
            raise ValueError(f"diffusion.config: {used} are options of sampler 'dream' only; remove them")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"diffusion.config: top_p={self.top_p} must lie in (0, 1]")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"diffusion.config: top_k={self.top_k} must be >= 1")
        if self.alg_temp is not None and self.alg_temp < 0:
            raise ValueError(f"diffusion.config: alg_temp={self.alg_temp} must be >= 0")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length if self.block_length else 1

    def to_dict(self) -> dict:
        return asdict(self)

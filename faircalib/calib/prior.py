"""Stage I of FAIR-Calib: a teacher probe turned into a position prior w̄ (REFERENCE §1).

The full-precision teacher denoises calibration prompts with a uniformly random commit order (the `probe`
sampler: policy-agnostic, the order the models were trained under). Every step t adds to each generation
position i of every rollout

    s_i += λ0(t) · 1{i ∈ C_t}  +  (λ1 / S) · c̃_{t,i} · 1{i ∈ M_t}

- C_t: the positions committed at step t (the write frontier); M_t: the positions still masked in the input of
  step t (C_t ⊆ M_t: a position is masked in the input of the step that commits it).
- λ0(t), the frontier weight, boosts early steps (early commits condition every later step). With u = t/(S−1)
  (u = 0 when S = 1): `linear` λ0·(1 + β·(1 − u)) (default, β = 1: the first commit counts twice the last),
  `exp` λ0·(1 + β·exp(−u/τ)) (τ as a fraction of the run), `constant` λ0.
- c̃_{t,i}, the teacher's reliability at a masked position, row-normalised: per step and sequence, over that row's
  still-masked generation positions. The raw reliability r is the top-1 probability (`prob`), the top-1 minus
  top-2 probability (`margin`) or exp(−entropy) (`neg_entropy`: monotone in the negative entropy, 1 for a
  certain prediction). `row_norm="max"` (default) gives r / max_row r; `"minmax"` gives
  (r − min_row r) / (max_row r − min_row r). A row whose values are all equal gets 1 everywhere.
- The masked term is weighted λ1/S rather than λ1 so that both terms are O(1) per position and rollout whatever
  the step count S: a position is committed once but stays masked for up to S steps. (λ1 here = λ1_paper · S.)

Scores are summed over steps and rollouts (`accumulate_scores`), then turned into one weight per position index
of the Stage II calibration sequence (`normalise`): the generation scores are aligned to the trailing window of
K = min(window, gen_length, seq_len) positions (the last K generation positions onto the last K sequence
positions: an answer sits at the end of its sequence), a floor weight is given outside the window, and the
weights are scaled to mean 1 over the sequence. With mean 1, Stage II's loss Σ_i w̄_i ‖Δh_i‖² / L is on the same
scale as plain MSE (it *is* plain MSE for the uniform prior), so learning rates carry over from FlatQuant.

Ablations (`terms`): `both` (FAIR-Calib), `frontier` (λ1 term off), `masked` (λ0 term off), `uniform` (w̄ = 1
everywhere: FlatQuant's unweighted loss).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from faircalib import atomic
from faircalib.diffusion import SamplerConfig, Trajectory, as_denoiser, generate
from faircalib.diffusion.trajectory import STAT_FIELDS
from faircalib.metrics import read_trajectory, stability_lags

SCHEDULES = ("linear", "exp", "constant")
CONFIDENCES = ("prob", "neg_entropy", "margin")
ROW_NORMS = ("max", "minmax")
TERMS = ("both", "frontier", "masked", "uniform")


@dataclass(frozen=True)
class PriorConfig:
    """Settings of Stage I. Data, validated once on construction.

    schedule, lambda0, beta, tau: the frontier weight λ0(t) (module docstring). lambda1: the masked-stage weight.
    confidence, row_norm: how c̃ is read and row-normalised. window: K, the trailing window (clipped to the
    generation and sequence lengths). floor: the weight outside the window (and the least weight inside it),
    relative to the mean weight inside the window, before the final scaling to mean 1; 0 ignores those positions.
    terms: ablation switch, see `TERMS`. n_probe: rollouts in all (prompts are cycled when fewer).
    batch_size: rollouts per sampler call. tol: early stopping, stop once the mean absolute change of w̄ caused
    by one probe batch falls below tol (w̄ has mean 1, so this is a relative change); None runs all n_probe.
    lag_rollouts, lag_max_states: the stability lag of the teacher is measured on the first lag_rollouts
    rollouts, reading at most lag_max_states later states per rollout (`faircalib.metrics`; 0 rollouts skips it).
    That costs about lag_rollouts · lag_max_states · G/2 extra forward rows (leave-one-out queries): on an 8B
    model with G = 256 the defaults add ~4k rows (on a tiny model about a quarter of a 64-rollout probe); set
    lag_rollouts=0 where probe time matters most.
    seed: seeds the probe's generator when the caller passes none.
    """

    schedule: str = "linear"
    lambda0: float = 1.0
    beta: float = 1.0
    tau: float = 0.25
    lambda1: float = 1.0
    confidence: str = "prob"
    row_norm: str = "max"
    window: int = 256
    floor: float = 0.1
    terms: str = "both"
    n_probe: int = 512
    batch_size: int = 64
    tol: float | None = 0.01
    lag_rollouts: int = 4
    lag_max_states: int | None = 8
    seed: int = 0

    def __post_init__(self):
        choices = {"schedule": SCHEDULES, "confidence": CONFIDENCES, "row_norm": ROW_NORMS, "terms": TERMS}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"calib.prior: {name}={value!r} is unknown; use one of {allowed}")
        if not (self.lambda0 > 0 and self.lambda1 > 0 and self.beta >= 0 and self.tau > 0):
            raise ValueError(
                f"calib.prior: need lambda0 > 0, lambda1 > 0, beta >= 0, tau > 0; got lambda0={self.lambda0}, "
                f"lambda1={self.lambda1}, beta={self.beta}, tau={self.tau} (switch terms off with terms=...)"
            )
        if not 0 <= self.floor <= 1:
            raise ValueError(f"calib.prior: floor={self.floor} must lie in [0, 1] (a fraction of the window mean)")
        if self.window < 1 or self.n_probe < 1 or self.batch_size < 1 or self.lag_rollouts < 0:
            raise ValueError(
                f"calib.prior: window={self.window}, n_probe={self.n_probe}, batch_size={self.batch_size} must be "
                f">= 1 and lag_rollouts={self.lag_rollouts} >= 0"
            )
        if self.tol is not None and self.tol <= 0:
            raise ValueError(f"calib.prior: tol={self.tol} must be > 0, or None to run all n_probe rollouts")
        if self.lag_max_states is not None and self.lag_max_states < 1:
            raise ValueError(f"calib.prior: lag_max_states={self.lag_max_states} must be >= 1 or None (all states)")

    def to_dict(self) -> dict:
        return asdict(self)


def frontier_schedule(num_steps: int, config: PriorConfig) -> torch.Tensor:
    """λ0(t) for t = 0..S-1: [S] float64, non-increasing (early boost)."""
    u = torch.arange(num_steps, dtype=torch.float64) / max(num_steps - 1, 1)
    if config.schedule == "linear":
        boost = 1 - u
    elif config.schedule == "exp":
        boost = torch.exp(-u / config.tau)
    else:
        boost = torch.zeros_like(u)
    return config.lambda0 * (1 + config.beta * boost)


def row_normalised_confidence(trajectory: Trajectory, config: PriorConfig) -> torch.Tensor:
    """c̃: [S, B, G] float64 over the generation positions, 0 where the position is not masked at that step."""
    stat = {"prob": trajectory.top1_prob, "margin": trajectory.margin, "neg_entropy": trajectory.entropy}
    raw = stat[config.confidence][..., trajectory.prompt_len:].to(torch.float64)
    masked = _masked_by_step(trajectory)
    if not torch.isfinite(raw[masked]).all():
        raise ValueError(
            f"calib.prior: the trajectory's {config.confidence} statistics [S, B, L] = "
            f"{tuple(stat[config.confidence].shape)} hold non-finite values at masked positions; record the probe "
            "with generate(..., record=True)"
        )
    reliability = torch.exp(-raw) if config.confidence == "neg_entropy" else raw
    high = reliability.masked_fill(~masked, float("-inf")).amax(-1, keepdim=True)
    if config.row_norm == "max":
        low = torch.zeros_like(high)
    else:
        low = reliability.masked_fill(~masked, float("inf")).amin(-1, keepdim=True)
    spread = high - low
    flat = ~(spread > 0)  # all-equal rows, and rows with nothing masked (spread is NaN there)
    normalised = torch.where(flat, torch.ones_like(reliability), (reliability - low) / spread.masked_fill(flat, 1))
    return normalised.masked_fill(~masked, 0.0)


def accumulate_scores(trajectories: Trajectory | Iterable[Trajectory], config: PriorConfig) -> torch.Tensor:
    """Stage I scores summed over steps and every row of every trajectory: [G] float64 (module docstring).

    `uniform` scores 1 per position and rollout. All trajectories must share one generation length G.
    """
    trajectories = [trajectories] if isinstance(trajectories, Trajectory) else list(trajectories)
    if not trajectories:
        raise ValueError("calib.prior: accumulate_scores got no trajectories; run the probe on at least one prompt")
    lengths = {t.gen_length for t in trajectories}
    if len(lengths) != 1:
        raise ValueError(f"calib.prior: trajectories have different generation lengths {sorted(lengths)}; "
                         "probe every prompt with the same SamplerConfig.gen_length")
    scores = torch.zeros(lengths.pop(), dtype=torch.float64)
    for trajectory in trajectories:
        scores += _trajectory_scores(trajectory, config).cpu()
    return scores


def _trajectory_scores(trajectory: Trajectory, config: PriorConfig) -> torch.Tensor:
    commit = trajectory.commit_step[:, trajectory.prompt_len:]
    if config.terms == "uniform":
        return torch.full((commit.shape[1],), float(commit.shape[0]), dtype=torch.float64)
    scores = torch.zeros(commit.shape[1], dtype=torch.float64, device=commit.device)
    if config.terms in ("both", "frontier"):
        schedule = frontier_schedule(trajectory.num_steps, config).to(commit.device)
        committed = commit >= 0
        scores += torch.where(committed, schedule[commit.clamp(min=0)], 0.0).sum(0)
    if config.terms in ("both", "masked"):
        confidence = row_normalised_confidence(trajectory, config)
        scores += config.lambda1 / trajectory.num_steps * confidence.sum((0, 1))
    return scores


def _masked_by_step(trajectory: Trajectory) -> torch.Tensor:
    """[S, B, G] bool: generation position masked in the input of step s."""
    commit = trajectory.commit_step[:, trajectory.prompt_len:]
    steps = torch.arange(trajectory.num_steps, device=commit.device).view(-1, 1, 1)
    return commit.unsqueeze(0) >= steps


def normalise(scores: torch.Tensor, seq_len: int, config: PriorConfig) -> torch.Tensor:
    """Generation scores [G] -> position prior w̄ [seq_len] float32 with mean 1 (module docstring).

    Inside the trailing window of K = min(window, G, seq_len) positions the weights are the last K scores over
    their mean, raised to at least `floor`; outside it they equal `floor`; then all are divided by their mean.
    """
    if scores.dim() != 1 or scores.numel() == 0 or seq_len < 1:
        raise ValueError(f"calib.prior: normalise needs scores [G] with G >= 1 and seq_len >= 1, got scores "
                         f"{tuple(scores.shape)} and seq_len={seq_len}")
    if config.terms == "uniform":
        return torch.ones(seq_len, dtype=torch.float32)
    scores = scores.detach().to(torch.float64).cpu()
    window = min(config.window, scores.numel(), seq_len)
    inside = scores[-window:]
    if not torch.isfinite(inside).all() or (inside < 0).any() or inside.sum() <= 0:
        raise ValueError(f"calib.prior: the window's {window} scores must be finite, >= 0 and not all zero "
                         f"(got sum {float(inside.sum())}); probe with more rollouts or check the trajectories")
    weights = torch.full((seq_len,), config.floor, dtype=torch.float64)
    weights[-window:] = (inside / inside.mean()).clamp(min=config.floor)
    return (weights / weights.mean()).to(torch.float32)


@dataclass
class PositionPrior:
    """The Stage I artifact: accumulated scores and the settings that made them.

    scores: [G] float64 generation-position scores; seq_len: the Stage II sequence length `weights` is made for.
    stability_lags: the teacher's lag per measured committed position (None: never settles), from the probe.
    changes: mean |Δw̄| after each probe batch (the saturation curve). sampler: the probe's SamplerConfig as a dict.
    """

    config: PriorConfig
    scores: torch.Tensor
    seq_len: int
    num_rollouts: int = 0
    stability_lags: list = field(default_factory=list)
    changes: list = field(default_factory=list)
    sampler: dict = field(default_factory=dict)

    @property
    def weights(self) -> torch.Tensor:
        """w̄: [seq_len] float32, mean 1."""
        return normalise(self.scores, self.seq_len, self.config)

    def weights_for(self, seq_len: int) -> torch.Tensor:
        """w̄ for another calibration sequence length: [seq_len] float32, mean 1."""
        return normalise(self.scores, seq_len, self.config)

    def to_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "scores": self.scores.tolist(),
            "seq_len": self.seq_len,
            "weights": self.weights.tolist(),
            "num_rollouts": self.num_rollouts,
            "stability_lags": list(self.stability_lags),
            "changes": list(self.changes),
            "sampler": dict(self.sampler),
        }

    def save(self, path) -> Path:
        """Writes JSON (the weights, the scores and every setting) atomically: a reader never sees half a file."""
        path = Path(path)
        if path.suffix != ".json":
            raise ValueError(f"calib.prior: cannot save a PositionPrior to {path}; use a .json file name")
        return atomic.write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path) -> "PositionPrior":
        payload = json.loads(Path(path).read_text())
        payload.pop("weights")  # derived from scores and config; saved for readers of the file
        payload["config"] = PriorConfig(**payload["config"])
        payload["scores"] = torch.tensor(payload["scores"], dtype=torch.float64)
        return cls(**payload)

    def plot(self, path) -> Path:
        """PNG: weight per position, and the CCDF of the teacher's stability lag."""
        from faircalib.calib.plots import plot_prior  # matplotlib only when a plot is asked for

        return plot_prior(self, path)


@torch.no_grad()
def run_probe(model, prompts: Sequence, config: PriorConfig, sampler: SamplerConfig, *, seq_len: int,
              generator: torch.Generator | None = None, mask_token_id: int | None = None,
              progress: bool = True) -> PositionPrior:
    """Stage I: rolls the FP teacher out on `prompts` and returns the position prior for sequences of `seq_len`.

    model: whatever `faircalib.diffusion.generate` accepts (a model, an adapter, or a logits function with
    `mask_token_id`). prompts: 1-D prompts (lists of ids or tensors), cycled until `config.n_probe` rollouts, in
    batches of `config.batch_size`. sampler: a `probe` SamplerConfig (random commit order; its gen_length and
    steps set the rollout). generator: all randomness; None seeds a CPU generator with `config.seed`.
    Stops early once one batch changes w̄ by less than `config.tol` (mean absolute change; w̄ has mean 1).
    The `uniform` prior needs no rollouts and returns at once.
    """
    if sampler.sampler != "probe":
        raise ValueError(f"calib.prior: Stage I rolls out with a random commit order, but sampler={sampler.sampler!r}; "
                         "pass SamplerConfig(sampler='probe', gen_length=..., steps=...)")
    if len(prompts) == 0 or seq_len < 1:
        raise ValueError(f"calib.prior: run_probe needs at least one prompt and seq_len >= 1, got {len(prompts)} "
                         f"prompts and seq_len={seq_len}")
    if config.terms == "uniform":
        return PositionPrior(config, torch.ones(sampler.gen_length, dtype=torch.float64), seq_len,
                             sampler=sampler.to_dict())
    teacher = as_denoiser(model, mask_token_id=mask_token_id)
    generator = torch.Generator().manual_seed(config.seed) if generator is None else generator
    scores, weights, changes, lags, lag_rows, done = None, None, [], [], 0, 0
    with tqdm(total=config.n_probe, desc="Stage I probe", unit="rollout", disable=not progress) as bar:
        while done < config.n_probe:
            count = min(config.batch_size, config.n_probe - done)
            batch = [prompts[(done + k) % len(prompts)] for k in range(count)]
            _, trajectory = generate(teacher, batch, sampler, generator=generator, record=True)
            batch_scores = accumulate_scores(trajectory, config)
            scores = batch_scores if scores is None else scores + batch_scores
            if lag_rows < config.lag_rollouts:
                measured = _first_rows(trajectory, config.lag_rollouts - lag_rows)
                readings = read_trajectory(measured, teacher, max_states=config.lag_max_states, recorded=True)
                lags += stability_lags(measured, readings).lags
                lag_rows += measured.tokens.shape[0]
            done += count
            previous, weights = weights, normalise(scores, seq_len, config)
            if previous is not None:
                changes.append(float((weights - previous).abs().mean()))
                bar.set_postfix(change=f"{changes[-1]:.4f}")
            bar.update(count)
            if config.tol is not None and changes and changes[-1] < config.tol:
                break
    return PositionPrior(config, scores, seq_len, done, lags, changes, sampler.to_dict())


def _first_rows(trajectory: Trajectory, rows: int) -> Trajectory:
    """The trajectory of its first `rows` sequences (batch dim 0 of the [B, L] fields, 1 of the [S, B, L] ones)."""
    per_step = {name: getattr(trajectory, name)[:, :rows] for name in STAT_FIELDS}
    return replace(trajectory, tokens=trajectory.tokens[:rows], commit_step=trajectory.commit_step[:rows],
                   attention_mask=trajectory.attention_mask[:rows], **per_step)

"""Metrics of a (quantized) dLLM against the full-precision teacher's trajectory.

Every trajectory metric reads one `Trajectory` of the FP teacher and queries a model through
`logits_fn(input_ids [B, L] int64, attention_mask [B, L] bool | None) -> aligned logits [B, L, V]`
(index i predicts position i), or through a model, adapter or `Denoiser` given in its place: then only the rows
read are computed by the LM head (`Denoiser.logits_at`; a query reads one or a few positions of L, so a logits
function's [rows, L, V] output, gigabytes for a real vocabulary, is never formed). The teacher's run is replayed
teacher-forced: the model always sees the teacher's states `state_before(t)`, so the metrics measure decisions,
not diverging generations.

A model's *decision* at a position is the argmax of its logits there, the mask token excluded (as the samplers
do: the mask id can never be committed). LLaDA and Dream only predict masked positions, so the model's top-1 at
an already committed position i in state t is read by re-masking position i alone in `state_before(t)` (a
leave-one-out query); at t = c_i (its commit step) position i is masked anyway and the state is read as is.

Let c_i be the step committing generation position i (in 0..S-1) and x_i the committed token.
- Frontier decision flip rate: over all committed positions, the fraction where the model's decision in
  `state_before(c_i)` differs from x_i. Also per step t (positions with c_i = t), and for the early (t < S/2) and
  late (t >= S/2) halves of the run, pooled over positions.
- Post-commit mismatch: over the pairs (i, t) with t an evaluated state and t > c_i (states t = 1..S, where S is
  the final sequence), the re-masked top-1 at i in `state_before(t)` compared with x_i. mean-disagree: fraction
  of pairs that disagree; never-agree: fraction of positions that disagree at every one of their evaluated states.
- Stability lag of position i: with readings at c_i (the frontier decision) and at every evaluated t > c_i, the
  smallest t* − c_i such that every reading from t* on equals x_i; None when the reading in the final state
  (t = S) differs (the position never settles).
- Cost knob: the re-masked queries number about S·G/2 forward rows per sequence. `stride` evaluates only the
  states t = stride, 2·stride, ... (and always S); `max_states` then keeps at most that many of them, evenly
  spaced (S always kept). Fewer states make the lag an upper bound on the grid of evaluated states.
- Exact-match accuracy: fraction of generations equal to their answer (`zoo.tasks.exact_match`); recovery:
  quantized accuracy / FP accuracy.
- Masked-token NLL: the answer of each sequence is masked at random (ratio r ~ U(0, 1) per sequence and draw,
  each answer token masked with probability r, at least one), and the mean NLL (nats) of the true tokens over all
  masked positions is reported; seeded, so every model sees the same masks.
Results are dataclasses of counts (rates are derived properties) whose `to_dict()` is JSON-ready; counts pool
over several trajectories (`trajectory_metrics` takes one or a list). `read_trajectory` makes every query once,
so one model's readings serve all three trajectory metrics.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Sequence, Union

import torch

from faircalib.diffusion.denoiser import Denoiser, LogitsFn, as_denoiser
from faircalib.diffusion.trajectory import Trajectory
from faircalib.zoo.tasks import exact_match

# What a metric queries: a logits function, or a model, its adapter or a Denoiser (whose LM head then runs on the
# rows read only)
Queried = Union[LogitsFn, Denoiser, torch.nn.Module]


def evaluated_states(num_steps: int, stride: int = 1, max_states: int | None = None) -> list[int]:
    """The later states t (1..S) whose re-masked readings are taken; S always included."""
    if stride < 1 or (max_states is not None and max_states < 1):
        raise ValueError(f"metrics: stride={stride} must be >= 1 and max_states={max_states} >= 1 or None")
    states = list(range(stride, num_steps + 1, stride))
    if not states or states[-1] != num_steps:
        states.append(num_steps)
    if max_states is not None and len(states) > max_states:
        picks = torch.linspace(0, len(states) - 1, max_states).round().long().unique().tolist()
        states = [states[k] for k in picks]
    return states


@dataclass
class Readings:
    """What a model says along a teacher trajectory [B, L].

    frontier: [B, L] int64, the decision at each committed generation position i in `state_before(c_i)`, -1 on
    prompt and padding. states: the evaluated later states (T of them). remasked: [T, B, L] int64, the top-1 at i
    with i re-masked alone in `state_before(states[k])`, for 0 <= c_i < states[k]; -1 elsewhere.
    """

    frontier: torch.Tensor
    states: list
    remasked: torch.Tensor


def _decisions(query: Denoiser, ids: torch.Tensor, attention_mask: torch.Tensor | None, read: torch.Tensor):
    """[read.sum()] int64, row-major: argmax of the model's logits on ids [N, L] at positions read ([N, L] bool),
    the mask token excluded."""
    logits = query.logits_at(ids, attention_mask, read)
    # Re-ranking only where the mask wins, instead of a masked copy of the logits; same ties as the samplers' argmax
    # after excluding the mask.
    best = logits.argmax(-1)
    won = best == query.mask_token_id
    if won.any():
        never = torch.tensor([query.mask_token_id], device=logits.device)
        best[won] = logits[won].index_fill(-1, never, float("-inf")).argmax(-1)
    return best.to(ids.device)


def _model_mask(trajectory: Trajectory, rows: torch.Tensor) -> torch.Tensor | None:
    mask = trajectory.attention_mask[rows]
    return None if bool(mask.all()) else mask


@torch.no_grad()
def frontier_readings(trajectory: Trajectory, logits_fn: Queried, *, batch_rows: int = 64) -> torch.Tensor:
    """[B, L] int64: the model's decision at each committed generation position in `state_before(c_i)`."""
    query = as_denoiser(logits_fn, mask_token_id=trajectory.mask_token_id)
    commit = trajectory.commit_step
    out = torch.full_like(commit, -1)
    steps, rows = (commit.unsqueeze(0) == torch.arange(trajectory.num_steps, device=commit.device).view(-1, 1, 1)) \
        .any(-1).nonzero(as_tuple=True)
    for start in range(0, len(steps), batch_rows):
        t, b = steps[start:start + batch_rows], rows[start:start + batch_rows]
        ids = _states(trajectory, t, b)
        hit = commit[b] == t.unsqueeze(1)
        hit_row, hit_col = hit.nonzero(as_tuple=True)
        out[b[hit_row], hit_col] = _decisions(query, ids, _model_mask(trajectory, b), hit)
    return out


@torch.no_grad()
def remasked_readings(trajectory: Trajectory, logits_fn: Queried, states: Sequence[int], *,
                      batch_rows: int = 64) -> torch.Tensor:
    """[T, B, L] int64: top-1 at i with i alone re-masked in `state_before(states[k])`, where 0 <= c_i < states[k];
    -1 elsewhere. One forward row per (state, position) pair, `batch_rows` rows per call."""
    query = as_denoiser(logits_fn, mask_token_id=trajectory.mask_token_id)
    commit = trajectory.commit_step
    times = torch.tensor(list(states), dtype=torch.long, device=commit.device)
    if len(times) and (times.min() < 1 or times.max() > trajectory.num_steps):
        raise ValueError(f"metrics: states {list(states)} must lie in 1..{trajectory.num_steps}")
    pairs = ((commit >= 0).unsqueeze(0) & (commit.unsqueeze(0) < times.view(-1, 1, 1))).nonzero(as_tuple=True)
    out = torch.full((len(times),) + tuple(commit.shape), -1, dtype=torch.long, device=commit.device)
    for start in range(0, len(pairs[0]), batch_rows):
        k, b, i = (p[start:start + batch_rows] for p in pairs)
        ids = _states(trajectory, times[k], b)
        row = torch.arange(len(b), device=ids.device)
        ids[row, i] = trajectory.mask_token_id
        read = torch.zeros_like(ids, dtype=torch.bool)
        read[row, i] = True
        out[k, b, i] = _decisions(query, ids, _model_mask(trajectory, b), read)
    return out


def _states(trajectory: Trajectory, steps: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[N, L] int64: `state_before(steps[n])` of row `rows[n]`."""
    visible = trajectory.commit_step[rows] < steps.unsqueeze(1)
    return torch.where(visible, trajectory.tokens[rows], trajectory.mask_token_id)


def recorded_frontier(trajectory: Trajectory) -> torch.Tensor:
    """[B, L] int64: the recording model's own decision at each commit, read from the trajectory's `top1` at the
    commit step (no query: equal to `frontier_readings` of the model that generated the trajectory)."""
    commit = trajectory.commit_step
    decisions = trajectory.top1.gather(0, commit.clamp(min=0).unsqueeze(0)).squeeze(0)
    return torch.where(commit >= 0, decisions, -1)


def read_trajectory(trajectory: Trajectory, logits_fn: Queried, *, stride: int = 1, max_states: int | None = None,
                    batch_rows: int = 64, recorded: bool = False) -> Readings:
    """Every reading the trajectory metrics need, in one pass of queries. recorded=True takes the frontier
    decisions from the trajectory's record: only valid when `logits_fn` is the model that generated it."""
    states = evaluated_states(trajectory.num_steps, stride, max_states)
    frontier = recorded_frontier(trajectory) if recorded else frontier_readings(trajectory, logits_fn,
                                                                                batch_rows=batch_rows)
    return Readings(frontier, states, remasked_readings(trajectory, logits_fn, states, batch_rows=batch_rows))


def _generated(trajectory: Trajectory) -> torch.Tensor:
    """[B, L] bool: committed generation positions."""
    return trajectory.commit_step >= 0


def _rate(numerator, denominator) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


class _Result:
    """Counts are fields; rates are derived properties, listed in `derived` and written by `to_dict`."""

    derived: tuple = ()

    def to_dict(self) -> dict:
        return {**asdict(self), **{name: getattr(self, name) for name in self.derived}}


@dataclass
class FlipRate(_Result):
    """Frontier decision flips. step_flips / step_decisions: counts per step t. early_* / late_*: counts over
    steps t < S/2 and t >= S/2 of each run. Derived: flips, decisions, rate = flips / decisions, per_step rates,
    early and late rates (None where there is nothing to count)."""

    step_flips: list
    step_decisions: list
    early_flips: int
    early_decisions: int
    late_flips: int
    late_decisions: int
    derived = ("flips", "decisions", "rate", "per_step", "early", "late")

    @property
    def flips(self) -> int:
        return sum(self.step_flips)

    @property
    def decisions(self) -> int:
        return sum(self.step_decisions)

    @property
    def rate(self) -> float | None:
        return _rate(self.flips, self.decisions)

    @property
    def per_step(self) -> list:
        return [_rate(f, n) for f, n in zip(self.step_flips, self.step_decisions)]

    @property
    def early(self) -> float | None:
        return _rate(self.early_flips, self.early_decisions)

    @property
    def late(self) -> float | None:
        return _rate(self.late_flips, self.late_decisions)

    @classmethod
    def pooled(cls, results: Sequence["FlipRate"]) -> "FlipRate":
        """Sums the counts of several runs (per-step counts aligned on t, shorter runs padded with zeros)."""
        steps = max(len(r.step_flips) for r in results)
        per_step = [[sum(getattr(r, name)[t] for r in results if t < len(getattr(r, name))) for t in range(steps)]
                    for name in ("step_flips", "step_decisions")]
        halves = [sum(getattr(r, name) for r in results)
                  for name in ("early_flips", "early_decisions", "late_flips", "late_decisions")]
        return cls(*per_step, *halves)


def frontier_flip_rate(trajectory: Trajectory, readings: Readings) -> FlipRate:
    committed = _generated(trajectory)
    flipped = committed & (readings.frontier != trajectory.tokens)
    steps = trajectory.commit_step[committed]
    flips = torch.bincount(steps, weights=flipped[committed].double(), minlength=trajectory.num_steps).long()
    decisions = torch.bincount(steps, minlength=trajectory.num_steps)
    half = (trajectory.num_steps + 1) // 2  # t < S/2  <=>  t < ceil(S/2)
    return FlipRate(flips.tolist(), decisions.tolist(), int(flips[:half].sum()), int(decisions[:half].sum()),
                    int(flips[half:].sum()), int(decisions[half:].sum()))


@dataclass
class PostCommitMismatch(_Result):
    """Counts of (position, later state) pairs and of read positions. Derived: mean_disagree = disagreeing_pairs /
    pairs, never_agree = never_agreeing_positions / positions."""

    pairs: int
    disagreeing_pairs: int
    positions: int
    never_agreeing_positions: int
    derived = ("mean_disagree", "never_agree")

    @property
    def mean_disagree(self) -> float | None:
        return _rate(self.disagreeing_pairs, self.pairs)

    @property
    def never_agree(self) -> float | None:
        return _rate(self.never_agreeing_positions, self.positions)

    @classmethod
    def pooled(cls, results: Sequence["PostCommitMismatch"]) -> "PostCommitMismatch":
        return cls(*(sum(getattr(r, f.name) for r in results) for f in fields(cls)))


def post_commit_mismatch(trajectory: Trajectory, readings: Readings) -> PostCommitMismatch:
    valid = readings.remasked >= 0
    disagree = valid & (readings.remasked != trajectory.tokens.unsqueeze(0))
    read_positions = valid.any(0)
    never = read_positions & ~(valid & ~disagree).any(0)
    return PostCommitMismatch(int(valid.sum()), int(disagree.sum()), int(read_positions.sum()), int(never.sum()))


@dataclass
class StabilityLags(_Result):
    """lags: one per committed generation position (row-major over [B, L]); None = never settles.
    Derived: summary (positions, unsettled fraction, mean / median / p90 / max over settled positions)."""

    lags: list
    derived = ("summary",)

    @property
    def summary(self) -> dict:
        settled = torch.tensor([lag for lag in self.lags if lag is not None], dtype=torch.float64)
        counts = {"positions": len(self.lags), "unsettled": _rate(len(self.lags) - len(settled), len(self.lags))}
        if not len(settled):
            return counts
        return {**counts, "mean": float(settled.mean()), "median": float(settled.median()),
                "p90": float(torch.quantile(settled, 0.9)), "max": float(settled.max())}

    @classmethod
    def pooled(cls, results: Sequence["StabilityLags"]) -> "StabilityLags":
        return cls([lag for r in results for lag in r.lags])


def stability_lags(trajectory: Trajectory, readings: Readings) -> StabilityLags:
    commit, tokens = trajectory.commit_step, trajectory.tokens
    times = torch.tensor(readings.states, dtype=torch.long, device=commit.device).view(-1, 1, 1)
    later = readings.remasked >= 0
    bad = later & (readings.remasked != tokens.unsqueeze(0))
    index = torch.arange(len(readings.states), device=commit.device).view(-1, 1, 1)
    last_bad = torch.where(bad, index, -1).amax(0)
    first_later = torch.where(later, index, len(readings.states)).amin(0)
    # Settles at the state after the last disagreement; with no later disagreement, at c_i itself when the
    # frontier decision agrees, else at the first later reading.
    settle_index = torch.where(last_bad >= 0, last_bad + 1,
                               torch.where(readings.frontier == tokens, -1, first_later))
    padded_times = torch.cat([times.flatten(), times.new_full((1,), -1)])
    lag = torch.where(settle_index < 0, 0, padded_times[settle_index.clamp(min=0)] - commit)
    unsettled = settle_index >= len(readings.states)
    committed = _generated(trajectory)
    lags, never = lag[committed].tolist(), unsettled[committed].tolist()
    return StabilityLags([None if n else int(v) for v, n in zip(lags, never)])


def lag_ccdf(lags: Sequence[int | None]) -> dict:
    """Complementary CDF of lags: {"lag": [0..max], "ccdf": [P(lag > x)]}; unsettled positions count as infinite."""
    settled = [lag for lag in lags if lag is not None]
    top = max(settled, default=0)
    values = torch.tensor([top + 1 if lag is None else lag for lag in lags], dtype=torch.float64)
    xs = list(range(top + 1))
    return {"lag": xs, "ccdf": [float((values > x).double().mean()) if len(values) else 0.0 for x in xs]}


@dataclass
class TrajectoryMetrics:
    """The three trajectory metrics, pooled over every trajectory given, and the state selection used."""

    flips: FlipRate
    mismatch: PostCommitMismatch
    lags: StabilityLags
    stride: int
    max_states: int | None

    def to_dict(self) -> dict:
        return {"flips": self.flips.to_dict(), "mismatch": self.mismatch.to_dict(), "lags": self.lags.to_dict(),
                "stride": self.stride, "max_states": self.max_states}


def trajectory_metrics(trajectories: Trajectory | Sequence[Trajectory], logits_fn: Queried, *, stride: int = 1,
                       max_states: int | None = None, batch_rows: int = 64) -> TrajectoryMetrics:
    """Frontier flips, post-commit mismatch and stability lags of `logits_fn` along the teacher's trajectories
    (one or several batches; counts are pooled)."""
    trajectories = [trajectories] if isinstance(trajectories, Trajectory) else list(trajectories)
    flips, mismatch, lags = [], [], []
    for trajectory in trajectories:
        readings = read_trajectory(trajectory, logits_fn, stride=stride, max_states=max_states, batch_rows=batch_rows)
        flips.append(frontier_flip_rate(trajectory, readings))
        mismatch.append(post_commit_mismatch(trajectory, readings))
        lags.append(stability_lags(trajectory, readings))
    return TrajectoryMetrics(FlipRate.pooled(flips), PostCommitMismatch.pooled(mismatch),
                             StabilityLags.pooled(lags), stride, max_states)


def exact_match_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of predictions equal to their answer (surrounding whitespace ignored)."""
    if len(predictions) != len(answers) or not answers:
        raise ValueError(f"metrics: got {len(predictions)} predictions for {len(answers)} answers; "
                         "give one prediction per answer, at least one")
    return sum(exact_match(p, a) for p, a in zip(predictions, answers)) / len(answers)


def recovery(quantized_accuracy: float, fp_accuracy: float) -> float | None:
    """quantized / FP accuracy; None when the FP model scores 0 (recovery is undefined)."""
    return quantized_accuracy / fp_accuracy if fp_accuracy > 0 else None


@dataclass
class MaskedNLL(_Result):
    nll: float
    tokens: int


@torch.no_grad()
def masked_token_nll(logits_fn: Queried, input_ids: torch.Tensor, answer_mask: torch.Tensor, mask_token_id: int,
                     *, attention_mask: torch.Tensor | None = None, samples: int = 1, seed: int = 0,
                     batch_rows: int = 64) -> MaskedNLL:
    """Mean NLL (nats) of the true tokens at randomly masked answer positions (module docstring).

    input_ids: [B, L] int64 full sequences (prompt + answer); answer_mask: [B, L] bool, the answer positions
    (each row needs at least one); attention_mask: [B, L] bool or None. samples: masking draws per sequence.
    """
    if input_ids.dim() != 2 or answer_mask.shape != input_ids.shape or not answer_mask.any(1).all():
        raise ValueError(f"metrics: masked_token_nll needs input_ids [B, L] and answer_mask of the same shape with "
                         f"an answer in every row; got {tuple(input_ids.shape)} and {tuple(answer_mask.shape)}")
    query = as_denoiser(logits_fn, mask_token_id=mask_token_id)
    generator = torch.Generator().manual_seed(seed)
    answer = answer_mask.cpu()
    total, count = 0.0, 0
    for _ in range(samples):
        masked = _random_answer_mask(answer, generator).to(input_ids.device)
        for start in range(0, len(input_ids), batch_rows):
            rows = slice(start, start + batch_rows)
            ids = input_ids[rows].masked_fill(masked[rows], mask_token_id)
            rows_mask = None if attention_mask is None else attention_mask[rows]
            read = masked[rows]
            logits = query.logits_at(ids, rows_mask, read).float()
            truth = input_ids[rows][read].to(logits.device)
            total += float(-torch.log_softmax(logits, -1).gather(-1, truth.unsqueeze(-1)).sum())
            count += int(read.sum())
    return MaskedNLL(total / count, count)


def _random_answer_mask(answer: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[B, L] bool: each answer position masked with probability r ~ U(0, 1) drawn per row, at least one per row."""
    ratio = torch.rand(answer.shape[0], 1, generator=generator)
    masked = answer & (torch.rand(answer.shape, generator=generator) < ratio)
    # A row with no masked token gets one answer position, chosen uniformly.
    pick = torch.multinomial(answer.double(), 1, generator=generator).squeeze(1)
    empty = ~masked.any(1)
    masked[empty, pick[empty]] = True
    return masked

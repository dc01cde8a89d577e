"""Trajectory metrics on hand-built teacher trajectories and fake logits functions with known answers."""
import pytest
import torch

from faircalib.diffusion import SamplerConfig, generate
from faircalib.diffusion.trajectory import Trajectory
from faircalib.metrics import (Readings, evaluated_states, frontier_flip_rate, frontier_readings, lag_ccdf,
                               masked_token_nll, post_commit_mismatch, read_trajectory, recorded_frontier,
                               remasked_readings, stability_lags, trajectory_metrics)
from faircalib.models import get_adapter
from tests.models.conftest import lm_head_rows, tiny_model

MASK, VOCAB, WRONG = 1, 12, 11


def teacher_trajectory(commit_rows, prompt_len=2) -> Trajectory:
    """Generation commit steps per row (one commit per step: a permutation of 0..G-1); tokens 3 + position."""
    commit_gen = torch.tensor(commit_rows)
    batch, gen = commit_gen.shape
    steps = gen
    tokens = torch.cat([torch.full((batch, prompt_len), 2), 3 + torch.arange(gen).expand(batch, gen)], 1)
    commit = torch.cat([torch.full((batch, prompt_len), -1), commit_gen], 1)
    stat = torch.full((steps, batch, prompt_len + gen), float("nan"))
    return Trajectory(prompt_len=prompt_len, mask_token_id=MASK, tokens=tokens, commit_step=commit,
                      attention_mask=torch.ones(batch, prompt_len + gen, dtype=torch.bool), num_steps=steps,
                      top1=torch.full(stat.shape, -1), top1_prob=stat, margin=stat.clone(), entropy=stat.clone())


TEACHER = teacher_trajectory([[2, 0, 3, 1], [0, 1, 2, 3]])


def one_hot_logits(predictions: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(predictions, VOCAB).float()


def oracle(ids, attention_mask):
    """Predicts the teacher's final token everywhere (the mask id being the top logit, which must be ignored)."""
    logits = one_hot_logits(3 + (torch.arange(ids.shape[1]) - TEACHER.prompt_len).clamp(min=0).expand_as(ids))
    logits[..., MASK] = 5.0
    return logits


def always_wrong(ids, attention_mask):
    return one_hot_logits(torch.full_like(ids, WRONG))


def wrong_at_column(column):
    def logits_fn(ids, attention_mask):
        logits = oracle(ids, attention_mask)
        logits[:, column] = one_hot_logits(torch.full((len(ids),), WRONG))
        return logits
    return logits_fn


def test_agreeing_model_has_no_flips_no_mismatch_zero_lag():
    result = trajectory_metrics(TEACHER, oracle)
    assert (result.flips.flips, result.flips.decisions, result.flips.rate) == (0, 8, 0.0)
    assert result.mismatch.mean_disagree == 0.0 and result.mismatch.never_agree == 0.0
    # pairs: one per (position, later state t in c+1..S): sum over positions of S - c = 2 * (4 + 3 + 2 + 1).
    assert result.mismatch.pairs == 20 and result.mismatch.positions == 8
    assert result.lags.lags == [0] * 8


def test_always_wrong_model_flips_everything():
    result = trajectory_metrics(TEACHER, always_wrong)
    assert result.flips.rate == 1.0 and result.flips.per_step == [1.0] * 4
    assert (result.flips.early, result.flips.late) == (1.0, 1.0)
    assert result.mismatch.mean_disagree == 1.0 and result.mismatch.never_agree == 1.0
    assert result.lags.lags == [None] * 8


def test_one_wrong_column_flips_one_position_per_row():
    column = TEACHER.prompt_len + 2  # committed at steps 3 and 2
    result = trajectory_metrics(TEACHER, wrong_at_column(column))
    assert (result.flips.flips, result.flips.rate) == (2, 0.25)
    assert result.flips.per_step == [0.0, 0.0, 0.5, 0.5] and (result.flips.early, result.flips.late) == (0.0, 0.5)
    assert result.mismatch.disagreeing_pairs == 1 + 2 and result.mismatch.never_agreeing_positions == 2
    assert result.mismatch.never_agree == 0.25


def test_remasked_query_masks_exactly_the_one_position():
    seen = []

    def recording(ids, attention_mask):
        seen.append(ids.clone())
        return oracle(ids, attention_mask)

    states = [1, 2, 3, 4]
    readings = remasked_readings(TEACHER, recording, states, batch_rows=3)
    rows = torch.cat(seen)
    assert len(rows) == 20 and max(len(s) for s in seen) <= 3
    # Queries go state by state, row by row, position by position (the order of nonzero over [T, B, L]).
    expected = []
    for t in states:
        state = TEACHER.state_before(t)
        for b in range(2):
            for i in range(TEACHER.tokens.shape[1]):
                if 0 <= TEACHER.commit_step[b, i] < t:
                    query = state[b].clone()
                    query[i] = MASK
                    expected.append(query)
                    assert int((query != state[b]).sum()) == 1
    torch.testing.assert_close(rows, torch.stack(expected), rtol=0, atol=0)
    assert (readings >= 0).sum() == 20


def test_frontier_reads_the_state_before_the_commit():
    seen = []

    def recording(ids, attention_mask):
        seen.append(ids.clone())
        return oracle(ids, attention_mask)

    read_trajectory(TEACHER, recording, max_states=1)
    frontier_rows = torch.cat(seen)[: TEACHER.num_steps * 2]
    expected = torch.stack([TEACHER.state_before(t)[b] for t in range(4) for b in range(2)])
    torch.testing.assert_close(frontier_rows, expected, rtol=0, atol=0)


def test_recorded_frontier_equals_querying_the_recording_model():
    table = torch.randn(8, VOCAB, generator=torch.Generator().manual_seed(0))

    def context_model(ids, attention_mask):
        """Decisions depend on the state: a position table plus a bump on (sum of ids mod V)."""
        bump = torch.nn.functional.one_hot(ids.sum(1) % VOCAB, VOCAB).float().unsqueeze(1)
        return table[: ids.shape[1]] + 0.8 * bump

    trajectory = generate(context_model, [[4, 5], [6, 7]], SamplerConfig(gen_length=6, steps=3), record=True,
                          mask_token_id=MASK, generator=torch.Generator().manual_seed(0)).trajectory
    recorded = recorded_frontier(trajectory)
    torch.testing.assert_close(recorded, frontier_readings(trajectory, context_model), rtol=0, atol=0)
    generated = trajectory.commit_step >= 0
    assert torch.equal(recorded[generated], trajectory.tokens[generated])  # greedy: the decision is the commit
    assert (recorded[~generated] == -1).all()


def hand_readings():
    """One row, 4 positions committed at steps [0, 1, 2, 3] of a 4-step run; tokens 3..6.

    readings (o: agrees, x: disagrees)   frontier   t=1 t=2 t=3 t=4   lag
      position 0 (c=0)                      o        o   x   o   o     3  (settles at t=3)
      position 1 (c=1)                      x            o   o   o     1
      position 2 (c=2)                      o                o   o     0
      position 3 (c=3)                      o                    x     never
    """
    trajectory = teacher_trajectory([[0, 1, 2, 3]], prompt_len=0)
    ok, bad = trajectory.tokens[0], torch.full((4,), WRONG)
    frontier = torch.where(torch.tensor([True, False, True, True]), ok, bad).unsqueeze(0)
    remasked = torch.full((4, 1, 4), -1)
    for t, agree in {1: [1], 2: [0, 1], 3: [1, 1, 1], 4: [1, 1, 1, 0]}.items():
        for i, agrees in enumerate(agree):
            remasked[t - 1, 0, i] = ok[i] if agrees else WRONG
    return trajectory, Readings(frontier, [1, 2, 3, 4], remasked)


def test_stability_lag_on_hand_built_readings():
    trajectory, readings = hand_readings()
    assert stability_lags(trajectory, readings).lags == [3, 1, 0, None]


def test_mismatch_and_flips_on_hand_built_readings():
    trajectory, readings = hand_readings()
    mismatch = post_commit_mismatch(trajectory, readings)
    # pairs: 4 + 3 + 2 + 1 = 10; disagreeing: position 0 at t=2, position 3 at t=4.
    assert (mismatch.pairs, mismatch.disagreeing_pairs, mismatch.mean_disagree) == (10, 2, 0.2)
    assert (mismatch.never_agreeing_positions, mismatch.never_agree) == (1, 0.25)
    flips = frontier_flip_rate(trajectory, readings)
    assert flips.rate == 0.25 and flips.per_step == [0.0, 1.0, 0.0, 0.0] and (flips.early, flips.late) == (0.5, 0.0)


def test_lag_on_a_coarser_grid_is_an_upper_bound():
    trajectory, readings = hand_readings()
    keep = [1, 3]  # states 2 and 4
    coarse = Readings(readings.frontier, [2, 4], readings.remasked[keep])
    # position 0: bad at t=2, ok at t=4 -> settles at 4 (lag 4); position 1: ok at 2 and 4 -> lag 1;
    # position 2: frontier ok, ok at 4 -> 0; position 3: bad at 4 -> never.
    assert stability_lags(trajectory, coarse).lags == [4, 1, 0, None]


@pytest.mark.parametrize("steps, stride, max_states, expected", [
    (4, 1, None, [1, 2, 3, 4]), (4, 2, None, [2, 4]), (5, 2, None, [2, 4, 5]), (10, 1, 3, [1, 5, 10]),
    (3, 5, None, [3]),
])
def test_evaluated_states(steps, stride, max_states, expected):
    assert evaluated_states(steps, stride, max_states) == expected


def test_lag_ccdf_counts_unsettled_as_infinite():
    ccdf = lag_ccdf([0, 1, 1, 3, None])
    assert ccdf["lag"] == [0, 1, 2, 3]
    assert ccdf["ccdf"] == pytest.approx([0.8, 0.4, 0.4, 0.2])


def test_results_serialise_to_json():
    import json

    result = json.loads(json.dumps(trajectory_metrics(TEACHER, wrong_at_column(3), stride=2).to_dict()))
    # states [2, 4]: two positions per row committed before t=2, all four before t=4.
    assert result["stride"] == 2 and result["flips"]["rate"] == 0.25 and result["mismatch"]["pairs"] == 2 * (2 + 4)
    assert set(result["lags"]["summary"]) == {"positions", "unsettled", "mean", "median", "p90", "max"}


def test_metrics_pool_counts_over_trajectories():
    short = teacher_trajectory([[1, 0]])
    single = [trajectory_metrics(t, wrong_at_column(2)) for t in (TEACHER, short)]
    pooled = trajectory_metrics([TEACHER, short], wrong_at_column(2))
    # column 2 is generation position 0: committed at steps 2 and 0 in TEACHER, at step 1 in `short`.
    assert pooled.flips.step_flips == [1, 1, 1, 0] and pooled.flips.step_decisions == [3, 3, 2, 2]
    # early halves are per run: steps 0-1 of TEACHER (1 flip in 4), step 0 of `short` (0 in 1).
    assert (pooled.flips.early_flips, pooled.flips.early_decisions) == (1, 5)
    assert pooled.mismatch.pairs == sum(r.mismatch.pairs for r in single)
    assert pooled.lags.lags == single[0].lags.lags + single[1].lags.lags


def test_bad_logits_shape_is_named():
    with pytest.raises(ValueError, match=r"returned logits of shape \(8, 6\) for input_ids \(8, 6\); it must "
                                         r"return aligned logits \[B, L, V\]"):
        trajectory_metrics(TEACHER, lambda ids, mask: torch.zeros(ids.shape))


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_a_model_is_queried_at_the_read_positions_only_with_the_same_results(family):
    """Given a model instead of its logits function, each query runs the LM head on the positions it reads (one
    per re-masked row, the commits of a frontier row, the masked answer of an NLL row): the same metrics."""
    model = tiny_model(family)
    adapter = get_adapter(model)
    mask_id = adapter.mask_token_id
    trajectory = generate(model, [[4, 5, 6], [7, 8, 9]], SamplerConfig(gen_length=8, steps=8), record=True,
                          generator=torch.Generator().manual_seed(1)).trajectory
    ids, answer = trajectory.tokens, trajectory.commit_step >= 0
    with lm_head_rows(adapter) as rows_seen:
        fast = trajectory_metrics(trajectory, model, batch_rows=8)
        fast_nll = masked_token_nll(model, ids, answer, mask_id, samples=2, batch_rows=1)
    # A query batch is 8 rows of 11 positions: at most 8 read (one per re-masked row, one commit per frontier row,
    # an NLL row's masked answer), where a logits function computes 88.
    assert rows_seen and max(rows_seen) <= 8
    full = trajectory_metrics(trajectory, adapter.logits, batch_rows=8)
    assert fast.to_dict() == full.to_dict()
    full_nll = masked_token_nll(adapter.logits, ids, answer, mask_id, samples=2, batch_rows=1)
    assert fast_nll.tokens == full_nll.tokens and fast_nll.nll == pytest.approx(full_nll.nll, rel=1e-5)

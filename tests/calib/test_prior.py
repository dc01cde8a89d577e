"""Stage I scores and normalisation on a hand-built trajectory whose answer is computed by hand below."""
import math

import pytest
import torch

from faircalib.calib.prior import PositionPrior, PriorConfig, accumulate_scores, frontier_schedule, normalise
from faircalib.diffusion.trajectory import Trajectory

NAN = float("nan")
MASK = 1


def hand_trajectory(stat: str = "top1_prob", values=None) -> Trajectory:
    """One prompt token, 3 generated positions committed at steps [2, 0, 1] of a 3-step run.

    Statistic values at the masked positions (NaN elsewhere), by step:
      step 0: all masked      [0.2, 0.8, 0.4]
      step 1: positions 0, 2  [0.5,  - , 0.25]
      step 2: position 0      [0.3,  - ,  - ]
    """
    values = values or [[0.2, 0.8, 0.4], [0.5, NAN, 0.25], [0.3, NAN, NAN]]
    per_step = torch.tensor([[[NAN] + row] for row in values], dtype=torch.float32)  # [S=3, B=1, L=4]
    stats = {name: torch.full_like(per_step, 0.5) for name in ("top1_prob", "margin", "entropy")}
    stats[stat] = per_step
    return Trajectory(
        prompt_len=1, mask_token_id=MASK, tokens=torch.tensor([[5, 7, 8, 9]]),
        commit_step=torch.tensor([[-1, 2, 0, 1]]), attention_mask=torch.ones(1, 4, dtype=torch.bool), num_steps=3,
        top1=torch.full((3, 1, 4), -1),
        **stats,
    )


# By hand, max row-normalisation: step 0 [0.25, 1, 0.5], step 1 [1, -, 0.5], step 2 [1, -, -]
# -> masked sums [2.25, 1, 1], times lambda1/S = 1/3. Linear schedule, S = 3: lambda0(t) = [2, 1.5, 1], and the
# commits at steps [2, 0, 1] give the frontier term [1, 2, 1.5].
MASKED_BY_HAND = [2.25 / 3, 1 / 3, 1 / 3]
FRONTIER_BY_HAND = [1.0, 2.0, 1.5]


@pytest.mark.parametrize("terms, expected", [
    ("both", [f + m for f, m in zip(FRONTIER_BY_HAND, MASKED_BY_HAND)]),
    ("frontier", FRONTIER_BY_HAND),
    ("masked", MASKED_BY_HAND),
    ("uniform", [1.0, 1.0, 1.0]),
])
def test_scores_match_hand_computation_for_each_ablation(terms, expected):
    scores = accumulate_scores(hand_trajectory(), PriorConfig(terms=terms))
    assert scores.dtype == torch.float64
    torch.testing.assert_close(scores, torch.tensor(expected, dtype=torch.float64))


def test_minmax_row_normalisation():
    # step 0: (r - 0.2) / 0.6 = [0, 1, 1/3]; step 1: [1, -, 0]; step 2 (one position): 1.
    scores = accumulate_scores(hand_trajectory(), PriorConfig(terms="masked", row_norm="minmax", lambda1=3.0))
    torch.testing.assert_close(scores, torch.tensor([2.0, 1.0, 1 / 3], dtype=torch.float64))


def test_margin_reads_the_margin_statistic():
    scores = accumulate_scores(hand_trajectory("margin"), PriorConfig(terms="masked", confidence="margin"))
    torch.testing.assert_close(scores, torch.tensor(MASKED_BY_HAND, dtype=torch.float64))


def test_neg_entropy_uses_exp_of_minus_entropy():
    entropy = [[0.0, math.log(2), math.log(4)], [math.log(2), NAN, 0.0], [1.0, NAN, NAN]]
    # exp(-H): step 0 [1, 1/2, 1/4], step 1 [1/2, -, 1] -> max-normalised [1/2, -, 1]; step 2 [1].
    scores = accumulate_scores(hand_trajectory("entropy", entropy),
                               PriorConfig(terms="masked", confidence="neg_entropy", lambda1=3.0))
    torch.testing.assert_close(scores, torch.tensor([2.5, 0.5, 1.25], dtype=torch.float64))


def test_scores_sum_over_trajectories_and_rows():
    one = accumulate_scores(hand_trajectory(), PriorConfig())
    torch.testing.assert_close(accumulate_scores([hand_trajectory()] * 3, PriorConfig()), 3 * one)


def test_all_equal_row_gets_one():
    equal = [[0.4, 0.4, 0.4], [0.7, NAN, 0.7], [0.1, NAN, NAN]]
    scores = accumulate_scores(hand_trajectory("top1_prob", equal), PriorConfig(terms="masked", lambda1=3.0))
    torch.testing.assert_close(scores, torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64))


@pytest.mark.parametrize("schedule, expected", [
    ("linear", [2.0, 1.5, 1.0]),
    ("exp", [2.0, 1 + math.exp(-2.0), 1 + math.exp(-4.0)]),
    ("constant", [1.0, 1.0, 1.0]),
])
def test_frontier_schedules_are_early_boosted(schedule, expected):
    torch.testing.assert_close(frontier_schedule(3, PriorConfig(schedule=schedule)),
                               torch.tensor(expected, dtype=torch.float64))
    assert frontier_schedule(1, PriorConfig(schedule=schedule)).tolist() == [expected[0]]


def test_normalise_window_floor_and_mean_one():
    # window [3, 6] -> / 4.5 -> [2/3, 4/3]; outside 0.1; mean (0.4 + 2) / 6 = 0.4.
    weights = normalise(torch.tensor([1.0, 2.0, 3.0, 6.0]), 6, PriorConfig(window=2, floor=0.1))
    assert weights.dtype == torch.float32 and weights.shape == (6,)
    torch.testing.assert_close(weights, torch.tensor([0.25] * 4 + [2 / 3 / 0.4, 4 / 3 / 0.4]))
    assert weights.mean().item() == pytest.approx(1.0)


def test_window_clipped_to_generation_and_sequence_lengths():
    config = PriorConfig(window=256, floor=0.5)
    longer_sequence = normalise(torch.tensor([1.0, 3.0]), 4, config)  # K = G = 2
    torch.testing.assert_close(longer_sequence, torch.tensor([0.5, 0.5, 0.5, 1.5]) / 0.75)
    shorter_sequence = normalise(torch.tensor([9.0, 1.0, 3.0]), 2, config)  # K = seq_len = 2: the last scores
    torch.testing.assert_close(shorter_sequence, torch.tensor([0.5, 1.5]))


def test_floor_also_bounds_the_window_from_below():
    weights = normalise(torch.tensor([0.0, 10.0]), 2, PriorConfig(floor=0.1))
    torch.testing.assert_close(weights, torch.tensor([0.1, 2.0]) / 1.05)


def test_uniform_prior_is_all_ones():
    assert normalise(torch.tensor([1.0, 5.0]), 7, PriorConfig(terms="uniform")).tolist() == [1.0] * 7


@pytest.mark.parametrize("bad", [
    dict(schedule="cosine"), dict(confidence="logit"), dict(row_norm="softmax"), dict(terms="none"),
    dict(lambda0=0.0), dict(lambda1=-1.0), dict(beta=-0.5), dict(tau=0.0), dict(floor=1.5), dict(window=0),
    dict(n_probe=0), dict(batch_size=0), dict(tol=0.0), dict(lag_rollouts=-1), dict(lag_max_states=0),
])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="calib.prior"):
        PriorConfig(**bad)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="no trajectories"):
        accumulate_scores([], PriorConfig())
    short = hand_trajectory()
    short.tokens, short.commit_step = short.tokens[:, :3], short.commit_step[:, :3]
    with pytest.raises(ValueError, match="different generation lengths"):
        accumulate_scores([hand_trajectory(), short], PriorConfig())
    broken = hand_trajectory()
    broken.top1_prob[0, 0, 2] = NAN
    with pytest.raises(ValueError, match="non-finite"):
        accumulate_scores(broken, PriorConfig())
    with pytest.raises(ValueError, match="not all zero"):
        normalise(torch.zeros(3), 3, PriorConfig())


def test_save_load_round_trip_and_plot(tmp_path):
    prior = PositionPrior(PriorConfig(window=2, terms="frontier"), accumulate_scores(hand_trajectory(), PriorConfig()),
                          seq_len=5, num_rollouts=1, stability_lags=[0, 2, None, 1], changes=[0.5, 0.01],
                          sampler={"sampler": "probe", "gen_length": 3})
    path = prior.save(tmp_path / "prior.json")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    loaded = PositionPrior.load(path)
    assert loaded.config == prior.config and loaded.to_dict() == prior.to_dict()
    torch.testing.assert_close(loaded.weights, prior.weights, rtol=0, atol=0)
    assert loaded.weights_for(8).shape == (8,)
    png = prior.plot(tmp_path / "prior.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=".json"):
        prior.save(tmp_path / "prior.npz")

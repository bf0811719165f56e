"""CAR math, reward transforms, rankings, bootstrap intervals, Spearman tables and fit_beta."""

import math

import numpy as np
import pandas as pd
import pytest

from car_hf import InputError, compatibility_adjusted_reward, fit_beta, rank_generators, spearman_table, transform_rewards
from car_hf.core.car import example_car
from car_hf.core.inputs import check_numbers


def test_dataset_level_car_is_mean_reward_over_one_plus_beta_mean_loss():
    assert compatibility_adjusted_reward([0.2, 0.6], [1.0, 2.0], beta=2.0) == pytest.approx(0.4 / (1 + 2 * 1.5))
    assert compatibility_adjusted_reward([0.2, 0.6], [1.0, 2.0], beta=0.0) == pytest.approx(0.4)
    # Rows with a NaN on either side are left out, pairwise.
    assert compatibility_adjusted_reward([0.2, math.nan, 0.6], [1.0, 5.0, 2.0], 1.0) == pytest.approx(0.4 / 2.5)


def test_dataset_level_car_refuses_a_negative_mean_reward_and_allows_zero():
    with pytest.raises(ValueError, match="mean reward"):
        compatibility_adjusted_reward([-0.5, 0.2], [1.0, 1.0], beta=1.0)
    assert compatibility_adjusted_reward([0.0, 0.0], [1.0, 3.0], beta=1.0) == 0.0  # every answer wrong: CAR 0
    table = rank_generators({"generator": ["a", "b"], "reward": [0.0, 0.5], "base_loss": [1.0, 1.0]}, n_bootstrap=0)
    assert table.set_index("generator")["car"].to_dict() == {"b": 0.25, "a": 0.0}


def test_negative_rewards_raise_by_default_naming_rows_and_alternatives():
    with pytest.raises(ValueError) as err:
        transform_rewards([0.3, -1.2, 0.5], names=[10, 11, 12], column="skywork")
    message = str(err.value)
    assert "rows [11]" in message and "'skywork'" in message
    for option in ("sigmoid", "minmax", "shift"):
        assert option in message


def test_reward_transforms_values_and_records():
    values, record = transform_rewards([-2.0, 0.0, 2.0], "sigmoid")
    assert values.tolist() == pytest.approx([1 / (1 + math.e**2), 0.5, 1 / (1 + math.e**-2)])
    values, record = transform_rewards([-2.0, math.nan, 2.0], "shift")
    assert values[0] == 0.0 and math.isnan(values[1]) and values[2] == 4.0 and record["offset"] == 2.0
    values, record = transform_rewards([-2.0, 0.0, 2.0], "minmax")
    assert values.tolist() == [0.0, 0.5, 1.0] and record == {"reward_transform": "minmax", "min": -2.0, "max": 2.0}
    with pytest.raises(ValueError, match="must be one of"):
        transform_rewards([1.0], "log")


def test_example_car_and_reward_column_checks():
    assert example_car([0.5, 1.0], [1.0, math.nan], 1.0)[0] == 0.25
    assert math.isnan(example_car([0.5, 1.0], [1.0, math.nan], 1.0)[1])
    assert check_numbers([0.5, None, 2], "judge")[0] == 0.5
    assert math.isnan(check_numbers([0.5, None, 2], "judge")[1])
    with pytest.raises(InputError, match="row 7, column 'judge': the reward is infinite"):
        check_numbers([math.inf], "judge", names=[7])
    with pytest.raises(InputError, match="row 3, column 'judge': a reward must be a number"):
        check_numbers(["good"], "judge", names=[3])


def _scored_frame(n_instructions=40, seed=0):
    """Three generators on the same instructions; 'b' is better rewarded but much less compatible."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_instructions):
        difficulty = rng.normal(0, 0.05)
        for name, reward, loss in (("a", 0.60, 1.0), ("b", 0.70, 2.5), ("c", 0.40, 1.2)):
            rows.append({"instruction_id": k, "generator": name, "reward": reward + difficulty + rng.normal(0, 0.02),
                         "base_loss": loss + rng.normal(0, 0.05), "base_loss_tokens": 10 + k})
    return pd.DataFrame(rows)


def test_rank_generators_means_car_and_rank_match_a_direct_computation():
    frame = _scored_frame()
    table = rank_generators(frame, beta=1.0, n_bootstrap=0)
    for _, row in table.iterrows():
        part = frame[frame.generator == row.generator]
        assert row.reward == pytest.approx(part.reward.mean())
        assert row.base_loss == pytest.approx(part.base_loss.mean())
        assert row.car == pytest.approx(part.reward.mean() / (1 + part.base_loss.mean()))
        assert row.ppl == pytest.approx(math.exp(part.base_loss.mean()))
        assert row.response_tokens == pytest.approx(part.base_loss_tokens.mean())
    assert table.generator.tolist() == ["a", "b", "c"]  # a: .6/2 = .30 > b: .7/3.5 = .20 > c: .4/2.2
    assert table["rank"].tolist() == [1, 2, 3]
    assert rank_generators(frame, beta=0.0, n_bootstrap=0).generator.tolist() == ["b", "a", "c"]
    assert table.attrs["car"]["beta"] == 1.0 and table.attrs["car"]["paired_by"] == "instruction_id"


def test_rank_generators_counts_and_excludes_non_finite_rows():
    frame = _scored_frame(10)
    frame.loc[0, "base_loss"] = math.nan  # generator a, instruction 0: e.g. an empty response
    frame.loc[1, "reward"] = math.nan  # generator b: a missing judge score
    table = rank_generators(frame, n_bootstrap=0).set_index("generator")
    assert table.loc["a", "n"] == 10 and table.loc["a", "n_scored"] == 9
    assert table.loc["b", "n_scored"] == 9 and table.loc["c", "n_scored"] == 10
    assert table.loc["a", "reward"] == pytest.approx(frame[(frame.generator == "a")].reward.iloc[1:].mean())


def test_bootstrap_intervals_cover_the_estimate_and_p_best_is_a_distribution():
    table = rank_generators(_scored_frame(), beta=1.0, n_bootstrap=500, seed=1)
    assert (table.car_low <= table.car).all() and (table.car <= table.car_high).all()
    assert table.p_best.sum() == pytest.approx(1.0)
    # 'a' beats 'b' by a wide, consistent margin on paired instructions: always first.
    assert table.set_index("generator").loc["a", "p_best"] == 1.0
    assert table.rank_low.tolist() == [1, 2, 3] and table.rank_high.tolist() == [1, 2, 3]
    # Same seed → same intervals; the interval shrinks with more instructions.
    again = rank_generators(_scored_frame(), beta=1.0, n_bootstrap=500, seed=1)
    assert np.allclose(again.car_low, table.car_low)
    wide = rank_generators(_scored_frame(10), n_bootstrap=500)
    assert (wide.car_high - wide.car_low).mean() > (table.car_high - table.car_low).mean()


def test_rank_generators_errors_name_the_column():
    frame = _scored_frame(3)
    with pytest.raises(InputError, match=r"column 'judge' \(reward_column: rewards of each row\) is missing; "
                                         r"the dataset has columns \['instruction_id', 'generator', 'reward'"):
        rank_generators(frame, reward_column="judge")
    frame.loc[2, "reward"] = -1.0
    with pytest.raises(ValueError, match="negative"):
        rank_generators(frame)
    assert rank_generators(frame, reward_transform="shift", n_bootstrap=0).attrs["car"]["reward_transform"] == "shift"


def test_spearman_table_orients_metrics_and_matches_scipy():
    table = rank_generators(_scored_frame(), beta=1.0, n_bootstrap=0)
    measured = {"a": 30.0, "b": 20.0, "c": 10.0}  # the CAR order
    result = spearman_table(table, measured).set_index("metric")
    assert result.loc["CAR", "rho"] == pytest.approx(1.0)
    assert result.loc["Reward", "rho"] == pytest.approx(0.5)  # reward order b > a > c
    assert result.loc["PPL-Self", "direction"] == "lower"
    assert result.loc["PPL-Self", "rho"] == pytest.approx(0.5)  # loss order a < c < b
    with pytest.raises(KeyError, match="'c'"):
        spearman_table(table, {"a": 1.0, "b": 2.0})


def test_fit_beta_finds_the_window_where_car_ranks_correctly():
    # CAR(a) = .9/(1+3β), CAR(b) = .5/(1+β), CAR(c) = .7/(1+1.5β); measured order c > b > a needs
    # b > a (β > 2/3) and c > b (β < 4): the smallest grid value above 2/3 is returned.
    table = rank_generators({"generator": list("abc"), "reward": [.9, .5, .7], "base_loss": [3.0, 1.0, 1.5]},
                            n_bootstrap=0)
    fit = fit_beta(table, {"a": 10, "b": 12, "c": 30})
    assert fit.rho == pytest.approx(1.0)
    assert 2 / 3 < fit.beta < 0.7
    assert fit.curve.loc[fit.curve.beta == 0.0, "rho"].item() == pytest.approx(-0.5)  # reward order a > c > b
    assert fit.curve.loc[fit.curve.beta > 4.0, "rho"].max() < 1.0

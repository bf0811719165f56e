"""rank_generators' rank-surprisal ratio (``base_rank`` → ``rsr``) and its place in spearman_table."""

import math

import numpy as np
import pytest

from car_hf import rank_generators, spearman_table
from car_hf.ranking.leaderboard import BASELINES, p_best


def rows():
    return {
        "generator": ["a", "a", "a", "b", "b", "c", "c"],
        "instruction_id": [0, 1, 2, 0, 1, 0, 1],
        "reward": [0.8, 0.6, 0.7, 0.9, math.nan, 0.5, 0.4],
        "base_loss": [1.0, 2.0, math.nan, 0.5, 1.5, 3.0, 2.0],
        "base_rank": [4.0, 10.0, 7.0, 2.0, 3.0, 40.0, math.nan],
    }


def test_rsr_is_mean_rank_over_mean_loss_on_rows_where_both_are_finite():
    table = rank_generators(rows(), n_bootstrap=0).set_index("generator")
    # a: rows 0-1 (row 2 has no loss); b: both rows (a NaN reward does not matter to RSR); c: row 5 only.
    expected = {"a": (4 + 10) / 2 / ((1 + 2) / 2), "b": (2 + 3) / 2 / ((0.5 + 1.5) / 2), "c": 40 / 3}
    assert table["rsr"].to_dict() == pytest.approx(expected)
    assert table["base_rank"].to_dict() == pytest.approx({"a": 7.0, "b": 2.5, "c": 40.0})
    assert "rsr" not in rank_generators({k: v for k, v in rows().items() if k != "base_rank"}, n_bootstrap=0)


def test_spearman_table_counts_a_lower_rsr_as_better():
    table = rank_generators(rows(), n_bootstrap=1000)  # with intervals too: rsr needs none
    assert BASELINES["rsr"] == ("RSR", -1)
    measured = {"a": 20.0, "b": 30.0, "c": 10.0}  # RSR order b < a < c: the measured order
    result = spearman_table(table, measured).set_index("metric")
    assert result.loc["RSR", "direction"] == "lower" and result.loc["RSR", "rho"] == pytest.approx(1.0)
    assert {"Reward", "PPL-Self", "CAR", "RSR"} <= set(result.index)
    assert np.isfinite(table["car_low"]).all()


def test_exactly_tied_generators_split_p_best_and_share_the_better_rank():
    # b and c answer every instruction with the same reward and loss: tied in every resample.
    rewards = {"a": [0.2, 0.3, 0.25, 0.2], "b": [0.9, 0.5, 0.7, 0.8], "c": [0.9, 0.5, 0.7, 0.8]}
    data = {"generator": [g for g in "abc" for _ in range(4)], "instruction_id": list(range(4)) * 3,
            "reward": [r for g in "abc" for r in rewards[g]], "base_loss": [1.0] * 12}
    table = rank_generators(data, n_bootstrap=400).set_index("generator")
    assert table["p_best"].to_dict() == {"b": 0.5, "c": 0.5, "a": 0.0}
    assert table.loc[["b", "c"], "rank"].tolist() == [1, 1]
    assert table.loc[["b", "c"], "rank_low"].tolist() == [1, 1] and table.loc[["b", "c"], "rank_high"].tolist() == [1, 1]
    assert table.loc["a", "rank_low"] == 3  # two generators are ahead of it in every resample
    # A tie in some resamples only: shared there, so the shares still sum to 1.
    p = p_best(np.array([[1.0, 1.0, 0.0], [2.0, 1.0, np.nan], [np.nan, np.nan, np.nan]]))
    assert p.tolist() == pytest.approx([0.5, 1 / 6, 0.0])  # the all-NaN resample names no best

"""The stopping rule as pure functions of cells: win probabilities, levels, decisions, the round schedule."""

import numpy as np
import pytest

from car_hf.ranking.leaderboard import bootstrap_car
from car_hf.ranking.stopping import (
    decision_level,
    instruction_cells,
    pairwise_win_probability,
    plan_rounds,
    stop_decision,
    subset_cells,
)


def scores(means, n_instructions=30, noise=0.1, seed=0) -> dict:
    """Long-layout score columns: generator ``gen-g``'s reward ~ means[g] + noise, loss ~ 2 + noise."""
    rng = np.random.default_rng(seed)
    n = len(means) * n_instructions
    return {
        "generator": [f"gen-{g}" for _ in range(n_instructions) for g in range(len(means))],
        "instruction_id": np.repeat(np.arange(n_instructions), len(means)).tolist(),
        "reward": np.clip(np.tile(means, n_instructions) + noise * rng.standard_normal(n), 0.01, 1).tolist(),
        "base_loss": (2 + 0.3 * rng.random(n)).tolist(),
    }


def test_plan_rounds_counts_rows_of_uneven_instructions():
    assert plan_rounds([3] * 10, min_instructions=4, round_size=3) == [4, 7, 10]
    assert plan_rounds([3] * 10, min_instructions=4, round_size=3, max_examples=25) == [4, 7, 8]
    assert plan_rounds([2, 5, 1, 4], min_instructions=1, round_size=1, max_examples=8) == [1, 2, 3]
    assert plan_rounds([2, 5], min_instructions=1, round_size=1, max_examples=1) == []
    assert plan_rounds([2] * 3, min_instructions=10, round_size=5) == [3]


def test_stop_decision_is_a_pure_function_of_cells():
    cells = instruction_cells(scores([0.9, 0.3]))
    assert cells.groups == ["gen-0", "gen-1"] and cells.count.shape == (2, 30)
    decision = stop_decision(cells, beta=1.0, min_instructions=5, n_bootstrap=200)
    assert decision.stop and decision.leader == "gen-0" and decision.level == 0.95  # 1 pair: no correction
    assert decision.order == ["gen-0", "gen-1"] and decision.p_top == 1.0 and decision.n_instructions == 30
    assert stop_decision(cells, beta=1.0, min_instructions=31, n_bootstrap=200).stop is False  # too few
    few = stop_decision(subset_cells(cells, [0, 1]), beta=1.0, min_instructions=5, n_bootstrap=200)
    assert not few.stop and few.n_instructions == 2 and "min_instructions" in few.note
    again = stop_decision(cells, beta=1.0, min_instructions=5, n_bootstrap=200)
    assert again.p_top == decision.p_top and again.pairs == decision.pairs


def test_pairwise_win_probability_and_levels():
    cells = instruction_cells({"generator": list("ababab"), "instruction_id": [0, 0, 1, 1, 2, 2],
                               "reward": [.9, .2, .8, .3, .7, .1], "base_loss": [1.0] * 6})
    boot = bootstrap_car(cells, 1.0, 200, 0)[0]
    wins = pairwise_win_probability(boot)
    assert wins[0, 1] == 1.0 and wins[1, 0] == 0.0 and np.allclose(wins + wins.T, 1.0)
    nan = pairwise_win_probability(np.array([[np.nan, 1.0], [2.0, 1.0]]))
    assert nan[0, 1] == 0.5  # NaN loses once, wins once
    assert decision_level(0.95, 10) == pytest.approx(0.995) and decision_level(0.95, 10, "none") == 0.95
    with pytest.raises(ValueError):
        decision_level(0.95, 3, "holm")

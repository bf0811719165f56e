"""car_hf.evaluation.pilot_report on synthetic evaluations (no model): what the report says and how it says it."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from car_hf.evaluation.student import EvaluationConfig, StudentEvaluation, summarize
from car_hf.evaluation.pilot_report import INTERVALS, build_report, permutation_p
from car_hf.ranking.leaderboard import rank_generators

N_ITEMS = 40


def pool(names, beta=1.0):
    """One row per teacher and instruction: CAR falls with the teacher's position, every signal column present."""
    rows = []
    for k, name in enumerate(names):
        for i in range(6):
            rows.append({"generator": name, "instruction": f"q{i}", "reward": 0.9 - 0.1 * k,
                         "base_loss": 1.0 + 0.05 * k,
                         "ifd": 0.5 + 0.01 * k, "base_rank": 3.0 + k})
    return rank_generators(pd.DataFrame(rows), beta=beta, n_bootstrap=0)


def evaluation_of(name, correct, empty=()):
    items = pd.DataFrame({"q": [f"h{i}" for i in range(N_ITEMS)], "response": ["x"] * N_ITEMS,
                          "correct": np.asarray(correct, float)})
    items["empty_answer"] = [i in empty for i in range(N_ITEMS)]
    items.loc[items["empty_answer"], "response"] = ""
    return StudentEvaluation(name, items, summarize(items, CONFIG))


CONFIG = EvaluationConfig(metric="m", n_bootstrap=200)


def report_for(names, realized_counts, beta=1.0, empty=()):
    results = {"(untuned student)": evaluation_of("(untuned student)", [0] * N_ITEMS)}
    for name, count in zip(names, realized_counts):
        results[name] = evaluation_of(name, [1] * count + [0] * (N_ITEMS - count), empty if name == names[0] else ())
    cost = {name: {"train_seconds": 1.0, "eval_seconds": 1.0} for name in results}
    cost["total"] = {"compute_seconds": 2.0, "wall_seconds": 3.0, "processes": 1, "device": "cpu"}
    return build_report(pool(names, beta), [(n, "chosen by the user") for n in names], results, measure="accuracy",
                        baseline="(untuned student)", budget={"n_instructions": 6, "n_heldout": N_ITEMS}, cost=cost,
                        evaluation=CONFIG)


def test_permutation_p_is_exact_over_every_ordering_of_the_teachers():
    rng = np.random.default_rng(4)
    signal, realized = rng.normal(size=6), rng.normal(size=6)
    observed = spearmanr(signal, realized).statistic
    brute = np.mean([spearmanr(signal, order).statistic >= observed - 1e-12
                     for order in itertools.permutations(realized)])
    assert permutation_p(signal, realized) == pytest.approx(brute)
    assert permutation_p(range(5), range(5)) == pytest.approx(1 / 120)
    assert permutation_p(range(4), range(4)) == pytest.approx(1 / 24)
    assert math.isnan(permutation_p([1, 1, 1], [1, 2, 3]))  # a constant signal ranks nothing


def test_report_shows_signals_teacher_level_p_intervals_and_empty_answers():
    names = ["a", "b", "c", "d", "e"]
    report = report_for(names, [30, 10, 8, 6, 4], beta=0.67656, empty=(0, 1))
    text = report.to_markdown()
    # The teacher table carries the signals the ρ table ranks by.
    first = next(line for line in text.splitlines() if line.startswith("| teacher"))
    header = [cell.strip() for cell in first.split("|")]
    assert {"loss", "IFD", "RSR", "CAR (β=0.677)"} <= set(header)
    # CAR ranks the 5 teachers exactly as realized: the exact permutation p is 1/120, and the table says so.
    car = report.spearman.set_index("metric").loc["CAR"]
    assert car["rho"] == pytest.approx(1.0) and car["p_permutation"] == pytest.approx(1 / 120)
    assert "permutation p (5 teachers)" in text and "= 0.00833" in text
    assert INTERVALS in text and "Warning:** ρ over" not in text
    # The top two differ on 20 items and agree elsewhere: no bootstrap resample reaches 0, p < 1/200, not "p = 0".
    assert report.paired["p_value"] == 0 and "p < 1/200" in text
    # Empty answers: scored 0 and counted.
    assert report.teachers.set_index("teacher").loc["a", "n_empty"] == 2
    assert "An empty answer is wrong: it scores 0 (never left out). Empty answers: a: 2." in text
    fitted = report.beta["fitted"]
    assert f"Fitted β: {fitted:.3g} " in text and len(f"{fitted:.3g}") <= 5


def test_few_teachers_are_warned_about_and_a_partial_report_says_so():
    report = report_for(["a", "b", "c", "d"], [30, 25, 20, 15])
    text = report.to_markdown()
    assert "**Warning:** ρ over 4 teachers means little" in text and "once in 24" in text
    one = build_report(pool(["a", "b"]), [("a", "x")], {"a": evaluation_of("a", [1] * N_ITEMS),
                                                        "u": evaluation_of("u", [0] * N_ITEMS)},
                       measure="accuracy", baseline="u", budget={"n_instructions": 6, "n_heldout": N_ITEMS},
                       cost={"a": {"eval_seconds": 1.0}, "u": {"eval_seconds": 1.0},
                             "total": {"compute_seconds": 2.0, "wall_seconds": 2.0, "processes": 1, "device": "cpu"}},
                       evaluation=CONFIG, partial="partial: 1 of 2 teachers evaluated so far")
    assert one.paired == {} and "**partial: 1 of 2 teachers evaluated so far.**" in one.to_markdown()

"""The adaptive ranking loop: seeded rounds of whole instructions, stops, budgets, checkpoints (rule: test_stopping)."""

import numpy as np
import pandas as pd
import pytest
import tiny
from datasets import Dataset

from car_hf import rank_generators
from car_hf.ranking.adaptive import rank_adaptive

# Rows each named scorer has scored, and after how many rows it is "killed" (module-level: the scorer's hash, which
# a checkpoint records, must not change with them).
CALLS: dict[str, list[int]] = {}
FAIL_AFTER: dict[str, int] = {}


class Precomputed:
    """A fake scorer: copies the precomputed ``r``/``l`` columns to ``reward``/``base_loss`` and counts rows."""

    def __init__(self, name: str, beta: float = 1.0, fail_after: int | None = None):
        self.name, self.beta = name, beta
        CALLS[name] = []
        FAIL_AFTER[name] = fail_after

    def __call__(self, batch, indices):
        if FAIL_AFTER[self.name] is not None and len(CALLS[self.name]) >= FAIL_AFTER[self.name]:
            raise KeyboardInterrupt("killed")
        CALLS[self.name].extend(indices)
        return {"reward": list(batch["r"]), "base_loss": list(batch["l"])}


def make_data(means, n_instructions=60, noise=0.1, seed=0, copy=()) -> Dataset:
    """Long-layout rows; generator g's reward ~ means[g] + noise, loss ~ 2 + noise. ``copy=[(a, b)]``: b repeats a."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_instructions):
        values = {}
        for g, mean in enumerate(means):
            values[g] = (float(np.clip(mean + noise * rng.standard_normal(), 0.01, 1)), float(2 + 0.3 * rng.random()))
        for a, b in copy:
            values[b] = values[a]
        for g in range(len(means)):
            rows.append({"instruction_id": i, "instruction": f"question {i}", "generator": f"gen-{g}",
                         "output": f"answer {i} by {g}", "r": values[g][0], "l": values[g][1]})
    return Dataset.from_list(rows)


def per_instruction(result) -> pd.Series:
    return result.scored.to_pandas().groupby("instruction_id").size()


def test_stops_confident_when_one_generator_dominates_scoring_whole_instructions():
    ds = make_data([0.9, 0.3, 0.35, 0.3])
    scorer = Precomputed("dominates")
    result = rank_adaptive(ds, scorer, min_instructions=10, round_size=5, n_bootstrap=500)
    assert result.stopped_because == "confident"
    assert result.n_scored == 40 and result.rounds == 1 and result.n_total == 240  # decided at the first look
    assert result.table["generator"].iloc[0] == "gen-0" and result.decision.leader == "gen-0"
    assert result.history[-1]["leader"] == "gen-0" and result.history[-1]["p_top"] >= 1 - 0.05 / 3
    assert (per_instruction(result) == 4).all()  # every generator of each chosen instruction
    assert sorted(CALLS["dominates"]) == result.indices == sorted(result.indices)  # each row once, original numbers
    # the scored rows keep their input columns, gain the score columns, and match the input rows
    assert {"instruction", "output", "reward", "base_loss"} <= set(result.scored.column_names)
    assert result.scored["output"] == ds.select(result.indices)["output"]
    adaptive = result.table.attrs["car"]["adaptive"]
    assert adaptive["stopped_because"] == "confident" and adaptive["n_scored"] == 40 and adaptive["target"] == "top1"
    assert result.undecided == [] and "confident" in result.summary()


def test_ranking_target_needs_every_adjacent_pair():
    ds = make_data([0.9, 0.6, 0.3], noise=0.05)
    result = rank_adaptive(ds, Precomputed("ranking"), target="ranking", min_instructions=10, round_size=5,
                           n_bootstrap=500)
    assert result.stopped_because == "confident" and result.n_scored < result.n_total
    assert result.table["generator"].tolist() == ["gen-0", "gen-1", "gen-2"]
    assert [(p["better"], p["worse"]) for p in result.decision.pairs] == [("gen-0", "gen-1"), ("gen-1", "gen-2")]


def test_budget_is_whole_instructions_never_more_rows():
    ds = make_data([0.5, 0.5, 0.5, 0.5], noise=0.2, copy=[(0, 1), (0, 2), (0, 3)])  # never decided
    result = rank_adaptive(ds, Precomputed("budget"), max_examples=23, min_instructions=2, round_size=2,
                           n_bootstrap=200)
    assert result.stopped_because == "budget"
    assert result.n_scored == 20 and len(CALLS["budget"]) == 20  # 5 whole instructions of 4 rows fit in 23
    assert result.n_instructions == 5 and [h["n_scored"] for h in result.history] == [8, 16, 20]
    with pytest.raises(ValueError, match="whole instructions"):
        rank_adaptive(ds, Precomputed("too-small"), max_examples=3)


def test_fully_scored_result_equals_rank_generators_on_all_rows():
    ds = make_data([0.5, 0.5, 0.45], n_instructions=30, noise=0.2, copy=[(0, 1)])  # the top pair never decided
    result = rank_adaptive(ds, Precomputed("full"), min_instructions=5, round_size=7, n_bootstrap=300, seed=3)
    assert result.stopped_because == "exhausted" and result.n_scored == result.n_total == 90
    assert result.indices == list(range(90)) and result.scored["output"] == ds["output"]
    full = ds.map(Precomputed("reference"), batched=True, with_indices=True)
    expected = rank_generators(full, n_bootstrap=300, seed=3)
    pd.testing.assert_frame_equal(result.table.drop(columns="p_beats_next"), expected)
    assert result.table.attrs["car"]["adaptive"]["stopped_because"] == "exhausted"
    assert result.undecided  # equal generators stay undecided


def test_same_seed_same_order_other_seed_other_order():
    ds = make_data([0.5, 0.5], n_instructions=40, noise=0.2, copy=[(0, 1)])
    run = lambda seed, name: rank_adaptive(ds, Precomputed(name), max_examples=20, min_instructions=4, round_size=3,
                                           n_bootstrap=100, seed=seed)
    a, b, _ = run(7, "seed-a"), run(7, "seed-b"), run(8, "seed-c")
    assert CALLS["seed-a"] == CALLS["seed-b"] and a.indices == b.indices and a.history == b.history
    assert CALLS["seed-c"] != CALLS["seed-a"]
    pd.testing.assert_frame_equal(a.table, b.table)


def test_checkpoint_resumes_after_a_kill_scoring_nothing_twice(tmp_path):
    ds = make_data([0.5, 0.5, 0.5], n_instructions=30, noise=0.2, copy=[(0, 1), (0, 2)])  # never decided
    options = {"min_instructions": 4, "round_size": 4, "n_bootstrap": 100, "seed": 1, "batch_size": 6}
    with pytest.raises(KeyboardInterrupt):  # killed in round 3 (rounds score 12 rows, map batches of 6)
        rank_adaptive(ds, Precomputed("ckpt", fail_after=30), checkpoint=tmp_path / "ckpt", **options)
    first = list(CALLS["ckpt"])
    assert len(first) == 30 and len(list((tmp_path / "ckpt").glob("*/round-0000[0-9]"))) == 2
    resumed = rank_adaptive(ds, Precomputed("ckpt"), checkpoint=tmp_path / "ckpt", **options)
    second = CALLS["ckpt"]
    assert not set(second) & set(first[:24])  # the two saved rounds are not scored again
    assert len(second) == 90 - 24 and set(second) | set(first[:24]) == set(range(90))
    fresh = rank_adaptive(ds, Precomputed("no-ckpt"), **options)
    assert resumed.indices == fresh.indices and resumed.rounds == fresh.rounds
    assert [h["n_scored"] for h in resumed.history] == [h["n_scored"] for h in fresh.history]
    pd.testing.assert_frame_equal(resumed.table, fresh.table)
    # everything is there now: a third call scores nothing
    again = rank_adaptive(ds, Precomputed("ckpt"), checkpoint=tmp_path / "ckpt", **options)
    assert CALLS["ckpt"] == [] and again.n_scored == 90
    # Another order or another scorer (here: another beta) is never mixed in: it scores afresh under its own key.
    reordered = rank_adaptive(ds, Precomputed("ckpt"), checkpoint=tmp_path / "ckpt", **(options | {"seed": 2}))
    assert sorted(CALLS["ckpt"]) == list(range(90)) and reordered.n_scored == 90
    rank_adaptive(ds, Precomputed("ckpt", beta=2.0), checkpoint=tmp_path / "ckpt", **options)
    assert sorted(CALLS["ckpt"]) == list(range(90))
    assert len(list((tmp_path / "ckpt").glob("*/key.json"))) == 3


def test_checkpoint_with_a_larger_budget_continues(tmp_path):
    ds = make_data([0.5, 0.5], n_instructions=30, noise=0.2, copy=[(0, 1)])
    options = {"min_instructions": 4, "round_size": 4, "n_bootstrap": 100, "checkpoint": tmp_path / "c"}
    small = rank_adaptive(ds, Precomputed("grow"), max_examples=16, **options)
    assert small.stopped_because == "budget" and small.n_scored == 16
    larger = rank_adaptive(ds, Precomputed("grow"), max_examples=30, **options)
    assert larger.n_scored == 30 and len(CALLS["grow"]) == 14
    assert set(small.indices) < set(larger.indices)


def test_equal_generators_are_listed_undecided():
    ds = make_data([0.8, 0.8, 0.2], n_instructions=40, copy=[(0, 1)])
    for target in ("top1", "ranking"):
        result = rank_adaptive(ds, Precomputed(f"equal-{target}"), target=target, min_instructions=10,
                               round_size=10, n_bootstrap=300)
        assert result.stopped_because == "exhausted"
        pair = [p for p in result.undecided if {p["better"], p["worse"]} == {"gen-0", "gen-1"}]
        assert len(pair) == 1 and pair[0]["p_win"] == 0.5 and not pair[0]["decided"]
        assert all("gen-2" not in (p["better"], p["worse"]) for p in result.undecided)
        assert "undecided" in result.summary()


def test_with_a_real_scorer_and_the_scorer_beta(tokenizer, causal_lm):
    from car_hf import add_car

    ds = Dataset.from_list(tiny.sample_rows(n_instructions=6, generators=3))
    scorer = add_car(base_model=(causal_lm, tokenizer), reward_column="judge_preference", beta=0.5)
    result = rank_adaptive(ds, scorer, min_instructions=5, n_bootstrap=100, max_examples=14)
    assert result.n_scored == 12 and result.stopped_because == "budget"  # 4 whole instructions fit
    assert {"reward", "base_loss", "car"} <= set(result.scored.column_names)
    assert result.table.attrs["car"]["beta"] == 0.5 and result.table.attrs["car"]["base_model"] is not None
    assert (per_instruction(result) == 3).all()

"""select (every mode), CARFilter (threshold, top fraction, top-k, best-of-N, likeliest, Trainer callback), select_generator."""

import json
import math

import numpy as np
import pytest
import tiny
from datasets import Dataset

from car_hf import CARFilter, select_generator
from car_hf.training.callbacks import read_selection_summary
from car_hf.publishing.cards import CARD_BEGIN
from car_hf.core.errors import ConfigError, InputError
from car_hf.training.selection import SELECT_MODES, check_selection, select


def scored(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return Dataset.from_dict({
        "instruction_id": [i // 3 for i in range(n)],
        "generator": [f"g{i % 3}" for i in range(n)],
        "reward": rng.uniform(0.1, 1.0, n).round(4).tolist(),
        "base_loss": rng.uniform(0.5, 3.0, n).round(4).tolist(),
    })


def car_of(ds, beta=1.0):
    return np.asarray(ds["reward"]) / (1 + beta * np.asarray(ds["base_loss"]))


def test_top_k_and_top_fraction_keep_the_highest_car_rows_in_original_order():
    ds = scored()
    car = car_of(ds)
    kept = CARFilter(top_k=4).apply(ds)
    expected = sorted(np.argsort(-car)[:4].tolist())
    assert list(kept["reward"]) == [ds["reward"][i] for i in expected]
    fraction = CARFilter(top_fraction=0.25)
    assert len(fraction.apply(ds)) == 3  # ceil(0.25 * 12)
    assert fraction.summary()["cutoff"] == pytest.approx(np.sort(car)[-3])


def test_filter_with_indices_equals_apply_and_threshold_needs_no_fit():
    ds = scored()
    flt = CARFilter(top_fraction=0.5).fit(ds)
    via_filter = ds.filter(flt, batched=True, with_indices=True)
    assert list(via_filter["reward"]) == list(CARFilter(top_fraction=0.5).apply(ds)["reward"])
    threshold = ds.filter(CARFilter(threshold=0.2), batched=True)
    assert (car_of(threshold) >= 0.2).all() and len(threshold) == int((car_of(ds) >= 0.2).sum())


def test_best_of_n_per_instruction_breaks_ties_by_row_order():
    ds = Dataset.from_dict({"instruction_id": [0, 0, 0, 1, 1], "generator": list("abcab"),
                            "reward": [0.5, 0.5, 0.1, 0.3, 0.9], "base_loss": [1.0, 1.0, 1.0, 1.0, 1.0]})
    best = CARFilter(group_by="instruction_id", keep="best").apply(ds)
    assert list(best["generator"]) == ["a", "b"]  # instruction 0: a and b tie, the earlier row wins


def test_best_of_n_on_magpie_with_beta_zero_picks_the_armorm_argmax():
    path = tiny.shared_data_dir() / "magpie" / "example_instructions_5res_armorm.json"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    items = json.loads(path.read_text())
    rows = [{"uuid": item["uuid"], "instruction": item["instruction"], "response": response,
             "reward": score["score"], "base_loss": 1.0 + 0.1 * k}
            for item in items for k, (response, score) in enumerate(zip(item["responses"], item["rewards_armorm"]))]
    best = CARFilter(group_by="uuid", keep="best", beta=0.0).apply(Dataset.from_list(rows))
    assert len(best) == len(items)
    for item, row in zip(items, best):
        scores = [s["score"] for s in item["rewards_armorm"]]
        assert row["uuid"] == item["uuid"] and row["response"] == item["responses"][int(np.argmax(scores))]
    # With beta > 0 the loss can overturn a close reward race: a different choice somewhere.
    heavy = CARFilter(group_by="uuid", keep="best", beta=50.0).apply(Dataset.from_list(rows))
    assert list(heavy["response"]) != list(best["response"])


def test_nan_car_rows_are_never_kept_and_are_counted():
    ds = Dataset.from_dict({"generator": list("abc"), "reward": [0.5, None, 0.9], "base_loss": [1.0, 1.0, math.nan]})
    flt = CARFilter(top_k=3)
    assert list(flt.apply(ds)["generator"]) == ["a"]
    assert flt.summary()["rows_without_car"] == 2 and flt.summary()["generator_mix"] == {"a": 1}


def test_selection_errors_are_clear():
    ds = scored()
    with pytest.raises(ValueError, match="keeps 0 of 12 rows"):
        CARFilter(threshold=10.0).apply(ds)
    with pytest.raises(InputError, match=r"column 'judge' \(reward_column: rewards of each row\) is missing.*columns"):
        CARFilter(top_k=1, reward_column="judge").fit(ds)
    with pytest.raises(RuntimeError, match="not fitted"):
        ds.filter(CARFilter(top_k=2), batched=True, with_indices=True)
    with pytest.raises(ValueError, match="at most one"):
        CARFilter(top_k=1, threshold=0.1)
    with pytest.raises(ValueError, match="negative"):
        CARFilter(top_k=1).fit(ds.map(lambda r: {"reward": r["reward"] - 0.5}))
    with pytest.raises(InputError, match=r"column 'generator' \(by: the generator of each row\) is missing"):
        select_generator(ds.remove_columns("generator"))


def test_minmax_transform_uses_the_fitted_pool_in_filter():
    ds = scored().map(lambda r: {"reward": r["reward"] * 4 - 2})  # negative rewards, Skywork-like
    flt = CARFilter(top_fraction=0.5, reward_transform="minmax").fit(ds)
    lo, hi = min(ds["reward"]), max(ds["reward"])
    assert flt.summary()["min"] == lo and flt.summary()["max"] == hi
    car = ((np.asarray(ds["reward"]) - lo) / (hi - lo)) / (1 + np.asarray(ds["base_loss"]))
    assert len(ds.filter(flt, batched=True)) == 6
    assert flt.summary()["cutoff"] == pytest.approx(np.sort(car)[-6])


def test_select_generator_returns_the_best_car_generator_and_its_rows():
    ds = scored(30, seed=2)
    name, rows = select_generator(ds, beta=1.0, n_bootstrap=0)
    means = {g: (np.mean([r for r, x in zip(ds["reward"], ds["generator"]) if x == g]),
                 np.mean([l for l, x in zip(ds["base_loss"], ds["generator"]) if x == g])) for g in ("g0", "g1", "g2")}
    assert name == max(means, key=lambda g: means[g][0] / (1 + means[g][1]))
    assert set(rows["generator"]) == {name} and len(rows) == 10


def test_trainer_callback_logs_and_records_the_selection(tmp_path, tokenizer, caplog):
    from trl import SFTConfig, SFTTrainer

    ds = Dataset.from_list(tiny.sample_rows(4, 2)).map(
        lambda r: {"reward": r["judge_preference"], "base_loss": 1.0 + len(r["output"]) / 100})
    flt = CARFilter(top_fraction=0.5)
    train = flt.apply(ds)
    records = train.map(lambda r: {"prompt": [{"role": "user", "content": r["instruction"]}],
                                   "completion": [{"role": "assistant", "content": r["output"]}]},
                        remove_columns=train.column_names)
    config = SFTConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, bf16=False,
                       activation_checkpointing=False, report_to=[], use_cpu=True, save_strategy="steps", save_steps=1)
    trainer = SFTTrainer(model=tiny.build_causal_lm(tokenizer), args=config, train_dataset=records,
                         processing_class=tokenizer, callbacks=[flt])
    with caplog.at_level("INFO", logger="car_hf.training.callbacks"):
        trainer.train()
    assert "CAR selection (top_fraction): kept 4 of 8 rows" in caplog.text
    state = json.loads((tmp_path / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["CARSelection"]["summary"]["rows_kept"] == 4
    assert "CARFilter" not in state["stateful_callbacks"]  # one key, whatever the callback's class
    assert read_selection_summary(tmp_path / "checkpoint-1") == flt.summary()
    # TRL wrote its card with the checkpoint; the callback added car_hf's section to it, once.
    card = (tmp_path / "README.md").read_text()
    assert "# Model Card for" in card and card.count("## CAR data selection") == 1 and "Trained on 4 of 8 rows" in card
    trainer.create_model_card()  # TRL writes its card again, from scratch
    assert "## CAR data selection" not in (tmp_path / "README.md").read_text()
    for _ in range(2):
        flt.on_train_end(config, trainer.state, trainer.control)
        card = (tmp_path / "README.md").read_text()
        assert card.count("## CAR data selection") == 1 and card.count(CARD_BEGIN) == 1


# ------------------------------------------------------------------------------------------------ select()
COMMON_KEYS = {"selection", "rows_kept", "rows_total", "beta", "reward_transform", "reward_column", "generator_mix"}


@pytest.mark.parametrize("mode, value, kept", [("top_fraction", 0.25, 3), ("top_k", 5, 5), ("threshold", 0.2, None),
                                                ("best_of_n", None, 4), ("likeliest", None, 4)])
def test_select_per_example_modes_match_carfilter(mode, value, kept):
    ds = scored()
    car = car_of(ds, beta=0.5)
    chosen = select(ds, mode, value, beta=0.5)
    if mode == "threshold":
        kept = int((car >= 0.2).sum())
        assert (car_of(chosen.rows, beta=0.5) >= 0.2).all()
    if mode == "best_of_n":  # the best-CAR row of each instruction_id, in order
        expected = [int(np.argmax(car[i:i + 3])) + i for i in range(0, 12, 3)]
        assert list(chosen.rows["reward"]) == [ds["reward"][i] for i in expected]
    if mode == "likeliest":  # the lowest-loss row of each instruction_id
        expected = [int(np.argmin(ds["base_loss"][i:i + 3])) + i for i in range(0, 12, 3)]
        assert list(chosen.rows["base_loss"]) == [ds["base_loss"][i] for i in expected]
    assert len(chosen.rows) == kept and chosen.leaderboard is None
    summary = chosen.summary
    assert COMMON_KEYS <= set(summary) and summary["selection"] == mode and summary["rows_kept"] == kept
    assert summary["rows_total"] == 12 and summary["beta"] == 0.5 and sum(summary["generator_mix"].values()) == kept
    assert isinstance(chosen.callback, CARFilter) and chosen.callback.summary() == summary
    assert summary["group_by"] == ("instruction_id" if mode in ("best_of_n", "likeliest") else None)


def test_select_generator_mode_records_the_leaderboard():
    ds = scored(30, seed=2)
    name, rows = select_generator(ds, beta=1.0, n_bootstrap=0)
    chosen = select(ds, "generator", n_bootstrap=0, scoring={"base_model": "google/gemma-3-270m"})
    assert chosen.summary["generator"] == name and list(chosen.rows["reward"]) == list(rows["reward"])
    assert COMMON_KEYS <= set(chosen.summary) and chosen.summary["generator_mix"] == {name: 10}
    assert chosen.leaderboard[["generator", "rank"]].values.tolist()[0] == [name, 1]
    assert chosen.leaderboard.attrs["car"]["base_model"] == "google/gemma-3-270m"  # the scoring record
    assert chosen.summary["leaderboard"].splitlines()[2].startswith(f"| 1 | {name} |")
    assert chosen.callback.summary() == chosen.summary and type(chosen.callback).__name__ == "SelectionCallback"


def test_select_none_keeps_everything_and_records_nothing():
    ds = scored()
    chosen = select(ds, "none")
    assert chosen.rows is ds and chosen.callback is None and chosen.summary is None and chosen.leaderboard is None


@pytest.mark.parametrize("mode, value, message", [
    ("top_half", None, r"selection mode must be one of .*'top_half'"),
    ("top_fraction", None, r"'top_fraction' needs a fraction in \(0, 1\], got None"),
    ("top_fraction", 1.5, r"'top_fraction' needs a fraction in \(0, 1\], got 1.5"),
    ("top_k", 2.5, r"'top_k' needs an integer >= 1 .*got 2.5"),
    ("top_k", 0, r"'top_k' needs an integer >= 1 .*got 0"),
    ("threshold", math.nan, r"'threshold' needs a finite CAR cutoff, got nan"),
    ("generator", 0.5, r"'generator' takes no value, got 0.5"),
    ("best_of_n", 3, r"'best_of_n' takes no value, got 3"),
    ("none", 1, r"'none' takes no value, got 1"),
    ("likeliest", math.inf, r"'likeliest' needs a finite minimum reward, or no value, got inf"),
])
def test_select_refuses_a_mode_value_that_does_not_fit(mode, value, message):
    with pytest.raises(ConfigError, match=message):
        check_selection(mode, value)  # before any data is read
    with pytest.raises(ConfigError, match=message):
        select(scored(), mode, value)


def test_select_data_errors():
    ds = scored()
    with pytest.raises(InputError, match=r"'generator'.*columns \['instruction_id', 'reward', 'base_loss'\]"):
        select(ds.remove_columns("generator"), "generator", n_bootstrap=0)
    with pytest.raises(InputError, match=r"'uuid' \(group_by: .*\) is missing.*columns"):
        select(ds, "best_of_n", group_by="uuid")
    with pytest.raises(InputError, match=r"'judge' \(reward_column: .*\) is missing.*columns"):
        select(ds, "top_k", 2, reward_column="judge")
    with pytest.raises(ValueError, match="keeps 0 of 12 rows"):
        select(ds, "threshold", 10.0)
    assert set(SELECT_MODES) == {"none", "generator", "top_fraction", "top_k", "threshold", "best_of_n", "likeliest"}


# ------------------------------------------------------------------------------------------------ likeliest (GRAPE)
def grape_rows():
    """Three instructions x three generators. Instruction 0: CAR prefers a (high reward), the base model finds c
    likeliest. Instruction 1: the likeliest (b) has a low reward; c has a NaN loss. Instruction 2: no reward reaches
    0.5 (c has none); a and b tie on loss."""
    return Dataset.from_dict({
        "instruction_id": [0, 0, 0, 1, 1, 1, 2, 2, 2],
        "generator": list("abcabcabc"),
        "reward": [0.9, 0.6, 0.55, 0.8, 0.2, 0.9, 0.3, 0.4, None],
        "base_loss": [1.2, 1.5, 0.9, 1.4, 0.7, math.nan, 1.0, 1.0, 0.2],
    })


def test_likeliest_keeps_the_lowest_loss_row_where_car_best_differs():
    ds = grape_rows()
    likeliest = CARFilter(group_by="instruction_id", keep="likeliest").apply(ds)
    best = CARFilter(group_by="instruction_id", keep="best").apply(ds)
    # Instruction 0: CAR 0.9/2.2 = 0.41 (a) beats 0.55/1.9 = 0.29 (c), but c has the lowest loss (0.9).
    # Instruction 1: c's loss is NaN, never kept; b (0.7) is likeliest. Instruction 2: c has no reward, but
    # without min_reward the reward is not read: c (0.2) is kept.
    assert list(likeliest["generator"]) == ["c", "b", "c"]
    assert list(best["generator"]) == ["a", "a", "b"]
    assert list(best["generator"])[0] != list(likeliest["generator"])[0]
    no_reward = CARFilter(group_by="instruction_id", keep="likeliest").apply(ds.remove_columns("reward"))
    assert list(no_reward["generator"]) == ["c", "b", "c"]  # the reward column is not needed


def test_likeliest_with_min_reward_excludes_rows_and_drops_groups_without_a_passing_row():
    ds = grape_rows()
    flt = CARFilter(group_by="instruction_id", keep="likeliest", min_reward=0.5)
    kept = flt.apply(ds)
    # Instruction 0: c (0.55) passes and stays likeliest. Instruction 1: b (reward 0.2) is excluded, c has NaN loss:
    # a is kept. Instruction 2: no reward >= 0.5 (c's is missing): the group is dropped and counted.
    assert list(kept["generator"]) == ["c", "a"] and list(kept["instruction_id"]) == [0, 1]
    summary = flt.summary()
    assert summary["selection"] == "likeliest" and summary["min_reward"] == 0.5
    assert (summary["rows_kept"], summary["rows_total"], summary["groups_total"], summary["groups_dropped"]) == (2, 9, 3, 1)
    assert summary["rows_without_loss"] == 1 and summary["rows_below_min_reward"] == 4  # b1, a2, b2 and c2 (no reward)
    strict = CARFilter(group_by="instruction_id", keep="likeliest", min_reward=0.56).apply(ds)
    assert list(strict["generator"]) == ["a", "a"]  # the likeliest c (reward 0.55) excluded: a (loss 1.2) beats b (1.5)


def test_likeliest_ties_by_row_order_and_select_passes_the_threshold():
    ds = grape_rows()
    tie = CARFilter(group_by="instruction_id", keep="likeliest", min_reward=0.3).apply(ds)
    assert list(tie["generator"]) == ["c", "a", "a"]  # instruction 2: a and b tie on loss 1.0, the earlier row wins
    chosen = select(ds, "likeliest", 0.5)
    assert list(chosen.rows["generator"]) == ["c", "a"] and chosen.summary["groups_dropped"] == 1
    assert chosen.callback.summary() == chosen.summary and chosen.summary["selection"] == "likeliest"
    with pytest.raises(ValueError, match=r"likeliest selection keeps 0 of 9 rows.*lower min_reward"):
        select(ds, "likeliest", 5.0)
    with pytest.raises(ValueError, match="takes no CAR cutoff"):
        CARFilter(group_by="instruction_id", keep="likeliest", top_k=2)
    with pytest.raises(ValueError, match="min_reward needs keep='likeliest'"):
        CARFilter(group_by="instruction_id", keep="best", min_reward=0.5)
    with pytest.raises(RuntimeError, match="needs row indices"):
        ds.filter(CARFilter(group_by="instruction_id", keep="likeliest"), batched=True)

"""Reward functions in TRL's reward_funcs convention: what they receive, what they return, how they hash."""

import math

import pytest
from datasets import Dataset

import tiny
from car_hf import InputError, add_car, add_reward
from car_hf.core.cache import scoring_key
from car_hf.scoring.reward import RewardFunctionScorer

SEEN: list[dict] = []


def exact(prompts, completions, answer, **columns):
    """1.0 when the completion states the reference answer."""
    SEEN.append({"prompts": prompts, "completions": completions, "columns": sorted(columns)})
    return [1.0 if str(a) in c else 0.0 for c, a in zip(completions, answer)]


def conversational_length(prompts, completions, **columns):
    return [len(c[0]["content"]) / 100 for c in completions]


def test_a_reward_function_gets_prompts_completions_and_the_other_columns():
    SEEN.clear()
    ds = Dataset.from_list([{"instruction": "2+2?", "output": "It is 4.", "answer": 4, "level": "easy"},
                            {"instruction": "3+3?", "output": "Seven.", "answer": 6, "level": "easy"},
                            {"instruction": "1+1?", "output": "  ", "answer": 2, "level": "easy"}])
    scored = ds.map(add_reward(exact), batched=True)
    assert scored["reward"][:2] == [1.0, 0.0] and math.isnan(scored["reward"][2])  # empty: NaN, not called
    assert SEEN == [{"prompts": ["2+2?", "3+3?"], "completions": ["It is 4.", "Seven."],
                     "columns": ["level"]}]
    assert scored.column_names == ["instruction", "output", "answer", "level", "reward"]


def test_conversational_rows_are_passed_as_messages_and_car_uses_the_function(tokenizer, causal_lm):
    rows = [{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello there."}]}]
    scored = Dataset.from_list(rows).map(add_car(base_model=(causal_lm, tokenizer),
                                                 reward_model=conversational_length), batched=True)
    assert scored["reward"][0] == pytest.approx(0.12)
    assert scored["car"][0] == pytest.approx(0.12 / (1 + scored["base_loss"][0]))
    record = add_car(base_model=(causal_lm, tokenizer), reward_model=conversational_length).scoring_config()
    assert record["reward_model"] == "function:test_reward_functions.conversational_length"


def test_bad_returns_name_the_function_and_the_row():
    ds = Dataset.from_list(tiny.sample_rows(1, 2))
    with pytest.raises(InputError, match="returned 1 values for 2 rows"):
        ds.map(add_reward(lambda prompts, completions, **kw: [1.0]), batched=True)
    with pytest.raises(ValueError, match=r"row 1, column 'reward function .*': a reward must be a number"):
        ds.map(add_reward(lambda prompts, completions, **kw: [1.0, "high"]), batched=True, with_indices=True)


def test_the_cache_key_follows_the_function_source():
    ds = Dataset.from_list(tiny.sample_rows(1, 2))
    key = scoring_key(RewardFunctionScorer(exact), ds)
    assert key == scoring_key(RewardFunctionScorer(exact), ds)
    assert key != scoring_key(RewardFunctionScorer(conversational_length), ds)
    assert key["scorer"]["function"] == "test_reward_functions.exact"


def test_a_reward_function_by_import_path(tmp_path):
    from car_hf import ConfigError

    ds = Dataset.from_list([{"instruction": "2+2?", "output": "Answer: 4", "answer": "4"},
                            {"instruction": "3+3?", "output": "5", "answer": "6"}])
    scorer = add_reward("car_hf.generation.tasks:AnswerReward")  # a class: instantiated with no arguments
    assert ds.map(scorer, batched=True)["reward"][:] == [1.0, 0.0]
    assert scorer.describe()["id"] == "function:car_hf.generation.tasks.AnswerReward"
    with pytest.raises(ConfigError, match="cannot be imported"):
        add_reward("car_hf.generation.tasks:NoSuchReward")

"""add_car (configured and bare), add_reward: values, exactness, policies, errors."""

import math
import types

import pytest
import torch
from datasets import Dataset

import tiny
from car_hf import InputError, add_car, add_reward, rank_generators
from car_hf.core import config as config_module
from car_hf.scoring import scorer as scoring_module
from car_hf.core import formats
from car_hf.scoring.reward import _pooled_scores


def test_add_car_with_a_reward_column_computes_per_example_car(tokenizer, causal_lm):
    ds = Dataset.from_list(tiny.sample_rows(3, 2))
    scored = ds.map(add_car(base_model=(causal_lm, tokenizer), reward_column="judge_preference", beta=0.5),
                    batched=True)
    for row in scored:
        assert row["reward"] == row["judge_preference"]
        assert row["car"] == pytest.approx(row["reward"] / (1 + 0.5 * row["base_loss"]))
    assert set(ds.column_names) < set(scored.column_names) and len(scored) == len(ds)


def test_add_car_bare_uses_the_defaults_and_an_existing_reward_column(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(config_module, "DEFAULT_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setattr(scoring_module, "_DEFAULT", [])
    ds = Dataset.from_list(tiny.sample_rows(2, 2)).map(lambda r: {"reward": r["judge_preference"]})
    bare = ds.map(add_car, batched=True)
    configured = ds.map(add_car(base_model=str(tiny_model_dir)), batched=True)
    assert list(bare["car"]) == pytest.approx(list(configured["car"]))
    assert list(bare["car"]) == pytest.approx([r / (1 + l) for r, l in zip(bare["reward"], bare["base_loss"])])
    with pytest.raises(TypeError, match="keyword arguments"):
        add_car("google/gemma-3-270m")


def test_add_car_with_a_reward_model_and_sigmoid(tokenizer, causal_lm, reward_model):
    ds = Dataset.from_list(tiny.sample_rows(2, 2))
    scorer = add_car(base_model=(causal_lm, tokenizer), reward_model=(reward_model, tokenizer),
                     reward_transform="sigmoid")
    scored = ds.map(scorer, batched=True)
    assert "reward_truncated" in scored.column_names
    for row in scored:
        assert row["car"] == pytest.approx(1 / (1 + math.exp(-row["reward"])) / (1 + row["base_loss"]))
    assert scorer.scoring_config()["reward_transform"] == "sigmoid"


def test_negative_reward_raises_naming_row_and_column(tokenizer, causal_lm):
    ds = Dataset.from_list(tiny.sample_rows(2, 2)).map(lambda r, i: {"skywork": -1.0 if i == 2 else 0.5},
                                                       with_indices=True)
    with pytest.raises(InputError, match=r"column 'skywork' has 1 negative reward\(s\) \(rows \[2\]\).*sigmoid"):
        ds.map(add_car(base_model=(causal_lm, tokenizer), reward_column="skywork"), batched=True, with_indices=True)
    with pytest.raises(ValueError, match="rank_generators"):
        add_car(base_model=(causal_lm, tokenizer), reward_column="skywork", reward_transform="minmax")


def test_missing_and_infinite_rewards(tokenizer, causal_lm):
    rows = tiny.sample_rows(2, 2)
    rows[1]["judge_preference"] = None
    scored = Dataset.from_list(rows).map(add_car(base_model=(causal_lm, tokenizer), reward_column="judge_preference"),
                                         batched=True)
    assert math.isnan(scored[1]["reward"]) and math.isnan(scored[1]["car"]) and len(scored) == 4
    assert rank_generators(scored, n_bootstrap=0)["n_scored"].sum() == 3
    rows[1]["judge_preference"] = math.inf
    with pytest.raises(ValueError, match=r"row 1, column 'judge_preference': the reward is infinite"):
        Dataset.from_list(rows).map(add_car(base_model=(causal_lm, tokenizer), reward_column="judge_preference"),
                                    batched=True, with_indices=True)
    with pytest.raises(InputError, match=r"column 'judge' \(reward_column: rewards of each row\) is missing"):
        Dataset.from_list(rows).map(add_car(base_model=(causal_lm, tokenizer), reward_column="judge"), batched=True)


@pytest.mark.parametrize("batch_tokens", [1, 100_000])
def test_reward_batched_equals_unbatched(batch_tokens, tokenizer, reward_model):
    ds = Dataset.from_list(tiny.sample_rows(3, 3))
    scored = ds.map(add_reward((reward_model, tokenizer), batch_tokens=batch_tokens), batched=True, batch_size=5)
    layout = formats.detect_layout(ds.column_names)
    for i in range(len(ds)):
        rendered = formats.render(formats.row_example(ds[i : i + 1], 0, layout, i), tokenizer, max_length=2048)
        with torch.no_grad():
            expected = reward_model(input_ids=torch.tensor([rendered.ids])).logits[0, 0].item()
        assert scored[i]["reward"] == pytest.approx(expected, abs=1e-5)


def test_reward_heads_custom_score_and_multi_output():
    custom = types.SimpleNamespace(score=torch.tensor([[0.25], [0.75]]), logits=torch.zeros(2, 19))
    assert _pooled_scores(custom).tolist() == [0.25, 0.75]  # ArmoRM-style output: .score wins
    with pytest.raises(ValueError, match="3 outputs"):
        _pooled_scores(types.SimpleNamespace(logits=torch.zeros(2, 3)))


def test_reward_empty_response_is_nan_and_truncation_flagged(tokenizer, reward_model):
    ds = Dataset.from_list([{"instruction": "Hi", "output": ""}, {"instruction": "Hi", "output": "word " * 80}])
    scored = ds.map(add_reward((reward_model, tokenizer), max_length=32), batched=True)
    assert math.isnan(scored[0]["reward"]) and scored["reward_truncated"] == [False, True]
    with pytest.raises(InputError, match="row 0, column 'output': the response is empty"):
        ds.map(add_reward((reward_model, tokenizer), empty_response="raise"), batched=True, with_indices=True)


@pytest.mark.parametrize("make", ["add_car", "add_car_reward_model", "add_base_loss", "add_reward", "reward_function"])
def test_a_0_row_dataset_gets_the_score_columns_with_their_types(make, tokenizer, causal_lm, reward_model):
    from car_hf import add_base_loss
    from car_hf.core.data import map_scores

    def answer_length(prompts, completions, **columns):
        return [float(len(c)) for c in completions]

    scorer = {"add_car": lambda: add_car(base_model=(causal_lm, tokenizer), reward_column="judge_preference"),
              "add_car_reward_model": lambda: add_car(base_model=(causal_lm, tokenizer), ifd=True,
                                                      reward_model=(reward_model, tokenizer), reward_transform="sigmoid"),
              "add_base_loss": lambda: add_base_loss((causal_lm, tokenizer), ifd=True),
              "add_reward": lambda: add_reward((reward_model, tokenizer)),
              "reward_function": lambda: add_reward(answer_length)}[make]()
    ds = Dataset.from_list(tiny.sample_rows(2, 2))
    scored = map_scores(ds, scorer)
    empty = map_scores(ds.select([]), scorer)
    assert len(empty) == 0 and empty.features == scored.features  # the same columns, types and order
    assert set(scored.column_names) - set(ds.column_names) <= set(empty.column_names)
    if make.startswith("add_car"):  # ranked downstream: no KeyError, a clear word instead
        with pytest.raises(InputError, match="the data has no rows: there is nothing to rank"):
            rank_generators(empty)

"""Input checks that run before any model loads: sources, columns, rewards, the wide zoo layout."""

import json

import pytest
from datasets import Dataset

import tiny
from car_hf import CARConfig, ConfigError, InputError
from car_hf.core.inputs import (check_data_source, check_model_source, check_reward_column, check_scoring_inputs,
                           load_job_data, looks_local)


def test_sources(tmp_path, tiny_model_dir):
    assert looks_local("data/train.jsonl") and looks_local("./x") and not looks_local("org/name")
    with pytest.raises(ConfigError, match="no such file or folder 'nope.jsonl'"):
        check_data_source("nope.jsonl")
    with pytest.raises(ConfigError, match="dataset_name is required"):
        check_data_source(None)
    assert check_data_source("tatsu-lab/alpaca_eval") == "tatsu-lab/alpaca_eval"  # a Hub id: checked when loaded
    with pytest.raises(ConfigError, match="base_model: no such model folder"):
        check_model_source(str(tmp_path / "missing"), "base_model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        check_model_source(str(tmp_path / "empty"), "base_model")
    assert check_model_source(str(tiny_model_dir), "base_model") == str(tiny_model_dir)


def test_scoring_inputs_name_the_column_and_the_option():
    ds = Dataset.from_list(tiny.sample_rows(2, 2))
    assert check_scoring_inputs(ds, CARConfig(reward_column="judge_preference")).response == "output"
    with pytest.raises(InputError, match=r"column 'reward' \(reward \(no reward_model or reward_column set\)"):
        check_scoring_inputs(ds, CARConfig())
    assert check_reward_column(ds, CARConfig(reward_model="org/rm")) == "reward"  # the model writes it
    with pytest.raises(InputError, match="column 'answer' .*missing"):
        check_scoring_inputs(ds, CARConfig(reward_column="judge_preference", response_column="answer"))
    text = ds.map(lambda r: {"stars": "five"})
    with pytest.raises(InputError, match=r"row 0, column 'stars': a reward must be a number, got 'five' \(4 rows"):
        check_scoring_inputs(text, CARConfig(reward_column="stars"))
    negative = ds.map(lambda r, i: {"rm": -1.0 if i == 1 else 0.5}, with_indices=True)
    with pytest.raises(InputError, match=r"'rm' has 1 negative reward\(s\) \(rows \[1\]\).*reward_transform to sigmoid"):
        check_scoring_inputs(negative, CARConfig(reward_column="rm"))
    check_scoring_inputs(negative, CARConfig(reward_column="rm", reward_transform="sigmoid"))


def test_load_job_data_long_and_wide(tmp_path):
    rows = tiny.sample_rows(3, 2)
    path = tmp_path / "zoo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_job_data(str(path), generators=["gen-1"], max_instructions=2)
    assert ds["generator"][:] == ["gen-1", "gen-1"] and ds["instruction_id"][:] == [0, 1]
    with pytest.raises(InputError, match=r"generator\(s\) \['gen-9'\] not in column"):
        load_job_data(str(path), generators=["gen-9"])
    wide = tmp_path / "wide.jsonl"
    wide.write_text(json.dumps({"uuid": "u1", "instruction": "Hi?", "gen-a": {"content": "Hello.", "rm": 0.5},
                                "gen-b": {"content": "Yo.", "rm": 0.9}}) + "\n")
    long = load_job_data(str(wide), layout="wide", zoo_reward_key="rm")
    assert sorted(zip(long["generator"], long["reward"])) == [("gen-a", 0.5), ("gen-b", 0.9)]
    with pytest.raises(ConfigError, match="dataset_layout must be 'long' or 'wide'"):
        load_job_data(str(path), layout="tall")
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(InputError, match="has no rows"):
        load_job_data(str(empty), max_instructions=0)

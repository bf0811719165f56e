"""What recipes/sft.py does around training: arguments, scoring config, records, eval split."""

import types

import pytest
from datasets import Dataset

from car_hf import CARConfig, ConfigError, InputError
from car_hf.config import PLAIN_TEMPLATE
from car_hf.formats import detect_layout
from car_hf.training import SFTScriptArguments, split_eval, to_records, training_config


def test_multi_turn_data_without_a_chat_template_uses_the_plain_template(plain_tokenizer):
    messages = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Tea?"}, {"role": "assistant", "content": "Brew it."}]
    ds = Dataset.from_list([{"messages": messages}])
    records = to_records(ds, plain_tokenizer, detect_layout(ds.column_names), PLAIN_TEMPLATE)
    assert records[0] == {"prompt": "### Instruction:\nHi?\n\n### Response:\nHello.\n\n### Instruction:\nTea?\n\n"
                                    "### Response:\n", "completion": "Brew it."}
    bad = Dataset.from_list([{"instruction": "Hi?", "output": None}, {"instruction": "Yo?", "output": "x"}])
    with pytest.raises(InputError, match=r"training records: row 0, column 'output'"):
        to_records(bad, plain_tokenizer, detect_layout(bad.column_names), PLAIN_TEMPLATE)


def test_scoring_follows_the_training_run():
    training_args = types.SimpleNamespace(max_length=256, device="cpu", trust_remote_code=False)
    model_args = types.SimpleNamespace(model_name_or_path="runs/tiny-model", model_revision="main", dtype="float32")
    config = training_config(CARConfig(reward_column="judge_preference", score_max_length=2048), training_args,
                             model_args)
    assert (config.base_model, config.score_max_length, config.score_dtype, config.base_model_revision) == \
        ("runs/tiny-model", 256, "float32", None)
    assert config.reward_column == "judge_preference"


def test_eval_split_and_arguments():
    records = Dataset.from_dict({"prompt": list("abcdefghij"), "completion": list("0123456789")})
    train, held_out = split_eval(records, 0.2, seed=0)
    assert (len(train), len(held_out)) == (8, 2) and not set(train["prompt"]) & set(held_out["prompt"])
    assert split_eval(records, 3, seed=0)[1].num_rows == 3 and split_eval(records, None, seed=0)[1] is None
    with pytest.raises(InputError, match="no training rows left"):
        split_eval(records.select([0]), 0.99, seed=0)
    with pytest.raises(ConfigError, match="eval_size must be > 0"):
        SFTScriptArguments(eval_size=0)

"""What recipes/sft.py does around training: arguments, scoring config, records, eval split."""

import types

import pytest
import torch
from datasets import Dataset

from car_hf import CARConfig, ConfigError, InputError
from car_hf.core.config import PLAIN_TEMPLATE
from car_hf.core.formats import detect_layout
from car_hf.training.sft import SFTScriptArguments, merge_adapter, merge_lora, split_eval, to_records, training_config


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


def test_a_merged_lora_adapter_computes_what_the_adapted_model_does(tmp_path, tiny_model_dir, tokenizer):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    # init_lora_weights=False: B is random, not 0, so the adapter changes the logits and the merge must keep that.
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                             LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "README.md").write_text("the card")
    ids = tokenizer(["The quick brown fox jumps over the lazy dog."], return_tensors="pt").input_ids
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                             tmp_path / "adapter").eval()(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(ids).logits
    assert (expected - base).abs().max() > 1e-3
    # recipes/sft.py's merge (the run's base model and tokenizer, the card copied) and load_student's (the base
    # model the adapter names, its tokenizer) are the same merge.
    model_args = types.SimpleNamespace(model_name_or_path=str(tiny_model_dir), model_revision=None, dtype="float32")
    merged = merge_adapter(tmp_path / "adapter", model_args, types.SimpleNamespace(trust_remote_code=False),
                           tokenizer)
    assert merged == tmp_path / "adapter" / "merged" and (merged / "README.md").read_text() == "the card"
    assert merge_lora(tmp_path / "adapter", tmp_path / "again") == tmp_path / "again"
    for folder in (merged, tmp_path / "again"):
        assert (folder / "tokenizer_config.json").is_file() and not (folder / "adapter_config.json").exists()
        with torch.no_grad():
            logits = AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "again"]  # no temporary folder left

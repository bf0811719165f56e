"""car_hf.evaluation.student: a student's answers scored by a metric, a reward function and a pairwise LLM judge (a loopback
OpenAI-compatible server), with bootstrap intervals, the length-controlled win rate and paired tests."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from openai_server import OpenAIServer

from car_hf import ConfigError, InputError
from car_hf.evaluation.student import (
    EvaluationConfig,
    JudgeConfig,
    bootstrap_interval,
    evaluate_student,
    length_controlled_win_rate,
    metric_scores,
    paired_comparison,
    parse_verdict,
)
from car_hf.generation.tasks import ANSWER_MATCH, make_tasks
from car_hf.generation.teacher import TeacherConfig

GENERATION = TeacherConfig(max_new_tokens=6)


# ------------------------------------------------------------------------------------------------ statistics
def test_bootstrap_interval_brackets_the_mean_and_skips_missing_values():
    result = bootstrap_interval([1, 0, 1, 1, math.nan, 0, 1, 1], n_bootstrap=2000, seed=3)
    assert result["mean"] == pytest.approx(5 / 7) and result["n"] == 7
    assert 0.2 < result["low"] < 5 / 7 < result["high"] <= 1.0
    assert bootstrap_interval([math.nan])["n"] == 0 and math.isnan(bootstrap_interval([])["mean"])


def test_paired_comparison_pairs_items():
    a, b = np.array([1, 1, 0, 1, 1, 1, 1, 1] * 5, float), np.array([0, 1, 0, 1, 0, 1, 1, 1] * 5, float)
    result = paired_comparison(a, b, n_bootstrap=2000)
    assert result["difference"] == pytest.approx(0.25) and result["n"] == 40
    assert 0 < result["low"] < 0.25 < result["high"] and result["p_value"] < 0.01
    assert paired_comparison(a, a, n_bootstrap=500)["p_value"] == 1.0
    with pytest.raises(InputError, match="same items: 2 vs 3"):
        paired_comparison([1, 0], [1, 0, 1])


def test_length_controlled_win_rate_removes_a_length_preference():
    rng = np.random.default_rng(0)
    difference = rng.normal(0, 100, 400)
    # A judge that prefers whatever is longer: the raw win rate follows the length gap, the LC one stays near 0.5.
    longer = rng.normal(60, 100, 400)
    wins = (longer > 0).astype(float)
    assert wins.mean() > 0.65
    assert length_controlled_win_rate(wins, longer) == pytest.approx(0.5, abs=0.12)
    # No length effect: LC equals the raw rate.
    flat = (rng.random(400) < 0.3).astype(float)
    assert length_controlled_win_rate(flat, difference) == pytest.approx(flat.mean(), abs=0.03)
    assert length_controlled_win_rate(flat, np.zeros(400)) == pytest.approx(flat.mean(), abs=1e-4)  # ridge: a hair


# ------------------------------------------------------------------------------------------------ scorers
def test_metric_scores_use_the_extractor_and_refuse_non_numbers(tmp_path, hf_cache):
    assert metric_scores(["It is 12.", "so 13", ""], ["12", "12", "12"]) == [1.0, 0.0, 0.0]
    assert metric_scores(["It is 12."], ["It is 12."], extractor=None) == [1.0]
    assert metric_scores(["ANSWER: x"], ["answer: x"], extractor="builtins:str") == [1.0]
    with pytest.raises(ConfigError, match="extractor 'nowhere:thing' cannot be imported"):
        metric_scores(["1"], ["1"], extractor="nowhere:thing")


def test_parse_verdict():
    assert [parse_verdict(t) for t in ["a", " B.", "(a) is better", "Output (b)", "both", ""]] == \
        ["a", "b", "a", "b", None, None]


# ------------------------------------------------------------------------------------------------ evaluate_student
@pytest.fixture(scope="module")
def heldout():
    return make_tasks(12, seed=5)


def test_evaluate_student_with_a_metric_and_a_reward_function(tiny_model_dir, heldout, hf_cache):
    config = EvaluationConfig(generation=GENERATION, metric=ANSWER_MATCH, reward="car_hf.generation.tasks:AnswerReward",
                              n_bootstrap=200)
    result = evaluate_student(str(tiny_model_dir), heldout, config, name="tiny")
    items = result.items
    assert len(items) == 12 and {"response", "response_truncated", "correct", "reward", "answer"} <= set(items.columns)
    assert result.summary["accuracy"]["n"] == 12 and result.summary["accuracy"]["mean"] == items["correct"].mean()
    # The reward function is the same check as the metric: equal on every item (an empty answer is 0 under both).
    assert items["reward"].tolist() == items["correct"].tolist()
    assert result.scores("accuracy").tolist() == items["correct"].tolist()
    with pytest.raises(KeyError, match="measure 'win_rate' was not evaluated"):
        result.scores("win_rate")


@pytest.fixture
def hub_online(monkeypatch):
    """The judge's requests go through huggingface_hub, whose offline mode blocks even a loopback server."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def judge_server(pick):
    """A judge answering from the two outputs shown: ``pick(a, b)`` returns "a" or "b"."""

    def respond(messages, max_tokens):
        found = re.search(r"## Output \(a\)\n(.*)\n\n## Output \(b\)\n(.*)\n\nWhich", messages[-1]["content"], re.S)
        verdict = pick(found.group(1), found.group(2))
        return verdict, "stop", 1

    return OpenAIServer(respond, lifetime=60)


def test_pairwise_judge_win_rate_counters_position_and_reads_the_verdicts(tiny_model_dir, heldout, hub_online):
    heldout = heldout.map(lambda r, i: {"reference": "R" * (1 + i % 7)}, with_indices=True)
    # A judge that always prefers the reference: win rate 0, whatever the order shown.
    with judge_server(lambda a, b: "a" if set(a) == {"R"} else "b") as server:
        judge = JudgeConfig(base_url=server.base_url, model="judge", max_retries=0)
        result = evaluate_student(str(tiny_model_dir), heldout,
                                  EvaluationConfig(generation=GENERATION, judge=judge, n_bootstrap=100))
        assert len(server.requests) == 12 and server.requests[0]["body"]["temperature"] == 0
    assert result.items["judge_win"].tolist() == [0.0] * 12 and result.summary["win_rate"]["mean"] == 0.0
    assert math.isnan(result.summary["lc_win_rate"]["mean"])
    assert result.summary["lc_win_rate"]["lc_note"] == "the judge gave the same verdict on every item"
    # A judge that always says "a": the student wins exactly where it was shown first (seeded order).
    with judge_server(lambda a, b: "a") as server:
        config = EvaluationConfig(generation=GENERATION, judge=JudgeConfig(server.base_url, "judge"), seed=7)
        result = evaluate_student(str(tiny_model_dir), heldout, config)
    first = np.random.default_rng(7).integers(0, 2, 12).astype(float)
    assert result.items["judge_win"].tolist() == first.tolist()
    lc = result.summary["lc_win_rate"]
    assert lc["n"] == 12 and 0 < lc["mean"] < 1 and lc["low"] <= lc["mean"] <= lc["high"]
    assert result.items["length_difference"].tolist() == \
        [len(s) - len(r) for s, r in zip(result.items["response"], result.items["reference"])]


def test_unreadable_verdicts_are_missing_not_losses(tiny_model_dir, heldout, hub_online):
    heldout = heldout.select(range(4)).add_column("reference", ["x"] * 4)
    with judge_server(lambda a, b: "I cannot decide") as server:
        config = EvaluationConfig(generation=GENERATION, judge=JudgeConfig(server.base_url, "judge"))
        result = evaluate_student(str(tiny_model_dir), heldout, config)
    assert result.items["judge_win"].isna().all() and result.summary["win_rate"]["n"] == 0


def test_bad_evaluation_input_is_refused_before_generation(heldout):
    model = "no/such-model-is-loaded"
    with pytest.raises(InputError, match="held-out set is empty"):
        evaluate_student(model, heldout.select([]), EvaluationConfig(metric=ANSWER_MATCH))
    with pytest.raises(ConfigError, match="no scorer"):
        evaluate_student(model, heldout, EvaluationConfig())
    with pytest.raises(InputError, match="no column 'reference' \\(the references the judge needs\\)"):
        evaluate_student(model, heldout, EvaluationConfig(judge=JudgeConfig("http://127.0.0.1:9/v1", "judge")))
    with pytest.raises(InputError, match="no column 'gold' \\(the references the metric needs\\)"):
        evaluate_student(model, heldout, EvaluationConfig(metric=ANSWER_MATCH, answer_column="gold"))


def test_a_lora_adapter_is_evaluated_on_its_base(tmp_path, tiny_model_dir, heldout, hf_cache):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, lora_alpha=8))
    model.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "adapter")
    config = EvaluationConfig(generation=GENERATION, metric=ANSWER_MATCH, n_bootstrap=0)
    adapter = evaluate_student(str(tmp_path / "adapter"), heldout, config)
    base = evaluate_student(str(tiny_model_dir), heldout, config)
    # A fresh LoRA adapter (B = 0) changes nothing: the merged student answers exactly like its base.
    assert adapter.items["response"].tolist() == base.items["response"].tolist()
    assert adapter.name == str(tmp_path / "adapter") and (tmp_path / "adapter" / "merged" / "config.json").is_file()


def test_evaluation_identity_changes_with_the_scorers():
    one = EvaluationConfig(metric=ANSWER_MATCH).identity()
    assert one != EvaluationConfig(metric=ANSWER_MATCH, metric_key="f1").identity()
    assert one["extractor"]["name"] == "car_hf.generation.tasks.extract_answer" and len(one["extractor"]["source"]) == 16


def test_evaluate_recipe_compares_the_student_with_its_baseline(tmp_path, tiny_model_dir, heldout, hf_cache):
    path = Path(__file__).resolve().parents[1] / "recipes" / "evaluate_student.py"
    spec = importlib.util.spec_from_file_location("recipes_evaluate_student", path)
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe
    spec.loader.exec_module(recipe)
    heldout.to_json(tmp_path / "heldout.jsonl")
    args = recipe.make_parser().parse_args_and_config([
        "--model_name_or_path", str(tiny_model_dir), "--baseline_model", str(tiny_model_dir), "--dataset_name",
        str(tmp_path / "heldout.jsonl"), "--metric", "answer_match", "--max_new_tokens", "4", "--n_bootstrap", "50",
        "--max_items", "5", "--output_dir", str(tmp_path / "out")])
    summary = recipe.main(*args)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_items"] == 5
    # The same model as its own baseline: the same answers, a paired difference of exactly 0.
    assert summary["student_vs_baseline"]["difference"] == 0.0 and summary["student_vs_baseline"]["n"] == 5
    assert summary["summary"]["accuracy"] == summary["baseline_summary"]["accuracy"]
    assert len(pd.read_csv(tmp_path / "out" / "items.csv")) == 10
    with pytest.raises(ConfigError, match="a judge needs both judge_base_url and judge_model"):
        recipe.main(*recipe.make_parser().parse_args_and_config([
            "--model_name_or_path", "m", "--dataset_name", str(tmp_path / "heldout.jsonl"), "--judge_model", "j"]))


# ---------------------------------------------------------------------------------------- issue 19's pilot notes
def test_an_empty_answer_scores_zero_and_is_counted_not_left_out(tiny_model_dir, heldout, hf_cache, monkeypatch):
    from car_hf.generation.engines import Generation
    from car_hf.generation.generate import ResponseGenerator

    original = ResponseGenerator.generate

    def every_other_empty(self, prompts, rows=None, rank=None, column="prompt"):
        made = original(self, prompts, rows, rank, column)
        return [Generation("", "stop", 1) if row % 2 else g for g, row in zip(made, rows)]

    monkeypatch.setattr(ResponseGenerator, "generate", every_other_empty)
    config = EvaluationConfig(generation=GENERATION, metric=ANSWER_MATCH, reward="car_hf.generation.tasks:AnswerReward",
                              n_bootstrap=0)
    result = evaluate_student(str(tiny_model_dir), heldout, config)
    items = result.items
    assert items["empty_answer"].tolist() == [i % 2 == 1 for i in range(12)]
    assert (items.loc[items["empty_answer"], ["correct", "reward"]] == 0.0).all().all()
    for measure in ("accuracy", "reward"):  # every item counts: a student answering nothing is not spared
        assert result.summary[measure]["n"] == 12 and result.summary[measure]["n_empty"] == 6
    assert result.summary["reward"]["mean"] == items["reward"].sum() / 12


def test_evaluation_identity_follows_the_reward_functions_source(tmp_path, monkeypatch):
    import importlib

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_grader.py").write_text("def grade(prompts, completions, **columns):\n"
                                           "    return [1.0 for _ in completions]\n")
    import my_grader

    before = EvaluationConfig(reward="my_grader:grade").identity()
    (tmp_path / "my_grader.py").write_text("def grade(prompts, completions, **columns):\n"
                                           "    return [0.0 for _ in completions]\n")
    importlib.reload(my_grader)
    after = EvaluationConfig(reward="my_grader:grade").identity()
    assert before["reward"]["function"] == after["reward"]["function"] == "my_grader.grade"
    assert before != after and before["reward"]["source"] != after["reward"]["source"]


def test_answers_come_in_length_sorted_batches_with_progress_and_in_order(tiny_model_dir, heldout, hf_cache,
                                                                          monkeypatch, capsys):
    from car_hf.generation.generate import ResponseGenerator

    calls = []
    original = ResponseGenerator.__call__

    def recording(self, batch, *args):
        calls.append([len(q) for q in batch["instruction"]])
        return original(self, batch, *args)

    monkeypatch.setattr(ResponseGenerator, "__call__", recording)
    config = EvaluationConfig(generation=GENERATION, metric=ANSWER_MATCH, n_bootstrap=0, batch_rows=5)
    batched = evaluate_student(str(tiny_model_dir), heldout, config, name="tiny")
    assert [len(c) for c in calls] == [5, 5, 2]
    flat = [n for c in calls for n in c]
    assert flat == sorted(len(q) for q in heldout["instruction"])  # shortest prompts first, across batches
    progress = capsys.readouterr().err
    assert "answers of tiny: " in progress and all(f"{n}/12" in progress for n in (5, 10, 12))  # a step per batch
    calls.clear()
    whole = evaluate_student(str(tiny_model_dir), heldout, EvaluationConfig(generation=GENERATION, metric=ANSWER_MATCH,
                                                                            n_bootstrap=0, batch_rows=100))
    assert len(calls) == 1
    assert batched.items["instruction"].tolist() == list(heldout["instruction"])  # the held-out order is kept
    assert batched.items["response"].tolist() == whole.items["response"].tolist()


def test_a_lora_student_is_merged_in_the_training_dtype(tmp_path, causal_lm, tokenizer):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from car_hf.evaluation.student import load_student

    base = AutoModelForCausalLM.from_config(causal_lm.config)
    base.load_state_dict(causal_lm.state_dict())
    base.to(torch.bfloat16).save_pretrained(tmp_path / "base")  # a bf16 checkpoint, as most Hub bases are
    tokenizer.save_pretrained(tmp_path / "base")
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")  # tuned in fp32
    expected = lora.merge_and_unload().state_dict()["model.layers.0.self_attn.q_proj.weight"]

    merged = AutoModelForCausalLM.from_pretrained(load_student(str(tmp_path / "adapter"), dtype="float32"))
    weight = merged.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    assert weight.dtype == torch.float32 and torch.equal(weight, expected)  # not rounded to bf16 on the way
    assert not torch.equal(expected.to(torch.bfloat16).float(), expected)  # (rounding would have changed it)
    # Asking for another dtype merges again rather than reusing the fp32 merge.
    again = AutoModelForCausalLM.from_pretrained(load_student(str(tmp_path / "adapter"), dtype="bfloat16"))
    assert again.state_dict()["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16


def test_the_evaluation_key_follows_the_extractor_and_metric_code(tmp_path, monkeypatch):
    """Editing the answer extractor or a local metric script re-evaluates (its source is in the key), the name alone
    does not decide."""
    module = tmp_path / "my_extract.py"
    module.write_text("def pick(text):\n    return text.strip()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    metric_dir = tmp_path / "metric"
    metric_dir.mkdir()
    (metric_dir / "metric.py").write_text("# v1\n")

    def identity() -> dict:
        sys.modules.pop("my_extract", None)
        return EvaluationConfig(TeacherConfig(), metric=str(metric_dir / "metric.py"),
                                extractor="my_extract:pick").identity()

    first = identity()
    assert first["extractor"]["name"] == "my_extract:pick" and first == identity()
    module.write_text("def pick(text):\n    return text.strip().lower()\n")
    edited = identity()
    assert edited["extractor"]["source"] != first["extractor"]["source"] and edited["metric"] == first["metric"]
    (metric_dir / "metric.py").write_text("# v2\n")
    assert identity()["metric"]["files"] != first["metric"]["files"]
    assert EvaluationConfig(TeacherConfig(), metric="exact_match").identity()["metric"] == "exact_match"

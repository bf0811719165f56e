"""car_hf.evaluation.harness: lm-evaluation-harness on the in-memory student, over local YAML tasks (offline).

The agreement test writes the held-out items as a local harness task scored by the same ``answer_match`` and
checks that the harness and ``--metric answer_match`` agree item by item, text and score. The tiny random student
answers nonsense, so the references are made from its own first answers on half the items: a right answer there
needs the harness to reproduce the student's exact text (same prompt, same chat template, same greedy decoding).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import pytest
import yaml

import car_hf.core.models
import car_hf.evaluation.harness as harness
from car_hf import ConfigError
from car_hf.core.models import load_model
from car_hf.evaluation.harness import (
    RULE,
    arithmetic_problems,
    item_weights,
    resolve_tasks,
    write_arithmetic_task,
    write_heldout_task,
)
from car_hf.evaluation.stats import paired_comparison
from car_hf.evaluation.arguments import EvaluationArguments
from car_hf.evaluation.student import EvaluationConfig, evaluate_student
from car_hf.generation.engines.base import stop_token_ids
from car_hf.generation.tasks import ANSWER_MATCH, extract_answer, make_tasks
from car_hf.generation.teacher import TeacherConfig

pytest.importorskip("lm_eval")
GENERATION = TeacherConfig(max_new_tokens=6)
REPO = Path(__file__).resolve().parents[1]


def stop_strings(folder: Path) -> list[str]:
    model, tokenizer = load_model(str(folder), device="cpu")
    return [tokenizer.decode([t]) for t in stop_token_ids(tokenizer, None, model.generation_config.eos_token_id)]


@pytest.fixture(scope="module")
def half_right(tiny_model_dir):
    """Held-out items whose reference is the tiny student's own answer on even rows, a wrong one on odd rows."""
    heldout = make_tasks(10, seed=1)
    first = evaluate_student(str(tiny_model_dir), heldout, EvaluationConfig(GENERATION, metric=ANSWER_MATCH,
                                                                            n_bootstrap=0))
    answers = [extract_answer(t) if i % 2 == 0 else "no such answer"
               for i, t in enumerate(first.items["response"].fillna(""))]
    return heldout.remove_columns("answer").add_column("answer", answers)


def test_the_harness_agrees_with_answer_match_item_by_item(tiny_model_dir, half_right, tmp_path, monkeypatch):
    tasks = tmp_path / "tasks"
    write_heldout_task(half_right, tasks, max_new_tokens=6, until=stop_strings(tiny_model_dir))
    car_hf.core.models.clear_model_cache()
    loads = []
    real_load = car_hf.core.models._load
    monkeypatch.setattr(car_hf.core.models, "_load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    result = evaluate_student(str(tiny_model_dir), half_right,
                              EvaluationConfig(GENERATION, metric=ANSWER_MATCH, n_bootstrap=500),
                              harness_tasks=["car_heldout"], harness_include_path=str(tasks))
    assert len(loads) == 1  # the harness ran on the model the engine holds: the student was loaded once
    items = result.items
    own, mirror = items[items["harness_task"].isna()], items[items["harness_task"] == "car_heldout"]
    assert len(own) == len(mirror) == 10 and mirror["harness_doc_id"].tolist() == list(range(10))
    assert own["response"].tolist() == mirror["response"].tolist()  # the same text, item by item
    assert own["correct"].tolist() == mirror["harness_score"].tolist() == [1.0, 0.0] * 5
    assert result.scores("accuracy").tolist() == result.scores("harness:car_heldout").tolist()
    summary = result.summary
    assert summary["accuracy"]["mean"] == summary["harness:car_heldout"]["mean"] == summary["harness"]["mean"] == 0.5
    assert summary["harness:car_heldout"]["value"] == 0.5  # the harness's own aggregate
    assert summary["harness:car_heldout"]["low"] == summary["accuracy"]["low"]  # the same bootstrap over items
    assert summary["harness"]["rule"] == RULE and summary["harness:car_heldout"]["metric"] == "exact_match"
    assert "<|assistant|>" in mirror["harness_prompt"].iloc[0]  # the student's chat template, as car_hf's


def test_tasks_combine_by_the_mean_of_their_primary_metrics(tiny_model_dir, half_right, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")  # a pilot's second process evaluates its own student, alone
    tasks = tmp_path / "tasks"
    until = stop_strings(tiny_model_dir)
    write_heldout_task(half_right, tasks, max_new_tokens=6, until=until)  # 10 items, half right
    write_heldout_task(half_right.select(range(1, 5)), tasks, "odd_rows", max_new_tokens=6, until=until)
    write_arithmetic_task(tasks, n=3, n_fewshot=1, max_new_tokens=4)
    config = EvaluationConfig(GENERATION, n_bootstrap=200, harness_tasks=["car_heldout", "odd_rows", "arithmetic_gsm"],
                              harness_include_path=str(tasks))
    config.check(None)  # harness tasks alone: no held-out set needed
    assert config.measures() == ["harness", "harness:car_heldout", "harness:odd_rows", "harness:arithmetic_gsm"]
    result = evaluate_student(str(tiny_model_dir), None, config)
    assert os.environ["LOCAL_RANK"] == "1"
    s = result.summary
    means = [s[f"harness:{t}"]["mean"] for t in ("car_heldout", "odd_rows", "arithmetic_gsm")]
    assert means[:2] == [0.5, 0.5] and s["harness:odd_rows"]["n"] == 4 and s["harness:arithmetic_gsm"]["n"] == 3
    assert s["harness"]["mean"] == pytest.approx(sum(means) / 3) and s["harness"]["n"] == 17
    pooled = result.items["harness_score"].mean()
    assert pooled != pytest.approx(s["harness"]["mean"])  # tasks weigh the same, not items
    assert s["harness:arithmetic_gsm"]["filter"] == "strict-match" and s["harness:arithmetic_gsm"]["n_shot"] == 1
    # Paired tests pair harness items: a student against itself differs by 0 on all 17.
    paired = paired_comparison(result.scores("harness"), result.scores("harness"), n_bootstrap=100)
    assert paired["difference"] == 0.0 and paired["n"] == 17
    with pytest.raises(KeyError, match="'accuracy' was not evaluated"):
        result.scores("accuracy")


def test_item_weights_make_the_mean_over_items_the_mean_over_tasks():
    weights = item_weights(["a"] * 3 + ["b"])
    scores = [1.0, 1.0, 0.0, 1.0]
    assert sum(w * x for w, x in zip(weights, scores)) / 4 == pytest.approx((2 / 3 + 1.0) / 2)


def test_unknown_tasks_are_refused_with_the_harness_closest_names(tmp_path):
    write_arithmetic_task(tmp_path, n=3)
    with pytest.raises(ConfigError, match=r"unknown harness task\(s\) \['gsm8 k'\].*'gsm8 k': gsm8k"):
        resolve_tasks(["arithmetic_gsm", "gsm8 k"], str(tmp_path))
    with pytest.raises(ConfigError, match="arithmetic_gms.*Closest names: 'arithmetic_gms': arithmetic_gsm"):
        resolve_tasks(["arithmetic_gms"], str(tmp_path))
    with pytest.raises(ConfigError, match="is not a folder"):
        resolve_tasks(["arithmetic_gsm"], str(tmp_path / "missing"))


def test_a_task_not_scored_per_item_is_refused(tmp_path):
    write_arithmetic_task(tmp_path, n=3)
    config = yaml.safe_load((tmp_path / "arithmetic_gsm.yaml").read_text())
    config |= {"task": "arithmetic_bleu", "metric_list": [{"metric": "bleu", "higher_is_better": True}]}
    (tmp_path / "arithmetic_bleu.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="'arithmetic_bleu' is not scored per item: its metric 'bleu' is "
                                          "aggregated by 'bleu', not a mean over items"):
        resolve_tasks(["arithmetic_bleu"], str(tmp_path))


@pytest.mark.parametrize("installed", [None, "0.3.0", "0.5.1"])
def test_a_missing_or_unsupported_harness_says_what_to_install(monkeypatch, installed):
    real = importlib.metadata.version

    def version(name):
        if name != "lm_eval":
            return real(name)
        if installed is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed

    monkeypatch.setattr(importlib.metadata, "version", version)
    expected = "not installed" if installed is None else f"lm-evaluation-harness {installed} is installed"
    with pytest.raises(ConfigError, match=rf'{expected}.*pip install "car_hf\[harness\]"'):
        EvaluationConfig(metric=ANSWER_MATCH, harness_tasks=["arithmetic_gsm"]).check(make_tasks(2))


def test_harness_tasks_on_an_endpoint_are_refused():
    config = EvaluationConfig(TeacherConfig(base_url="http://127.0.0.1:9/v1"), harness_tasks=["arithmetic_gsm"])
    with pytest.raises(ConfigError, match="harness tasks run on the student's weights"):
        config.check(None)


def test_the_options_reach_the_config_and_the_cache_key(tmp_path):
    write_arithmetic_task(tmp_path, n=3)
    arguments = EvaluationArguments(metric="answer_match", harness_tasks=["arithmetic_gsm"],
                                    harness_include_path=str(tmp_path))
    config = arguments.config(GENERATION)
    assert config.harness_tasks == ["arithmetic_gsm"] and config.measures()[0] == "accuracy"
    key = config.identity()["harness"]
    assert key["tasks"] == ["arithmetic_gsm"] and key["lm_eval"] == importlib.metadata.version("lm_eval")
    assert set(key["include_path"]) == {"arithmetic_gsm.jsonl", "arithmetic_gsm.yaml", "arithmetic_gsm_train.jsonl"}
    (tmp_path / "arithmetic_gsm.jsonl").write_text(json.dumps(arithmetic_problems(1, seed=9)[0]) + "\n")
    assert config.identity()["harness"] != key  # an edited local task re-evaluates
    assert "harness" not in EvaluationConfig(metric=ANSWER_MATCH).identity()  # earlier caches keep their keys


def test_the_shipped_arithmetic_task_is_generated_here_and_gsm8k_shaped(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # its data paths are relative to the repository root
    shipped = REPO / "recipes" / "harness_tasks"
    write_arithmetic_task(tmp_path, n=100, relative_to=tmp_path)
    for name in ("arithmetic_gsm.jsonl", "arithmetic_gsm_train.jsonl"):
        assert (shipped / name).read_text() == (tmp_path / name).read_text()  # reproducible from the code
    rows = [json.loads(line) for line in (shipped / "arithmetic_gsm.jsonl").read_text().splitlines()]
    for row in rows:
        numbers = [int(n) for n in row["answer"].split("#### ")[1:]]
        boxes, per, given = (int(w) for w in row["question"].split() if w.isdigit())
        assert numbers == [boxes * per - given] and numbers[0] > 0
    (task,) = resolve_tasks(["arithmetic_gsm"], str(shipped))
    assert (task.metric, task.filter, task.num_fewshot, task.n_items) == ("exact_match", "strict-match", 3, 100)


def test_the_pilot_ranks_students_by_the_harness_and_keeps_its_items(tiny_model_dir, tmp_path, hf_cache,
                                                                    monkeypatch):
    import torch
    from test_pilot import N_TRAIN, heldout_of, run_recipe, scripted_pool

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tasks = make_tasks(N_TRAIN + 20, seed=0, types=["count_letters"])
    folder = tmp_path / "harness"
    write_heldout_task(heldout_of(tasks), folder, max_new_tokens=4, until=stop_strings(tiny_model_dir))
    try:
        report = run_recipe(tmp_path, tiny_model_dir, scripted_pool(tasks), heldout_of(tasks), "--teachers",
                            "right", "all wrong", "--harness_tasks", "car_heldout", "--harness_include_path",
                            str(folder), "--measure", "harness")
    finally:
        torch.set_num_threads(threads)
    t = report.teachers.set_index("teacher")
    assert t.loc["all wrong", "realized"] == 0.0 and report.teachers["teacher"].iloc[-1] == "all wrong"
    for name, evaluation in report.evaluations.items():  # the harness and answer_match agree, student by student
        assert evaluation.summary["harness"]["mean"] == evaluation.summary["accuracy"]["mean"], name
        assert evaluation.scores("harness").tolist() == evaluation.scores("accuracy").tolist(), name
    assert report.paired["n"] == 20 and report.paired["measure"] == "harness"
    text = (tmp_path / "pilot" / "report.md").read_text()
    assert "## Pilot: predicted vs. realized (harness)" in text and f"`harness` is the {RULE}" in text
    items = (tmp_path / "pilot" / "items.csv").read_text()
    assert items.count("car_heldout") >= 3 * 20  # every student's harness items, in the per-item file
    card = (tmp_path / "pilot" / "README.md").read_text()
    assert "## Teachers, signals and realized scores" in card and "`harness:car_heldout`" in card


def test_the_extras_pin_the_range_the_code_checks_and_the_pilot_lists_the_options(capsys):
    import configparser

    from car_hf.cli import main as cli_main

    extras = configparser.ConfigParser()
    extras.read(REPO / "setup.cfg")
    pinned = {line.strip() for line in extras["options.extras_require"]["test"].splitlines()}
    assert extras["options.extras_require"]["harness"].strip() == f"lm-eval{harness.HARNESS_RANGE}"
    assert f"lm-eval{harness.HARNESS_RANGE}" in pinned  # CI's `pip install .[test]` runs these tests
    assert cli_main(["pilot", "--help"]) == 0
    shown = capsys.readouterr().out
    assert "--harness-tasks" in shown and "--harness-include-path" in shown and "harness:<task>" in shown


def test_seeds_average_harness_items_item_by_item_and_keep_the_task_description():
    import pandas as pd

    from car_hf.evaluation.pilot import average_seeds

    def seed(correct, scores):
        heldout = pd.DataFrame({"instruction": ["a", "b"], "response": ["1", "2"], "correct": correct,
                                "empty_answer": [False, False]})
        rows = pd.DataFrame({"harness_task": ["t", "t", "u"], "harness_doc_id": [0, 1, 0], "response": ["x"] * 3,
                             "harness_score": scores, "harness": [s * w for s, w in zip(scores, item_weights(
                                 ["t", "t", "u"]))], "empty_answer": [False] * 3})
        items = pd.concat([heldout, rows], ignore_index=True)
        config = EvaluationConfig(n_bootstrap=0)
        from car_hf.evaluation.student import StudentEvaluation, summarize

        return StudentEvaluation("s", items, summarize(items, config, {"t": {"metric": "exact_match"}}))

    mean = average_seeds({0: seed([1.0, 0.0], [1.0, 0.0, 1.0]), 1: seed([1.0, 1.0], [1.0, 1.0, 0.0])},
                         EvaluationConfig(n_bootstrap=0), ["instruction"])
    assert mean.scores("accuracy").tolist() == [1.0, 0.5]
    assert mean.scores("harness:t").tolist() == [1.0, 0.5] and mean.scores("harness:u").tolist() == [0.5]
    assert mean.summary["harness"]["mean"] == pytest.approx((0.75 + 0.5) / 2)
    assert mean.summary["harness:t"]["metric"] == "exact_match" and mean.summary["harness:t"]["mean"] == 0.75
    assert mean.items["harness_score_seed1"].tolist()[2:] == [1.0, 1.0, 0.0]


def test_the_pilot_refuses_bad_harness_tasks_before_training(tmp_path, tiny_model_dir, monkeypatch):
    import dataclasses

    import trl
    from test_pilot import EVALUATION, N_TRAIN, budget, heldout_of, scripted_pool

    from car_hf.evaluation.pilot import run_pilot

    def refuse(*args, **kwargs):
        raise AssertionError("a trainer was built before the input error was reported")

    monkeypatch.setattr(trl.SFTTrainer, "__init__", refuse)
    tasks = make_tasks(N_TRAIN + 20, seed=0, types=["count_letters"])
    write_arithmetic_task(tmp_path / "tasks", n=3)
    for names, message in ((["arithmetic_gms"], "Closest names: 'arithmetic_gms': arithmetic_gsm"),
                           (["arithmetic_gsm"], r"measure 'harness:car_heldout' is not among")):
        evaluation = dataclasses.replace(EVALUATION, harness_tasks=names, harness_include_path=str(tmp_path / "tasks"))
        with pytest.raises(ConfigError, match=message):
            run_pilot(scripted_pool(tasks), heldout_of(tasks), *budget(tmp_path, tiny_model_dir), evaluation,
                      n_instructions=N_TRAIN, output_dir=tmp_path / "pilot", measure="harness:car_heldout")

"""car_hf.publishing.eval_results: a student's evaluation as the Hub reads it (model-index, .eval_results), pushed
to the loopback Hub (tests/hub_server.py) by ``push_model`` and ``car-hf push``, and written by the evaluation recipe.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from hub_server import TOKEN, HubServer
from huggingface_hub import ModelCard, constants, parse_eval_result_entries

from car_hf.cli import main as cli_main
from car_hf.publishing import hub as car_hub
from car_hf.publishing.cards import CARD_BEGIN
from car_hf.publishing.eval_results import (
    EVALUATION_FILE,
    eval_result_entries,
    evaluation_record,
    model_index_results,
    read_evaluation_record,
    write_eval_results,
    write_evaluation_record,
)
from car_hf.publishing.hub import push_model

REPO = Path(__file__).resolve().parents[1]
GSM8K = {"name": "gsm8k", "metric": "exact_match", "filter": "strict-match", "output_type": "generate_until",
         "dataset_path": "openai/gsm8k", "dataset_name": "main", "split": "test", "n_shot": 5, "value": 0.25}
SUMMARY = {
    "accuracy": {"mean": 0.4, "low": 0.2, "high": 0.6, "n": 20, "n_empty": 1},
    "lc_win_rate": {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 3},
    "harness": {"mean": 0.3, "low": 0.1, "high": 0.5, "n": 28, "rule": "mean over tasks of each task's primary metric",
                "tasks": ["gsm8k", "arithmetic_gsm"]},
    "harness:gsm8k": GSM8K | {"mean": 0.25, "low": 0.0, "high": 0.5, "n": 8},
    "harness:arithmetic_gsm": GSM8K | {"name": "arithmetic_gsm", "dataset_path": "json", "dataset_name": None,
                                       "n_shot": 3, "mean": 0.35, "low": 0.15, "high": 0.55, "n": 20},
}


def record() -> dict:
    return evaluation_record(SUMMARY, student="runs/sft", heldout="runs/tiny-data/heldout.jsonl",
                             heldout_split="train", date="2026-12-03T09:00:00Z")


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with HubServer() as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        monkeypatch.setattr(car_hub, "RETRY_BASE_SECONDS", 0.001)
        yield server
        assert server.unknown == []


def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "sft-out"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(bytes(range(256)))
    (folder / "README.md").write_text("---\nlibrary_name: transformers\ntags:\n- trl\n---\n\n# Model Card for sft-out\n"
                                      "\n## Training procedure\n\nTrained with SFT.\n")
    write_evaluation_record(folder, record())
    return folder


def test_the_record_reads_back_and_becomes_model_index_results(tmp_path):
    write_evaluation_record(tmp_path, record())
    assert read_evaluation_record(tmp_path) == record() and read_evaluation_record(tmp_path / "none") is None
    results = {(r.dataset_name, r.metric_type): r for r in model_index_results(record())}
    assert len(results) == 4  # the NaN lc_win_rate is left out: a model-index value is a number
    accuracy = results[("held-out set runs/tiny-data/heldout.jsonl", "accuracy")]
    assert (accuracy.dataset_type, accuracy.metric_value, accuracy.dataset_split) == ("car_hf-heldout", 0.4, "train")
    gsm8k = results[("gsm8k", "exact_match")]
    assert (gsm8k.dataset_type, gsm8k.dataset_config, gsm8k.metric_value) == ("openai/gsm8k", "main", 0.25)
    assert gsm8k.metric_name == "exact_match (strict-match, 5-shot)" and gsm8k.task_type == "text-generation"
    assert results[("arithmetic_gsm", "exact_match")].dataset_type == "arithmetic_gsm"  # local data: no Hub id
    combined = results[("lm-evaluation-harness: gsm8k, arithmetic_gsm", "harness_mean")]
    assert combined.metric_value == 0.3 and combined.metric_name == "mean of per-task primary metrics"


def test_only_harness_tasks_over_hub_datasets_get_eval_results_files(tmp_path):
    (entry,) = eval_result_entries(record(), repo_id="me/tuned")
    assert (entry.dataset_id, entry.task_id, entry.value, entry.date) == ("openai/gsm8k", "gsm8k", 0.25,
                                                                          "2026-12-03T09:00:00Z")
    assert entry.source_url == f"{constants.ENDPOINT}/me/tuned"
    assert entry.notes == "lm-evaluation-harness gsm8k: exact_match (strict-match), 5-shot, n=8"
    (path,) = write_eval_results(tmp_path, record(), "me/tuned")
    assert path == tmp_path / ".eval_results" / "gsm8k.yaml"
    written = yaml.safe_load(path.read_text())  # the Hub's format: a list of {dataset: {id, task_id}, value, ...}
    assert written[0]["dataset"] == {"id": "openai/gsm8k", "task_id": "gsm8k"} and written[0]["value"] == 0.25
    assert written[0]["source"] == {"url": f"{constants.ENDPOINT}/me/tuned", "name": "car_hf evaluation"}
    assert parse_eval_result_entries(written)[0] == entry  # huggingface_hub reads back what it would write
    assert eval_result_entries({"measures": {"accuracy": SUMMARY["accuracy"]}}) == []


def test_push_model_publishes_the_evaluation(hub, tmp_path):
    folder = model_folder(tmp_path)
    push_model(folder, "me/tuned", base_model="google/gemma-3-270m", token=TOKEN)
    remote = hub.files("me/tuned", repo_type="model")
    assert {"README.md", EVALUATION_FILE, ".eval_results/gsm8k.yaml", "model.safetensors"} <= set(remote)
    assert yaml.safe_load(remote[".eval_results/gsm8k.yaml"])[0]["dataset"]["id"] == "openai/gsm8k"
    card = ModelCard(remote["README.md"].decode())
    values = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert values[("gsm8k", "exact_match")] == 0.25 and values[("lm-evaluation-harness: gsm8k, arithmetic_gsm",
                                                                  "harness_mean")] == 0.3
    assert card.data.to_dict()["model-index"][0]["name"] == "tuned"
    assert "trl" in card.data.tags and "## Evaluation" in card.text
    text = re.sub(r" {2,}", " ", card.text)  # without the tables' padding
    assert "| `accuracy` | 0.400 [0.200, 0.600] | 20 | held-out set runs/tiny-data/heldout.jsonl |" in text
    assert "| `lc_win_rate` | n/a | 3 |" in text
    assert f"[`openai/gsm8k`]({hub.url}/datasets/openai/gsm8k)" in card.text  # the benchmark linked
    # Evaluated again, pushed again: one car_hf section, the model-index replaced, not appended to.
    write_evaluation_record(folder, record() | {"measures": {"accuracy": SUMMARY["accuracy"] | {"mean": 0.5}}})
    push_model(folder, "me/tuned", base_model="google/gemma-3-270m", token=TOKEN)
    card = ModelCard(hub.files("me/tuned", repo_type="model")["README.md"].decode())
    assert card.text.count(CARD_BEGIN) == 1 and [r.metric_value for r in card.data.eval_results] == [0.5]


def test_car_hf_push_dry_run_writes_the_eval_results(tmp_path, capsys):
    folder = model_folder(tmp_path)
    out = tmp_path / "dry"
    assert cli_main(["push", str(folder), "me/tuned", "--base-model", "google/gemma-3-270m", "--dry-run",
                     str(out)]) == 0
    assert (out / ".eval_results" / "gsm8k.yaml").is_file() and (out / EVALUATION_FILE).is_file()
    assert len(ModelCard.load(out / "README.md").data.eval_results) == 4
    assert not (folder / ".eval_results").exists()  # the dry run left the model folder as it was


def test_a_model_without_an_evaluation_has_no_model_index(tmp_path):
    folder = model_folder(tmp_path)
    (folder / EVALUATION_FILE).unlink()
    push_model(folder, "me/tuned", base_model="google/gemma-3-270m", dry_run=True)
    assert "model-index" not in (folder / "README.md").read_text() and not (folder / ".eval_results").exists()


def test_the_evaluation_recipe_records_the_evaluation_in_the_student_folder(tmp_path, tiny_model_dir, hf_cache):
    spec = importlib.util.spec_from_file_location("recipes_evaluate_student", REPO / "recipes" / "evaluate_student.py")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe
    spec.loader.exec_module(recipe)
    from car_hf.generation.tasks import make_tasks

    student = Path(shutil.copytree(tiny_model_dir, tmp_path / "student"))
    make_tasks(4, seed=2).to_json(tmp_path / "heldout.jsonl")
    summary = recipe.main(*recipe.make_parser().parse_args_and_config([
        "--model_name_or_path", str(student), "--dataset_name", str(tmp_path / "heldout.jsonl"), "--metric",
        "answer_match", "--max_new_tokens", "4", "--baseline_model", "none", "--n_bootstrap", "50",
        "--output_dir", str(tmp_path / "out")]))
    saved = read_evaluation_record(student)
    assert saved["student"] == str(student) and saved["heldout"] == str(tmp_path / "heldout.jsonl")
    assert saved["measures"]["accuracy"]["n"] == 4 and saved["measures"] == json.loads(json.dumps(summary["summary"]))

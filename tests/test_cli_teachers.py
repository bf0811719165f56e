"""``car-hf generate`` and ``car-hf trial`` end to end on tiny teachers (the transformers engine, offline)."""

import json

import pandas as pd
import pytest
import yaml
from datasets import load_dataset, load_from_disk

from car_hf.cli import main
from car_hf.tasks import make_tasks


def length_reward(prompts, completions, **columns):
    """A reward the tiny teachers differ on: longer answers score higher (capped)."""
    return [min(len(c), 40) / 40 + 0.01 for c in completions]


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "tasks.jsonl"
    make_tasks(8, seed=1).to_json(str(path))
    return path


def test_generate_writes_the_response_columns_and_the_record(tmp_path, hf_cache, questions, tiny_model_dir, capsys):
    out = tmp_path / "generated.parquet"
    assert main(["generate", str(questions), "--teacher", str(tiny_model_dir), "--max-new-tokens", "5",
                 "-o", str(out)]) == 0
    rows = load_dataset("parquet", data_files=str(out), split="train").to_pandas()
    assert len(rows) == 8 and (rows["response_tokens"] <= 5).all()
    assert set(rows["response_finish_reason"]) <= {"stop", "length"}
    assert (rows["response_truncated"] == (rows["response_finish_reason"] == "length")).all()
    record = json.loads((tmp_path / "generated.parquet.car_config.json").read_text())
    assert record["max_new_tokens"] == 5 and record["provenance"]["engine"] == "transformers"
    assert "generated 8 responses" in capsys.readouterr().out


def test_trial_from_a_teachers_file_writes_a_pushable_ranking(tmp_path, hf_cache, questions, tiny_model_dir, capsys):
    teachers = tmp_path / "teachers.yaml"
    teachers.write_text(yaml.safe_dump([
        {"teacher": str(tiny_model_dir), "teacher_name": "terse", "max_new_tokens": 2},
        {"teacher": str(tiny_model_dir), "teacher_name": "wordy", "max_new_tokens": 12},
    ]))
    out = tmp_path / "trial"
    assert main(["trial", str(questions), "--teachers", str(teachers), "--base-model", str(tiny_model_dir),
                 "--reward-model", "test_cli_teachers:length_reward", "--bootstrap", "50",
                 "--output-dir", str(out), "--checkpoint", str(tmp_path / "ckpt")]) == 0
    printed = capsys.readouterr().out
    assert "teacher trial: stopped" in printed and "generated 16 responses of the exhaustive trial's 16" in printed
    table = pd.read_csv(out / "leaderboard.csv")
    assert table["generator"].tolist()[0] == "wordy" and set(table["n"]) == {8}
    scored = load_from_disk(str(out / "scored"))
    assert {"response", "reward", "base_loss", "car", "generator"} <= set(scored.column_names)
    assert json.loads((out / "car_config.json").read_text())["trial"]["teachers"] == ["terse", "wordy"]
    assert main(["push", str(out), "me/trial", "--dry-run", str(tmp_path / "up")]) == 0


def test_trial_input_errors_are_one_line(tmp_path, questions, capsys):
    bad = tmp_path / "teachers.yaml"
    bad.write_text(yaml.safe_dump([{"teacher": "a", "temprature": 0.5}]))
    assert main(["trial", str(questions), "--teachers", str(bad)]) == 2
    assert "unknown field(s) ['temprature']" in capsys.readouterr().err
    assert main(["trial", str(questions), "--teacher", "only-one"]) == 2
    assert "at least 2" in capsys.readouterr().err

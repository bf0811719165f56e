"""``car-hf generate`` and ``car-hf trial`` end to end on tiny teachers (the transformers engine, offline)."""

import json

import pandas as pd
import pytest
import yaml
from datasets import load_dataset, load_from_disk

from car_hf.cli import main
from car_hf.generation.tasks import make_tasks


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
    # the signal audit: its columns in the leaderboard, its notes printed and kept (2-token answers are not loops)
    assert "Signal audit:" in printed and table["loop_share"].tolist() == [0.0, 0.0]
    assert json.loads((out / "car_config.json").read_text())["audit"]["notes"]
    assert main(["push", str(out), "me/trial", "--dry-run", str(tmp_path / "up")]) == 0


def test_trial_input_errors_are_one_line(tmp_path, questions, capsys):
    bad = tmp_path / "teachers.yaml"
    bad.write_text(yaml.safe_dump([{"teacher": "a", "temprature": 0.5}]))
    assert main(["trial", str(questions), "--teachers", str(bad)]) == 2
    assert "unknown field(s) ['temprature']" in capsys.readouterr().err
    assert main(["trial", str(questions), "--teacher", "only-one"]) == 2
    assert "at least 2" in capsys.readouterr().err


@pytest.fixture
def endpoint(monkeypatch):
    """The loopback OpenAI-compatible server, with huggingface_hub's offline mode off (it blocks every request)."""
    import huggingface_hub.constants

    from openai_server import OpenAIServer

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with OpenAIServer(lifetime=60) as server:
        yield server


def error_lines(err):
    return [line for line in err.splitlines() if "error:" in line]  # what is left once progress bars are set aside


def test_generate_against_a_failing_endpoint_keeps_finished_rows_and_resumes(tmp_path, endpoint, capsys):
    import shlex

    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(8)))
    out = tmp_path / "generated.jsonl"
    argv = ["generate", str(data), "--teacher", "served", "--base-url", endpoint.base_url, "--max-concurrency", "1",
            "--max-retries", "2", "--retry-backoff", "0.01", "--max-new-tokens", "8", "-o", str(out)]
    endpoint.fail_after = (6, "503")  # answers 6 requests, then goes down
    assert main(argv) == 3  # EXIT_GENERATION_FAILED: not a traceback, not a usage error
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("car-hf generate: error: generation failed for 2 row(s) (6, 7): 2 of 8 request(s)")
    assert "retried 4 request(s): HTTP 503 x4" in line and "after 3 attempt(s): HTTP 503" in line
    assert line.endswith(f"Finished work is kept in {out}.checkpoint: run the same command again to generate only "
                         f"what is missing: {shlex.join(['car-hf', *argv])}")
    assert not out.exists()
    kept = json.loads((tmp_path / "generated.jsonl.checkpoint" / "kept-responses.json").read_text())["kept_responses"]
    assert sorted(e["text"] for e in kept) == [f"Echo: question {i}" for i in range(6)]

    endpoint.fail_after, asked = None, len(endpoint.requests)
    assert main(argv) == 0
    assert [r["body"]["messages"][-1]["content"] for r in endpoint.requests[asked:]] == ["question 6", "question 7"]
    rows = load_dataset("json", data_files=str(out), split="train")
    assert rows["response"] == [f"Echo: question {i}" for i in range(8)]
    assert json.loads((tmp_path / "generated.jsonl.car_config.json").read_text())["retries"] == {}
    assert not (tmp_path / "generated.jsonl.checkpoint" / "kept-responses.json").exists()


def test_generate_reports_retries_in_its_summary(tmp_path, endpoint, capsys):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(3)))
    endpoint.script = ["503", "429", "timeout"]
    endpoint.delay = 1.0
    assert main(["generate", str(data), "--teacher", "served", "--base-url", endpoint.base_url, "--max-concurrency",
                 "1", "--retry-backoff", "0.01", "--request-timeout", "0.3", "-o", str(tmp_path / "o.jsonl")]) == 0
    summary = capsys.readouterr().out
    assert "generated 3 responses" in summary and "retried 3 request(s): " in summary
    assert all(cause in summary for cause in ("HTTP 503 x1", "HTTP 429 x1", "timeout x1"))
    record = json.loads((tmp_path / "o.jsonl.car_config.json").read_text())
    assert record["retries"] == {"HTTP 503": 1, "HTTP 429": 1, "timeout": 1}


def test_trial_against_a_failing_endpoint_keeps_finished_rows_and_resumes(tmp_path, endpoint, hf_cache, questions,
                                                                          tiny_model_dir, capsys):
    prompts = [row["instruction"] for row in load_dataset("json", data_files=str(questions), split="train")]
    endpoint.fail_if = lambda body: "500" if body["messages"][-1]["content"] == prompts[5] else None
    teachers = tmp_path / "teachers.yaml"
    teachers.write_text(yaml.safe_dump([{"teacher": "served", "teacher_name": "terse", "max_new_tokens": 2},
                                        {"teacher": "served", "teacher_name": "wordy", "max_new_tokens": 12}]))
    argv = ["trial", str(questions), "--teachers", str(teachers), "--base-url", endpoint.base_url, "--max-retries",
            "1", "--retry-backoff", "0.01", "--base-model", str(tiny_model_dir), "--reward-model",
            "test_cli_teachers:length_reward", "--bootstrap", "50", "--output-dir", str(tmp_path / "trial")]
    assert main(argv) == 3
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("car-hf trial: error: generation failed for 1 row(s)") and "retried 1 request(s)" in line
    assert f"kept in {tmp_path / 'trial'}.checkpoint" in line
    endpoint.fail_if, asked = None, len(endpoint.requests)
    assert main(argv) == 0
    again = [r["body"]["messages"][-1]["content"] for r in endpoint.requests[asked:]]
    # terse: only the row that failed (its 7 others were kept); wordy, which had not started: all 8
    assert again[0] == prompts[5] and sorted(again[1:]) == sorted(prompts)
    assert "teacher trial: stopped" in capsys.readouterr().out

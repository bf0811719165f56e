"""car-hf score / rank / push --dry-run, run in-process on a tiny model and a small JSONL file."""

import json
import subprocess
import sys

import pandas as pd
import re

import pytest
from datasets import load_dataset, load_from_disk

import tiny
from car_hf.cli import main


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in tiny.sample_rows(4, 3)))
    return path


def test_score_writes_every_row_and_the_config_beside_it(tmp_path, data_file, tiny_model_dir, capsys):
    out = tmp_path / "scored.parquet"
    assert main(["score", str(data_file), "--base-model", str(tiny_model_dir), "--reward-column", "judge_preference",
                 "--beta", "0.5", "-o", str(out)]) == 0
    scored = load_dataset("parquet", data_files=str(out), split="train")
    assert len(scored) == 12 and {"base_loss", "base_loss_tokens", "car", "reward", "output"} <= set(scored.column_names)
    row = scored[0]
    assert row["car"] == pytest.approx(row["judge_preference"] / (1 + 0.5 * row["base_loss"]))
    config = json.loads((tmp_path / "scored.parquet.car_config.json").read_text())
    assert config["base_model"] == str(tiny_model_dir) and config["reward_column"] == "judge_preference"
    assert "scored 12 rows" in capsys.readouterr().out


def test_rank_scores_ranks_plots_and_push_dry_run_round_trips(tmp_path, hf_cache, data_file, tiny_model_dir, capsys):
    out = tmp_path / "ranking"
    assert main(["rank", str(data_file), "--base-model", str(tiny_model_dir), "--reward-column", "judge_preference",
                 "--generators", "gen-0,gen-2", "--max-instructions", "3", "--bootstrap", "200",
                 "--output-dir", str(out), "--plot"]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "leaderboard.csv")
    assert sorted(table.generator) == ["gen-0", "gen-2"] and table.n.tolist() == [3, 3]
    assert f"| 1 | {table.generator[0]} |" in printed and "beta=1.0" in printed
    assert (out / "ranking.png").stat().st_size > 10_000
    assert json.loads((out / "car_config.json").read_text())["base_model"] == str(tiny_model_dir)
    scored = load_from_disk(str(out / "scored"))
    assert len(scored) == 6

    dry = tmp_path / "to_upload"
    assert main(["push", str(out), "me/car-test", "--dry-run", str(dry)]) == 0
    reloaded = load_dataset(str(dry), split="train")
    key = lambda r: (r["instruction_id"], r["generator"])  # noqa: E731
    assert sorted(reloaded.to_list(), key=key) == sorted(scored.to_list(), key=key)
    card = (dry / "README.md").read_text()
    assert "instruction-tuning" in card and str(tiny_model_dir) in card


def test_bad_input_errors_name_columns(tmp_path, data_file, tiny_model_dir, capsys):
    # exit status 2 and one line on stderr naming what to fix, no traceback
    assert main(["rank", str(data_file), "--generators", "nope"]) == 2
    assert re.search(r"(?m)^car-hf rank: error: .*generator\(s\) \['nope'\] not in column 'generator'", capsys.readouterr().err)
    assert main(["score", str(data_file), "--base-model", str(tiny_model_dir), "--reward-column", "judge",
                 "-o", str(tmp_path / "x.parquet")]) == 2
    assert "car-hf score: error: reward column 'judge' is missing" in capsys.readouterr().err
    assert main(["push", str(tmp_path), "me/x", "--dry-run", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "car-hf push: error:" in err and "scored is missing" in err and "Traceback" not in err


def test_console_script_help_documents_every_option():
    result = subprocess.run([sys.executable, "-m", "car_hf.cli", "rank", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--base-model", "--reward-column", "--reward-model", "--beta", "--reward-transform",
                   "--max-length", "--batch-tokens", "--confidence", "--bootstrap", "--plot", "--output-dir"):
        assert option in result.stdout


def test_rank_adaptive_scores_whole_instructions_within_the_budget(tmp_path, data_file, tiny_model_dir, capsys):
    out = tmp_path / "adaptive"
    assert main(["rank", str(data_file), "--base-model", str(tiny_model_dir), "--reward-column", "judge_preference",
                 "--max-examples", "7", "--confidence", "0.95", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "stopped (budget)" in printed and "6 of 12 rows" in printed  # 2 whole instructions × 3 generators
    scored = load_from_disk(str(out / "scored"))
    assert len(scored) == 6 and len(set(scored["instruction_id"])) == 2

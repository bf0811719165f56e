"""car-hf score / rank / push --dry-run, run in-process on a tiny model and a small JSONL file."""

import dataclasses
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
from datasets import load_dataset, load_from_disk

import tiny
from car_hf.cli import DEPRECATED_FLAGS, build_parser, config_from_args, main
from car_hf.cli.common import SPELLINGS_NOTE
from car_hf.core.config import CARConfig

ROOT = Path(__file__).resolve().parents[1]


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
    assert re.search(r"^car-hf rank: error: .*generator\(s\) \['nope'\] not in column 'generator'",
                     _one_error_line(capsys, "rank"))
    assert main(["score", str(data_file), "--base-model", str(tiny_model_dir), "--reward-column", "judge",
                 "-o", str(tmp_path / "x.parquet")]) == 2
    assert "car-hf score: error: column 'judge' (reward_column: rewards of each row) is missing" in \
        _one_error_line(capsys, "score")
    assert main(["push", str(tmp_path), "me/x", "--dry-run", str(tmp_path / "y")]) == 2
    assert "scored is missing" in _one_error_line(capsys, "push")


def test_console_script_help_lists_every_carconfig_field_and_hides_the_old_flags():
    result = subprocess.run([sys.executable, "-m", "car_hf.cli", "rank", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for field in dataclasses.fields(CARConfig):  # the one declaration of scoring options, listed in one spelling
        assert re.search(rf"(?m)^  --{field.name.replace('_', '-')} ", result.stdout), field.name
        assert "_" not in field.name or f"--{field.name}" not in result.stdout, field.name
    assert " ".join(result.stdout.split()).endswith(" ".join(SPELLINGS_NOTE.split()))  # the other spelling: said once
    for option in ("--by", "--generators", "--batch-size", "--confidence", "--bootstrap", "--plot", "--output-dir"):
        assert option in result.stdout
    assert len(re.findall(r"(?m)^  --beta ", result.stdout)) == 1  # declared once: by CARConfig
    for flag in [*DEPRECATED_FLAGS, "--output"]:  # hidden
        assert re.search(rf"(?<![\w-]){flag}(?![\w-])", result.stdout) is None, flag
    assert "(default: 2048)" in result.stdout and "(default: 1.0)" in result.stdout


def test_old_flags_still_set_the_renamed_fields_with_one_note_each(capsys):
    args = build_parser().parse_args(["score", "rows.jsonl", "--max-length", "64", "--dtype", "float32",
                                      "--device", "cpu", "--trust-remote-code", "--ifd", "-o", "out.parquet"])
    config = config_from_args(args)
    assert (config.score_max_length, config.score_dtype, config.score_device, config.score_trust_remote_code,
            config.ifd) == (64, "float32", "cpu", True, True)
    notes = capsys.readouterr().err.splitlines()
    assert notes == [f"car-hf score: note: {old} is deprecated, use --{new.replace('_', '-')}"
                     for old, new in DEPRECATED_FLAGS.items()]
    assert set(DEPRECATED_FLAGS) == {"--max-length", "--dtype", "--device", "--trust-remote-code"}
    new = config_from_args(build_parser().parse_args(["rank", "d", "--score_max_length", "64", "--score-dtype",
                                                      "float32", "--score-device", "cpu", "--score-trust-remote-code",
                                                      "--ifd"]))
    assert new == config and capsys.readouterr().err == ""


def _one_error_line(capsys, command: str) -> str:
    """The error line, after asserting it is the one line of its kind, alone and last (progress bars may precede)."""
    err = capsys.readouterr().err
    prefix = f"car-hf {command}: error: "
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith(prefix) and err.count(prefix) == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    return last


@pytest.mark.parametrize("argv, says", [
    (["score", "d.jsonl", "--reward-model", "m", "--reward-column", "r", "-o", "x.parquet"],
     "set reward_model or reward_column, not both"),
    (["score", "d.jsonl", "--reward-transform", "bogus", "-o", "x.parquet"],
     "argument --reward-transform: invalid choice: 'bogus'"),
    (["score", "d.jsonl", "--beta", "-1", "-o", "x.parquet"], "beta must be >= 0, got -1"),
    (["score", "d.jsonl"], "the following arguments are required: -o/--output-dir (see car-hf score --help)"),
    (["rank", "d.jsonl", "--plot"], "--plot writes ranking.png into --output-dir: pass --output-dir"),
    (["score", "missing.jsonl", "-o", "x.parquet"], "no such file or folder: 'missing.jsonl'"),
])
def test_bad_options_are_one_error_line_and_exit_2(argv, says, capsys):
    assert main(argv) == 2
    assert says in _one_error_line(capsys, argv[0])


def test_unreachable_hub_data_and_models_are_one_line_with_what_to_do(tmp_path, hf_cache, data_file, capsys):
    # conftest sets HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1: the Hub is never asked.
    out = str(tmp_path / "x.parquet")
    assert main(["score", "no-such-org/no-such-dataset", "--reward-column", "judge_preference", "-o", out]) == 2
    err = _one_error_line(capsys, "score")
    assert "'no-such-org/no-such-dataset' is not a local file or folder" in err and "HF_DATASETS_OFFLINE" in err
    assert main(["score", str(data_file), "--base-model", "no-such-org/no-such-model", "--reward-column",
                 "judge_preference", "-o", out]) == 2
    err = _one_error_line(capsys, "score")
    assert "no-such-org/no-such-model" in err and "HF_HUB_OFFLINE" in err and "car_hf[offline-models]" in err


def test_rank_of_scored_data_prints_integer_ranks_and_no_library_warning(tmp_path, hf_cache, capsys):
    rows = tiny.sample_rows(4, 3)
    for i, row in enumerate(rows):
        row["base_loss"] = 1.0 + 0.1 * i
        if row["generator"] == "gen-2":
            row["judge_preference"] = None  # never judged: gen-2 has no scored row
    path = tmp_path / "scored.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["rank", str(path), "--reward-column", "judge_preference", "--bootstrap", "100"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"(?m)^\| 1 \| gen-[01] \| 4 \| 4 \|", printed) and re.search(r"(?m)^\| 2 \| gen-[01] \|", printed)
    assert "| n/a | gen-2 | 4 | 0 |" in printed and "1.000 | gen" not in printed


def test_rank_adaptive_scores_whole_instructions_within_the_budget(tmp_path, data_file, tiny_model_dir, capsys):
    out = tmp_path / "adaptive"
    assert main(["rank", str(data_file), "--base-model", str(tiny_model_dir), "--reward-column", "judge_preference",
                 "--max-examples", "7", "--confidence", "0.95", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "stopped (budget)" in printed and "6 of 12 rows" in printed  # 2 whole instructions × 3 generators
    scored = load_from_disk(str(out / "scored"))
    assert len(scored) == 6 and len(set(scored["instruction_id"])) == 2


def test_rank_with_a_pool_transform_scores_then_rescales_negative_rewards(tmp_path, hf_cache, tiny_model_dir, capsys):
    rows = [dict(r, rm=r["judge_preference"] - 0.5) for r in tiny.sample_rows(4, 2)]  # some negative
    path = tmp_path / "neg.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ranked"
    assert main(["rank", str(path), "--base-model", str(tiny_model_dir), "--reward-column", "rm",
                 "--reward-transform", "minmax", "--bootstrap", "0", "--output-dir", str(out)]) == 0
    table = pd.read_csv(out / "leaderboard.csv")
    assert json.loads((out / "car_config.json").read_text())["reward_transform"] == "minmax"
    assert table["reward"].between(0, 1).all()  # rescaled over the pool, so CAR is defined
    assert "car" not in load_from_disk(str(out / "scored")).column_names  # no per-row CAR under a pool transform


def test_a_refused_model_dry_run_leaves_nothing_and_a_used_folder_is_one_error_line(tmp_path, monkeypatch, capsys):
    """`car-hf push MODEL --dry-run DIR`: a push refused after the copy removes DIR (the same command can be re-run);
    a DIR that exists with files is one error line, exit 2, not a FileExistsError traceback."""
    from car_hf.core.errors import ConfigError
    from car_hf.publishing import hub

    model = tmp_path / "sft"
    model.mkdir()
    (model / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    (model / "adapter_model.safetensors").write_bytes(b"0")

    def refuse(*args, **kwargs):
        raise ConfigError("refused for the test")

    monkeypatch.setattr(hub, "push_model", refuse)
    out = tmp_path / "dry"
    assert main(["push", str(model), "me/model", "--dry-run", str(out)]) == 2
    assert "refused for the test" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    (out / "kept.txt").write_text("mine")
    monkeypatch.undo()
    assert main(["push", str(model), "me/model", "--dry-run", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--dry-run {out} exists and is not empty" in err
    assert (out / "kept.txt").read_text() == "mine"
    assert main(["push", str(model), "me/model", "--dry-run", str(tmp_path / "fresh")]) == 0
    assert (tmp_path / "fresh" / "README.md").exists() and (tmp_path / "fresh" / "adapter_model.safetensors").exists()

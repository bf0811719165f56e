"""car-hf demo: zoo loading (local and the Hub's AlpacaEval layout), reference exclusion, the whole run."""

import json

from datasets import Dataset, load_from_disk

import tiny
from car_hf.cli import main
from car_hf.demo import reference_generators, zoo_from_alpaca_eval


def test_zoo_from_alpaca_eval_joins_outputs_and_annotations():
    outputs = [{"instruction": "q1", "output": "a", "generator": "g1", "dataset": "d"},
               {"instruction": "q1", "output": "b", "generator": "g2", "dataset": "d"},
               {"instruction": "q2", "output": "c", "generator": "g1", "dataset": "d"}]
    annotations = [{"instruction": "q1", "output_1": "ref", "generator_1": "text_davinci_003", "output_2": "a",
                    "generator_2": "g1", "preference": 2.0},
                   {"instruction": "q1", "output_1": "ref", "generator_1": "text_davinci_003", "output_2": "b",
                    "generator_2": "g2", "preference": 1.25}]
    rows = zoo_from_alpaca_eval(outputs, annotations)
    assert [r["instruction_id"] for r in rows] == [0, 0, 1]
    assert [r["judge_preference"] for r in rows] == [1.0, 0.25, None]  # q2 was never judged: missing, kept


def test_reference_generator_is_detected_by_its_constant_preference():
    ds = Dataset.from_list(tiny.zoo_rows(4, ["gpt4_1106_preview", "claude-2.1", "alpaca-7b"]))
    assert reference_generators(ds) == ["gpt4_1106_preview"]


def test_demo_runs_end_to_end_on_real_rows_with_a_tiny_model(tmp_path, tiny_model_dir, capsys):
    zoo = tmp_path / "zoo.jsonl"
    rows = tiny.zoo_rows(6, ["gpt4_1106_preview", "claude-2.1", "alpaca-7b"])
    zoo.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "demo"
    assert main(["demo", "--zoo", str(zoo), "--base-model", str(tiny_model_dir), "--output-dir", str(out),
                 "--score-max-length", "128", "--beta", "0.5", "--max-examples", "8"]) == 0
    printed = capsys.readouterr().out
    assert "left out (the judge's reference: constant preference): gpt4_1106_preview" in printed
    assert "stopped (budget)" in printed
    scored = load_from_disk(str(out / "scored"))
    assert len(scored) == 8 and set(scored["generator"]) == {"claude-2.1", "alpaca-7b"}  # 4 whole instructions
    for name in ("leaderboard.md", "leaderboard.csv", "car_config.json", "ranking.png"):
        assert (out / name).exists()
    config = json.loads((out / "car_config.json").read_text())
    assert config["excluded_reference_generators"] == ["gpt4_1106_preview"]
    assert (config["score_max_length"], config["beta"], config["reward_column"]) == (128, 0.5, "judge_preference")
    assert "beta=0.5, reward_transform=raise, reward_column=judge_preference" in (out / "leaderboard.md").read_text()


def test_demo_without_a_local_zoo_offline_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no shared/data above it
    monkeypatch.delenv("CAR_HF_ZOO", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # conftest sets it too: huggingface_hub refuses to download
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert main(["demo", "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "car-hf demo: error: no local zoo" in err and "tatsu-lab/alpaca_eval" in err and "--zoo" in err
    assert not (tmp_path / "out").exists()

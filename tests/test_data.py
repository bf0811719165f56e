"""car_hf.core.data: loading files / saved datasets / Hub ids, sampling generators and instructions, the ranking folder."""

import gzip
import json
import warnings

import datasets
import pandas as pd
import pytest

from car_hf.core.data import load_data, read_config, save_data
from car_hf.publishing.folders import read_ranking, write_ranking
from car_hf.ranking.leaderboard import rank_generators


def _write_every_format(rows, folder):
    """The same rows as .jsonl.gz, .parquet, .csv and a saved DatasetDict folder."""
    ds = datasets.Dataset.from_list(rows)
    with gzip.open(folder / "rows.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    ds.to_parquet(str(folder / "rows.parquet"))
    ds.to_csv(str(folder / "rows.csv"), index=False)
    datasets.DatasetDict({"test": ds}).save_to_disk(str(folder / "saved"))
    return [folder / "rows.jsonl.gz", folder / "rows.parquet", folder / "rows.csv", folder / "saved"]


def test_every_format_loads_the_same_generators_on_the_same_instructions(tmp_path, hf_cache, rows):
    for source in _write_every_format(rows, tmp_path):
        ds = load_data(str(source), split="test", generators=["gen-2", "gen-0"], max_instructions=2)
        assert [(r["instruction_id"], r["generator"]) for r in ds] == [(0, "gen-0"), (0, "gen-2"), (1, "gen-0"),
                                                                       (1, "gen-2")], source
        assert ds[1]["output"] == rows[2]["output"]
        assert ds[1]["judge_preference"] == pytest.approx(rows[2]["judge_preference"])


def test_max_instructions_falls_back_to_the_instruction_text(tmp_path, hf_cache, rows):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "instruction_id"}) + "\n" for r in rows))
    ds = load_data(str(path), max_instructions=3)
    assert len(ds) == 9 and ds.unique("instruction") == list(dict.fromkeys(r["instruction"] for r in rows))[:3]


def test_bad_sources_and_options_say_what_is_wrong(tmp_path, hf_cache, rows):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"generator\(s\) \['nope'\] not in column 'generator'; present: "
                                         r"\['gen-0', 'gen-1', 'gen-2'\]"):
        load_data(str(path), generators=["gen-0", "nope"])
    with pytest.raises(KeyError, match="column 'model' is missing"):
        load_data(str(path), generators=["gen-0"], by="model")
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(ValueError, match=r"cannot tell the format of .*rows.txt"):
        load_data(str(tmp_path / "rows.txt"))
    with pytest.raises(FileNotFoundError, match="no such file or folder: 'missing.jsonl'"):
        load_data("missing.jsonl")  # looks like a file: never sent to the Hub as a dataset id


def test_an_unreachable_hub_dataset_says_what_to_do(hf_cache):
    # conftest sets HF_DATASETS_OFFLINE=1: datasets raises a builtin ConnectionError, which load_data explains.
    with pytest.raises(FileNotFoundError) as caught:
        load_data("no-such-org/no-such-dataset")
    message = str(caught.value)
    assert "'no-such-org/no-such-dataset' is not a local file or folder" in message
    assert "offline mode is on" in message and "unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE" in message
    assert type(caught.value.__cause__) is ConnectionError


@pytest.mark.parametrize("name, config_file", [("scored.parquet", "scored.parquet.car_config.json"),
                                               ("scored.jsonl", "scored.jsonl.car_config.json"),
                                               ("scored", "scored/car_config.json")])
def test_save_data_writes_the_config_beside_the_data(tmp_path, hf_cache, rows, name, config_file):
    ds = datasets.Dataset.from_list(rows)
    path = save_data(ds, str(tmp_path / name), {"beta": 0.5, "base_model": "tiny"})
    assert (tmp_path / config_file).exists()
    assert read_config(str(path)) == {"beta": 0.5, "base_model": "tiny"}
    assert load_data(str(path))["output"][:] == ds["output"][:]


def test_ranking_folder_round_trip_keeps_integer_ranks_and_warns_nothing(tmp_path, hf_cache, rows):
    for i, row in enumerate(rows):
        row["base_loss"] = 1.0 + 0.1 * i
        if row["generator"] == "gen-2":
            row["judge_preference"] = None  # never judged: no scored row for gen-2
    scored = datasets.Dataset.from_list(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's all-NaN warnings must not reach the user: n_scored says it
        table = rank_generators(scored, reward_column="judge_preference", n_bootstrap=200, config={"base_model": "m"})
    assert table["generator"].tolist()[2] == "gen-2" and table["n_scored"].tolist() == [6, 6, 0]

    folder = tmp_path / "ranking"
    written = write_ranking(folder, table, scored)
    assert [p.name for p in written] == ["leaderboard.md", "leaderboard.csv", "car_config.json", "scored"]
    markdown = (folder / "leaderboard.md").read_text()
    first, second = table["generator"][:2]
    assert f"| 1 | {first} | 6 | 6 |" in markdown and f"| 2 | {second} | 6 | 6 |" in markdown
    assert "| n/a | gen-2 | 6 | 0 |" in markdown
    assert markdown.rstrip().endswith("reward_column=judge_preference, base_model=m, confidence=0.95")

    ds, back, plot = read_ranking(folder)
    assert plot is None and len(ds) == 18 and ds["judge_preference"][:] == scored["judge_preference"][:]
    assert str(back["rank"].dtype) == "Int64" and back["rank"].tolist()[:2] == [1, 2] and back["rank"].isna()[2]
    assert back.attrs["car"]["base_model"] == "m" and back.attrs["car"]["n_bootstrap"] == 200
    pd.testing.assert_series_equal(back["car"], table["car"], check_names=False)


def test_read_ranking_names_the_missing_part(tmp_path):
    (tmp_path / "scored").mkdir()
    with pytest.raises(FileNotFoundError, match=r"leaderboard.csv is missing: push expects a folder written by"):
        read_ranking(tmp_path)

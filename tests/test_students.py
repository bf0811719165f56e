"""Scoring, caching, selecting and training under several students (issue 16, items 1 and 5).

Tiny offline students with different tokenizers and templates (a Llama with the chat template, a Gemma-3 with no
chat template, a Llama with another BPE vocabulary), a tiny reward model, 18 synthetic rows.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, concatenate_datasets, load_from_disk

import tiny

from car_hf import add_base_loss, add_car
from car_hf.core import models
from car_hf.core.config import CARConfig
from car_hf.core.errors import ConfigError, InputError
from car_hf.core.students import (check_student_rows, match_student, student_column, student_data, student_labels,
                                  students_in)
from car_hf.training.selection import select, select_generator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import students_bench  # noqa: E402  (its pass counter)
from test_recipe_commands import load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = dict(max_length=256, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """``(students, reward model folder)``: three student folders, labels llama-chat, gemma-plain, llama-small."""
    folder = tmp_path_factory.mktemp("students")
    chat, plain = tiny.build_tokenizer(), tiny.build_tokenizer(chat_template=False)
    saved, tiny.VOCAB_SIZE = tiny.VOCAB_SIZE, 600  # another BPE vocabulary: another tokenization of the same text
    try:
        small = tiny.build_tokenizer()
    finally:
        tiny.VOCAB_SIZE = saved
    students = [str(tiny.save_tiny(tiny.build_causal_lm(chat, seed=1), chat, folder / "llama-chat")),
                str(tiny.save_tiny(tiny.build_gemma3_lm(plain, seed=2), plain, folder / "gemma-plain")),
                str(tiny.save_tiny(tiny.build_causal_lm(small, seed=3), small, folder / "llama-small"))]
    return students, str(tiny.save_tiny(tiny.build_reward_model(chat), chat, folder / "reward"))


@pytest.fixture
def ds():
    return Dataset.from_list(tiny.sample_rows())


def counting():
    """Rows each loss pass scored, by model folder name; reward rows; models in car_hf's memo during loss passes
    (the benchmark's counter, bench/students_bench.py)."""
    return students_bench.counting(name=lambda spec: Path(spec).name)


# ------------------------------------------------------------------------------------------------ labels and columns
def test_labels_columns_and_matching(tmp_path):
    assert student_labels(["HuggingFaceTB/SmolLM2-135M-Instruct", "google/gemma-3-270m", "q=./m/x.Q4.gguf",
                           str(tmp_path / "ckpt") + "/"]) == ["SmolLM2-135M-Instruct", "gemma-3-270m", "q", "ckpt"]
    assert student_labels({"small": "a/b", "big": "c/d"}) == ["small", "big"]
    assert student_labels("./models/q.Q4_K_M.gguf") == ["q.Q4_K_M"]
    assert student_column("base_rank", "gemma-3-270m") == "base_rank@gemma-3-270m"
    columns = ["base_loss", "reward", "car@x", "base_loss@y", "base_loss_tokens@y", "base_loss@x"]
    assert students_in(columns) == ["y", "x"]
    assert match_student("runs/gemma-3-270m", ["SmolLM2-135M-Instruct", "gemma-3-270m"]) == "gemma-3-270m"
    with pytest.raises(ConfigError, match=r"holds the students \['a', 'b'\], none of which is 'org/c'"):
        match_student("org/c", ["a", "b"])


def test_bad_student_lists_are_one_clear_error(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(ConfigError, match=r"names 'org/a' twice \(positions 0 and 2\)"):
        student_labels(["org/a", "org/b", "org/a"])
    with pytest.raises(ConfigError, match="twice"):  # the same folder spelled two ways
        CARConfig(base_model=[str(tmp_path / "m"), str(tmp_path / "." / "m")])
    with pytest.raises(ConfigError, match=r"share the label 'x': give each a label as 'label=model'"):
        add_car(base_model=["org/x", "other/x"], reward_column="r")
    with pytest.raises(ConfigError, match="empty"):
        student_labels([])
    with pytest.raises(ConfigError, match="base_model_revision pins one model"):
        CARConfig(base_model=["org/a", "org/b"], base_model_revision="v1")
    assert student_labels(["one=org/x", "two=other/x"]) == ["one", "two"]  # explicit labels settle a clash


def test_config_cli_and_recipe_take_several_students_and_keep_one_as_today():
    from car_hf.cli import build_parser, config_from_args

    assert CARConfig(base_model=["org/a", "org/b"]).students == ["org/a", "org/b"]
    one = CARConfig(base_model=["org/a"])
    assert one.base_model == "org/a" and one.cache_key() == CARConfig(base_model="org/a").cache_key()
    args = build_parser().parse_args(["score", "d.jsonl", "-o", "o", "--base-model", "A", "--base-model", "B"])
    assert config_from_args(args).base_model == ["A", "B"]
    args = build_parser().parse_args(["score", "d.jsonl", "-o", "o", "--base_model", "A"])
    assert config_from_args(args).base_model == "A"
    score = load_recipe("score")  # by path, as recipes_score: recipes/ stays off sys.path
    config_file = str(ROOT / "recipes" / "configs" / "score_tiny_cpu.yaml")
    _, config = score.make_parser().parse_args_and_config(["--config", config_file, "--base_model", "A",
                                                           "--base_model", "B"])
    assert config.base_model == ["A", "B"]  # the YAML's base_model replaced, not appended to
    _, config = score.make_parser().parse_args_and_config(["--config", config_file])
    assert config.base_model == "runs/tiny-model"


def test_one_student_columns_and_cache_identity_are_unchanged(zoo, ds):
    students, _ = zoo
    scorer = add_car(base_model=students[0], reward_column="judge_preference", **OPTIONS)
    assert scorer.labels is None and scorer.student_parts() == []
    identity = scorer.cache_identity()
    assert identity == {"transform": "CARScorer", "base_model": scorer.loss.model.fingerprint, "reward": None,
                        "config": scorer.config.cache_key(), "per_row_car": True, "logits_mb": 256}
    assert identity["config"]["base_model"] == students[0]
    scored = scorer.map(ds)
    assert scored.column_names == [*ds.column_names, "base_loss", "base_loss_tokens", "base_loss_truncated",
                                   "base_rank", "reward", "car"]
    assert scored.to_list() == ds.map(scorer, batched=True, with_indices=True).to_list()


# ------------------------------------------------------------------------------------------------ values
def test_each_students_columns_equal_its_own_single_run_and_rewards_are_scored_once(zoo, ds):
    students, reward = zoo
    labels = ["llama-chat", "gemma-plain", "llama-small"]
    options = dict(reward_model=reward, reward_transform="sigmoid", **OPTIONS)
    models.clear_model_cache()
    with counting() as joint:
        scorer = add_car(base_model=students, **options)
        scored = scorer.map(ds, batch_size=8)
    assert scorer.labels == labels and joint["reward"] == len(ds)  # the rewards: once
    assert joint["loss"] == {label: len(ds) for label in labels} and max(joint["held"]) == 1  # one model at a time
    assert {student_column(c, label) for c in ("base_loss", "base_rank", "car") for label in labels} \
        <= set(scored.column_names) and "base_loss" not in scored.column_names and "reward" in scored.column_names
    per_batch = ds.map(add_car(base_model=students, **options), batched=True, batch_size=8, with_indices=True)
    tokens = {}
    for student, label in zip(students, labels):
        single = add_car(base_model=student, **options).map(ds, batch_size=8)
        for column in ("base_loss", "base_rank", "car", "base_loss_tokens"):
            for both in (scored, per_batch):
                np.testing.assert_allclose(both[student_column(column, label)], single[column], rtol=0, atol=1e-5)
        np.testing.assert_allclose(scored["reward"], single["reward"], rtol=0, atol=1e-6)
        tokens[label] = list(single["base_loss_tokens"])
    # Each student's own template and tokenizer: three different tokenizations of the same responses.
    assert tokens["llama-chat"] != tokens["gemma-plain"] != tokens["llama-small"] != tokens["llama-chat"]
    record = scorer.scoring_config()
    assert record["base_model"] == students and [s["label"] for s in record["students"]] == labels
    losses = add_base_loss(students, **OPTIONS).map(ds)
    np.testing.assert_allclose(losses["base_loss@gemma-plain"], scored["base_loss@gemma-plain"], atol=1e-12)


# ------------------------------------------------------------------------------------------------ reuse
def test_a_cached_job_that_gains_a_student_scores_only_that_student(zoo, ds, tmp_path):
    """recipes/score.py's path: each part (rewards, each student) is a cache key of its own under output_dir/cache."""
    score = load_recipe("score")  # by path, as recipes_score: recipes/ stays off sys.path
    students, reward = zoo
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ds.to_list()))
    args = score.ScoreArguments(dataset_name=str(data), output_dir=str(tmp_path / "out"), chunk_rows=6,
                                n_bootstrap=50, cpu=True)
    config = CARConfig(base_model=students[:2], reward_model=reward, reward_transform="sigmoid", score_max_length=256,
                       score_dtype="float32")
    with counting() as first:
        score.main(args, config)
    assert first["loss"] == {"llama-chat": 18, "gemma-plain": 18} and first["reward"] == 18
    with counting() as second:
        score.main(args, dataclasses.replace(config, base_model=students))
    assert second["loss"] == {"llama-small": 18} and second["reward"] == 0  # the rest came from the cache
    scored = load_from_disk(str(tmp_path / "out" / "scored"))
    assert students_in(scored.column_names) == ["llama-chat", "gemma-plain", "llama-small"]
    assert (tmp_path / "out" / "matrix.md").is_file()
    alone = add_car(base_model=students[2], reward_model=reward, reward_transform="sigmoid", **OPTIONS).map(ds)
    np.testing.assert_allclose(scored["base_loss@llama-small"], alone["base_loss"], atol=1e-5)


def test_prescored_students_are_reused_after_a_tokenizer_check(zoo, ds):
    students, _ = zoo
    options = dict(reward_column="judge_preference", **OPTIONS)
    first = add_car(base_model=students[:2], **options).map(ds)
    with counting() as counts:
        more = add_car(base_model=students, **options).map(first)
    assert counts["loss"] == {"llama-small": len(ds)}  # the two pre-scored students: no loss pass
    assert more.column_names[:len(first.column_names)] == first.column_names  # every column kept
    np.testing.assert_allclose(more["car@llama-chat"], first["car@llama-chat"], atol=1e-12)
    empty = add_car(base_model=students[:2], **options).map(ds.select([]))  # 0 rows: every column, typed
    assert len(empty) == 0 and empty.column_names == first.column_names
    assert empty.features["car@gemma-plain"].dtype == "float64"
    # The same label for another student (another tokenizer): its recorded token counts disagree.
    relabelled = add_car(base_model=["llama-chat=" + students[2], students[1]], **options)
    with pytest.raises(InputError, match=r"column 'base_loss_tokens@llama-chat': the pre-scored token counts disagree "
                                         r"with the tokenizer of student 'llama-chat' \(.*llama-small\)"):
        relabelled.map(first)


def test_rows_missing_a_students_columns_are_named_and_nothing_is_dropped(zoo, ds):
    students, _ = zoo
    options = dict(reward_column="judge_preference", **OPTIONS)
    both = add_car(base_model=students[:2], **options).map(ds.select(range(12)))
    one = add_car(base_model=["llama-chat=" + students[0], "x=org/unused"], **options).loss.parts[0]
    only_first = ds.select(range(12, 18)).map(one, batched=True, with_indices=True)  # llama-chat's columns only
    only_first = only_first.add_column("reward", only_first["judge_preference"])
    mixed = concatenate_datasets([both, only_first])  # rows 12-17 were never scored under gemma-plain
    with pytest.raises(InputError, match=r"rows \[12, 13, 14, 15, 16, 17\], column 'base_loss_tokens@gemma-plain': 6 of 18 "
                                         r"rows were never scored under student 'gemma-plain'"):
        select_generator(mixed, student="gemma-plain", n_bootstrap=0)
    with pytest.raises(InputError, match="never scored under student 'gemma-plain'"):
        check_student_rows(mixed)
    name, rows = select_generator(mixed, student="llama-chat", n_bootstrap=0)
    assert len(mixed) == 18 and set(rows.column_names) == set(mixed.column_names)
    with counting() as counts:  # scoring it again scores the incomplete student, on every row
        again = add_car(base_model=students[:2], **options).map(mixed)
    assert counts["loss"] == {"gemma-plain": 18} and check_student_rows(again) == ["llama-chat", "gemma-plain"]


# ------------------------------------------------------------------------------------------------ selection, training
def scored_for_two():
    """s1 prefers generator a, s2 prefers b (same rewards)."""
    return Dataset.from_dict({
        "instruction_id": [0, 0, 1, 1, 2, 2], "generator": ["a", "b"] * 3, "reward": [0.8, 0.7, 0.9, 0.8, 0.7, 0.7],
        "base_loss@s1": [0.5, 2.0, 0.6, 2.2, 0.4, 2.1], "base_loss@s2": [2.5, 0.5, 2.4, 0.3, 2.6, 0.4],
        "instruction": ["q0", "q0", "q1", "q1", "q2", "q2"], "output": ["x"] * 6})


def test_select_generator_picks_the_winner_of_the_student_being_trained():
    ds = scored_for_two()
    assert select_generator(ds, student="s1", n_bootstrap=0)[0] == "a"
    name, rows, table = select_generator(ds, student="org/s2", n_bootstrap=0, return_table=True)
    assert name == "b" and rows.column_names == ds.column_names and table.attrs["car"]["student"] == "s2"
    with pytest.raises(ConfigError, match=r"holds the students \['s1', 's2'\]: say which one is trained"):
        select_generator(ds, n_bootstrap=0)
    with pytest.raises(ConfigError, match=r"holds the students \['s1', 's2'\], none of which is 'org/s3'"):
        select(ds, "generator", student="org/s3", n_bootstrap=0)
    chosen = select(ds, "generator", student="s2", n_bootstrap=0)
    assert chosen.summary["student"] == "s2" and chosen.summary["generator"] == "b"
    top = select(ds, "top_k", 2, student="s1")
    assert list(top.rows["generator"]) == ["a", "a"] and top.summary["student"] == "s1"
    assert top.rows.column_names == ds.column_names  # the rows as they are: every student's columns kept
    view, label = student_data(ds, "s2")
    assert label == "s2" and list(view["base_loss"]) == list(ds["base_loss@s2"])


def test_the_sft_recipe_matches_its_model_to_a_student_before_any_model_loads():
    from car_hf.training.sft import SFTScriptArguments, training_config, training_student

    ds = scored_for_two()
    args = SFTScriptArguments(dataset_name="x.jsonl", select="generator")
    assert training_student(ds, args, "runs/s2") == "s2"
    assert training_student(ds, dataclasses.replace(args, student="s1"), "runs/other") == "s1"
    assert training_student(ds, dataclasses.replace(args, rescore=True), "runs/s2") is None
    with pytest.raises(ConfigError, match=r"holds the students \['s1', 's2'\], none of which is 'org/big'"):
        training_student(ds, args, "org/big")

    class Training:
        max_length, device, trust_remote_code = 128, "cpu", False

    class Model:
        model_name_or_path, model_revision, dtype = "org/s1", None, None

    with pytest.raises(ConfigError, match="recipes/sft.py scores the model it tunes"):
        training_config(CARConfig(base_model=["org/s1", "org/s2"]), Training, Model)


def test_car_hf_score_takes_several_students(zoo, ds, tmp_path, capsys):
    from car_hf.cli import main

    students, _ = zoo
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ds.to_list()))
    out = tmp_path / "scored.parquet"
    assert main(["score", str(data), "--base-model", students[0], "--base-model", students[1], "--reward-column",
                 "judge_preference", "--score-max-length", "256", "-o", str(out)]) == 0
    scored = Dataset.from_parquet(str(out))
    assert students_in(scored.column_names) == ["llama-chat", "gemma-plain"] and len(scored) == 18
    record = json.loads((tmp_path / "scored.parquet.car_config.json").read_text())
    assert record["base_model"] == students[:2]
    assert main(["score", str(data), "--base-model", students[0], "--base-model", students[0], "-o", str(out)]) == 2
    assert "twice" in capsys.readouterr().err


@pytest.mark.slow
def test_students_bench_quick_counts_k_loss_passes_and_one_reward_pass():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "students_bench.py"), "--quick"], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "reward passes: joint 1, separate 3; loss passes: joint 3, separate 3" in result.stdout
    assert "checks (k loss passes, 1 reward pass, 1 model in memory): OK" in result.stdout


def test_a_nan_loss_that_became_null_in_a_parquet_round_trip_is_still_a_scored_row(tmp_path):
    """An empty answer's NaN loss turns into a null through pandas/parquet; its token count (0) says it was scored."""
    import pandas as pd
    from datasets import Dataset

    from car_hf.core.students import check_student_rows

    frame = pd.DataFrame({"base_loss@a": [1.0, float("nan")], "base_loss_tokens@a": [4, 0]})
    frame.to_parquet(tmp_path / "scored.parquet")
    back = Dataset.from_parquet(str(tmp_path / "scored.parquet"))
    assert back["base_loss@a"] == [1.0, None]  # the round trip made the NaN a null
    assert check_student_rows(back) == ["a"]
    never = Dataset.from_dict({"base_loss@a": [1.0, None], "base_loss_tokens@a": [4, None]})
    with pytest.raises(InputError, match=r"rows \[1\], column 'base_loss_tokens@a': 1 of 2 rows were never scored"):
        check_student_rows(never)

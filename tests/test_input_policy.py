"""The README's bad-input table ("Bad input: policies"), row by row, through every entry point a value enters by.

Each entry point gets the same 8 rows (generators a and b on instructions 0-3; row 2 is generator a's answer to
instruction 1) with one bad value at row 2, and must answer as the table says: an InputError (exit status 2 and
one line on the CLI) naming row 2 and the column, before any model loads; or, for None/NaN rewards, the policy's
result (NaN reward and CAR, left out of the means: ``n`` 4 vs ``n_scored`` 3 for generator a).
"""

import json
import math
import re

import pandas as pd
import pytest
import trl
from datasets import Dataset, Features, Json, Value, load_dataset

from car_hf import CARFilter, InputError, add_base_loss, add_car, add_reward, rank_adaptive, rank_generators, select_generator
from car_hf.core import models
from car_hf.evaluation.student import EvaluationConfig
from car_hf.evaluation.pilot import run_pilot
from car_hf.training.selection import select
from car_hf.ranking.stopping import instruction_cells, stop_decision
from car_hf.generation.tasks import ANSWER_MATCH
from car_hf.generation.teacher import TeacherConfig
from car_hf.ranking.trial import rank_teachers

GOOD = 0.5
# Table row → (the column's values: row 2 bad, the rest GOOD; the message's row; its problem). Text in a numeric
# column is a JSON-typed column (as datasets loads a JSONL file mixing numbers and text); numbers stored as text
# are a whole text column, whose first row is the first one refused.
CASES = {
    "text": (["good" if i == 2 else GOOD for i in range(8)], 2,
             r"a reward must be a number, got 'good'"),
    "numbers as text": (["0.6" if i == 2 else str(GOOD) for i in range(8)], 0,
                        r"a reward must be a number, got '0\.5' \(8 rows are not numbers: 0, 1, 2, 3, 4, \.\.\.\)"),
    "+inf": ([math.inf if i == 2 else GOOD for i in range(8)], 2, r"the reward is infinite \(inf\)"),
    "-inf": ([-math.inf if i == 2 else GOOD for i in range(8)], 2, r"the reward is infinite \(-inf\)"),
    "None": ([None if i == 2 else GOOD for i in range(8)], None, None),
    "NaN": ([math.nan if i == 2 else GOOD for i in range(8)], None, None),
}


DATA = {"column": "judge"}  # the reward column the rows hold (a test renames it to leave "judge" missing)


def rows(column=None, values=None):
    column = column or DATA["column"]
    values = values if values is not None else [GOOD] * 8
    return [{"instruction_id": i // 2, "instruction": f"Question {i // 2}?", "generator": "ab"[i % 2],
             "output": f"Answer {i} from {'ab'[i % 2]}.", column: values[i], "base_loss": 1.0 + i % 2}
            for i in range(8)]


def dataset(column=None, values=None):
    """The rows as a Dataset, the reward column typed as datasets types it when reading such a JSONL file."""
    column = column or DATA["column"]
    data = rows(column, values)
    kinds = {type(r[column]) for r in data}
    if str in kinds:
        feature = Value("string") if kinds == {str} else Json()
        features = Features({**Dataset.from_list(rows()).features, column: feature})
        return Dataset.from_list(data, features=features)
    return Dataset.from_list(data)


def write_jsonl(path, data):
    path.write_text("".join(json.dumps(r) + "\n" for r in data))  # json writes inf/NaN as Infinity/NaN
    return str(path)


def judge_reward(prompts, completions, judge, **columns):
    """A reward function (TRL's convention) returning the judge column as it is."""
    return judge


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(models, "load_model", refuse)


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the input was accepted: training started")

    monkeypatch.setattr(trl.SFTTrainer, "__init__", refuse)


def a_counts(table):
    """(n, n_scored) of generator a in a leaderboard."""
    row = table.set_index("generator").loc["a"]
    return int(row["n"]), int(row["n_scored"])


# ------------------------------------------------------------------------------------------------ the API
# name → (run(values, fixtures) → result, the message's column, what the None/NaN policy gives)
def _add_car(values, f):
    return dataset(values=values).map(add_car(base_model=f.lm, reward_column="judge"), batched=True,
                                      with_indices=True)


def _add_reward(values, f):
    return dataset(values=values).map(add_reward(judge_reward), batched=True, with_indices=True)


def _rank_adaptive(values, f):
    def losses(batch, indices):  # a stand-in scorer: the rewards enter through reward_column
        return {"base_loss": batch["base_loss"]}

    return rank_adaptive(dataset(values=values), losses, reward_column="judge", n_bootstrap=50).table


def _stopping(values, f):
    cells = instruction_cells(dataset(values=values), reward_column="judge")
    stop_decision(cells, beta=1.0, n_bootstrap=50)
    return cells


API = {
    "add_car": (_add_car, "judge",
                lambda out: math.isnan(out[2]["reward"]) and math.isnan(out[2]["car"]) and len(out) == 8),
    "add_reward(function)": (_add_reward, r"reward function [\w.]*judge_reward", lambda out: math.isnan(out[2]["reward"])),
    "rank_generators(Dataset)": (lambda v, f: rank_generators(dataset(values=v), reward_column="judge",
                                                              n_bootstrap=50), "judge", lambda t: a_counts(t) == (4, 3)),
    "rank_generators(DataFrame)": (lambda v, f: rank_generators(pd.DataFrame(rows(values=v)), reward_column="judge",
                                                                n_bootstrap=0), "judge", lambda t: a_counts(t) == (4, 3)),
    "rank_generators(dict)": (lambda v, f: rank_generators(pd.DataFrame(rows(values=v)).to_dict("list"),
                                                           reward_column="judge", n_bootstrap=0),
                              "judge", lambda t: a_counts(t) == (4, 3)),
    "stopping rule": (_stopping, "judge", lambda cells: cells.count.sum() == 7),
    "rank_adaptive": (_rank_adaptive, "judge", lambda t: a_counts(t) == (4, 3)),
    "select_generator": (lambda v, f: select_generator(dataset(values=v), reward_column="judge", n_bootstrap=0,
                                                       return_table=True)[2], "judge", lambda t: a_counts(t) == (4, 3)),
    "select(generator)": (lambda v, f: select(dataset(values=v), "generator", reward_column="judge",
                                              n_bootstrap=0).leaderboard, "judge", lambda t: a_counts(t) == (4, 3)),
    "CARFilter(top_k)": (lambda v, f: CARFilter(top_k=8, reward_column="judge").fit(dataset(values=v)).summary(),
                         "judge", lambda s: s["rows_kept"] == 7 and s["rows_without_car"] == 1),
    "CARFilter(likeliest, min_reward)": (
        lambda v, f: CARFilter(group_by="instruction_id", keep="likeliest", min_reward=0.0,
                               reward_column="judge").fit(dataset(values=v)).summary(),
        "judge", lambda s: s["rows_below_min_reward"] == 1 and s["rows_kept"] == 4),
}


class Models:
    def __init__(self, causal_lm, tokenizer):
        self.lm = (causal_lm, tokenizer)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("entry", list(API))
def test_each_table_row_through_each_api_entry_point(entry, case, causal_lm, tokenizer, monkeypatch):
    run, column, policy = API[entry]
    values, row, problem = CASES[case]
    fixtures = Models(causal_lm, tokenizer)
    if problem is None:
        assert policy(run(values, fixtures))
        return
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model loaded before the error"))
    with pytest.raises(InputError, match=rf"^row {row}, column '{column}': {problem}"):
        run(values, fixtures)


MISSING = {**{e: API[e][0] for e in API if e not in ("add_reward(function)", "rank_adaptive")},
           # rank_adaptive's stand-in scorer could add the column; add_car reads it, and says so before its model
           "rank_adaptive(add_car)": lambda v, f: rank_adaptive(dataset(), add_car(base_model=f.lm,
                                                                                     reward_column="judge"))}


@pytest.mark.parametrize("entry", list(MISSING))
def test_a_missing_reward_column_is_named_with_the_columns_present(entry, causal_lm, tokenizer, monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model loaded before the error"))
    monkeypatch.setitem(DATA, "column", "stars")
    with pytest.raises(InputError, match=r"column 'judge' \(reward_column: rewards of each row\) is missing; "
                                         r"the dataset has columns \[.*'stars'"):
        MISSING[entry](None, Models(causal_lm, tokenizer))


def test_a_missing_generator_column_is_named(monkeypatch):
    ds = dataset().remove_columns("generator")
    for call in (lambda: rank_generators(ds, reward_column="judge"),
                 lambda: select_generator(ds, reward_column="judge"),
                 lambda: instruction_cells(ds, reward_column="judge"),
                 lambda: rank_adaptive(ds, lambda b, i: {}, reward_column="judge")):
        with pytest.raises(InputError, match=r"column 'generator' \(by: the generator of each row\) is missing; "
                                             r"the dataset has columns \['instruction_id', 'instruction', 'output'"):
            call()


@pytest.mark.parametrize("scorer", ["add_car", "add_base_loss", "add_reward"])
def test_response_rows_through_the_scorers(scorer, causal_lm, tokenizer, reward_model, monkeypatch):
    make = {"add_car": lambda **o: add_car(base_model=(causal_lm, tokenizer), reward_column="judge", **o),
            "add_base_loss": lambda **o: add_base_loss((causal_lm, tokenizer), **o),
            "add_reward": lambda **o: add_reward((reward_model, tokenizer), **o)}[scorer]
    # An empty or whitespace response: base_loss NaN, base_loss_tokens 0 (reward NaN), every row kept, in order.
    empty = [dict(r, output="  " if i == 2 else r["output"]) for i, r in enumerate(rows())]
    out = Dataset.from_list(empty).map(make(), batched=True, with_indices=True)
    assert len(out) == 8 and out["instruction_id"][:] == [i // 2 for i in range(8)]
    if scorer != "add_reward":
        assert math.isnan(out[2]["base_loss"]) and out[2]["base_loss_tokens"] == 0
        assert all(math.isfinite(v) for i, v in enumerate(out["base_loss"]) if i != 2)
    if scorer == "add_car":  # the judge's reward is kept; CAR needs the loss
        assert out[2]["reward"] == GOOD and math.isnan(out[2]["car"])
    if scorer == "add_reward":  # the reward model scores no empty answer
        assert math.isnan(out[2]["reward"])
    # A None response, and a missing response column: an InputError before the model pass.
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model loaded before the error"))
    missing = [dict(r, output=None if i == 2 else r["output"]) for i, r in enumerate(rows())]
    with pytest.raises(InputError, match=r"^row 2, column 'output': "):
        Dataset.from_list(missing).map(make(), batched=True, with_indices=True)
    with pytest.raises(InputError, match=r"'answer'.*\['instruction_id', 'instruction', 'generator', 'output'"):
        dataset().map(make(response="answer"), batched=True)


def test_rank_teachers_refuses_an_infinite_reward_from_its_scorer():
    class Canned:
        def __init__(self, name):
            self.name = name

        def __call__(self, batch, indices):
            return {"response": [f"{self.name}: {q}" for q in batch["instruction"]]}

    def scorer(batch, indices):
        return {"reward": [math.inf if i == 3 else 0.5 for i in batch["instruction_id"]],
                "base_loss": [1.0] * len(indices)}

    questions = Dataset.from_dict({"instruction": [f"q{i}" for i in range(30)]})
    with pytest.raises(InputError, match=r"column 'reward': the reward is infinite \(inf\) \(2 rows are infinite"):
        rank_teachers(questions, [Canned("x"), Canned("y")], scorer, min_instructions=10, n_bootstrap=20)


# ------------------------------------------------------------------------------------------------ the pilot
def _pilot_files(tmp_path, values):
    pool = [dict(r, response=r.pop("output")) for r in rows("reward", values)]
    heldout = [{"instruction": f"Held out {i}?", "answer": str(i)} for i in range(3)]
    return write_jsonl(tmp_path / "pool.jsonl", pool), write_jsonl(tmp_path / "heldout.jsonl", heldout)


@pytest.mark.parametrize("case", list(CASES))
def test_each_table_row_through_the_pilots_teacher_choice(case, tmp_path, tiny_model_dir, no_training, capsys):
    values, row, problem = CASES[case]
    pool, heldout = _pilot_files(tmp_path, values)
    api = lambda: run_pilot(load_dataset("json", data_files=pool, split="train"), None, None, None,  # noqa: E731
                            EvaluationConfig(generation=TeacherConfig(max_new_tokens=2), metric=ANSWER_MATCH,
                                             n_bootstrap=0), n_instructions=4, output_dir=tmp_path / "api")
    cli = ["pilot", "--config", "recipes/configs/pilot_tiny_cpu.yaml", "--model_name_or_path", str(tiny_model_dir),
           "--dataset_name", pool, "--heldout_name", heldout, "--n_instructions", "4", "--output_dir",
           str(tmp_path / "cli")]
    if problem is None:  # accepted: the pilot goes on to train (stopped there by no_training)
        with pytest.raises(AssertionError, match="training started"):
            main(cli)
        return
    with pytest.raises(InputError, match=rf"^row {row}, column 'reward': {problem}"):
        api()
    capsys.readouterr()
    assert main(cli) == 2
    assert re.fullmatch(rf"row {row}, column 'reward': {problem}.*", _cli_error(capsys, "pilot"))


# ------------------------------------------------------------------------------------------------ the CLI
def main(argv):
    from car_hf.cli import main as cli_main

    return cli_main(argv)


def _cli_error(capsys, command):
    """The one error line on stderr (datasets' progress bars aside), without its ``car-hf <command>: error:``."""
    err = capsys.readouterr().err
    lines = [line.split("\r")[-1] for line in err.split("\n")]
    errors = [line for line in lines if line.startswith("car-hf")]
    assert len(errors) == 1 and errors[0].startswith(f"car-hf {command}: error: ") and "Traceback" not in err, err
    return errors[0].removeprefix(f"car-hf {command}: error: ")


@pytest.mark.parametrize("case", list(CASES))
def test_each_table_row_through_the_cli(case, tmp_path, tiny_model_dir, monkeypatch, capsys):
    values, row, problem = CASES[case]
    scored = write_jsonl(tmp_path / "scored.jsonl", rows(values=values))
    unscored = write_jsonl(tmp_path / "unscored.jsonl", [{k: v for k, v in r.items() if k != "base_loss"}
                                                         for r in rows(values=values)])
    model = ["--base-model", str(tiny_model_dir), "--reward-column", "judge"]
    commands = {
        "rank": ["rank", scored, "--reward-column", "judge", "--bootstrap", "0", "--output-dir", str(tmp_path / "r")],
        "rank (scoring)": ["rank", unscored, *model, "--bootstrap", "0", "--output-dir", str(tmp_path / "s")],
        "rank (adaptive)": ["rank", unscored, *model, "--adaptive", "--bootstrap", "20",
                            "--output-dir", str(tmp_path / "t")],
        "score": ["score", unscored, *model, "-o", str(tmp_path / "scored.parquet")],
    }
    if problem is None:
        for name, argv in commands.items():
            assert main(argv) == 0, name
        for folder in ("r", "s", "t"):
            table = pd.read_csv(tmp_path / folder / "leaderboard.csv")
            assert a_counts(table) == (4, 3), folder
        out = load_dataset("parquet", data_files=str(tmp_path / "scored.parquet"), split="train")
        assert math.isnan(out[2]["reward"]) and math.isnan(out[2]["car"]) and len(out) == 8
        return
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model loaded before the error"))
    capsys.readouterr()
    for name, argv in commands.items():
        assert main(argv) == 2, name
        assert re.fullmatch(rf"row {row}, column 'judge': {problem}", _cli_error(capsys, argv[0])), name


def test_cli_missing_columns_are_named_before_any_model_loads(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model loaded before the error"))
    unscored = write_jsonl(tmp_path / "unscored.jsonl", [{k: v for k, v in r.items() if k != "base_loss"}
                                                         for r in rows()])
    model = ["--base-model", str(tiny_model_dir)]
    assert main(["score", unscored, *model, "--reward-column", "stars", "-o", str(tmp_path / "x.parquet")]) == 2
    assert _cli_error(capsys, "score").startswith("column 'stars' (reward_column: rewards of each row) is missing; "
                                                  "the dataset has columns ['instruction_id'")
    assert main(["rank", unscored, *model, "--reward-column", "judge", "--by", "teacher"]) == 2
    assert _cli_error(capsys, "rank").startswith("column 'teacher' (--by: the generator of each row) is missing")
    assert main(["score", unscored, *model, "--reward-column", "judge", "--response-column", "answer",
                 "-o", str(tmp_path / "x.parquet")]) == 2
    assert "'answer'" in _cli_error(capsys, "score")
    assert not (tmp_path / "x.parquet").exists()


def test_cli_a_0_row_dataset_is_scored_into_typed_columns_and_not_ranked(tmp_path, tiny_model_dir, capsys):
    import pyarrow.parquet as pq

    unscored = write_jsonl(tmp_path / "unscored.jsonl", [{k: v for k, v in r.items() if k != "base_loss"}
                                                         for r in rows()])
    model = ["--base-model", str(tiny_model_dir), "--reward-column", "judge", "--max-instructions", "0"]
    out = tmp_path / "empty.parquet"
    assert main(["score", unscored, *model, "-o", str(out)]) == 0
    schema = pq.read_schema(out)  # (datasets reads no 0-row file back: "corresponds to no data")
    assert {name: str(schema.field(name).type) for name in ("reward", "base_loss", "base_loss_tokens",
                                                            "base_loss_truncated", "base_rank", "car")} == {
        "reward": "double", "base_loss": "double", "base_loss_tokens": "int64", "base_loss_truncated": "bool",
        "base_rank": "double", "car": "double"}
    assert pq.read_metadata(out).num_rows == 0
    capsys.readouterr()
    assert main(["rank", unscored, *model]) == 2  # scored (0 rows, every column), then a clear word: no KeyError
    assert _cli_error(capsys, "rank") == "the data has no rows: there is nothing to rank"

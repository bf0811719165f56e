"""car_hf.evaluation.pilot: the CI-sized pilot (tiny student, scripted teachers, seconds) and its refusals of bad input.

What the CI-sized pilot checks: three scripted teachers answer the same 40 letter-counting instructions — one
always right, one right on two thirds and "9" on the rest, one always "9" (never a right count: no word in
make_tasks has a letter 9 times). A tiny random student is LoRA-tuned on each for a few epochs; that is enough to
copy the answer *format* and the most common answer (a one-digit count; most letters occur once), so the students
of the first two teachers get some held-out counts right, while the all-"9" teacher's student answers "9" and
gets none: it must come out last. The report's ρ must equal scipy's on the same numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import trl
from datasets import Dataset
from scipy.stats import spearmanr
from trl import ModelConfig, SFTConfig

import car_hf.evaluation.pilot
from car_hf import ConfigError, InputError
from car_hf.evaluation.student import EvaluationConfig
from car_hf.evaluation.pilot import BASELINE, choose_teachers, run_pilot
from car_hf.ranking.leaderboard import rank_generators
from car_hf.generation.tasks import ANSWER_MATCH, make_tasks
from car_hf.generation.teacher import TeacherConfig
from test_recipe_commands import load_recipe

REPO = Path(__file__).resolve().parents[1]
N_TRAIN = 40
LOSS = {"right": 2.0, "mostly right": 1.5, "all wrong": 1.0}  # CAR: right .33, mostly right .27, all wrong 0


pilot_recipe = load_recipe("pilot")


@pytest.fixture(scope="module")
def tasks():
    return make_tasks(N_TRAIN + 20, seed=0, types=["count_letters"])


def scripted_pool(tasks, teachers=LOSS) -> Dataset:
    rows = []
    for name, loss in teachers.items():
        for i, task in enumerate(tasks.select(range(N_TRAIN))):
            wrong = name == "all wrong" or (name == "mostly right" and i % 3 == 2)
            rows.append({"instruction": task["instruction"], "response": "9" if wrong else task["answer"],
                         "generator": name, "reward": 0.0 if wrong else 1.0, "base_loss": loss})
    return Dataset.from_list(rows)


def heldout_of(tasks):
    return tasks.select(range(N_TRAIN, len(tasks)))


def budget(tmp_path, tiny_model_dir, **overrides):
    training_args = SFTConfig(output_dir=str(tmp_path / "unused"), per_device_train_batch_size=8, num_train_epochs=3,
                              learning_rate=1e-2, bf16=False, activation_checkpointing=False, use_cpu=True,
                              report_to=[], save_strategy="no", logging_steps=100, seed=0, **overrides)
    model_args = ModelConfig(model_name_or_path=str(tiny_model_dir), use_peft=True, lora_r=8, lora_alpha=16)
    model_args.lora_target_modules = "all-linear"  # the tiny student learns the answer format within 15 steps
    return training_args, model_args


EVALUATION = EvaluationConfig(generation=TeacherConfig(max_new_tokens=4), metric=ANSWER_MATCH, n_bootstrap=200)


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a trainer is built."""

    def refuse(*args, **kwargs):
        raise AssertionError("a trainer was built before the input error was reported")

    monkeypatch.setattr(trl.SFTTrainer, "__init__", refuse)


# ------------------------------------------------------------------------------------------------ the CI-sized pilot
@pytest.fixture
def one_thread():
    """One torch thread: the tiny student gains nothing from two, and on a busy 2-core machine the second thread
    makes the pilot several times slower (12 s vs. 50-150 s measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_recipe(tmp_path, tiny_model_dir, pool, heldout, *overrides: str):
    """recipes/pilot.py with recipes/configs/pilot_tiny_cpu.yaml, in this process."""
    pool.to_json(tmp_path / "pool.jsonl")
    heldout.to_json(tmp_path / "heldout.jsonl")
    args = pilot_recipe.make_parser().parse_args_and_config([
        "--config", str(REPO / "recipes" / "configs" / "pilot_tiny_cpu.yaml"), "--model_name_or_path",
        str(tiny_model_dir), "--dataset_name", str(tmp_path / "pool.jsonl"), "--heldout_name",
        str(tmp_path / "heldout.jsonl"), "--output_dir", str(tmp_path / "pilot"), *overrides])
    return pilot_recipe.main(*args)


def test_ci_sized_pilot_ranks_the_all_wrong_teacher_last_and_resumes(tmp_path, tasks, tiny_model_dir, hf_cache,
                                                                     monkeypatch, one_thread):
    start = time.time()
    report = run_recipe(tmp_path, tiny_model_dir, scripted_pool(tasks), heldout_of(tasks))
    print(f"CI-sized pilot: {time.time() - start:.1f} s")

    t = report.teachers.set_index("teacher")
    assert set(t.index) == set(LOSS)
    assert t.loc["all wrong", "realized"] == 0.0
    assert t.loc["all wrong", "realized"] < t.drop(index="all wrong")["realized"].min()
    assert report.teachers["teacher"].iloc[-1] == "all wrong" and t.loc["all wrong", "realized_rank"] == 3
    assert t.loc["right", "chosen_because"] == "CAR rank 1" and t.loc["all wrong", "chosen_because"] == "CAR rank 3"
    assert (t["n_items"] == 20).all() and (t["realized_low"] <= t["realized"]).all()
    # The report's ρ is scipy's on the same numbers.
    order = report.teachers
    expected = spearmanr(order["car"], order["realized"]).statistic
    assert report.rho("CAR") == pytest.approx(expected)
    assert report.rho("Reward") == pytest.approx(spearmanr(order["reward"], order["realized"]).statistic)
    assert report.spearman.set_index("metric").loc["CAR", "rho_low"] <= report.rho("CAR") + 1e-12
    assert report.paired["first"] == order["teacher"].iloc[0] and report.paired["n"] == 20
    assert report.baseline["n"] == 20 and BASELINE in report.evaluations
    assert report.budget["n_instructions"] == N_TRAIN and report.budget["lora_r"] == 8
    assert report.cost["total"]["wall_seconds"] > 0 and t["train_seconds"].notna().all()
    for name in ("report.md", "report.json", "teachers.csv", "spearman.csv", "items.csv", "pilot.png", "README.md"):
        assert (tmp_path / "pilot" / name).is_file()
    assert "## Pilot: predicted vs. realized (accuracy)" in (tmp_path / "pilot" / "report.md").read_text()
    card = (tmp_path / "pilot" / "README.md").read_text()
    assert "- car-pilot" in card and "![predicted CAR vs. realized performance](pilot.png)" in card

    # Resumable per teacher: a rerun trains and evaluates nothing, and reports the same numbers.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished student was trained or evaluated again")

    monkeypatch.setattr(trl.SFTTrainer, "__init__", refuse)
    monkeypatch.setattr(car_hf.evaluation.pilot, "evaluate_student", refuse)
    again = run_recipe(tmp_path, tiny_model_dir, scripted_pool(tasks), heldout_of(tasks))
    assert again.teachers["realized"].tolist() == report.teachers["realized"].tolist()
    assert again.cost["right"]["train_seconds"] == report.cost["right"]["train_seconds"]
    assert again.cost["right"]["training_reused"] and again.cost[BASELINE]["evaluation_reused"]
    assert not report.cost["right"]["training_reused"]
    assert again.cost["total"]["compute_seconds"] == report.cost["total"]["compute_seconds"]
    assert "reusing 7 finished step(s) from the cache" in (tmp_path / "pilot" / "report.md").read_text()
    # Fewer teachers: their students are the same ones, reused.
    two = run_recipe(tmp_path, tiny_model_dir, scripted_pool(tasks), heldout_of(tasks), "--teachers", "right",
                     "all wrong")
    assert two.teachers["teacher"].tolist() == ["right", "all wrong"] and two.rho("CAR") == pytest.approx(1.0)


def test_default_choice_is_car_top3_reward_winner_and_bottom_deduplicated():
    table = rank_generators({"generator": list("abcdef"), "reward": [.9, .8, .7, .95, .1, .5],
                             "base_loss": [1.0, 1.2, 1.1, 4.0, 1.0, 1.3]}, n_bootstrap=0)
    assert [t for t, _ in choose_teachers(table)] == ["a", "b", "c", "d", "e"]
    assert choose_teachers(table, ["e", "a", "e"]) == [("e", "chosen by the user"), ("a", "chosen by the user")]
    small = rank_generators({"generator": ["a", "b"], "reward": [.9, .8], "base_loss": [1.0, 1.2]}, n_bootstrap=0)
    assert [t for t, _ in choose_teachers(small)] == ["a", "b"]


# ------------------------------------------------------------------------------------------------ bad input
def test_fewer_than_two_teachers_is_refused(tmp_path, tasks, tiny_model_dir, no_training):
    with pytest.raises(InputError, match="at least 2 teachers"):
        run_pilot(scripted_pool(tasks), heldout_of(tasks), *budget(tmp_path, tiny_model_dir), EVALUATION,
                  n_instructions=10, output_dir=tmp_path, teachers=["right"])
    with pytest.raises(InputError, match=r"teacher\(s\) \['nobody'\] are not in the pool"):
        run_pilot(scripted_pool(tasks), heldout_of(tasks), *budget(tmp_path, tiny_model_dir), EVALUATION,
                  n_instructions=10, output_dir=tmp_path, teachers=["right", "nobody"])


def test_teachers_answering_other_instructions_are_refused(tmp_path, tasks, tiny_model_dir, no_training):
    pool = scripted_pool(tasks)
    pool = pool.filter(lambda r, i: not (r["generator"] == "all wrong" and i % N_TRAIN < 5), with_indices=True)
    with pytest.raises(InputError, match="must answer the same instructions: they share 35, fewer than "
                                         r"n_instructions=40 \(.*'all wrong': 35"):
        run_pilot(pool, heldout_of(tasks), *budget(tmp_path, tiny_model_dir), EVALUATION, n_instructions=N_TRAIN,
                  output_dir=tmp_path)


def test_empty_and_overlapping_heldout_sets_are_refused(tmp_path, tasks, tiny_model_dir, no_training):
    args = (*budget(tmp_path, tiny_model_dir), EVALUATION)
    with pytest.raises(InputError, match="held-out set is empty"):
        run_pilot(scripted_pool(tasks), heldout_of(tasks).select([]), *args, n_instructions=10, output_dir=tmp_path)
    overlapping = tasks.select([N_TRAIN, 3, N_TRAIN + 1])
    with pytest.raises(InputError, match=r"overlaps the training instructions in 1 row\(s\) \(row 1: .How many times"):
        run_pilot(scripted_pool(tasks), overlapping, *args, n_instructions=10, output_dir=tmp_path)
    # Instructions of the pool the students do not train on (beyond n_instructions) may be held out.
    with pytest.raises(InputError, match="held-out set has no column 'answer'"):
        run_pilot(scripted_pool(tasks), tasks.select([30]).remove_columns("answer"), *args, n_instructions=10,
                  output_dir=tmp_path)


def test_a_metric_returning_non_numbers_fails_before_training(tmp_path, tasks, tiny_model_dir, no_training, hf_cache):
    folder = tmp_path / "word_metric"
    folder.mkdir()
    (folder / "word_metric.py").write_text(
        "import datasets\nimport evaluate\n"
        "class WordMetric(evaluate.Metric):\n"
        "    def _info(self):\n"
        "        return evaluate.MetricInfo(description='', citation='', features=datasets.Features(\n"
        "            {'predictions': datasets.Value('string'), 'references': datasets.Value('string')}))\n"
        "    def _compute(self, predictions, references):\n"
        "        return {'exact_match': 'good'}\n")
    evaluation = EvaluationConfig(generation=TeacherConfig(max_new_tokens=2), metric=str(folder / "word_metric.py"),
                                  n_bootstrap=0)
    with pytest.raises(InputError, match="returned a non-number for key 'exact_match': 'good'"):
        run_pilot(scripted_pool(tasks), heldout_of(tasks).select(range(3)), *budget(tmp_path, tiny_model_dir),
                  evaluation, n_instructions=10, output_dir=tmp_path)


def test_bad_options_are_refused(tmp_path, tasks, tiny_model_dir, no_training):
    args = (scripted_pool(tasks), heldout_of(tasks), *budget(tmp_path, tiny_model_dir))
    with pytest.raises(ConfigError, match="no scorer"):
        run_pilot(*args, EvaluationConfig(), n_instructions=10, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="measure 'reward' is not among the evaluated measures"):
        run_pilot(*args, EVALUATION, n_instructions=10, output_dir=tmp_path, measure="reward")
    with pytest.raises(ConfigError, match="n_instructions must be >= 1"):
        run_pilot(*args, EVALUATION, n_instructions=0, output_dir=tmp_path)


def test_cli_pilot_with_seeds_averages_per_item_and_reuses_finished_seeds(tmp_path, tasks, tiny_model_dir, hf_cache,
                                                                          monkeypatch, one_thread, capsys, caplog):
    from car_hf.cli import main

    scripted_pool(tasks).to_json(tmp_path / "pool.jsonl")
    heldout_of(tasks).to_json(tmp_path / "heldout.jsonl")
    common = ["--config", str(REPO / "recipes" / "configs" / "pilot_tiny_cpu.yaml"), "--model_name_or_path",
              str(tiny_model_dir), "--dataset_name", str(tmp_path / "pool.jsonl"), "--heldout_name",
              str(tmp_path / "heldout.jsonl"), "--output_dir", str(tmp_path / "pilot"), "--teachers", "right",
              "all wrong"]
    with caplog.at_level("INFO", logger="car_hf"):
        assert main(["pilot", *common, "--seeds", "0", "1"]) == 0
    printed = capsys.readouterr()
    assert "wrote the report, its picture and card to" in printed.out
    # The report is printed once (not also logged).
    assert printed.out.count("## Pilot: predicted vs. realized") == 1 and "## Pilot" not in printed.err + caplog.text
    report = json.loads((tmp_path / "pilot" / "report.json").read_text())
    assert report["budget"]["seeds"] == [0, 1] and "seed" not in report["budget"]
    items = pd.read_csv(tmp_path / "pilot" / "items.csv")
    for row in report["teachers"]:
        mine = items[items["student"] == row["teacher"]]
        # Per item the mean over seeds; the teacher's value the mean of its per-seed values.
        assert mine["correct"].tolist() == pytest.approx(((mine["correct_seed0"] + mine["correct_seed1"]) / 2).tolist())
        assert row["realized"] == pytest.approx(np.mean(row["realized_seeds"]))
        assert row["realized_seeds"] == pytest.approx([mine["correct_seed0"].mean(), mine["correct_seed1"].mean()])
    cars = {r["teacher"]: r["car"] for r in report["teachers"]}
    for row in report["spearman"]:
        assert len(row["rho_seeds"]) == 2
        if np.isfinite(row["rho_seeds"]).all():  # the spread over seeds, next to each seed's ρ
            assert row["rho_seed_sd"] == pytest.approx(np.std(row["rho_seeds"], ddof=1))
    car_row = next(r for r in report["spearman"] if r["metric"] == "CAR")
    for seed, rho in enumerate(car_row["rho_seeds"]):
        by_seed = {r["teacher"]: r["realized_seeds"][seed] for r in report["teachers"]}
        names = sorted(cars)
        expected = spearmanr([cars[t] for t in names], [by_seed[t] for t in names]).statistic
        assert rho == pytest.approx(expected) == 1.0  # the all-wrong teacher's student is last in every seed

    # A third seed trains only the two new students.
    built = []
    original = trl.SFTTrainer.__init__
    monkeypatch.setattr(trl.SFTTrainer, "__init__", lambda self, *a, **k: built.append(k["args"].seed)
                        or original(self, *a, **k))
    assert main(["pilot", *common, "--seeds", "0", "1", "2"]) == 0
    assert built == [2, 2]
    assert len(json.loads((tmp_path / "pilot" / "report.json").read_text())["teachers"][0]["realized_seeds"]) == 3
    # Usage errors are one line.
    assert main(["pilot", "--use_cpu", "--bf16", "false", "--no_such_option", "1"]) == 2
    assert "car-hf pilot: error: Some specified arguments are not used" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- issue 19's pilot notes
def test_teachers_answering_different_instructions_train_on_the_shared_ones_and_say_so(tasks, caplog):
    from car_hf.evaluation.pilot_data import prompt_keys, training_rows

    pool = scripted_pool(tasks)
    pool = pool.filter(lambda r, i: not (r["generator"] == "all wrong" and i % N_TRAIN < 5), with_indices=True)
    with caplog.at_level("WARNING", logger="car_hf.evaluation.pilot"):
        shared = training_rows(pool, list(LOSS), 30)
    keys = {t: prompt_keys(rows) for t, rows in shared.rows.items()}
    assert shared.skipped == 5 and all(len(k) == 30 for k in keys.values())
    assert keys["right"] == keys["all wrong"] == keys["mostly right"]  # the same 30 instructions, in pool order
    assert keys["right"][0] == prompt_keys(pool.select([5]))[0]  # the 5 that "all wrong" lacks are skipped
    assert "skipping 5 that some teacher lacks (per teacher: {'all wrong': 5}" in caplog.text


@pytest.mark.parametrize("content", ["", "\n", "[]"])
def test_an_empty_heldout_file_is_refused_by_name(tmp_path, tasks, tiny_model_dir, no_training, content):
    (tmp_path / "heldout.jsonl").write_text(content)
    scripted_pool(tasks).to_json(tmp_path / "pool.jsonl")
    args = pilot_recipe.make_parser().parse_args_and_config([
        "--config", str(REPO / "recipes" / "configs" / "pilot_tiny_cpu.yaml"), "--model_name_or_path",
        str(tiny_model_dir), "--dataset_name", str(tmp_path / "pool.jsonl"), "--heldout_name",
        str(tmp_path / "heldout.jsonl"), "--output_dir", str(tmp_path / "pilot")])
    with pytest.raises(InputError, match=r"heldout_name: the file '.*heldout.jsonl' has no rows"):
        pilot_recipe.main(*args)


GRADER = """def grade(prompts, completions, answer, **columns):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]
"""


def test_reward_function_pilot_names_its_measure_and_keys_its_caches_by_what_changes_students(
        tmp_path, tasks, tiny_model_dir, hf_cache, monkeypatch, one_thread):
    """A pool whose rewards are in a column `score`, a 0/1 grader as the only scorer: the report says "accuracy";
    editing the grader re-evaluates (no retraining); weight decay retrains; logging options reuse everything."""
    import importlib

    from car_hf.evaluation.pilot_report import PilotReport

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "pilot_grader.py").write_text(GRADER)
    import pilot_grader

    pool = scripted_pool(tasks).rename_column("reward", "score")
    evaluation = EvaluationConfig(generation=TeacherConfig(max_new_tokens=4), reward="pilot_grader:grade",
                                  n_bootstrap=50)
    built, evaluated, saved = [], [], []
    original_init, original_evaluate, original_save = trl.SFTTrainer.__init__, car_hf.evaluation.pilot.evaluate_student, \
        PilotReport.save
    monkeypatch.setattr(trl.SFTTrainer, "__init__",
                        lambda self, *a, **k: built.append(1) or original_init(self, *a, **k))
    monkeypatch.setattr(car_hf.evaluation.pilot, "evaluate_student",
                        lambda *a, **k: evaluated.append(k["name"]) or original_evaluate(*a, **k))
    monkeypatch.setattr(PilotReport, "save",
                        lambda self, folder: saved.append(self.partial) or original_save(self, folder))

    def pilot(**overrides):
        built.clear(), evaluated.clear(), saved.clear()
        training_args, model_args = budget(tmp_path, tiny_model_dir, **overrides)
        return run_pilot(pool, heldout_of(tasks), training_args, model_args, evaluation, n_instructions=N_TRAIN,
                         output_dir=tmp_path / "pilot", teachers=["right", "all wrong"], reward_column="score")

    report = pilot()
    assert len(built) == 2 and evaluated == [BASELINE, "right", "all wrong"]
    assert report.measure == "reward" and report.name == "accuracy"
    assert "## Pilot: predicted vs. realized (accuracy)" in (tmp_path / "pilot" / "report.md").read_text()
    # The report was written after the first finished student (partial), then once more at the end.
    assert saved == ["partial: 1 of 2 teachers evaluated so far (the pilot is running, or stopped: re-run it to "
                     "finish)", None]
    assert report.teachers.set_index("teacher").loc["right", "reward"] == 1.0  # CAR's reward from `score`

    # Logging options change no student: everything reused.
    pilot(logging_first_step=True, run_name="another name")
    assert built == [] and evaluated == []
    # An edited grader: the same students, evaluated again.
    (tmp_path / "pilot_grader.py").write_text(GRADER.replace("float(c.strip() == a)", "float(a in c)"))
    importlib.reload(pilot_grader)
    pilot()
    assert built == [] and evaluated == [BASELINE, "right", "all wrong"]
    # Weight decay (or the optimizer, max_grad_norm, checkpointing, precision) changes the students: retrained.
    pilot(weight_decay=0.1)
    assert len(built) == 2 and evaluated == ["right", "all wrong"]  # the untuned student's evaluation is reused
    pilot(weight_decay=0.1, max_grad_norm=0.5)
    assert len(built) == 2


def test_the_measure_can_be_named_and_a_stopped_pilot_keeps_its_students_and_says_how_to_resume(
        tmp_path, tasks, tiny_model_dir, hf_cache, monkeypatch, one_thread, caplog):
    training_args, model_args = budget(tmp_path, tiny_model_dir)
    original = car_hf.evaluation.pilot._train
    calls = []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return original(*args, **kwargs)

    monkeypatch.setattr(car_hf.evaluation.pilot, "_train", second_fails)
    run = dict(n_instructions=N_TRAIN, output_dir=tmp_path / "pilot", teachers=["right", "all wrong"],
               measure_name="exact match", rerun="car-hf pilot --config pilot.yaml")
    with caplog.at_level("ERROR", logger="car_hf.evaluation.pilot"), pytest.raises(RuntimeError, match="out of memory"):
        run_pilot(scripted_pool(tasks), heldout_of(tasks), training_args, model_args, EVALUATION, **run)
    assert ("the pilot stopped after 1 of 2 students were trained and evaluated; they are kept in "
            f"{tmp_path / 'pilot' / 'cache'}") in caplog.text
    assert "re-run `car-hf pilot --config pilot.yaml` to resume from there" in caplog.text
    partial = (tmp_path / "pilot" / "report.md").read_text()
    assert "**partial: 1 of 2 teachers evaluated so far" in partial and "`right`" in partial
    assert "realized exact match [CI]" in partial

    monkeypatch.setattr(car_hf.evaluation.pilot, "_train", original)
    report = run_pilot(scripted_pool(tasks), heldout_of(tasks), training_args, model_args, EVALUATION, **run)
    assert report.cost["right"]["training_reused"] and report.cost["right"]["evaluation_reused"]
    assert not report.cost["all wrong"]["training_reused"] and report.partial is None
    assert "partial" not in (tmp_path / "pilot" / "report.md").read_text()

"""Teacher trials for several students: one generation per (teacher, instruction) scored under every student,
elimination per student (a teacher is dropped only when it is out for all), the common target, the cost line
against one trial per student, kill and resume with per-student cache parts, the CLI, and the replay benchmark."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from car_hf.core.errors import ConfigError
from car_hf.ranking.stopping import common_car, eliminate_students, instruction_cells
from car_hf.ranking.trial import rank_teachers

ROOT = Path(__file__).resolve().parents[1]
CALLS: dict[str, int] = {}
KILL: dict[str, int] = {}

# Quality (reward) of each stand-in teacher, and its loss under each student: "a" suits student S, "b" suits T,
# "c" is poor for both, "m" is second for both (the best common teacher: highest mean CAR).
QUALITY = {"a": 0.9, "b": 0.9, "c": 0.2, "m": 0.8}
LOSS = {"S": {"a": 1.0, "b": 4.0, "c": 1.0, "m": 1.2}, "T": {"a": 4.0, "b": 1.0, "c": 1.0, "m": 1.2}}


class Canned:
    """A stand-in teacher answering ``"<name> <instruction>"``, counting the responses it generates."""

    def __init__(self, name: str):
        self.name = name
        CALLS[name] = 0

    def __call__(self, batch, indices):
        CALLS[self.name] += len(indices)
        return {"response": [f"{self.name} {q}" for q in batch["instruction"]]}


TWINS = {"d": "a", "f": "a"}  # d's and f's wobbles are a's: with a's quality and loss they tie with a exactly


def wobble(instruction_id: int, name: str, salt: int) -> float:
    return ((instruction_id * 7919 + ord(TWINS.get(name, name)) * 104729 + salt) % 29) / 100


def reward(batch, indices):
    """The teacher's quality plus a wobble fixed by (teacher, instruction); the losses it returns are ignored."""
    names = [r.split()[0] for r in batch["response"]]
    return {"reward": [QUALITY[n] + wobble(i, n, 0) for n, i in zip(names, batch["instruction_id"])],
            "base_loss": [99.0] * len(indices)}


class Student:
    """A stand-in student: the loss of a teacher's response is ``LOSS[label][teacher]`` plus a wobble."""

    def __init__(self, label: str):
        self.label = label
        CALLS[f"student {label}"] = 0

    def __call__(self, batch, indices):
        if KILL.get(self.label) is not None and CALLS[f"student {self.label}"] >= KILL[self.label]:
            raise KeyboardInterrupt("killed")
        CALLS[f"student {self.label}"] += len(indices)
        names = [r.split()[0] for r in batch["response"]]
        return {"base_loss": [LOSS[self.label][n] + wobble(i, n, 1) for n, i in zip(names, batch["instruction_id"])],
                "base_loss_tokens": [5] * len(indices)}


def questions(n: int) -> Dataset:
    return Dataset.from_dict({"instruction": [f"question {i}" for i in range(n)]})


OPTIONS = {"min_instructions": 10, "round_size": 10, "n_bootstrap": 200}


def test_each_response_is_generated_once_and_scored_under_every_student():
    teachers = [Canned(n) for n in "abc"]
    result = rank_teachers(questions(200), teachers, reward, students=[Student("S"), Student("T")], **OPTIONS)
    rows = result.scored.to_pandas()
    # One row per (teacher, instruction) generated, with both students' losses and one reward.
    assert len(rows) == result.responses_generated == CALLS["a"] + CALLS["b"] + CALLS["c"]
    assert not rows.duplicated(["generator", "instruction_id"]).any()
    assert {"reward", "base_loss@S", "base_loss@T", "base_loss_tokens@S"} <= set(rows.columns)
    assert "base_loss" not in rows.columns  # the reward scorer's own loss column is not kept
    assert rows["base_loss@S"].notna().all() and rows["base_loss@T"].notna().all()
    assert CALLS["student S"] == CALLS["student T"] == len(rows)  # every response scored under both
    pairs = rows[["instruction_id", "generator"]].values
    expected = rows["generator"].map(LOSS["T"]) + [wobble(i, g, 1) for i, g in pairs]
    assert np.allclose(rows["base_loss@T"], expected)
    assert result.students == ["S", "T"] and result.winners == {"S": "a", "T": "b"}
    assert result.stopped_because == "confident"
    assert result.tables["S"]["generator"].iloc[0] == "a" and result.tables["T"]["generator"].iloc[0] == "b"
    assert set(result.table["student"]) == {"S", "T"}


def test_a_teacher_is_kept_while_it_contends_for_one_student_and_dropped_when_out_for_all():
    QUALITY["d"], LOSS["S"]["d"], LOSS["T"]["d"] = 0.84, 4.0, 1.0  # d is close behind b for T, out for S
    try:
        teachers = [Canned(n) for n in "abcd"]
        result = rank_teachers(questions(300), teachers, reward, students=[Student("S"), Student("T")], **OPTIONS)
    finally:
        del QUALITY["d"], LOSS["S"]["d"], LOSS["T"]["d"]
    out = {(e["generator"], e["student"]): e["round"] for e in result.eliminated}
    # Round 1: S settles on a (b, c, d out for S); T keeps b and d (a and c out). c is out for both: dropped; a won
    # S's contest and is out for T: not generated again either. b is out for S but still contends for T: kept.
    assert {k: v for k, v in out.items() if v == 1} == {("b", "S"): 1, ("c", "S"): 1, ("d", "S"): 1, ("a", "T"): 1,
                                                         ("c", "T"): 1}
    assert result.history[0]["contending"] == {"S": ["a"], "T": ["b", "d"]}
    assert result.history[0]["active"] == ["b", "d"]
    assert CALLS["a"] == CALLS["c"] == 10 and CALLS["b"] == CALLS["d"] == result.n_instructions > 10
    assert out[("d", "T")] == len(result.history) and result.winners == {"S": "a", "T": "b"}
    # The pure rule on those rows: b out for S, still generated for (T); c dropped.
    cells = {s: instruction_cells(result.scored.to_pandas(), loss_column=f"base_loss@{s}") for s in "ST"}
    half = eliminate_students(cells, {"S": ["a", "b", "c"], "T": ["b", "c", "d"]}, beta=1.0, level=0.9833,
                              min_instructions=5, n_bootstrap=200)
    assert half.contending["S"] == ["a"] and "c" not in half.generating


def test_a_close_contest_for_one_student_keeps_its_teachers_generated():
    QUALITY["d"], LOSS["S"]["d"], LOSS["T"]["d"] = 0.9, 1.0, 4.0  # d ties with a for S: never decided
    try:
        teachers = [Canned(n) for n in "abd"]
        result = rank_teachers(questions(60), teachers, reward, students=[Student("S"), Student("T")], **OPTIONS)
    finally:
        del QUALITY["d"], LOSS["S"]["d"], LOSS["T"]["d"]
    # T settles on b at once; S cannot split a and d: a and d are generated to the end, b (out for S, won for T)
    # is kept only for T, which is settled: it stops being generated for after round 1.
    assert result.stopped_because == "exhausted" and result.winners["T"] == "b"
    assert CALLS["a"] == CALLS["d"] == 60 and CALLS["b"] == 10
    assert [{p["better"], p["worse"]} for p in result.undecided] == [{"a", "d"}]
    assert result.undecided[0]["student"] == "S"


def test_the_cost_line_against_one_trial_per_student():
    students = [Student("S"), Student("T")]
    QUALITY["e"] = 0.88  # close to a for S (same loss): S needs more rounds than T
    LOSS["S"]["e"], LOSS["T"]["e"] = 1.0, 4.0
    try:
        joint = rank_teachers(questions(400), [Canned(n) for n in "abce"], reward, students=students, **OPTIONS)
        calls = dict(CALLS)
        alone = {s.label: rank_teachers(questions(400), [Canned(n) for n in "abce"], reward, students=[s], **OPTIONS)
                 for s in students}
    finally:
        del QUALITY["e"], LOSS["S"]["e"], LOSS["T"]["e"]
    separate = {s: r.responses_generated for s, r in alone.items()}
    assert joint.responses_separate == separate  # exact: the same rule on the same instructions, per student
    assert {s: r.winners[s] for s, r in alone.items()} == joint.winners == {"S": "a", "T": "b"}
    assert joint.responses_generated == sum(calls[n] for n in "abce") < sum(separate.values())
    total = sum(separate.values())
    share = 100 * joint.responses_generated / total
    assert (f"one trial per student would generate {total} (S {separate['S']} + T {separate['T']}): this trial "
            f"generated {share:.1f}% of them") in joint.cost_line()
    assert f"generated {joint.responses_generated} responses of the exhaustive trial's 1600" in joint.cost_line()
    assert "winners: S → a, T → b" in joint.summary()
    assert alone["S"].scored.column_names.count("base_loss") == 1  # one student: the plain column names


def test_the_common_target_picks_the_best_common_teacher():
    teachers = [Canned(n) for n in "abm"]
    car = {s: {t: QUALITY[t] / (1 + LOSS[s][t]) for t in "abm"} for s in "ST"}
    means = common_car(np.array([[car[s][t] for t in "abm"] for s in "ST"]))
    assert "abm"[int(np.argmax(means))] == "m"  # a and b are each best for one student, m is best for both
    result = rank_teachers(questions(300), teachers, reward, students=[Student("S"), Student("T")],
                           target="common", **OPTIONS)
    assert result.winners == {"S": "m", "T": "m"} and result.stopped_because == "confident"
    assert {e["student"] for e in result.eliminated} == {None}
    assert result.responses_separate == {} and "target=common" in result.cost_line()


def test_bad_students():
    teachers = [Canned("a"), Canned("b")]
    with pytest.raises(ConfigError, match="distinct labels"):
        rank_teachers(questions(20), teachers, reward, students=[Student("S"), Student("S")])
    with pytest.raises(ConfigError, match="loss transforms with a label"):
        rank_teachers(questions(20), teachers, reward, students=[lambda batch, indices: {}])
    with pytest.raises(ConfigError, match="twice"):
        rank_teachers(questions(20), teachers, reward, students=["org/m", "org/m"])
    with pytest.raises(ConfigError, match="target must be"):
        rank_teachers(questions(20), teachers, reward, students=[Student("S")], target="best")


def test_rank_adaptive_with_teachers_and_students_runs_the_joint_trial():
    from car_hf.ranking.adaptive import rank_adaptive

    result = rank_adaptive(questions(100), reward, teachers=[Canned(n) for n in "abc"],
                           students=[Student("S"), Student("T")], min_instructions=10, n_bootstrap=200)
    assert result.winners == {"S": "a", "T": "b"} and result.responses_generated == 30
    assert result.responses_separate == {"S": 30, "T": 30}
    with pytest.raises(ValueError, match="pass teachers= too"):
        rank_adaptive(Dataset.from_dict({"instruction_id": [0], "generator": ["a"]}), reward, students=[Student("S")])


def test_a_killed_trial_resumes_with_its_per_student_parts(tmp_path):
    options = OPTIONS | {"checkpoint": tmp_path / "trial", "max_responses": 60}
    QUALITY["f"], LOSS["S"]["f"], LOSS["T"]["f"] = 0.9, 1.0, 1.0  # a and f tie: only the budget stops it
    try:
        KILL["T"] = 30  # T dies scoring f's round 2, after everything before it is saved
        with pytest.raises(KeyboardInterrupt):
            rank_teachers(questions(50), [Canned("a"), Canned("f")], reward, students=[Student("S"), Student("T")],
                          **options)
        KILL.clear()
        assert CALLS["a"] == CALLS["f"] == 20 and CALLS["student S"] == 40 and CALLS["student T"] == 30
        resumed = rank_teachers(questions(50), [Canned("a"), Canned("f")], reward,
                                students=[Student("S"), Student("T")], **options)
        # Round 2's responses and S's scores were saved before T died: only T's score of f's round 2 is redone,
        # then round 3 (the budget allows no round 4).
        assert CALLS["a"] == CALLS["f"] == 10 and CALLS["student S"] == 20 and CALLS["student T"] == 30
        assert resumed.responses_generated == 60 and resumed.n_instructions == 30
        # Adding a student later scores only that student: the responses and S's losses come from the cache.
        U = Student("U")
        LOSS["U"] = {"a": 1.0, "f": 2.0}
        again = rank_teachers(questions(50), [Canned("a"), Canned("f")], reward,
                              students=[Student("S"), Student("T"), U], **options)
        assert CALLS["a"] == CALLS["f"] == 0 and CALLS["student S"] == CALLS["student T"] == 0
        assert CALLS["student U"] == 60 and again.scored["base_loss@S"] == resumed.scored["base_loss@S"]
    finally:
        del QUALITY["f"], LOSS["S"]["f"], LOSS["T"]["f"]
        LOSS.pop("U", None)


def test_real_teachers_and_two_real_students(tmp_path, tiny_model_dir, tokenizer, gemma3_lm):
    from car_hf.generation.generate import add_responses
    from car_hf.scoring.scorer import add_car
    import tiny

    gemma = tiny.save_tiny(gemma3_lm, tokenizer, tmp_path / "tiny-gemma")

    def length_reward(prompts, completions, **columns):
        return [min(len(c), 50) / 50 + 0.01 for c in completions]

    teachers = [add_responses(str(tiny_model_dir), max_new_tokens=4, teacher_name="short"),
                add_responses(str(tiny_model_dir), max_new_tokens=12, teacher_name="long")]
    result = rank_teachers(questions(8), teachers, add_car(reward_model=length_reward),
                           students=[str(tiny_model_dir), str(gemma)], min_instructions=4, round_size=4,
                           n_bootstrap=50, checkpoint=tmp_path / "t")
    rows = result.scored.to_pandas()
    labels = [Path(tiny_model_dir).name, "tiny-gemma"]
    assert result.students == labels and len(rows) == result.responses_generated
    for label in labels:
        assert rows[f"base_loss@{label}"].notna().all() and (rows[f"base_loss_tokens@{label}"] > 0).all()
    assert not np.allclose(rows[f"base_loss@{labels[0]}"], rows[f"base_loss@{labels[1]}"])
    # The cache: one responses key per teacher; a reward key and one key per student for each teacher.
    assert len(list((tmp_path / "t" / "responses").glob("*/key.json"))) == 2
    assert len(list((tmp_path / "t" / "scores").glob("*/key.json"))) == 6
    # One student alone, from the same checkpoint: the responses are read back, and its losses equal the joint's.
    alone = rank_teachers(questions(8), teachers, add_car(reward_model=length_reward), students=[str(gemma)],
                          min_instructions=4, round_size=4, n_bootstrap=50, checkpoint=tmp_path / "t")
    assert alone.scored["response"] == result.scored["response"]
    assert np.allclose(alone.scored["base_loss"], rows["base_loss@tiny-gemma"])


def test_cli_trial_with_two_base_models(tmp_path, hf_cache, tiny_model_dir, tokenizer, gemma3_lm, capsys):
    import json

    import tiny
    import yaml

    from car_hf.cli import main
    from car_hf.generation.tasks import make_tasks

    gemma = tiny.save_tiny(gemma3_lm, tokenizer, tmp_path / "tiny-gemma")
    data = tmp_path / "tasks.jsonl"
    make_tasks(8, seed=1).to_json(str(data))
    teachers = tmp_path / "teachers.yaml"
    teachers.write_text(yaml.safe_dump([
        {"teacher": str(tiny_model_dir), "teacher_name": "terse", "max_new_tokens": 2},
        {"teacher": str(tiny_model_dir), "teacher_name": "wordy", "max_new_tokens": 12}]))
    out = tmp_path / "trial"
    argv = ["trial", str(data), "--teachers", str(teachers), "--base-model", str(tiny_model_dir), "--base-model",
            str(gemma), "--reward-model", "test_cli_teachers:length_reward", "--bootstrap", "50",
            "--output-dir", str(out), "--checkpoint", str(tmp_path / "ckpt")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    label = Path(tiny_model_dir).name
    assert f"| generator \\ student | {label}" in " ".join(printed.split()) and f"winners: {label} → " in printed
    assert "generated 16 responses of the exhaustive trial's 16" in printed
    assert "one trial per student would generate 32" in printed
    matrix = json.loads((out / "matrix.json").read_text())
    assert matrix["students"] == [label, "tiny-gemma"] and matrix["trial"]["students"] == [label, "tiny-gemma"]
    assert matrix["trial"]["responses_separate"] == {label: 16, "tiny-gemma": 16}
    assert (out / "scored").is_dir() and "★" in printed  # the matrix, each student's winner marked


@pytest.mark.slow
def test_the_replay_benchmark_quick():
    """``bench/trial_students_replay.py --quick`` (about a minute on 2 busy cores): the joint trial's per-student
    cost and winner equal the separate trials' on every replay (the script exits 1 otherwise)."""
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "trial_students_replay.py"), "--quick",
                             "--synthetic"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "joint = separate per student (responses and winner, every replay): OK" in result.stdout
    assert "SYNTHETIC losses" in result.stdout and "| **joint** (`students=[...]`, top-1 each) |" in result.stdout

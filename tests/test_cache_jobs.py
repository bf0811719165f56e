"""Cache parts verified by content in the jobs that cache: the trial's responses and scores, the adaptive ranking's
rounds, the training scores and the pilot's students and evaluations (the mechanism, score and generation chunks:
test_cache_parts.py). Each damaged part is computed again with a warning naming it, and the result equals an
undamaged run's."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from datasets import Dataset, load_from_disk
from test_cache_parts import DAMAGES, damage, warned
from test_trial import Canned, noisy_reward, questions

import tiny
from car_hf.core.cache import META_FILE, ScoreCache

# ------------------------------------------------------------------------------------------------ trial
def constant_reward(batch, indices):
    """Another reward: the trial's scores miss, so its responses are read back from the cache."""
    quality = [float(r.split()[0]) for r in batch["response"]]
    return {"reward": quality, "base_loss": [2.0] * len(indices)}


def trial(checkpoint, reward=noisy_reward):
    from car_hf.ranking.trial import rank_teachers

    return rank_teachers(questions(40), [Canned("good", 0.9), Canned("poor", 0.3)], reward, min_instructions=10,
                         round_size=10, n_bootstrap=50, max_responses=40, checkpoint=checkpoint)


def trial_parts(checkpoint: Path, kind: str, teacher: str) -> Path:
    """The folder of a teacher's first part (responses or scores) in a trial's checkpoint."""
    for key in (checkpoint / kind).glob("*/key.json"):
        part = key.parent / "instructions-00000-00010"
        if load_from_disk(str(part))[0]["response"].startswith({"good": "0.9", "poor": "0.3"}[teacher]):
            return part
    raise AssertionError(f"no {kind} part of {teacher}")


@pytest.mark.parametrize("how", ["folder", "swap"])
def test_another_teachers_responses_copied_in_are_generated_again(tmp_path, caplog, how):
    """The issue's case: a response part copied from another teacher's was attributed to the wrong teacher."""
    checkpoint = tmp_path / "trial"
    trial(checkpoint)
    poor, good = trial_parts(checkpoint, "responses", "poor"), trial_parts(checkpoint, "responses", "good")
    if how == "folder":
        shutil.rmtree(poor)
        shutil.copytree(good, poor)
    else:
        damage(poor, "swap", good)
    with caplog.at_level(logging.WARNING, logger="car_hf.core.cache"):
        result = trial(checkpoint, constant_reward)  # another reward: the scores are computed from the responses
    assert len(warned(caplog, poor)) == 1
    rows = result.scored.to_pandas()
    assert rows.groupby("generator")["response"].agg(lambda r: {x.split()[0] for x in r}).to_dict() == \
        {"good": {"0.9"}, "poor": {"0.3"}}
    fresh = trial(None, constant_reward)
    pd.testing.assert_frame_equal(result.table, fresh.table)


@pytest.mark.parametrize("kind", ["responses", "scores"])
@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_trial_part_is_computed_again(tmp_path, caplog, kind, how):
    """Responses are verified even while their scores exist, and scores against the responses they scored."""
    checkpoint = tmp_path / "trial"
    first = trial(checkpoint)
    first_rows = first.scored.to_list()
    part = trial_parts(checkpoint, kind, "poor")
    damage(part, how, trial_parts(checkpoint, kind, "good"), column="response")
    with caplog.at_level(logging.WARNING, logger="car_hf.core.cache"):
        again = trial(checkpoint)
    assert len(warned(caplog, part)) == 1
    pd.testing.assert_frame_equal(again.table, first.table)
    assert again.scored.to_list() == first_rows
    assert load_from_disk(str(part)).num_rows == 10  # rewritten whole
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="car_hf.core.cache"):
        trial(checkpoint)
    assert not warned(caplog, part)


# ------------------------------------------------------------------------------------------------ adaptive rounds
@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_adaptive_round_is_scored_again(tmp_path, caplog, how):
    from test_adaptive import CALLS, Precomputed, make_data

    from car_hf.ranking.adaptive import rank_adaptive

    ds = make_data([0.5, 0.5, 0.5], n_instructions=12, noise=0.2, copy=[(0, 1), (0, 2)])  # never decided
    options = {"min_instructions": 4, "round_size": 4, "n_bootstrap": 100, "seed": 1, "batch_size": 6}
    first = rank_adaptive(ds, Precomputed("parts"), checkpoint=tmp_path / "ckpt", **options)
    assert first.rounds == 3
    first_rows = first.scored.to_list()
    (key,) = (tmp_path / "ckpt").glob("*/key.json")
    part = key.parent / "round-00002"
    damage(part, how, key.parent / "round-00003", column="output")  # rounds of 4 instructions x 3 generators
    with caplog.at_level(logging.WARNING, logger="car_hf.core.cache"):
        again = rank_adaptive(ds, Precomputed("parts"), checkpoint=tmp_path / "ckpt", **options)
    assert len(warned(caplog, part)) == 1
    round_1 = json.loads((key.parent / "round-00001" / META_FILE).read_text())["rows"]
    assert sorted(CALLS["parts"]) == sorted(set(range(36)) - set(round_1))  # round 1 reused; 2 and 3 scored again
    pd.testing.assert_frame_equal(again.table, first.table)
    assert again.scored.to_list() == first_rows and again.history == first.history


# ------------------------------------------------------------------------------------------------ training scores
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_training_scores_are_scored_again(tmp_path, caplog, tiny_model_dir, how):
    from car_hf import CARConfig
    from car_hf.training.sft import SCORES_FOLDER, score_for_training

    ds = Dataset.from_list(tiny.sample_rows(2, 2))  # 4 rows: 2 chunks of 2
    config = CARConfig(base_model=str(tiny_model_dir), reward_column="judge_preference")
    args = SimpleNamespace(output_dir=str(tmp_path / "sft"), device="cpu")
    first, record = score_for_training(ds, config, args, chunk_rows=2)
    first = first.to_list()  # read now: the returned dataset maps the parts' files, which are damaged below
    (key,) = (tmp_path / "sft" / SCORES_FOLDER).glob("**/key.json")
    part = key.parent / "chunk-00000-of-00002"
    damage(part, how, key.parent / "chunk-00001-of-00002", column="output")
    with caplog.at_level(logging.WARNING, logger="car_hf.core.cache"):
        again, again_record = score_for_training(ds, config, args, chunk_rows=2)
    assert len(warned(caplog, part)) == 1
    assert again.to_list() == first and again_record == record


# ------------------------------------------------------------------------------------------------ pilot students
TRAINED: list[int] = []


class FakeTrainer:
    """Stands in for CARSFTTrainer in pilot._train: writes an adapter folder whose bytes follow the seed."""

    def __init__(self, model, args, train_dataset, processing_class, peft_config):
        self.args = args

    def train(self):
        TRAINED.append(self.args.seed)
        return SimpleNamespace(metrics={"train_loss": 1.5})

    def save_model(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "adapter_model.safetensors").write_bytes(bytes([self.args.seed]) * 512)
        (Path(folder) / "adapter_config.json").write_text(json.dumps({"seed": self.args.seed}))

    def is_world_process_zero(self):
        return True


@pytest.mark.parametrize("how", ["truncate", "empty", "swap", "edit", "records"])
def test_a_damaged_pilot_student_is_trained_again(tmp_path, caplog, monkeypatch, how):
    import car_hf.training.sft_trainer
    from car_hf.evaluation.pilot import _train

    monkeypatch.setattr(car_hf.training.sft_trainer, "CARSFTTrainer", FakeTrainer)
    TRAINED.clear()
    cache = ScoreCache(tmp_path / "cache", {"what": "pilot students"})
    records = Dataset.from_dict({"prompt": ["count the a in banana"], "completion": ["3"]})
    model_args = SimpleNamespace(dtype="float32", attn_implementation=None, use_peft=False)
    train = lambda seed: _train(cache, f"student-t-seed{seed}", records, None, "student", SimpleNamespace(
        output_dir=None, seed=None, model_init_kwargs=None), model_args, seed)
    folder, _, reused = train(1)
    other, _, _ = train(2)
    assert TRAINED == [1, 2] and not reused and train(1)[2]  # a third call reuses it
    weights = folder / "adapter_model.safetensors"
    if how == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "swap":  # another student's weights (the same size)
        shutil.copyfile(other / "adapter_model.safetensors", weights)
    elif how == "edit":
        (folder / "adapter_config.json").write_text(json.dumps({"seed": 7}))
    else:
        damage(cache.folder / "student-t-seed1", "edit", column="prompt")
    with caplog.at_level(logging.WARNING, logger="car_hf.core.cache"):
        assert train(1)[::2] == (folder, False)  # trained again
    assert TRAINED == [1, 2, 1] and len(warned(caplog, cache.folder / "student-t-seed1")) == 1
    assert weights.read_bytes() == bytes([1]) * 512 and train(1)[2]


# ------------------------------------------------------------------------------------------------ pilot evaluations
@pytest.mark.parametrize("how", [*DAMAGES, "retrained student"])
def test_a_damaged_pilot_evaluation_is_evaluated_again(tmp_path, caplog, monkeypatch, how):
    import car_hf.evaluation.pilot
    from car_hf.evaluation.student import EvaluationConfig, StudentEvaluation

    evaluated: list[str] = []

    def fake_evaluate(model, heldout, evaluation, name=None, merge_dtype=None):
        evaluated.append(name)
        answers = (Path(model) / "adapter_model.safetensors").read_text()
        items = pd.DataFrame({"instruction": heldout["instruction"], "response": [answers] * len(heldout),
                              "correct": [1.0, 0.0]})
        return StudentEvaluation(name, items, {"accuracy": {"mean": 0.5}})

    monkeypatch.setattr(car_hf.evaluation.pilot, "evaluate_student", fake_evaluate)
    cache = ScoreCache(tmp_path / "cache", {"what": "pilot evaluations"})
    heldout = Dataset.from_dict({"instruction": ["count the a in banana", "count the b in bob"]})
    students = {}
    for name in ("s1", "s2"):
        students[name] = tmp_path / name
        students[name].mkdir()
        (students[name] / "adapter_model.safetensors").write_text(f"answer of {name}")
    evaluate = lambda name: car_hf.evaluation.pilot._evaluate(cache, f"eval-{name}", students[name], name, heldout=heldout,
                                                   evaluation=EvaluationConfig(n_bootstrap=0), merge_dtype=None)
    first, _ = evaluate("s1")
    evaluate("s2")
    assert evaluate("s1")[1]["evaluation_reused"] and evaluated == ["s1", "s2"]
    part = cache.folder / "eval-s1"
    if how == "retrained student":  # its files changed since it was evaluated
        (students["s1"] / "adapter_model.safetensors").write_text("answer of s1 again")
    else:
        damage(part, how, cache.folder / "eval-s2", column="response")
    with caplog.at_level(logging.WARNING, logger="car_hf.core.cache"):
        again, cost = evaluate("s1")
    assert evaluated == ["s1", "s2", "s1"] and not cost["evaluation_reused"] and len(warned(caplog, part)) == 1
    expected = "answer of s1 again" if how == "retrained student" else "answer of s1"
    assert again.items["response"].tolist() == [expected] * 2
    if how != "retrained student":
        pd.testing.assert_frame_equal(again.items, first.items)
    assert evaluate("s1")[1]["evaluation_reused"]


"""Teacher trials: successive elimination, budgets, the cost line, kill and resume, real generation plumbing."""

import pytest
from datasets import Dataset

from car_hf import ConfigError, add_car
from car_hf.ranking.trial import rank_teachers

CALLS: dict[str, int] = {}
KILL: dict[str, int] = {}


class Canned:
    """A stand-in teacher: the same quality on every instruction (``quality`` in the response), counting calls."""

    def __init__(self, name: str, quality: float):
        self.name, self.quality = name, quality
        CALLS[name] = 0

    def __call__(self, batch, indices):
        if KILL.get(self.name) is not None and CALLS[self.name] >= KILL[self.name]:
            raise KeyboardInterrupt("killed")
        CALLS[self.name] += len(indices)
        return {"response": [f"{self.quality} {q}" for q in batch["instruction"]]}


def noisy_reward(batch, indices):
    """Reward = the teacher's quality + a wobble fixed by (teacher, instruction); the same loss for everyone."""
    quality = [float(r.split()[0]) for r in batch["response"]]
    wobble = [((i * 7919 + int(q * 100) * 104729) % 29) / 100 for i, q in zip(batch["instruction_id"], quality)]
    return {"reward": [q + w for q, w in zip(quality, wobble)], "base_loss": [2.0] * len(indices)}


def questions(n: int) -> Dataset:
    return Dataset.from_dict({"instruction": [f"question {i}" for i in range(n)]})


def test_clear_losers_are_eliminated_and_generate_no_more():
    teachers = [Canned("best", 0.9), Canned("close", 0.86), Canned("poor", 0.2)]
    result = rank_teachers(questions(300), teachers, noisy_reward, min_instructions=10, round_size=10, n_bootstrap=300)
    assert result.table["generator"].tolist()[0] == "best"
    poor = next(e for e in result.eliminated if e["generator"] == "poor")
    assert poor["n_instructions"] == 10 and CALLS["poor"] == 10  # out after the first round, never asked again
    assert CALLS["best"] > CALLS["poor"] and result.responses_generated == sum(CALLS.values())
    assert result.responses_exhaustive == 900 and result.responses_generated < 900
    assert "generated" in result.cost_line() and result.table.attrs["car"]["trial"]["teachers"] == \
        ["best", "close", "poor"]


def test_rank_adaptive_with_teachers_runs_the_trial():
    from car_hf import rank_adaptive

    result = rank_adaptive(questions(60), noisy_reward, teachers=[Canned("x", 0.9), Canned("y", 0.1)],
                           min_instructions=10, n_bootstrap=100)
    assert result.stopped_because == "confident" and result.responses_generated == 20
    assert result.table["generator"].tolist() == ["x", "y"]


def test_budget_and_bad_input():
    teachers = [Canned("a", 0.5), Canned("b", 0.5)]  # indistinguishable: only the budget stops it
    result = rank_teachers(questions(100), teachers, noisy_reward, min_instructions=10, round_size=10,
                           max_responses=50, n_bootstrap=100)
    assert result.stopped_because == "budget" and result.responses_generated == 40
    assert [{p["better"], p["worse"]} for p in result.undecided] == [{"a", "b"}]
    with pytest.raises(ConfigError, match="at least 2"):
        rank_teachers(questions(10), [Canned("a", 0.5)], noisy_reward)
    with pytest.raises(ConfigError, match="distinct labels"):
        rank_teachers(questions(10), [Canned("a", 0.5), Canned("a", 0.6)], noisy_reward)
    with pytest.raises(ConfigError, match="no instructions"):
        rank_teachers(questions(0), teachers, noisy_reward)


def test_a_killed_trial_resumes_without_generating_twice(tmp_path):
    teachers = [Canned("k1", 0.5), Canned("k2", 0.5)]
    options = {"min_instructions": 10, "round_size": 10, "n_bootstrap": 100, "max_responses": 60,
               "checkpoint": tmp_path / "trial"}
    KILL["k2"] = 10  # k2 dies in round 2, after round 1 (10 + 10 responses) is saved
    with pytest.raises(KeyboardInterrupt):
        rank_teachers(questions(50), teachers, noisy_reward, **options)
    KILL.clear()
    first = dict(CALLS)
    resumed = rank_teachers(questions(50), [Canned("k1", 0.5), Canned("k2", 0.5)], noisy_reward, **options)
    assert first == {**first, "k1": 20, "k2": 10}
    assert CALLS["k1"] == 10 and CALLS["k2"] == 20  # round 2 of k1 was saved; k2 redoes only what was lost
    assert resumed.responses_generated == 60 and resumed.n_instructions == 30


def test_real_teachers_generate_and_the_student_scores(tmp_path, tokenizer, causal_lm, tiny_model_dir):
    from car_hf.generation.generate import add_responses

    def length_reward(prompts, completions, **columns):
        return [min(len(c), 50) / 50 + 0.01 for c in completions]

    teachers = [add_responses(str(tiny_model_dir), max_new_tokens=4, teacher_name="short"),
                add_responses(str(tiny_model_dir), max_new_tokens=12, teacher_name="long")]
    scorer = add_car(base_model=str(tiny_model_dir), reward_model=length_reward)
    result = rank_teachers(questions(8), teachers, scorer, min_instructions=4, round_size=4, n_bootstrap=50,
                           checkpoint=tmp_path / "t")
    rows = result.scored.to_pandas()
    assert set(rows["generator"]) == {"short", "long"} and len(rows) == result.responses_generated
    assert (rows["response_tokens"] <= rows["generator"].map({"short": 4, "long": 12})).all()
    assert rows["base_loss"].notna().all() and (rows["base_loss_tokens"] > 0).all()
    assert result.table.attrs["car"]["reward_model"].endswith("length_reward")
    # Another reward: the responses come from the cache, only the scores are recomputed.
    again = rank_teachers(questions(8), teachers, add_car(base_model=str(tiny_model_dir),
                                                          reward_model=lambda prompts, completions, **k: [0.5] * len(completions)),
                          min_instructions=4, round_size=4, n_bootstrap=50, checkpoint=tmp_path / "t")
    assert again.scored["response"][:] == result.scored["response"][:]
    assert len(list((tmp_path / "t" / "responses").glob("*/key.json"))) == 2  # one key per teacher, reused

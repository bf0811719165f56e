"""Checkable tasks: every kind's reference answer is right, extraction finds final answers, the reward checks them."""

import pickle

import pytest

from car_hf.generation.tasks import TASK_TYPES, AnswerReward, extract_answer, make_tasks


def test_every_task_kind_has_a_correct_reference():
    tasks = make_tasks(50, seed=3)
    assert set(tasks["task"]) == set(TASK_TYPES) and len(set(tasks["instruction"])) == 50
    for row in tasks:
        text, answer = row["instruction"], row["answer"]
        if row["task"] == "arithmetic":
            a, op, b = text.split("What is ")[1].split("?")[0].split()
            assert str(eval(f"{a}{op}{b}")) == answer  # noqa: S307 - our own two-number expression
        elif row["task"] == "count_letters":
            letter, word = text.split("'")[1], text.split("'")[3]
            assert str(word.count(letter)) == answer
        elif row["task"] == "sort_numbers":
            numbers = [int(x) for x in text.split(": ")[1].split(".")[0].split(", ")]
            assert answer == ", ".join(map(str, sorted(numbers)))
        elif row["task"] == "largest":
            numbers = [int(x) for x in text.split(": ")[1].split("?")[0].split(", ")]
            assert answer == str(max(numbers))
        else:
            shown = [int(x) for x in text.split(": ")[1].split(", ...")[0].split(", ")]
            assert int(answer) - shown[-1] == shown[1] - shown[0]
    assert make_tasks(5, seed=3)["instruction"][:] == tasks["instruction"][:5]
    with pytest.raises(ValueError, match="unknown task type"):
        make_tasks(3, types=["poetry"])


@pytest.mark.parametrize("text, expected", [
    ("The answer is 42.", "42"), ("Let me think: 3 + 4 = 7\nAnswer: 7", "7"), ("1,024", "1024"),
    ("Sorted: 2, 5, 9", "2, 5, 9"), ("It is 12, I think. Final answer: 15", "15"), ("Paris", "Paris"), ("", ""),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_answer_reward_checks_through_evaluate_and_pickles_without_the_module():
    reward = AnswerReward()
    completions = ["2, 5, 9", "The largest is 90.", [{"role": "assistant", "content": "Answer: 7"}]]
    assert reward(prompts=[""] * 3, completions=completions, answer=["2, 5, 9", "91", "7"]) == [1.0, 0.0, 1.0]
    clone = pickle.loads(pickle.dumps(reward))
    assert clone._module is None and clone(prompts=[""], completions=["4"], answer=["4"]) == [1.0]
    with pytest.raises(KeyError, match="reference column 'answer'"):
        reward(prompts=[""], completions=["4"], solution=["4"])

"""Instructions with checkable answers, and the reward that checks them.

Without a reward model (offline, or to measure rather than estimate quality), a teacher's answers can be
checked against references. :func:`make_tasks` writes such instructions (five kinds: arithmetic, letter
counting, sorting, the largest number, the next number of a sequence), each with its ``answer`` and ``task``;
:class:`AnswerReward` is a reward function in TRL's ``reward_funcs`` convention that extracts the final answer
from a completion (:func:`extract_answer`) and compares it with the reference through an ``evaluate`` metric —
car_hf's local ``answer_match`` (loads offline) or any module the user names.

Example:
    >>> tasks = make_tasks(5, seed=0)
    >>> tasks[0]["task"], tasks[0]["instruction"], tasks[0]["answer"]
    ('arithmetic', 'What is 59 + 63? Answer with the number only.', '122')
    >>> reward = AnswerReward()
    >>> reward(prompts=["..."] * 3, completions=["The sum is 122.", "Answer: 120", "122"], answer=["122"] * 3)
    [1.0, 0.0, 1.0]
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from car_hf.core.config import import_object
from car_hf.core.errors import ConfigError, InputError

ANSWER_MATCH = str(Path(__file__).parents[1] / "metrics" / "answer_match" / "answer_match.py")
"""Path of car_hf's ``evaluate`` metric for checkable answers (``evaluate.load(ANSWER_MATCH)`` works offline)."""

TASK_TYPES = ("arithmetic", "count_letters", "sort_numbers", "largest", "next_in_sequence")
_WORDS = ("banana", "strawberry", "committee", "mississippi", "bookkeeper", "assessment", "balloon", "coffee",
          "letter", "parallel", "success", "tomorrow", "address", "occurrence", "possession", "referee")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_STATED = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*(.+)", re.IGNORECASE)


def _task(kind: str, rng: random.Random) -> tuple[str, str]:
    if kind == "arithmetic":
        a, b, op = rng.randint(10, 99), rng.randint(10, 99), rng.choice("+-*")
        value = a + b if op == "+" else a - b if op == "-" else a * b
        return f"What is {a} {op} {b}? Answer with the number only.", str(value)
    if kind == "count_letters":
        word = rng.choice(_WORDS)
        letter = rng.choice(sorted(set(word)))
        return (f"How many times does the letter '{letter}' appear in the word '{word}'? Answer with the number "
                "only.", str(word.count(letter)))
    numbers = rng.sample(range(1, 100), rng.randint(4, 6))
    listed = ", ".join(map(str, numbers))
    if kind == "sort_numbers":
        return (f"Sort these numbers from smallest to largest: {listed}. Answer with the numbers separated by "
                "commas.", ", ".join(map(str, sorted(numbers))))
    if kind == "largest":
        return f"Which is the largest of these numbers: {listed}? Answer with the number only.", str(max(numbers))
    start, step = rng.randint(1, 20), rng.randint(2, 9)
    shown = ", ".join(str(start + step * k) for k in range(5))
    return f"What number comes next: {shown}, ...? Answer with the number only.", str(start + step * 5)


def make_tasks(n: int, *, seed: int = 0, types: Sequence[str] = TASK_TYPES) -> Any:
    """``n`` distinct instructions with checkable answers, cycling through ``types``: a Dataset of
    ``instruction``, ``answer`` (a string) and ``task``. The same ``seed`` gives the same tasks."""
    import datasets

    unknown = [t for t in types if t not in TASK_TYPES]
    if unknown or not types:
        raise ValueError(f"unknown task type(s) {unknown or types}; choose from {TASK_TYPES}")
    rng = random.Random(seed)
    rows, seen = [], set()
    for i in range(n):
        kind = types[i % len(types)]
        for _ in range(1000):  # distinct instructions: a held-out set must not repeat a training one
            instruction, answer = _task(kind, rng)
            if instruction not in seen:
                break
        else:
            raise ValueError(f"cannot write {n} distinct tasks of kinds {list(types)}: ask for fewer")
        seen.add(instruction)
        rows.append({"instruction": instruction, "answer": answer, "task": kind})
    return datasets.Dataset.from_list(rows)


def extract_answer(text: str) -> str:
    """The final answer of a completion: what follows the last "answer is/:", else the last number (a list of
    numbers on the last line that has any, for list answers), else the last line."""
    stated = _STATED.findall(text)
    if stated:
        text = stated[-1]
    lines = [line for line in text.strip().splitlines() if _NUMBER.search(line)]
    if lines:
        numbers = [n.replace(",", "") for n in _NUMBER.findall(lines[-1])]
        return ", ".join(numbers) if len(numbers) > 1 and "," in lines[-1] else numbers[-1]
    return text.strip().splitlines()[-1] if text.strip() else ""


class AnswerReward:
    """A reward function (TRL ``reward_funcs`` convention): 1.0 when the completion's extracted answer matches
    the ``answer_column`` reference under an ``evaluate`` metric, else 0.0.

    Args:
        metric: an ``evaluate`` module (a Hub name or a local path); default car_hf's offline ``answer_match``.
        answer_column: the column of reference answers (passed to the function by name).
        key: the metric's result key (a per-row ``compute`` call's value is the row's reward).
    """

    def __init__(self, metric: str = ANSWER_MATCH, answer_column: str = "answer", key: str = "exact_match"):
        self.metric, self.answer_column, self.key = metric, answer_column, key
        self._module: Any = None

    def __getstate__(self) -> dict[str, Any]:  # the loaded module is not part of the recipe
        return {"metric": self.metric, "answer_column": self.answer_column, "key": self.key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
        import evaluate

        if self.answer_column not in columns:
            raise KeyError(f"AnswerReward needs the reference column {self.answer_column!r}; columns passed: "
                           f"{sorted(columns)}")
        if self._module is None:  # loaded once per process, not per map batch
            self._module = evaluate.load(self.metric)
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return metric_scores(texts, columns[self.answer_column], self.metric, key=self.key, module=self._module)


def metric_scores(texts: Sequence[str], references: Sequence[Any], metric: str = ANSWER_MATCH,
                  extractor: Callable[[str], str] | str | None = extract_answer, key: str = "exact_match",
                  module: Any = None) -> list[float]:
    """Per-item value of an ``evaluate`` metric on the extracted answers; refuses a metric giving non-numbers.

    ``extractor``: a function, an import path (``module:function``) or None (the text as it is); ``module``: the
    metric already loaded.

    >>> metric_scores(["It is 12.", "13"], ["12", "12"])
    [1.0, 0.0]
    """
    import evaluate
    import numpy as np

    extract = import_object(extractor, "extractor") if isinstance(extractor, str) else extractor or (lambda t: t)
    module = module if module is not None else evaluate.load(metric)
    predictions, references = [extract(t) for t in texts], [str(r) for r in references]
    result = module.compute(predictions=predictions, references=references)
    if isinstance(result, dict) and isinstance(result.get("scores"), list):  # one call scores every pair
        values = result["scores"]
    else:
        values = [module.compute(predictions=[p], references=[r]) for p, r in zip(predictions, references)]
        missing = [v for v in values if not isinstance(v, dict) or key not in v]
        if missing:
            raise ConfigError(f"metric {metric!r} returned {missing[0]!r}, without the key {key!r} (metric_key)")
        values = [v[key] for v in values]
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float, np.number))]
    if bad:
        raise InputError(f"metric {metric!r} returned a non-number for key {key!r}: {bad[0]!r}; an answer is "
                         "scored by a number")
    return [float(v) for v in values]

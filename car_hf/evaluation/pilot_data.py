"""The pilot's data: the teachers to compare, their training rows on shared instructions, the held-out set.

Everything here needs no model, so :func:`car_hf.evaluation.pilot.run_pilot` checks it before any training:

* :func:`choose_teachers`: the user's teachers, else CAR's top 3, the reward-only winner and CAR's bottom;
* :func:`training_rows`: each teacher's rows on the SAME first ``n`` instructions. Policy when the teachers answer
  different instructions (a trial stops generating for losing teachers, a generation run may lose rows): the
  students train on the first ``n`` instructions *every* chosen teacher answers (in pool order), and the
  instructions some teacher lacks are skipped, named in a warning and counted in the report's budget
  (``skipped_instructions``); fewer than ``n`` shared instructions is refused;
* :func:`check_heldout` / :func:`check_not_empty_file`: a non-empty held-out set that shares no instruction with
  the training set (an empty file is refused with its path, before ``datasets`` reads it).

Example:
    >>> from car_hf.ranking.leaderboard import rank_generators
    >>> table = rank_generators({"generator": list("abcde"), "reward": [.9, .8, .7, .95, .1],
    ...                          "base_loss": [1.0, 1.2, 1.1, 4.0, 1.0]}, n_bootstrap=0)
    >>> [why for _, why in choose_teachers(table)]
    ['CAR rank 1', 'CAR rank 2', 'CAR rank 3', 'reward-only winner', 'CAR bottom']
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from car_hf.core.errors import ConfigError, InputError
from car_hf.core.formats import detect_layout, row_example

logger = logging.getLogger("car_hf.evaluation.pilot")


def choose_teachers(table: pd.DataFrame, teachers: Sequence[str] | None = None, *,
                    by: str = "generator") -> list[tuple[str, str]]:
    """``(teacher, why chosen)`` pairs: ``teachers`` as given, else CAR's top 3, the reward-only winner and CAR's
    bottom (deduplicated, in that order). Refuses fewer than 2 or a teacher missing from ``table``."""
    names = table[by].tolist()
    if teachers:
        missing = [t for t in teachers if t not in names]
        if missing:
            raise InputError(f"teacher(s) {missing} are not in the pool; it has {names}")
        chosen = [(t, "chosen by the user") for t in dict.fromkeys(teachers)]
    else:
        ranked = table.sort_values("car", ascending=False, kind="stable")[by].tolist()
        candidates = [(t, f"CAR rank {i + 1}") for i, t in enumerate(ranked[:3])]
        candidates += [(table.loc[table["reward"].idxmax(), by], "reward-only winner"), (ranked[-1], "CAR bottom")]
        chosen = list({t: (t, why) for t, why in reversed(candidates)}.values())[::-1]  # first reason wins
    if len(chosen) < 2:
        raise InputError(f"a pilot compares at least 2 teachers; got {[t for t, _ in chosen]}")
    return chosen


def prompt_key(prompt: list[dict[str, str]]) -> str:
    """A conversation as a comparable key (roles and stripped contents)."""
    return json.dumps([[turn["role"], turn["content"].strip()] for turn in prompt])


def prompt_keys(ds: Any, layout: Any = None) -> list[str]:
    """Each row's prompt as a comparable key (the conversation before the response)."""
    layout = layout or detect_layout(ds.column_names)
    batch = ds.to_dict()
    return [prompt_key(row_example(batch, i, layout, i).prompt) for i in range(len(ds))]


@dataclass
class TrainingRows:
    """Each teacher's rows on the shared instructions, and how many instructions were skipped to share them."""

    rows: dict[str, Any]
    skipped: int


def training_rows(pool: Any, teachers: Sequence[str], n: int, *, by: str = "generator") -> TrainingRows:
    """Each teacher's rows on the same first ``n`` instructions all of them answer (in pool order; see the module
    docstring for the policy); refuses fewer than ``n`` shared instructions, or a teacher answering one twice."""
    if n < 1:
        raise ConfigError(f"n_instructions must be >= 1, got {n}")
    keys, groups = prompt_keys(pool), pool[by]
    answered: dict[str, dict[str, int]] = {t: {} for t in teachers}
    for i, (key, group) in enumerate(zip(keys, groups)):
        if group in answered:
            if key in answered[group]:
                raise InputError(f"teacher {group!r} answers one instruction twice (rows {answered[group][key]} and "
                                 f"{i}): a pilot trains each student on one answer per instruction")
            answered[group][key] = i
    ordered = [k for k in dict.fromkeys(keys) if any(k in answered[t] for t in teachers)]
    common = [k for k in ordered if all(k in answered[t] for t in teachers)]
    if len(common) < n:
        short = {t: len(answered[t]) for t in teachers}
        raise InputError(f"the teachers must answer the same instructions: they share {len(common)}, fewer than "
                         f"n_instructions={n} (instructions answered per teacher: {short})")
    first = common[:n]
    # The instructions passed over to reach n shared ones: each lacks an answer of some teacher.
    skipped = [k for k in ordered[:ordered.index(first[-1])] if k not in set(first)]
    if skipped:
        lacking = {t: sum(k not in answered[t] for k in skipped) for t in teachers}
        logger.warning("the teachers answer different instructions: the students train on the first %d instructions "
                       "all %d teachers answer, skipping %d that some teacher lacks (per teacher: %s; first skipped: "
                       "%s)", n, len(teachers), len(skipped), {t: c for t, c in lacking.items() if c},
                       json.loads(skipped[0])[-1][1][:80])
    return TrainingRows({t: pool.select([answered[t][k] for k in first]) for t in teachers}, len(skipped))


def check_not_empty_file(source: str | None, option: str) -> None:
    """A local data file with no rows is refused by name (``datasets`` would fail on it with a message naming
    neither the file nor the option)."""
    if source and os.path.isfile(source):
        with open(source, "rb") as handle:
            head = handle.read(4096)
        if not head.strip() or head.strip() in (b"[]", b"{}"):
            raise InputError(f"{option}: the file {source!r} has no rows")


def check_heldout(heldout: Any, train_keys: set[str]) -> None:
    """A non-empty held-out set that shares no instruction with the training set (the overlap is named)."""
    if heldout is None or len(heldout) == 0:
        raise InputError("the held-out set is empty: a pilot evaluates students on held-out instructions")
    from car_hf.generation.generate import input_column, read_prompt
    from car_hf.generation.teacher import TeacherConfig

    column = input_column(heldout.column_names, TeacherConfig())
    keys = [prompt_key(read_prompt(v, row=i, column=column)) for i, v in enumerate(heldout[column])]
    overlap = [i for i, k in enumerate(keys) if k in train_keys]
    if overlap:
        shown = "; ".join(f"row {i}: {str(heldout[column][i])[:80]!r}" for i in overlap[:3])
        raise InputError(f"the held-out set overlaps the training instructions in {len(overlap)} row(s) ({shown}): "
                         "held-out items must be unseen in training")


def slug(name: str) -> str:
    """A file-name-safe, collision-free form of a teacher's name."""
    return re.sub(r"[^\w.-]+", "_", name)[:60] + "-" + hashlib.blake2b(name.encode(), digest_size=3).hexdigest()


def content_digest(ds: Any) -> str:
    """A digest of a dataset's rows: the same rows give the same key, whatever file they were read from."""
    return hashlib.blake2b(ds.to_pandas().to_json(orient="records").encode(), digest_size=8).hexdigest()


def scored_pool(pool: Any) -> Any:
    """A pool as a Dataset (a ``TrialResult``: its scored rows; a DataFrame or a dict of columns converted)."""
    import datasets

    pool = getattr(pool, "scored", pool)
    if isinstance(pool, pd.DataFrame):
        return datasets.Dataset.from_pandas(pool, preserve_index=False)
    return datasets.Dataset.from_dict(dict(pool)) if isinstance(pool, dict) else pool

"""Several students: short labels, per-student column names, and the checks on them.

A *student* is a base model whose loss measures compatibility (the model to be tuned). Scoring under several
students (``add_car(base_model=[s1, s2])``, ``car-hf score --base-model A --base-model B``) keeps what does not
depend on the student once (``reward``, ``reward_truncated``) and gives each student its own loss columns, named
``f"{column}@{label}"`` for the columns of :data:`STUDENT_COLUMNS`::

    reward  base_loss@SmolLM2-135M-Instruct  car@SmolLM2-135M-Instruct  base_loss@gemma-3-270m  car@gemma-3-270m ...

With one student the columns stay unsuffixed (``base_loss``, ``car``), exactly as a single-student run writes
them. A student's *label* is the last path component of its Hub id or folder (the file stem of a ``.gguf``
file); give one explicitly as ``"label=model"`` (e.g. ``"small=./runs/ckpt"``). Labels are unique within a list.

The scorer side (:class:`car_hf.scoring.scorer.CARScorer`) exposes the parts: ``scorer.labels``,
``scorer.reward_part()`` (the reward-only transform) and ``scorer.student_parts()`` (``(label, transform)`` per
student, each writing its suffixed columns, each with its own ``cache_identity()``).

Example:
    >>> student_labels(["HuggingFaceTB/SmolLM2-135M-Instruct", "google/gemma-3-270m", "tiny=./runs/ckpt-10"])
    ['SmolLM2-135M-Instruct', 'gemma-3-270m', 'tiny']
    >>> student_column("base_loss", "gemma-3-270m")
    'base_loss@gemma-3-270m'
    >>> students_in(["reward", "base_loss@a", "car@a", "base_loss@b", "base_loss"])
    ['a', 'b']
    >>> split_student_column("car@a"), split_student_column("reward")
    (('car', 'a'), ('reward', None))
    >>> match_student("google/gemma-3-270m", ["SmolLM2-135M-Instruct", "gemma-3-270m"])
    'gemma-3-270m'
    >>> student_labels(["google/gemma-3-270m", "google/gemma-3-270m"])
    Traceback (most recent call last):
    ...
    car_hf.core.errors.ConfigError: the student list names 'google/gemma-3-270m' twice (positions 0 and 1): each student once
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from car_hf.core.errors import ConfigError, InputError

SEPARATOR = "@"
"""Between a column and a student label: ``base_loss@gemma-3-270m``."""

STUDENT_COLUMNS = ("base_loss", "base_loss_tokens", "base_loss_truncated", "base_rank", "base_loss_unconditioned",
                   "ifd", "car")
"""The columns that depend on the student: suffixed per student when there are several."""

SHARED_COLUMNS = ("reward", "reward_truncated")
"""The columns that do not depend on the student: scored once, never suffixed."""

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_SHOWN = 8  # rows named in an error message, at most


def _is_pair(value: Any) -> bool:
    """A loaded ``(model, tokenizer)`` pair (not a list of specs)."""
    return isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], (str, os.PathLike, tuple))


def is_student_list(value: Any) -> bool:
    """Whether ``value`` names several students (a list or tuple of specs), not one (a string, a path, a loaded
    ``(model, tokenizer)`` pair).

    >>> is_student_list(["a", "b"]), is_student_list("a"), is_student_list(("a", "b"))
    (True, False, True)
    """
    return isinstance(value, (list, tuple)) and not _is_pair(value)


def parse_student(spec: Any) -> tuple[str | None, Any]:
    """``(explicit label or None, model)`` of one student spec: ``"label=model"`` splits when the text is not itself
    an existing path and the part before ``=`` is a label; anything else is the model as given.

    >>> parse_student("small=./runs/ckpt"), parse_student("google/gemma-3-270m")
    (('small', './runs/ckpt'), (None, 'google/gemma-3-270m'))
    """
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        label, equals, model = text.partition("=")
        if equals and model and _LABEL.match(label) and not os.path.exists(text):
            return label, model
        return None, text
    return None, spec


def student_label(spec: Any) -> str:
    """The short label of one student: the explicit one of ``"label=model"``, else the last path component of the
    Hub id or folder (the file stem of a ``.gguf`` file; a loaded pair: of its model's ``name_or_path``).

    >>> student_label("HuggingFaceTB/SmolLM2-135M-Instruct"), student_label("./models/q.Q4_K_M.gguf")
    ('SmolLM2-135M-Instruct', 'q.Q4_K_M')
    """
    label, model = parse_student(spec)
    if label is not None:
        return label
    if _is_pair(model):
        name = getattr(model[0], "name_or_path", None) or getattr(getattr(model[0], "config", None),
                                                                  "_name_or_path", None)
        if not name:
            raise ConfigError("a loaded (model, tokenizer) student has no name_or_path to label it by: pass the "
                              "students as a mapping {label: (model, tokenizer)}")
        model = name
    path = Path(os.fspath(model).rstrip("/\\"))
    text = path.stem if path.suffix == ".gguf" else path.name
    if not text or SEPARATOR in text:
        raise ConfigError(f"cannot label the student {os.fspath(model)!r} (its last path component is {text!r}); "
                          "give a label as 'label=model'")
    return text


def _entries(models: Any) -> list[tuple[str | None, Any]]:
    """``(explicit label or None, model)`` of each student of a list, a single spec, or a mapping label → model."""
    if isinstance(models, Mapping):
        return [(str(label), model) for label, model in models.items()]
    if not is_student_list(models):
        models = [models]
    return [parse_student(spec) for spec in models]


def check_students(models: Any) -> list[str]:
    """The labels of ``models`` (see :func:`student_labels`) after checking the list: no student twice, labels
    unique and usable in column names. A :class:`~car_hf.core.errors.ConfigError` names the offending entries."""
    entries = _entries(models)
    if not entries:
        raise ConfigError("the student list is empty: name at least one base model")
    seen: dict[Any, int] = {}
    for i, (_, model) in enumerate(entries):
        key = os.path.realpath(model) if isinstance(model, str) and os.path.exists(model) else \
            model if isinstance(model, str) else id(model[0] if _is_pair(model) else model)
        if key in seen:
            shown = model if isinstance(model, str) else "the same loaded model"
            raise ConfigError(f"the student list names {shown!r} twice (positions {seen[key]} and {i}): each "
                              "student once")
        seen[key] = i
    labels = [label if label is not None else student_label(model) for label, model in entries]
    for label in labels:
        if not _LABEL.match(label):
            raise ConfigError(f"student label {label!r} cannot name columns: use letters, digits and . _ + - "
                              f"(not {SEPARATOR!r}), starting with a letter or digit")
    clashes = sorted({label for label in labels if labels.count(label) > 1})
    if clashes:
        which = [os.fspath(m) if isinstance(m, (str, os.PathLike)) else "<loaded model>"
                 for (_, m), label in zip(entries, labels) if label in clashes]
        raise ConfigError(f"students {which} share the label {clashes[0]!r}: give each a label as 'label=model'")
    return labels


def student_labels(models: Any) -> list[str]:
    """The short label of each student, in order (checked by :func:`check_students`).

    Args:
        models: a list of Hub ids, folders, ``.gguf`` files, ``"label=model"`` strings or loaded pairs; a mapping
            ``{label: model}``; or one spec (a list of one).
    """
    return check_students(models)


def student_models(models: Any) -> list[Any]:
    """The model part of each student spec, in order (``"label=model"`` → ``model``).

    >>> student_models(["tiny=./runs/ckpt", "google/gemma-3-270m"])
    ['./runs/ckpt', 'google/gemma-3-270m']
    """
    return [model for _, model in _entries(models)]


def student_column(column: str, label: str) -> str:
    """The name of ``column`` for student ``label``: ``f"{column}@{label}"``."""
    return f"{column}{SEPARATOR}{label}"


def split_student_column(name: str) -> tuple[str, str | None]:
    """``(column, label)`` of a per-student column name; ``(name, None)`` for any other column."""
    column, separator, label = name.rpartition(SEPARATOR)
    return (column, label) if separator and column and label else (name, None)


def students_in(column_names: Sequence[str]) -> list[str]:
    """The students a scored dataset holds, in column order: the labels of its ``base_loss@<label>`` columns."""
    found = []
    for name in column_names:
        column, label = split_student_column(name)
        if column == "base_loss" and label is not None and label not in found:
            found.append(label)
    return found


def match_student(model: Any, labels: Sequence[str]) -> str:
    """The label among ``labels`` that names ``model`` (a label itself, a ``"label=model"`` string, or a model whose
    :func:`student_label` is among them): how training picks its own student's columns of multi-student data.

    Raises:
        ConfigError: no label matches; the message lists the labels there are.
    """
    if isinstance(model, str) and model in labels:
        return model
    try:
        label = student_label(model)
    except ConfigError:
        label = None
    if label in labels:
        return label
    raise ConfigError(f"the scored data holds the students {list(labels)}, none of which is {model!r}: name one "
                      "of these labels (select_generator(..., student=LABEL); recipes/sft.py: --student LABEL)")


def student_columns(label: str, column_names: Sequence[str]) -> dict[str, str]:
    """``{per-student column: plain column}`` of ``label``'s columns among ``column_names``."""
    return {student_column(c, label): c for c in STUDENT_COLUMNS if student_column(c, label) in column_names}


def missing_rows(data: Any, column: str) -> list[int]:
    """Positions of the missing (null/None) values of ``column``; a NaN is a value (an unscorable row).

    >>> missing_rows({"base_loss@a": [1.0, None, float("nan")]}, "base_loss@a")
    [1]
    """
    if hasattr(data, "data") and hasattr(data.data, "column"):  # a datasets.Dataset: read arrow's validity
        import pyarrow.compute as pc

        table = data.with_format("arrow")[:] if getattr(data, "_indices", None) is not None else data.data
        mask = pc.is_null(table.column(column), nan_is_null=False).to_pylist()
        return [i for i, missing in enumerate(mask) if missing]
    return [i for i, value in enumerate(data[column]) if value is None]


def check_student_rows(data: Any, labels: Sequence[str] | None = None, names: Sequence[Any] | None = None) -> list[str]:
    """The students of a scored dataset (``labels``, default :func:`students_in`), checked to have their
    ``base_loss@<label>`` column on every row; returns the labels.

    ``data`` is a ``datasets.Dataset`` or a mapping of columns (a pandas frame turns None into NaN: pass a Dataset
    or a dict to tell them apart). A NaN loss is a value (an empty or fully truncated response, counted as
    unscored); a missing value (null) means the row was never scored under that student, e.g. data concatenated
    from runs with other students. When ``base_loss_tokens@<label>`` is present, its nulls decide (a parquet
    round trip through pandas turns a NaN loss into a null; the token count of a scored row is never missing).

    Raises:
        InputError: a student's column is missing, or missing on some rows; the message names the student, the
            column and the rows. Nothing is dropped: score the missing student (or rows) and try again.
    """
    columns = list(data.column_names if hasattr(data, "column_names") else data.keys())
    labels = list(labels) if labels is not None else students_in(columns)
    present = students_in(columns)
    for label in labels:
        column = student_column("base_loss", label)
        if column not in columns:
            raise InputError(f"student {label!r} has no column {column!r}; the data holds the students {present} "
                             f"(columns {columns})")
        # The token count is never NaN on a scored row (an empty response has 0 tokens), so it survives the
        # NaN -> null of a pandas/parquet round trip that the loss does not; the loss decides only without it.
        tokens = student_column("base_loss_tokens", label)
        missing = missing_rows(data, tokens if tokens in columns else column)
        if missing:
            shown = [names[i] if names is not None else i for i in missing[:_SHOWN]]
            more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
            column = tokens if tokens in columns else column
            raise InputError(f"rows {shown}{more}, column {column!r}: {len(missing)} of {len(data[column])} rows were "
                             f"never scored under student {label!r} (missing values, not NaN): score that student on "
                             "every row (car-hf score adds only the missing students); no row was dropped")
    return labels


def check_prescored_tokens(label: str, recorded: Sequence[Any], counted: Sequence[int], *, model: str,
                           names: Sequence[Any] | None = None) -> None:
    """A pre-scored student's ``base_loss_tokens@<label>`` (``recorded``) against the token counts the student's own
    tokenizer and chat template give the same rows (``counted``): columns made by another model or tokenizer under
    the same label are an :class:`~car_hf.core.errors.InputError` naming the column and the rows that disagree.

    >>> check_prescored_tokens("a", [3, 5], [3, 5], model="org/a")
    >>> check_prescored_tokens("a", [3, 5], [3, 6], model="org/a")
    Traceback (most recent call last):
    ...
    car_hf.core.errors.InputError: rows [1], column 'base_loss_tokens@a': the pre-scored token counts disagree with the tokenizer of student 'a' (org/a) on 1 of 2 rows (row 1: 5 recorded, 6 now): that column was scored with another tokenizer or template; drop the 'a' columns to score them again, or give this student another label
    """
    column = student_column("base_loss_tokens", label)
    bad = [i for i, (r, c) in enumerate(zip(recorded, counted)) if r is not None and int(r) != int(c)]
    if not bad:
        return
    shown = [names[i] if names is not None else i for i in bad[:_SHOWN]]
    more = f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    first = bad[0]
    raise InputError(f"rows {shown}{more}, column {column!r}: the pre-scored token counts disagree with the tokenizer "
                     f"of student {label!r} ({model}) on {len(bad)} of {len(recorded)} rows (row {shown[0]}: "
                     f"{recorded[first]} recorded, {counted[first]} now): that column was scored with another "
                     f"tokenizer or template; drop the {label!r} columns to score them again, or give this student "
                     "another label")


def student_view(data: Any, label: str) -> Any:
    """``data`` (a ``datasets.Dataset``) as a single-student dataset of ``label``: its ``column@label`` columns renamed
    to the plain names (any plain column of the same name is replaced), every other column kept, rows unchanged.
    What ranking and selection read when they work for one student of multi-student data.

    Raises:
        InputError: ``label``'s columns are missing, or missing on some rows (:func:`check_student_rows`).
    """
    check_student_rows(data, [label])
    renames = student_columns(label, data.column_names)
    clashing = [plain for plain in renames.values() if plain in data.column_names]
    if clashing:
        data = data.remove_columns(clashing)
    return data.rename_columns(renames)


def student_data(dataset: Any, student: str | None = None) -> tuple[Any, str | None]:
    """``(data, label)``: ``dataset`` as the scored data of one student. Data holding several students' columns
    (``base_loss@<label>``: :mod:`car_hf.core.students`) is viewed as ``student``'s (its columns renamed to
    ``base_loss`` ...; ``student``: a label, or a model id / folder whose label is among them); other data is
    returned as is, with label None.

    >>> from datasets import Dataset
    >>> data, label = student_data(Dataset.from_dict({"base_loss@a": [1.0], "base_loss@b": [2.0]}), "org/b")
    >>> label, data.column_names
    ('b', ['base_loss@a', 'base_loss'])

    Raises:
        ConfigError: the data holds several students and ``student`` names none of them, or is not given (and
            there is no plain ``base_loss``); the message lists the labels.
        InputError: that student's columns are missing on some rows (naming the rows; nothing is dropped).
    """
    labels = students_in(dataset.column_names)
    if not labels or (student is None and "base_loss" in dataset.column_names):
        return dataset, None
    if student is None:
        raise ConfigError(f"the scored data holds the students {labels}: say which one is trained "
                          "(select(..., student=LABEL); recipes/sft.py matches model_name_or_path, or student: LABEL)")
    label = match_student(student, labels)
    return student_view(dataset, label), label


class StudentsAction(argparse.Action):
    """The command-line form of ``base_model``: repeat the option for several students (``--base-model A
    --base-model B`` → ``["A", "B"]``). The first use replaces the default (a YAML config's value), later uses
    append; :class:`~car_hf.CARConfig` reads a list of one as that one string.

    >>> parser = argparse.ArgumentParser()
    >>> _ = parser.add_argument("--base-model", dest="base_model", action=StudentsAction, default="x")
    >>> parser.parse_args(["--base-model", "a", "--base-model", "b"]).base_model, parser.parse_args([]).base_model
    (['a', 'b'], 'x')
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        first = current is self.default or not isinstance(current, list)
        setattr(namespace, self.dest, [values] if first else [*current, values])

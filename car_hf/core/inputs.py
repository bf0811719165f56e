"""A job's inputs, read and checked before any model loads: data and model sources, columns, rewards.

The recipes and the CLI start hour-long jobs; a misspelt column found after the model loaded (or after
scoring) wastes that hour. These checks run first and raise :class:`~car_hf.core.errors.ConfigError` (an
option is wrong) or :class:`~car_hf.core.errors.InputError` (the data does not fit), naming the option or
the column and what is there instead.

The bad-input policy for numbers (README, "Bad input: policies") lives in one function,
:func:`check_numbers`, which every place a reward, loss or rank enters calls: scoring (``add_car``'s
reward column, reward functions), ``rank_generators``, the stopping rule, selection and the pilot.
None/NaN is "no value" (NaN: left out of means, counted as ``n`` vs ``n_scored``); text (even ``"0.6"``),
booleans and ±inf are an :class:`~car_hf.core.errors.InputError` naming the row and the column.

Example:
    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"instruction": ["Hi?"], "output": ["Hello."], "judge_preference": [0.7]})
    >>> check_scoring_inputs(ds, CARConfig(reward_column="judge_preference")).response
    'output'
    >>> check_scoring_inputs(ds, CARConfig(reward_column="stars"))
    Traceback (most recent call last):
    ...
    car_hf.core.errors.InputError: column 'stars' (reward_column: rewards of each row) is missing; the dataset has columns ['instruction', 'output', 'judge_preference']
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from car_hf.core.car import transform_rewards
from car_hf.core.config import CARConfig
from car_hf.core.data import FILE_BUILDERS, load_data
from car_hf.core.errors import ConfigError, InputError
from car_hf.core.formats import Layout, detect_layout, zoo_to_long

COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


def looks_local(source: str) -> bool:
    """Whether ``source`` is meant as a local path (not a Hub id): a path prefix, a file suffix, or it exists."""
    if os.path.exists(source):
        return True
    suffixes = [s for s in Path(source).suffixes if s not in COMPRESSIONS]
    return source.startswith(("/", "./", "../", "~")) or bool(suffixes and suffixes[-1] in FILE_BUILDERS) \
        or source.count("/") > 1


def check_data_source(source: str | None, option: str = "dataset_name") -> str:
    """A data file/folder that must exist, or a Hub dataset id."""
    if not source:
        raise ConfigError(f"{option} is required: a .json/.jsonl(.gz)/.parquet/.csv file, a save_to_disk folder, "
                          "or a Hub dataset id")
    if looks_local(source) and not os.path.exists(source):
        raise ConfigError(f"{option}: no such file or folder {source!r} (relative to {os.getcwd()})")
    return source


def check_model_source(source: str | None, option: str) -> str:
    """A local model folder that must exist (with a config.json), a ``.gguf`` file, or a Hub model id."""
    if not source:
        raise ConfigError(f"{option} is required: a Hub model id or a local folder")
    if looks_local(source) or source.endswith(".gguf"):
        path = Path(source).expanduser()
        if not path.exists():
            raise ConfigError(f"{option}: no such model folder {source!r} (relative to {os.getcwd()})")
        if path.is_dir() and not (path / "config.json").is_file():
            raise ConfigError(f"{option}: {source!r} has no config.json; is it a save_pretrained folder?")
    return source


def check_config_sources(config: CARConfig) -> None:
    """The models a configuration names exist (local paths) or look like Hub ids."""
    if config.base_model:
        check_model_source(config.base_model, "base_model")
    if config.reward_model:
        check_model_source(config.reward_model, "reward_model")


def need_column(column: str, columns: Sequence[str], role: str) -> None:
    """InputError unless ``column`` is among ``columns``: it names the column, its ``role`` and the columns there."""
    if column not in columns:
        raise InputError(f"column {column!r} ({role}) is missing; the dataset has columns {list(columns)}")


def check_numbers(values: Any, column: str, *, names: Sequence[Any] | None = None, kind: str = "reward") -> np.ndarray:
    """``values`` (a list, array or Series) as float64 under the bad-input policy, or an InputError.

    None, NaN and pandas' NA become NaN (no value: rankings leave the row out of the means and count it).
    Anything else that is not a real number — text (``"good"``, even ``"0.6"``: a column of numbers stored
    as text is a data error worth seeing), a bool, a list — and ±inf raise :class:`InputError` naming the
    first such row (``names[i]``, default its position), the column, and how many rows share the problem.
    ``kind`` names the value in the message ("reward", "loss", "rank").

    Example:
        >>> check_numbers([0.5, None, 2], "judge").tolist()
        [0.5, nan, 2.0]
        >>> check_numbers([0.5, "good", "bad"], "judge", names=[10, 11, 12])
        Traceback (most recent call last):
        ...
        car_hf.core.errors.InputError: row 11, column 'judge': a reward must be a number, got 'good' (2 rows are not numbers: 11, 12)
    """
    if isinstance(values, pd.Series) and pd.api.types.is_numeric_dtype(values) \
            and not pd.api.types.is_bool_dtype(values):
        out = values.to_numpy(dtype=float, na_value=np.nan)  # nullable Int64/Float64 too
    elif isinstance(values, (np.ndarray, pd.Series)) and np.asarray(values).dtype.kind in "fiu":
        out = np.asarray(values, dtype=float)
    else:  # objects, text, bools, or a list (which numpy would turn into text [0.5, "x"] or numbers [True, 0.5])
        items = values.tolist() if isinstance(values, (np.ndarray, pd.Series)) else list(values)
        out = np.full(len(items), np.nan)
        bad = []
        for i, value in enumerate(items):
            if value is None or value is pd.NA:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                bad.append(i)
            else:
                out[i] = float(value)
        if bad:
            _refuse(bad, names, column, f"a {kind} must be a number, got {items[bad[0]]!r:.40}", "are not numbers")
    infinite = np.flatnonzero(np.isinf(out)).tolist()
    if infinite:
        _refuse(infinite, names, column, f"the {kind} is infinite ({out[infinite[0]]})", "are infinite")
    return out


def _refuse(positions: list[int], names: Sequence[Any] | None, column: str, problem: str, many: str) -> None:
    """The InputError of :func:`check_numbers`: the first bad row and column, and how many rows share it."""
    names = names.tolist() if hasattr(names, "tolist") else names  # an Index's numpy ints print as plain ints
    label = [names[i] for i in positions[:5]] if names is not None else positions[:5]
    more = f" ({len(positions)} rows {many}: {', '.join(map(str, label))}{', ...' if len(positions) > 5 else ''})"
    raise InputError(f"row {label[0]}, column {column!r}: {problem}{more if len(positions) > 1 else ''}")


def load_job_data(
    source: str,
    *,
    split: str = "train",
    layout: str = "long",
    zoo_reward_key: str | None = None,
    generators: Sequence[str] | None = None,
    max_instructions: int | None = None,
    by: str = "generator",
) -> Any:
    """Load rows for scoring or training: :func:`car_hf.core.data.load_data`, plus the paper's wide Generator-Zoo
    layout (one struct column per generator, ``layout="wide"``) turned into long rows. Never empty."""
    if layout not in ("long", "wide"):
        raise ConfigError(f"dataset_layout must be 'long' or 'wide', got {layout!r}")
    wide = layout == "wide"
    try:
        ds = load_data(source, split=split, generators=None if wide else generators, by=by,
                       max_instructions=max_instructions)
    except (KeyError, ValueError) as error:
        raise InputError(f"{source!r}: {error.args[0] if error.args else error}") from None
    if wide:
        try:
            ds = ds.map(zoo_to_long, batched=True, remove_columns=ds.column_names, desc="wide zoo -> long rows",
                        fn_kwargs={"generators": list(generators) if generators else None,
                                   "reward_key": zoo_reward_key})
        except InputError as error:
            raise InputError(f"dataset_layout: wide: {error}") from None
    if len(ds) == 0:
        raise InputError(f"{source!r} has no rows")
    return ds


def check_reward_values(ds: Any, column: str, transform: str) -> np.ndarray:
    """The rewards of one column of ``ds`` under :func:`check_numbers`; with the ``"raise"`` transform none may be
    negative (:func:`~car_hf.core.car.transform_rewards` names the rows). Reads that one column only."""
    values = check_numbers(ds.select_columns([column]).to_pandas()[column], column)
    if transform == "raise":
        transform_rewards(values, "raise", column=column)
    return values


def check_layout(ds: Any, config: CARConfig) -> Layout:
    """Which columns hold the conversation, under ``config``'s column names (InputError listing the columns)."""
    return detect_layout(ds.column_names, messages=config.messages_column, prompt=config.prompt_column,
                         response=config.response_column)


def check_reward_column(ds: Any, config: CARConfig, *, scored: bool = False) -> str:
    """The column rewards are read from (``reward_column``, else ``reward``), present and numeric.

    Unscored data with a ``reward_model`` needs none (the model writes ``reward``); ``scored`` data always
    has its rewards in a column.
    """
    column = config.reward_column or "reward"
    if config.reward_model and not scored:
        return "reward"
    option = "reward_column" if config.reward_column else "reward (no reward_model or reward_column set)"
    need_column(column, ds.column_names, f"{option}: rewards of each row")
    check_reward_values(ds, column, config.reward_transform)
    return column


def check_scoring_inputs(ds: Any, config: CARConfig, *, fallback_reward_model: bool = False) -> Layout:
    """The layout of ``ds`` under ``config``, its reward column (when no reward model scores) and its values.

    ``fallback_reward_model``: the CLI's default (``add_car``'s bare use): with neither ``reward_column`` nor a
    ``reward`` column, the default reward model scores, so no column is needed.
    """
    layout = check_layout(ds, config)
    if fallback_reward_model and not config.reward_column and "reward" not in ds.column_names:
        return layout
    check_reward_column(ds, config)
    return layout

"""A job's inputs, read and checked before any model loads: data and model sources, columns, rewards.

The recipes and the CLI start hour-long jobs; a misspelt column found after the model loaded (or after
scoring) wastes that hour. These checks run first and raise :class:`~car_hf.errors.ConfigError` (an
option is wrong) or :class:`~car_hf.errors.InputError` (the data does not fit), naming the option or
the column and what is there instead.

Example:
    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"instruction": ["Hi?"], "output": ["Hello."], "judge_preference": [0.7]})
    >>> check_scoring_inputs(ds, CARConfig(reward_column="judge_preference")).response
    'output'
    >>> check_scoring_inputs(ds, CARConfig(reward_column="stars"))
    Traceback (most recent call last):
    ...
    car_hf.errors.InputError: column 'stars' (reward_column: rewards of each row) is missing; the dataset has columns ['instruction', 'output', 'judge_preference']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import CARConfig
from .data import FILE_BUILDERS, load_data
from .errors import ConfigError, InputError
from .formats import Layout, detect_layout, zoo_to_long

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
    if column not in columns:
        raise InputError(f"column {column!r} ({role}) is missing; the dataset has columns {list(columns)}")


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
    """Load rows for scoring or training: :func:`car_hf.data.load_data`, plus the paper's wide Generator-Zoo
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


def check_reward_values(ds: Any, column: str, transform: str, option: str = "reward_transform") -> None:
    """Rewards must be numbers; with the ``"raise"`` transform none may be negative. Reads one Arrow column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = ds.data.column(column)
    if pa.types.is_null(values.type):
        return
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise InputError(f"column {column!r} must hold numbers (rewards), but its type is {values.type}")
    if transform != "raise":
        return
    negative = pc.sum(pc.less(values, 0)).as_py() or 0
    if negative:
        raise InputError(
            f"column {column!r} has {negative} negative reward(s): CAR = reward / (1 + beta * loss) then favours "
            f"incompatible responses. Set {option} to sigmoid (Bradley-Terry rewards), minmax or shift"
        )


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


def check_scoring_inputs(ds: Any, config: CARConfig) -> Layout:
    """The layout of ``ds`` under ``config``, its reward column (when no reward model scores) and its values."""
    layout = check_layout(ds, config)
    check_reward_column(ds, config)
    return layout

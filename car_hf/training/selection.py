"""Data selection by CAR: :func:`select` (every mode), ``CARFilter`` (per-example CAR) and ``select_generator``.

:func:`select` is the one entry point: ``"generator"`` keeps the rows of the generator with the best
dataset-level CAR (the paper's use); ``"top_fraction"``, ``"top_k"``, ``"threshold"`` and
``"best_of_n"`` keep rows by per-example CAR through :class:`CARFilter`; ``"likeliest"`` keeps, per
instruction, the response the base model finds most likely (GRAPE, arXiv 2502.04194), optionally among
those with a reward >= a minimum; ``"none"`` keeps every row.
Every mode returns the rows, a summary dict, and a Trainer callback recording that summary in
``trainer_state.json`` (see :mod:`car_hf.training.callbacks`); model cards render the summary
(:func:`car_hf.publishing.cards.selection_section`).

A global cutoff needs the whole column, so per-example selection is two explicit steps: ``fit``
reads the scored columns once (cheap: two float columns), then the filter is applied, by
``Dataset.filter`` or by :meth:`CARFilter.apply`.

Example:
    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"instruction_id": [0, 0, 1, 1], "generator": ["a", "b", "a", "b"],
    ...                         "reward": [0.9, 0.5, 0.2, 0.6], "base_loss": [1.0, 1.0, 1.0, 3.0]})
    >>> best = CARFilter(group_by="instruction_id", keep="best", beta=0.0).apply(ds)
    >>> list(best["generator"])
    ['a', 'b']
    >>> list(CARFilter(top_k=1, beta=1.0).apply(ds)["reward"])
    [0.9]
    >>> list(CARFilter(group_by="instruction_id", keep="likeliest", min_reward=0.3).apply(ds)["generator"])
    ['a', 'b']
    >>> chosen = select(ds, "generator", n_bootstrap=0)
    >>> chosen.summary["generator"], chosen.summary["rows_kept"], list(chosen.leaderboard["generator"])
    ('a', 2, ['a', 'b'])
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from car_hf.training.callbacks import SelectionCallback, describe
from car_hf.core.car import example_car, transform_rewards
from car_hf.publishing.cards import leaderboard_markdown
from car_hf.core.config import REWARD_TRANSFORMS
from car_hf.core.errors import ConfigError
from car_hf.core.inputs import check_numbers
from car_hf.core.students import student_data
from car_hf.ranking.leaderboard import _table_frame, rank_generators

logger = logging.getLogger(__name__)

SELECT_MODES = ("none", "generator", "top_fraction", "top_k", "threshold", "best_of_n", "likeliest")
# What the value of a mode that takes one must be.
MODE_VALUES = {
    "top_fraction": "a fraction in (0, 1]",
    "top_k": "an integer >= 1 (the number of rows kept)",
    "threshold": "a finite CAR cutoff",
    "likeliest": "a finite minimum reward, or no value",
}
OPTIONAL_VALUE_MODES = ("likeliest",)
KEEP_POLICIES = ("best", "likeliest")


class CARFilter(SelectionCallback):
    """Keep the rows of a scored dataset with the best per-example CAR.

    Args:
        threshold: keep rows with ``car >= threshold``.
        top_fraction: keep the best ``ceil(top_fraction * n)`` rows (0 < f <= 1).
        top_k: keep the best ``top_k`` rows.
        group_by: with ``keep``: one row per group (e.g. ``"instruction_id"``). Applied before any
            global cutoff.
        keep: the per-group policy (required with ``group_by``): ``"best"``, the highest CAR
            (best-of-N over generators or samples); ``"likeliest"``, the lowest ``loss_column``: the
            response the base model finds most likely (GRAPE, arXiv 2502.04194; no global cutoff).
        min_reward: with ``keep="likeliest"``: only rows whose raw ``reward_column`` is >= this
            compete (a NaN reward never passes). A group with no such row (or none with a finite
            loss) is dropped and counted in the summary (``groups_dropped``).
        beta, reward_transform: how per-example CAR is computed from ``reward_column`` and
            ``loss_column`` (pool transforms such as ``"minmax"`` use the fitted dataset's pool).
        by: the generator column, for the generator mix in :meth:`summary`.

    Rows whose CAR (``keep="likeliest"``: loss) is NaN (no reward, empty or fully truncated response) are
    never kept; they are counted in the summary. Ties are broken by row order (the earlier row wins), so the selection
    is deterministic. With ``Dataset.filter``, pass ``with_indices=True`` to select exactly the
    fitted rows; without indices, the fitted cutoff is applied to each row's CAR (ties at the
    cutoff are then all kept, and ``group_by`` is unavailable).

    It is also a Trainer callback (:class:`~car_hf.training.callbacks.SelectionCallback`): passed to a Trainer
    once fitted, it logs its summary at train start and records it in ``trainer_state.json``.
    """

    def __init__(
        self,
        *,
        threshold: float | None = None,
        top_fraction: float | None = None,
        top_k: int | None = None,
        group_by: str | None = None,
        keep: str | None = None,
        min_reward: float | None = None,
        beta: float = 1.0,
        reward_transform: str = "raise",
        reward_column: str = "reward",
        loss_column: str = "base_loss",
        by: str = "generator",
    ):
        if sum(x is not None for x in (threshold, top_fraction, top_k)) > 1:
            raise ValueError("pass at most one of threshold=, top_fraction=, top_k=")
        if top_fraction is not None and not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if (group_by is None) != (keep is None) or keep not in (None, *KEEP_POLICIES):
            raise ValueError(f"a per-group selection needs group_by= and keep= (one of {KEEP_POLICIES}) together")
        cutoff = threshold is not None or top_fraction is not None or top_k is not None
        if keep == "likeliest" and cutoff:
            raise ValueError("keep='likeliest' takes no CAR cutoff (threshold=, top_fraction=, top_k=)")
        if min_reward is not None and (keep != "likeliest" or not math.isfinite(min_reward)):
            raise ValueError(f"min_reward needs keep='likeliest' and a finite value, got {min_reward!r}")
        if group_by is None and not cutoff:
            raise ValueError("nothing to select: pass threshold=, top_fraction=, top_k= or group_by= and keep=")
        self.threshold, self.top_fraction, self.top_k = threshold, top_fraction, top_k
        self.group_by, self.keep, self.min_reward = group_by, keep, min_reward
        self.beta, self.reward_transform = beta, reward_transform
        self.reward_column, self.loss_column, self.by = reward_column, loss_column, by
        self.kept_: np.ndarray | None = None
        self.cutoff_: float | None = threshold
        self.transform_record_: dict[str, Any] | None = None
        super().__init__()

    @property
    def mode(self) -> str:
        """The :data:`SELECT_MODES` name of this filter (a global cutoff names it when best-of-N has one too)."""
        if self.keep == "likeliest":
            return "likeliest"
        if self.threshold is not None:
            return "threshold"
        return "top_fraction" if self.top_fraction is not None else "top_k" if self.top_k is not None else "best_of_n"

    def _car(self, rewards: Sequence[float], losses: Sequence[float], names: Sequence[Any] | None = None) -> np.ndarray:
        record = self.transform_record_ or {}
        raw = np.asarray(rewards, dtype=float)
        if record.get("reward_transform") == "minmax":
            span = record["max"] - record["min"]
            values = (raw - record["min"]) / span if span > 0 else np.ones_like(raw)
        elif record.get("reward_transform") == "shift":
            values = raw + record["offset"]
        else:
            values, _ = transform_rewards(raw, self.reward_transform, names=names, column=self.reward_column)
        return example_car(values, losses, self.beta)

    def fit(self, dataset: Any) -> CARFilter:
        """Read the scored columns of ``dataset`` and decide which rows to keep.

        Raises:
            InputError: a needed column is missing (the message lists those present), or a reward or loss is
                text or ±inf (:func:`car_hf.core.inputs.check_numbers`: the message names the row and the column).
            ValueError: the selection keeps no row.
        """
        likeliest = self.keep == "likeliest"
        needed = {self.reward_column: "reward_column: rewards of each row"} \
            if not likeliest or self.min_reward is not None else {}
        needed |= {self.loss_column: "loss_column: base-model loss of each row"}
        needed |= {self.group_by: "group_by: the groups of a per-group selection"} if self.group_by else {}
        frame = _table_frame(dataset, [*needed, self.by], needed)
        losses = check_numbers(frame[self.loss_column], self.loss_column, names=frame.index, kind="loss")
        if likeliest:
            score = -losses  # the most likely response first; NaN (no finite loss) is never kept
            if self.min_reward is not None:
                rewards = check_numbers(frame[self.reward_column], self.reward_column, names=frame.index)
                below = ~(rewards >= self.min_reward)  # a NaN reward does not pass
                score = np.where(below, np.nan, score)
            self.transform_record_ = {"reward_transform": None}  # min_reward reads the raw column
        else:
            raw = check_numbers(frame[self.reward_column], self.reward_column, names=frame.index)
            _, self.transform_record_ = transform_rewards(raw, self.reward_transform, names=frame.index,
                                                          column=self.reward_column)
            score = self._car(raw, losses)
        finite = np.isfinite(score)
        # Best first; among equals the earlier row (lexsort: last key is primary).
        order = np.lexsort((np.arange(len(score)), -np.where(finite, score, -np.inf)))
        order = order[finite[order]]
        groups: dict[str, Any] = {}
        if self.group_by is not None:
            values = frame[self.group_by].to_numpy()
            _, first = np.unique(values[order], return_index=True)
            order = order[np.sort(first)]
            total = len(pd.unique(values))
            groups = {"groups_total": total, "groups_dropped": total - int(order.size)}
        if self.top_k is not None:
            order = order[: self.top_k]
        elif self.top_fraction is not None:
            order = order[: math.ceil(self.top_fraction * len(score))]
        elif self.threshold is not None:
            order = order[score[order] >= self.threshold]
        if order.size == 0:
            raise ValueError(
                f"the {self.mode} selection keeps 0 of {len(score)} rows ({int((~finite).sum())} have no finite "
                f"{'loss' + (' and reward >= min_reward' if self.min_reward is not None else '') if likeliest else 'CAR'}); "
                f"{'lower min_reward' if likeliest else 'lower the threshold'} or check the reward and base_loss columns"
            )
        if self.threshold is None and (self.top_k is not None or self.top_fraction is not None):
            self.cutoff_ = float(score[order[-1]])
        self.kept_ = np.sort(order)
        mix = {}
        if self.by in frame.columns:
            values, counts = np.unique(frame[self.by].to_numpy()[self.kept_].astype(str), return_counts=True)
            mix = {str(v): int(c) for v, c in zip(values, counts)}
        unscored = ({"rows_without_loss": int((~np.isfinite(losses)).sum()), "min_reward": self.min_reward,
                     "rows_below_min_reward": int((~finite & np.isfinite(losses)).sum())}
                    if likeliest else {"rows_without_car": int((~finite).sum())})
        self.summary_ = {
            "selection": self.mode, "rows_kept": int(self.kept_.size), "rows_total": len(score), **unscored,
            "beta": self.beta, **self.transform_record_, "reward_column": self.reward_column, "cutoff": self.cutoff_,
            "threshold": self.threshold, "top_fraction": self.top_fraction, "top_k": self.top_k,
            "group_by": self.group_by, **groups, "generator_mix": mix,
        }
        return self

    def apply(self, dataset: Any) -> Any:
        """``fit`` then keep the selected rows, in their original order."""
        self.fit(dataset)
        return dataset.select(self.kept_.tolist())

    def __call__(self, batch: Mapping[str, Sequence[Any]], indices: Sequence[int] | None = None) -> list[bool]:
        """For ``Dataset.filter(car_filter, batched=True, with_indices=True)``."""
        if indices is not None:
            if self.kept_ is None:
                raise RuntimeError("CARFilter is not fitted: call .fit(dataset) first (or use .apply(dataset))")
            return np.isin(np.asarray(indices), self.kept_).tolist()
        if self.group_by is not None:
            raise RuntimeError("a per-group selection needs row indices: filter(..., with_indices=True) after .fit(dataset)")
        if self.cutoff_ is None or (self.reward_transform in ("minmax", "shift") and self.transform_record_ is None):
            raise RuntimeError("CARFilter is not fitted: call .fit(dataset) first (or use .apply(dataset))")
        names = [f"{i} of this filter batch (filter with with_indices=True for dataset row numbers)"
                 for i in range(len(batch[self.loss_column]))]
        rewards = check_numbers(batch[self.reward_column], self.reward_column, names=names)
        car = self._car(rewards, check_numbers(batch[self.loss_column], self.loss_column, names=names, kind="loss"))
        return (np.isfinite(car) & (car >= self.cutoff_)).tolist()


def select_generator(
    dataset: Any,
    by: str = "generator",
    beta: float = 1.0,
    reward_transform: str = "raise",
    *,
    student: str | None = None,
    return_table: bool = False,
    **rank_options: Any,
) -> tuple[Any, ...]:
    """The paper's use of CAR: the generator with the best dataset-level CAR, and its rows.

    Returns ``(name, rows)`` where ``rows`` is the subset of ``dataset`` written by that generator (every column
    kept); with ``return_table=True``, ``(name, rows, table)`` with the :func:`~car_hf.rank_generators`
    leaderboard it was chosen from (``rank_options`` go there). Data scored under several students
    (``base_loss@<label>`` ...) is ranked for ``student``, the student being trained: a label, or the model id /
    folder whose label is among them (:func:`~car_hf.core.students.student_data`).

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"generator": ["a", "b", "a", "b"], "reward": [0.9, 0.8, 0.7, 0.9],
        ...                         "base_loss": [3.0, 1.0, 3.0, 1.2]})
        >>> name, rows = select_generator(ds, beta=1.0, n_bootstrap=0)
        >>> name, len(rows)
        ('b', 2)
        >>> two = Dataset.from_dict({"generator": ["a", "b"], "reward": [0.9, 0.8], "base_loss@s1": [1.0, 3.0],
        ...                          "base_loss@s2": [3.0, 1.0]})
        >>> [select_generator(two, student=s, n_bootstrap=0)[0] for s in ("s1", "org/s2")]
        ['a', 'b']
    """
    view, label = student_data(dataset, student)
    table = rank_generators(view, by=by, beta=beta, reward_transform=reward_transform, **rank_options)
    if label is not None:
        table.attrs.setdefault("car", {})["student"] = label
    best = table[by].iloc[0]
    rows = dataset.filter(lambda values: [v == best for v in values], input_columns=by, batched=True)
    return (best, rows, table) if return_table else (best, rows)


@dataclass
class Selection:
    """What :func:`select` returns: the kept rows, and what records and describes the choice."""

    rows: Any  # the selected Dataset, rows in their original order
    callback: SelectionCallback | None = None  # for the Trainer: logs and stores the summary (None for "none")
    summary: dict[str, Any] | None = None  # rendered by car_hf.publishing.cards.selection_section (None for "none")
    leaderboard: pd.DataFrame | None = None  # the rank_generators table, for "generator"


def check_selection(mode: str, value: float | None = None) -> float | int | None:
    """``value`` checked for selection ``mode`` and returned as :func:`select` uses it (an int for top_k).

    Reads no data, so callers can check a configuration before loading anything.

    Raises:
        ConfigError: naming the mode and the value: an unknown mode, a missing or out-of-range value
            for ``top_fraction``/``top_k``/``threshold``, or a value given to a mode that takes none.

    Example:
        >>> check_selection("top_k", 5.0), check_selection("generator")
        (5, None)
    """
    if mode not in SELECT_MODES:
        raise ConfigError(f"selection mode must be one of {SELECT_MODES}, got {mode!r}")
    if mode not in MODE_VALUES:
        if value is not None:
            raise ConfigError(f"selection mode {mode!r} takes no value, got {value!r}")
        return None
    if value is None and mode in OPTIONAL_VALUE_MODES:
        return None
    fits = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and (
        mode in ("threshold", "likeliest") or (mode == "top_fraction" and 0 < value <= 1)
        or (mode == "top_k" and value >= 1 and value == int(value)))
    if not fits:
        raise ConfigError(f"selection mode {mode!r} needs {MODE_VALUES[mode]}, got {value!r}")
    return int(value) if mode == "top_k" else float(value)


def select(
    dataset: Any,
    mode: str,
    value: float | None = None,
    *,
    beta: float = 1.0,
    reward_transform: str = "raise",
    reward_column: str = "reward",
    by: str = "generator",
    group_by: str = "instruction_id",
    n_bootstrap: int = 1000,
    scoring: Mapping[str, Any] | None = None,
    student: str | None = None,
) -> Selection:
    """Select training rows of a scored dataset by CAR, in any of :data:`SELECT_MODES`.

    Args:
        mode: ``"none"`` (every row), ``"generator"`` (every row of the generator with the best
            dataset-level CAR, :func:`select_generator`), ``"top_fraction"``, ``"top_k"``,
            ``"threshold"`` or ``"best_of_n"`` (per-example CAR, :class:`CARFilter`), ``"likeliest"`` (per
            group, the lowest ``base_loss``: GRAPE; :class:`CARFilter` with ``keep="likeliest"``).
        value: the fraction (top_fraction), row count (top_k), CAR cutoff (threshold) or optional
            minimum reward (likeliest); no other mode takes one.
        by: the generator column; ``group_by``: the groups of best-of-N and likeliest.
        n_bootstrap: resamples of the generator leaderboard's intervals (``"generator"``).
        scoring: the scoring record (``CARConfig.record()``), kept in the leaderboard's ``attrs``.
        student: for data scored under several students, the one being trained (a label or its model id:
            :func:`~car_hf.core.students.student_data`); the summary records it as ``student``. Rows keep every
            column.

    Every summary holds ``selection`` (the mode), ``rows_kept``, ``rows_total``, ``beta``,
    ``reward_transform``, ``reward_column`` and ``generator_mix``, plus the mode's own keys.

    Raises:
        ConfigError: an unknown mode, or a value that does not fit it (:func:`check_selection`), a negative
            beta or an unknown reward transform; checked before any data is read.
        InputError: a needed column is missing (the message lists those present), or a reward or loss is text
            or ±inf (naming the row and the column), or rewards are negative under ``reward_transform="raise"``.
        ValueError: the selection keeps no row.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"generator": ["a", "b", "a", "b"], "reward": [0.9, 0.8, 0.7, 0.9],
        ...                         "base_loss": [3.0, 1.0, 2.0, 1.0]})
        >>> chosen = select(ds, "top_fraction", 0.5)
        >>> list(chosen.rows["reward"]), chosen.summary["selection"], chosen.summary["generator_mix"]
        ([0.8, 0.9], 'top_fraction', {'b': 2})
        >>> select(ds, "top_k", 1.5)
        Traceback (most recent call last):
        ...
        car_hf.core.errors.ConfigError: selection mode 'top_k' needs an integer >= 1 (the number of rows kept), got 1.5
    """
    value = check_selection(mode, value)
    if beta < 0:
        raise ConfigError(f"beta must be >= 0, got {beta}")
    if reward_transform not in REWARD_TRANSFORMS:
        raise ConfigError(f"reward_transform must be one of {REWARD_TRANSFORMS}, got {reward_transform!r}")
    if mode == "none":
        return Selection(rows=dataset)
    view, label = student_data(dataset, student)
    if mode == "generator":
        name, rows, table = select_generator(dataset, by=by, beta=beta, reward_transform=reward_transform,
                                             reward_column=reward_column, n_bootstrap=n_bootstrap, config=scoring,
                                             student=label, return_table=True)
        summary = {"selection": mode, "generator": str(name), "rows_kept": len(rows), "rows_total": len(dataset),
                   "beta": beta, "reward_transform": reward_transform, "reward_column": reward_column,
                   "generator_mix": {str(name): len(rows)}, "leaderboard": leaderboard_markdown(table)}
        summary |= {"student": label} if label is not None else {}
        logger.info("%s\n%s", describe(summary), summary["leaderboard"])
        return Selection(rows=rows, callback=SelectionCallback(summary), summary=summary, leaderboard=table)
    rule = {"top_fraction": {"top_fraction": value}, "top_k": {"top_k": value}, "threshold": {"threshold": value},
            "best_of_n": {"group_by": group_by, "keep": "best"},
            "likeliest": {"group_by": group_by, "keep": "likeliest", "min_reward": value}}[mode]
    car_filter = CARFilter(beta=beta, reward_transform=reward_transform, reward_column=reward_column, by=by, **rule)
    rows = dataset.select(car_filter.fit(view).kept_.tolist())  # the rows as they are, every column kept
    if label is not None:
        car_filter.summary_["student"] = label
    logger.info("%s", describe(car_filter.summary()))
    return Selection(rows=rows, callback=car_filter, summary=car_filter.summary())

"""Data selection by CAR: ``CARFilter`` (threshold, top fraction, top-k, best-of-N) and ``select_generator``.

A global cutoff needs the whole column, so selection is two explicit steps: ``fit`` reads the scored
columns once (cheap: two float columns), then the filter is applied, by ``Dataset.filter`` or by
:meth:`CARFilter.apply`. The filter is also a ``transformers.TrainerCallback``: passed to a
Trainer, it logs what was selected at train start and records it in ``trainer_state.json`` and the
model card.

Example:
    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"instruction_id": [0, 0, 1, 1], "generator": ["a", "b", "a", "b"],
    ...                         "reward": [0.9, 0.5, 0.2, 0.6], "base_loss": [1.0, 1.0, 1.0, 3.0]})
    >>> best = CARFilter(group_by="instruction_id", keep="best", beta=0.0).apply(ds)
    >>> list(best["generator"])
    ['a', 'b']
    >>> list(CARFilter(top_k=1, beta=1.0).apply(ds)["reward"])
    [0.9]
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .car import example_car, transform_rewards
from .ranking import _table_frame, rank_generators

logger = logging.getLogger(__name__)

CARD_HEADING = "## CAR data selection"


class CARFilter(TrainerCallback, ExportableState):
    """Keep the rows of a scored dataset with the best per-example CAR.

    Args:
        threshold: keep rows with ``car >= threshold``.
        top_fraction: keep the best ``ceil(top_fraction * n)`` rows (0 < f <= 1).
        top_k: keep the best ``top_k`` rows.
        group_by: with ``keep="best"``: one row per group (e.g. ``"instruction_id"``), the one with
            the highest CAR (best-of-N over generators or samples). Applied before any global cutoff.
        keep: ``"best"`` (the only per-group policy; required with ``group_by``).
        beta, reward_transform: how per-example CAR is computed from ``reward_column`` and
            ``loss_column`` (pool transforms such as ``"minmax"`` use the fitted dataset's pool).
        by: the generator column, for the generator mix in :meth:`summary`.

    Rows whose CAR is NaN (no reward, empty or fully truncated response) are never kept; they are
    counted in the summary. Ties are broken by row order (the earlier row wins), so the selection
    is deterministic. With ``Dataset.filter``, pass ``with_indices=True`` to select exactly the
    fitted rows; without indices, the fitted cutoff is applied to each row's CAR (ties at the
    cutoff are then all kept, and ``group_by`` is unavailable).
    """

    def __init__(
        self,
        *,
        threshold: float | None = None,
        top_fraction: float | None = None,
        top_k: int | None = None,
        group_by: str | None = None,
        keep: str | None = None,
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
        if (group_by is None) != (keep is None) or keep not in (None, "best"):
            raise ValueError("best-of-N needs group_by= and keep='best' together")
        if group_by is None and threshold is None and top_fraction is None and top_k is None:
            raise ValueError("nothing to select: pass threshold=, top_fraction=, top_k= or group_by=/keep='best'")
        self.threshold, self.top_fraction, self.top_k = threshold, top_fraction, top_k
        self.group_by, self.keep = group_by, keep
        self.beta, self.reward_transform = beta, reward_transform
        self.reward_column, self.loss_column, self.by = reward_column, loss_column, by
        self.kept_: np.ndarray | None = None
        self.cutoff_: float | None = threshold
        self.transform_record_: dict[str, Any] | None = None
        self.summary_: dict[str, Any] | None = None

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

    def fit(self, dataset: Any) -> "CARFilter":
        """Read the scored columns of ``dataset`` and decide which rows to keep.

        Raises:
            KeyError: a needed column is missing (the message lists those present).
            ValueError: the selection keeps no row.
        """
        columns = [self.reward_column, self.loss_column] + [c for c in (self.group_by, self.by) if c]
        frame = _table_frame(dataset, columns)
        for column in columns[:2] + ([self.group_by] if self.group_by else []):
            if column not in frame.columns:
                raise KeyError(f"column {column!r} is missing; the dataset has columns {list(frame.columns)}")
        raw = frame[self.reward_column].to_numpy(dtype=float)
        _, self.transform_record_ = transform_rewards(raw, self.reward_transform, column=self.reward_column)
        car = self._car(raw, frame[self.loss_column].to_numpy(dtype=float))
        finite = np.isfinite(car)
        # Best first; among equals the earlier row (lexsort: last key is primary).
        order = np.lexsort((np.arange(len(car)), -np.where(finite, car, -np.inf)))
        order = order[finite[order]]
        if self.group_by is not None:
            groups = frame[self.group_by].to_numpy()
            _, first = np.unique(groups[order], return_index=True)
            order = order[np.sort(first)]
        if self.top_k is not None:
            order = order[: self.top_k]
        elif self.top_fraction is not None:
            order = order[: math.ceil(self.top_fraction * len(car))]
        elif self.threshold is not None:
            order = order[car[order] >= self.threshold]
        if order.size == 0:
            raise ValueError(
                f"the CAR selection keeps 0 of {len(car)} rows ({int((~finite).sum())} have no finite CAR); "
                "lower the threshold or check the reward and base_loss columns"
            )
        if self.threshold is None and (self.top_k is not None or self.top_fraction is not None):
            self.cutoff_ = float(car[order[-1]])
        self.kept_ = np.sort(order)
        mix = {}
        if self.by in frame.columns:
            values, counts = np.unique(frame[self.by].to_numpy()[self.kept_].astype(str), return_counts=True)
            mix = {str(v): int(c) for v, c in zip(values, counts)}
        self.summary_ = {
            "rows_kept": int(self.kept_.size), "rows_total": int(len(car)), "rows_without_car": int((~finite).sum()),
            "beta": self.beta, **self.transform_record_, "cutoff": self.cutoff_, "threshold": self.threshold,
            "top_fraction": self.top_fraction, "top_k": self.top_k, "group_by": self.group_by,
            "generator_mix": mix,
        }
        return self

    def summary(self) -> dict[str, Any]:
        """What was selected: rows kept / total, beta, cutoff, reward transform, generator mix."""
        if self.summary_ is None:
            raise RuntimeError("CARFilter is not fitted: call .fit(dataset) first")
        return dict(self.summary_)

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
            raise RuntimeError("best-of-N needs row indices: filter(..., with_indices=True) after .fit(dataset)")
        if self.cutoff_ is None or (self.reward_transform in ("minmax", "shift") and self.transform_record_ is None):
            raise RuntimeError("CARFilter is not fitted: call .fit(dataset) first (or use .apply(dataset))")
        car = self._car(batch[self.reward_column], batch[self.loss_column])
        return (np.isfinite(car) & (car >= self.cutoff_)).tolist()

    # --- TrainerCallback: record the selection where training results live -----------------
    def state(self) -> dict[str, Any]:
        """Stored by the Trainer in ``trainer_state.json`` (``stateful_callbacks.CARFilter``)."""
        return {"args": {"threshold": self.threshold, "top_fraction": self.top_fraction, "top_k": self.top_k,
                         "group_by": self.group_by, "keep": self.keep, "beta": self.beta,
                         "reward_transform": self.reward_transform},
                "attributes": {"summary_": self.summary_}}

    def on_train_begin(self, args, state, control, **kwargs):
        summary = self.summary()
        logger.info("CAR selection: kept %d of %d rows (beta=%s, cutoff=%s, generators=%s)", summary["rows_kept"],
                    summary["rows_total"], summary["beta"], summary["cutoff"], summary["generator_mix"])
        state.stateful_callbacks["CARFilter"] = self.state()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # one writer per card
            self.write_model_card(Path(args.output_dir) / "README.md")

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write_model_card(Path(args.output_dir) / "README.md")

    def card_section(self) -> str:
        """A markdown section describing the selection, for model cards."""
        summary = self.summary()
        lines = [CARD_HEADING, "",
                 f"Trained on {summary['rows_kept']} of {summary['rows_total']} rows selected by per-example "
                 "Compatibility-Adjusted Reward, CAR = reward / (1 + beta * base_loss) "
                 "([arXiv 2411.07133](https://arxiv.org/abs/2411.07133)), with "
                 "[car_hf](https://github.com/car-hf/car_hf).", "", "| setting | value |", "|---|---|"]
        for key in ("beta", "reward_transform", "cutoff", "threshold", "top_fraction", "top_k", "group_by",
                    "rows_without_car"):
            if summary.get(key) is not None:
                lines.append(f"| {key} | {summary[key]} |")
        if summary["generator_mix"]:
            lines += ["", "| generator | rows kept |", "|---|---|"]
            lines += [f"| {g} | {n} |" for g, n in sorted(summary["generator_mix"].items(), key=lambda x: -x[1])]
        return "\n".join(lines) + "\n"

    def write_model_card(self, path: Path) -> None:
        """Add (or replace) the selection section in an existing model card; no card, no change."""
        if self.summary_ is not None:
            write_card_section(path, self.card_section())


def write_card_section(path: Path, section: str) -> None:
    """Put ``section`` (starting with :data:`CARD_HEADING`) at the end of the model card at ``path``,
    replacing an earlier one, so repeated saves never stack copies. No card, no change."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    if CARD_HEADING in text:
        head, _, rest = text.partition(CARD_HEADING)
        following = rest.find("\n## ")
        text = head + (rest[following + 1 :] if following >= 0 else "")
    path.write_text(text.rstrip() + "\n\n" + section, encoding="utf-8")


def select_generator(
    dataset: Any,
    by: str = "generator",
    beta: float = 1.0,
    reward_transform: str = "raise",
    *,
    return_table: bool = False,
    **rank_options: Any,
) -> tuple[Any, ...]:
    """The paper's use of CAR: the generator with the best dataset-level CAR, and its rows.

    Returns ``(name, rows)`` where ``rows`` is the subset of ``dataset`` written by that generator;
    with ``return_table=True``, ``(name, rows, table)`` with the :func:`~car_hf.rank_generators`
    leaderboard it was chosen from (``rank_options`` go there).

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"generator": ["a", "b", "a", "b"], "reward": [0.9, 0.8, 0.7, 0.9],
        ...                         "base_loss": [3.0, 1.0, 3.0, 1.2]})
        >>> name, rows = select_generator(ds, beta=1.0, n_bootstrap=0)
        >>> name, len(rows)
        ('b', 2)
    """
    columns = dataset.column_names if hasattr(dataset, "column_names") else list(dataset)
    if by not in columns:
        raise KeyError(f"select_generator needs a generator column {by!r}; the dataset has columns {list(columns)}")
    table = rank_generators(dataset, by=by, beta=beta, reward_transform=reward_transform, **rank_options)
    best = table[by].iloc[0]
    rows = dataset.filter(lambda values: [v == best for v in values], input_columns=by, batched=True)
    return (best, rows, table) if return_table else (best, rows)

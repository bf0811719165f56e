"""Trainer callbacks that record a CAR data selection where training results live.

:class:`SelectionCallback` is the one such callback (``CARFilter`` is one; ``car_hf.training.selection.select``
returns one for every mode): at train start it logs the selection and stores its summary in the
trainer state, which the Trainer saves as ``trainer_state.json`` with every checkpoint and at the end,
under ``stateful_callbacks["CARSelection"]``. :func:`read_selection_summary` reads it back from a saved
folder (``car-hf push`` does, to put it in the model card).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from transformers import TrainerState
    >>> callback = SelectionCallback({"selection": "top_k", "rows_kept": 2, "rows_total": 8, "top_k": 2})
    >>> state = TrainerState()
    >>> callback.on_train_begin(None, state, None)
    >>> folder = Path(tempfile.mkdtemp())
    >>> state.save_to_json(str(folder / "trainer_state.json"))
    >>> read_selection_summary(folder)["rows_kept"]
    2
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from car_hf.publishing.cards import CARD_BEGIN, write_model_card

logger = logging.getLogger(__name__)

STATE_KEY = "CARSelection"
# Logged at train start, when present, after the counts.
LOGGED_KEYS = ("generator", "beta", "reward_transform", "cutoff", "group_by", "generator_mix")


def describe(summary: Mapping[str, Any]) -> str:
    """One log line for a selection summary.

    Example:
        >>> describe({"selection": "generator", "generator": "b", "rows_kept": 2, "rows_total": 4, "beta": 1.0})
        'CAR selection (generator): kept 2 of 4 rows; generator=b, beta=1.0'
    """
    details = ", ".join(f"{key}={summary[key]}" for key in LOGGED_KEYS if summary.get(key) is not None)
    return (f"CAR selection ({summary.get('selection', 'unnamed')}): kept {summary.get('rows_kept')} of "
            f"{summary.get('rows_total')} rows" + (f"; {details}" if details else ""))


class SelectionCallback(TrainerCallback):
    """Records a selection summary in ``trainer_state.json`` (``stateful_callbacks["CARSelection"]``).

    Not an ``ExportableState``: the Trainer stores those under their class name, which would give a
    second copy under "CARFilter"; the summary is written under one key, at train start.

    Model cards: a callback cannot see the trainer write its card (``create_model_card`` is no
    callback event), so after each save and at train end it only completes a ``README.md`` that lacks
    car_hf's section (a plain ``SFTTrainer`` rewrites it at every checkpoint), through the one card
    writer, :func:`car_hf.publishing.cards.write_model_card`. A card that has the section (``CARSFTTrainer``
    writes it, with the hyper-parameters too) is left alone. With a plain ``Trainer``, call
    ``write_model_card(output_dir, base_model=..., selection=read_selection_summary(output_dir))``
    after ``trainer.create_model_card()``, or publish with ``car-hf push``.
    """

    def __init__(self, summary: Mapping[str, Any] | None = None):
        self.summary_: dict[str, Any] | None = dict(summary) if summary is not None else None

    def summary(self) -> dict[str, Any]:
        """The selection summary (a copy)."""
        if self.summary_ is None:
            raise RuntimeError(f"{type(self).__name__} holds no selection yet (CARFilter: call .fit(dataset) first)")
        return dict(self.summary_)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        summary = self.summary()
        logger.info("%s", describe(summary))
        state.stateful_callbacks[STATE_KEY] = {"summary": summary}

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._complete_card(Path(args.output_dir), state)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._complete_card(Path(args.output_dir), state)

    def _complete_card(self, folder: Path, state: TrainerState) -> None:
        readme = folder / "README.md"
        if (state.is_world_process_zero and self.summary_ is not None and readme.is_file()
                and CARD_BEGIN not in readme.read_text(encoding="utf-8")):
            write_model_card(folder, base_model=None, selection=self.summary_)


def read_selection_summary(folder: str | Path) -> dict[str, Any] | None:
    """The selection summary stored in ``<folder>/trainer_state.json``, or None.

    Also reads what earlier car_hf versions stored: ``CARFilter`` (``attributes.summary_``) and the
    SFT recipe's ``GeneratorSelection`` (``args.summary`` and ``args.leaderboard``).
    """
    path = Path(folder) / "trainer_state.json"
    if not path.is_file():
        return None
    stored = json.loads(path.read_text(encoding="utf-8")).get("stateful_callbacks") or {}

    def entry(key: str) -> dict[str, Any]:
        value = stored.get(key) or {}
        return value[-1] if isinstance(value, list) else value  # several instances: the last one

    if entry(STATE_KEY).get("summary"):
        return dict(entry(STATE_KEY)["summary"])
    if entry("CARFilter").get("attributes", {}).get("summary_"):
        return dict(entry("CARFilter")["attributes"]["summary_"])
    legacy = entry("GeneratorSelection").get("args", {})
    if legacy.get("summary"):
        return {**legacy["summary"], "leaderboard": legacy.get("leaderboard") or None}
    return None

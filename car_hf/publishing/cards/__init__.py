"""car_hf's model and dataset cards: one writer each, built on ``huggingface_hub``'s card templates.

The prose lives in Jinja templates shipped with the package (``car_hf/publishing/cards/templates``); the code
computes the values and tables that fill them (:mod:`.common` formats cells and tables,
:mod:`.dataset` and :mod:`.model` build the cards). Every model card car_hf writes, from the TRL
trainer, a Trainer callback or ``car-hf push``, goes through :func:`write_model_card`.

Example:
    >>> from car_hf.publishing.cards import model_card
    >>> card = model_card(base_model=None, selection_summary={"selection": "best_of_n", "rows_kept": 4,
    ...                                                       "rows_total": 12, "group_by": "instruction_id"})
    >>> [line for line in card.text.splitlines() if line.startswith("## ")]
    ['## CAR data selection', '## Citation (CAR)']
"""

from car_hf.publishing.cards.common import CITATION, key_value_table, leaderboard_markdown
from car_hf.publishing.cards.dataset import CONFIG_KEYS, DATA_DIR, DATASET_TAGS, dataset_card, dataset_splits, leaderboard_page, scoring_record
from car_hf.publishing.cards.model import (
    CARD_BEGIN,
    CARD_END,
    CARD_HEADING,
    MODEL_TAGS,
    CardInfo,
    merge_model_card,
    model_card,
    selection_section,
    write_model_card,
)

__all__ = [
    "CARD_BEGIN",
    "CARD_END",
    "CARD_HEADING",
    "CITATION",
    "CONFIG_KEYS",
    "DATASET_TAGS",
    "DATA_DIR",
    "MODEL_TAGS",
    "CardInfo",
    "dataset_card",
    "dataset_splits",
    "key_value_table",
    "leaderboard_markdown",
    "leaderboard_page",
    "merge_model_card",
    "model_card",
    "scoring_record",
    "selection_section",
    "write_model_card",
]

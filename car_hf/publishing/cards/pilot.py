"""The card of pushed pilot results: a ``README.md`` for the folder :meth:`car_hf.evaluation.pilot_report.PilotReport.save`
writes, so ``huggingface_hub.upload_folder`` publishes the report with its picture and metadata.

Example:
    >>> import pandas as pd
    >>> from car_hf.evaluation.pilot_report import PilotReport
    >>> teachers = pd.DataFrame({"teacher": ["a", "b"], "chosen_because": ["CAR rank 1", "CAR bottom"],
    ...                          "car": [0.5, 0.2], "reward": [0.8, 0.6], "realized": [0.6, 0.1],
    ...                          "realized_low": [0.5, 0.0], "realized_high": [0.7, 0.2],
    ...                          "gain_over_untuned": [0.5, 0.0]})
    >>> cost = {"total": {"compute_seconds": 60.0, "wall_seconds": 61.0, "processes": 1, "device": "cpu"}}
    >>> report = PilotReport("accuracy", teachers, {"mean": 0.1, "low": 0.0, "high": 0.2, "n": 20}, {},
    ...                      pd.DataFrame(), {"used": 1.0}, {"n_instructions": 40, "n_heldout": 20}, cost)
    >>> text = pilot_card_text(report, student="google/gemma-3-270m")
    >>> for line in text.splitlines():
    ...     if line.startswith("#"):
    ...         print(line)
    # CAR pilot: google/gemma-3-270m
    ## Pilot: predicted vs. realized (accuracy)
    ### Spearman ρ of each signal against the realized performance
    ## Citation (CAR)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCardData

from car_hf.publishing.cards.common import CITATION, link

PILOT_TAGS = ["car-hf", "car-pilot", "distillation"]


def pilot_card_text(report: Any, student: str | None = None) -> str:
    """The card of a :class:`car_hf.evaluation.pilot_report.PilotReport`: metadata, what a pilot is, the report (with the picture) and the citation."""
    metadata = DatasetCardData(tags=PILOT_TAGS).to_yaml()
    name = student or "your student"
    intro = (f"Which teacher tunes {link(student) if student else name} best? CAR (Compatibility-Adjusted Reward) "
             "predicted it from the teachers' answers; this pilot fine-tuned the student on each candidate "
             "teacher's answers to the same instructions, evaluated every tuned student on the same held-out "
             "items, and compares the prediction with what was realized. `report.json`, `teachers.csv`, "
             "`spearman.csv` and `items.csv` (per-item results) hold the numbers.")
    return "\n".join([f"---\n{metadata}\n---", "", f"# CAR pilot: {name}", "", intro, "",
                      "![predicted CAR vs. realized performance](pilot.png)", "", report.to_markdown(),
                      "## Citation (CAR)", "", "```bibtex", CITATION, "```", ""])


def write_pilot_card(report: Any, folder: str | Path, student: str | None = None) -> Path:
    """Write the card as ``folder/README.md``; returns its path."""
    path = Path(folder) / "README.md"
    path.write_text(pilot_card_text(report, student))
    return path

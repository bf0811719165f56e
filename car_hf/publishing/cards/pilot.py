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

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCardData

from car_hf.publishing.cards.common import CITATION, link, table, text

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
                      results_section(report.teachers.to_dict("records"), report.evaluations), "",
                      "## Citation (CAR)", "", "```bibtex", CITATION, "```", ""])


def _interval(entry: Any) -> str | None:
    """``mean [low, high]`` of a summary entry; None without a finite mean."""
    value = entry.get("mean") if isinstance(entry, dict) else None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    low, high = entry.get("low"), entry.get("high")
    bounded = all(isinstance(b, (int, float)) and math.isfinite(b) for b in (low, high))
    return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if bounded else "")


def results_section(teachers: Sequence[Mapping[str, Any]], evaluations: Mapping[str, Any]) -> str:
    """The card's results: per teacher (linked to its Hub repo when it is one) its predicted signals and every
    realized measure of its tuned student (``evaluations``: name → an evaluation with a ``summary``; one that is
    no teacher's, the untuned student, is the last row). Empty without evaluations.

    >>> class Evaluated:
    ...     summary = {"accuracy": {"mean": 0.5, "low": 0.3, "high": 0.7, "n": 20}, "harness": {"mean": 0.25}}
    >>> print(results_section([{"teacher": "org/model", "chosen_because": "CAR rank 1", "car": 0.41}],
    ...                       {"org/model": Evaluated()}).splitlines()[-1])
    | [`org/model`](https://huggingface.co/org/model) | CAR rank 1  | 0.41  | 0.500 [0.300, 0.700] | 0.250       |
    """
    if not evaluations:
        return ""
    measures = list(dict.fromkeys(m for e in evaluations.values() for m, v in e.summary.items()
                                  if _interval(v) is not None))
    signals = [c for c in ("car", "reward", "base_loss") if any(c in t for t in teachers)]
    named = {t["teacher"] for t in teachers}
    rows = [[link(t["teacher"]), text(t.get("chosen_because"))]
            + [text(round(t[c], 4)) if isinstance(t.get(c), (int, float)) else "n/a" for c in signals]
            + [_interval(evaluations[t["teacher"]].summary.get(m)) or "n/a" if t["teacher"] in evaluations else "n/a"
               for m in measures] for t in teachers]
    rows += [[text(name), "untuned"] + ["n/a"] * len(signals)
             + [_interval(e.summary.get(m)) or "n/a" for m in measures]
             for name, e in evaluations.items() if name not in named]
    return "\n\n".join(["## Teachers, signals and realized scores",
                        "Each teacher's predicted signals and the realized scores of the student tuned on its "
                        "answers (mean [bootstrap CI over held-out items]); `harness` is the mean over tasks of "
                        "each lm-evaluation-harness task's primary metric.",
                        table(["teacher", "chosen as", *signals, *(f"`{m}`" for m in measures)], rows)])


def write_pilot_card(report: Any, folder: str | Path, student: str | None = None) -> Path:
    """Write the card as ``folder/README.md``; returns its path."""
    path = Path(folder) / "README.md"
    path.write_text(pilot_card_text(report, student))
    return path

"""Evaluation results the Hub's way: a tuned student's evaluation in its card's ``model-index`` and, for
benchmarks the Hub hosts, in ``.eval_results/*.yaml``; the pilot's results linked from its card.

Where they come from: ``recipes/evaluate_student.py`` stores a student's evaluation in its model folder
(:func:`write_evaluation_record`: ``evaluation/results.json``, every measure's mean, interval and n, the held-out
set, each harness task's metric, filter, data and shots; :func:`evaluation_record` builds it from an evaluation's
summary). ``car-hf push`` (:func:`car_hf.publishing.hub.push_model`) reads it back and publishes it twice:

* ``model-index`` in the card's YAML, the format the Hub has long read for model results: one
  ``huggingface_hub.EvalResult`` per measure (``ModelCardData(eval_results=..., model_name=...)``,
  :func:`model_index_results`), with an "Evaluation" table in the card's car_hf section
  (:func:`evaluation_section`);
* ``.eval_results/<task>.yaml``, the Hub's current convention (https://huggingface.co/docs/hub/eval-results;
  written with huggingface_hub's ``EvalResultEntry`` and ``eval_result_entries_to_yaml``,
  :func:`eval_result_entries`). An entry names a benchmark dataset repo on the Hub (``dataset.id``) and one of its
  tasks, so only harness tasks over a Hub dataset get one: ``dataset.id`` is the task's ``dataset_path`` and
  ``task_id`` the harness task's name; the Hub lists it where that dataset is a registered benchmark with that
  task. Local tasks and car_hf's own held-out scorers are in the model-index only (their data is no benchmark).

Example:
    >>> record = evaluation_record({"accuracy": {"mean": 0.4, "low": 0.2, "high": 0.6, "n": 20}},
    ...                            student="runs/sft", heldout="heldout.jsonl", date="2026-12-03")
    >>> [(r.dataset_type, r.metric_type, r.metric_value) for r in model_index_results(record)]
    [('car_hf-heldout', 'accuracy', 0.4)]
    >>> eval_result_entries(record)   # no Hub benchmark among them
    []
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from car_hf.core.errors import ConfigError
from car_hf.publishing.cards.common import is_hub_id, link, plain, table, text

EVALUATION_FILE = "evaluation/results.json"
"""Where a student's evaluation is kept in its model folder (a subfolder: the caches' file digests, which read a
model folder's top level, do not change when it is written)."""
EVAL_RESULTS_FOLDER = ".eval_results"
LOCAL_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow", "pandas", "webdataset"})
HARNESS = "harness"
TASK_PREFIX = "harness:"


def evaluation_record(summary: Mapping[str, Mapping[str, Any]], *, student: str, heldout: str | None = None,
                      heldout_split: str | None = None, date: str | None = None) -> dict[str, Any]:
    """The record of one evaluation: ``summary`` (measure → mean, low, high, n, and a harness task's
    description), the student, the held-out data and the date (today, UTC, by default); a missing value (NaN) as
    None, so the record is plain JSON."""
    return _no_nan({"student": student, "heldout": heldout, "heldout_split": heldout_split,
                  "date": date or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "measures": {m: dict(v) for m, v in summary.items()}})


def _no_nan(value: Any) -> Any:
    value = plain(value)
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_evaluation_record(folder: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as ``<folder>/evaluation/results.json`` (replacing an earlier one); returns its path."""
    path = Path(folder) / EVALUATION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_no_nan(dict(record)), indent=2, default=str) + "\n", encoding="utf-8")
    return path


def read_evaluation_record(folder: str | Path) -> dict[str, Any] | None:
    """The record :func:`write_evaluation_record` left in ``folder``, or None."""
    path = Path(folder) / EVALUATION_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _value(entry: Mapping[str, Any]) -> float | None:
    value = entry.get("mean")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _hub_dataset(task: Mapping[str, Any]) -> str | None:
    """A harness task's Hub dataset id (None for a task over local files)."""
    path = task.get("dataset_path")
    if not isinstance(path, str) or path in LOCAL_BUILDERS or "/" not in path or Path(path).exists():
        return None
    return path if is_hub_id(path) else None


def _described(measure: str, entry: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    """How a measure reads in the model-index and the card: dataset type and name, metric type and name."""
    if measure == HARNESS:
        tasks = ", ".join(entry.get("tasks") or [])
        return {"dataset_type": "lm-evaluation-harness", "dataset_name": f"lm-evaluation-harness: {tasks}",
                "metric_type": "harness_mean", "metric_name": "mean of per-task primary metrics"}
    if measure.startswith(TASK_PREFIX):
        task = measure[len(TASK_PREFIX):]
        shots = entry.get("n_shot")
        return {"dataset_type": _hub_dataset(entry) or task, "dataset_name": task,
                "dataset_config": entry.get("dataset_name"), "dataset_split": entry.get("split"),
                "metric_type": entry.get("metric") or measure,
                "metric_name": f"{entry.get('metric')} ({entry.get('filter')}"
                               + (f", {shots}-shot)" if shots is not None else ")")}
    heldout = record.get("heldout")
    return {"dataset_type": heldout if heldout and _hub_dataset({"dataset_path": heldout}) else "car_hf-heldout",
            "dataset_name": f"held-out set {heldout}" if heldout else "held-out set",
            "dataset_split": record.get("heldout_split"), "metric_type": measure, "metric_name": measure}


def model_index_results(record: Mapping[str, Any]) -> list[Any]:
    """One ``huggingface_hub.EvalResult`` per measure with a finite mean (text-generation results)."""
    from huggingface_hub import EvalResult

    results = []
    for measure, entry in record.get("measures", {}).items():
        value = _value(entry)
        if value is None:
            continue
        described = {k: v for k, v in _described(measure, entry, record).items() if v is not None}
        results.append(EvalResult(task_type="text-generation", task_name="Text Generation", metric_value=value,
                                  **described))
    return results


def eval_result_entries(record: Mapping[str, Any], repo_id: str | None = None) -> list[Any]:
    """The ``.eval_results`` entries (``huggingface_hub.EvalResultEntry``): one per harness task over a Hub
    dataset, with the evaluation's date and, given ``repo_id``, the model repo as its source."""
    entries = []
    for measure, entry in record.get("measures", {}).items():
        dataset, value = _hub_dataset(entry), _value(entry)
        if not measure.startswith(TASK_PREFIX) or dataset is None or value is None:
            continue
        try:
            from huggingface_hub import EvalResultEntry, constants
        except ImportError:  # added in huggingface_hub 1.4
            raise ConfigError(".eval_results files need huggingface_hub>=1.4 (EvalResultEntry): "
                              "pip install -U huggingface_hub") from None

        shots = entry.get("n_shot")
        notes = (f"lm-evaluation-harness {measure[len(TASK_PREFIX):]}: {entry.get('metric')} "
                 f"({entry.get('filter')}), " + (f"{shots}-shot, " if shots is not None else "") + f"n={entry['n']}")
        entries.append(EvalResultEntry(
            dataset_id=dataset, task_id=measure[len(TASK_PREFIX):], value=value, date=record.get("date"),
            source_url=f"{constants.ENDPOINT}/{repo_id}" if repo_id else None,
            source_name="car_hf evaluation" if repo_id else None, notes=notes))
    return entries


def write_eval_results(folder: str | Path, record: Mapping[str, Any], repo_id: str | None = None) -> list[Path]:
    """Write ``.eval_results/<task>.yaml`` per :func:`eval_result_entries` entry into a model folder (earlier
    files of the same tasks replaced); returns their paths."""
    import yaml
    from huggingface_hub import eval_result_entries_to_yaml

    written = []
    for entry in eval_result_entries(record, repo_id):
        path = Path(folder) / EVAL_RESULTS_FOLDER / f"{entry.task_id}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(eval_result_entries_to_yaml([entry]), sort_keys=False), encoding="utf-8")
        written.append(path)
    return written


def _interval(entry: Mapping[str, Any]) -> str:
    value, low, high = _value(entry), entry.get("low"), entry.get("high")
    if value is None:
        return "n/a"
    bounds = isinstance(low, (int, float)) and isinstance(high, (int, float)) and math.isfinite(low) and \
        math.isfinite(high)
    return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if bounds else "")


def evaluation_section(record: Mapping[str, Any] | None) -> str:
    """The card's "Evaluation" section: one row per measure (value [interval], n, data), and the rule that
    combines harness tasks."""
    if not record or not record.get("measures"):
        return ""
    rows = []
    for measure, entry in record["measures"].items():
        described = _described(measure, entry, record)
        data = link(described["dataset_type"], "dataset") if _hub_dataset(
            {"dataset_path": described["dataset_type"]}) else text(described["dataset_name"])
        rows.append([f"`{measure}`", _interval(entry), text(entry.get("n")), data, text(described["metric_name"])])
    notes = [f"Evaluated {record.get('date', '')[:10]} by car_hf (`recipes/evaluate_student.py`); intervals are "
             "percentile bootstraps over items."]
    if HARNESS in record["measures"]:
        notes.append("`harness` combines the lm-evaluation-harness tasks by the mean over tasks of each task's "
                     "primary metric; `harness:<task>` is one task's.")
    return "\n\n".join(["## Evaluation", " ".join(notes),
                        table(["measure", "value [CI]", "n", "data", "metric"], rows)])

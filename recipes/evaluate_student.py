#!/usr/bin/env python
"""Evaluate a tuned student on held-out instructions, against the untuned student.

    python recipes/tiny_model.py   # once: a tiny model, synthetic data and held-out tasks under runs/
    python recipes/sft.py --config recipes/configs/sft_tiny_cpu.yaml   # -> the LoRA adapter runs/sft-tiny-cpu
    python recipes/evaluate_student.py --model_name_or_path runs/sft-tiny-cpu \\
        --dataset_name runs/tiny-data/heldout.jsonl --metric answer_match --max_new_tokens 4
    # one GPU: the LoRA student of qwen2.5-0.5b_lora.yaml vs. Qwen2.5-0.5B, scored by a reward model
    python recipes/evaluate_student.py --config recipes/configs/evaluate_qwen2.5-0.5b.yaml
    # a pairwise LLM judge on an OpenAI-compatible endpoint (e.g. `vllm serve Qwen/Qwen2.5-7B-Instruct`)
    HF_HUB_OFFLINE=0 python recipes/evaluate_student.py --model_name_or_path runs/qwen2.5-0.5b-car-lora \\
        --dataset_name runs/heldout.jsonl --reference_column output --max_new_tokens 512 \\
        --judge_base_url http://localhost:8000/v1 --judge_model Qwen/Qwen2.5-7B-Instruct
    # lm-evaluation-harness too, on the same student in memory: a GSM8K-shaped local task (3-shot, offline)
    python recipes/evaluate_student.py --model_name_or_path runs/sft-tiny-cpu \\
        --dataset_name runs/tiny-data/heldout.jsonl --metric answer_match --max_new_tokens 4 \\
        --harness_include_path recipes/harness_tasks --harness_tasks arithmetic_gsm

Options: :class:`EvaluateArguments` (the student, the held-out data, the output), ``car_hf.evaluation.student.
EvaluationArguments`` (reward model/function, ``evaluate`` metric, LLM judge, bootstrap) and ``car_hf.TeacherConfig``
(generation: greedy by default). The student is a model folder, a Hub id or a LoRA adapter folder (merged into
its base); the baseline (by default the adapter's base model) is evaluated the same way, and the two are compared
item by item (paired bootstrap). Writes ``output_dir/items.csv`` (per-item results of both, harness items
included) and ``summary.json``; a student folder also gets ``evaluation/results.json``, which ``car-hf push``
publishes as the card's ``model-index`` and ``.eval_results`` (:mod:`car_hf.publishing.eval_results`).
``--harness_tasks`` runs lm-evaluation-harness tasks on the same in-memory student (``pip install
"car_hf[harness]"``; ``--harness_include_path`` for local YAML tasks, e.g. ``recipes/harness_tasks``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from car_hf import ConfigError
from car_hf.cli.common import run_recipe
from car_hf.evaluation.arguments import EvaluationArguments
from car_hf.generation.teacher import TeacherConfig

logger = logging.getLogger("car_hf.recipes.evaluate_student")


@dataclass
class EvaluateArguments:
    """The student, the held-out instructions and the output."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "The student: a model folder, a Hub id, or a LoRA adapter folder."})
    baseline_model: str | None = field(
        default=None, metadata={"help": "The untuned student (default: an adapter's base model); 'none': skip it."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Held-out instructions: a .json/.jsonl/.parquet/.csv file, folder, Hub id."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a Hub dataset or DatasetDict."})
    max_items: int | None = field(default=None, metadata={"help": "Evaluate the first N items only."})
    output_dir: str = field(default="runs/evaluate", metadata={"help": "items.csv and summary.json."})


def make_parser():
    from trl import TrlParser

    return TrlParser((EvaluateArguments, EvaluationArguments, TeacherConfig))


def baseline_of(args: EvaluateArguments) -> str | None:
    """The model to compare with: the option, else a LoRA adapter's base model, else none."""
    if args.baseline_model:
        return None if args.baseline_model == "none" else args.baseline_model
    adapter = Path(args.model_name_or_path) / "adapter_config.json"
    return json.loads(adapter.read_text())["base_model_name_or_path"] if adapter.is_file() else None


def main(args: EvaluateArguments, scorers: EvaluationArguments, generation: TeacherConfig) -> dict[str, Any]:
    import pandas as pd

    from car_hf.core.data import load_data
    from car_hf.evaluation.student import evaluate_student, paired_comparison

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not args.model_name_or_path or not args.dataset_name:
        raise ConfigError("model_name_or_path (the student) and dataset_name (held-out instructions) are required")
    config = scorers.config(generation)
    heldout = load_data(args.dataset_name, split=args.dataset_split)
    if args.max_items is not None:
        heldout = heldout.select(range(min(args.max_items, len(heldout))))
    config.check(heldout)  # before any model loads

    results = [evaluate_student(args.model_name_or_path, heldout, config)]
    baseline = baseline_of(args)
    if baseline:
        results.append(evaluate_student(baseline, heldout, config))
    summary: dict[str, Any] = {"student": results[0].name, "n_items": len(heldout), "summary": results[0].summary}
    if baseline:
        measure = config.measures()[0]
        summary |= {"baseline": baseline, "baseline_summary": results[1].summary,
                    "student_vs_baseline": {"measure": measure, **paired_comparison(
                        results[0].scores(measure), results[1].scores(measure), config.n_bootstrap,
                        config.confidence, config.seed)}}
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    pd.concat([r.items.assign(student=r.name) for r in results]).to_csv(output / "items.csv", index=False)
    (output / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if Path(args.model_name_or_path).is_dir():  # kept with the student: `car-hf push` publishes it
        from car_hf.publishing.eval_results import evaluation_record, write_evaluation_record

        logger.info("recorded the evaluation in %s", write_evaluation_record(args.model_name_or_path, evaluation_record(
            results[0].summary, student=results[0].name, heldout=args.dataset_name, heldout_split=args.dataset_split)))
    logger.info("evaluation:\n%s", json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    run_recipe("evaluate_student.py", make_parser, main)

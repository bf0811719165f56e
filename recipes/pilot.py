#!/usr/bin/env python
"""Pilot distillation: fine-tune your student on each candidate teacher's answers and check CAR's prediction.

    python recipes/pilot.py --config recipes/configs/pilot_tiny_cpu.yaml \\
        --dataset_name runs/score/scored --heldout_name heldout.jsonl --output_dir runs/pilot
    accelerate launch --config_file recipes/accelerate/ddp.yaml --num_processes 8 recipes/pilot.py \\
        --config recipes/configs/pilot_tiny_cpu.yaml --model_name_or_path Qwen/Qwen2.5-0.5B ...

Options (a YAML config plus command-line overrides, ``TrlParser``): :class:`PilotArguments` (the scored pool, the
held-out set, the teachers, the budget's n), ``car_hf.evaluation.EvaluationArguments`` (the scorers),
``car_hf.TeacherConfig`` (the students' generation), ``trl.SFTConfig`` (epochs, learning rate; ``output_dir`` holds
the report and the cache) and ``trl.ModelConfig`` (the student, ``use_peft``, ``lora_r``). The work is
:func:`car_hf.pilot.run_pilot`'s: bad input is refused before training, finished students are reused after a kill,
and ``output_dir`` gets ``report.md``, ``report.json``, ``teachers.csv``, ``spearman.csv``, ``items.csv`` and
``pilot.png``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any

from car_hf import ConfigError, InputError, ModelLoadError
from car_hf.evaluation import EvaluationArguments
from car_hf.teacher import TeacherConfig

logger = logging.getLogger("car_hf.recipes.pilot")


@dataclass
class PilotArguments:
    """The pool, the held-out set, the teachers and the number of training instructions."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "The scored pool (long layout with reward and base_loss): a file, a "
                                        "save_to_disk folder (e.g. recipes/score.py's output_dir/scored) or a Hub id."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a Hub dataset or DatasetDict."})
    heldout_name: str | None = field(default=None, metadata={"help": "Held-out instructions (file, folder, Hub id)."})
    heldout_split: str = field(default="train", metadata={"help": "Split of the held-out dataset."})
    n_instructions: int = field(default=1000, metadata={"help": "Training instructions per teacher (the same ones)."})
    teachers: list[str] | None = field(
        default=None, metadata={"help": "Teachers to compare (default: CAR top 3, reward-only winner, CAR bottom)."})
    by: str = field(default="generator", metadata={"help": "The column naming each row's teacher."})
    beta: float = field(default=1.0, metadata={"help": "CAR's beta for the prediction."})
    reward_transform: str = field(default="raise", metadata={"help": "CAR's reward transform (car_hf.car)."})
    measure: str | None = field(
        default=None, metadata={"help": "Realized measure: accuracy | reward | win_rate | lc_win_rate (default: "
                                        "the first the scorers give)."})


def make_parser():
    from trl import ModelConfig, SFTConfig, TrlParser

    return TrlParser((PilotArguments, EvaluationArguments, TeacherConfig, SFTConfig, ModelConfig))


def main(args: PilotArguments, scorers: EvaluationArguments, generation: TeacherConfig, training_args,
         model_args) -> Any:
    from car_hf.data import load_data
    from car_hf.distributed import setup_logging
    from car_hf.inputs import check_data_source, check_model_source
    from car_hf.pilot import run_pilot

    setup_logging(training_args.process_index, training_args.world_size)
    check_model_source(model_args.model_name_or_path, "model_name_or_path")
    check_data_source(args.dataset_name)
    check_data_source(args.heldout_name, "heldout_name")
    evaluation = scorers.config(generation)
    pool = load_data(args.dataset_name, split=args.dataset_split)
    heldout = load_data(args.heldout_name, split=args.heldout_split)
    report = run_pilot(pool, heldout, training_args, model_args, evaluation, n_instructions=args.n_instructions,
                       output_dir=training_args.output_dir, teachers=args.teachers, beta=args.beta,
                       reward_transform=args.reward_transform, by=args.by, measure=args.measure)
    if report is not None:
        logger.info("pilot report (%s):\n%s", training_args.output_dir, report.to_markdown())
    return report


if __name__ == "__main__":
    try:
        main(*make_parser().parse_args_and_config())
    except (ConfigError, InputError, ModelLoadError) as error:
        sys.exit(f"pilot.py: error: {error}")

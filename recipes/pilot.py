#!/usr/bin/env python
"""Pilot distillation: fine-tune your student on each candidate teacher's answers and check CAR's prediction.

    python recipes/tiny_model.py   # once: a tiny student, synthetic zoo data and held-out tasks under runs/
    python recipes/score.py --config recipes/configs/score_tiny_cpu.yaml   # the scored pool
    OMP_NUM_THREADS=1 python recipes/pilot.py --config recipes/configs/pilot_tiny_cpu.yaml \\
        --dataset_name runs/score-tiny-cpu/scored --heldout_name runs/tiny-data/heldout.jsonl --n_instructions 8
    # two CPU processes (gloo; `--cpu --num_processes 2` would start only one):
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        recipes/pilot.py --config recipes/configs/pilot_tiny_cpu.yaml \\
        --dataset_name runs/score-tiny-cpu/scored --heldout_name runs/tiny-data/heldout.jsonl --n_instructions 8
    # 8 GPUs: Qwen2.5-0.5B, LoRA, bf16 (the pool scored first: see the config)
    accelerate launch --config_file recipes/accelerate/ddp.yaml --num_processes 8 recipes/pilot.py \\
        --config recipes/configs/pilot_qwen2.5-0.5b_lora.yaml

The same as ``car-hf pilot --config recipes/configs/pilot_tiny_cpu.yaml ...`` on one machine. Options (a YAML config
plus command-line overrides, ``TrlParser``): ``car_hf.evaluation.pilot.PilotArguments`` (the scored pool, the held-out set, the
teachers, the budget's n, the seeds), ``car_hf.evaluation.arguments.EvaluationArguments`` (the scorers),
``car_hf.TeacherConfig`` (the students' generation), ``trl.SFTConfig`` (epochs, learning rate; ``output_dir`` holds
the report and the cache) and ``trl.ModelConfig`` (the student, ``use_peft``, ``lora_r``). The work is
:func:`car_hf.evaluation.pilot.run_pilot`'s: bad input is refused before training, finished students are reused after a kill,
and ``output_dir`` gets ``report.md``, ``report.json``, ``teachers.csv``, ``spearman.csv``, ``items.csv`` and
``pilot.png``.
"""

from __future__ import annotations

import os
import shlex
import sys

from car_hf.cli.common import run_recipe
from car_hf.evaluation.pilot import pilot_from_arguments, pilot_parser


def make_parser():
    return pilot_parser()


def main(args, scorers, generation, training_args, model_args, rerun=None):
    return pilot_from_arguments(args, scorers, generation, training_args, model_args, rerun=rerun)


if __name__ == "__main__":
    # Under accelerate launch the command to re-run is the launcher's, which this process cannot see.
    rerun = None if "WORLD_SIZE" in os.environ else shlex.join(["python", *sys.argv])
    report = run_recipe("pilot.py", make_parser, main, rerun=rerun)
    if report is not None:  # the main process: the report, once
        print(report.to_markdown())

"""``car-hf generate | trial | pilot``: a teacher's responses for a dataset; a trial that ranks teachers while
generating; a pilot distillation that checks the choice on the student.

    car-hf generate instructions.jsonl --teacher HuggingFaceTB/SmolLM2-135M-Instruct --max-new-tokens 256 -o out/
    car-hf trial instructions.jsonl --teacher org/model-a --teacher org/model-b --base-model google/gemma-3-270m \\
        --reward-model car_hf.tasks:AnswerReward --output-dir trial/
    car-hf pilot --config recipes/configs/pilot_tiny_cpu.yaml --dataset_name trial/scored --heldout_name heldout.jsonl

Generation options are the fields of :class:`~car_hf.teacher.TeacherConfig` (defaults for every teacher of a
trial); ``--teachers FILE`` (YAML or JSON: a list of TeacherConfig fields, one entry per teacher) gives each
teacher its own, e.g. the same model under several system prompts.

Example:
    >>> from car_hf.cli import build_parser
    >>> args = build_parser().parse_args(["trial", "q.jsonl", "--teacher", "a", "--teacher", "b", "--beta", "0.5"])
    >>> args.teacher, args.beta, args.handler.__name__
    (['a', 'b'], 0.5, 'cmd_trial')
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from pathlib import Path
from typing import Any

from ..config import CARConfig
from ..data import load_data, map_scores, ranking_markdown, save_data, write_ranking
from ..errors import ConfigError
from ..teacher import TeacherConfig
from .common import Parser, add_deprecated_flags, add_map_arguments, config_from_args


def _teacher_defaults(args: argparse.Namespace, **changes: Any) -> TeacherConfig:
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TeacherConfig) if f.name != "teacher"}
    return TeacherConfig(**fields | changes)


def _teachers(args: argparse.Namespace) -> list[TeacherConfig]:
    """``--teacher`` ids with the command line's generation options, then the entries of ``--teachers FILE``."""
    import yaml

    defaults = _teacher_defaults(args)
    teachers = [dataclasses.replace(defaults, teacher=spec) for spec in args.teacher or []]
    if args.teachers:
        path = Path(args.teachers)
        if not path.is_file():
            raise FileNotFoundError(f"--teachers: no such file {str(path)!r}")
        entries = yaml.safe_load(path.read_text())
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConfigError(f"--teachers {path}: expected a list of teachers (mappings of TeacherConfig fields)")
        known = {f.name for f in dataclasses.fields(TeacherConfig)}
        for number, entry in enumerate(entries):
            unknown = sorted(set(entry) - known)
            if unknown:
                raise ConfigError(f"--teachers {path}, teacher {number}: unknown field(s) {unknown}")
            teachers.append(dataclasses.replace(defaults, **entry))
    return teachers


def cmd_generate(args: argparse.Namespace) -> int:
    from ..generate import add_responses

    generator = add_responses(config=_teacher_defaults(args, teacher=args.teacher))
    ds = load_data(args.data, split=args.split)
    generated = map_scores(ds, generator, batch_size=args.batch_size, desc=f"{generator.config.label}: generating")
    path = save_data(generated, args.output, generator.record())
    truncated = sum(generated[f"{generator.config.generation_column}_truncated"])
    print(f"generated {len(generated)} responses with {generator.config.label} → {path}"
          + (f" ({truncated} cut at max_new_tokens: flagged in {generator.config.generation_column}_truncated)"
             if truncated else ""))
    return 0


def cmd_trial(args: argparse.Namespace) -> int:
    from ..scoring import scorer_for_ranking
    from ..trial import rank_teachers

    config = config_from_args(args)
    teachers = _teachers(args)
    instructions = load_data(args.data, split=args.split, max_instructions=args.max_instructions)
    result = rank_teachers(instructions, teachers, scorer_for_ranking(config), target=args.target,
                           confidence=args.confidence, max_responses=args.max_responses, n_bootstrap=args.bootstrap,
                           seed=args.seed, checkpoint=args.checkpoint, batch_size=args.batch_size,
                           config={"teachers": [t.record() for t in teachers]})
    print(ranking_markdown(result.table))
    print("\n" + result.summary())
    if args.output_dir:
        written = write_ranking(args.output_dir, result.table, result.scored)
        print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0


def run_pilot_command(argv: list[str]) -> int:
    """``car-hf pilot [--config pilot.yaml] [options]``: ``recipes/pilot.py`` on one machine, with the same options
    (:func:`car_hf.pilot.pilot_parser`, a ``TrlParser``: ``car-hf pilot --help`` lists them all)."""
    from trl import TrlParser

    from ..pilot import pilot_from_arguments, pilot_parser

    class PilotParser(TrlParser):
        error = Parser.error  # one-line usage errors, like every car-hf command

    parsed = pilot_parser(PilotParser, prog="car-hf pilot").parse_args_and_config(argv)
    report = pilot_from_arguments(*parsed, rerun=shlex.join(["car-hf", "pilot", *argv]))
    print(report.to_markdown())
    print(f"wrote the report, its picture and card to {parsed[3].output_dir}")
    return 0


def add_commands(commands: Any) -> None:
    """The subcommands of this module, on ``car-hf``'s subparsers."""
    generate = commands.add_parser(
        "generate", dataclass_types=[TeacherConfig],
        help="add a teacher's responses to a dataset (transformers, vllm or an OpenAI-compatible server)",
        description="Generate one teacher's responses for every row's prompt: the response column and its "
                    "finish reason, truncation flag, token count, teacher label and provenance.")
    generate.add_argument("data", help="prompts: a .json/.jsonl(.gz)/.parquet/.csv file, a save_to_disk folder, "
                                       "or a Hub dataset id")
    generate.add_argument("--split", default="train", help="split of a Hub dataset or saved DatasetDict")
    generate.add_argument("-o", "--output", required=True, help=".parquet, .jsonl, or a folder (save_to_disk)")
    add_map_arguments(generate)
    generate.set_defaults(handler=cmd_generate)

    trial = commands.add_parser(
        "trial", dataclass_types=[TeacherConfig, CARConfig], conflict_handler="resolve",
        help="rank candidate teachers for a student, generating only the responses the ranking needs",
        description="Teachers answer instructions in seeded random rounds; the answers are scored under the "
                    "student (reward and base-model loss) and teachers out of contention stop being generated "
                    "for, until the best is decided at --confidence or --max-responses is spent.")
    add_deprecated_flags(trial)
    trial.add_argument("data", help="instructions: a file, a save_to_disk folder, or a Hub dataset id")
    trial.add_argument("--split", default="train", help="split of a Hub dataset or saved DatasetDict")
    trial.add_argument("--max-instructions", type=int, help="use the first N instructions only")
    trial.add_argument("--teacher", action="append", help="a candidate teacher (repeat); the generation options "
                                                          "below apply to each")
    trial.add_argument("--teachers", help="YAML/JSON file: a list of teachers, each a mapping of TeacherConfig "
                                          "fields (teacher, system_prompt, teacher_name, ...)")
    trial.add_argument("--target", choices=("top1", "ranking"), default="top1",
                       help="decide the best teacher (top1, with elimination) or the whole order")
    trial.add_argument("--confidence", type=float, default=0.95, help="confidence of the decision")
    trial.add_argument("--max-responses", type=int, help="generation budget, all teachers together")
    trial.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the rule and the table")
    trial.add_argument("--seed", type=int, default=0, help="seed of the instruction order and the bootstrap")
    trial.add_argument("--checkpoint", help="folder of the trial's cache: a rerun resumes, generating nothing twice")
    trial.add_argument("--output-dir", help="write the ranking folder (leaderboard, scored rows) car-hf push reads")
    add_map_arguments(trial)
    trial.set_defaults(handler=cmd_trial, batch_size=16)

    # Listed here for `car-hf --help`; car_hf.cli.main hands its arguments to run_pilot_command unparsed (TRL's
    # SFTConfig and ModelConfig options, a --config YAML).
    commands.add_parser("pilot", add_help=False,
                        help="fine-tune the student on each candidate teacher's answers and check CAR's prediction "
                             "(recipes/pilot.py's options: car-hf pilot --help)")

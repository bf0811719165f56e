"""``car-hf generate | trial | pilot``: a teacher's responses for a dataset; a trial that ranks teachers while
generating; a pilot distillation that checks the choice on the student.

    car-hf generate instructions.jsonl --teacher HuggingFaceTB/SmolLM2-135M-Instruct --max-new-tokens 256 -o out/
    car-hf trial instructions.jsonl --teacher org/model-a --teacher org/model-b --base-model google/gemma-3-270m \\
        --reward-model car_hf.generation.tasks:AnswerReward --output-dir trial/
    car-hf pilot --config recipes/configs/pilot_tiny_cpu.yaml --dataset-name trial/scored --heldout-name heldout.jsonl

Generation options are the fields of :class:`~car_hf.generation.teacher.TeacherConfig` (defaults for every teacher of a
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

from car_hf.core.config import CARConfig
from car_hf.core.errors import EXIT_GENERATION_FAILED, ConfigError, GenerationError, InputError
from car_hf.generation.teacher import TeacherConfig
from car_hf.cli.common import (SPELLINGS_NOTE, CommandLineMixin, Parser, add_dataclass_arguments, add_deprecated_flags,
                     add_map_arguments, add_output_dir, config_from_args, other_spelling)


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


def _generation_failed(args: argparse.Namespace, error: Any, checkpoint: Path, retries: Any) -> int:
    """Say which rows failed and how to resume (one line on stderr); the exit status of a failed generation."""
    import sys

    from car_hf.generation.resume import failure_line, retry_summary

    rerun = shlex.join(["car-hf", *getattr(args, "argv", sys.argv[1:])])
    print(failure_line(f"car-hf {args.command}", error, checkpoint, rerun, retry_summary(retries)), file=sys.stderr)
    return EXIT_GENERATION_FAILED


def cmd_generate(args: argparse.Namespace) -> int:
    from car_hf.core.cache import ScoreCache, scoring_key
    from car_hf.core.data import load_data, save_data
    from car_hf.core.distributed import gather_chunks, score_chunks
    from car_hf.generation.generate import add_responses, map_batch_size
    from car_hf.generation.resume import KEPT_FILE, default_checkpoint, keeping_responses, retry_counts, retry_summary

    generator = add_responses(config=_teacher_defaults(args, teacher=args.teacher))
    ds = load_data(args.data, split=args.split)
    if len(ds) == 0:
        raise InputError(f"{args.data} has no rows: there is nothing to generate")
    # Finished chunks go to the checkpoint as they complete, and the finished rows of a failed chunk with them:
    # the same command run again resumes there.
    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint(args.output_dir)
    cache = ScoreCache(checkpoint, scoring_key(generator, ds, chunk_rows=args.chunk_rows))
    before = retry_counts([generator])  # this command's retries: the engine may have served an earlier call
    try:
        with keeping_responses(checkpoint / KEPT_FILE):
            score_chunks(ds, generator, cache, chunk_rows=args.chunk_rows,
                         batch_size=map_batch_size(generator, args.batch_size))
    except GenerationError as error:
        return _generation_failed(args, error, checkpoint, retry_counts([generator]) - before)
    generated = gather_chunks(cache, len(ds), args.chunk_rows, ds)
    retries = retry_counts([generator]) - before
    path = save_data(generated, args.output_dir, generator.record() | {"retries": dict(retries)})
    truncated = sum(generated[f"{generator.config.generation_column}_truncated"])
    print(f"generated {len(generated)} responses with {generator.config.label} → {path}"
          + (f" ({truncated} cut at max_new_tokens: flagged in {generator.config.generation_column}_truncated)"
             if truncated else "") + (f"; {retry_summary(retries)}" if retries else ""))
    return 0


def cmd_trial(args: argparse.Namespace) -> int:
    from car_hf.core.data import load_data
    from car_hf.publishing.folders import ranking_markdown, write_ranking
    from car_hf.generation.generate import add_responses
    from car_hf.generation.resume import KEPT_FILE, default_checkpoint, keeping_responses, retry_counts, retry_summary
    from car_hf.scoring.scorer import scorer_for_ranking
    from car_hf.ranking.trial import rank_teachers

    config = config_from_args(args)
    teachers = _teachers(args)
    instructions = load_data(args.data, split=args.split, max_instructions=args.max_instructions)
    # Rounds are cached as they finish, and the finished rows of a failed round with them: a rerun resumes.
    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint(args.output_dir or "car-hf-trial")
    generators = [add_responses(config=t) for t in teachers]  # the same engines as the trial's: their retries
    before = retry_counts(generators)
    try:
        with keeping_responses(checkpoint / KEPT_FILE):
            result = rank_teachers(instructions, teachers, scorer_for_ranking(config), target=args.target,
                                   confidence=args.confidence, max_responses=args.max_responses,
                                   n_bootstrap=args.bootstrap, seed=args.seed, checkpoint=checkpoint,
                                   batch_size=args.batch_size, config={"teachers": [t.record() for t in teachers]})
    except GenerationError as error:
        return _generation_failed(args, error, checkpoint, retry_counts(generators) - before)
    matrix = None
    if result.students:  # several students: the teachers × students matrix of the rows generated
        from car_hf.ranking.matrix import rank_matrix

        trial = result.table.attrs["car"]
        matrix = rank_matrix(result.scored, result.students, beta=trial["beta"],
                             reward_transform=trial["reward_transform"], confidence=args.confidence,
                             n_bootstrap=args.bootstrap, seed=args.seed, config={"trial": trial["trial"]})
    if matrix is None:  # the signal audit of the trial's leaderboard (the matrix audits each student's own)
        from car_hf.ranking.audit import audit_leaderboard, audit_markdown

        result.table = audit_leaderboard(result.table, result.scored)
        print(ranking_markdown(result.table) + "\n\n" + audit_markdown(result.table))
    else:
        print(matrix.markdown())
    print("\n" + result.summary())
    retries = retry_summary(retry_counts(generators) - before)
    if retries:
        print(retries)
    if args.output_dir and matrix is not None:  # the folder `car-hf rank --base-model A --base-model B` writes
        from car_hf.core.data import save_data

        written = [*matrix.write(args.output_dir), save_data(result.scored, str(Path(args.output_dir) / "scored"),
                                                             result.table.attrs["car"])]
        print(f"\nwrote {', '.join(str(p) for p in written)}")
    elif args.output_dir:
        written = write_ranking(args.output_dir, result.table, result.scored)
        print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0


PILOT_DESCRIPTION = ("Fine-tune the student on each candidate teacher's answers (TRL's SFTTrainer), evaluate every "
                     "student on held-out instructions and check CAR's prediction against the realized order; the "
                     "options of recipes/pilot.py, on one machine.")


def pilot_parser_full() -> Any:
    """``car-hf pilot``'s parser: :func:`car_hf.evaluation.pilot.pilot_parser` (a ``TrlParser``, TRL's ``SFTConfig`` and
    ``ModelConfig`` included), with car-hf's spellings, one-line errors and ``-o`` for ``--output-dir``."""
    from trl import TrlParser

    from car_hf.evaluation.pilot import pilot_parser

    class PilotParser(CommandLineMixin, TrlParser):
        pass

    parser = pilot_parser(PilotParser, prog="car-hf pilot", description=PILOT_DESCRIPTION)
    parser.add_argument("-o", dest="output_dir", default=argparse.SUPPRESS, help="short for --output-dir")
    return parser


def pilot_help_parser() -> Parser:
    """``car-hf pilot --help``: the pilot's own options, without TRL's (importing TRL takes seconds; ``--help-all``
    lists its options too, from :func:`pilot_parser_full`)."""
    from car_hf.evaluation.arguments import EvaluationArguments
    from car_hf.evaluation.pilot_args import PilotArguments

    parser = Parser(prog="car-hf pilot", description=PILOT_DESCRIPTION, epilog=(
        "Also every option of TRL's SFTConfig and ModelConfig (--learning-rate, --num-train-epochs, "
        "--model-name-or-path, --use-peft, ...): car-hf pilot --help-all lists them. " + SPELLINGS_NOTE))
    parser.add_argument("--help-all", action="store_true", help="list TRL's options too (imports TRL)")
    parser.add_argument("--config", help="YAML file of these options and TRL's; command-line options override it")
    parser.add_argument("-o", "--output-dir", help="SFTConfig's output_dir: the students, the report and its card")
    for dataclass_type in (PilotArguments, EvaluationArguments, TeacherConfig):
        add_dataclass_arguments(parser.add_argument_group(dataclass_type.__name__), dataclass_type)
    return parser


def run_pilot_command(argv: list[str]) -> int:
    """``car-hf pilot [--config pilot.yaml] [options]``: ``recipes/pilot.py`` on one machine, with the same options
    (:func:`pilot_parser_full`; ``--help`` lists the pilot's own, ``--help-all`` TRL's too)."""
    options = argv[:argv.index("--")] if "--" in argv else argv
    if "--help-all" in [other_spelling(option, {"--help-all"}) for option in options]:
        pilot_parser_full().print_help()
        return 0
    if "-h" in options or "--help" in options:
        pilot_help_parser().print_help()
        return 0
    from car_hf.evaluation.pilot import pilot_from_arguments

    parsed = pilot_parser_full().parse_args_and_config(argv)
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
    add_output_dir(generate, "where to write: a folder (save_to_disk), or a .parquet or .jsonl file", required=True)
    generate.add_argument("--checkpoint", help="folder of finished work, resumed by re-running the same command "
                                               "(default: beside the output, <output>.checkpoint)")
    generate.add_argument("--chunk-rows", type=int, default=256, help="rows per chunk, the unit saved as it finishes")
    add_map_arguments(generate)
    generate.set_defaults(handler=cmd_generate)

    trial = commands.add_parser(
        "trial", dataclass_types=[TeacherConfig, CARConfig], conflict_handler="resolve",
        help="rank candidate teachers for a student (or several: repeat --base-model), generating only the "
             "responses the ranking needs",
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
    trial.add_argument("--target", choices=("top1", "ranking", "common"), default="top1",
                       help="decide the best teacher (top1, with elimination; per student with several "
                            "--base-model), the whole order, or one common teacher for every student")
    trial.add_argument("--confidence", type=float, default=0.95, help="confidence of the decision")
    trial.add_argument("--max-responses", type=int, help="generation budget, all teachers together")
    trial.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the rule and the table")
    trial.add_argument("--seed", type=int, default=0, help="seed of the instruction order and the bootstrap")
    trial.add_argument("--checkpoint", help="folder of the trial's cache: a rerun resumes, generating nothing twice "
                                            "(default: beside --output-dir, <output-dir>.checkpoint)")
    add_output_dir(trial, "write the ranking folder (leaderboard, scored rows) car-hf push reads")
    add_map_arguments(trial)
    trial.set_defaults(handler=cmd_trial, batch_size=16)

    # Listed here for `car-hf --help`; car_hf.cli.main hands its arguments to run_pilot_command unparsed (TRL's
    # SFTConfig and ModelConfig options, a --config YAML).
    commands.add_parser("pilot", add_help=False,
                        help="fine-tune the student on each candidate teacher's answers and check CAR's prediction "
                             "(recipes/pilot.py's options: car-hf pilot --help; TRL's too: --help-all)")

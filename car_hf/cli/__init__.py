"""``car-hf``: score a dataset, rank its generators, run the demo, publish; generate, trial and pilot teachers.
Thin: parses, calls the API, prints.

    car-hf score DATA --base-model google/gemma-3-270m --reward-column judge_preference -o scored.parquet
    car-hf rank scored.parquet --beta 1.0 --output-dir leaderboard/

Every option is accepted with dashes or underscores (``--score-max-length`` or ``--score_max_length``: one
mechanism, :class:`~car_hf.cli.common.CommandLineMixin`). Every command writes to ``--output-dir`` (``-o`` for short;
``score`` and ``generate``'s old ``--output`` still works). The scoring options are the fields of
:class:`~car_hf.CARConfig`; the old ``--max-length``, ``--dtype``, ``--device`` and ``--trust-remote-code`` still
work (hidden, with a note). A user error ends with one ``car-hf <command>: error: ...`` line and exit status 2;
a generation that failed for some rows after the retries ends with one line naming them and the command that
resumes it, and exit status 3 (finished rows are kept in the checkpoint: ``car_hf.generation.resume``).
``--help`` imports no torch, transformers or datasets (the commands import them when they run).

Example:
    >>> args = build_parser().parse_args(["score", "rows.jsonl", "--reward-column", "judge_preference",
    ...                                   "--beta", "0.5", "--score-max-length", "512", "-o", "scored.parquet"])
    >>> config = config_from_args(args)
    >>> config.reward_column, config.beta, config.score_max_length, config.resolved_base_model
    ('judge_preference', 0.5, 512, 'google/gemma-3-270m')
    >>> main(["score", "rows.jsonl", "--beta", "-1", "-o", "scored.parquet"])  # stderr: car-hf score: error: beta ...
    2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from car_hf.core.errors import EXIT_GENERATION_FAILED, EXIT_USER_ERROR, GenerationError, ModelLoadError, PublishError
from car_hf.generation.teacher import mask_secrets
from car_hf.cli import scoring, teachers
from car_hf.cli.common import DEPRECATED_FLAGS, Parser, UsageError, config_from_args

__all__ = ["DEPRECATED_FLAGS", "build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="car-hf",
        description="Compatibility-Adjusted Reward: rank response generators (teachers) for a base model.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    scoring.add_commands(commands)
    teachers.add_commands(commands)
    return parser


# What a user can fix, reported as one line with exit status 2 and no traceback. ConfigError and InputError are
# ValueErrors; ConnectionError: an unreachable Hub or server.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, ConnectionError, ModelLoadError, PublishError)


def _report(line: str, status: int = EXIT_USER_ERROR) -> int:
    # One line even when a library's message has several; never a credential of a URL (car_hf.generation.teacher.mask_secrets).
    print(" ".join(mask_secrets(line).split()), file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pilot"]:  # TRL's options and --config YAML: a TrlParser of its own parses them
        try:
            return teachers.run_pilot_command(argv[1:])
        except UsageError as error:
            return _report(str(error))
        except USER_ERRORS as error:
            return _report(f"car-hf pilot: error: {error}")
        except GenerationError as error:  # finished students and evaluations are cached: a rerun resumes
            return _report(f"car-hf pilot: error: {error}; run the same command again to resume",
                           EXIT_GENERATION_FAILED)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:
        return _report(str(error))
    args.argv = argv  # for the re-run command a failed generation prints
    try:
        return args.handler(args)
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        return _report(f"car-hf {args.command}: error: {message}")
    except GenerationError as error:  # generate and trial say more themselves (EXIT_GENERATION_FAILED, 3)
        return _report(f"car-hf {args.command}: error: {error}", EXIT_GENERATION_FAILED)


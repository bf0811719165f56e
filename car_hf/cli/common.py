"""What every ``car-hf`` command shares: the parser (options from dataclass fields, one-line errors), the data and
``datasets.map`` options, and the scoring options from :class:`~car_hf.CARConfig`.

Example:
    >>> parser = Parser([CARConfig], prog="car-hf score")
    >>> config_from_args(parser.parse_args(["--beta", "0.5", "--score-max-length", "512"])).score_max_length
    512
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, NoReturn

from transformers import HfArgumentParser

from ..config import KEYWORD_ALIASES, CARConfig

# The fields renamed with a score_ prefix (TRL owns the bare names): their old flags stay as hidden aliases.
DEPRECATED_FLAGS = {f"--{old.replace('_', '-')}": field for old, field in KEYWORD_ALIASES.items()
                    if field == f"score_{old}"}


class UsageError(Exception):
    """A bad command line; its message is the whole ``car-hf <command>: error: ...`` line."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows the defaults worth reading: not None, not an unset flag's False."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class Parser(HfArgumentParser):
    """HfArgumentParser (options from dataclass fields) whose errors are one line, not the usage block and a line."""

    def __init__(self, dataclass_types: Any = None, **kwargs: Any):
        super().__init__(dataclass_types, formatter_class=HelpFormatter, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


class _DeprecatedFlag(argparse.Action):
    """An old flag: sets the field it was renamed to, and says so on stderr."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        new = "--" + self.dest.replace("_", "-")
        print(f"{parser.prog}: note: {option_string} is deprecated, use {new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_flags(parser: Parser) -> None:
    for flag, field in DEPRECATED_FLAGS.items():
        new = parser._option_string_actions[f"--{field}"]  # the option HfArgumentParser made from the field
        parser.add_argument(flag, dest=field, action=_DeprecatedFlag, type=new.type, nargs=new.nargs,
                            const=new.const, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data",
                        help="a .json/.jsonl(.gz)/.parquet/.csv file, a save_to_disk folder, or a Hub dataset id")
    parser.add_argument("--split", default="train", help="split of a Hub dataset or saved DatasetDict")
    parser.add_argument("--by", default="generator", help="column naming each row's response generator")
    parser.add_argument("--generators", type=lambda s: [g for g in s.split(",") if g],
                        help="comma-separated generators to keep (default: all)")
    parser.add_argument("--max-instructions", type=int,
                        help="keep the first N distinct instructions (by instruction_id, else instruction)")


def add_map_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("datasets.map")
    group.add_argument("--batch-size", type=int, default=64, help="rows per datasets.map batch")
    group.add_argument("--num-proc", type=int, help="datasets.map workers, one per GPU (with_rank)")


def config_from_args(args: argparse.Namespace) -> CARConfig:
    """The scoring options of a parsed command line; CARConfig validates them (a bad value: ConfigError)."""
    return CARConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(CARConfig)})

"""What every ``car-hf`` command shares: the parser (options from dataclass fields, both spellings of every option,
one-line errors), the data and ``datasets.map`` options, and the scoring options from :class:`~car_hf.CARConfig`;
and how the scripts of ``recipes/`` end (:func:`run_recipe`: a user error is one line and exit status 2).

Nothing here imports torch, transformers or datasets: ``car-hf --help`` builds every parser in a fraction of a
second, and the commands import the stack when they run.

Example:
    >>> parser = Parser([CARConfig], prog="car-hf score")
    >>> config_from_args(parser.parse_args(["--beta", "0.5", "--score_max_length", "512"])).score_max_length
    512
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar

from car_hf.core.config import KEYWORD_ALIASES, CARConfig
from car_hf.core.errors import (EXIT_GENERATION_FAILED, EXIT_USER_ERROR, CacheError, ConfigError, GenerationError,
                                InputError, ModelLoadError)
from car_hf.generation.teacher import mask_secrets

T = TypeVar("T")

# The fields renamed with a score_ prefix (TRL owns the bare names): their old flags stay as hidden aliases.
DEPRECATED_FLAGS = {f"--{old.replace('_', '-')}": field for old, field in KEYWORD_ALIASES.items()
                    if field == f"score_{old}"}

SPELLINGS_NOTE = "Every option is also accepted with underscores for dashes (--max-examples or --max_examples)."


class UsageError(Exception):
    """A bad command line; its message is the whole ``car-hf <command>: error: ...`` line."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows the defaults worth reading: not None, not an unset flag's False."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def other_spelling(option: str, known: typing.Container[str]) -> str:
    """``option`` (``--name`` or ``--name=value``) with its name spelled as ``known`` has it: ``_`` and ``-`` swap.

    >>> other_spelling("--max_examples=5", {"--max-examples"}), other_spelling("--use-peft", {"--use_peft"})
    ('--max-examples=5', '--use_peft')
    """
    name, equals, value = option.partition("=")
    if not name.startswith("--") or name in known:
        return option
    for spelling in ("--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_")):
        if spelling in known:
            return spelling + equals + value
    return option


class CommandLineMixin:
    """What car-hf's parsers add to an ``argparse`` parser (its own, or TRL's for the pilot): each option under
    both spellings, old option names (:meth:`rename`), and one-line errors."""

    prog: str
    _option_string_actions: dict[str, argparse.Action]
    renamed: Mapping[str, str] = MappingProxyType({})

    def rename(self, old: str, new: str) -> None:
        """Accept the option ``old`` (hidden from ``--help``) as ``new``, with a note on stderr."""
        self.renamed = {**self.renamed, old: new}

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        # Every parse (a subcommand's included) passes here: each option becomes the spelling declared.
        args = list(sys.argv[1:] if args is None else args)
        end = args.index("--") if "--" in args else len(args)  # after "--": positionals, left as typed
        known = {*self._option_string_actions, *self.renamed}
        for i in range(end):
            name, equals, value = other_spelling(args[i], known).partition("=")
            if name in self.renamed:
                print(f"{self.prog}: note: {name} is deprecated, use {self.renamed[name]}", file=sys.stderr)
                name = self.renamed[name]
            args[i] = name + equals + value
        return super().parse_known_args(args, namespace)  # type: ignore[misc]

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _truthy(text: str | bool) -> bool:
    """A bool option's value, as HfArgumentParser reads it (``--ifd``, ``--ifd true``, ``--ifd no``)."""
    if isinstance(text, bool):
        return text
    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected one of yes/no, true/false, t/f, y/n, 1/0, got {text!r}")


def add_dataclass_arguments(parser: argparse.ArgumentParser, dataclass_type: type) -> None:
    """One ``--field-name`` option per field of ``dataclass_type``, read as ``transformers.HfArgumentParser`` reads
    it (the same types, defaults, choices, help and bool flags; ``--no-x`` for a bool defaulting to True) but
    without importing transformers. Supported field types: str, int, float, bool, list[X], each optional, and unions
    with str (read as text)."""
    hints = typing.get_type_hints(dataclass_type)
    for field in dataclasses.fields(dataclass_type):
        kind = hints[field.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            # X | None: an X option; a union with str (a mapping or its JSON text) is read as text, as in HF's parser
            arguments = typing.get_args(kind)
            kind = str if str in arguments else next(a for a in arguments if a is not type(None))
        kwargs: dict[str, Any] = dict(field.metadata)  # help, choices
        if field.default is not dataclasses.MISSING:
            kwargs["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            kwargs["default"] = field.default_factory()
        else:
            kwargs["required"] = kind is not bool
        if kind is bool:
            kwargs.update(type=_truthy, nargs="?", const=True, default=kwargs.get("default", False))
        elif typing.get_origin(kind) is list:
            kwargs.update(type=typing.get_args(kind)[0], nargs="+")
        elif kind in (str, int, float):
            kwargs["type"] = kind
        else:
            raise TypeError(f"{dataclass_type.__name__}.{field.name}: a command line cannot read type {kind!r}")
        option = "--" + field.name.replace("_", "-")
        parser.add_argument(option, dest=field.name, **kwargs)
        if kind is bool and field.default is True:
            parser.add_argument("--no-" + option[2:], dest=field.name, action="store_false",
                                help=field.metadata.get("help"))


class Parser(CommandLineMixin, argparse.ArgumentParser):
    """A car-hf parser: ``dataclass_types``' fields as options, each option under both spellings, one-line errors,
    defaults in ``--help``."""

    def __init__(self, dataclass_types: Sequence[type] = (), **kwargs: Any):
        kwargs.setdefault("epilog", SPELLINGS_NOTE)
        super().__init__(formatter_class=HelpFormatter, **kwargs)
        for dataclass_type in dataclass_types:
            add_dataclass_arguments(self, dataclass_type)


def add_deprecated_flags(parser: Parser) -> None:
    """The old names of the ``score_`` fields (:data:`DEPRECATED_FLAGS`)."""
    for flag, field in DEPRECATED_FLAGS.items():
        parser.rename(flag, "--" + field.replace("_", "-"))


def add_output_dir(parser: Parser, help: str, **kwargs: Any) -> None:
    """Every command's output option: ``--output-dir``, ``-o`` for short (``--output``, its old name in ``score``
    and ``generate``, still works, with a note)."""
    parser.add_argument("-o", "--output-dir", help=help, **kwargs)
    parser.rename("--output", "--output-dir")


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


RECIPE_ERRORS = (ConfigError, InputError, ModelLoadError, CacheError)
"""What a recipe's user can fix (an option, a row, a model id, a damaged cache part): :func:`run_recipe` reports it as
one line, no traceback."""


def run_recipe(script: str, make_parser: Callable[[], Any], main: Callable[..., T], *,
               checkpoint: Callable[[tuple], str | os.PathLike] | None = None, **kwargs: Any) -> T:
    """Run a recipe as its ``if __name__ == "__main__":`` block: parse ``make_parser().parse_args_and_config()``
    (TRL's parser: a YAML ``--config`` plus the command line), then return ``main(*parsed, **kwargs)``.

    A user error (:data:`RECIPE_ERRORS` while parsing or running; while parsing, also a ``ValueError``, ``OSError``
    or YAML error: an unknown option, a missing or malformed ``--config`` file, a value TRL's dataclasses refuse)
    ends the process with one line ``<script>: error: ...`` on stderr (credentials in URLs masked) and exit status 2
    (``EXIT_USER_ERROR``). With ``checkpoint`` (where the finished work is kept, from the parsed options), a
    generation that failed for some rows ends with :func:`~car_hf.generation.resume.failure_line` (the failed rows
    and the command that resumes) and exit status 3 (``EXIT_GENERATION_FAILED``); without it, that error propagates.

    Example:
        >>> class Parser:  # what TrlParser(...) returns, for the example
        ...     def parse_args_and_config(self):
        ...         return ("runs/score",)
        >>> run_recipe("score.py", Parser, lambda output_dir: f"wrote {output_dir}")
        'wrote runs/score'
        >>> def main(output_dir):
        ...     raise InputError("row 3, column 'output': the response is None")
        >>> run_recipe("score.py", Parser, main)  # stderr: score.py: error: row 3, column 'output': ...
        Traceback (most recent call last):
        SystemExit: 2
    """
    import yaml  # TRL reads --config with it

    parsed: tuple | None = None
    try:
        try:
            parsed = tuple(make_parser().parse_args_and_config())
        except (ValueError, OSError, yaml.YAMLError) as error:  # the options themselves
            raise ConfigError(str(error)) from error
        return main(*parsed, **kwargs)
    except GenerationError as error:
        if checkpoint is None or parsed is None:
            raise
        from car_hf.generation.resume import failure_line

        line = failure_line(script, error, checkpoint(parsed), shlex.join(["python", *sys.argv]))
        status = EXIT_GENERATION_FAILED
    except RECIPE_ERRORS as error:
        line, status = " ".join(mask_secrets(f"{script}: error: {error}").split()), EXIT_USER_ERROR
    print(line, file=sys.stderr)
    raise SystemExit(status)

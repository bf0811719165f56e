"""The shape of ``car-hf``: --help without the torch stack, both spellings of every option, one output option, and
``car_hf``'s lazily imported public API."""

import argparse
import ast
import dataclasses
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import car_hf
from car_hf.cli import build_parser
from car_hf.cli.common import Parser, UsageError
from car_hf.cli.teachers import pilot_help_parser, pilot_parser_full
from car_hf.core.config import CARConfig
from car_hf.evaluation.arguments import EvaluationArguments
from car_hf.evaluation.pilot_args import PilotArguments
from car_hf.generation.teacher import TeacherConfig

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "trl")

# Run in a fresh interpreter: each command's --help in turn, then the heavy packages loaded so far (none may be).
HELP_PROBE = f"""
import contextlib, io, json, sys
from car_hf.cli import build_parser, main
commands = [""] + sorted(build_parser()._subparsers._group_actions[0].choices)
results = []
for command in commands:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main([*command.split(), "--help"])
        except SystemExit as exit:
            code = exit.code
    loaded = sorted({{name.split(".")[0] for name in sys.modules}} & set({HEAVY!r}))
    results.append([command, code, out.getvalue(), loaded])
print(json.dumps(results))
"""


def test_every_help_imports_no_torch_transformers_datasets_or_trl():
    result = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert [command for command, *_ in results] == ["", "demo", "generate", "pilot", "push", "rank", "score", "trial"]
    for command, code, text, loaded in results:
        assert code == 0 and loaded == [], (command, loaded)
        assert text.startswith(f"usage: car-hf {command}".rstrip()), (command, text[:80])
    helps = {command: text for command, _, text, _ in results}
    assert "score" in helps[""] and "pilot" in helps[""]
    assert "--reward-transform {raise,sigmoid,minmax,shift}" in helps["score"]  # CARConfig's fields, as before
    assert "--temperature TEMPERATURE" in helps["trial"] and "--max-new-tokens" in helps["generate"]
    assert "--n-instructions" in helps["pilot"] and "--eval-seed" in helps["pilot"] and "--help-all" in helps["pilot"]


def test_import_car_hf_is_lazy_until_a_name_is_used():
    probe = ("import sys, car_hf; before = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'datasets'}); "
             "car_hf.rank_generators; print(before, 'car_hf.ranking.leaderboard' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.split() == ["[]", "True"], result.stderr


def _type_checking_names() -> set[str]:
    """The names car_hf/__init__.py imports for type checkers (its ``if TYPE_CHECKING:`` block)."""
    tree = ast.parse((ROOT / "car_hf" / "__init__.py").read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") ==
                 "TYPE_CHECKING")
    return {alias.asname or alias.name for node in block.body for alias in node.names}


def test_every_public_name_imports_from_car_hf_and_matches_what_ides_see():
    import importlib

    assert set(car_hf.__all__) == _type_checking_names() | {"__version__"} == set(car_hf._EXPORTS) | {"__version__"}
    assert len(car_hf.__all__) == len(set(car_hf.__all__))
    assert set(car_hf.__all__) <= set(dir(car_hf))
    for name in car_hf.__all__:
        value = getattr(car_hf, name)
        namespace: dict = {}
        exec(f"from car_hf import {name}", namespace)
        assert namespace[name] is value
        if name != "__version__":
            assert getattr(importlib.import_module(f"car_hf.{car_hf._EXPORTS[name]}"), name) is value
    with pytest.raises(AttributeError, match="module 'car_hf' has no attribute 'nope'"):
        car_hf.nope  # noqa: B018


def test_evaluate_student_is_re_exported():
    from car_hf import evaluate_student
    from car_hf.evaluation.student import evaluate_student as defined

    assert evaluate_student is defined and "evaluate_student" in car_hf.__all__


def _parsers():
    """Every parser car-hf parses with: each subcommand's, and the pilot's (its --help one and TRL's)."""
    commands = dict(build_parser()._subparsers._group_actions[0].choices)
    del commands["pilot"]  # a listing only: car_hf.cli.main hands pilot's arguments to pilot_parser_full
    return {**commands, "pilot --help": pilot_help_parser(), "pilot": pilot_parser_full()}


def _required(parser) -> list[str]:
    """A value for each positional and each required option."""
    argv = []
    for action in parser._actions:
        if not action.option_strings:
            argv.append("x")
        elif action.required:
            argv += [action.option_strings[0], "x"]
    return argv


def _parse(parser, argv):
    return vars(parser.parse_known_args(argv)[0])


def _a_value(parser, prefix, option, action) -> list[str] | None:
    """Arguments the option accepts: none for a flag, a choice, else the first of a few candidates that parses (None
    when none does: TRL's dict options are for YAML files)."""
    if action.nargs == 0:
        return []
    if action.choices:
        return [str(next(iter(action.choices)))]
    for candidate in ("3", "0.5", "true", "x", "{}"):
        try:
            _parse(parser, [*prefix, option, candidate])
            return [candidate]
        except (UsageError, SystemExit):  # SystemExit: HfArgumentParser's errors
            continue
    return None


def _other(option: str) -> str:
    name = option[2:]
    return "--" + (name.replace("-", "_") if "-" in name else name.replace("_", "-"))


@pytest.mark.parametrize("name", ["score", "rank", "demo", "push", "generate", "trial", "pilot --help", "pilot"])
def test_every_option_is_accepted_with_dashes_and_with_underscores(name, capsys):
    parser = _parsers()[name]
    prefix = _required(parser)
    checked = 0
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        for option in action.option_strings:
            if not option.startswith("--") or ("-" not in option[2:] and "_" not in option[2:]):
                continue
            value = _a_value(parser, prefix, option, action)
            if value is None:  # no value parses: both spellings must name the option in the same error
                errors = []
                for spelling in (option, _other(option)):
                    with pytest.raises(UsageError) as error:
                        _parse(parser, [*prefix, spelling, "x"])
                    errors.append(str(error.value))
                assert errors[0] == errors[1] and "argument --" in errors[0], errors
            else:
                assert _parse(parser, [*prefix, _other(option), *value]) == _parse(parser, [*prefix, option, *value]),\
                    (name, option)
            checked += 1
    assert checked >= {"push": 3, "pilot": 150}.get(name, 10)  # TRL's SFTConfig and ModelConfig fields included
    assert parser.parse_known_args([*prefix, "--no_such_option"])[1] == ["--no_such_option"]  # left as typed


@dataclasses.dataclass
class EveryKind:
    """A field of each kind a command line reads (the real option dataclasses have no required or True flag)."""

    must: str = dataclasses.field(metadata={"help": "required"})
    on: bool = dataclasses.field(default=True, metadata={"help": "a flag that is on unless --no-on"})
    flag: bool | None = False
    names: list[str] = dataclasses.field(default_factory=lambda: ["a"])
    seeds: list[int] | None = None
    level: int = dataclasses.field(default=1, metadata={"choices": [1, 2]})
    rate: float | None = None


@pytest.mark.parametrize("dataclass_type", [CARConfig, TeacherConfig, PilotArguments, EvaluationArguments, EveryKind])
def test_dataclass_options_read_as_hfargumentparser_reads_them(dataclass_type):
    from transformers import HfArgumentParser

    ours, theirs = Parser([dataclass_type]), HfArgumentParser([dataclass_type])
    prefix = _required(ours)
    assert _parse(ours, prefix) == _parse(theirs, prefix)  # the same defaults
    for action in theirs._actions[1:]:  # after --help
        mine = ours._option_string_actions[_dashed(action.option_strings[0])]
        assert {_dashed(o) for o in action.option_strings} == set(mine.option_strings)
        for attribute in ("dest", "nargs", "const", "required", "help"):
            assert getattr(mine, attribute) == getattr(action, attribute), (action.dest, attribute)
        assert list(mine.choices or []) == list(action.choices or [])
        assert mine.default == action.default or isinstance(mine, argparse._StoreFalseAction)  # the same parse:
        values = _a_value(ours, prefix, action.option_strings[0], action)  # the first action's default comes first
        for argv in ([action.option_strings[0], *values], [action.option_strings[0]] if action.nargs == "?" else []):
            assert _parse(ours, [*prefix, *argv]) == _parse(theirs, [*prefix, *argv]), argv


def _dashed(option: str) -> str:
    return "--" + option[2:].replace("_", "-")


def _docstring_commands() -> list[list[str]]:
    """The ``car-hf ...`` lines of car_hf.cli's module docstrings (continuation lines joined), split as a shell does."""
    commands = []
    for path in sorted((ROOT / "car_hf" / "cli").glob("*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        for block in docstring.replace("\\\n", " ").splitlines():
            if block.strip().startswith("car-hf "):
                commands.append(shlex.split(block)[1:])
    return commands


def test_the_commands_in_the_cli_docstrings_parse_as_written():
    commands = _docstring_commands()
    assert [argv[0] for argv in commands] == ["score", "rank", "generate", "trial", "pilot"]
    for argv in commands:
        if argv[0] == "pilot":
            pilot = pilot_parser_full().parse_args_and_config(argv[1:])[0]
            assert (pilot.dataset_name, pilot.heldout_name) == ("trial/scored", "heldout.jsonl")
        else:
            args = build_parser().parse_args(argv)
            assert args.output_dir in ("scored.parquet", "leaderboard/", "out/", "trial/"), argv


@pytest.mark.parametrize("command", ["score", "generate", "rank", "trial", "demo"])
def test_every_command_writes_to_output_dir_also_spelled_o_and_output(command, capsys):
    positionals = {"score": ["d.jsonl"], "generate": ["d.jsonl"], "rank": ["d.jsonl"], "trial": ["d.jsonl"],
                   "demo": []}[command]
    for spelling in ("--output-dir", "--output_dir", "-o", "--output"):
        args = build_parser().parse_args([command, *positionals, spelling, "out/x"])
        assert args.output_dir == "out/x" and not hasattr(args, "output")
    assert capsys.readouterr().err == f"car-hf {command}: note: --output is deprecated, use --output-dir\n"


def test_the_pilot_writes_to_output_dir_also_spelled_o():
    parser = pilot_parser_full()
    for spelling in ("--output-dir", "--output_dir", "-o"):
        training_args = parser.parse_args_and_config([spelling, "out/p", "--use_cpu", "--bf16", "false"])[3]
        assert training_args.output_dir == "out/p"
    full = parser.format_help()
    epilog = pilot_help_parser().epilog
    for option in ("--learning-rate", "--num-train-epochs", "--model-name-or-path", "--use-peft"):  # named in help
        assert option in epilog and option in full


def test_the_help_benchmark_quick_mode_times_every_command(tmp_path):
    out = tmp_path / "cli.md"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "cli_bench.py"), "--quick", "--output", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| `car-hf")]
    assert [row.split("`")[1] for row in rows] == ["car-hf --help"] + [
        f"car-hf {c} --help" for c in ("score", "rank", "demo", "push", "generate", "trial", "pilot")]
    assert all(row.endswith("| none |") for row in rows), rows  # speed is reported, never asserted

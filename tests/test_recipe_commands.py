"""Every documented command and Python example, as written: run where it uses the tiny CPU configs, models and
outputs, parsed where it needs GPUs or real models; and no file in recipes/ shadows an importable module.

The commands (``python``/``accelerate launch`` of a recipe or a bench script, and ``car-hf``) are read from each
recipe's docstring, the header comments of recipes/configs/*.yaml, and the code blocks of recipes/README.md,
README.md and the guides in docs/. A command runs (``bash -c``, verbatim, from a folder laid out like the
repository root after ``python recipes/tiny_model.py``) when it names a tiny CPU config or a tiny run's output;
any other command (real models, GPUs, endpoints) is parse-checked: its ``accelerate launch`` options by accelerate's
parser, a recipe's options and ``--config`` YAML by the recipe's ``TrlParser`` (an unknown key fails), a ``car-hf``
command by car-hf's parser and the dataclasses its options build, a bench script by its own ``argparse`` parser
(the bench scripts are run by their own tests). The ``python`` blocks of README.md and docs/ run the same way: in
that folder, each in a fresh namespace, when they use the tiny model; the others are compiled and their
``car_hf`` imports resolved.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from datasets import concatenate_datasets, load_from_disk

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
_START = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:python|accelerate|car-hf)\s")
_ENV = re.compile(r"^[A-Z_]+=")
_SCRIPT = re.compile(r"\b(?:recipes|bench)/\w+\.py\b")
DOCS = [RECIPES / "README.md", REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_EXAMPLE_ENV = {"RANK": "0", "MAIN_IP": "10.0.0.1"}  # what a user sets on each node of the multi-node command


@dataclass(frozen=True)
class Command:
    source: str  # where it is documented
    text: str  # as written (continuations joined)

    @property
    def argv(self) -> list[str]:
        text = re.sub(r"\$(\w+)", lambda m: _EXAMPLE_ENV.get(m.group(1), m.group(0)), self.text)
        return shlex.split(text.replace("\\\n", " "), comments=True)

    @property
    def program(self) -> list[str]:
        """``argv`` without the environment assignments in front."""
        argv = self.argv
        while argv and _ENV.match(argv[0]):
            argv = argv[1:]
        return argv

    @property
    def kind(self) -> str:
        """``car-hf``, ``recipe`` or ``bench``."""
        if self.program[0] == "car-hf":
            return "car-hf"
        return "bench" if self.script.startswith("bench/") else "recipe"

    @property
    def script(self) -> str:
        """The recipe or bench script, or ``car-hf <subcommand>``."""
        if self.program[0] == "car-hf":
            return " ".join(self.program[:2])
        return next(a for a in self.argv if a.startswith(("recipes/", "bench/")) and a.endswith(".py"))

    @property
    def script_args(self) -> list[str]:
        argv = self.program
        return argv[2:] if self.kind == "car-hf" else argv[argv.index(self.script) + 1:]

    @property
    def runs_here(self) -> bool:
        """Tiny CPU configs or tiny outputs: runs on this machine in seconds; anything else needs a GPU or a real
        model (and a network) and is parse-checked, as are the bench scripts (their own tests run them)."""
        return self.kind != "bench" and ("tiny" in self.text or self.script == "recipes/tiny_model.py")


def _commands_in(text: str, source: str) -> list[Command]:
    commands, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        line = re.sub(r"^\s*(?:#\s+)?", "", lines[i]) if source.endswith(".yaml") else lines[i].strip()
        i += 1
        if not _START.match(line):
            continue
        parts = [line]
        while parts[-1].rstrip().endswith("\\") and i < len(lines):
            parts.append(re.sub(r"^\s*#?\s*", "    ", lines[i]).rstrip())
            i += 1
        text = "\n".join(p.rstrip() for p in parts)
        if _SCRIPT.search(text.split("#")[0]) or re.match(r"^(?:[A-Z_]+=\S+\s+)*car-hf\s", text):
            commands.append(Command(source, text))
    return commands


def documented_commands() -> list[Command]:
    found = []
    for script in sorted(RECIPES.glob("*.py")):
        found += _commands_in(ast.get_docstring(ast.parse(script.read_text())) or "", f"recipes/{script.name}")
    for config in sorted((RECIPES / "configs").glob("*.yaml")):
        header = "\n".join(line for line in config.read_text().splitlines() if line.startswith("#"))
        found += _commands_in(header, f"recipes/configs/{config.name}")
    for readme in DOCS:
        text = readme.read_text()
        # fenced shell blocks (fences paired in order: a python block's closing fence opens nothing) and indented
        # (4-space) ones
        fenced = re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)
        blocks = [code for language, code in fenced if language in ("", "bash", "sh")]
        blocks += re.findall(r"(?:^ {4}.*\n)+", text, re.M)
        found += [c for block in blocks for c in _commands_in(block, str(readme.relative_to(REPO)))]
    unique: dict[tuple[str, ...], Command] = {}
    for command in found:
        unique.setdefault(tuple(command.argv), command)
    return list(unique.values())


def documented_python() -> list[tuple[str, str]]:
    """``(where, code)`` of every ``python`` block of README.md and docs/."""
    found = []
    for doc in DOCS:
        fenced = re.findall(r"^```(\w*)\n(.*?)^```", doc.read_text(), re.S | re.M)
        blocks = [code for language, code in fenced if language == "python"]
        found += [(f"{doc.relative_to(REPO)}, python block {i + 1}", code) for i, code in enumerate(blocks)]
    return found


COMMANDS = documented_commands()
# The order a user runs them in: data and model first, scores before what reads them (sft's runs/sft-tiny-cpu is
# the student evaluate_student.py evaluates and, merged, a trial's teacher; score.py's output is the pilot's pool),
# then car-hf's commands, each after those whose output it reads.
ORDER = ["recipes/tiny_model.py", "recipes/score.py", "recipes/sft.py", "recipes/generate.py",
         "recipes/evaluate_student.py", "recipes/pilot.py"]
CLI_ORDER = ["score", "rank", "generate", "trial", "pilot", "push"]


def _order(command: Command) -> int:
    if command.kind == "car-hf":
        name = command.program[1]
        return len(ORDER) + (CLI_ORDER.index(name) if name in CLI_ORDER else len(CLI_ORDER))
    return ORDER.index(command.script)


RUN = sorted((c for c in COMMANDS if c.runs_here), key=_order)
PARSE = [c for c in COMMANDS if not c.runs_here]
PYTHON = documented_python()
PYTHON_RUN = [(where, code) for where, code in PYTHON if "tiny" in code]
PYTHON_PARSE = [(where, code) for where, code in PYTHON if "tiny" not in code]


def load_recipe(script: str):
    """A recipe as a module, by path (``recipes/`` stays off ``sys.path``); ``script``: ``name`` or its path."""
    name = Path(script).stem
    spec = importlib.util.spec_from_file_location(f"recipes_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ shadowing
def test_no_recipe_is_named_like_an_importable_module():
    assert all(Path(p or ".").resolve() != RECIPES for p in sys.path)  # as a script sees it, minus its own folder
    stems = sorted(p.stem for p in RECIPES.glob("*.py"))
    assert {"score", "sft", "pilot", "tiny_model", "evaluate_student"} <= set(stems)
    shadowing = {stem: importlib.util.find_spec(stem).origin for stem in stems if importlib.util.find_spec(stem)}
    assert not shadowing, f"running a recipe as a script would shadow these modules for every import: {shadowing}"
    assert importlib.util.find_spec("evaluate") is not None  # the check does see the package evaluate.py shadowed


def test_every_recipe_documents_commands_that_are_run_or_parsed():
    scripts = {c.script for c in COMMANDS if c.kind == "recipe"}
    assert scripts == {f"recipes/{p.name}" for p in RECIPES.glob("*.py")}, scripts
    # The guides' commands are among them, and every car-hf command a user runs on data runs here.
    assert {c.source for c in COMMANDS} >= {"README.md", "docs/scoring.md", "docs/generation.md"}
    assert {c.script for c in RUN if c.kind == "car-hf"} >= {f"car-hf {name}" for name in CLI_ORDER}
    assert {c.kind for c in PARSE} == {"recipe", "car-hf", "bench"} and len(PYTHON_RUN) >= 3
    for script in ORDER:
        assert any(c.script == script for c in RUN), f"no documented CPU command runs {script}"
    # The multi-process commands the tests rely on are among them.
    two = [c for c in RUN if "--num_processes 2" in c.text]
    assert {c.script for c in two} >= {"recipes/score.py", "recipes/sft.py", "recipes/pilot.py"}
    gpu = {c.script for c in PARSE}
    assert gpu >= {"recipes/score.py", "recipes/sft.py", "recipes/pilot.py", "recipes/evaluate_student.py"}


# ------------------------------------------------------------------------------------------------ one-line errors
class _TrlParser:  # what TrlParser(...) returns, for run_recipe
    def __init__(self, *parsed):
        self.parsed = parsed

    def parse_args_and_config(self):
        if isinstance(self.parsed[0], Exception):
            raise self.parsed[0]
        return self.parsed


def test_run_recipe_reports_user_errors_in_one_line_and_resumable_generation_with_exit_3(capsys):
    from types import SimpleNamespace

    from car_hf.cli.common import run_recipe
    from car_hf.core.errors import CacheError, ConfigError, GenerationError, ModelLoadError

    args = SimpleNamespace(output_dir="runs/gen")
    parser = lambda: _TrlParser(args, "config")  # noqa: E731
    returned = run_recipe("x.py", parser, lambda a, c, extra=0: (a.output_dir, c, extra), extra=1)
    assert returned == ("runs/gen", "config", 1)

    def fails(error):
        def main(*parsed):
            raise error
        return main

    damaged = CacheError("cache part /c/part-1 cannot be used: it is missing\n(a process did not finish); rerun")
    for script, make_parser, main, line in [
        ("score.py", parser, fails(damaged),
         "score.py: error: cache part /c/part-1 cannot be used: it is missing (a process did not finish); rerun"),
        ("evaluate_student.py", parser, fails(ModelLoadError("https://me:sk-1@host/v1 is unreachable")),
         "evaluate_student.py: error: https://***@host/v1 is unreachable"),
        ("sft.py", lambda: _TrlParser(ConfigError("beta must be >= 0")), None, "sft.py: error: beta must be >= 0"),
        ("sft.py", lambda: _TrlParser(ValueError("Some specified arguments are not used: ['--x']")), None,
         "sft.py: error: Some specified arguments are not used: ['--x']"),
        ("pilot.py", lambda: _TrlParser(FileNotFoundError(2, "No such file or directory")), None,
         "pilot.py: error: [Errno 2] No such file or directory"),
    ]:
        with pytest.raises(SystemExit) as ended:
            run_recipe(script, make_parser, main)
        assert ended.value.code == 2 and capsys.readouterr().err == line + "\n"

    failed = fails(GenerationError("1 of 3 request(s) failed", failed=[1]))
    with pytest.raises(SystemExit) as ended:
        run_recipe("generate.py", parser, failed, checkpoint=lambda parsed: parsed[0].output_dir)
    assert ended.value.code == 3
    assert capsys.readouterr().err.startswith("generate.py: error: generation failed for 1 row(s) (1): 1 of 3 "
                                              "request(s) failed. Finished work is kept in runs/gen: run the same "
                                              "command again")
    with pytest.raises(GenerationError):  # no checkpoint: nothing to resume from, the error as it is
        run_recipe("sft.py", parser, failed)
    with pytest.raises(ZeroDivisionError):  # not a user error: a traceback
        run_recipe("sft.py", parser, lambda a, c: 1 / 0)
    with pytest.raises(ValueError):  # a ValueError while running is a bug's, not the options'
        run_recipe("sft.py", parser, fails(ValueError("bug")))


@pytest.mark.parametrize("recipe", ["score", "generate", "evaluate_student"])
def test_a_recipe_run_as_a_script_refuses_an_unknown_option_in_one_line(recipe, tmp_path):
    result = subprocess.run([sys.executable, str(RECIPES / f"{recipe}.py"), "--no_such_option", "1"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"{recipe}.py: error: Some specified arguments are not used by the HfArgumentParser: ['--no_such_option', '1']")


# ------------------------------------------------------------------------------------------------ GPU commands
@pytest.mark.parametrize("command", PARSE, ids=[f"{c.source}:{c.script}:{i}" for i, c in enumerate(PARSE)])
def test_gpu_command_parses_with_known_fields_only(command, monkeypatch):
    import transformers.training_args
    from accelerate.commands.launch import launch_command_parser

    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)  # bf16 configs
    if command.kind == "bench":
        return _parse_bench(command, monkeypatch)
    if command.kind == "car-hf":
        return _parse_car_hf(command)
    argv = command.program
    if argv[0] == "accelerate":
        launch = launch_command_parser().parse_args(argv[2:])
        assert launch.training_script == command.script
        if launch.config_file:
            assert (REPO / launch.config_file).is_file(), launch.config_file
        assert launch.num_processes is None or launch.num_processes >= 1
    parser = load_recipe(command.script).make_parser()
    _check_config_keys(parser, command.script_args)
    parsed = parser.parse_args_and_config(command.script_args)
    assert parsed and all(p is not None for p in parsed)


def _check_config_keys(parser, args: list[str]) -> None:
    if "--config" in args:
        config = yaml.safe_load((REPO / args[args.index("--config") + 1]).read_text())
        known = {f for dataclass_type in parser.dataclass_types for f in dataclass_type.__dataclass_fields__}
        assert not set(config) - known, f"unknown keys in {args[args.index('--config') + 1]}: {set(config) - known}"


def _parse_car_hf(command: Command) -> None:
    """car-hf's own parser, then the dataclasses the options build (which check their values)."""
    import dataclasses

    from car_hf.cli import build_parser, config_from_args
    from car_hf.cli.teachers import pilot_parser_full
    from car_hf.generation.teacher import TeacherConfig
    from car_hf.publishing.hub import check_repo_id

    name, args = command.program[1], command.script_args
    if name == "pilot":
        parser = pilot_parser_full()
        _check_config_keys(parser, args)
        parsed = parser.parse_args_and_config(args)
        assert parsed and all(p is not None for p in parsed)
        return
    parsed = build_parser().parse_args(command.program[1:])
    assert parsed.command == name
    if hasattr(parsed, "beta"):
        config_from_args(parsed)
    if name in ("generate", "trial"):
        fields = {f.name: getattr(parsed, f.name) for f in dataclasses.fields(TeacherConfig) if f.name != "teacher"}
        TeacherConfig(teacher="t", **fields)
    if name == "push":
        check_repo_id(parsed.repo_id)
    for option in ("--teachers", "--config"):  # files the command reads
        if option in args:
            assert (REPO / args[args.index(option) + 1]).is_file(), args[args.index(option) + 1]


class _Parsed(Exception):
    pass


def _parse_bench(command: Command, monkeypatch) -> None:
    """A bench script's ``main(argv)`` up to its ``parse_args``: its options are known and their values parse."""
    import argparse

    monkeypatch.syspath_prepend(str(REPO / "bench"))  # the scripts import their shared helpers (bench/common.py)
    name = f"bench_{Path(command.script).stem}"
    spec = importlib.util.spec_from_file_location(name, REPO / command.script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    parse_args = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        raise _Parsed(parse_args(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    with pytest.raises(_Parsed):
        module.main(command.script_args)


def test_real_gpu_configs_are_for_gpus(monkeypatch):
    import transformers.training_args

    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)
    args, scorers, generation, training_args, model_args = load_recipe("recipes/pilot.py").make_parser() \
        .parse_args_and_config(["--config", str(RECIPES / "configs" / "pilot_qwen2.5-0.5b_lora.yaml")])
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-0.5B" and model_args.use_peft and model_args.lora_r == 16
    assert training_args.bf16 and not training_args.use_cpu and model_args.dtype == "bfloat16"
    assert 1e-4 <= training_args.learning_rate <= 2e-4 and training_args.per_device_train_batch_size * 8 == 32
    assert training_args.ddp_timeout >= 3600 and args.n_instructions == 2000 and scorers.reward
    assert generation.teacher_dtype == "bfloat16"
    student, scorers, generation = load_recipe("recipes/evaluate_student.py").make_parser().parse_args_and_config(
        ["--config", str(RECIPES / "configs" / "evaluate_qwen2.5-0.5b.yaml")])
    assert student.model_name_or_path == "runs/qwen2.5-0.5b-car-lora" and generation.teacher_dtype == "bfloat16"
    lora = yaml.safe_load((RECIPES / "configs" / "qwen2.5-0.5b_lora.yaml").read_text())
    assert student.model_name_or_path == lora["output_dir"]  # it evaluates what the LoRA config trains
    for name in ("qwen2.5-0.5b_lora", "qwen2.5-0.5b_full", "llama-3.2-1b_lora"):
        assert yaml.safe_load((RECIPES / "configs" / f"{name}.yaml").read_text())["ddp_timeout"] == 10800


# ------------------------------------------------------------------------------------------------ CPU commands
def _environment(cwd: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1", HF_DATASETS_CACHE=str(cwd / ".hf_datasets_cache"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.setdefault("OMP_NUM_THREADS", "1")  # a command's own OMP_NUM_THREADS=1 prefix is part of its text
    return env


def _run(command: Command, cwd: Path) -> subprocess.CompletedProcess:
    env = _environment(cwd)
    for attempt in range(4):
        result = subprocess.run(["bash", "-c", command.text], cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=400, check=False)
        # The 2-process commands use accelerate's default port; another test's launcher may hold it for a while.
        if result.returncode == 0 or "another process is utilizing it" not in result.stderr + result.stdout:
            break
        time.sleep(15 * (attempt + 1))
    assert result.returncode == 0, (f"{command.source}: {command.text}\nfailed ({result.returncode}):\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def _scores(out: Path):
    parts = sorted((out / "_car_scored" / "cache").glob("*/chunk-*"))
    return concatenate_datasets([load_from_disk(str(p)) for p in parts]), parts


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Every CPU command, verbatim, in order, from a folder laid out like the repository root; each sft.py and
    pilot.py command starts from a fresh output folder, whose scores and selection are kept per command."""
    root = tmp_path_factory.mktemp("root")
    (root / "recipes").symlink_to(RECIPES, target_is_directory=True)
    kept: dict[str, dict] = {}
    for command in RUN:
        if command.script == "recipes/sft.py":
            subprocess.run(["rm", "-rf", str(root / "runs" / "sft-tiny-cpu")], check=True)
        if command.script == "recipes/pilot.py":
            subprocess.run(["rm", "-rf", str(root / "runs" / "pilot-tiny")], check=True)
        result = _run(command, root)
        if command.script == "recipes/sft.py":
            from car_hf.training.callbacks import read_selection_summary

            out = root / "runs" / "sft-tiny-cpu"
            scores, parts = _scores(out)
            kept[command.text] = {
                "scores": scores.to_pandas(), "parts": [p.name for p in parts],
                "selection": read_selection_summary(out),
                "progress": [json.loads(p.read_text()) for p in sorted((out / "_car_scored").glob("progress-*"))],
                "log": result.stderr}
        if command.script == "recipes/pilot.py":
            kept[command.text] = json.loads((root / "runs" / "pilot-tiny" / "report.json").read_text())
    return root, kept


def test_cpu_commands_run_as_written(ran):
    root, _ = ran
    assert (root / "runs" / "tiny-data" / "heldout.jsonl").is_file()
    assert (root / "runs" / "score-tiny-cpu" / "leaderboard.csv").is_file()
    summary = json.loads((root / "runs" / "evaluate" / "summary.json").read_text())
    assert summary["n_items"] == 12 and summary["baseline"].endswith("tiny-model")  # the adapter's base model
    assert (root / "runs" / "pilot-tiny" / "report.md").is_file()
    # What the guides say the car-hf commands write.
    cli = root / "runs" / "tiny-cli"
    assert (cli / "ranking" / "leaderboard.csv").is_file() and (cli / "ranking" / "ranking.png").is_file()
    assert (cli / "answered.parquet").is_file() and (cli / "answered.parquet.checkpoint").is_dir()
    assert (cli / "trial" / "leaderboard.csv").is_file() and (cli / "pilot" / "report.md").is_file()
    assert (cli / "upload" / "README.md").is_file() and (cli / "upload-model" / "README.md").is_file()


def test_python_examples_run_as_written(ran):
    """The python blocks that use the tiny model, verbatim, in one interpreter, each in a fresh namespace."""
    root, _ = ran
    runner = ("import json, sys\n"
              "for where, code in json.load(sys.stdin):\n"
              "    exec(compile(code, where, 'exec'), {'__name__': '__main__'})\n")
    result = subprocess.run([sys.executable, "-c", runner], input=json.dumps(PYTHON_RUN), cwd=root,
                            env=_environment(root), capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert "rambler-70b" in result.stdout  # the README's leaderboard printed


def test_python_examples_for_real_models_compile_and_import():
    """The python blocks that need real models (none at present: they all use the tiny one) compile and import."""
    import importlib

    for where, code in PYTHON_PARSE + PYTHON_RUN:
        for node in ast.walk(ast.parse(code, where)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("car_hf"):
                module = importlib.import_module(node.module)
                missing = [a.name for a in node.names if not hasattr(module, a.name)]
                assert not missing, f"{where}: {node.module} has no {missing}"


def test_sft_two_processes_share_the_scoring_and_match_one_process(ran):
    _, kept = ran
    sft = {text: value for text, value in kept.items() if "recipes/sft.py" in text}
    one = next(v for t, v in sft.items() if t.startswith("python recipes/sft.py"))
    two = next(v for t, v in sft.items() if "--num_processes 2" in t)
    # The work divided: 24 rows in 6 chunks of 4, each rank scored its own 3 (none waited for the whole dataset).
    assert [p["chunks"] for p in one["progress"]] == [[0, 1, 2, 3, 4, 5]]
    assert [(p["rank"], p["world_size"], p["chunks"], p["scored"]) for p in two["progress"]] == \
        [(0, 2, [0, 1, 2], [0, 1, 2]), (1, 2, [3, 4, 5], [3, 4, 5])]
    assert "[rank 1/2] INFO car_hf.core.distributed: chunk 5 (rows 20-23) of 6 scored and saved" in two["log"]
    # The results of one process: the same scores, the same selected rows.
    assert len(one["scores"]) == len(two["scores"]) == 24
    assert (one["scores"]["base_loss"] - two["scores"]["base_loss"]).abs().max() < 1e-5
    assert one["scores"]["output"].tolist() == two["scores"]["output"].tolist()
    for key in ("rows_kept", "rows_total", "cutoff", "top_fraction"):
        assert one["selection"][key] == pytest.approx(two["selection"][key], abs=1e-9), key
    assert one["selection"]["rows_kept"] == 16
    from datasets import Dataset

    from car_hf.training.selection import select

    rows = [list(select(Dataset.from_pandas(v["scores"], preserve_index=False), "top_fraction", 0.66,
                        reward_column="reward").rows["output"]) for v in (one, two)]
    assert rows[0] == rows[1] and len(rows[0]) == 16


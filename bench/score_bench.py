"""Scoring-engine benchmark: car_hf against today's ways of computing response loss and rewards, in one run.

What it compares, on the same real AlpacaEval-zoo rows rendered by ``car_hf.formats`` (identical token sets):

* ``(a)`` per-example forward with full logits and the model's own cross-entropy over the labels, prompt masked
  with -100 (the strategy of Cherry-LLM's IFD script and data-juicer's perplexity operator);
* ``(b)`` dataset-order padded batches of 8 with full logits, shifted, ``CrossEntropyLoss(reduction="none")``
  masked to response positions (the strategy of ``evaluate``'s perplexity metric);
* ``car_hf``: ``Dataset.map(car_hf.add_base_loss(<hub id>), batched=True)``, the public transform;
* ``car_hf bf16``: the same in bfloat16 (speed ratio and error against fp32);
* rewards: a per-example loop vs ``Dataset.map(car_hf.add_reward((model, tokenizer)))`` with a real-size reward
  model (the SmolLM2-135M backbone under an untrained one-output head; speed only).

(a) and (b) are re-implementations of those projects' strategies written here, not their code.

How it measures (2 CPU cores, shared with other work, so nothing here is a bare wall-clock claim):

* every measurement runs in its OWN fresh subprocess: load the model, warm up on 2 short rows, reset the kernel's
  peak-RSS counter (``/proc/self/clear_refs``), time the approach on all rows, read the peak RSS (``VmHWM``: the
  resident model plus that approach's working memory);
* right before and after the timed section the same process times 2048x2048x2048 fp32 matmuls (torch, 2 threads);
  % of floor = (counted forward FLOPs / that matmul rate) / measured time, where FLOPs = 2 x non-embedding params x
  all tokens + 2 x hidden x vocab x response tokens (reward: 2 x non-embedding params x all tokens);
* approaches are interleaved round by round (order rotated each round) and repeated; tables give medians, and
  ratios are medians of per-round paired ratios;
* per-example agreement with (a) (fp32, <= 1e-4 nats/token; rewards <= 1e-4 relative) is checked: the script
  exits 1 when car_hf's differs; a baseline's own difference from (a) is reported (both are plain fp32
  full-logit computations). Speed is reported, never asserted.

Usage:
    python bench/score_bench.py --quick                  # CI: SmolLM2, 8 rows, 1 round, ~2 minutes
    python bench/score_bench.py --write-results          # full: both models, 48 rows, 3 rounds -> bench/RESULTS.md
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"

MODELS = {
    "gemma": "google/gemma-3-270m",
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
REWARD_BACKBONE = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Four generators with varied answer lengths; rows are taken in the zoo file's order (generator-major).
GENERATORS = ["gpt-3.5-turbo-1106", "gemma-7b-it", "vicuna-13b-v1.5", "alpaca-7b"]
LOSS_TOLERANCE = 1e-4  # nats/token, fp32
REWARD_TOLERANCE = 1e-4  # relative to max(1, |score|)
B_BATCH = 8  # (b)'s batch size

APPROACHES = {
    "a": "(a) per-example, full logits",
    "b": "(b) padded batches of 8, full logits",
    "car": "car_hf add_base_loss",
    "car_bf16": "car_hf add_base_loss, bf16",
    "reward_loop": "per-example reward loop",
    "reward_car": "car_hf add_reward",
}


# ----------------------------------------------------------------------------------------------- worker side


def _worker_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (VmHWM and ru_maxrss); False if not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return total - idle, total


def _self_ticks() -> float:
    """CPU seconds this process used so far (all threads)."""
    usage = os.times()
    return usage.user + usage.system


def other_load(before: tuple, after: tuple, self_seconds: float) -> float:
    """Share of the machine's CPU capacity used by OTHER processes between two readings (0 = quiet)."""
    hz = os.sysconf("SC_CLK_TCK")
    busy = (after[0] - before[0]) / hz
    total = (after[1] - before[1]) / hz
    return max(0.0, (busy - self_seconds) / total) if total > 0 else 0.0


def _matmul_rate(torch, n: int = 5) -> tuple[float, float]:
    """Median fp32 GFLOP/s of 2048^3 matmuls on this process's threads: (by wall clock, by this process's CPU time)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    wall, cpu = [], []
    for _ in range(n):
        t, c = time.perf_counter(), _self_ticks()
        a @ b
        wall.append(time.perf_counter() - t)
        cpu.append(max(_self_ticks() - c, 1e-3))
    flops = 2 * 2048**3
    return flops / statistics.median(wall) / 1e9, flops / statistics.median(cpu) / 1e9


def _zoo_rows(n_examples: int) -> list[dict]:
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny

    try:
        rows = tiny.zoo_rows((n_examples + len(GENERATORS) - 1) // len(GENERATORS), GENERATORS)
    except BaseException as error:  # pytest.skip raises a BaseException when the data is absent
        raise SystemExit(f"score_bench: cannot read the AlpacaEval zoo rows: {error}") from None
    return rows[:n_examples]


def _non_embedding_params(model) -> int:
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    total -= embed.numel()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and head.weight.data_ptr() != embed.data_ptr():
        total -= head.weight.numel()
    return total


def run_worker(spec: dict) -> dict:
    """One measurement in this fresh process; returns a JSON-able dict."""
    _worker_env()
    import torch

    torch.set_num_threads(spec["threads"])
    import datasets
    import transformers

    from car_hf import add_base_loss, add_reward, formats, gguf, models

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    approach, max_length = spec["approach"], spec["max_length"]
    rows = _zoo_rows(spec["examples"])
    warm_rows = sorted(rows, key=lambda r: len(r["instruction"]) + len(r["output"]))[:2]
    layout = formats.detect_layout(list(rows[0].keys()))
    to_example = lambda rs: [formats.row_example({k: [v] for k, v in r.items()}, 0, layout, i) for i, r in enumerate(rs)]

    t0 = time.perf_counter()
    if approach.startswith("reward"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = gguf.converted_package_folder(gguf.OFFLINE_PACKAGES[REWARD_BACKBONE])
        torch.manual_seed(0)  # the untrained head: same weights in every process
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model, tokenizer = models.load_model((model, tokenizer), kind="reward", device="cpu")
        model_id = f"{REWARD_BACKBONE} backbone + untrained 1-output head"
    else:
        dtype = "bfloat16" if approach.endswith("bf16") else "float32"
        model_id = MODELS[spec["model"]]
        model, tokenizer = models.load_model(model_id, dtype=dtype, device="cpu")
    load_seconds = time.perf_counter() - t0

    def render_all(rs):
        return [formats.render(e, tokenizer, max_length=max_length) for e in to_example(rs)]

    # ---- the approaches: each returns (summed NLL or reward, counted response tokens) per row, in input order
    def approach_a(rs):
        sums, counts = [], []
        with torch.no_grad():
            for r in render_all(rs):
                ids = torch.tensor([r.ids])
                labels = ids.clone()
                labels[:, : r.start] = -100
                loss = model(input_ids=ids, labels=labels).loss  # full logits, CE over every position
                n = len(r.ids) - r.start
                sums.append(float(loss) * n)
                counts.append(n)
        return sums, counts

    def b_batch(batch, pad_id):
        width = max(len(r.ids) for r in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        response = torch.zeros((len(batch), width), dtype=torch.long)
        for row, r in enumerate(batch):
            ids[row, : len(r.ids)] = torch.tensor(r.ids)
            attention[row, : len(r.ids)] = 1
            response[row, r.start : len(r.ids)] = 1
        logits = model(input_ids=ids, attention_mask=attention).logits
        shift_logits = logits[..., :-1, :].contiguous()
        shift_labels = ids[..., 1:].contiguous()
        shift_mask = response[..., 1:].contiguous()
        nll = torch.nn.CrossEntropyLoss(reduction="none")(shift_logits.transpose(1, 2), shift_labels)
        return (nll * shift_mask).sum(1).tolist(), shift_mask.sum(1).tolist()

    def approach_b(rs):
        rendered = render_all(rs)
        sums, counts = [], []
        with torch.no_grad():
            for k in range(0, len(rendered), B_BATCH):
                # one function call per batch: its tensors are freed before the next batch (evaluate's loop keeps
                # the previous batch's logits alive while computing the next, so its real peak is higher)
                s, c = b_batch(rendered[k : k + B_BATCH], tokenizer.pad_token_id)
                sums += s
                counts += [int(x) for x in c]
        return sums, counts

    def approach_car(rs):
        dtype = "bfloat16" if approach.endswith("bf16") else "float32"
        transform = add_base_loss(model_id, dtype=dtype, device="cpu", max_length=max_length)
        scored = datasets.Dataset.from_list(rs).map(transform, batched=True)
        losses, counts = scored["base_loss"], scored["base_loss_tokens"]
        return [float(l) * n for l, n in zip(losses, counts)], list(counts)

    def approach_reward_loop(rs):
        scores = []
        with torch.no_grad():
            for r in render_all(rs):
                scores.append(float(model(input_ids=torch.tensor([r.ids])).logits[0, 0]))
        return scores, [0] * len(scores)

    def approach_reward_car(rs):
        transform = add_reward((model, tokenizer), device="cpu", max_length=max_length)
        scored = datasets.Dataset.from_list(rs).map(transform, batched=True)
        return [float(x) for x in scored["reward"]], [0] * len(rs)

    run = {
        "a": approach_a, "b": approach_b, "car": approach_car, "car_bf16": approach_car,
        "reward_loop": approach_reward_loop, "reward_car": approach_reward_car,
    }[approach]

    run(warm_rows)
    rendered = render_all(rows)
    all_tokens = sum(len(r.ids) for r in rendered)
    response_tokens = sum(len(r.ids) - max(r.start, 1) for r in rendered)
    non_embedding = _non_embedding_params(model)
    text = model.config.get_text_config()
    if approach.startswith("reward"):
        flops = 2 * non_embedding * all_tokens + 2 * text.hidden_size * len(rendered)
    else:
        flops = 2 * non_embedding * all_tokens + 2 * text.hidden_size * text.vocab_size * response_tokens

    rss_loaded_kb = _status_kb("VmRSS")
    rate_before = _matmul_rate(torch)
    peak_reset = _reset_peak_rss()
    ticks, own = _cpu_ticks(), _self_ticks()
    t = time.perf_counter()
    values, counts = run(rows)
    seconds = time.perf_counter() - t
    cpu_seconds = _self_ticks() - own
    foreign = other_load(ticks, _cpu_ticks(), cpu_seconds)
    peak_kb = _status_kb("VmHWM")
    rate_after = _matmul_rate(torch)
    return {
        "approach": approach, "model": spec["model"], "model_id": model_id, "round": spec["round"],
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "seconds": seconds, "cpu_seconds": cpu_seconds, "load_seconds": load_seconds, "other_load": foreign,
        "rate_gflops": (rate_before[0] + rate_after[0]) / 2, "rate_before": rate_before[0], "rate_after": rate_after[0],
        "cpu_rate_gflops": (rate_before[1] + rate_after[1]) / 2,
        "flops": flops, "all_tokens": all_tokens, "response_tokens": response_tokens, "examples": len(rows),
        "non_embedding_params": non_embedding,
        "values": values, "counts": counts,
        "expected_counts": [0] * len(rendered) if approach.startswith("reward") else [len(r.ids) - max(r.start, 1) for r in rendered],
        "rss_loaded_mb": rss_loaded_kb / 1024, "peak_rss_mb": peak_kb / 1024, "peak_reset": peak_reset,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "datasets": datasets.__version__, "python": platform.python_version()},
        "threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------------------------- driver side


def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def _b_memory_estimate_mb(model: str, max_length: int) -> float:
    """A generous estimate of (b)'s peak: ~4 copies of one batch's fp32 logits plus the model."""
    vocab, params = {"gemma": (262_144, 268e6), "smollm2": (49_152, 135e6)}[model]
    return 4 * B_BATCH * max_length * vocab * 4 / 2**20 + params * 4 / 2**20 * 1.5


def wait_for_idle(max_wait: float, log, threshold: float = 0.25) -> float:
    """Wait (up to ``max_wait`` s) until other processes use < ``threshold`` of the CPUs; returns the last share."""
    deadline = time.monotonic() + max_wait
    while True:
        before = _cpu_ticks()
        time.sleep(2)
        share = other_load(before, _cpu_ticks(), 0.0)
        if share < threshold or time.monotonic() >= deadline:
            return share
        log(f"  machine busy ({100 * share:.0f}% of the CPUs used by other processes); waiting")
        time.sleep(13)


def measure(spec: dict, log, wait_idle: float = 0.0) -> dict | None:
    if wait_idle > 0:
        wait_for_idle(wait_idle, log)
    if spec["approach"] == "b":
        need = _b_memory_estimate_mb(spec["model"], spec["max_length"]) + 1024
        for _ in range(24):
            if _available_mb() >= need:
                break
            log(f"  waiting for memory for (b): {_available_mb():.0f} MB available, ~{need:.0f} MB needed")
            time.sleep(5)
        else:
            log(f"  SKIPPED (b) on {spec['model']} round {spec['round']}: not enough free memory")
            return None
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), TOKENIZERS_PARALLELISM="false")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("HF_DATASETS_OFFLINE", "1")
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(spec), "--worker-out", out.name],
            env=env, cwd=ROOT, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            log(proc.stdout[-3000:] + proc.stderr[-5000:])
            raise SystemExit(f"score_bench: worker {spec} failed with exit code {proc.returncode}")
        result = json.load(open(out.name))
    result["process_seconds"] = time.perf_counter() - t
    return result


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _fmt(x, spec="{:.0f}", none="–"):
    return none if x is None else spec.format(x)


def check_agreement(results: list[dict], log) -> tuple[list[str], list[str]]:
    """Compare every measurement with the first fp32 (a) (or reward loop) one of its model, row by row.

    Returns (failures, notes): car_hf beyond the tolerance (or any wrong token count) fails; a baseline beyond it
    is a note — (b) and (a) differ only by fp32 rounding, which is what it measures.
    """
    failures, notes = [], []
    for model in sorted({r["model"] for r in results}):
        for family, reference_name, tolerance in (("loss", "a", LOSS_TOLERANCE), ("reward", "reward_loop", REWARD_TOLERANCE)):
            group = [r for r in results if r["model"] == model and r["approach"].startswith("reward") == (family == "reward")]
            reference = next((r for r in group if r["approach"] == reference_name), None)
            if reference is None:
                continue
            for r in group:
                if r["counts"] != r["expected_counts"] or (family == "loss" and r["counts"] != reference["counts"]):
                    failures.append(f"{model} {r['approach']} round {r['round']}: response token counts differ")
                    continue
                if r["approach"] == "car_bf16":
                    continue  # compared separately: bf16 is an accuracy trade, not an exactness check
                worst = 0.0
                for i, (x, y) in enumerate(zip(r["values"], reference["values"])):
                    if family == "loss":
                        n = r["counts"][i]
                        diff = abs(x / n - y / n) if n else 0.0
                    else:
                        diff = abs(x - y) / max(1.0, abs(y))
                    worst = max(worst, diff)
                r["max_diff_vs_reference"] = worst
                if not worst <= tolerance:
                    message = (f"{model} {r['approach']} round {r['round']}: max per-example difference {worst:.2e} "
                               f"vs {reference_name} > {tolerance:g}")
                    (failures if r["approach"] in ("car", "reward_car") else notes).append(message)
    for f in failures:
        log("AGREEMENT FAILURE: " + f)
    for n in notes:
        log("baseline disagreement (not car_hf): " + n)
    return failures, notes


def summarize(results: list[dict]) -> dict:
    """Medians per (model, approach) and paired per-round ratios."""
    summary = {}
    by = {}
    for r in results:
        by.setdefault((r["model"], r["approach"]), []).append(r)
    for (model, approach), rs in by.items():
        is_reward = approach.startswith("reward")
        tokens = rs[0]["all_tokens"] if is_reward else rs[0]["response_tokens"]
        summary[(model, approach)] = {
            "n": len(rs),
            "tok_s": _median([tokens / r["seconds"] for r in rs]),
            "seconds": _median([r["seconds"] for r in rs]),
            "floor_pct": _median([100 * r["flops"] / (r["rate_gflops"] * 1e9) / r["seconds"] for r in rs]),
            "rate": _median([r["rate_gflops"] for r in rs]),
            "other_load": _median([r["other_load"] for r in rs]),
            "peak_mb": max(r["peak_rss_mb"] for r in rs),
            "loaded_mb": _median([r["rss_loaded_mb"] for r in rs]),
            "tokens": tokens, "all_tokens": rs[0]["all_tokens"], "response_tokens": rs[0]["response_tokens"],
            "flops": rs[0]["flops"],
            "max_diff": max((r.get("max_diff_vs_reference", math.nan) for r in rs), default=math.nan),
        }

    def paired(model, num, den):
        rounds = {}
        for r in results:
            if r["model"] == model and r["approach"] in (num, den):
                rounds.setdefault(r["round"], {})[r["approach"]] = r["seconds"]
        ratios = [d[den] / d[num] for d in rounds.values() if num in d and den in d]
        return (_median(ratios), min(ratios), max(ratios)) if ratios else (None, None, None)

    for (model, approach), s in summary.items():
        if approach.startswith("reward"):
            s["vs_loop"] = paired(model, approach, "reward_loop")
        else:
            s["vs_a"] = paired(model, approach, "a")
            s["vs_b"] = paired(model, approach, "b")
    for model in {m for m, _ in summary}:
        bf16 = [r for r in results if r["model"] == model and r["approach"] == "car_bf16"]
        fp32 = next((r for r in results if r["model"] == model and r["approach"] == "car"), None)
        if bf16 and fp32:
            errors = [abs(x / n - y / n) for x, y, n in zip(bf16[0]["values"], fp32["values"], fp32["counts"]) if n]
            summary[(model, "car_bf16")]["max_error"] = max(errors)
            summary[(model, "car_bf16")]["mean_error"] = sum(errors) / len(errors)
            summary[(model, "car_bf16")]["vs_fp32"] = paired(model, "car_bf16", "car")
    return summary


def _ratio(t):
    median, lo, hi = t
    if median is None:
        return "–"
    return f"{median:.2f}×" if lo == hi else f"{median:.2f}× ({lo:.2f}–{hi:.2f})"


def _diff(s: dict, is_reference: bool) -> str:
    if is_reference:
        return "reference"
    return "see bf16 table" if math.isnan(s["max_diff"]) else f"{s['max_diff']:.1e}"


def tables(summary: dict, models: list[str]) -> str:
    lines = [
        "| model | approach | response tok/s | % of fp32 floor | peak RSS (model loaded) | vs (a) | vs (b) | max Δ vs (a), nats/token | other load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        for approach in ("a", "b", "car", "car_bf16"):
            s = summary.get((model, approach))
            if s is None:
                continue
            lines.append(
                f"| {MODELS[model]} | {APPROACHES[approach]} | {s['tok_s']:.0f} | {s['floor_pct']:.0f}% | "
                f"{s['peak_mb'] / 1024:.2f} GB ({s['loaded_mb'] / 1024:.2f}) | {_ratio(s['vs_a'])} | {_ratio(s['vs_b'])} | "
                f"{_diff(s, approach == 'a')} | {100 * s['other_load']:.0f}% |"
            )
    out = "\n".join(lines)
    reward = [(m, a) for m in models for a in ("reward_loop", "reward_car") if (m, a) in summary]
    if reward:
        rl = [
            "| reward model | approach | tokens/s (all tokens) | % of fp32 floor | peak RSS (model loaded) | vs loop | max relative Δ vs loop | other load |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m, a in reward:
            s = summary[(m, a)]
            rl.append(
                f"| SmolLM2-135M + 1-output head | {APPROACHES[a]} | {s['tok_s']:.0f} | {s['floor_pct']:.0f}% | "
                f"{s['peak_mb'] / 1024:.2f} GB ({s['loaded_mb'] / 1024:.2f}) | {_ratio(s['vs_loop'])} | "
                f"{_diff(s, a == 'reward_loop')} | {100 * s['other_load']:.0f}% |"
            )
        out += "\n\n" + "\n".join(rl)
    bf = [(m, summary[(m, "car_bf16")]) for m in models if "max_error" in summary.get((m, "car_bf16"), {})]
    if bf:
        bl = ["| model | bf16 speed vs fp32 (car_hf) | max abs error vs fp32 (nats/token) | mean abs error |",
              "|---|---|---|---|"]
        for m, s in bf:
            bl.append(f"| {MODELS[m]} | {_ratio(s['vs_fp32'])} | {s['max_error']:.1e} | {s['mean_error']:.1e} |")
        out += "\n\n" + "\n".join(bl)
    return out


def goals(summary: dict, models: list[str]) -> list[tuple[str, str, bool | None]]:
    """(goal, measured, met) for car_hf on this CPU."""
    out = []
    for model in models:
        car, a, b = (summary.get((model, k)) for k in ("car", "a", "b"))
        if car is None:
            continue
        out.append((f"≥ 70% of the fp32 floor, {MODELS[model]}", f"{car['floor_pct']:.0f}%", car["floor_pct"] >= 70))
        if a is not None:
            median, lo, _ = car["vs_a"]
            out.append((f"never slower than (a), {MODELS[model]}", f"{median:.2f}× (slowest round {lo:.2f}×)", lo >= 1.0))
            out.append((f"peak memory below (a)'s, {MODELS[model]}",
                        f"{car['peak_mb'] / 1024:.2f} GB vs {a['peak_mb'] / 1024:.2f} GB", car["peak_mb"] < a["peak_mb"]))
        if model == "gemma" and a is not None:
            out.append(("≥ 1.25× (a), Gemma-3-270m", f"{car['vs_a'][0]:.2f}×", car["vs_a"][0] >= 1.25))
        if model == "gemma" and b is not None:
            out.append(("≥ 3× (b), Gemma-3-270m", f"{car['vs_b'][0]:.2f}×", car["vs_b"][0] >= 3))
    return out


def machine() -> dict:
    info = {"cpu": platform.processor() or "?", "cores": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["cpu"] = value.strip()
            if key.strip() == "Flags":
                flags = value.split()
                info["flags"] = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags)
    except OSError:
        pass
    with open("/proc/meminfo") as f:
        info["ram_gb"] = round(int(f.readline().split()[1]) / 2**20)
    return info


def results_markdown(args, summary, models, failures, notes, info, versions, elapsed, goal_rows, date=None) -> str:
    date = date or datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        "# Scoring-engine benchmark",
        "",
        f"Measured {date} by `python bench/score_bench.py {_command(args)}` "
        f"({elapsed / 60:.0f} minutes) on: {info['cpu']}, {info['cores']} cores ({info.get('flags', '')}; no GPU), "
        f"{info['ram_gb']} GiB RAM; torch {versions['torch']}, transformers {versions['transformers']}, "
        f"datasets {versions['datasets']}, Python {versions['python']}; {args.threads} torch thread(s); fp32 unless "
        "marked bf16. Speeds by "
        + ("the worker's **CPU seconds** (1 thread: time spent waiting for a core on the shared machine is not "
           "counted; the matmul rate of the floor is measured the same way)." if args.clock == "cpu" else
           "wall clock."),
        "",
        f"Data: {args.examples} real AlpacaEval-zoo rows (first {(args.examples + 3) // 4} instructions × "
        f"{', '.join(GENERATORS)}), rendered by `car_hf.formats` with a {args.max_length}-token cap, so every "
        f"approach scores the same tokens. {args.repeats} interleaved round(s); medians, and in brackets the range "
        "of the per-round paired ratios.",
        "",
        tables(summary, models),
        "",
        "Tokens and FLOPs of the floor:",
        "",
    ]
    for model in models:
        s = summary.get((model, "car")) or summary.get((model, "a"))
        if s:
            lines.append(
                f"- {MODELS[model]}: {s['all_tokens']} tokens, {s['response_tokens']} response tokens, "
                f"{s['flops'] / 1e12:.2f} TFLOP; matmul rate measured beside it: median {s['rate']:.0f} GFLOP/s."
            )
    s = summary.get((models[0], "reward_loop"))
    if s:
        lines.append(f"- reward model: {s['all_tokens']} tokens, {s['flops'] / 1e12:.2f} TFLOP.")
    lines += [
        "",
        "## How measured",
        "",
        "- (a) per example: `model(input_ids, labels=prompt-masked labels).loss` — full logits, the model's own "
        "cross-entropy over every position (Cherry-LLM's IFD script, data-juicer's perplexity operator). "
        "(b) dataset-order padded batches of 8: full logits, shifted, `CrossEntropyLoss(reduction='none')` "
        "masked to response positions (`evaluate`'s perplexity metric; here each batch's tensors are freed "
        "before the next, `evaluate`'s loop keeps them alive, so its real peak is higher). car_hf: "
        "`Dataset.from_list(rows).map(add_base_loss(hub_id, max_length=...), batched=True)`, its rendering "
        "included in the timing (as is (a)'s and (b)'s). Reward: per-example `model(input_ids).logits[0, 0]` vs "
        "`map(add_reward((model, tokenizer)))`, on `AutoModelForSequenceClassification.from_pretrained"
        "(<converted SmolLM2 folder>, num_labels=1)` (untrained head, seeded; speed only).",
        "- Each measurement is a fresh subprocess: load, warm up on 2 short rows, time. Peak RSS is the "
        "process's `VmHWM` after resetting it (`/proc/self/clear_refs`) just before the timed section: the "
        "resident model plus the approach's own working memory. In brackets, the RSS with the model loaded.",
        "- Floor = counted forward FLOPs (2 × non-embedding parameters × all tokens + 2 × hidden × vocabulary × "
        "response tokens; reward: 2 × non-embedding parameters × all tokens) over the fp32 rate of 2048³ torch "
        "matmuls timed in the same process right before and after the timed section. % of floor = floor time / "
        "measured time. Attention FLOPs are not counted (≤ 512 tokens).",
        "- The machine may be shared with other jobs: approaches are interleaved round by round with the order "
        "rotated, ratios are per-round pairs, and the \"other load\" column says how busy the rest of the machine "
        "was. Absolute tokens/s move with the load; ratios and % of floor much less.",
        f"- Agreement: car_hf's per-example loss must equal (a)'s within {LOSS_TOLERANCE:g} nats/token in fp32 "
        f"(rewards: within {REWARD_TOLERANCE:g} relative) — "
        + ("**passed**." if not failures else "**FAILED**: " + "; ".join(failures))
        + (" Baselines beyond that tolerance (both are plain fp32 full-logit computations; what differs is fp32 "
           "rounding of the log-softmax over the vocabulary, largest per token on short responses; car_hf's tiled "
           "head agrees with a float64 head to ~2e-7, `tests/test_real_models.py`): " + "; ".join(notes) + "."
           if notes else ""),
        "",
        "## Goals for car_hf on this CPU",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
    ]
    for goal, measured, met in goal_rows:
        lines.append(f"| {goal} | {measured} | {'yes' if met else '**no**'} |")
    loads = [s["other_load"] for s in summary.values() if s.get("other_load") is not None]
    if loads:
        lines += ["", f"Other processes used a median {100 * statistics.median(loads):.0f}% of the machine's CPUs during "
                  "the timed sections (column \"other load\"; 0% = the machine was ours)."]
    lines += ["", "What the figures mean for users: the README's *Speed and exactness* section.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="SmolLM2 only, 8 rows, 1 round, no bf16 (CI, ~2 min)")
    parser.add_argument("--models", default=None, help="comma-separated among gemma,smollm2 (default: both)")
    parser.add_argument("--examples", type=int, default=None, help="rows (default 48; quick 12)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3; quick 1)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--approaches", default=None, help="comma-separated subset of " + ",".join(APPROACHES))
    parser.add_argument("--wait-idle", type=float, default=None,
                        help="before each measurement wait up to this many seconds for other processes to use < 25%% "
                        "of the CPUs (default 60; quick 0)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time by wall clock (default) or by the worker's CPU seconds (only with --threads 1: "
                        "on a shared machine a 1-thread process's CPU time does not count the time it waits for a core)")
    parser.add_argument("--no-reward", action="store_true")
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--write-results", action="store_true", help=f"write {RESULTS.relative_to(ROOT)}")
    parser.add_argument("--json", default=None, help="also dump every raw measurement to this file")
    parser.add_argument("--from-json", default=None, help="re-report (and --write-results) a --json dump, no measuring")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = run_worker(json.loads(args.worker))
        with open(args.worker_out, "w") as f:
            json.dump(result, f)
        return 0

    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1 (threads spinning at a barrier count as CPU time)")
    models = (args.models or ("smollm2" if args.quick else "gemma,smollm2")).split(",")
    args.examples = args.examples or (8 if args.quick else 48)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.wait_idle is None:
        args.wait_idle = 0.0 if args.quick else 60.0
    loss_approaches = ["a", "b", "car"] + ([] if (args.quick or args.no_bf16) else ["car_bf16"])
    reward_approaches = [] if args.no_reward else ["reward_loop", "reward_car"]
    if args.approaches:
        wanted = args.approaches.split(",")
        loss_approaches = [a for a in loss_approaches if a in wanted] or [a for a in wanted if a in ("a", "b", "car", "car_bf16")]
        reward_approaches = [a for a in reward_approaches if a in wanted]

    def log(message):
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    results = []
    measured_on = None
    if args.from_json:
        dump = json.load(open(args.from_json))
        measured_on = dump.get("date") or datetime.datetime.fromtimestamp(os.path.getmtime(args.from_json)).strftime(
            "%Y-%m-%d %H:%M"
        )
        results = dump["results"]
        for key in ("examples", "repeats", "max_length", "threads", "quick", "clock"):
            setattr(args, key, dump["args"][key])
        models = [m for m in MODELS if any(r["model"] == m for r in results)]
        started -= dump.get("elapsed", 0.0)
    for round_ in range(0 if args.from_json else args.repeats):
        plan = [(m, a) for m in models for a in _rotate(loss_approaches, round_)]
        plan += [(models[0], a) for a in _rotate(reward_approaches, round_)]
        for model, approach in plan:
            spec = {"model": model, "approach": approach, "examples": args.examples, "max_length": args.max_length,
                    "threads": args.threads, "round": round_}
            result = measure(spec, log, args.wait_idle)
            if result is None:
                continue
            if args.clock == "cpu":  # speeds from this process's CPU seconds (1 thread: immune to descheduling)
                result["wall_seconds"], result["seconds"] = result["seconds"], result["cpu_seconds"]
                result["wall_rate_gflops"], result["rate_gflops"] = result["rate_gflops"], result["cpu_rate_gflops"]
            results.append(result)
            tokens = result["all_tokens"] if approach.startswith("reward") else result["response_tokens"]
            log(
                f"round {round_ + 1}/{args.repeats} {model:8s} {approach:12s} {result['seconds']:7.1f} s "
                f"{tokens / result['seconds']:6.0f} tok/s  {100 * result['flops'] / result['rate_gflops'] / 1e9 / result['seconds']:3.0f}% "
                f"of floor (matmul {result['rate_before']:.0f}/{result['rate_after']:.0f} GFLOP/s)  "
                f"peak {result['peak_rss_mb'] / 1024:.2f} GB  other load {100 * result['other_load']:.0f}%  "
                f"[process {result['process_seconds']:.0f} s]"
            )
    elapsed = time.perf_counter() - started

    failures, notes = check_agreement(results, log)
    reward_model = [r for r in results if r["approach"].startswith("reward")]
    summary = summarize(results)
    info = machine()
    versions = results[0]["versions"] if results else {}
    goal_rows = goals(summary, models)

    print(f"\n{args.examples} AlpacaEval-zoo rows, cap {args.max_length} tokens, {args.repeats} round(s), "
          f"{args.threads} threads, {info['cpu']} ({info['cores']} cores), torch {versions.get('torch')}; "
          f"peak RSS = VmHWM of a fresh process per measurement, reset before the timed section\n")
    print(tables(summary, models))
    print()
    for goal, measured, met in goal_rows:
        print(f"- goal {goal}: {measured} -> {'met' if met else 'NOT met'}")
    print(f"\nagreement (fp32, <= {LOSS_TOLERANCE:g} nats/token; rewards <= {REWARD_TOLERANCE:g} rel.): "
          + ("OK" if not failures else f"FAILED ({len(failures)})"))
    print(f"total {elapsed:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": info, "results": results, "elapsed": elapsed,
                       "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}, f)
    if args.write_results:
        RESULTS.write_text(
            results_markdown(args, summary, models, failures, notes, info, versions, elapsed, goal_rows,
                             date=measured_on)
        )
        print(f"wrote {RESULTS}")
    del reward_model
    return 1 if failures else 0


def _command(args) -> str:
    parts = ["--quick"] if args.quick else []
    if args.threads != 2:
        parts.append(f"--threads {args.threads}")
    if args.clock != "wall":
        parts.append(f"--clock {args.clock}")
    if args.repeats != (1 if args.quick else 3):
        parts.append(f"--repeats {args.repeats}")
    if args.examples != (8 if args.quick else 48):
        parts.append(f"--examples {args.examples}")
    return " ".join(parts + ["--write-results"])


def _rotate(items: list, k: int) -> list:
    if not items:
        return items
    k %= len(items)
    return items[k:] + items[:k]


if __name__ == "__main__":
    sys.exit(main())

"""The scoring benchmark's definitions and report: what ``bench/score_bench.py`` compares, how its measurements are
checked (per-example agreement), summarized (medians, paired per-round ratios) and written (``bench/RESULTS.md``).

No measuring here: :func:`summarize`, :func:`tables` and :func:`results_markdown` work on the measurements'
dicts, so ``python bench/score_bench.py --from-json dump.json`` re-renders a saved run without a model.

Example:
    >>> run = lambda approach, seconds, round_: {"model": "smollm2", "approach": approach, "round": round_,
    ...     "seconds": seconds, "flops": 1e9, "rate_gflops": 10.0, "other_load": 0.0, "peak_rss_mb": 900.0,
    ...     "rss_loaded_mb": 600.0, "all_tokens": 60, "response_tokens": 40, "values": [], "counts": []}
    >>> summary = summarize([run("a", 4.0, 0), run("car", 2.0, 0), run("a", 6.0, 1), run("car", 2.0, 1)])
    >>> summary[("smollm2", "car")]["vs_a"], summary[("smollm2", "car")]["tok_s"]
    ((2.5, 2.0, 3.0), 20.0)
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from common import MODELS, format_ratio, markdown_table, median, paired_ratios, spread, today

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
LOSS_APPROACHES = ("a", "b", "car", "car_bf16")


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
    summary: dict[tuple[str, str], dict[str, Any]] = {}
    by: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        by.setdefault((r["model"], r["approach"]), []).append(r)
    for (model, approach), rs in by.items():
        is_reward = approach.startswith("reward")
        tokens = rs[0]["all_tokens"] if is_reward else rs[0]["response_tokens"]
        summary[(model, approach)] = {
            "n": len(rs),
            "tok_s": median([tokens / r["seconds"] for r in rs]),
            "seconds": median([r["seconds"] for r in rs]),
            "floor_pct": median([100 * r["flops"] / (r["rate_gflops"] * 1e9) / r["seconds"] for r in rs]),
            "rate": median([r["rate_gflops"] for r in rs]),
            "other_load": median([r["other_load"] for r in rs]),
            "peak_mb": max(r["peak_rss_mb"] for r in rs),
            "loaded_mb": median([r["rss_loaded_mb"] for r in rs]),
            "tokens": tokens, "all_tokens": rs[0]["all_tokens"], "response_tokens": rs[0]["response_tokens"],
            "flops": rs[0]["flops"],
            "max_diff": max((r.get("max_diff_vs_reference", math.nan) for r in rs), default=math.nan),
        }

    def paired(model, num, den):  # den's seconds over num's, round by round: num's speedup over den
        rounds: dict[int, dict[str, float]] = {}
        for r in results:
            if r["model"] == model and r["approach"] in (num, den):
                rounds.setdefault(r["round"], {})[r["approach"]] = r["seconds"]
        return spread(paired_ratios(rounds.values(), den, num))

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


def _diff(s: dict, is_reference: bool) -> str:
    if is_reference:
        return "reference"
    return "see bf16 table" if math.isnan(s["max_diff"]) else f"{s['max_diff']:.1e}"


def _memory(s: dict) -> str:
    return f"{s['peak_mb'] / 1024:.2f} GB ({s['loaded_mb'] / 1024:.2f})"


def tables(summary: dict, models: list[str]) -> str:
    """The loss table, then (when measured) the reward table and the bf16 table."""
    rows = [[MODELS[model], APPROACHES[approach], f"{s['tok_s']:.0f}", f"{s['floor_pct']:.0f}%", _memory(s),
             format_ratio(s["vs_a"]), format_ratio(s["vs_b"]), _diff(s, approach == "a"),
             f"{100 * s['other_load']:.0f}%"]
            for model in models for approach in LOSS_APPROACHES if (s := summary.get((model, approach)))]
    out = markdown_table(["model", "approach", "response tok/s", "% of fp32 floor", "peak RSS (model loaded)", "vs (a)",
                          "vs (b)", "max Δ vs (a), nats/token", "other load"], rows)
    reward = [(a, summary[(m, a)]) for m in models for a in ("reward_loop", "reward_car") if (m, a) in summary]
    if reward:
        out += "\n\n" + markdown_table(
            ["reward model", "approach", "tokens/s (all tokens)", "% of fp32 floor", "peak RSS (model loaded)",
             "vs loop", "max relative Δ vs loop", "other load"],
            [["SmolLM2-135M + 1-output head", APPROACHES[a], f"{s['tok_s']:.0f}", f"{s['floor_pct']:.0f}%", _memory(s),
              format_ratio(s["vs_loop"]), _diff(s, a == "reward_loop"), f"{100 * s['other_load']:.0f}%"]
             for a, s in reward])
    bf = [(m, summary[(m, "car_bf16")]) for m in models if "max_error" in summary.get((m, "car_bf16"), {})]
    if bf:
        out += "\n\n" + markdown_table(
            ["model", "bf16 speed vs fp32 (car_hf)", "max abs error vs fp32 (nats/token)", "mean abs error"],
            [[MODELS[m], format_ratio(s["vs_fp32"]), f"{s['max_error']:.1e}", f"{s['mean_error']:.1e}"] for m, s in bf])
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
            middle, lo, _ = car["vs_a"]
            out.append((f"never slower than (a), {MODELS[model]}", f"{middle:.2f}× (slowest round {lo:.2f}×)", lo >= 1.0))
            out.append((f"peak memory below (a)'s, {MODELS[model]}",
                        f"{car['peak_mb'] / 1024:.2f} GB vs {a['peak_mb'] / 1024:.2f} GB", car["peak_mb"] < a["peak_mb"]))
        if model == "gemma" and a is not None:
            out.append(("≥ 1.25× (a), Gemma-3-270m", f"{car['vs_a'][0]:.2f}×", car["vs_a"][0] >= 1.25))
        if model == "gemma" and b is not None:
            out.append(("≥ 3× (b), Gemma-3-270m", f"{car['vs_b'][0]:.2f}×", car["vs_b"][0] >= 3))
    return out


def results_markdown(args, summary, models, failures, notes, info, versions, elapsed, goal_rows, date=None) -> str:
    """bench/RESULTS.md: the machine and the run, the tables, how it was measured, the goals."""
    date = date or today(minutes=True)
    lines = [
        "# Scoring-engine benchmark",
        "",
        f"Measured {date} by `python bench/score_bench.py {command(args)}` "
        f"({elapsed / 60:.0f} minutes) on: {info['cpu']}, {info['cores']} cores ({info.get('flags', '')}; no GPU), "
        f"{info['ram_gb']} GiB RAM; torch {versions['torch']}, transformers {versions['transformers']}, "
        f"datasets {versions['datasets']}, Python {versions['python']}; {args.threads} torch thread(s); fp32 unless "
        "marked bf16. Speeds by "
        + ("the worker's **CPU seconds** (1 thread: time spent waiting for a core on the shared machine is not "
           "counted; the matmul rate of the floor is measured the same way)." if args.clock == "cpu" else
           "wall clock."),
        "",
        f"Data: {args.examples} real AlpacaEval-zoo rows (first {(args.examples + 3) // 4} instructions × "
        f"{', '.join(GENERATORS)}), rendered by `car_hf.core.formats` with a {args.max_length}-token cap, so every "
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


def command(args) -> str:
    """The options of ``score_bench.py`` that made this run (the defaults left out), ending in --write-results."""
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


"""Scoring-engine benchmark: car_hf against today's ways of computing response loss and rewards, in one run.

What it compares, on the same real AlpacaEval-zoo rows rendered by ``car_hf.core.formats`` (identical token sets):

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
import os
import sys
import time

from common import (MODELS, ROOT, available_mb, load_real, load_reward_backbone, log, machine,
                    parse_or_work, quiet_stack, reset_peak_rss, rotate, run_worker, status_kb, timed, today, versions,
                    wait_for_idle, warm_rows, write_report, zoo_rows)

from baselines import forward_flops, matmul_rate, non_embedding_params, padded_batch_losses, per_example_losses
from score_report import (APPROACHES, B_BATCH, GENERATORS, LOSS_APPROACHES, LOSS_TOLERANCE, REWARD_TOLERANCE,
                          check_agreement, goals, results_markdown, summarize, tables)

RESULTS = ROOT / "bench" / "RESULTS.md"


# ----------------------------------------------------------------------------------------------- worker side


def work(spec: dict) -> dict:
    """One measurement in this fresh process; returns a JSON-able dict."""
    torch = quiet_stack(spec["threads"], datasets=True)
    import datasets

    from car_hf import add_base_loss, add_reward
    from car_hf.core import formats

    approach, max_length = spec["approach"], spec["max_length"]
    rows = zoo_rows(spec["examples"], GENERATORS, "score_bench")
    layout = formats.detect_layout(list(rows[0].keys()))
    to_example = lambda rs: [formats.row_example({k: [v] for k, v in r.items()}, 0, layout, i) for i, r in enumerate(rs)]

    t0 = time.perf_counter()
    if approach.startswith("reward"):
        model, tokenizer, model_id = load_reward_backbone()
    else:
        model_id = MODELS[spec["model"]]
        model, tokenizer = load_real(model_id, dtype="bfloat16" if approach.endswith("bf16") else "float32")
    load_seconds = time.perf_counter() - t0

    def render_all(rs):
        return [formats.render(e, tokenizer, max_length=max_length) for e in to_example(rs)]

    # ---- the approaches: each returns (summed NLL or reward, counted response tokens) per row, in input order
    def approach_a(rs):
        means, counts = per_example_losses(torch, model, render_all(rs))
        return [m * n for m, n in zip(means, counts)], counts

    def approach_b(rs):
        return padded_batch_losses(torch, model, render_all(rs), tokenizer.pad_token_id, batch=B_BATCH)

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

    run(warm_rows(rows))
    rendered = render_all(rows)
    reward = approach.startswith("reward")
    rss_loaded_kb = status_kb("VmRSS")
    rate_before = matmul_rate(torch, 2048)
    peak_reset = reset_peak_rss()
    timing = timed(lambda: run(rows))
    peak_kb = status_kb("VmHWM")
    rate_after = matmul_rate(torch, 2048)
    values, counts = timing.result
    return {
        "approach": approach, "model": spec["model"], "model_id": model_id, "round": spec["round"],
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "seconds": timing.seconds, "cpu_seconds": timing.cpu_seconds, "load_seconds": load_seconds,
        "other_load": timing.other_load, "rate_gflops": (rate_before[0] + rate_after[0]) / 2e9,
        "rate_before": rate_before[0] / 1e9, "rate_after": rate_after[0] / 1e9,
        "cpu_rate_gflops": (rate_before[1] + rate_after[1]) / 2e9,
        "flops": forward_flops(model, rendered, reward=reward), "all_tokens": sum(len(r.ids) for r in rendered),
        "response_tokens": sum(len(r.ids) - max(r.start, 1) for r in rendered), "examples": len(rows),
        "non_embedding_params": non_embedding_params(model),
        "values": values, "counts": counts,
        "expected_counts": [0] * len(rendered) if reward else [len(r.ids) - max(r.start, 1) for r in rendered],
        "rss_loaded_mb": rss_loaded_kb / 1024, "peak_rss_mb": peak_kb / 1024, "peak_reset": peak_reset,
        "versions": versions("torch", "transformers", "datasets"), "threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------------------------- driver side


def _b_memory_estimate_mb(model: str, max_length: int) -> float:
    """A generous estimate of (b)'s peak: ~4 copies of one batch's fp32 logits plus the model."""
    vocab, params = {"gemma": (262_144, 268e6), "smollm2": (49_152, 135e6)}[model]
    return 4 * B_BATCH * max_length * vocab * 4 / 2**20 + params * 4 / 2**20 * 1.5


def measure(spec: dict, wait_idle: float = 0.0) -> dict | None:
    """One measurement in a fresh worker process (None: skipped, the machine lacks the memory (b) needs)."""
    if wait_idle > 0:
        wait_for_idle(wait_idle)
    if spec["approach"] == "b":
        need = _b_memory_estimate_mb(spec["model"], spec["max_length"]) + 1024
        for _ in range(24):
            if available_mb() >= need:
                break
            log(f"  waiting for memory for (b): {available_mb():.0f} MB available, ~{need:.0f} MB needed")
            time.sleep(5)
        else:
            log(f"  SKIPPED (b) on {spec['model']} round {spec['round']}: not enough free memory")
            return None
    return run_worker(__file__, spec, spec["threads"])


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
    args = parse_or_work(parser, argv, work)
    if args is None:  # a worker: its measurement is written
        return 0

    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1 (threads spinning at a barrier count as CPU time)")
    models = (args.models or ("smollm2" if args.quick else "gemma,smollm2")).split(",")
    args.examples = args.examples or (8 if args.quick else 48)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.wait_idle is None:
        args.wait_idle = 0.0 if args.quick else 60.0

    started = time.perf_counter()
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
    else:
        measured_on, results = None, measure_rounds(args, models)
    return report(args, models, results, time.perf_counter() - started, measured_on)


def measure_rounds(args: argparse.Namespace, models: list[str]) -> list[dict]:
    """Every approach on every model, round by round, the order rotated each round."""
    loss_approaches = ["a", "b", "car"] + ([] if (args.quick or args.no_bf16) else ["car_bf16"])
    reward_approaches = [] if args.no_reward else ["reward_loop", "reward_car"]
    if args.approaches:
        wanted = args.approaches.split(",")
        loss_approaches = [a for a in loss_approaches if a in wanted] or [a for a in wanted if a in LOSS_APPROACHES]
        reward_approaches = [a for a in reward_approaches if a in wanted]
    results = []
    for round_ in range(args.repeats):
        plan = [(m, a) for m in models for a in rotate(loss_approaches, round_)]
        plan += [(models[0], a) for a in rotate(reward_approaches, round_)]
        for model, approach in plan:
            spec = {"model": model, "approach": approach, "examples": args.examples, "max_length": args.max_length,
                    "threads": args.threads, "round": round_}
            result = measure(spec, args.wait_idle)
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
    return results


def report(args: argparse.Namespace, models: list[str], results: list[dict], elapsed: float,
           measured_on: str | None) -> int:
    """Print the tables, goals and agreement; dump (--json) and write (--write-results); 1 if car_hf disagreed."""
    failures, notes = check_agreement(results, log)
    summary = summarize(results)
    info = machine()
    stack = results[0]["versions"] if results else {}
    goal_rows = goals(summary, models)

    print(f"\n{args.examples} AlpacaEval-zoo rows, cap {args.max_length} tokens, {args.repeats} round(s), "
          f"{args.threads} threads, {info['cpu']} ({info['cores']} cores), torch {stack.get('torch')}; "
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
                       "date": today(minutes=True)}, f)
    if args.write_results:
        write_report(RESULTS, results_markdown(args, summary, models, failures, notes, info, stack, elapsed,
                                               goal_rows, date=measured_on))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

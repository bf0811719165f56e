"""What computing ``base_rank`` (RSR) in the loss pass costs: car_hf ``add_base_loss`` with it vs without.

"Without" is the engine before ranks were added: :func:`car_hf.scoring.loss._head_scores` is replaced, in that
worker only, by the NLL-only tile loop it grew from (below, :func:`_nll_only`), so both variants run the same
backbone, batching and head GEMMs on the same rows, and differ only by the per-tile count of logits above the
target's.

How it measures (2 CPU cores shared with other work): the rows, the fresh worker processes and the clock/load
readings are ``bench/score_bench.py``'s (``bench/common.py``: real AlpacaEval-zoo rows rendered by
``car_hf.core.formats``, 512-token cap). Every measurement is a fresh subprocess (load Gemma-3-270m fp32, warm up on
2 short rows, time ``Dataset.map`` on all rows); the two variants alternate within each round, the order flipped
every round; the ratio is computed per round (with / without), by wall clock and by the worker's own CPU time (less
sensitive to other processes), and the medians reported. Losses of the two variants must agree exactly (same code path).

``--paired`` runs one process in which every LM-head chunk is computed by both loops in ABBA order:
paired per-chunk ratios, unaffected by load that varies over seconds; the scoring-time ratio is then
(rest + head with) / (rest + head without), where rest (backbone, rendering, batching) is the same code in both.

Usage:
    python bench/rsr_bench.py --examples 24           # 24 rows, 3 rounds of fresh processes
    python bench/rsr_bench.py --examples 24 --paired  # one process, per-chunk pairs
    python bench/rsr_bench.py --examples 8 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

from common import MODELS, load_real, parse_or_work, quiet_stack, rotate, run_worker, timed, warm_rows, zoo_rows
from score_report import GENERATORS

MODEL = MODELS["gemma"]
VARIANTS = ("without", "with")


def _paired(times: list[tuple[float, float]]):
    """A ``_head_scores`` that runs both head loops on every chunk in ABBA order (balanced against load drifting
    during the chunk), records (with, without) seconds, checks the losses are identical, returns the real result."""
    import torch

    from car_hf.scoring import loss

    real = loss._head_scores

    def both(*args):
        out, spent = {}, {real: 0.0, _nll_only: 0.0}
        for fn in (real, _nll_only, _nll_only, real):
            t = time.perf_counter()
            out[fn] = fn(*args)
            spent[fn] += time.perf_counter() - t
        if not torch.equal(out[real][0], out[_nll_only][0]):
            raise SystemExit("rsr_bench: the two head loops' losses differ")
        times.append((spent[real] / 2, spent[_nll_only] / 2))
        return out[real]

    return both


def _nll_only(model, hidden, targets, block, buffer=None):
    """The head loop before ranks (car_hf 0.x ``_head_nll``): online log-sum-exp only; ranks returned as zeros."""
    import torch

    from car_hf.scoring import loss

    rows = hidden.shape[0]
    peak = torch.full((rows,), -math.inf, dtype=torch.float32)
    total = torch.zeros(rows, dtype=torch.float64)
    target_logit = torch.zeros(rows, dtype=torch.float32)
    for lo, tile in loss._logit_tiles(model, hidden, block, buffer):
        local = targets - lo
        inside = (local >= 0) & (local < tile.shape[1])
        picked = tile.gather(1, local.clamp(0, tile.shape[1] - 1)[:, None])[:, 0]
        target_logit = torch.where(inside, picked, target_logit)
        new_peak = torch.maximum(peak, tile.amax(1))
        total.mul_(torch.exp(peak - new_peak).double())
        total.add_(tile.sub_(new_peak[:, None]).exp_().sum(1).double())
        peak = new_peak
    return peak.double() + total.log() - target_logit.double(), torch.zeros(rows, dtype=torch.int64)


def work(spec: dict) -> dict:
    """One measurement in this fresh process (``spec["variant"]``: with, without or paired)."""
    quiet_stack(spec["threads"], datasets=True)
    import datasets

    from car_hf import add_base_loss
    from car_hf.scoring import loss

    times: list[tuple[float, float]] = []
    if spec["variant"] == "without":
        loss._head_scores = _nll_only
    elif spec["variant"] == "paired":
        loss._head_scores = _paired(times)
    rows = zoo_rows(spec["examples"], GENERATORS, "rsr_bench")
    pair = load_real(MODEL)

    def run(rs):
        return datasets.Dataset.from_list(rs).map(add_base_loss(pair, max_length=spec["max_length"]), batched=True)

    run(warm_rows(rows))
    times.clear()
    timing = timed(lambda: run(rows))
    scored = timing.result
    return {"variant": spec["variant"], "round": spec["round"], "seconds": timing.seconds,
            "cpu_seconds": timing.cpu_seconds, "other_load": timing.other_load,
            "base_loss": list(scored["base_loss"]), "base_rank": list(scored["base_rank"]),
            "tokens": sum(scored["base_loss_tokens"]), "head_times": times}


def measure(spec: dict) -> dict:
    return run_worker(__file__, spec, spec["threads"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paired", action="store_true",
                        help="one process running both head loops on every chunk of the same run (robust to load)")
    args = parse_or_work(parser, argv, work)
    if args is None:  # a worker: its measurement is written
        return 0
    if args.paired:
        r = measure({"variant": "paired", "round": 0, "examples": args.examples, "max_length": args.max_length,
                     "threads": args.threads})
        with_s, without_s = (sum(t[k] for t in r["head_times"]) for k in (0, 1))
        rest = r["seconds"] - 2 * (with_s + without_s)  # backbone, rendering, batching: the same in both
        print(json.dumps({
            "examples": args.examples, "response_tokens": r["tokens"], "head_chunks": len(r["head_times"]),
            "head_seconds": {"with": with_s, "without": without_s}, "other_seconds": rest,
            "head_ratios": [round(a / b, 3) for a, b in r["head_times"]],
            "head_ratio": round(with_s / without_s, 3),
            "median_head_ratio": round(statistics.median(a / b for a, b in r["head_times"]), 3),
            "scoring_ratio": round((rest + with_s) / (rest + without_s), 3), "other_load": r["other_load"],
        }, indent=1))
        return 0
    ratios, cpu_ratios, by_variant = [], [], {v: [] for v in VARIANTS}
    for k in range(args.rounds):
        results = {}
        for variant in rotate(VARIANTS, k):
            spec = {"variant": variant, "round": k, "examples": args.examples, "max_length": args.max_length,
                    "threads": args.threads}
            results[variant] = measure(spec)
            r = results[variant]
            by_variant[variant].append(r)
            print(f"round {k} {variant:>7}: {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} CPU s, "
                  f"other load {r['other_load']:.0%}, {r['tokens']} response tokens)", flush=True)
        if json.dumps(results["with"]["base_loss"]) != json.dumps(results["without"]["base_loss"]):  # NaN-safe
            raise SystemExit("rsr_bench: the two variants' losses differ: they must run the same code path")
        ratios.append(results["with"]["seconds"] / results["without"]["seconds"])
        cpu_ratios.append(results["with"]["cpu_seconds"] / results["without"]["cpu_seconds"])
        print(f"round {k} ratio with/without: {ratios[-1]:.3f} wall, {cpu_ratios[-1]:.3f} CPU", flush=True)
    ranks = by_variant["with"][0]["base_rank"]
    print(json.dumps({
        "examples": args.examples, "rounds": args.rounds, "max_length": args.max_length,
        "median_seconds": {v: statistics.median(r["seconds"] for r in rs) for v, rs in by_variant.items()},
        "ratios": [round(x, 3) for x in ratios], "median_ratio": round(statistics.median(ratios), 3),
        "cpu_ratios": [round(x, 3) for x in cpu_ratios], "median_cpu_ratio": round(statistics.median(cpu_ratios), 3),
        "base_rank_mean": statistics.fmean(x for x in ranks if not math.isnan(x)),
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Replay adaptive (early-stopping) generator ranking against the exhaustive ranking.

Two phases:

1. ``score``: per-example SmolLM2-135M-Instruct losses for the first N AlpacaEval-zoo instructions x all 11
   generators (reward = ``judge_preference``), computed once with the same ``CARScorer`` the API uses and cached as
   parquet chunks under ``~/.cache/car_hf/bench/`` (keyed by model and settings; never in the repository). Slow
   (tens of minutes on 2 CPU cores): run it in the background.
2. ``replay``: many seeded shuffles of the instructions; each replays ``rank_adaptive``'s stopping rule
   (:func:`car_hf.ranking.stopping.stop_decision`, the very function the API calls) round by round on the cached values,
   with no model, and compares the stopped ranking with the exhaustive one. Writes ``bench/ADAPTIVE.md``.

    python bench/adaptive_replay.py score --instructions 200      # background: nohup ... &
    python bench/adaptive_replay.py replay --instructions 200 --replays 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import MODELS, ROOT, machine, records_table, versions, write_report, zoo_path

import numpy as np
import pandas as pd

from car_hf.ranking import adaptive, stopping
from car_hf.ranking.leaderboard import Cells

ZOO = zoo_path()
MODEL = MODELS["smollm2"]
REFERENCE = "gpt4_1106_preview"  # the judge's reference: judge_preference is 0.5 by construction
CHUNK = 20  # instructions per cached chunk
# Generator sets replayed: name -> generators left out.
CASES = {
    "no-ref": [REFERENCE],  # the meaningful case: 10 generators
    "all": [],  # 11: the reference wins trivially
    "close": [REFERENCE, "claude-2.1"],  # 9: a stress test, the top two are close
}
CORRECTIONS = ("none", "bonferroni")


def cache_dir() -> Path:
    root = Path(os.environ.get("CAR_HF_CACHE") or Path.home() / ".cache" / "car_hf")
    return root / "bench"


def settings_key(max_length: int) -> str:
    settings = {"model": MODEL, "max_length": max_length, "data": ZOO.name, "size": ZOO.stat().st_size,
                "reward": "judge_preference", "loss": "car_hf.CARScorer base_loss"}
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=6).hexdigest()
    return f"adaptive-smollm2-135m-len{max_length}-{digest}"


def chunk_path(max_length: int, start: int) -> Path:
    return cache_dir() / settings_key(max_length) / f"ids_{start:04d}_{start + CHUNK - 1:04d}.parquet"


def score(args: argparse.Namespace) -> None:
    import datasets
    import torch

    from car_hf.scoring.scorer import CARScorer
    from car_hf.core.data import map_scores

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    datasets.disable_caching()
    zoo = datasets.load_dataset("json", data_files=str(ZOO), split="train")
    scorer = CARScorer(MODEL, reward_column="judge_preference", beta=1.0, max_length=args.max_length)
    columns = ["instruction_id", "generator", "reward", "base_loss", "base_loss_tokens", "base_loss_truncated", "car"]
    for start in range(0, args.instructions, CHUNK):
        path = chunk_path(args.max_length, start)
        if path.exists():
            continue
        t0 = time.perf_counter()
        ids = set(range(start, start + CHUNK))
        part = zoo.filter(lambda v, ids=ids: [i in ids for i in v], input_columns="instruction_id", batched=True)
        scored = map_scores(part, scorer, batch_size=64, desc=f"ids {start}-{start + CHUNK - 1}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        scored.select_columns(columns).to_parquet(str(tmp))
        tmp.rename(path)
        print(f"{time.strftime('%H:%M:%S')} ids {start}-{start + CHUNK - 1}: {len(scored)} rows in "
              f"{time.perf_counter() - t0:.0f} s → {path}", flush=True)


def load_scores(instructions: int | None, max_length: int) -> pd.DataFrame:
    """The cached scores of the first ``instructions`` (None: of every cached chunk, from the first on)."""
    parts, start = [], 0
    while instructions is None or start < instructions:
        path = chunk_path(max_length, start)
        if not path.exists():
            if instructions is None and parts:
                break
            raise SystemExit(f"missing {path}: run `python bench/adaptive_replay.py score --instructions "
                             f"{instructions or 805}`")
        parts.append(pd.read_parquet(path))
        start += CHUNK
    frame = pd.concat(parts, ignore_index=True)
    return frame if instructions is None else frame[frame["instruction_id"] < instructions].reset_index(drop=True)


def reward_only(instructions: int) -> pd.DataFrame:
    """judge_preference alone for the first N instructions (no model: CAR with beta = 0)."""
    frame = pd.read_json(ZOO, lines=True)
    frame = frame[frame["instruction_id"] < instructions]
    return frame.assign(reward=frame["judge_preference"], base_loss=0.0)[["instruction_id", "generator", "reward",
                                                                          "base_loss"]]


@dataclass
class Rule:
    target: str = "top1"
    confidence: float = 0.95
    correction: str = "bonferroni"
    min_instructions: int = stopping.DEFAULT_MIN_INSTRUCTIONS
    round_size: int = stopping.DEFAULT_ROUND_SIZE
    round_growth: float = stopping.DEFAULT_ROUND_GROWTH
    n_bootstrap: int = stopping.DEFAULT_N_BOOTSTRAP


def replay_once(full: Cells, rows: np.ndarray, beta: float, rule: Rule, seed: int) -> tuple[int, int, list, str]:
    """What ``rank_adaptive(..., seed=seed)`` does on these instructions, from the cached cells.

    Same order (:func:`instruction_order`), same looks (:func:`plan_rounds`), same rule (:func:`stop_decision`)
    on the same cells in the same column order (dataset order) with the same bootstrap seed. Returns the
    instructions and rows scored, the order at the stop and why it stopped.
    """
    order = stopping.instruction_order(full.count.shape[1], seed)
    looks = stopping.plan_rounds(rows[order], min_instructions=rule.min_instructions, round_size=rule.round_size,
                                 round_growth=rule.round_growth)
    for look in looks:
        cells = stopping.subset_cells(full, np.sort(order[:look]))
        decision = stopping.stop_decision(
            cells, beta=beta, target=rule.target, confidence=rule.confidence, correction=rule.correction,
            min_instructions=rule.min_instructions, n_bootstrap=rule.n_bootstrap, seed=seed)
        if decision.stop:
            return look, int(rows[order[:look]].sum()), decision.order, "confident"
    return look, int(rows[order[:look]].sum()), decision.order, "exhausted"


def rows_per_instruction(frame: pd.DataFrame) -> np.ndarray:
    """Rows of each instruction (all of them, scorable or not), in the cells' column order (sorted ids)."""
    return frame.groupby("instruction_id", sort=True).size().to_numpy()


def replay(frame: pd.DataFrame, beta: float, rule: Rule, seeds: range) -> dict:
    from scipy.stats import kendalltau

    frame = frame.sort_values(["instruction_id", "generator"], kind="stable")
    full = stopping.instruction_cells(frame, instruction_column="instruction_id")
    rows = rows_per_instruction(frame)
    car = stopping.point_car(full, beta)
    truth = [full.groups[i] for i in np.argsort(-car, kind="stable")]
    fractions, top1, exact, taus, confident, wrong = [], [], [], [], [], []
    for seed in seeds:
        _, n_rows, order, reason = replay_once(full, rows, beta, rule, seed)
        fractions.append(n_rows / rows.sum())
        top1.append(order[0] == truth[0])
        exact.append(order == truth)
        taus.append(kendalltau([truth.index(g) for g in order], range(len(order))).statistic)
        confident.append(reason == "confident")
        wrong.append(confident[-1] and not (top1[-1] if rule.target == "top1" else exact[-1]))
    fractions = np.array(fractions)
    return {"generators": len(truth), "target": rule.target, "confidence": rule.confidence,
            "correction": rule.correction, "min_instr": rule.min_instructions, "round": rule.round_size,
            "growth": rule.round_growth,
            "replays": len(fractions), "confident %": 100 * np.mean(confident), "wrong stops %": 100 * np.mean(wrong),
            "wrong / confident %": 100 * np.sum(wrong) / np.sum(confident) if np.any(confident) else float("nan"),
            "scored % mean": 100 * fractions.mean(), "scored % p90": 100 * np.percentile(fractions, 90),
            "top-1 agrees %": 100 * np.mean(top1), "ranking agrees %": 100 * np.mean(exact),
            "Kendall tau mean": float(np.mean(taus)), "truth": truth}


def check_api(frame: pd.DataFrame, beta: float, rule: Rule, seeds: Sequence[int]) -> list[str]:
    """rank_adaptive on the cached values (a scorer that copies them) stops where the replay does."""
    from datasets import Dataset

    frame = frame.sort_values(["instruction_id", "generator"], kind="stable").reset_index(drop=True)
    ds = Dataset.from_pandas(frame.rename(columns={"reward": "cached_reward", "base_loss": "cached_loss"}))
    full = stopping.instruction_cells(frame, instruction_column="instruction_id")
    rows = rows_per_instruction(frame)
    lines = []
    for seed in seeds:
        result = adaptive.rank_adaptive(
            ds, Cached(), beta=beta, target=rule.target, confidence=rule.confidence, correction=rule.correction,
            min_instructions=rule.min_instructions, round_size=rule.round_size, round_growth=rule.round_growth,
            n_bootstrap=rule.n_bootstrap, seed=seed, batch_size=1000)
        _, n_rows, order, reason = replay_once(full, rows, beta, rule, seed)
        same = (result.n_scored, result.stopped_because, result.decision.order) == (n_rows, reason, order)
        lines.append(f"seed {seed}: API {result.n_scored} rows, {result.stopped_because}; replay {n_rows} rows, "
                     f"{reason}; {'same' if same else 'DIFFERENT'}")
        if not same:
            raise SystemExit("the replay does not reproduce rank_adaptive: " + lines[-1])
    return lines


class Cached:
    """A scorer that copies cached values (for :func:`check_api` and ``bench/trial_replay.py``)."""

    beta = 1.0

    def __call__(self, batch, indices):
        return {"reward": list(batch["cached_reward"]), "base_loss": list(batch["cached_loss"])}


def markdown(rows: list[dict]) -> str:
    """The replays' rows as a markdown table (without the exhaustive order and the generator count)."""
    return records_table([{k: v for k, v in row.items() if k not in ("truth", "generators")} for row in rows])


def run_replays(args: argparse.Namespace) -> None:
    seeds = range(args.replays)
    t0 = time.perf_counter()
    if args.reward_only:
        frame, beta = reward_only(args.instructions), 0.0
        label = f"reward-only-{args.instructions}"
        source = (f"judge_preference alone (CAR with beta = 0: no model), first {args.instructions} instructions "
                  "x 11 generators")
    else:
        frame, beta = load_scores(args.instructions, args.max_length), args.beta
        label = f"smollm2-len{args.max_length}-{args.instructions}-beta{beta:g}"
        source = (f"CAR, beta = {beta:g}: judge_preference / (1 + beta x SmolLM2-135M-Instruct loss, fp32, "
                  f"max_length {args.max_length}), first {args.instructions} instructions x 11 generators")
    cases = {name: frame[~frame["generator"].isin(drop)] for name, drop in CASES.items() if name in args.cases}
    checks = check_api(cases[args.cases[0]], beta, Rule(), seeds=range(3))
    print("\n".join(checks), flush=True)

    def run(case, rule):
        # Each row is cached, so an interrupted replay continues where it stopped.
        key = hashlib.blake2b(json.dumps([label, case, vars(rule), args.replays]).encode(), digest_size=8).hexdigest()
        path = cache_dir() / "replay-rows" / f"{key}.json"
        if path.exists():
            row = json.loads(path.read_text())
        else:
            row = {"case": case} | replay(cases[case], beta, rule, seeds)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(row, default=float))
        print({k: v for k, v in row.items() if k != "truth"}, flush=True)
        return row

    main_rows = [run(case, Rule(target=target, confidence=confidence))
                 for case in args.cases for target in args.targets for confidence in (0.9, 0.95)]
    tuning = []
    for case in args.tune:
        grid = [Rule(correction=c, min_instructions=m) for c in CORRECTIONS for m in (10, 20, 40)]
        grid += [Rule(round_growth=g) for g in (0.0, 0.25)]
        tuning += [run(case, rule) for rule in grid]
    text = [f"### {source}", "",
            (f"{args.replays} replays per row (seed s = 0..{args.replays - 1} shuffles the instructions and seeds "
             f"the bootstrap, as `rank_adaptive(seed=s)`); {Rule().n_bootstrap} resamples per decision; defaults: "
             f"first look after {Rule().min_instructions} instructions, then rounds of max({Rule().round_size}, "
             f"{Rule().round_growth:g} x scored) instructions, Bonferroni correction."), ""]
    for case in args.cases:
        truth = next(r["truth"] for r in main_rows if r["case"] == case)
        cells = stopping.instruction_cells(cases[case].sort_values(["instruction_id", "generator"]))
        car = dict(zip(cells.groups, stopping.point_car(cells, beta)))
        text.append(f"Exhaustive order, {case}: " + ", ".join(f"{g} ({car[g]:.4f})" for g in truth) + ".")
        text.append("")
    text += [markdown(main_rows), ""]
    if tuning:
        text += [("Choosing the defaults (target top1, confidence 0.95): correction x min_instructions at round "
                  "growth 0.1, then round growth at the defaults:"), "", markdown(tuning), ""]
    text += ["Check: `rank_adaptive` on the cached values (a scorer copying them) stops exactly where the replay "
             "does — " + "; ".join(checks) + ".", "", f"Replay time {time.perf_counter() - t0:.0f} s.", ""]
    label += "-" + "-".join(args.cases) + ("-tune-" + "-".join(args.tune) if args.tune else "")
    part = cache_dir() / f"replay-{label}.md"
    part.write_text("\n".join(text))
    summary = [{"source": label.split("-no-ref")[0].split("-all")[0].split("-close")[0]}
               | {k: v for k, v in row.items() if k not in ("truth", "generators")}
               for row in main_rows if row["target"] == "top1" and row["case"] == "no-ref"]
    part.with_suffix(".json").write_text(json.dumps(summary, default=float))
    print(f"wrote {part}; `python bench/adaptive_replay.py report` collects the parts into bench/ADAPTIVE.md")


SUMMARY = """\
What the replays show (read with the tables below; all numbers are reproducible: same seeds, same cached values):

- **The default rule (Bonferroni, 20 instructions minimum) practically never stopped on a wrong leader**: at
  confidence 0.95 never, in any case or pool; at 0.9 once in 200 replays (the *close* stress test on the 805 pool:
  1 of its 89 confident stops).
- **How much is scored depends on how clear the leader is, not on the pool size**: the rule needs roughly a fixed
  number of instructions to separate the leader from the runner-up, so the *fraction* falls as the pool grows.
  On the 805-instruction pool (judge_preference alone) top-1 at 0.95 was decided with 19.6% of the rows on average
  (p90 33.5%), always agreeing with the exhaustive top-1 — the goal (>= 95% agreement with <= 25% scored) is met
  on the mean. On the 200-instruction CAR pool (SmolLM2 loss, beta 1) the leader is less clear (dividing by
  1 + loss narrows claude-2.1's lead, its responses have the highest loss) and the rule needs about 120
  instructions, 60% of the rows (p90 91%): the goal is not met on a pool that small.
- **Correction: Bonferroni over the G - 1 tested pairs is the default.** Without it (`correction="none"`) half
  as many rows are scored (33.7% vs 60.0% mean on the 200-instruction CAR pool; 10.5% vs 19.6% on the 805 pool),
  but in the *close* case 1.5-2% of replays stopped on the wrong leader, i.e. 13-14% of its "confident" answers
  were wrong at a nominal 95% (repeated looks and few instructions make the bootstrap optimistic). With Bonferroni
  no confident answer was wrong. `correction="none"` stays available for a cheaper, looser rule.
- **Minimum instructions: 20.** At 10 the uncorrected rule stopped wrongly on the clear *no-ref* contest too
  (1-1.5% of replays); 40 costs up to 1 point more for no measured gain with Bonferroni.
- **Round growth 0.1** costs ~1 point over fixed rounds of 10 (0.25 costs 2-4) and keeps the number of looks
  O(log n) on large datasets (81 looks for 100k instructions instead of 10,000).
- **target="ranking"** never stopped on 9-10 real generators: several adjacent pairs (e.g. the vicuna/gemma/Qwen
  group) are within noise even on all the instructions, so the whole order is not decided at 0.9 — it scores
  everything and lists those pairs in `undecided`. It is useful for a few well-separated generators.
"""


def report(args: argparse.Namespace) -> None:
    parts = sorted(cache_dir().glob("replay-*.md"), key=lambda p: ("reward-only" in p.name, p.name))
    if not parts:
        raise SystemExit("no replay results yet: run `python bench/adaptive_replay.py replay` first")
    info = machine() | versions("torch")
    header = [
        "# Adaptive ranking: replays of the early-stopping rule", "",
        (f"Written by `bench/adaptive_replay.py` on {time.strftime('%Y-%m-%d')}; machine: {info['cores']} CPU cores "
        f"({info['cpu']}), no GPU, Python {info['python']}, torch {info['torch']}."), "",
        ("Per-example values were computed once (SmolLM2-135M-Instruct, loaded offline from its PyPI GGUF package; "
        "responses cut at 512 tokens to keep the CPU scoring affordable, flagged in base_loss_truncated) and cached "
        "under ~/.cache/car_hf/bench/. Each replay shuffles the instructions with its seed and replays "
        "`rank_adaptive`'s schedule (`plan_rounds`) and stopping rule (`stop_decision`) on the cached values, so "
        "no model runs; it is compared with the exhaustive ranking of the same instructions."), "",
        ("Columns: *confident %* replays that stopped because the ranking was decided (the others scored every "
        "row); *scored %* rows scored (mean, 90th percentile); *top-1 agrees %* the stopped leader is the "
        "exhaustive leader; *ranking agrees %* the whole stopped order equals the exhaustive one; *Kendall tau* "
        "between the two orders. `gpt4_1106_preview` is the judge's reference (judge_preference = 0.5 on every "
        "instruction), so it wins trivially: the meaningful case is the 10 other generators (*no-ref*); *close* "
        "also leaves out claude-2.1, the clear leader, as a stress test of the rule where the top two are close."),
        "",
        "## Summary: the 10 generators without the reference, target top1, default rule", "",
        markdown([row for p in parts if p.with_suffix(".json").exists()
                  for row in json.loads(p.with_suffix(".json").read_text())]), "",
        SUMMARY, "",
        "## Details", "",
    ]
    write_report(ROOT / "bench" / "ADAPTIVE.md", "\n".join(header + [p.read_text() for p in parts]), announce=False)
    print(f"wrote {ROOT / 'bench' / 'ADAPTIVE.md'} from {len(parts)} part(s)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("score")
    s.add_argument("--instructions", type=int, default=200)
    s.add_argument("--max-length", type=int, default=512)
    r = commands.add_parser("replay")
    r.add_argument("--instructions", type=int, default=200)
    r.add_argument("--max-length", type=int, default=512)
    r.add_argument("--beta", type=float, default=1.0)
    r.add_argument("--replays", type=int, default=200)
    r.add_argument("--reward-only", action="store_true", help="judge_preference alone (beta 0): no model needed")
    r.add_argument("--targets", type=lambda v: v.split(","), default=["top1", "ranking"])
    r.add_argument("--cases", type=lambda v: v.split(","), default=list(CASES),
                   help=f"generator sets to replay (default: all of {','.join(CASES)})")
    r.add_argument("--tune", type=lambda v: v.split(","), default=[],
                   help="cases on which to also replay a grid of corrections, minimums and round growths")
    commands.add_parser("report", help="collect the replay parts into bench/ADAPTIVE.md")
    args = parser.parse_args(argv)
    {"score": score, "replay": run_replays, "report": report}[args.command](args)


if __name__ == "__main__":
    main()

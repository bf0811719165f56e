"""Replay teacher trials (``car_hf.ranking.trial.rank_teachers``) on the AlpacaEval zoo: how often do they find the
exhaustive top-1, and how many responses do they generate?

The zoo's generators stand in for candidate teachers: "generating" a response reads the cached one, with its
judge preference as reward and its SmolLM2-135M-Instruct loss (``bench/adaptive_replay.py score`` computes
and caches those; the replay uses as many instructions as are cached). Each replay runs the real
``rank_teachers`` — the same order, rounds, elimination rule and bootstrap — with a shuffling seed, and is
compared with the exhaustive ranking (CAR over every cached instruction). Writes ``bench/TRIAL.md``.

    python bench/adaptive_replay.py score --instructions 805    # once, in the background (hours on 2 CPU cores)
    python bench/trial_replay.py --replays 200
    python bench/trial_replay.py --replays 200 --reward-only     # all 805 instructions, judge preference alone
"""

from __future__ import annotations

import argparse
import time

from common import ROOT, machine, markdown_table, write_report

import pandas as pd
from adaptive_replay import REFERENCE, Cached, load_scores, reward_only  # the SmolLM2 replay's data and scorer

from car_hf import rank_teachers

OUT = ROOT / "bench" / "TRIAL.md"


class CachedTeacher:
    """A zoo generator as a teacher: its "response" to an instruction is the cached row's id."""

    def __init__(self, name: str, frame: pd.DataFrame):
        self.name = name
        self.rows = frame[frame["generator"] == name].set_index("instruction_id")

    def __call__(self, batch, indices):
        picked = self.rows.loc[list(batch["instruction_id"])]
        return {"response": [self.name] * len(indices), "cached_reward": picked["reward"].tolist(),
                "cached_loss": picked["base_loss"].tolist()}


def main(argv=None) -> None:
    import datasets

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replays", type=int, default=200, help="seeded trials (seed s shuffles the instructions)")
    parser.add_argument("--beta", type=float, default=1.0, help="CAR's loss weight")
    parser.add_argument("--confidence", type=float, default=0.95, help="the trial's stopping confidence (top1)")
    parser.add_argument("--max-length", type=int, default=512, help="of the cached SmolLM2 losses")
    parser.add_argument("--reward-only", action="store_true",
                        help="judge preference alone on all 805 instructions (beta 0, no model): writes TRIAL_REWARD.md")
    parser.add_argument("--write", action="store_true", help="write bench/TRIAL.md")
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()
    datasets.disable_caching()

    # The zoo's generators but the judge's reference, with the cached (judge preference, SmolLM2 loss) scores.
    frame = reward_only(805) if args.reward_only else load_scores(None, args.max_length)
    frame = frame[frame["generator"] != REFERENCE].reset_index(drop=True)
    if args.reward_only:
        args.beta = 0.0
    n = frame["instruction_id"].nunique()
    means = frame.groupby("generator")[["reward", "base_loss"]].mean()
    exhaustive = (means["reward"] / (1 + args.beta * means["base_loss"])).sort_values(ascending=False)
    teachers = [CachedTeacher(g, frame) for g in sorted(frame["generator"].unique())]
    instructions = datasets.Dataset.from_dict({"instruction_id": sorted(frame["instruction_id"].unique())})

    started, rows = time.perf_counter(), []
    for seed in range(args.replays):
        result = rank_teachers(instructions, teachers, Cached(), beta=args.beta, confidence=args.confidence,
                               seed=seed, n_bootstrap=1000)
        rows.append({"seed": seed, "found": result.table["generator"].iloc[0] == exhaustive.index[0],
                     "share": result.responses_generated / result.responses_exhaustive,
                     "instructions": result.n_instructions, "stopped": result.stopped_because})
        print(f"replay {seed}: {rows[-1]}", flush=True)
    table = pd.DataFrame(rows)
    lines = [
        "# Teacher trials replayed on the AlpacaEval zoo",
        "",
        f"`python bench/trial_replay.py --replays {args.replays}` on {machine()['arch']}, "
        f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s. {len(teachers)} teachers (the zoo's "
        f"generators but the judge's reference), "
        + (f"all {n} instructions, judge preference alone (beta = 0, no model)" if args.reward_only else
           f"the first {n} instructions cached by `bench/adaptive_replay.py score` (judge preference as reward, "
           f"SmolLM2-135M-Instruct loss, 512 tokens), beta = {args.beta}")
        + f", target top1 at confidence {args.confidence} (Bonferroni), default schedule.",
        "",
        "Exhaustive CAR ranking (every cached instruction, every teacher):",
        "",
        exhaustive.rename("car").to_frame().to_markdown(floatfmt=".4f"),
        "",
        markdown_table(
            ["replays", "exhaustive top-1 found", "responses generated, mean (p90)", "instructions drawn, mean",
             "stops"],
            [[len(table), f"{100 * table['found'].mean():.1f}%",
              f"{100 * table['share'].mean():.1f}% ({100 * table['share'].quantile(0.9):.1f}%)",
              f"{table['instructions'].mean():.0f} of {n}",
              {k: int(v) for k, v in table["stopped"].value_counts().items()}]]),
    ]
    print("\n".join(lines))
    if args.write:
        write_report(OUT.with_name("TRIAL_REWARD.md") if args.reward_only else OUT, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Replay teacher trials for two students on the AlpacaEval zoo: one trial for both
(``rank_teachers(..., students=[A, B])``) against one trial per student, on the same seeds.

The zoo's generators stand in for candidate teachers: "generating" a response reads the cached row, with the
judge preference as reward and each student's cached loss: the largest ``../runs/zoo-students/scored-<N>.parquet``
that ``bench/matrix_real.py`` wrote (SmolLM2-135M-Instruct and Gemma-3-270m; the ``base_loss@<student>`` columns
that ``car-hf score --base-model A --base-model B`` writes), or ``--scored FILE``. Without one the replay runs on
the whole zoo with **synthetic** losses (``--synthetic``: a per-teacher mean times a log-normal wobble per row; the
second student finds claude-2.1's answers harder) and says so in its output.

Each replay runs the real ``rank_teachers`` three ways with the same seed (same instruction order, rounds and
bootstrap): both students at once, and each student alone. It reports the responses generated (the joint trial
against the sum of the two separate ones, per replay and in total), how often each student's exhaustive top-1
(CAR over every instruction with that student's loss) is found, that the joint trial's per-student cost and
winner equal the separate trial's (they must: per-student elimination inside the joint trial is the separate
trial's rule on the same instructions), and the ``target="common"`` trial (one teacher for both), all timed.

    python bench/trial_students_replay.py --replays 200 --write    # writes bench/TRIAL_STUDENTS.md
    python bench/trial_students_replay.py --quick                  # 100 instructions, 2 replays (a test runs it)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from car_hf.core.students import student_column, students_in  # noqa: E402
from car_hf.ranking.matrix import rank_matrix  # noqa: E402
from car_hf.ranking.stopping import common_car  # noqa: E402
from car_hf.ranking.trial import rank_teachers  # noqa: E402

OUT = ROOT / "TRIAL_STUDENTS.md"
ZOO = Path(os.environ.get("CAR_HF_SHARED_DATA") or ROOT.parent.parent / "shared" / "data") / "alpaca_eval_zoo" \
    / "zoo.jsonl.gz"
RUNS = ROOT.parent.parent / "runs" / "zoo-students"
REFERENCE = "gpt4_1106_preview"  # the judge's reference: judge_preference is 0.5 by construction
SYNTHETIC = ("student-a", "student-b")


class CachedTeacher:
    """A zoo generator as a teacher: its "response" carries the cached reward and losses of its row."""

    def __init__(self, name: str, frame: pd.DataFrame, students: list[str]):
        self.name, self.students = name, students
        self.rows = frame[frame["generator"] == name].set_index("instruction_id")

    def __call__(self, batch, indices):
        picked = self.rows.loc[list(batch["instruction_id"])]
        out = {"response": [self.name] * len(indices), "cached_reward": picked["reward"].tolist()}
        for k, label in enumerate(self.students):
            out[f"cached_loss_{k}"] = picked[student_column("base_loss", label)].tolist()
        return out


class CachedStudent:
    """A student as a loss transform: the cached ``base_loss@label`` of each response."""

    def __init__(self, label: str, position: int):
        self.label, self.position = label, position

    def __call__(self, batch, indices):
        return {"base_loss": list(batch[f"cached_loss_{self.position}"])}


def cached_reward(batch, indices):
    """The judge preference the zoo row already has."""
    return {"reward": list(batch["cached_reward"])}


def synthetic(instructions: int | None) -> pd.DataFrame:
    """The zoo's judge preference with two synthetic students' losses (fixed seed; the students disagree)."""
    frame = pd.read_json(ZOO, lines=True)
    frame = frame[frame["generator"] != REFERENCE]
    if instructions:
        frame = frame[frame["instruction_id"] < instructions]
    rng = np.random.default_rng(16)
    generators = sorted(frame["generator"].unique())
    mean_a = dict(zip(generators, 1.2 + 1.2 * rng.random(len(generators))))
    mean_b = {g: max(0.6, 1.3 * m + 0.5 * rng.standard_normal()) + 2.5 * (g == "claude-2.1") for g, m in mean_a.items()}
    wobble_a, wobble_b = rng.standard_normal(len(frame)), rng.standard_normal(len(frame))
    return frame.assign(
        reward=frame["judge_preference"],
        **{student_column("base_loss", SYNTHETIC[0]): frame["generator"].map(mean_a) * np.exp(0.3 * wobble_a),
           student_column("base_loss", SYNTHETIC[1]): frame["generator"].map(mean_b)
           * np.exp(0.3 * (0.6 * wobble_a + 0.8 * wobble_b))})


def default_scored() -> Path | None:
    """The largest ``scored-<N>.parquet`` of the real run (each N's rows are a prefix of the next N's)."""
    runs = sorted(RUNS.glob("scored-*.parquet"), key=lambda p: int(p.stem.split("-")[1]))
    return runs[-1] if runs else None


def load(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    """The scored zoo (long layout: instruction_id, generator, reward, base_loss@<student>...) and its source."""
    path = Path(args.scored) if args.scored else default_scored()
    if args.synthetic or path is None or not path.is_file():
        why = "asked" if args.synthetic else f"no {path or RUNS / 'scored-<N>.parquet'}"
        return synthetic(args.instructions), f"SYNTHETIC losses ({why})"
    frame = pd.read_parquet(path)
    if "reward" not in frame.columns:
        frame = frame.assign(reward=frame["judge_preference"])
    frame = frame[frame["generator"] != REFERENCE]
    if args.instructions:  # the first N of the file's (seeded, random) instruction order
        frame = frame[frame["instruction_id"].isin(frame["instruction_id"].unique()[:args.instructions])]
    return frame.reset_index(drop=True), f"`{path.name}` (real losses, 512 tokens)"


def exhaustive_car(frame: pd.DataFrame, students: list[str], beta: float) -> pd.DataFrame:
    """CAR per teacher (rows) and student (columns) over every instruction, plus the common score."""
    means = frame.groupby("generator")[["reward", *[student_column("base_loss", s) for s in students]]].mean()
    table = pd.DataFrame({s: means["reward"] / (1 + beta * means[student_column("base_loss", s)]) for s in students})
    table["common (mean)"] = common_car(table[students].to_numpy().T)
    return table.sort_values(students[0], ascending=False)


def main(argv=None) -> int:
    import datasets

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replays", type=int, default=200)
    parser.add_argument("--instructions", type=int, help="use the first N instructions only (default: all)")
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--min-instructions", type=int, default=20, help="the schedule's first round (default 20)")
    parser.add_argument("--round-size", type=int, default=10, help="instructions added per round, at least")
    parser.add_argument("--scored", help="the zoo scored under the students (parquet; default: the largest "
                                         "../runs/zoo-students/scored-<N>.parquet)")
    parser.add_argument("--synthetic", action="store_true", help="synthetic losses even when --scored exists")
    parser.add_argument("--no-common", action="store_true", help="skip the target='common' replays")
    parser.add_argument("--quick", action="store_true", help="100 instructions, 2 replays, 200 resamples")
    parser.add_argument("--write", action="store_true", help="write bench/TRIAL_STUDENTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.replays, args.instructions, args.bootstrap = 2, args.instructions or 100, 200
    datasets.disable_progress_bars()
    datasets.disable_caching()

    frame, source = load(args)
    students = students_in(frame.columns)
    if len(students) < 2:
        raise SystemExit(f"{source} holds the students {students}: the replay needs two (base_loss@<label> columns)")
    n = frame["instruction_id"].nunique()
    car = exhaustive_car(frame, students, args.beta)
    top = {s: car[s].idxmax() for s in students}
    best_common = rank_matrix(frame, students, beta=args.beta, n_bootstrap=0).common  # its rule "mean"
    teachers = [CachedTeacher(g, frame, students) for g in sorted(frame["generator"].unique())]
    scorers = [CachedStudent(s, k) for k, s in enumerate(students)]
    instructions = datasets.Dataset.from_dict({"instruction_id": sorted(frame["instruction_id"].unique())})
    rule = {"beta": args.beta, "confidence": args.confidence, "n_bootstrap": args.bootstrap,
            "min_instructions": args.min_instructions, "round_size": args.round_size}

    rows, clock, mismatches = [], {"joint": 0.0, "separate": 0.0, "common": 0.0}, []
    for seed in range(args.replays):
        t0 = time.perf_counter()
        joint = rank_teachers(instructions, teachers, cached_reward, students=scorers, seed=seed, **rule)
        t1 = time.perf_counter()
        alone = {s: rank_teachers(instructions, teachers, cached_reward, students=[scorer], seed=seed, **rule)
                 for s, scorer in zip(students, scorers)}
        t2 = time.perf_counter()
        clock["joint"] += t1 - t0
        clock["separate"] += t2 - t1
        separate = sum(r.responses_generated for r in alone.values())
        row = {"seed": seed, "joint": joint.responses_generated, "separate": separate,
               "ratio": joint.responses_generated / separate, "stopped": joint.stopped_because,
               "of max": joint.responses_generated / max(r.responses_generated for r in alone.values()),
               **{f"alone {s}": r.responses_generated for s, r in alone.items()}}
        for s in students:
            row[f"found {s}"] = joint.winners[s] == top[s]
            row[f"found alone {s}"] = alone[s].winners[s] == top[s]
            if joint.responses_separate[s] != alone[s].responses_generated or joint.winners[s] != alone[s].winners[s]:
                mismatches.append(f"seed {seed}, {s}: joint says {joint.responses_separate[s]} responses, winner "
                                  f"{joint.winners[s]}; alone {alone[s].responses_generated}, {alone[s].winners[s]}")
        if not args.no_common:
            common = rank_teachers(instructions, teachers, cached_reward, students=scorers, target="common",
                                   seed=seed, **rule)
            clock["common"] += time.perf_counter() - t2
            row |= {"common": common.responses_generated, "common ratio": common.responses_generated / separate,
                    "found common": common.winners[students[0]] == best_common}
        rows.append(row)
        print(f"replay {seed}: {row}", flush=True)
    table = pd.DataFrame(rows)
    exhaustive = n * len(teachers)
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    found = " / ".join(pct(table[f"found {s}"].mean()) for s in students)
    found_alone = " / ".join(pct(table[f"found alone {s}"].mean()) for s in students)
    command = "python bench/trial_students_replay.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Teacher trials for two students, replayed on the AlpacaEval zoo",
        "",
        f"`{command.strip()}` on {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}"
        f" UTC: {args.replays} replays (seeds 0..{args.replays - 1}), {len(teachers)} teachers (the zoo's "
        f"generators but the judge's reference), {n} instructions, losses from {source}; students "
        f"{', '.join(f'`{s}`' for s in students)}; reward = judge preference, beta = {args.beta}, target top1 at "
        f"confidence {args.confidence} per student (Bonferroni over the {len(teachers) - 1} comparisons), "
        f"{args.bootstrap} resamples, schedule: {args.min_instructions} instructions first, then +max("
        f"{args.round_size}, 10%) per round. Wall time: joint trials {clock['joint']:.0f} s, separate "
        f"trials {clock['separate']:.0f} s" + (f", common-target trials {clock['common']:.0f} s" if not args.no_common
                                               else "") + ".",
        "",
        "Exhaustive CAR (every instruction, every teacher) per student, and the common score (mean over students of "
        "CAR / the student's best CAR: `rank_matrix`'s rule for the best common teacher):",
        "",
        car.to_markdown(floatfmt=".4f"),
        "",
        f"Exhaustive top-1: {', '.join(f'{s}: **{top[s]}**' for s in students)}; best common teacher: "
        f"**{best_common}**.",
        "",
        "| trial | responses generated, mean (p90) | of two separate trials: mean ratio (ratio of totals) | "
        f"top-1 found ({' / '.join(students)}) |",
        "|---|---|---|---|",
        f"| one per student (sum of {len(students)}) | {table['separate'].mean():.0f} "
        f"({table['separate'].quantile(0.9):.0f}) = {pct(table['separate'].mean() / exhaustive)} of {exhaustive} | "
        f"100% | {found_alone} |",
        f"| **joint** (`students=[...]`, top-1 each) | {table['joint'].mean():.0f} "
        f"({table['joint'].quantile(0.9):.0f}) = {pct(table['joint'].mean() / exhaustive)} | "
        f"**{pct(table['ratio'].mean())}** "
        f"({pct(table['joint'].sum() / table['separate'].sum())}) | {found} |",
    ]
    if not args.no_common:
        lines.append(
            f"| common (`target=\"common\"`) | {table['common'].mean():.0f} ({table['common'].quantile(0.9):.0f}) = "
            f"{pct(table['common'].mean() / exhaustive)} | {pct(table['common ratio'].mean())} "
            f"({pct(table['common'].sum() / table['separate'].sum())}) | best common found: "
            f"{pct(table['found common'].mean())} |")
    stops = {k: int(v) for k, v in table["stopped"].value_counts().items()}
    alone_means = ", ".join(f"{s} {table[f'alone {s}'].mean():.0f}" for s in students)
    lines += ["", f"Separate trials, responses per student (mean): {alone_means}. The joint trial generates "
              f"{table['of max'].mean():.2f}x the costlier separate trial's responses (mean): it can never generate "
              "fewer than that trial, since that student's contenders must all be generated for.",
              "", f"Joint trials' stops: {stops}. Goal (issue 16): joint <= 60% of the separate trials' responses at "
              f"the same found rate: {'met' if table['ratio'].mean() <= 0.6 else 'NOT met'} "
              f"(mean ratio {pct(table['ratio'].mean())}).",
              f"joint = separate per student (responses and winner, every replay): "
              f"{'OK' if not mismatches else 'MISMATCH ' + '; '.join(mismatches[:3])}"]
    print("\n".join(lines))
    if args.write:
        OUT.write_text("\n".join(lines) + "\n")
        print(f"wrote {OUT}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

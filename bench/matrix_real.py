"""The teachers × students matrix on real data: the AlpacaEval zoo under two real offline students (issue 16).

Rows: the 10 AlpacaEval generators (the judge's reference ``gpt4_1106_preview`` is left out: its judge preference
is the constant 0.5) × the first ``--instructions`` of the 805 instructions in a seeded random order. Reward: the
weighted GPT-4-turbo judge's preference over the reference (``judge_preference``, 0..1), which does not depend on
the student. Students, one model in memory at a time: SmolLM2-135M-Instruct (its own chat template) and
Gemma-3-270m base (no chat template: car_hf's plain template), each through
``car_hf.add_base_loss(model_id, max_length=512)``.

Each student's losses are saved in chunks of 5 instructions in a :class:`car_hf.core.cache.ScoreCache` under
``<out>/cache``, keyed by the whole ordered zoo, so a killed run resumes where it stopped and a larger
``--instructions`` reuses a smaller run's chunks. The result, ``<out>/scored.parquet`` (``<out>/scored.json``: the
run's record), has one row per (instruction, generator): ``instruction_id, dataset, instruction, generator, output,
reward`` and per student ``base_loss@<label>``, ``base_loss_tokens@<label>``, ``base_loss_truncated@<label>``,
``base_rank@<label>`` (:mod:`car_hf.core.students`: label = the model id's last path component).

``--report`` reads that file, ranks it with :func:`car_hf.ranking.matrix.rank_matrix` (paired bootstrap), writes the
matrix folder ``<out>/matrix`` and, with ``--write``, docs/MATRIX.md, docs/matrix-heatmap.png and
docs/matrix-iso-car.png.

Usage:
    python bench/matrix_real.py --time-rows 20                   # time 20 rows per student, print an estimate
    nice -n 10 python bench/matrix_real.py --instructions 80      # score (resumable)
    nice -n 10 python bench/matrix_real.py --instructions 120     # extends it: the first 80 come from the cache
    python bench/matrix_real.py --report --write                  # the matrix of <out>/scored.parquet -> docs/
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from pathlib import Path

from common import MODELS, ROOT, command_line, log, quiet_stack, where_and_when, write_report, zoo_path

STUDENTS = [MODELS["smollm2"], MODELS["gemma"]]
REFERENCE = "gpt4_1106_preview"  # the judge's reference: judge_preference is 0.5 on every row
LOSS_COLUMNS = ["base_loss", "base_loss_tokens", "base_loss_truncated", "base_rank"]
CHUNK = 50  # rows per cache part: 5 instructions x 10 generators
DOCS = ROOT / "docs"


def zoo_rows(seed: int) -> list[dict]:
    """Long zoo rows of the 10 judged generators, instructions in a seeded random order (generator order within).

    The first ``n`` instructions of this order are the run's subset, so a larger ``--instructions`` extends a
    smaller run and reuses its cached chunks.
    """
    path = zoo_path()
    if not path.is_file():
        raise SystemExit(f"matrix_real: no AlpacaEval zoo at {path} (set CAR_HF_SHARED_DATA or CAR_HF_ZOO)")
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    ids = sorted({r["instruction_id"] for r in rows})
    position = {i: k for k, i in enumerate(random.Random(seed).sample(ids, len(ids)))}
    picked = [r for r in rows if r["generator"] != REFERENCE]
    return sorted(picked, key=lambda r: (position[r["instruction_id"]], r["generator"]))


def score_student(zoo, n_rows: int, model_id: str, max_length: int, cache_root: Path) -> tuple[dict, float]:
    """``add_base_loss(model_id)``'s loss columns for the first ``n_rows`` rows of ``zoo`` (the whole ordered zoo,
    which keys the cache: chunks are reused by any run with the same seed), from the cache where present;
    returns (columns, scoring seconds)."""
    import datasets

    from car_hf import add_base_loss

    from car_hf.core.cache import ScoreCache, rows_digest, scoring_key
    from car_hf.core.students import student_label

    scorer = add_base_loss(model_id, max_length=max_length)
    cache = ScoreCache(cache_root, scoring_key(scorer, zoo, chunk=CHUNK, columns=LOSS_COLUMNS))
    parts, seconds = [], 0.0
    for start in range(0, n_rows, CHUNK):
        rows = list(range(start, min(start + CHUNK, n_rows)))
        name, inputs = f"rows-{start:06d}", rows_digest(zoo, rows)
        loaded = cache.load(name, inputs=inputs)
        if loaded is None:
            t = time.perf_counter()
            scored = zoo.select(rows).map(scorer, batched=True, batch_size=CHUNK)
            part = scored.select_columns(LOSS_COLUMNS)
            elapsed = time.perf_counter() - t
            cache.save(name, part, meta={"seconds": elapsed}, inputs=inputs)
            seconds += elapsed
            log(f"  {student_label(model_id)}: rows {rows[0]}-{rows[-1]} in {elapsed:.0f} s")
        else:
            part, meta = loaded
            seconds += float(meta.get("seconds", 0.0))
        parts.append(part)
    merged = datasets.concatenate_datasets(parts)
    return {column: merged[column] for column in LOSS_COLUMNS}, seconds


def score(args: argparse.Namespace) -> int:
    """Score the first ``args.instructions`` instructions under every student; write ``<out>/scored.parquet``."""
    import datasets

    from car_hf import add_base_loss
    from car_hf.core.students import student_column, student_label

    quiet_stack(args.threads, datasets=True)
    zoo = datasets.Dataset.from_list(zoo_rows(args.seed))
    generators = len(set(zoo["generator"]))
    dataset = zoo.select(range(min(args.instructions, len(zoo) // generators) * generators))
    if args.time_rows:
        sample = dataset.select(range(min(args.time_rows, len(dataset))))
        for model_id in args.students:
            scorer = add_base_loss(model_id, max_length=args.max_length)
            sample.select(range(2)).map(scorer, batched=True)  # load the model, warm up
            t = time.perf_counter()
            sample.map(scorer, batched=True)
            per_row = (time.perf_counter() - t) / len(sample)
            log(f"{student_label(model_id)}: {per_row:.2f} s/row -> {args.instructions} instructions x {generators} "
                f"generators ~ {per_row * len(dataset) / 60:.1f} min")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # A Dataset, not a pandas frame: pandas' to_parquet writes a NaN loss (an empty response) as null, which reads
    # back as "never scored under that student" (car_hf.core.students.check_student_rows).
    frame = dataset.select_columns(["instruction_id", "dataset", "instruction", "generator", "output",
                                    "judge_preference"]).rename_column("judge_preference", "reward")
    timing = {}
    for model_id in args.students:
        label = student_label(model_id)
        log(f"scoring {len(dataset)} rows under {model_id}")
        columns, seconds = score_student(zoo, len(dataset), model_id, args.max_length, out / "cache")
        for column, values in columns.items():
            frame = frame.add_column(student_column(column, label), values)
        timing[label] = seconds
        log(f"{label}: {seconds:.0f} s of scoring")
    frame.to_parquet(str(out / "scored.parquet"))
    meta = {
        "instructions": args.instructions, "seed": args.seed, "rows": len(frame), "students": args.students,
        "max_length": args.max_length, "threads": args.threads, "scoring_seconds": timing,
        "wall_seconds": time.perf_counter() - started, "machine": where_and_when(),
        "command": command_line("matrix_real.py"),
    }
    (out / "scored.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {out / 'scored.parquet'} ({len(frame)} rows); scoring seconds {timing}")
    return 0


def report(args: argparse.Namespace) -> int:
    """The matrix of a scored file: printed, written to ``<out>/matrix``, and with ``--write`` to the docs."""
    import pandas as pd
    from scipy.stats import spearmanr

    from car_hf.core.students import student_column
    from car_hf.plots.matrix import plot_matrix_heatmap, plot_matrix_iso_car
    from car_hf.ranking.matrix import rank_matrix

    scored = Path(args.scored or Path(args.out) / "scored.parquet")
    if not scored.is_file():
        raise SystemExit(f"matrix_real: no scored file at {scored}: score first (python bench/matrix_real.py)")
    record_file = scored.with_suffix(".json")
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    frame = pd.read_parquet(scored)
    matrix = rank_matrix(frame, n_bootstrap=args.bootstrap, seed=args.seed, config={"reward_source": "judge_preference"})
    reward_only = rank_matrix(frame, beta=0.0, n_bootstrap=0)
    matrix.write(Path(args.out) / "matrix")
    print(matrix.markdown())
    if not args.write:
        return 0
    docs = Path(args.docs_dir)
    plot_matrix_heatmap(matrix, path=docs / "matrix-heatmap.png")
    plot_matrix_iso_car(matrix, path=docs / "matrix-iso-car.png")
    cars = matrix.pivot("car")
    rho = spearmanr(cars.iloc[:, 0], cars.iloc[:, 1]).statistic if len(matrix.students) == 2 else None
    n_instructions = frame["instruction_id"].nunique()
    seconds = record.get("scoring_seconds", {})
    rows = []
    for label in matrix.students:
        tokens = frame[student_column("base_loss_tokens", label)] if student_column(
            "base_loss_tokens", label) in frame else None
        truncated = frame[student_column("base_loss_truncated", label)].sum() if student_column(
            "base_loss_truncated", label) in frame else None
        spent = seconds.get(label)
        rows.append(f"| {label} | {frame[student_column('base_loss', label)].mean():.3f} | "
                    + (f"{tokens.mean():.0f}" if tokens is not None else "–") + " | "
                    + (f"{int(truncated)}" if truncated is not None else "–") + " | "
                    + (f"{spent / 60:.1f} min ({spent / len(frame):.2f} s/row)" if spent else "–") + " |")
    winners = ", ".join(f"`{s}` → **{w}**" for s, w in matrix.winners.items())
    regret = matrix.regret.set_index("student")
    lines = [
        "# Teachers × students on real data: the AlpacaEval zoo under two real students",
        "",
        f"{n_instructions} AlpacaEval instructions (the first {n_instructions} of a seeded random order of the 805) × "
        f"{frame['generator'].nunique()} generators = {len(frame)} rows; reward = the weighted GPT-4-turbo judge's "
        "preference over the gpt4_1106_preview reference (`judge_preference`, the same for every student); students "
        "HuggingFaceTB/SmolLM2-135M-Instruct (its chat template) and google/gemma-3-270m (base: car_hf's plain "
        f"template), losses by `car_hf.add_base_loss(model_id, max_length=512)`, one model in memory at a time; "
        f"β = 1; {args.bootstrap} paired bootstrap resamples of the instructions (the same resamples for every cell). "
        f"Scored on {record.get('machine', where_and_when())}, niced, on 2 cores shared with six other jobs "
        "(tests and benchmarks): the times are upper bounds.",
        "",
        "Made by (the scoring run under `nice -n 10`, in the background):",
        "",
        "```bash",
        f"python bench/matrix_real.py --instructions {n_instructions} --threads 1",
        "python bench/matrix_real.py --report --write",
        "```",
        "",
        "The same matrix from the command line (the scored file holds both students' columns, so nothing is scored "
        "again):",
        "",
        "```bash",
        "car-hf rank ../runs/zoo-students/scored.parquet --base-model SmolLM2-135M-Instruct --base-model gemma-3-270m "
        "--output-dir ../runs/zoo-students/matrix --plot",
        "```",
        "",
        f"Wall time of the scoring: **{sum(seconds.values()) / 60:.1f} min** for both students (the sum of the "
        "chunks' wall times, one student after the other; model loading not counted)." if seconds else
        "Wall time of the scoring: not recorded.",
        "",
        "| student | mean base_loss | mean response tokens | truncated at 512 | scoring time |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "## The matrix",
        "",
        matrix.markdown(),
        "",
        "![teachers × students heatmap](matrix-heatmap.png)",
        "",
        "![iso-CAR plane, one marker per student](matrix-iso-car.png)",
        "",
        "## What it says",
        "",
        f"- Winners: {winners}. The winner **{'differs' if matrix.winner_differs else 'is the same'}** by student; "
        f"in {100 * matrix.attrs['p_winner_differs']:.0f}% of the paired resamples the two students' winners differ.",
        f"- Winners' p_best: " + ", ".join(f"{s} {regret.loc[s, 'p_best']:.2f}" for s in matrix.students)
        + f" (decided at {matrix.attrs['confidence']:.0%} means a single rank interval: "
        + ", ".join(f"{s}: {'yes' if matrix.cells[(matrix.cells.student == s) & matrix.cells.winner].decided.all() else 'no'}"
                    for s in matrix.students) + ").",
        f"- Best common teacher ({matrix.attrs['common_rule']} rule: {matrix.attrs['common_rule_text']}): "
        f"**{matrix.common}**; each student loses "
        + "; ".join(f"{s}: {regret.loc[s, 'regret']:.4f} CAR ({100 * regret.loc[s, 'regret_rel']:.1f}% of its "
                    f"winner's; 95% interval [{regret.loc[s, 'regret_low']:.4f}, {regret.loc[s, 'regret_high']:.4f}])"
                    for s in matrix.students) + ".",
        f"- Reward alone (β = 0) picks **{reward_only.winners[matrix.students[0]]}** for every student; CAR's order of "
        "the teachers equals the reward-only order for "
        + ", ".join(f"{s}: {'yes' if (matrix.pivot('rank')[s] == reward_only.pivot('rank').reindex(matrix.teachers)[s]).all() else 'no'}"
                    for s in matrix.students) + ".",
    ]
    if rho is not None:
        losses = matrix.pivot("base_loss")
        rho_loss = spearmanr(losses.iloc[:, 0], losses.iloc[:, 1]).statistic
        lines.append(f"- Spearman ρ between the two students' CAR orders of the {len(cars)} teachers: {rho:.3f}; "
                     f"between their mean losses per teacher: {rho_loss:.3f}.")
    rewards = matrix.pivot("reward").iloc[:, 0]
    spread = ", ".join(f"{s} {(1 + matrix.pivot('base_loss')[s]).max() / (1 + matrix.pivot('base_loss')[s]).min():.2f}×"
                       for s in matrix.students)
    lines.append(f"- Why: across teachers the mean reward spans {rewards.max() / rewards.min():.0f}× (best / worst), "
                 f"the compatibility factor 1 + L only {spread}; CAR can reorder two teachers only where their "
                 "rewards are within that factor of each other.")
    lines += [
        "",
        "What this is not: the judge preference is a proxy for quality (AlpacaEval 2 against one reference), and no "
        "student was tuned here, so the matrix says which teacher CAR would pick for each student, not which would "
        "tune it best. With this few instructions the intervals are wide; `≈` marks every rank the data does not "
        "settle. The scored rows are in `../runs/zoo-students/scored.parquet` (columns: "
        "`bench/matrix_real.py`'s docstring).",
        "",
    ]
    write_report(docs / "MATRIX.md", "\n".join(lines))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instructions", type=int, default=80, help="instructions, in a seeded order of the 805")
    parser.add_argument("--seed", type=int, default=0, help="seed of the instruction order and of the bootstrap")
    parser.add_argument("--students", nargs="+", default=STUDENTS, help="model ids (default: both offline students)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time-rows", type=int, default=0,
                        help="only time this many rows per student (no cache, nothing written) and print an estimate")
    parser.add_argument("--out", default=str(ROOT.parent / "runs" / "zoo-students"),
                        help="scored.parquet, the cache and the matrix folder (default ../runs/zoo-students)")
    parser.add_argument("--report", action="store_true", help="rank the scored file (no scoring) and print the matrix")
    parser.add_argument("--scored", help="--report: the scored file (default <out>/scored.parquet)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="--report: paired bootstrap resamples")
    parser.add_argument("--write", action="store_true", help="--report: also write MATRIX.md and the pictures")
    parser.add_argument("--docs-dir", default=str(DOCS), help="--write: where (default docs/)")
    args = parser.parse_args(argv)
    return report(args) if args.report else score(args)


if __name__ == "__main__":
    sys.exit(main())

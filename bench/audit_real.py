"""The signal audit (:mod:`car_hf.ranking.audit`) on real pools: the AlpacaEval zoo and the pilot's teachers.

1. The zoo's text checks (repetition loops, empty or no-op answers) on every response of the 11 generators to the
   805 instructions, no model needed.
2. The zoo's leaderboards, reward = the judge's preference (the judge's reference generator left out: its
   preference is constant), losses under each student of ``--zoo-scored`` (a parquet file scored with one student,
   ``base_loss``, or several, ``base_loss@<label>``), each audited as ``car-hf rank`` audits it.
3. The pilot's pool (``python bench/pilot_real.py --pool-only`` writes it): SmolLM2-135M-Instruct's own answers
   under three system prompts and three scripted teachers, scored under SmolLM2-135M-Instruct, the student.

Writes the results to ``--out`` (a file of their own), else with ``--write`` between the ``<!-- results -->``
markers of docs/AUDIT.md (the prose around them stays), else prints them. A missing input is reported and skipped.

    python bench/audit_real.py --zoo-scored /work/runs/zoo-students --pilot-pool /work/runs/e2-pilot/pool --write
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from car_hf.publishing.cards.common import leaderboard_markdown, table  # noqa: E402
from car_hf.ranking.audit import AUDIT_COLUMNS, audit_markdown, audit_leaderboard, response_flags  # noqa: E402
from car_hf.ranking.leaderboard import rank_generators  # noqa: E402

ZOO = ROOT.parent / "shared" / "data" / "alpaca_eval_zoo" / "zoo.jsonl.gz"
REFERENCE = "gpt4_1106_preview"  # the judge's reference: every preference is 0.5
STUDENTS = {"SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma-3-270m": "google/gemma-3-270m"}
PILOT_STUDENT = "HuggingFaceTB/SmolLM2-135M-Instruct"
PILOT_MAX_NEW_TOKENS = 64  # bench/pilot_real.py's default --max-new-tokens
MARK = "<!-- results -->"
SHOWN = ["generator", "n_scored", "reward", "base_loss", "car", "rsr", *AUDIT_COLUMNS]


def zoo_text(path: Path) -> tuple[str, float]:
    """The text checks on every zoo response: a table per generator, with the loops' instruction ids."""
    started = time.perf_counter()
    rows = pd.read_json(path, lines=True)
    flags = response_flags(rows).assign(instruction_id=rows["instruction_id"].to_numpy())
    cells = []
    for generator, part in flags.groupby("generator", sort=False):
        loops = part.loc[part["loop"].astype(bool), "instruction_id"].tolist()
        cells.append([f"`{generator}`", str(len(part)), f"{int(part['loop'].sum())} ({100 * part['loop'].mean():.1f}%)",
                      f"{int(part['empty'].sum())} ({100 * part['empty'].mean():.1f}%)",
                      ", ".join(map(str, loops)) or "–"])
    seconds = time.perf_counter() - started
    text = table(["generator", "responses", "repetition loops", "empty / no-op", "loops at instruction ids"], cells)
    return text, seconds


def scored_file(path: Path) -> Path:
    """``path``, or in a folder the largest ``scored-<N>.parquet`` (bench/matrix_real.py's stages), else its
    ``scored.parquet``."""
    if not path.is_dir():
        return path
    stages = sorted(path.glob("scored-*.parquet"), key=lambda p: int(p.stem.split("-")[1]))
    return stages[-1] if stages else path / "scored.parquet"


def _student_views(path: Path) -> list[tuple[str, pd.DataFrame]]:
    """(student label, that student's rows with its columns under the plain names) per student of the file.

    Renamed here with :func:`car_hf.core.students.student_columns` rather than ``student_view``, whose check refuses
    the NaN loss of an empty answer once a parquet round trip has made it a null (two gemma-2b-it rows of the zoo):
    ``rank_generators`` leaves such rows out of the means and counts them (``n_scored``), as for any NaN loss.
    """
    from car_hf.core.students import student_columns, students_in

    frame = pd.read_parquet(path)
    labels = students_in(list(frame.columns))
    if not labels:
        config = path.with_name(path.name + ".car_config.json")
        base = json.loads(config.read_text()).get("base_model", "student") if config.exists() else "student"
        return [(str(base).split("/")[-1], frame)]
    views = []
    for label in labels:
        own = student_columns(label, list(frame.columns))
        others = [c for c in frame.columns if "@" in c and c not in own]
        views.append((label, frame.drop(columns=[*others, *(p for p in own.values() if p in frame.columns)])
                      .rename(columns=own)))
    return views


def audited_markdown(audited: pd.DataFrame) -> str:
    shown = audited[[c for c in SHOWN if c in audited.columns]]
    shown.attrs = audited.attrs
    return f"{leaderboard_markdown(shown)}\n\n{audit_markdown(audited)}"


def zoo_students(path: Path) -> tuple[list[str], float]:
    started = time.perf_counter()
    lines = []
    for label, view in _student_views(path):
        view = view[view["generator"] != REFERENCE].reset_index(drop=True)
        student = STUDENTS.get(label, label)
        reward = "reward" if "reward" in view.columns else "judge_preference"
        ranked = rank_generators(view, reward_column=reward, beta=1.0, n_bootstrap=0, config={"base_model": student})
        size = f"{len(set(view['instruction_id']))} instructions × {len(ranked)} generators."
        lines += [f"#### Student `{student}`", "", size, "", audited_markdown(audit_leaderboard(ranked, view)), ""]
    return lines, time.perf_counter() - started


def pilot(path: Path) -> tuple[list[str], float]:
    import datasets

    started = time.perf_counter()
    pool = datasets.load_from_disk(str(path))
    teachers = {entry["teacher_name"]: entry["teacher"]
                for entry in yaml.safe_load((ROOT / "bench" / "trial_teachers.yaml").read_text())}
    # The pool keeps no finish_reason (bench/pilot_real.py keeps five columns): a SmolLM2 teacher's answer was cut when
    # it re-tokenizes (by SmolLM2's tokenizer, the teacher's own) to PILOT_MAX_NEW_TOKENS tokens.
    if any(g.startswith("smollm2-") for g in pool.unique("generator")):
        from transformers import AutoTokenizer

        from car_hf.core.models import local_model_path

        tokenizer = AutoTokenizer.from_pretrained(local_model_path(PILOT_STUDENT))
        cut = [g.startswith("smollm2-") and len(tokenizer(r, add_special_tokens=False)["input_ids"])
               >= PILOT_MAX_NEW_TOKENS for g, r in zip(pool["generator"], pool["response"])]
        pool = pool.add_column("response_finish_reason", ["length" if c else "stop" for c in cut])
    ranked = rank_generators(pool, beta=1.0, n_bootstrap=0, config={"base_model": PILOT_STUDENT})
    models = {g: teachers.get(g, g) for g in ranked["generator"]}
    audited = audit_leaderboard(ranked, pool, teachers=models)
    return [audited_markdown(audited), ""], time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default=str(ZOO), help="the AlpacaEval zoo (JSON lines, gzipped or not)")
    parser.add_argument("--zoo-scored", default=str(ROOT / "runs" / "zoo-students"),
                        help="the zoo scored under one or more students: a parquet file, or bench/matrix_real.py's "
                             "folder (its largest scored-<N>.parquet)")
    parser.add_argument("--pilot-pool", default=str(ROOT / "runs" / "pilot-real" / "pool"),
                        help="the pilot's scored pool (a save_to_disk folder)")
    parser.add_argument("--out", help="write the results to this file (wins over --write)")
    parser.add_argument("--write", action="store_true", help="write the results into docs/AUDIT.md")
    args = parser.parse_args(argv)
    command = "python bench/audit_real.py " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()
    text, text_seconds = zoo_text(Path(args.zoo))
    lines = ["### 1. The zoo's responses: repetition loops and empty answers (no model)", "",
             f"{text_seconds:.1f} s for every response of `{Path(args.zoo).name}`.", "", text, ""]
    lines += ["### 2. The zoo's leaderboards (reward: the judge's preference; β = 1)", ""]
    scored = scored_file(Path(args.zoo_scored))
    if scored.exists():
        part, seconds = zoo_students(scored)
        lines += [f"From `{scored}`."]
        lines[-1] += f" Ranked and audited in {seconds:.1f} s."
        lines += ["", *part]
    else:
        lines += [f"Not run: `{scored}` is missing.", ""]
    lines += ["### 3. The pilot's teachers (student SmolLM2-135M-Instruct; reward: correctness; β = 1)", ""]
    if Path(args.pilot_pool).exists():
        part, seconds = pilot(Path(args.pilot_pool))
        lines += [f"Ranked and audited in {seconds:.1f} s.", "", *part]
    else:
        lines += [f"Not run: `{args.pilot_pool}` is missing (`python bench/pilot_real.py --pool-only` writes it).", ""]
    wall = time.perf_counter() - started
    report = "\n".join([f"Command: `{command.strip()}`; {wall:.1f} s wall in all.", "", *lines])
    if args.out:
        Path(args.out).write_text(report + "\n")
        print(f"wrote {args.out}")
    elif args.write:
        doc = ROOT / "docs" / "AUDIT.md"
        head, rest = doc.read_text().split(MARK, 1)
        doc.write_text(f"{head}{MARK}\n{report}\n{MARK}{rest.split(MARK, 1)[1]}")
        print(f"wrote {doc}")
    else:
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

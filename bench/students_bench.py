"""Scoring under k students: k loss passes and ONE reward pass, against k separate single-student runs.

What it compares, in one run, on the same rows:

* ``joint``: ``add_car(base_model=[s1, ..., sk], reward_model=R).map(ds)``: the reward model scores every row once,
  then each student in turn (one model in memory at a time) scores every row, writing ``base_loss@<label>`` ...;
* ``separate``: k runs of ``add_car(base_model=s_i, reward_model=R).map(ds)``, one per student (what a team does
  today): each scores the rewards again.

It counts, by wrapping car_hf's two scoring calls (``BaseLossScorer.score`` and ``RewardScorer.score``), the rows
each model scored and the models held in car_hf's model memo during each loss pass, and times both ways (wall
clock; ratios, never asserted). Each student's columns of the joint run must equal its separate run's to 1e-5
(fp32): the script exits 1 when they do not, or when a count is not k loss passes and one reward pass.

Usage:
    python bench/students_bench.py --quick             # tiny offline models: 3 students, 3 tokenizers/templates
    python bench/students_bench.py --write-results     # SmolLM2-135M-Instruct + Gemma-3-270m on zoo rows -> STUDENTS.md
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "tests", ROOT / "bench", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = ROOT / "bench" / "STUDENTS.md"
TOLERANCE = 1e-5
REAL_STUDENTS = ["HuggingFaceTB/SmolLM2-135M-Instruct", "google/gemma-3-270m"]


@contextlib.contextmanager
def counting(name: Any = str) -> Iterator[dict[str, Any]]:
    """Count the rows each car_hf scoring pass sees: ``{"loss": {model: rows}, "reward": rows, "held": [...]}``;
    ``name`` turns a student's model spec into its key (tests/test_students.py counts by folder name)."""
    from car_hf.core import models
    from car_hf.scoring.loss import BaseLossScorer
    from car_hf.scoring.reward import RewardScorer

    counts: dict[str, Any] = {"loss": collections.Counter(), "loss_calls": 0, "reward": 0, "reward_calls": 0,
                              "held": []}
    loss_score, reward_score = BaseLossScorer.score, RewardScorer.score

    def loss(self: Any, model: Any, tokenizer: Any, examples: list) -> Any:
        counts["loss"][name(self.model.spec or self.model.fingerprint)] += len(examples)
        counts["loss_calls"] += 1
        counts["held"].append(len(models._MEMO))  # models held by car_hf's memo during this pass
        return loss_score(self, model, tokenizer, examples)

    def reward(self: Any, model: Any, tokenizer: Any, examples: list) -> Any:
        counts["reward"] += len(examples)
        counts["reward_calls"] += 1
        return reward_score(self, model, tokenizer, examples)

    BaseLossScorer.score, RewardScorer.score = loss, reward
    try:
        yield counts
    finally:
        BaseLossScorer.score, RewardScorer.score = loss_score, reward_score


def tiny_setup(folder: Path) -> tuple[list[str], Any, list[dict]]:
    """Three tiny students with different tokenizers and templates, a tiny reward model, 18 synthetic rows."""
    import tiny

    chat = tiny.build_tokenizer()
    plain = tiny.build_tokenizer(chat_template=False)
    saved, tiny.VOCAB_SIZE = tiny.VOCAB_SIZE, 600  # another BPE vocabulary: another tokenization
    try:
        small = tiny.build_tokenizer()
    finally:
        tiny.VOCAB_SIZE = saved
    students = [
        str(tiny.save_tiny(tiny.build_causal_lm(chat, seed=1), chat, folder / "llama-chat")),
        str(tiny.save_tiny(tiny.build_gemma3_lm(plain, seed=2), plain, folder / "gemma-plain")),
        str(tiny.save_tiny(tiny.build_causal_lm(small, seed=3), small, folder / "llama-small-vocab")),
    ]
    reward = str(tiny.save_tiny(tiny.build_reward_model(chat), chat, folder / "reward"))
    return students, reward, tiny.sample_rows()


def real_setup(n_rows: int) -> tuple[list[str], Any, list[dict]]:
    """The two real offline students, SmolLM2-135M under an untrained one-output head as the reward model (real size,
    speed only), and the first ``n_rows`` zoo rows of two generators."""
    from common import load_reward_backbone, zoo_rows

    model, tokenizer, _ = load_reward_backbone()
    return list(REAL_STUDENTS), (model, tokenizer), zoo_rows(n_rows, ["gpt4_1106_preview", "alpaca-7b"],
                                                             "students_bench.py")


def run(students: list[str], reward: Any, rows: list[dict], max_length: int) -> dict[str, Any]:
    """Both ways on the same rows: counts, wall times, the largest difference between their columns."""
    import numpy as np
    from datasets import Dataset

    from car_hf import add_car
    from car_hf.core.models import clear_model_cache
    from car_hf.core.students import student_column, student_labels

    ds = Dataset.from_list(rows)
    labels = student_labels(students)
    options = dict(reward_model=reward, reward_transform="sigmoid", max_length=max_length, dtype="float32",
                   device="cpu")
    clear_model_cache()
    with counting() as joint_counts:
        start, cpu = time.perf_counter(), time.process_time()
        joint = add_car(base_model=students, **options).map(ds, batch_size=64)
        joint_seconds, joint_cpu = time.perf_counter() - start, time.process_time() - cpu
    separate, separate_seconds, separate_cpu = [], 0.0, 0.0
    with counting() as separate_counts:
        for student in students:
            clear_model_cache()  # a separate run loads its student afresh, as the joint run does
            start, cpu = time.perf_counter(), time.process_time()
            separate.append(add_car(base_model=student, **options).map(ds, batch_size=64))
            separate_seconds += time.perf_counter() - start
            separate_cpu += time.process_time() - cpu
    clear_model_cache()
    worst = 0.0
    for label, single in zip(labels, separate):
        for column in ("base_loss", "base_rank", "car"):
            a = np.asarray(joint[student_column(column, label)], dtype=float)
            b = np.asarray(single[column], dtype=float)
            worst = max(worst, float(np.nanmax(np.abs(a - b))))
        if list(joint[student_column("base_loss_tokens", label)]) != list(single["base_loss_tokens"]):
            worst = float("inf")
    rewards_equal = all(np.allclose(joint["reward"], single["reward"], atol=TOLERANCE) for single in separate)
    return {"k": len(students), "rows": len(ds), "labels": labels, "joint": joint_counts, "separate": separate_counts,
            "joint_seconds": joint_seconds, "separate_seconds": separate_seconds, "joint_cpu": joint_cpu,
            "separate_cpu": separate_cpu, "worst": worst,
            "rewards_equal": rewards_equal}


def report(result: dict[str, Any]) -> tuple[str, bool]:
    """The markdown table and whether every check holds (k loss passes over every row, one reward pass, values)."""
    k, n = result["k"], result["rows"]
    joint, separate = result["joint"], result["separate"]
    per_student_ok = len(joint["loss"]) == k and all(rows == n for rows in joint["loss"].values())
    ok = per_student_ok and joint["reward"] == n and separate["reward"] == k * n and result["worst"] <= TOLERANCE \
        and result["rewards_equal"] and max(joint["held"]) <= 1
    lines = [
        f"{k} students ({', '.join(result['labels'])}), {n} rows, one reward model:",
        "",
        "| way | loss rows scored | reward rows scored | models in memory during a loss pass | wall s | CPU s |",
        "|---|---|---|---|---|---|",
        f"| joint `add_car(base_model=[...]).map` | {sum(joint['loss'].values())} ({k} x {n}) | {joint['reward']} "
        f"| {max(joint['held'])} | {result['joint_seconds']:.1f} | {result['joint_cpu']:.1f} |",
        f"| {k} separate runs | {sum(separate['loss'].values())} | {separate['reward']} ({k} x {n}) "
        f"| {max(separate['held'])} | {result['separate_seconds']:.1f} | {result['separate_cpu']:.1f} |",
        "",
        f"reward passes: joint {joint['reward'] / n:.0f}, separate {separate['reward'] / n:.0f}; "
        f"loss passes: joint {sum(joint['loss'].values()) / n:.0f}, separate {sum(separate['loss'].values()) / n:.0f}",
        f"time joint / separate: wall {result['joint_seconds'] / result['separate_seconds']:.2f}, "
        f"CPU {result['joint_cpu'] / result['separate_cpu']:.2f} (this process's CPU seconds, all threads: less "
        "sensitive than the wall clock to other work on the machine)",
        f"agreement (fp32, per-student columns joint vs separate, <= {TOLERANCE:g}): "
        f"{'OK' if result['worst'] <= TOLERANCE else 'FAILED'} (largest difference {result['worst']:.2e})",
        f"checks (k loss passes, 1 reward pass, 1 model in memory): {'OK' if ok else 'FAILED'}",
    ]
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny offline models (CI)")
    parser.add_argument("--rows", type=int, default=24, help="real mode: zoo rows")
    parser.add_argument("--max-length", type=int, default=512, help="token cap per scored conversation")
    parser.add_argument("--write-results", action="store_true", help=f"write {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    with tempfile.TemporaryDirectory() as folder:
        if args.quick:
            students, reward, rows = tiny_setup(Path(folder))
        else:
            students, reward, rows = real_setup(args.rows)
        result = run(students, reward, rows, args.max_length)
    text, ok = report(result)
    print(text)
    if args.write_results:
        import platform

        where = f"{platform.machine()} ({os.cpu_count()} cores, no GPU), {time.strftime('%Y-%m-%d')}"
        RESULTS.write_text(
            "# Scoring under several students: k loss passes, one reward pass\n\n"
            f"`{' '.join(['python bench/students_bench.py', *(argv if argv is not None else sys.argv[1:])])}` "
            f"({'tiny models' if args.quick else 'real models'}; "
            f"{where}; max_length {args.max_length}). The script counts the rows car_hf's loss and reward passes "
            "score (wrapping `BaseLossScorer.score` / `RewardScorer.score`) and the models held in car_hf's model "
            "memo during each loss pass; times are one wall-clock run on a shared CPU: ratios, not claims.\n\n"
            + text + "\n")
        print(f"wrote {RESULTS}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

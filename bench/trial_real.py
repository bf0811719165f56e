"""A real teacher trial on this CPU: which teacher should write checkable-task data for Gemma-3-270m?

Teachers: SmolLM2-135M-Instruct under three system prompts (plain, terse, step-by-step with markdown) and
Gemma-3-270m base with a plain instruction template; student: Gemma-3-270m; instructions: ``car_hf.generation.tasks``
(five kinds with checkable answers); reward: correctness (``car_hf.generation.tasks:AnswerReward``, an ``evaluate`` metric).
Runs ``car_hf.ranking.trial.rank_teachers`` (target top1, elimination) and writes ``docs/TRIAL_REAL.md`` with the
leaderboard, the cost line and the wall time. The same run from the command line::

    car-hf trial tasks.jsonl --teachers bench/trial_teachers.yaml --base-model google/gemma-3-270m \\
        --reward-model car_hf.generation.tasks:AnswerReward --checkpoint runs/trial-real --output-dir runs/trial-real/ranking

    python bench/trial_real.py --instructions 100
"""

from __future__ import annotations

import argparse
import time

from common import MODELS, ROOT, where_and_when, write_report

import yaml

from car_hf import TeacherConfig, add_car, rank_teachers
from car_hf.publishing.folders import ranking_markdown
from car_hf.generation.tasks import AnswerReward, make_tasks

TEACHERS = ROOT / "bench" / "trial_teachers.yaml"
OUT = ROOT / "docs" / "TRIAL_REAL.md"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instructions", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--checkpoint", default=str(ROOT / "runs" / "trial-real"))
    parser.add_argument("--write", action="store_true", help="write docs/TRIAL_REAL.md")
    args = parser.parse_args(argv)

    teachers = [TeacherConfig(**entry, max_new_tokens=args.max_new_tokens)
                for entry in yaml.safe_load(TEACHERS.read_text())]
    tasks = make_tasks(args.instructions, seed=0)
    scorer = add_car(base_model=MODELS["gemma"], reward_model=AnswerReward(), max_length=512)
    started = time.perf_counter()
    result = rank_teachers(tasks, teachers, scorer, checkpoint=args.checkpoint, batch_size=16)
    seconds = time.perf_counter() - started
    lines = [
        "# A real teacher trial on this CPU",
        "",
        f"`python bench/trial_real.py --instructions {args.instructions}` on {where_and_when()}: "
        f"**{seconds / 60:.1f} min wall** (from a "
        "cold trial cache; the models' converted folders were cached). Student google/gemma-3-270m (base), reward = "
        f"correctness of the final answer (`car_hf.generation.tasks:AnswerReward`), {args.instructions} instructions of five "
        f"checkable kinds (`car_hf.generation.tasks.make_tasks`), greedy, at most {args.max_new_tokens} new tokens, target "
        "top1 at 95% with elimination. Teachers (`bench/trial_teachers.yaml`):",
        "",
        *[f"- `{t.label}`: {t.teacher}" + (f", system prompt \"{t.system_prompt}\"" if t.system_prompt else "")
          + (", plain instruction template" if t.chat_template else "") for t in teachers],
        "",
        ranking_markdown(result.table),
        "",
        "```text",
        result.summary(),
        "```",
    ]
    print("\n".join(lines))
    if args.write:
        write_report(OUT, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Distributed, resumable CAR scoring: reward, base-model loss and per-row CAR of every row, then the leaderboard.

    python recipes/tiny_model.py   # once, for the tiny CPU config
    python recipes/score.py --config recipes/configs/score_tiny_cpu.yaml
    accelerate launch --cpu --num_processes 1 recipes/score.py --config recipes/configs/score_tiny_cpu.yaml
    # two CPU processes (gloo; `--cpu --num_processes 2` would start only one):
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        recipes/score.py --config recipes/configs/score_tiny_cpu.yaml
    # 8 GPUs: the generator zoo scored for the student you will tune
    accelerate launch --multi_gpu --num_processes 8 recipes/score.py --config recipes/configs/score_magpie.yaml \\
        --base_model Qwen/Qwen2.5-0.5B --output_dir runs/score-magpie-qwen2.5-0.5b

Options: :class:`ScoreArguments` (data, output, chunks, leaderboard) and ``car_hf.CARConfig`` (how rows are
scored), from a YAML config and the command line (``TrlParser``). The work is car_hf's: chunks of rows shared
out over the processes (``car_hf.core.distributed``, N processes = 1 process bit for bit), saved to the score cache
(``car_hf.core.cache``) as they complete, so a killed run resumes where it stopped and a run with other data, models,
options or car_hf version scores afresh. The main process writes ``output_dir`` as a ranking folder
(``car_hf.core.data.write_ranking``: ``scored/``, ``leaderboard.md``/``.csv``, ``car_config.json``), which
``car-hf push`` publishes. ``CAR_HF_FAIL_AFTER_CHUNKS=N`` makes each process exit after N chunks (for testing).
Several students (``--base_model`` repeated, or a YAML list): the rewards are scored once, then each student in
turn over every row (one model in memory at a time), each a cache key of its own, so adding a student to a
finished run scores only that student; ``output_dir`` then holds ``scored/`` with ``base_loss@<label>`` ... per
student and the teachers x students matrix (``matrix.md`` ...: ``car_hf.ranking.matrix``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from car_hf import CARConfig
from car_hf.cli.common import run_recipe

logger = logging.getLogger("car_hf.recipes.score")


@dataclass
class ScoreArguments:
    """What to score, where to write, and the leaderboard (the scoring options are ``CARConfig``'s)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "A .json/.jsonl(.gz)/.parquet/.csv file, a save_to_disk folder, or a Hub id."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a Hub dataset or saved DatasetDict."})
    dataset_layout: str = field(
        default="long", metadata={"help": "long (a row per instruction x generator) | wide (the paper's Generator-Zoo "
                                          "layout, one struct column per generator).", "choices": ["long", "wide"]})
    zoo_reward_key: str | None = field(
        default=None, metadata={"help": "wide layout: the reward key of the generator structs copied to 'reward'."})
    generators: list[str] | None = field(default=None, metadata={"help": "Keep only these generators' rows."})
    max_instructions: int | None = field(default=None, metadata={"help": "Keep the first N distinct instructions."})
    output_dir: str = field(default="runs/score", metadata={"help": "The ranking folder and the score cache."})
    overwrite: bool = field(default=False, metadata={"help": "Score again even what the cache holds."})
    chunk_rows: int = field(default=512, metadata={"help": "Rows per chunk, the unit saved as it completes."})
    map_batch_size: int = field(default=64, metadata={"help": "Rows per datasets.map batch."})
    cpu: bool = field(default=False, metadata={"help": "Score on CPU even when GPUs are present (gloo backend)."})
    by: str = field(default="generator", metadata={"help": "Generator column for the leaderboard."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples of the leaderboard (0: none)."})
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of the leaderboard intervals."})
    seed: int = field(default=0, metadata={"help": "Bootstrap seed."})
    timeout_minutes: int = field(default=360, metadata={"help": "How long a process may wait for the others."})


def make_parser():
    from trl import TrlParser

    return TrlParser((ScoreArguments, CARConfig))


def main(args: ScoreArguments, config: CARConfig) -> Path | None:
    import dataclasses

    import datasets

    from car_hf.core.data import save_data
    from car_hf.publishing.folders import write_ranking
    from car_hf.core.distributed import run_chunks, start_processes
    from car_hf.core.inputs import (check_config_sources, check_data_source, check_model_source, check_scoring_inputs,
                                    load_job_data)
    from car_hf.core.students import student_models
    from car_hf.ranking.leaderboard import rank_generators
    from car_hf.scoring.scorer import scorer_for_ranking

    state = start_processes(cpu=args.cpu, timeout_minutes=args.timeout_minutes)

    # 1. Check, then load the data (the main process first: the others read datasets' cache).
    check_data_source(args.dataset_name)
    check_config_sources(dataclasses.replace(config, base_model=None))
    for student in student_models(config.students):  # several students: each one
        check_model_source(student, "base_model")
    with state.main_process_first():
        ds = load_job_data(args.dataset_name, split=args.dataset_split, layout=args.dataset_layout,
                           zoo_reward_key=args.zoo_reward_key, generators=args.generators,
                           max_instructions=args.max_instructions, by=args.by)
    check_scoring_inputs(ds, config)
    datasets.disable_caching()  # the chunks are in car_hf's cache; datasets' copy of each would be a second one

    # 2. Score the chunks over the processes, through the score cache (a rerun skips what is there). Several
    #    students: the rewards, then each student, one model at a time, each its own cache key (a new student
    #    scores only itself).
    scorer = scorer_for_ranking(dataclasses.replace(config, score_device=str(state.device)))
    output_dir = Path(args.output_dir)
    scored = scorer.map(ds, run=lambda part: run_chunks(state, ds, part, output_dir, chunk_rows=args.chunk_rows,
                                                         batch_size=args.map_batch_size, overwrite=args.overwrite))

    # 3. The main process writes the ranking folder.
    if state.is_main_process:
        record = scorer.scoring_config() | {"dataset": args.dataset_name, "n_rows": len(scored),
                                            "chunk_rows": args.chunk_rows, "world_size": state.num_processes}
        if args.by in scored.column_names and scorer.labels:  # several students: the teachers x students matrix
            from car_hf.ranking.matrix import rank_matrix

            matrix = rank_matrix(scored, by=args.by, beta=config.beta, reward_transform=config.reward_transform,
                                 n_bootstrap=args.n_bootstrap, confidence=args.confidence, seed=args.seed,
                                 config=record)
            save_data(scored, str(output_dir / "scored"), record)
            matrix.write(output_dir)
            logger.info("teachers x students matrix:\n%s", matrix.markdown())
        elif args.by in scored.column_names:
            table = rank_generators(scored, by=args.by, beta=config.beta, reward_transform=config.reward_transform,
                                    n_bootstrap=args.n_bootstrap, confidence=args.confidence, seed=args.seed,
                                    config=record)
            write_ranking(output_dir, table, scored)
            logger.info("generator leaderboard:\n%s", (output_dir / "leaderboard.md").read_text())
        else:
            logger.info("no %r column: no generator leaderboard", args.by)
            save_data(scored, str(output_dir / "scored"), record)
        logger.info("wrote %s", output_dir)
    state.wait_for_everyone()
    return output_dir if state.is_main_process else None


if __name__ == "__main__":
    run_recipe("score.py", make_parser, main)

#!/usr/bin/env python
"""Distributed, resumable generation: one teacher's responses to every prompt of a dataset, as a new column.

    python recipes/tiny_model.py   # once, for the tiny CPU config
    accelerate launch --cpu --num_processes 1 recipes/generate.py --config recipes/configs/generate_tiny_cpu.yaml
    accelerate launch --multi_gpu --num_processes 8 recipes/generate.py --dataset_name prompts.jsonl \\
        --teacher Qwen/Qwen2.5-1.5B-Instruct --engine transformers --max_new_tokens 1024 --output_dir runs/gen
    python recipes/generate.py --dataset_name prompts.jsonl --teacher Qwen/Qwen2.5-7B-Instruct --engine vllm \\
        --tensor_parallel_size 4 --max_model_len 8192 --gpu_memory_utilization 0.85 \\
        --engine_kwargs '{"max_num_seqs": 512}' --output_dir runs/gen-vllm       # vLLM: one process, its own GPUs
    HF_HUB_OFFLINE=0 python recipes/generate.py --dataset_name prompts.jsonl --teacher my-model \\
        --base_url http://localhost:8000/v1 --max_concurrency 32 --output_dir runs/gen-server   # any server

Options: :class:`GenerateArguments` (data, output, chunks) and ``car_hf.generation.teacher.TeacherConfig`` (the teacher
and how it generates), from a YAML config and the command line (``TrlParser``). With the ``transformers``
engine the prompts are cut into chunks shared out over the ``accelerate launch`` processes
(``car_hf.core.distributed``: chunk boundaries do not depend on the number of processes, so under greedy decoding
N processes give the rows of one, row for row); vLLM and servers bring their own parallelism and run in one
process. Chunks are saved to the cache (``car_hf.core.cache``) as they complete: a killed run resumes without
generating a saved chunk again, and a run with another teacher, option or data generates afresh. The main
process writes ``output_dir/generated`` (a ``save_to_disk`` folder, rows in the original order, with
``car_config.json``: the teacher configuration, provenance and retries). ``CAR_HF_FAIL_AFTER_CHUNKS=N`` makes each
process exit after N chunks (for testing).

vLLM and servers get a whole chunk per generation call (``map_batch_size`` applies to the transformers engine), so
vLLM's scheduler and ``max_concurrency`` are the only limits; vLLM's engine options are ``--gpu_memory_utilization``,
``--max_model_len``, ``--enforce_eager`` and ``--engine_kwargs '{"max_num_seqs": 512}'`` (or a mapping in YAML).
Exit status: 2 for a user error (one line), 3 when generation failed for some rows after the retries: the finished
rows are kept (chunks in the cache, the rest of a failed chunk in ``output_dir/kept-responses.json``) and the same
command run again generates only the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from car_hf import ConfigError
from car_hf.cli.common import run_recipe
from car_hf.generation.teacher import TeacherConfig

logger = logging.getLogger("car_hf.recipes.generate")


@dataclass
class GenerateArguments:
    """What to answer and where to write (the generation options are ``TeacherConfig``'s)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "A .json/.jsonl(.gz)/.parquet/.csv file, a save_to_disk folder, or a Hub id."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a Hub dataset or saved DatasetDict."})
    max_instructions: int | None = field(default=None, metadata={"help": "Keep the first N distinct instructions."})
    unique_prompts: bool = field(
        default=False, metadata={"help": "Keep the first row of each distinct prompt (e.g. of a long-layout zoo)."})
    output_dir: str = field(default="runs/generate", metadata={"help": "generated/ and the generation cache."})
    overwrite: bool = field(default=False, metadata={"help": "Generate again even what the cache holds."})
    chunk_rows: int = field(default=256, metadata={"help": "Rows per chunk, the unit saved as it completes."})
    map_batch_size: int = field(default=64, metadata={"help": "Rows per datasets.map batch (a generation call)."})
    cpu: bool = field(default=False, metadata={"help": "Generate on CPU even when GPUs are present (gloo backend)."})
    timeout_minutes: int = field(default=360, metadata={"help": "How long a process may wait for the others."})


def make_parser():
    from trl import TrlParser

    return TrlParser((GenerateArguments, TeacherConfig))


def load_prompts(args: GenerateArguments, config: TeacherConfig):
    """The rows to answer, checked (the prompt column exists) before any model loads."""
    from car_hf.generation.generate import input_column
    from car_hf.core.inputs import load_job_data

    ds = load_job_data(args.dataset_name, split=args.dataset_split, max_instructions=args.max_instructions)
    column = input_column(ds.column_names, config)
    if args.unique_prompts:
        seen: set[str] = set()
        keys = [json.dumps(value, sort_keys=True) for value in ds[column]]
        ds = ds.select([i for i, key in enumerate(keys) if not (key in seen or seen.add(key))]).flatten_indices()
    return ds


def main(args: GenerateArguments, config: TeacherConfig) -> Path | None:
    import datasets

    from car_hf.core.data import save_data
    from car_hf.core.distributed import run_chunks, start_processes
    from car_hf.generation.generate import add_responses, map_batch_size, resolve_engine
    from car_hf.core.inputs import check_data_source, check_model_source
    from car_hf.generation.resume import KEPT_FILE, keeping_responses, retry_counts, retry_summary

    state = start_processes(cpu=args.cpu, timeout_minutes=args.timeout_minutes)
    world = state.num_processes

    # 1. Check the options and the data before any model loads (the main process loads first: the others read
    #    datasets' cache).
    check_data_source(args.dataset_name)
    engine = resolve_engine(config)
    if engine != "openai":
        check_model_source(config.teacher, "teacher")
    if engine != "transformers" and world > 1:
        raise ConfigError(f"engine {engine} brings its own parallelism (vLLM: tensor_parallel_size; a server: "
                          f"max_concurrency): run recipes/generate.py in one process, not {world}")
    with state.main_process_first():
        ds = load_prompts(args, config)
    datasets.disable_caching()  # the chunks are in car_hf's cache; datasets' copy of each would be a second one

    # 2. Generate this process's chunks into the cache (skipping those a killed or earlier run left there).
    device = {"teacher_device": str(state.device)} if engine == "transformers" else {}
    generator = add_responses(config=dataclasses.replace(config, engine=engine, **device))
    output_dir = Path(args.output_dir)
    # vllm and openai get a whole chunk per call; the finished rows of a chunk that fails are kept beside the cache
    # (one process: only those engines fail with some rows done).
    keeping = keeping_responses(output_dir / KEPT_FILE) if world == 1 else contextlib.nullcontext()
    before = retry_counts([generator])  # this run's retries (the engine may have served an earlier call)
    try:
        with keeping:
            generated = run_chunks(state, ds, generator, output_dir, chunk_rows=args.chunk_rows,
                                   batch_size=map_batch_size(generator, args.map_batch_size), overwrite=args.overwrite)
    finally:
        retries = retry_counts([generator]) - before
        if retries:
            logger.warning("%s", retry_summary(retries))

    # 3. The main process writes the generated dataset.
    result = None
    if state.is_main_process:
        column = generator.config.generation_column
        truncated = sum(generated[f"{column}_truncated"])
        record = generator.record() | {"dataset": args.dataset_name, "n_rows": len(generated), "truncated": truncated,
                                       "chunk_rows": args.chunk_rows, "world_size": world,
                                       "retries": dict(retries)}
        result = save_data(generated, str(output_dir / "generated"), record)
        if truncated:
            logger.warning("%d of %d responses were cut at max_new_tokens=%d (flagged in %s_truncated)", truncated,
                           len(generated), generator.config.max_new_tokens, column)
        logger.info("wrote %d responses of %s to %s", len(generated), generator.config.label, result)
    state.wait_for_everyone()
    return result


if __name__ == "__main__":  # exit 3 when generation failed: the finished rows are kept, the same command resumes
    run_recipe("generate.py", make_parser, main, checkpoint=lambda parsed: parsed[0].output_dir)

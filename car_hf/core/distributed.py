"""Scoring over many processes (``accelerate launch``), in chunks that survive a kill.

Work units: the rows are cut into chunks of ``chunk_rows`` consecutive rows, numbered over the WHOLE
dataset; each process takes a contiguous run of chunks (``Dataset.shard(contiguous=True)`` arithmetic
applied to chunks, never accelerate's padded split, which repeats rows). Chunk boundaries do not depend
on the number of processes, so every row is scored in the same micro-batches whatever the world size:
N processes give bit for bit the values of one, and chunks written by a run with another world size are
reused. Chunks go to the :class:`~car_hf.core.cache.ScoreCache` as they complete, so a killed run loses at
most the chunk in progress, and a rerun with the same data, models and configuration skips every chunk
present that verifies against its rows (a chunk copied from elsewhere or damaged is computed again, with a warning).

Example:
    >>> chunk_bounds(10, 4)
    [(0, 4), (4, 8), (8, 10)]
    >>> [list(shard_chunks(3, world=2, rank=r)) for r in range(2)]
    [[0, 1], [2]]
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from car_hf.core.cache import ScoreCache, rows_digest

logger = logging.getLogger(__name__)

FAIL_AFTER_CHUNKS = "CAR_HF_FAIL_AFTER_CHUNKS"
"""Environment variable: exit abruptly after writing this many chunks (a stand-in for a killed job, for tests)."""


def setup_logging(rank: int = 0, world: int = 1, level: int = logging.INFO) -> None:
    """One log format for long jobs; the rank prefix only when there are several processes."""
    prefix = f"[rank {rank}/{world}] " if world > 1 else ""
    # No force=True: when something already configured logging (a test runner, a notebook), leave it be.
    logging.basicConfig(level=level, stream=sys.stderr, datefmt="%H:%M:%S",
                        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s")
    logging.getLogger("car_hf").setLevel(level)
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def start_processes(*, cpu: bool = False, timeout_minutes: int = 360) -> Any:
    """This process's ``accelerate.PartialState`` (CPU/gloo when asked or without a GPU), with the job's logging."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    state = PartialState(cpu=cpu or not torch.cuda.is_available(), timeout=timedelta(minutes=timeout_minutes))
    setup_logging(state.process_index, state.num_processes)
    return state


def run_chunks(state: Any, dataset: Any, transform: Any, output_dir: str | os.PathLike, *, chunk_rows: int,
               batch_size: int = 64, overwrite: bool = False, all_processes: bool = False) -> Any:
    """Apply ``transform`` to ``dataset`` in chunks shared out over ``state``'s processes, through the score cache
    under ``<output_dir>/cache`` (resuming what a killed or earlier run left; ``overwrite`` redoes it); each
    process writes ``progress-<rank>-of-<world>.json``. Returns every row in order on the main process (on every
    process with ``all_processes``: training needs them on each rank), else None.

    A process waits at the closing barrier only for the slowest one: with equal shares, about one chunk's work,
    so ``chunk_rows`` bounds how long a barrier lasts (keep a chunk well under the process group's timeout).
    """
    from car_hf.core.cache import scoring_key, write_json_atomic

    rank, world = state.process_index, state.num_processes
    cache = ScoreCache(Path(output_dir) / "cache", scoring_key(transform, dataset, chunk_rows=chunk_rows))
    if state.is_main_process:
        if overwrite:
            cache.clear()
        done = cache.names()
        logger.info(f"resuming: {len(done)} chunk(s) already in {cache.folder}" if done else cache.describe_miss())
    state.wait_for_everyone()
    progress = score_chunks(dataset, transform, cache, chunk_rows=chunk_rows, rank=rank, world=world,
                            batch_size=batch_size)
    write_json_atomic(Path(output_dir) / f"progress-{rank:05d}-of-{world:05d}.json", progress.to_dict())
    state.wait_for_everyone()
    every = state.is_main_process or all_processes
    return gather_chunks(cache, len(dataset), chunk_rows, dataset) if every else None


def chunk_bounds(n_rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    """``[start, end)`` of every chunk, over the whole dataset."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return [(lo, min(lo + chunk_rows, n_rows)) for lo in range(0, n_rows, chunk_rows)]


def shard_chunks(n_chunks: int, world: int, rank: int) -> range:
    """This rank's contiguous run of chunk numbers; the first ``n_chunks % world`` ranks get one more."""
    div, mod = divmod(n_chunks, world)
    start = rank * div + min(rank, mod)
    return range(start, start + div + (1 if rank < mod else 0))


def chunk_name(chunk: int, n_chunks: int) -> str:
    return f"chunk-{chunk:05d}-of-{n_chunks:05d}"


@dataclass
class ChunkProgress:
    """What one process did: its chunks, those it scored now and those it found in the cache."""

    rank: int
    world_size: int
    chunks: list[int]
    scored: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_chunks(
    dataset: Any,
    scorer: Any,
    cache: ScoreCache,
    *,
    chunk_rows: int,
    rank: int = 0,
    world: int = 1,
    batch_size: int = 64,
) -> ChunkProgress:
    """Score this rank's chunks of ``dataset`` with ``scorer`` into ``cache``, skipping complete ones."""
    from car_hf.core.data import map_scores

    bounds = chunk_bounds(len(dataset), chunk_rows)
    progress = ChunkProgress(rank, world, list(shard_chunks(len(bounds), world, rank)))
    fail_after = int(os.environ[FAIL_AFTER_CHUNKS]) if os.environ.get(FAIL_AFTER_CHUNKS) else None
    started = time.perf_counter()
    for chunk in progress.chunks:
        name = chunk_name(chunk, len(bounds))
        lo, hi = bounds[chunk]
        inputs = chunk_inputs(dataset, lo, hi)
        if cache.load(name, inputs=inputs) is not None:  # a chunk that does not verify is computed again
            progress.skipped.append(chunk)
            continue
        scored = map_scores(dataset.select(range(lo, hi)), scorer, rows=range(lo, hi), batch_size=batch_size,
                            desc=f"chunk {chunk} (rows {lo}-{hi - 1})")
        cache.save(name, scored, meta={"rows": [lo, hi]}, inputs=inputs)
        progress.scored.append(chunk)
        logger.info("chunk %d (rows %d-%d) of %d scored and saved", chunk, lo, hi - 1, len(bounds))
        if fail_after is not None and len(progress.scored) >= fail_after:
            logger.error("%s=%d: exiting abruptly after chunk %d", FAIL_AFTER_CHUNKS, fail_after, chunk)
            logging.shutdown()
            os._exit(3)
    progress.seconds = time.perf_counter() - started
    logger.info("scored %d chunk(s) in %.1f s; %d were already in the cache: %s", len(progress.scored),
                progress.seconds, len(progress.skipped), progress.skipped)
    return progress


def chunk_inputs(dataset: Any, lo: int, hi: int) -> str:
    """What chunk ``[lo, hi)`` is computed from: those rows of ``dataset``, positions and values."""
    return rows_digest(dataset.select(range(lo, hi)), range(lo, hi))


def gather_chunks(cache: ScoreCache, n_rows: int, chunk_rows: int, dataset: Any = None) -> Any:
    """Every chunk from the cache, in row order, checked to hold exactly its rows (and, given the ``dataset`` they
    were computed from, to verify against its rows): a chunk that does not verify is a ``CacheError`` naming it."""
    import datasets

    bounds = chunk_bounds(n_rows, chunk_rows)
    parts = []
    for chunk, (lo, hi) in enumerate(bounds):
        name = chunk_name(chunk, len(bounds))
        if not cache.has(name):
            raise RuntimeError(f"chunk {chunk} (rows {lo}-{hi - 1}) is missing from {cache.folder}: a process did "
                               "not finish; rerun the same command to score what is missing")
        part, meta = cache.require(name, inputs=chunk_inputs(dataset, lo, hi) if dataset is not None else None)
        if len(part) != hi - lo or meta.get("rows") != [lo, hi]:
            raise RuntimeError(f"chunk {chunk} in {cache.folder} holds {len(part)} rows {meta.get('rows')}, expected "
                               f"rows [{lo}, {hi}); delete that folder and rerun")
        parts.append(part)
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]

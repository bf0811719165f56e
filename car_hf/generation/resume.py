"""Finished generation survives a failure: responses kept on disk, retries counted, one line saying how to resume.

``car-hf generate``, ``car-hf trial`` and ``recipes/generate.py`` save finished chunks (or rounds) in a checkpoint
as they go. Within a chunk, an endpoint that keeps failing for a few rows ends the call with
:class:`~car_hf.core.errors.GenerationError` after the others finished: :func:`keeping_responses` writes those finished
responses into the checkpoint, and the same command run again loads them and asks only for the failed rows.
:func:`failure_line` is the one line the commands print then (failed rows, cause, retries, the re-run command),
and the process exits with :data:`~car_hf.core.errors.EXIT_GENERATION_FAILED`.

Example:
    >>> from car_hf.core.errors import GenerationError
    >>> error = GenerationError("2 of 8 request(s) failed", failed=[6, 7])
    >>> failure_line("car-hf generate", error, "out.checkpoint", "car-hf generate q.jsonl -o out",
    ...              retries="retried 4 request(s): HTTP 503 x4")  # doctest: +NORMALIZE_WHITESPACE
    'car-hf generate: error: generation failed for 2 row(s) (6, 7): 2 of 8 request(s) failed; retried 4 request(s):
    HTTP 503 x4. Finished work is kept in out.checkpoint: run the same command again to generate only what is
    missing: car-hf generate q.jsonl -o out'
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from car_hf._version import __version__
from car_hf.generation.engines import Generation
from car_hf.core.errors import GenerationError
from car_hf.generation.generate import _KEPT, _LOCK, ResponseGenerator
from car_hf.generation.teacher import mask_secrets

logger = logging.getLogger(__name__)

KEPT_FILE = "kept-responses.json"
"""The file of a checkpoint folder holding the responses of calls that failed."""


def default_checkpoint(output: str | os.PathLike) -> Path:
    """The checkpoint folder of a command writing ``output``: beside it, ``<output>.checkpoint``."""
    return Path(str(output).rstrip("/\\") + ".checkpoint")


@contextlib.contextmanager
def keeping_responses(path: str | os.PathLike) -> Iterator[Path]:
    """Keep the responses that calls failing with :class:`GenerationError` generated, across processes: those saved
    in the JSON file ``path`` are loaded on entry (a rerun asks only for the others), and when a
    ``GenerationError`` leaves the block, the responses kept in it (those loaded and not used yet, and those of
    the calls that failed) are saved there (atomically) before it propagates. A clean exit deletes the file: its
    responses are in the results by then.

    Kept responses are keyed by the digest of their generator's cache identity (teacher and every option that
    changes text) and by their prompt, so they are only ever used for the same teacher, options and prompt; a
    file that cannot be read is ignored with a warning (the responses are generated again).
    """
    from car_hf.core.cache import write_json_atomic

    path = Path(path)
    with _LOCK:
        foreign = set(_KEPT)  # kept by other work of this process: not this job's to save
    loaded = _load_kept(path)
    if loaded:
        logger.info("%d response(s) kept from a failed run loaded from %s: they are not requested again", loaded,
                    path)
    try:
        yield path
    except GenerationError:
        with _LOCK:
            entries = [{"generator": d, "prompt": p, "text": g.text, "finish_reason": g.finish_reason,
                        "tokens": g.tokens, "token_ids": g.token_ids} for (d, p), g in _KEPT.items()
                       if (d, p) not in foreign]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"kept_responses": entries, "car_hf_version": __version__})
        raise
    path.unlink(missing_ok=True)


def _load_kept(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        entries = json.loads(path.read_text())["kept_responses"]
        kept = {(e["generator"], e["prompt"]): Generation(
            e["text"], e["finish_reason"], e["tokens"], tuple(e["token_ids"]) if e["token_ids"] is not None else None)
            for e in entries}
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("ignoring the kept responses in %s (%s: %s): they are generated again", path,
                       type(error).__name__, error)
        return 0
    with _LOCK:
        _KEPT.update(kept)
    return len(kept)


def retry_counts(generators: Sequence[Any]) -> Counter[str]:
    """The retries the generators' engines made in this process, by cause, all generators together."""
    return sum((g.retries() for g in generators if isinstance(g, ResponseGenerator)), Counter())


def retry_summary(counts: Counter[str]) -> str | None:
    """One line on retries counted by cause (:func:`retry_counts`, or the difference of two), or None if none."""
    counts = +counts  # drop causes counted zero times
    if not counts:
        return None
    return f"retried {sum(counts.values())} request(s): " + ", ".join(f"{c} x{n}" for c, n in counts.most_common())


def failure_line(command: str, error: GenerationError, checkpoint: str | os.PathLike, rerun: str,
                 retries: str | None = None) -> str:
    """The one line a command prints when generation failed: the failed rows and why, the retries, where the
    finished work is and the command that resumes it (credentials in URLs masked)."""
    rows = ", ".join(str(r) for r in error.failed[:20]) + (" ..." if len(error.failed) > 20 else "")
    failed = f" for {len(error.failed)} row(s) ({rows})" if error.failed else ""
    cause = " ".join(str(error).split())
    return mask_secrets(f"{command}: error: generation failed{failed}: {cause}{'; ' + retries if retries else ''}. "
                        f"Finished work is kept in {checkpoint}: run the same command again to generate only what "
                        f"is missing: {rerun}")

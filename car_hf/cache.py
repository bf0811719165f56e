"""The one score cache: keyed, atomic, resumable.

Scoring a pool costs hours; every long job in car_hf (the adaptive ranking's rounds, ``recipes/score.py``'s
chunks, ``recipes/sft.py``'s scores) saves its finished parts here as it goes, so a killed job resumes
without scoring anything twice, and a changed job never reuses stale values.

* **Key.** :func:`scoring_key` describes what the values depend on: car_hf's version (an upgrade may
  compute losses differently), the scorer (model fingerprints — Hub id + revision, or a content hash of a
  local folder/file — and its :class:`~car_hf.config.CARConfig`), the data's fingerprint and the caller's
  own settings (chunking, order seed ...). Its digest names a folder under the cache root, so the same
  everything is a hit, and a changed version, option, model or data is a miss that recomputes into a new
  folder beside the old one (which is left alone; :meth:`ScoreCache.differences` says what changed).
* **Atomic.** A part is written to a temporary folder and renamed into place: it exists only when complete.
* **Resumable.** :meth:`ScoreCache.names` lists the complete parts; callers skip those.

Example:
    >>> import tempfile
    >>> from datasets import Dataset
    >>> root = tempfile.mkdtemp()
    >>> cache = ScoreCache(root, {"car_hf_version": "1", "scorer": "a", "data": "d"})
    >>> _ = cache.save("round-00001", Dataset.from_dict({"x": [1, 2]}), meta={"rows": [0, 1]})
    >>> cache.names(), cache.load("round-00001")[1]
    (['round-00001'], {'rows': [0, 1]})
    >>> ScoreCache(root, {"car_hf_version": "2", "scorer": "a", "data": "d"}).names()   # another version: a miss
    []
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._version import __version__

logger = logging.getLogger(__name__)

KEY_FILE = "key.json"
META_FILE = "car_hf_part.json"


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def save_dataset_atomic(dataset: Any, final: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> Path:
    """``save_to_disk`` into a temporary folder beside ``final`` (with ``meta`` as JSON), then rename."""
    final = Path(final)
    tmp = final.with_name(f".tmp-{final.name}-{uuid.uuid4().hex[:8]}")
    dataset.save_to_disk(str(tmp))
    if meta is not None:
        write_json_atomic(tmp / META_FILE, dict(meta))
    if final.exists():  # an earlier copy of the same part (same key, so same values)
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def data_fingerprint(dataset: Any) -> str:
    """What identifies a dataset's content: datasets' own fingerprint for file-backed data (it is derived from
    the files and the transforms applied), else a hash of the rows (an in-memory dataset's fingerprint is
    random, so it would never hit across processes)."""
    if dataset.cache_files:
        return dataset._fingerprint
    import pyarrow as pa

    table = dataset.with_format("arrow")[:]  # applies any indices mapping: the rows as they are seen
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.blake2b(sink.getvalue().to_pybytes(), digest_size=16).hexdigest()


def scorer_identity(scorer: Any) -> Any:
    """What a scorer's values depend on: a car_hf transform's ``cache_identity()`` (model fingerprints and its
    configuration, never weights), else the ``datasets`` hash of any other map function."""
    if hasattr(scorer, "cache_identity"):
        return scorer.cache_identity()
    from datasets.fingerprint import Hasher

    return {"hash": Hasher.hash(scorer)}


def scoring_key(scorer: Any, dataset: Any, **settings: Any) -> dict[str, Any]:
    """The key of ``scorer``'s values on ``dataset``: car_hf's version, the scorer, the data, and ``settings``."""
    return {"car_hf_version": __version__, "scorer": scorer_identity(scorer), "data": data_fingerprint(dataset),
            "rows": len(dataset), **settings}


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested keys as dotted names, so a difference names the one option that changed."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class ScoreCache:
    """Parts of a job (datasets, each with a little JSON of metadata) under ``root/<digest of key>/``.

    Args:
        root: the cache folder; several keys live side by side in it.
        key: JSON-able description of everything the values depend on (see :func:`scoring_key`).
    """

    def __init__(self, root: str | os.PathLike, key: Mapping[str, Any]):
        self.root = Path(root)
        self.key = json.loads(json.dumps(dict(key), sort_keys=True, default=str))
        self.digest = hashlib.blake2b(json.dumps(self.key, sort_keys=True).encode(), digest_size=8).hexdigest()
        self.folder = self.root / self.digest
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / KEY_FILE).is_file():
            write_json_atomic(self.folder / KEY_FILE, self.key)
        for stale in self.folder.glob(".tmp-*"):  # parts a killed writer did not finish
            shutil.rmtree(stale, ignore_errors=True)

    def names(self, prefix: str = "") -> list[str]:
        """The complete parts, sorted by name."""
        return sorted(p.name for p in self.folder.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and p.name.startswith(prefix)
                      and (p / "state.json").is_file())

    def has(self, name: str) -> bool:
        return (self.folder / name / "state.json").is_file()

    def load(self, name: str) -> tuple[Any, dict[str, Any]] | None:
        """``(dataset, meta)`` of a complete part, else ``None``."""
        import datasets

        if not self.has(name):
            return None
        path = self.folder / name
        meta = path / META_FILE
        return datasets.load_from_disk(str(path)), json.loads(meta.read_text()) if meta.is_file() else {}

    def save(self, name: str, dataset: Any, meta: Mapping[str, Any] | None = None) -> Path:
        """Write a part atomically; returns its folder."""
        return save_dataset_atomic(dataset, self.folder / name, meta if meta is not None else {})

    def differences(self) -> dict[str, tuple[Any, Any]]:
        """How this key differs from the most recently used other key under ``root`` (empty if none)."""
        others = [p for p in self.root.glob(f"*/{KEY_FILE}") if p.parent != self.folder]
        if not others:
            return {}
        latest = _flatten(json.loads(max(others, key=lambda p: p.parent.stat().st_mtime_ns).read_text()))
        mine = _flatten(self.key)
        return {k: (latest.get(k), mine.get(k)) for k in sorted(set(latest) | set(mine)) if latest.get(k) != mine.get(k)}

    def describe_miss(self) -> str:
        """One line for the log when nothing is cached under this key yet."""
        changed = self.differences()
        if not changed:
            return f"no cached scores under {self.folder}: computing them"
        return (f"no cached scores for this configuration under {self.root} (another one differs in "
                f"{', '.join(changed)}): computing them into {self.folder}")

    def clear(self) -> None:
        """Remove this key's parts (other keys under ``root`` stay)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / KEY_FILE, self.key)

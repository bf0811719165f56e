"""The one score cache: keyed, atomic, resumable, and verified by content.

Scoring a pool costs hours; every long job in car_hf (the adaptive ranking's rounds, ``recipes/score.py``'s and
``recipes/generate.py``'s chunks, the trial's responses and scores, ``recipes/sft.py``'s scores, the pilot's
students and evaluations) saves its finished parts here as it goes, so a killed job resumes without computing
anything twice, and a changed job never reuses stale values.

* **Key.** :func:`scoring_key` describes what the values depend on: car_hf's version (an upgrade may
  compute losses differently), the scorer (model fingerprints — Hub id + revision, or a content hash of a
  local folder/file — and its :class:`~car_hf.core.config.CARConfig`), the data's fingerprint and the caller's
  own settings (chunking, order seed ...). Its digest names a folder under the cache root, so the same
  everything is a hit, and a changed version, option, model or data is a miss that recomputes into a new
  folder beside the old one (which is left alone; :meth:`ScoreCache.differences` says what changed).
* **Atomic.** A part is written to a temporary folder and renamed into place: it exists only when complete.
* **Verified.** A part records the key and name it was saved under, a digest of the inputs it was computed
  from (the caller's: e.g. :func:`rows_digest` of the rows it answered or scored), a digest of each of its
  data files (and of any folder it vouches for, such as a trained model), all sealed by a digest of the record.
  :meth:`ScoreCache.load` reuses a part only when all of them match: a part copied from another key or name,
  computed from other inputs, with a truncated, emptied, edited or replaced file, or with a broken record is
  never reused — it is reported with one warning naming its folder and why, and the caller computes it again
  (where that is impossible, :meth:`ScoreCache.require` raises one :class:`~car_hf.core.errors.CacheError` line).
* **Resumable.** :meth:`ScoreCache.names` lists the complete parts; callers skip those that load.

Example:
    >>> import tempfile
    >>> from datasets import Dataset
    >>> root = tempfile.mkdtemp()
    >>> cache = ScoreCache(root, {"car_hf_version": "1", "scorer": "a", "data": "d"})
    >>> rows = Dataset.from_dict({"prompt": ["hi", "bye"]})
    >>> _ = cache.save("round-00001", rows.add_column("x", [1, 2]), meta={"rows": [0, 1]}, inputs=rows_digest(rows))
    >>> cache.names(), cache.load("round-00001", inputs=rows_digest(rows))[1]
    (['round-00001'], {'rows': [0, 1]})
    >>> other = Dataset.from_dict({"prompt": ["hi", "hello"]})
    >>> cache.load("round-00001", inputs=rows_digest(other)) is None   # other inputs: never reused (a warning)
    True
    >>> ScoreCache(root, {"car_hf_version": "2", "scorer": "a", "data": "d"}).names()   # another version: a miss
    []
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from car_hf._version import __version__
from car_hf.core.errors import CacheError

logger = logging.getLogger(__name__)

KEY_FILE = "key.json"
META_FILE = "car_hf_part.json"
INTEGRITY = "_integrity"
"""The entry of a part's record that holds what :meth:`ScoreCache.load` verifies (reserved: not a meta key)."""

Inputs = Any
"""What a part was computed from: any JSON value (a digest, or a dict of digests), or a function of the part's
own meta giving it (for parts whose rows are named in their meta, such as the adaptive ranking's rounds)."""


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def file_digests(folder: str | os.PathLike, skip: Iterable[str] = ()) -> dict[str, str]:
    """blake2b of each top-level file of ``folder`` by name (hidden files and ``skip`` left out). A model folder's
    top level is what ``from_pretrained`` reads: its ``checkpoint-*`` subfolders do not count."""
    digests = {}
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.name not in skip:
            digest = hashlib.blake2b(digest_size=16)
            with open(path, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
            digests[path.name] = digest.hexdigest()
    return digests


def code_digest(obj: Any) -> str:
    """A short hash of a function's (or a callable object's class's) source and its state, for cache keys: editing
    a grader or an answer extractor changes it, renaming nothing does.

    Example:
        >>> def grade(text): return float(text == "4")
        >>> code_digest(grade) == code_digest(grade), len(code_digest(grade))
        (True, 16)
    """
    target = obj if inspect.isfunction(obj) or inspect.ismethod(obj) else type(obj)
    try:
        source = inspect.getsource(target)
    except (OSError, TypeError):  # defined interactively: its code object stands in
        source = repr(getattr(target, "__code__", target))
    state = "" if target is obj else json.dumps(vars(obj) if hasattr(obj, "__dict__") else repr(obj), default=str,
                                                 sort_keys=True)
    return hashlib.blake2b((source + state).encode(), digest_size=8).hexdigest()


def rows_digest(dataset: Any, rows: Iterable[int] | None = None, columns: Iterable[str] | None = None) -> str:
    """The identity of some rows: their positions in the caller's data (``rows``, default ``0..n-1``) and their
    values (``columns``, default all; column order and the files' layout do not count), for a part's ``inputs``.

    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"prompt": ["a", "b"], "n": [1, 2]})
    >>> rows_digest(ds) == rows_digest(ds.select_columns(["n", "prompt"])) != rows_digest(ds, rows=[4, 5])
    True
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(list(rows) if rows is not None else len(dataset)).encode())
    data = dataset.select_columns(list(columns)) if columns is not None else dataset
    for batch in data.with_format(None).iter(batch_size=1024):
        digest.update(json.dumps(batch, sort_keys=True, default=str, ensure_ascii=False).encode())
    return digest.hexdigest()


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


def _json(value: Any) -> Any:
    """``value`` as it reads back from a JSON file, so what is recorded compares equal to what is expected."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _seal(record: Mapping[str, Any]) -> str:
    """The digest of a part's record (its meta and integrity entries, the seal itself left out)."""
    body = {k: v for k, v in record.items() if k != INTEGRITY} | {
        INTEGRITY: {k: v for k, v in record[INTEGRITY].items() if k != "seal"}}
    return hashlib.blake2b(json.dumps(body, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def _files_problem(folder: Path, recorded: Mapping[str, str], what: str) -> str | None:
    """Why ``folder``'s files are not those ``recorded`` (None when every recorded file is there, unchanged)."""
    if not folder.is_dir():
        return f"{what} {folder} is missing"
    present = file_digests(folder, skip=[META_FILE])
    for name, digest in recorded.items():
        if name not in present:
            return f"{what} file {name} is missing"
        if present[name] != digest:
            return f"{what} file {name} is not the one it was saved with (truncated, emptied, edited or replaced)"
    return None


def _inputs_problem(recorded: Any, expected: Any) -> str | None:
    if recorded == expected:
        return None
    if isinstance(recorded, dict) and isinstance(expected, dict):
        changed = sorted(k for k in set(recorded) | set(expected) if recorded.get(k) != expected.get(k))
        return f"it was computed from other inputs (differing in {', '.join(changed)})"
    return "it was computed from other inputs (another part's rows, or changed rows)"


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
        """The complete parts, sorted by name (listed whether or not they verify: :meth:`load` checks)."""
        return sorted(p.name for p in self.folder.iterdir()
                      if not p.name.startswith(".") and p.name.startswith(prefix) and self.has(p.name))

    def has(self, name: str) -> bool:
        """Whether a part of that name was completed (its folder holds datasets' files or car_hf's record)."""
        path = self.folder / name
        return (path / "state.json").is_file() or (path / META_FILE).is_file()

    def load(self, name: str, *, inputs: Inputs = None) -> tuple[Any, dict[str, Any]] | None:
        """``(dataset, meta)`` of a complete part that verifies (``inputs``, when given, is what the caller expects
        it to have been computed from); None when there is no such part, or, with a warning naming its folder and
        why, when it does not verify: the caller computes it again (and :meth:`save` replaces it)."""
        if not self.has(name):
            return None
        opened = self._open(name, inputs)
        if isinstance(opened, str):
            logger.warning("cache part %s is not reused: %s; computing it again", self.folder / name, opened)
            return None
        return opened

    def require(self, name: str, *, inputs: Inputs = None) -> tuple[Any, dict[str, Any]]:
        """:meth:`load` for callers that cannot compute a part themselves: a missing or unverified part is one
        :class:`~car_hf.core.errors.CacheError` line naming its folder and what to do."""
        opened = self._open(name, inputs) if self.has(name) else "it is missing (a process did not finish)"
        if isinstance(opened, str):
            raise CacheError(f"cache part {self.folder / name} cannot be used: {opened}; rerun the same command to "
                             "compute it again (or delete that folder)")
        return opened

    def _open(self, name: str, inputs: Inputs) -> tuple[Any, dict[str, Any]] | str:
        """The part's ``(dataset, meta)`` when everything it recorded matches, else why not."""
        import datasets

        path = self.folder / name
        try:
            record = json.loads((path / META_FILE).read_text())
            integrity = record[INTEGRITY]
            sealed = integrity["seal"] == _seal(record)
        except FileNotFoundError:
            return f"it has no {META_FILE} (not written by this version of car_hf)"
        except (OSError, UnicodeDecodeError, ValueError) as error:
            return f"its {META_FILE} is unreadable ({type(error).__name__}: {str(error)[:120]})"
        except (KeyError, TypeError):
            return f"its {META_FILE} holds no integrity record (written by an older car_hf)"
        meta = {k: v for k, v in record.items() if k != INTEGRITY}
        if not sealed:
            return f"its {META_FILE} was edited after it was saved"
        if integrity["key"] != self.digest or integrity["name"] != name:
            return f"it was saved as part {integrity['name']!r} under key {integrity['key']}: copied from elsewhere"
        if inputs is not None:
            expected = _json(inputs(meta) if callable(inputs) else inputs)
            if (why := _inputs_problem(integrity["inputs"], expected)) is not None:
                return why
        for relative, recorded in [(".", integrity["files"]), *integrity["attached"].items()]:
            folder, what = (path, "data") if relative == "." else (self.folder / relative, "attached folder")
            if (why := _files_problem(folder, recorded, what)) is not None:
                return why
        try:
            return datasets.load_from_disk(str(path)), meta
        except Exception as error:  # the files are those saved, so unexpected; still, never a raw traceback
            return f"datasets cannot read it ({type(error).__name__}: {str(error)[:120]})"

    def save(self, name: str, dataset: Any, meta: Mapping[str, Any] | None = None, *, inputs: Inputs = None,
             attached: Iterable[str | os.PathLike] = ()) -> Path:
        """Write a part atomically, with ``meta``, the ``inputs`` it was computed from (a JSON value: see
        :func:`rows_digest`) and the digests of its files and of the ``attached`` folders (e.g. a trained model
        beside it, under this key's folder), which :meth:`load` verifies; returns its folder."""
        meta = dict(meta or {})
        if INTEGRITY in meta:
            raise ValueError(f"{INTEGRITY!r} is reserved in a cache part's meta")
        final = self.folder / name
        tmp = final.with_name(f".tmp-{final.name}-{uuid.uuid4().hex[:8]}")
        dataset.save_to_disk(str(tmp))
        record = _json(meta) | {INTEGRITY: {
            "key": self.digest, "name": name, "inputs": _json(inputs), "files": file_digests(tmp),
            "attached": {os.path.relpath(folder, self.folder): file_digests(folder) for folder in attached}}}
        record[INTEGRITY]["seal"] = _seal(record)
        write_json_atomic(tmp / META_FILE, record)
        if final.exists():  # an earlier copy of the same part (an invalid one, or the same values)
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final

    def differences(self) -> dict[str, tuple[Any, Any]]:
        """How this key differs from the most recently used other key under ``root`` (empty if none)."""
        others = [p for p in self.root.glob(f"*/{KEY_FILE}") if p.parent != self.folder]
        if not others:
            return {}
        try:
            latest = _flatten(json.loads(max(others, key=lambda p: p.parent.stat().st_mtime_ns).read_text()))
        except (OSError, ValueError):  # another key's broken key.json: it only served this message
            return {}
        mine = _flatten(self.key)
        return {k: (latest.get(k), mine.get(k)) for k in sorted(set(latest) | set(mine))
                if latest.get(k) != mine.get(k)}

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

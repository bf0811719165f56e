"""Loading and saving data for the CLI and the recipes: files, saved datasets, Hub ids; sampling; score columns.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from car_hf.core.data import load_data, save_data, read_config
    >>> folder = Path(tempfile.mkdtemp())
    >>> rows = [{"instruction_id": i, "generator": g, "output": f"{g} says {i}"} for i in range(3) for g in "abc"]
    >>> _ = (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
    >>> ds = load_data(str(folder / "rows.jsonl"), generators=["a", "c"], max_instructions=2)
    >>> [(row["instruction_id"], row["generator"]) for row in ds]  # the same 2 instructions for each generator
    [(0, 'a'), (0, 'c'), (1, 'a'), (1, 'c')]
    >>> path = save_data(ds, str(folder / "kept.parquet"), {"beta": 1.0})
    >>> read_config(str(path))
    {'beta': 1.0}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import datasets
from datasets.exceptions import DatasetNotFoundError

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _builder(path: Path) -> str | None:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".xz", ".zst")]
    return FILE_BUILDERS.get(suffixes[-1]) if suffixes else None


def _load_hub_dataset(source: str, split: str) -> datasets.Dataset:
    """``source`` as a Hub dataset id; unreachable or unknown → FileNotFoundError saying what to do."""
    path = Path(source)
    if path.is_absolute() or source.startswith(".") or source.count("/") > 1 or _builder(path) is not None:
        raise FileNotFoundError(f"no such file or folder: {source!r}")  # a path, not a Hub id: don't ask the Hub
    try:
        return datasets.load_dataset(source, split=split)
    except (ConnectionError, DatasetNotFoundError) as error:  # offline, no network, or no such dataset
        why = "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)" if datasets.config.HF_HUB_OFFLINE \
            else f"{type(error).__name__}: {error}"
        raise FileNotFoundError(
            f"{source!r} is not a local file or folder, and the Hub dataset {source!r} could not be read ({why}). "
            "Pass a local .jsonl/.parquet/.csv file or save_to_disk folder, or check the id and allow Hub access "
            "(unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE)"
        ) from error


def load_data(
    source: str,
    *,
    split: str = "train",
    generators: Sequence[str] | None = None,
    by: str = "generator",
    max_instructions: int | None = None,
    instruction_column: str = "instruction_id",
) -> datasets.Dataset:
    """Load a JSON/JSONL(.gz)/parquet/CSV file, a ``save_to_disk`` folder, or a Hub dataset id.

    ``generators`` keeps only those generators' rows (unknown names are an error, listing those
    present); ``max_instructions`` keeps the first N distinct values of ``instruction_column`` (or of
    ``instruction`` when that column is absent), in data order, so every generator keeps the same
    instructions and rankings stay paired.
    """
    path = Path(source)
    saved = ("state.json", "dataset_dict.json")
    if path.is_dir() and any((path / name).exists() for name in saved):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    elif path.exists():
        builder = _builder(path)
        if builder is None:
            raise ValueError(f"cannot tell the format of {source!r}: use .json, .jsonl(.gz), .parquet or .csv")
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    else:
        ds = _load_hub_dataset(source, split)
    if generators:
        if by not in ds.column_names:
            raise KeyError(f"column {by!r} is missing; the dataset has columns {ds.column_names}")
        present = set(ds.unique(by))
        unknown = [g for g in generators if g not in present]
        if unknown:
            raise ValueError(f"generator(s) {unknown} not in column {by!r}; present: {sorted(present)}")
        wanted = set(generators)
        ds = ds.filter(lambda values: [v in wanted for v in values], input_columns=by, batched=True)
    if max_instructions is not None:
        column = instruction_column if instruction_column in ds.column_names else "instruction"
        if column not in ds.column_names:
            raise KeyError(f"max_instructions needs column {instruction_column!r} or 'instruction'; "
                           f"columns: {ds.column_names}")
        keep = set(list(dict.fromkeys(ds[column]))[:max_instructions])
        ds = ds.filter(lambda values: [v in keep for v in values], input_columns=column, batched=True)
    return ds


def _config_path(path: Path) -> Path:
    return path / "car_config.json" if path.is_dir() else path.with_name(path.name + ".car_config.json")


def save_data(ds: datasets.Dataset, output: str, config: Mapping[str, Any] | None = None) -> Path:
    """Write ``ds`` as parquet (``.parquet``), JSON lines (``.jsonl``) or a ``save_to_disk`` folder.

    ``config`` (how the columns were scored) goes beside it as ``car_config.json`` (inside a folder,
    ``<file>.car_config.json`` next to a file), so a later ``car-hf rank`` or ``push`` can record it.
    """
    path = Path(output)
    if path.suffix == ".parquet":
        ds.to_parquet(str(path))
    elif path.suffix in (".jsonl", ".json"):
        ds.to_json(str(path), lines=True)
    else:
        ds.save_to_disk(str(path))
    if config:
        _config_path(path).write_text(json.dumps(dict(config), indent=2, default=str) + "\n")
    return path


def read_config(source: str) -> dict[str, Any]:
    """The scoring configuration saved beside data by :func:`save_data` (empty if none)."""
    path = _config_path(Path(source))
    return json.loads(path.read_text()) if path.exists() else {}


class RowNumbers:
    """A car_hf transform applied to a subset (``dataset.select(rows)``), naming the FULL dataset's rows in
    errors: ``rows[i]`` is the original number of the subset's row ``i``."""

    def __init__(self, transform: Any, rows: Sequence[int]):
        self.transform, self.rows = transform, list(rows)

    def __call__(self, batch: Mapping[str, Sequence[Any]], indices: Sequence[int], *rest: Any) -> Any:
        return self.transform(batch, [self.rows[i] for i in indices], *rest)


def map_scores(
    ds: datasets.Dataset,
    transform: Any,
    *,
    rows: Sequence[int] | None = None,
    batch_size: int = 64,
    num_proc: int | None = None,
    desc: str | None = None,
) -> datasets.Dataset:
    """Apply a car_hf transform the way the CLI, the adaptive ranking and the recipes do: batched, with
    dataset row numbers in error messages (``rows``: the original numbers when ``ds`` is a subset), and
    one worker per GPU rank when ``num_proc`` > 1. A 0-row ``ds`` gets the transform's columns, typed
    (``Dataset.map`` never calls a function on no rows)."""
    if len(ds) == 0 and hasattr(transform, "score_features"):
        features = transform.score_features(ds.column_names)
        ds = ds.remove_columns([c for c in features if c in ds.column_names])
        for name, feature in features.items():
            ds = ds.add_column(name, [], feature=feature)
        return ds
    return ds.map(
        RowNumbers(transform, rows) if rows is not None else transform, batched=True, batch_size=batch_size,
        with_indices=True, with_rank=bool(num_proc and num_proc > 1), num_proc=num_proc, desc=desc or "Scoring",
    )

"""Publishing CAR-scored datasets and CAR-selected models to the Hugging Face Hub, with cards a reader can trust.

A dataset push is one folder, one commit:

* :func:`write_dataset_folder` writes the exact folder that would be uploaded — Parquet shards in the
  layout ``Dataset.push_to_hub`` produces (``data/{split}-00000-of-00001.parquet``), ``README.md``
  (the card from :func:`dataset_card`), the ranking plot, ``leaderboard.csv`` and ``leaderboard.md``.
  ``datasets.load_dataset(folder)`` reads it back.
* :func:`push_dataset` writes that same folder (or, with ``dry_run=<folder>``, only writes it) and
  sends it in a single commit, which also deletes ``data/`` files the new upload does not contain
  (shards of an earlier, bigger push). What lands on the Hub is byte for byte the dry-run folder;
  ``Dataset.push_to_hub`` is not used because it writes its own README in a separate commit.
* :func:`push_model` writes a model card into a trained model's folder (merged into a card the
  trainer wrote, see :func:`push_model`) and uploads the folder in one commit.

Failures: HTTP 5xx/429 answers and dropped connections are retried ``max_retries`` times with
exponential backoff (``huggingface_hub`` itself retries the pre-upload call but not the commit),
then a :class:`PublishError` names the step that failed and where the local files are; a rejected
token (401) or a refused write (403) raises :class:`HubAuthError` at once. No message, log line,
card or file written here ever contains the token.

The Hub address comes from ``huggingface_hub.constants.ENDPOINT`` (``HF_ENDPOINT``).

Example:
    >>> from datasets import Dataset
    >>> from car_hf.hub import write_dataset_folder
    >>> ds = Dataset.from_dict({"generator": ["a", "b"], "reward": [1.0, 2.0], "base_loss": [1.0, 0.5],
    ...                         "base_loss_tokens": [9, 7], "base_loss_truncated": [False, False],
    ...                         "car": [0.5, 1.6]})
    >>> folder = write_dataset_folder(ds, "/tmp/car_hf_doctest_push", scoring_config={"beta": 1.0})
    >>> sorted(p.name for p in folder.rglob("*") if p.is_file())
    ['README.md', 'train-00000-of-00001.parquet']
"""

from __future__ import annotations

import logging
import math
import numbers
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pandas as pd
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict
from datasets import config as datasets_config
from datasets.arrow_writer import get_writer_batch_size_from_data_size, get_writer_batch_size_from_features
from datasets.features.features import require_decoding
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from datasets.utils.py_utils import convert_file_size_to_int
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    DatasetCard,
    DatasetCardData,
    HfApi,
    ModelCard,
    ModelCardData,
    constants,
    get_token,
)
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, yaml_dump

from .errors import HubAuthError, PublishError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The scoring configuration every dataset card records (``leaderboard.attrs["car"]``), in this order.
CONFIG_KEYS = (
    "base_model",
    "base_model_revision",
    "reward_model",
    "reward_model_revision",
    "reward_column",
    "beta",
    "reward_transform",
    "loss_definition",
    "truncation",
    "car_hf_version",
)
DATASET_TAGS = ["car", "instruction-tuning", "car_hf"]
MODEL_TAGS = ["car", "car_hf", "sft", "trl"]
DATA_DIR = "data"
# Files of a model folder never uploaded: the ones Trainer.push_to_hub skips, plus git/cache folders.
MODEL_IGNORE_PATTERNS = ["_*", "checkpoint-*", *DEFAULT_IGNORE_PATTERNS]
# A model card's car_hf section sits between these markers, so a later push replaces only that part.
CARD_BEGIN = "<!-- car_hf:begin -->"
CARD_END = "<!-- car_hf:end -->"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
RETRY_BASE_SECONDS = 2.0  # first wait; doubles per retry, capped at RETRY_MAX_SECONDS
RETRY_MAX_SECONDS = 30.0

CITATION = """@article{xu2024stronger,
  title   = {Stronger Models are NOT Stronger Teachers for Instruction Tuning},
  author  = {Xu, Zhangchen and Jiang, Fengqing and Niu, Luyao and Lin, Bill Yuchen and Poovendran, Radha},
  journal = {arXiv preprint arXiv:2411.07133},
  year    = {2024},
  url     = {https://arxiv.org/abs/2411.07133}
}"""

CAR_PARAGRAPH = (
    "The **Compatibility-Adjusted Reward** (CAR; Xu et al., 2024, [arXiv:2411.07133](https://arxiv.org/abs/2411.07133)) "
    "ranks response generators (teacher models) by how useful their responses are for instruction-tuning a given "
    "base model: `CAR = r / (1 + β · L)`, where `r` is the mean reward-model score of a generator's responses "
    "(quality) and `L` is their mean loss under the base model to be tuned (compatibility: a high loss means "
    "responses the student finds hard to fit). The paper finds that stronger teachers are not always better ones, "
    "and that CAR predicts which generator's responses tune a base model best more reliably than reward alone."
)


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------
def _splits(dataset: Dataset | DatasetDict) -> dict[str, Dataset]:
    """Split name → Dataset; a lone Dataset is its own split (``train`` unless it has a split name)."""
    if isinstance(dataset, DatasetDict):
        splits = dict(dataset)
    elif isinstance(dataset, Dataset):
        splits = {str(dataset.split) if dataset.split is not None else "train": dataset}
    else:
        raise TypeError(f"expected a datasets.Dataset or DatasetDict, got {type(dataset).__name__}")
    for name, split in splits.items():
        if not re.fullmatch(r"\w+(\.\w+)*", name):  # what push_to_hub accepts as a split name
            raise ValueError(f"split name {name!r} cannot be used in a data file name")
        media = [col for col, feature in split.features.items() if require_decoding(feature)]
        if media:
            raise ValueError(
                f"columns {media} hold media (Image/Audio/Video); car_hf.hub publishes text datasets, "
                "use Dataset.push_to_hub for these"
            )
    first = next(iter(splits.values()))
    if any(split.features != first.features for split in splits.values()):
        raise ValueError("all splits must have the same columns and types to be published as one dataset")
    return splits


def _plain(value: Any) -> Any:
    """numpy scalars → Python scalars (also inside lists and dicts), so YAML and markdown see plain values."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value.item() if hasattr(value, "item") and not isinstance(value, str) else value


def _scoring_config(leaderboard: pd.DataFrame | None, scoring_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The leaderboard's ``attrs["car"]`` updated by ``scoring_config``; every CONFIG_KEYS key present."""
    merged = dict(getattr(leaderboard, "attrs", {}).get("car") or {})
    merged.update(scoring_config or {})
    ordered = {key: _plain(merged.get(key)) for key in CONFIG_KEYS}
    ordered.update({key: _plain(value) for key, value in merged.items() if key not in ordered})
    return ordered


def _size_category(n: int) -> str:
    """The Hub's ``size_categories`` value for ``n`` rows: "n<1K", "1K<n<10K", ..., "n>1T"."""
    names = ["1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T"]
    if n < 1_000:
        return "n<1K"
    for low, high, bound in zip(names, names[1:], (10 ** e for e in range(4, 13))):
        if n < bound:
            return f"{low}<n<{high}"
    return "n>1T"


def _is_hub_id(name: Any) -> bool:
    """Spelled like a Hub repo id: ``"org/name"`` or ``"name"``."""
    return isinstance(name, str) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None


def _link(name: Any, repo_type: str = "model") -> str:
    """A markdown link to a Hub repo, or the name as code when it is a local path rather than a Hub id."""
    if not _is_hub_id(name) or Path(name).exists():
        return f"`{name}`"
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"[`{name}`]({constants.ENDPOINT}/{prefix}{name})"


def _decimals(values: list[Any]) -> int:
    """Decimals that give the column's largest value four significant digits (0 to 4)."""
    finite = [abs(v) for v in values if isinstance(v, float) and math.isfinite(v)]
    biggest = max(finite, default=0.0)
    return 4 if biggest == 0 else max(0, min(4, 3 - math.floor(math.log10(biggest))))


def _text(value: Any) -> str:
    """A value as it reads in a markdown table cell (None/NaN as n/a, pipes escaped)."""
    value = _plain(value)
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _cell(value: Any, decimals: int) -> str:
    """A leaderboard number with the column's decimals (integers as integers)."""
    value = _plain(value)
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or math.isnan(value):
        return _text(value)
    if isinstance(value, numbers.Integral):
        return str(value)
    fixed = f"{value:.{decimals}f}"
    # A tiny value next to big ones would print as 0.0000: keep three significant digits instead.
    return fixed if value == 0 or float(fixed) != 0 else f"{value:.3g}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _key_value_table(mapping: Mapping[str, Any], header: tuple[str, str] = ("name", "value")) -> str:
    rows = [[f"`{key}`", _text(value)] for key, value in mapping.items()]
    return _markdown_table(list(header), rows)


# --------------------------------------------------------------------------------------------------
# Dataset card
# --------------------------------------------------------------------------------------------------
LEADERBOARD_ORDER = ["rank", "generator", "n", "n_scored", "reward", "base_loss", "car", "car CI", "p_best",
                     "ppl", "ifd", "response_tokens"]


def _leaderboard_columns(leaderboard: pd.DataFrame) -> list[str]:
    """Columns of the markdown table: the generator column first, ``car_low/high`` folded into "car CI".

    The other bootstrap bounds (``reward_low`` ... ``rank_high``) would double the width: they stay in
    ``leaderboard.csv``.
    """
    by = leaderboard.attrs.get("car", {}).get("by", "generator")
    present = [c for c in leaderboard.columns if not re.search(r"_(low|high)$", c)]
    if {"car_low", "car_high"} <= set(leaderboard.columns):
        present.append("car CI")
    order = [by if c == "generator" else c for c in LEADERBOARD_ORDER]
    return [c for c in order if c in present] + [c for c in present if c not in order]


def leaderboard_markdown(leaderboard: pd.DataFrame) -> str:
    """The leaderboard as a markdown table: floats to four significant digits, CI as ``[low, high]``.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"generator": ["a"], "n": [3], "n_scored": [3], "reward": [2.0],
        ...                   "base_loss": [1.0], "car": [1.0], "car_low": [0.8], "car_high": [1.25], "rank": [1]})
        >>> print(leaderboard_markdown(t))
        | rank | generator | n | n_scored | reward | base_loss | car | car CI |
        |---|---|---|---|---|---|---|---|
        | 1 | a | 3 | 3 | 2.000 | 1.000 | 1.000 | [0.800, 1.250] |
    """
    columns = _leaderboard_columns(leaderboard)
    records = leaderboard.to_dict("records")
    decimals = {c: _decimals([_plain(r[c]) for r in records]) for c in leaderboard.columns}
    if "car CI" in columns:
        decimals["car"] = _decimals([_plain(r[c]) for r in records for c in ("car", "car_low", "car_high")])

    def cell(record: dict[str, Any], column: str) -> str:
        if column == "car CI":
            d = decimals["car"]
            return f"[{_cell(record['car_low'], d)}, {_cell(record['car_high'], d)}]"
        return _cell(record[column], decimals[column])

    return _markdown_table(columns, [[cell(record, c) for c in columns] for record in records])


def _car_is_from_means(leaderboard: pd.DataFrame, beta: Any) -> bool:
    """Whether the leaderboard's ``car`` is ``reward / (1 + β·base_loss)`` of its own mean columns."""
    if not isinstance(beta, numbers.Real) or not {"reward", "base_loss", "car"} <= set(leaderboard.columns):
        return False
    for r in leaderboard.to_dict("records"):
        expected = r["reward"] / (1 + beta * r["base_loss"])
        if not math.isclose(r["car"], expected, rel_tol=1e-6, abs_tol=1e-9):
            return False
    return True


def _leaderboard_section(leaderboard: pd.DataFrame, config: Mapping[str, Any], plot_filename: str | None) -> str:
    beta = config.get("beta")
    if _car_is_from_means(leaderboard, beta):
        car_text = f"the generator's CAR, `reward / (1 + β · base_loss)` of the two means, β = {beta}"
    else:
        car_text = "the generator's CAR as computed by car_hf (see the scoring configuration)"
    level = config.get("confidence")
    interval = f"{100 * level:g}% bootstrap" if isinstance(level, numbers.Real) else "bootstrap"
    resamples = f", {config['n_bootstrap']} resamples" if config.get("n_bootstrap") else ""
    paired = f", rows paired across generators by `{config['paired_by']}`" if config.get("paired_by") else ""
    notes = {
        "rank": "1 = highest CAR",
        "n": "rows from this generator",
        "n_scored": "rows with a finite reward and base_loss; the others are left out of the means",
        "reward": "mean reward of the scored rows, after the reward transform",
        "base_loss": "mean `base_loss` (nats per response token) of the scored rows",
        "car": car_text,
        "car CI": f"{interval} confidence interval of `car`{resamples}{paired}",
        "p_best": "share of bootstrap resamples in which this generator has the highest CAR",
        "ppl": "exp(mean `base_loss`): perplexity under the base model (the paper's PPL-Self baseline)",
        "ifd": "mean `ifd` (Instruction-Following Difficulty, see below)",
        "response_tokens": "mean `base_loss_tokens`: response length in base-model tokens",
    }
    columns = _leaderboard_columns(leaderboard)
    legend = "\n".join(f"- `{c}`: {text}" for c, text in notes.items() if c in columns)
    stems = dict.fromkeys(re.sub(r"_(low|high)$", "", c) for c in leaderboard.columns if re.search(r"_(low|high)$", c))
    others = [f"`{stem}_low/high`" for stem in stems if stem != "car"]
    files = "The full table is in `leaderboard.csv`; the one above is `leaderboard.md`."
    if others:
        files += f" The CSV also has the intervals {', '.join(others)}."
    parts = ["## Leaderboard", leaderboard_markdown(leaderboard), legend, files]
    if plot_filename:
        parts.append(f"![ranking]({plot_filename})")
    return "\n\n".join(parts)


def _config_section(config: Mapping[str, Any]) -> str:
    explain = {
        "base_model": "base model whose loss measures compatibility",
        "base_model_revision": "its revision",
        "reward_model": "reward model that scored the responses (None: rewards read from a column)",
        "reward_model_revision": "its revision",
        "reward_column": "column the rewards were read from, when no reward model was run",
        "beta": "β, the weight of compatibility against quality",
        "reward_transform": "how rewards were mapped before the ratio (CAR needs positive rewards)",
        "loss_definition": "what base_loss measures",
        "truncation": "how long examples were handled",
        "car_hf_version": "car_hf version that scored the data",
        "by": "column naming the generator of each row",
        "loss_column": "column the leaderboard's losses were read from",
        "confidence": "level of the bootstrap intervals",
        "n_bootstrap": "bootstrap resamples",
        "paired_by": "column pairing rows across generators in the bootstrap",
        "seed": "bootstrap seed",
        "min": "minmax transform: pool minimum reward",
        "max": "minmax transform: pool maximum reward",
        "offset": "shift transform: amount added to every reward",
    }
    # Revisions may be legitimately absent (local models) and only one reward source is set.
    optional = ("base_model_revision", "reward_model", "reward_model_revision", "reward_column")

    def shown(key: str, value: Any) -> str:
        return _text(value) if value is not None else "none" if key in optional else "**not recorded**"

    rows = [[f"`{key}`", shown(key, value), explain.get(key, "")] for key, value in config.items()]
    text = "## Scoring configuration\n\nAlso in this card's YAML metadata under `car_hf`.\n\n"
    text += _markdown_table(["key", "value", "meaning"], rows)
    missing = [key for key in CONFIG_KEYS if config.get(key) is None and key not in optional]
    if missing:
        text += (f"\n\n> **Warning:** the scoring configuration does not record {', '.join(missing)}; "
                 "the scores cannot be reproduced exactly from this card.")
    return text


def _stats(splits: Mapping[str, Dataset]) -> dict[str, int]:
    """Row counts the glossary reports: total, truncated, and missing (NaN or null) per score column."""
    stats = {"rows": sum(len(s) for s in splits.values())}
    for split in splits.values():
        present = [c for c in ("reward", "base_loss", "car", "ifd", "base_loss_truncated") if c in split.column_names]
        table = split.select_columns(present).with_format("arrow")[:]
        for column in present:
            values = table[column]
            if column == "base_loss_truncated":
                count = pc.sum(values).as_py() or 0
            else:
                count = values.null_count + (pc.sum(pc.is_nan(values)).as_py() or 0)
            stats[column] = stats.get(column, 0) + count
    return stats


def _reward_source(config: Mapping[str, Any]) -> str:
    if config.get("reward_model"):
        return f"reward model {_link(config['reward_model'])}"
    if config.get("reward_column"):
        return f"column `{config['reward_column']}`"
    return "a source that was not recorded"


def _glossary_section(columns: list[str], config: Mapping[str, Any], stats: Mapping[str, int]) -> str:
    beta = config.get("beta")
    reward_source = _reward_source(config)
    truncation = config.get("truncation") or "the truncation rule was not recorded"
    base = _link(config.get("base_model")) if config.get("base_model") else "the base model"
    rows = stats["rows"]

    def missing(column: str) -> str:
        return f" Missing (NaN) in {stats[column]} of {rows} rows." if column in stats else ""

    definitions = {
        "reward": (
            "float", f"Quality score of the response from {reward_source}, in the scorer's own units (not "
            "comparable across reward models). NaN when the response could not be scored." + missing("reward")),
        "base_loss": (
            "float", f"Mean negative log-likelihood of the response tokens under {base}, in nats per token "
            f"(natural log; perplexity = exp(base_loss)). {config.get('loss_definition') or ''} NaN when no "
            "response token was scored (`base_loss_tokens` = 0: an empty response, or truncation removed all of "
            "it)." + missing("base_loss")),
        "base_loss_tokens": (
            "int", "Number of response tokens `base_loss` averages over, after truncation."),
        "base_loss_truncated": (
            "bool", (f"True when the example exceeded the token cap and was cut on the right, so `base_loss` "
                     f"covers only the first `base_loss_tokens` response tokens: {truncation}. "
                     f"Truncated rows: {stats.get('base_loss_truncated', 0)} of {rows}.")),
        "car": (
            "float", f"Compatibility-Adjusted Reward of the row: `t(reward) / (1 + β · base_loss)` with β = {beta} "
            f"and t the reward transform `{config.get('reward_transform') or 'not recorded'}` (`raise`: rewards as "
            "they are, negative ones refused; `sigmoid`: 1 / (1 + exp(-reward))). NaN when `reward` or `base_loss` "
            "is NaN." + missing("car")),
        "base_loss_unconditioned": (
            "float", ("Mean NLL (nats per token) of the same response tokens with the instruction removed "
                      "(only a start token before the response).")),
        "ifd": (
            "float", "Instruction-Following Difficulty (Li et al., 2023): `base_loss / base_loss_unconditioned`; "
            "above 1 the instruction makes the response harder to predict. NaN when either loss is NaN or the "
            "unconditioned loss is 0." + missing("ifd")),
    }
    table = _markdown_table(
        ["column", "type", "definition"],
        [[f"`{c}`", kind, text.strip()] for c, (kind, text) in definitions.items() if c in columns],
    )
    return "## Columns added by car_hf\n\nAll other columns are the source data's, unchanged.\n\n" + table


def _reproduce_section(config: Mapping[str, Any], repo_id: str | None, source_dataset: str | None) -> str:
    """The car_hf calls that produce these columns and this leaderboard from the recorded configuration."""
    def kwargs(*names: str) -> str:
        return ", ".join(f"{name}={config[name]!r}" for name in names if config.get(name) is not None)

    scorer = kwargs("base_model", "reward_model", "reward_column", "beta")
    if config.get("reward_transform") in ("raise", "sigmoid"):  # add_car only has the row-wise transforms
        scorer += f", reward_transform={config['reward_transform']!r}"
    ranking = kwargs("by", "beta", "reward_transform", "confidence", "n_bootstrap", "seed")
    revisions = [f"{name} {config[key]}" for name, key in (("base model", "base_model_revision"),
                                                            ("reward model", "reward_model_revision"))
                 if config.get(key)]
    load = f'load_dataset("{repo_id}")' if repo_id else "load_dataset(<this repo>)"
    return "\n".join([
        "## How to reproduce",
        "",
        (f"Load the scored data with `datasets.{load}`. To score the source data again "
         f"(car_hf {config.get('car_hf_version') or '(version not recorded)'}):"),
        "",
        "```python",
        "from datasets import load_dataset",
        "from car_hf import add_car, rank_generators",
        "",
        f'ds = load_dataset("{source_dataset or "<source dataset>"}", split="train")',
        *([f"# revisions used: {'; '.join(revisions)}"] if revisions else []),
        f"ds = ds.map(add_car({scorer}), batched=True)",
        f"leaderboard = rank_generators(ds, {ranking})",
        "```",
    ])


def _add_hub_metadata(data: DatasetCardData, splits: Mapping[str, Dataset], download_size: int | None) -> None:
    """``configs`` and ``dataset_info`` as ``push_to_hub`` writes them, so the Hub and datasets read the splits."""
    features = next(iter(splits.values())).features
    info = DatasetInfo(config_name="default", features=features, splits=SplitDict(),
                       download_size=download_size, dataset_size=0)
    for name, split in splits.items():
        info.splits.add(SplitInfo(name=name, num_bytes=split.data.nbytes, num_examples=len(split)))
        info.dataset_size += split.data.nbytes
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    MetadataConfigs(
        {"default": {"data_files": [{"split": name, "path": f"{DATA_DIR}/{name}-*"} for name in splits]}}
    ).to_dataset_card_data(data)


def _build_dataset_card(
    dataset: Dataset | DatasetDict,
    *,
    leaderboard: pd.DataFrame | None,
    scoring_config: Mapping[str, Any] | None,
    plot_filename: str | None,
    repo_id: str | None,
    license: str | None,
    source_dataset: str | None,
    download_size: int | None,
) -> DatasetCard:
    splits = _splits(dataset)
    config = _scoring_config(leaderboard, scoring_config)
    stats = _stats(splits)
    columns = next(iter(splits.values())).column_names
    title = repo_id.split("/")[-1] if repo_id else "CAR-scored dataset"

    data = DatasetCardData(
        license=license or "other",
        task_categories=["text-generation"],
        tags=list(DATASET_TAGS),
        size_categories=[_size_category(stats["rows"])],
        source_datasets=[source_dataset] if source_dataset else None,
        pretty_name=title,
    )
    _add_hub_metadata(data, splits, download_size)
    data["car_hf"] = config  # last, so the scoring configuration is easy to find in the YAML

    intro = (f"Responses from {_link(source_dataset, 'dataset')}" if source_dataset else "Responses") + (
        " scored with car_hf for instruction-tuning "
        f"{_link(config.get('base_model')) if config.get('base_model') else 'a base model'}: every row carries "
        "its reward, its loss under the base model and its CAR"
    ) + ("; the leaderboard ranks the response generators." if leaderboard is not None else ".")
    sections = [f"# {title}", intro, "## What CAR is\n\n" + CAR_PARAGRAPH, _config_section(config)]
    if leaderboard is not None:
        sections.append(_leaderboard_section(leaderboard, config, plot_filename))
    elif plot_filename:
        sections.append(f"![ranking]({plot_filename})")
    sections += [
        _glossary_section(columns, config, stats),
        _reproduce_section(config, repo_id, source_dataset),
        "## Citation\n\n```bibtex\n" + CITATION + "\n```",
    ]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def dataset_card(
    dataset: Dataset | DatasetDict,
    *,
    leaderboard: pd.DataFrame | None = None,
    scoring_config: Mapping[str, Any] | None = None,
    plot_filename: str | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    source_dataset: str | None = None,
) -> DatasetCard:
    """The dataset card of a CAR-scored dataset.

    YAML: ``license`` ("other" unless given), ``task_categories``, ``tags`` (car, instruction-tuning,
    car_hf), ``size_categories``, ``configs``/``dataset_info`` as ``push_to_hub`` writes them, and a
    ``car_hf`` mapping with the scoring configuration: ``leaderboard.attrs["car"]`` updated by
    ``scoring_config``, with every key of :data:`CONFIG_KEYS` (``null`` = not recorded, which the
    card flags). Body: what CAR is, the configuration, the leaderboard (with its CI when present)
    and ``![ranking](plot_filename)``, a glossary of the added columns (units, NaN, truncation, with
    counts from the data), how to reproduce, and the paper's BibTeX.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"reward": [1.0], "base_loss": [2.0], "base_loss_tokens": [5],
        ...                         "base_loss_truncated": [False], "car": [1 / 3]})
        >>> card = dataset_card(ds, scoring_config={"beta": 1.0, "base_model": "google/gemma-3-270m"})
        >>> card.data["car_hf"]["beta"], "car" in card.data["tags"]
        (1.0, True)
    """
    return _build_dataset_card(
        dataset, leaderboard=leaderboard, scoring_config=scoring_config, plot_filename=plot_filename,
        repo_id=repo_id, license=license, source_dataset=source_dataset, download_size=None,
    )


# --------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------
def _selection_section(dataset_repo: str | None, summary: Mapping[str, Any] | None) -> str:
    source = f"from {_link(dataset_repo, 'dataset')} " if dataset_repo else ""
    text = (f"The training rows were selected {source}with the Compatibility-Adjusted Reward "
            "(CAR, arXiv 2411.07133) computed by car_hf.")
    if not summary:
        return "## Data selection with CAR\n\n" + text + " No selection summary was recorded."
    summary = dict(summary)
    scalars: dict[str, Any] = {}
    kept, total = summary.pop("rows_kept", None), summary.pop("rows_total", None)
    if kept is not None and total:
        scalars["rows_kept / rows_total"] = f"{kept} / {total} ({100 * kept / total:.1f}%)"
    tables = []
    for key, value in summary.items():
        if isinstance(value, Mapping):  # e.g. the generator mix: generator → rows kept
            tables.append(f"**{key}**\n\n" + _key_value_table(value, ("generator" if "generator" in key else "key",
                                                                        "value")))
        else:
            scalars[key] = value
    return "\n\n".join(["## Data selection with CAR", text, _key_value_table(scalars, ("selection", "value")),
                        *tables])


def _car_block(dataset_repo: str | None, selection_summary: Mapping[str, Any] | None,
               hyperparameters: Mapping[str, Any] | None) -> str:
    """The model card's car_hf section, between markers so that a later push can replace it."""
    parts = [CARD_BEGIN, _selection_section(dataset_repo, selection_summary)]
    if hyperparameters:
        parts.append("## Training hyper-parameters\n\n" + _key_value_table(hyperparameters))
    parts += ["## Citation (CAR)\n\n```bibtex\n" + CITATION + "\n```", CARD_END]
    return "\n\n".join(parts)


def model_card(
    *,
    base_model: str,
    dataset_repo: str | None = None,
    selection_summary: Mapping[str, Any] | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    library_name: str = "transformers",
) -> ModelCard:
    """The model card of a model tuned on CAR-selected data.

    YAML: ``base_model`` (a Hub id: a local path is refused, the Hub would reject it), ``datasets``,
    ``tags`` (car, car_hf, sft, trl), ``library_name`` ("peft" for an adapter), ``license`` when
    given (a fine-tune's license usually follows the base model's, so none is guessed). Body: the
    CAR selection summary (``rows_kept``/``rows_total`` shown as a share, other scalars such as
    ``beta`` and ``cutoff`` as rows, mappings such as the generator mix as their own tables), the
    hyper-parameters as a table, and the paper's BibTeX.

    Example:
        >>> card = model_card(base_model="google/gemma-3-270m", dataset_repo="me/scored",
        ...                   selection_summary={"rows_kept": 500, "rows_total": 2000, "beta": 1.0,
        ...                                      "generator_mix": {"gemma-2-9b-it": 400, "gpt-4": 100}},
        ...                   hyperparameters={"learning_rate": 2e-5, "num_train_epochs": 2})
        >>> card.data.base_model, card.data.datasets
        ('google/gemma-3-270m', ['me/scored'])
    """
    if not _is_hub_id(base_model):
        raise ValueError(
            f"base_model must be the Hub id of the base model (e.g. 'google/gemma-3-270m'), got {base_model!r}; "
            "pass the Hub id even when training from a local copy"
        )
    data = ModelCardData(
        base_model=base_model,
        datasets=[dataset_repo] if dataset_repo else None,
        library_name=library_name,
        license=license,
        pipeline_tag="text-generation",
        tags=list(MODEL_TAGS),
    )
    title = repo_id.split("/")[-1] if repo_id else f"{base_model.split('/')[-1]} tuned on CAR-selected data"
    intro = f"{_link(base_model)} fine-tuned (supervised, with TRL) on CAR-selected responses."
    body = "\n\n".join([f"# {title}", intro, _car_block(dataset_repo, selection_summary, hyperparameters)])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def _merge_model_card(existing: str, card: ModelCard) -> ModelCard:
    """``card``'s car_hf section and metadata merged into an existing (e.g. trainer-written) card.

    Metadata: car_hf's values win for the keys it sets (the trainer may have recorded a local path as
    ``base_model``), ``tags`` and ``datasets`` are unions, every other key is kept. Body: the text
    between the car_hf markers is replaced if present; otherwise the car_hf section goes before the
    first ``##`` heading (after the trainer's title and intro), or at the end.
    """
    old = ModelCard(existing, ignore_metadata_errors=True)
    metadata = old.data.to_dict()
    for key, value in card.data.to_dict().items():
        if key in ("tags", "datasets"):
            metadata[key] = list(dict.fromkeys(_as_list(metadata.get(key)) + _as_list(value)))
        else:
            metadata[key] = value
    new_text = card.text
    block = new_text[new_text.index(CARD_BEGIN): new_text.index(CARD_END) + len(CARD_END)]
    text = old.text
    if CARD_BEGIN in text and CARD_END in text:
        text = text[: text.index(CARD_BEGIN)] + block + text[text.index(CARD_END) + len(CARD_END):]
    else:
        heading = re.search(r"^## ", text, flags=re.MULTILINE)
        if heading:
            text = text[: heading.start()] + block + "\n\n" + text[heading.start():]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    return ModelCard(f"---\n{yaml_dump(metadata, sort_keys=False).strip()}\n---\n{text}")


# --------------------------------------------------------------------------------------------------
# The dataset folder
# --------------------------------------------------------------------------------------------------
def _write_parquet(splits: Mapping[str, Dataset], folder: Path, max_shard_size: int | str | None) -> int:
    """Write ``data/{split}-{i:05d}-of-{n:05d}.parquet`` as ``push_to_hub`` shards them; return the bytes."""
    shard_bytes = convert_file_size_to_int(max_shard_size or datasets_config.MAX_SHARD_SIZE)
    total = 0
    for name, split in splits.items():
        nbytes = split.data.nbytes  # what push_to_hub shards by (for text columns)
        num_shards = int(nbytes / shard_bytes) + 1
        batch_size = get_writer_batch_size_from_features(split.features) or get_writer_batch_size_from_data_size(
            len(split), nbytes
        )
        for index in range(num_shards):
            shard = split.shard(num_shards=num_shards, index=index, contiguous=True)
            path = folder / DATA_DIR / f"{name}-{index:05d}-of-{num_shards:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            shard.to_parquet(path, batch_size=batch_size)
            total += path.stat().st_size
    return total


def _prepare_folder(folder: Path) -> None:
    """Make ``folder`` an empty directory, removing only what an earlier write_dataset_folder wrote there."""
    entries = list(folder.iterdir()) if folder.exists() else []
    if entries:
        readme = folder / "README.md"
        ours = readme.is_file() and re.search(r"^car_hf:", readme.read_text(encoding="utf-8"), re.MULTILINE)
        foreign = [e.name for e in entries if e.name not in ("README.md", "leaderboard.csv", "leaderboard.md",
                                                              DATA_DIR) and e.suffix != ".png"]
        if not ours or foreign:
            raise FileExistsError(
                f"{folder} is not empty and holds files car_hf.hub did not write ({', '.join(foreign) or 'README.md'})"
                "; choose an empty or new folder"
            )
        for entry in entries:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def write_dataset_folder(
    dataset: Dataset | DatasetDict,
    folder: str | Path,
    *,
    leaderboard: pd.DataFrame | None = None,
    scoring_config: Mapping[str, Any] | None = None,
    plot: str | Path | None = None,
    max_shard_size: int | str | None = None,
    **card_kwargs: Any,
) -> Path:
    """Write the exact folder :func:`push_dataset` uploads, and return its path.

    Contents: ``data/{split}-{i:05d}-of-{n:05d}.parquet`` (one shard per ``max_shard_size``, 500MB by
    default, as ``push_to_hub``), ``README.md`` (:func:`dataset_card`, with the Parquet download
    size), the plot PNG under its own file name, and with a leaderboard ``leaderboard.csv`` (full
    precision) and ``leaderboard.md``. ``datasets.load_dataset(str(folder))`` reads the rows back.
    A folder a previous call wrote is emptied first; a non-empty folder holding anything else is refused.
    ``card_kwargs`` go to :func:`dataset_card` (``repo_id``, ``license``, ``source_dataset``).

    Example:
        >>> from datasets import Dataset, load_dataset
        >>> ds = Dataset.from_dict({"reward": [1.0, 2.0], "base_loss": [2.0, 1.0], "base_loss_tokens": [5, 4],
        ...                         "base_loss_truncated": [False, True], "car": [1 / 3, 1.0]})
        >>> folder = write_dataset_folder(ds, "/tmp/car_hf_doctest_folder", scoring_config={"beta": 1.0})
        >>> load_dataset(str(folder), split="train")["reward"][:]
        [1.0, 2.0]
    """
    splits = _splits(dataset)
    folder = Path(folder)
    _prepare_folder(folder)
    download_size = _write_parquet(splits, folder, max_shard_size)
    plot_filename = None
    if plot is not None:
        plot_filename = Path(plot).name
        shutil.copyfile(plot, folder / plot_filename)
    card = _build_dataset_card(
        dataset, leaderboard=leaderboard, scoring_config=scoring_config, plot_filename=plot_filename,
        download_size=download_size, **{"repo_id": None, "license": None, "source_dataset": None, **card_kwargs},
    )
    card.save(folder / "README.md")
    if leaderboard is not None:
        leaderboard.to_csv(folder / "leaderboard.csv", index=False)
        config = _scoring_config(leaderboard, scoring_config)
        caption = (f"CAR leaderboard: base model `{config.get('base_model')}`, rewards from "
                   f"{_reward_source(config)}, β = {config.get('beta')}.")
        (folder / "leaderboard.md").write_text(
            f"{caption}\n\n{leaderboard_markdown(leaderboard)}\n", encoding="utf-8", newline="\n"
        )
    return folder


# --------------------------------------------------------------------------------------------------
# Talking to the Hub
# --------------------------------------------------------------------------------------------------
def _redact(text: str, token: str | bool | None) -> str:
    """``text`` with the token (given, or the one huggingface_hub would use) masked."""
    secret = token if isinstance(token, str) else get_token()
    return text.replace(secret, "hf_***") if secret else text


def _retrying(step: str, call: Callable[[], T], *, token: str | bool | None, max_retries: int, local_note: str) -> T:
    """Run ``call``; retry 5xx/429/connection failures with backoff; turn failures into car_hf errors."""
    for attempt in range(max_retries + 1):
        try:
            return call()
        except HfHubHTTPError as err:
            status = getattr(err.response, "status_code", None)
            detail = _redact(str(err), token).strip()
            if status in (401, 403):
                what = "rejected the token" if status == 401 else "refused the write with this token"
                raise HubAuthError(
                    f"The Hub at {constants.ENDPOINT} {what} (HTTP {status}) while {step}. Use a valid token with "
                    f"write access (token=..., HF_TOKEN or `hf auth login`). {local_note}\nHub answer: {detail}"
                ) from None  # the chained error's request holds the Authorization header
            reason = f"HTTP {status}"
            if status not in RETRY_STATUS:
                raise PublishError(f"{step} failed ({reason}). {local_note}\nHub answer: {detail}") from None
        except httpx2.TransportError as err:
            reason, detail = f"connection error {type(err).__name__}", _redact(str(err), token)
        if attempt == max_retries:
            raise PublishError(
                f"{step} failed after {attempt + 1} attempt(s), last: {reason}. {local_note}\nLast error: {detail}"
            ) from None
        wait = min(RETRY_BASE_SECONDS * 2**attempt, RETRY_MAX_SECONDS)
        logger.warning("%s: %s, retry %d/%d in %.1fs", step, reason, attempt + 1, max_retries, wait)
        time.sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises


def _prepare_repo(api: HfApi, repo_id: str, repo_type: str, *, private: bool, revision: str | None,
                  retry: Callable[[str, Callable[[], T]], T]) -> str:
    """Create the repo (and branch) if missing; return the repo id with its namespace."""
    url = retry(f"creating {repo_type} repo {repo_id}",
                lambda: api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True))
    repo_id = url.repo_id
    if private:
        # The Hub keeps an existing repo's visibility: never upload "private" data into a public repo.
        info = retry(f"reading {repo_type} repo {repo_id}", lambda: api.repo_info(repo_id, repo_type=repo_type))
        if not info.private:
            raise PublishError(
                f"private=True but the {repo_type} repo {repo_id} already exists and is public; nothing was "
                "uploaded. Make it private first (HfApi.update_repo_settings(..., private=True)) or pass private=False."
            )
    if revision is not None and not revision.startswith("refs/pr/"):  # the Hub refuses branches named refs/pr/*
        retry(f"creating branch {revision} of {repo_id}",
              lambda: api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True))
    return repo_id


def _commit_folder(api: HfApi, folder: Path, repo_id: str, repo_type: str, *, revision: str | None,
                   commit_message: str, replace_prefix: str | None, ignore_patterns: list[str] | None,
                   retry: Callable[[str, Callable[[], T]], T]) -> str:
    """Upload every file of ``folder`` in one commit; delete remote ``replace_prefix`` files not in it."""
    paths = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    paths = list(filter_repo_objects(paths, ignore_patterns=ignore_patterns))
    uploaded = set(paths)

    def commit() -> Any:
        # Fresh operations on every attempt: create_commit mutates them and refuses to reuse them.
        stale = []
        if replace_prefix is not None:
            remote = api.list_repo_files(repo_id, repo_type=repo_type, revision=revision)
            stale = [p for p in remote if p.startswith(replace_prefix) and p not in uploaded]
        operations = [CommitOperationDelete(path_in_repo=p) for p in stale]
        operations += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=folder / p) for p in paths]
        return api.create_commit(repo_id, operations, commit_message=commit_message, repo_type=repo_type,
                                 revision=revision)

    logger.info("uploading %d files to %s repo %s (revision %s)", len(paths), repo_type, repo_id, revision or "main")
    info = retry(f"committing {len(paths)} files to {repo_type} repo {repo_id}@{revision or 'main'}", commit)
    return info.commit_url


def push_dataset(
    dataset: Dataset | DatasetDict,
    repo_id: str,
    *,
    leaderboard: pd.DataFrame | None = None,
    scoring_config: Mapping[str, Any] | None = None,
    plot: str | Path | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run: str | Path | None = None,
    max_retries: int = 3,
    max_shard_size: int | str | None = None,
    **card_kwargs: Any,
) -> str | Path:
    """Publish a CAR-scored dataset with its card, leaderboard and plot in one commit.

    With ``dry_run=<folder>``: :func:`write_dataset_folder` into it and return the path; nothing is
    sent. Otherwise the same folder is written to a temporary directory, the repo is created if
    missing (``private`` applies at creation; ``private=True`` on an existing public repo is refused),
    the ``revision`` branch is created if missing, and the folder is committed (``data/`` files it
    does not contain are deleted in the same commit). Returns the commit URL. A temporary folder is
    removed on success and kept on failure, with its path in the :class:`PublishError`.

    Example:
        >>> url = push_dataset(scored, "me/alpaca-car", leaderboard=table, plot="ranking.png",
        ...                    private=True, revision="v1", commit_message="β=1")  # doctest: +SKIP
        >>> push_dataset(scored, "me/alpaca-car", leaderboard=table, dry_run="out/")  # doctest: +SKIP
        PosixPath('out')
    """
    if dry_run is not None:
        return write_dataset_folder(dataset, dry_run, leaderboard=leaderboard, scoring_config=scoring_config,
                                    plot=plot, max_shard_size=max_shard_size, repo_id=repo_id, **card_kwargs)
    staging = Path(tempfile.mkdtemp(prefix="car_hf-push-"))
    try:
        folder = write_dataset_folder(dataset, staging, leaderboard=leaderboard, scoring_config=scoring_config,
                                      plot=plot, max_shard_size=max_shard_size, repo_id=repo_id, **card_kwargs)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing worth keeping: the data never got written
        raise
    note = (f"Nothing local was changed; the folder being uploaded is kept at {folder} "
            "(re-run push_dataset, or upload that folder as it is).")

    def retry(step: str, call: Callable[[], T]) -> T:
        return _retrying(step, call, token=token, max_retries=max_retries, local_note=note)

    api = HfApi(token=token)
    repo_id = _prepare_repo(api, repo_id, "dataset", private=private, revision=revision, retry=retry)
    url = _commit_folder(api, folder, repo_id, "dataset", revision=revision,
                         commit_message=commit_message or "Upload CAR-scored dataset (car_hf)",
                         replace_prefix=f"{DATA_DIR}/", ignore_patterns=None, retry=retry)
    shutil.rmtree(staging)
    return url


def push_model(
    folder: str | Path,
    repo_id: str,
    *,
    base_model: str,
    dataset_repo: str | None = None,
    selection_summary: Mapping[str, Any] | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    license: str | None = None,
    max_retries: int = 3,
) -> str | Path:
    """Write the model card into ``folder`` and upload the folder in one commit.

    The card is :func:`model_card` (``library_name`` "peft" when ``adapter_config.json`` is there).
    An existing ``README.md`` (e.g. the one ``Trainer``/TRL wrote) is merged, not replaced: car_hf's
    metadata keys win, tags and datasets are united, other keys kept; the car_hf section (between
    ``<!-- car_hf:begin/end -->`` markers) replaces an earlier one or goes before the trainer's
    first ``##`` section. Uploaded: every file except ``checkpoint-*``, ``_*`` and ``.git``/cache
    folders (what ``Trainer.push_to_hub`` skips). ``dry_run=True`` writes the card and returns the
    folder without sending anything; otherwise returns the commit URL.

    Example:
        >>> push_model("out/sft", "me/gemma-car", base_model="google/gemma-3-270m",
        ...            dataset_repo="me/alpaca-car", selection_summary={"rows_kept": 800, "rows_total": 2000},
        ...            hyperparameters={"learning_rate": 2e-5})  # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    library_name = "peft" if (folder / "adapter_config.json").is_file() else "transformers"
    card = model_card(base_model=base_model, dataset_repo=dataset_repo, selection_summary=selection_summary,
                      hyperparameters=hyperparameters, repo_id=repo_id, license=license, library_name=library_name)
    readme = folder / "README.md"
    if readme.is_file():
        card = _merge_model_card(readme.read_text(encoding="utf-8"), card)
    card.save(readme)
    if dry_run:
        return folder
    note = f"The model folder {folder} is unchanged apart from its README.md (the card); re-run push_model to retry."

    def retry(step: str, call: Callable[[], T]) -> T:
        return _retrying(step, call, token=token, max_retries=max_retries, local_note=note)

    api = HfApi(token=token)
    repo_id = _prepare_repo(api, repo_id, "model", private=private, revision=revision, retry=retry)
    return _commit_folder(api, folder, repo_id, "model", revision=revision,
                          commit_message=commit_message or "Upload model tuned on CAR-selected data (car_hf)",
                          replace_prefix=None, ignore_patterns=MODEL_IGNORE_PATTERNS, retry=retry)

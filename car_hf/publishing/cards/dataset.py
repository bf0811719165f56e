"""The dataset card of a CAR-scored dataset: ``DatasetCard.from_template`` on ``templates/dataset_card.md``.

The template holds the prose; this module computes what goes into it: the YAML metadata (with the
``configs``/``dataset_info`` that ``push_to_hub`` writes), the scoring configuration, the leaderboard and
its legend, the glossary of added columns with counts from the data, and the calls that reproduce it.

Example:
    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"reward": [1.0], "base_loss": [2.0], "base_loss_tokens": [5],
    ...                         "base_loss_truncated": [False], "car": [1 / 3]})
    >>> card = dataset_card(ds, scoring_config={"beta": 1.0, "base_model": "google/gemma-3-270m"})
    >>> [line for line in card.text.splitlines() if line.startswith("## ")][:3]
    ['## What CAR is', '## Scoring configuration', '## Columns added by car_hf']
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

import pandas as pd
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict
from datasets.features.features import require_decoding
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from car_hf.publishing.cards.common import CITATION, TEMPLATES, leaderboard_columns, leaderboard_markdown, link, plain, table, text

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
DATA_DIR = "data"
# Revisions may be legitimately absent (local models) and only one reward source is set.
OPTIONAL_KEYS = ("base_model_revision", "reward_model", "reward_model_revision", "reward_column")
CONFIG_MEANINGS = {
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


def dataset_splits(dataset: Dataset | DatasetDict) -> dict[str, Dataset]:
    """Split name → Dataset; a lone Dataset is its own split (``train`` unless it has a split name).

    Raises ValueError for what a Parquet folder cannot hold: a split name unfit for a file name,
    media columns, or splits with different columns.
    """
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
                f"columns {media} hold media (Image/Audio/Video); car_hf.publishing.hub publishes text datasets, "
                "use Dataset.push_to_hub for these"
            )
    first = next(iter(splits.values()))
    if any(split.features != first.features for split in splits.values()):
        raise ValueError("all splits must have the same columns and types to be published as one dataset")
    return splits


def scoring_record(leaderboard: pd.DataFrame | None, scoring_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The leaderboard's ``attrs["car"]`` updated by ``scoring_config``; every CONFIG_KEYS key present, first."""
    merged = dict(getattr(leaderboard, "attrs", {}).get("car") or {})
    merged.update(scoring_config or {})
    ordered = {key: plain(merged.get(key)) for key in CONFIG_KEYS}
    ordered.update({key: plain(value) for key, value in merged.items() if key not in ordered})
    return ordered


def reward_source(config: Mapping[str, Any]) -> str:
    """Where the rewards came from, as a phrase for the card."""
    if config.get("reward_model"):
        return f"reward model {link(config['reward_model'])}"
    if config.get("reward_column"):
        return f"column `{config['reward_column']}`"
    return "a source that was not recorded"


def leaderboard_page(leaderboard: pd.DataFrame, scoring_config: Mapping[str, Any] | None = None) -> str:
    """``leaderboard.md``: a caption with the scoring setup, then the table."""
    config = scoring_record(leaderboard, scoring_config)
    caption = (f"CAR leaderboard: base model `{config.get('base_model')}`, rewards from {reward_source(config)}, "
               f"β = {config.get('beta')}.")
    return f"{caption}\n\n{leaderboard_markdown(leaderboard)}\n"


def _size_category(n: int) -> str:
    """The Hub's ``size_categories`` value for ``n`` rows: "n<1K", "1K<n<10K", ..., "n>1T"."""
    names = ["1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T"]
    if n < 1_000:
        return "n<1K"
    for low, high, bound in zip(names, names[1:], (10 ** e for e in range(4, 13))):
        if n < bound:
            return f"{low}<n<{high}"
    return "n>1T"


def _car_is_from_means(leaderboard: pd.DataFrame, beta: Any) -> bool:
    """Whether the leaderboard's ``car`` is ``reward / (1 + β·base_loss)`` of its own mean columns."""
    if not isinstance(beta, numbers.Real) or not {"reward", "base_loss", "car"} <= set(leaderboard.columns):
        return False
    return all(math.isclose(r["car"], r["reward"] / (1 + beta * r["base_loss"]), rel_tol=1e-6, abs_tol=1e-9)
               for r in leaderboard.to_dict("records"))


def _leaderboard_values(leaderboard: pd.DataFrame, config: Mapping[str, Any],
                        audit_legend: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The leaderboard table, its column legend (with the signal audit's columns) and the intervals only the CSV has."""
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
        **(audit_legend or {}),
    }
    columns = leaderboard_columns(leaderboard)
    stems = dict.fromkeys(re.sub(r"_(low|high)$", "", c) for c in leaderboard.columns if re.search(r"_(low|high)$", c))
    return {
        "leaderboard_table": leaderboard_markdown(leaderboard),
        "legend": [(column, note) for column, note in notes.items() if column in columns],
        "other_intervals": [f"`{stem}_low/high`" for stem in stems if stem != "car"],
    }


def _config_table(config: Mapping[str, Any]) -> str:
    def shown(key: str, value: Any) -> str:
        return text(value) if value is not None else "none" if key in OPTIONAL_KEYS else "**not recorded**"

    return table(["key", "value", "meaning"],
                 [[f"`{key}`", shown(key, value), CONFIG_MEANINGS.get(key, "")] for key, value in config.items()])


def _stats(splits: Mapping[str, Dataset]) -> dict[str, int]:
    """Row counts the glossary reports: total, truncated, and missing (NaN or null) per score column."""
    stats = {"rows": sum(len(s) for s in splits.values())}
    for split in splits.values():
        present = [c for c in ("reward", "base_loss", "car", "ifd", "base_loss_truncated") if c in split.column_names]
        columns = split.select_columns(present).with_format("arrow")[:]
        for column in present:
            values = columns[column]
            if column == "base_loss_truncated":
                count = pc.sum(values).as_py() or 0
            else:
                count = values.null_count + (pc.sum(pc.is_nan(values)).as_py() or 0)
            stats[column] = stats.get(column, 0) + count
    return stats


def _glossary_table(columns: list[str], config: Mapping[str, Any], stats: Mapping[str, int]) -> str:
    rows = stats["rows"]
    base = link(config.get("base_model")) if config.get("base_model") else "the base model"
    truncation = config.get("truncation") or "the truncation rule was not recorded"
    loss_text = f"{config['loss_definition'].rstrip('.')}." if config.get("loss_definition") else ""

    def missing(column: str) -> str:
        return f" Missing (NaN) in {stats[column]} of {rows} rows." if column in stats else ""

    definitions = {
        "reward": (
            "float", f"Quality score of the response from {reward_source(config)}, in the scorer's own units (not "
            "comparable across reward models). NaN when the response could not be scored." + missing("reward")),
        "base_loss": (
            "float", f"Mean negative log-likelihood of the response tokens under {base}, in nats per token "
            f"(natural log; perplexity = exp(base_loss)). {loss_text} NaN when no "
            "response token was scored (`base_loss_tokens` = 0: an empty response, or truncation removed all of "
            "it)." + missing("base_loss")),
        "base_loss_tokens": ("int", "Number of response tokens `base_loss` averages over, after truncation."),
        "base_loss_truncated": (
            "bool", (f"True when the example exceeded the token cap and was cut on the right, so `base_loss` "
                     f"covers only the first `base_loss_tokens` response tokens: {truncation}. "
                     f"Truncated rows: {stats.get('base_loss_truncated', 0)} of {rows}.")),
        "car": (
            "float", f"Compatibility-Adjusted Reward of the row: `t(reward) / (1 + β · base_loss)` with β = "
            f"{config.get('beta')} and t the reward transform `{config.get('reward_transform') or 'not recorded'}` "
            "(`raise`: rewards as they are, negative ones refused; `sigmoid`: 1 / (1 + exp(-reward))). NaN when "
            "`reward` or `base_loss` is NaN." + missing("car")),
        "base_loss_unconditioned": (
            "float", ("Mean NLL (nats per token) of the same response tokens with the instruction removed "
                      "(only a start token before the response).")),
        "ifd": (
            "float", "Instruction-Following Difficulty (Li et al., 2023): `base_loss / base_loss_unconditioned`; "
            "above 1 the instruction makes the response harder to predict. NaN when either loss is NaN or the "
            "unconditioned loss is 0." + missing("ifd")),
    }
    return table(["column", "type", "definition"],
                 [[f"`{c}`", kind, text(definition.strip())] for c, (kind, definition) in definitions.items()
                  if c in columns])


def _reproduce_values(config: Mapping[str, Any], repo_id: str | None, source_dataset: str | None) -> dict[str, Any]:
    """The arguments of the car_hf calls that produce these columns and this leaderboard."""
    def kwargs(*names: str) -> str:
        return ", ".join(f"{name}={config[name]!r}" for name in names if config.get(name) is not None)

    scorer = kwargs("base_model", "reward_model", "reward_column", "beta")
    if config.get("reward_transform") in ("raise", "sigmoid"):  # add_car only has the row-wise transforms
        scorer += f", reward_transform={config['reward_transform']!r}"
    return {
        "load_call": f'load_dataset("{repo_id}")' if repo_id else "load_dataset(<this repo>)",
        "scored_with": config.get("car_hf_version") or "(version not recorded)",
        "source_name": source_dataset or "<source dataset>",
        "revisions": [f"{name} {config[key]}" for name, key in (("base model", "base_model_revision"),
                                                                 ("reward model", "reward_model_revision"))
                      if config.get(key)],
        "scorer_kwargs": scorer,
        "ranking_kwargs": kwargs("by", "beta", "reward_transform", "confidence", "n_bootstrap", "seed"),
    }


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


def dataset_card(
    dataset: Dataset | DatasetDict,
    *,
    leaderboard: pd.DataFrame | None = None,
    scoring_config: Mapping[str, Any] | None = None,
    plot_filename: str | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    source_dataset: str | None = None,
    download_size: int | None = None,
    matrix: Any = None,
) -> DatasetCard:
    """The dataset card of a CAR-scored dataset.

    YAML: ``license`` ("other" unless given), ``task_categories``, ``tags`` (car, instruction-tuning,
    car_hf), ``size_categories``, ``configs``/``dataset_info`` as ``push_to_hub`` writes them (with the
    Parquet ``download_size`` when known), and a ``car_hf`` mapping with the scoring configuration:
    ``leaderboard.attrs["car"]`` updated by ``scoring_config``, with every key of :data:`CONFIG_KEYS`
    (``null`` = not recorded, which the card flags). Body: what CAR is, the configuration, the
    leaderboard (with its CI when present) and ``![ranking](plot_filename)``, the teachers × students ``matrix``
    when given (:func:`car_hf.ranking.matrix.rank_matrix`'s result: its ``markdown()``, and its ``summary()``'s
    students, winners and common teacher under ``car_hf.matrix`` in the YAML), a glossary of the added
    columns (units, NaN, truncation, with counts from the data), how to reproduce, and the paper's BibTeX.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"reward": [1.0], "base_loss": [2.0], "base_loss_tokens": [5],
        ...                         "base_loss_truncated": [False], "car": [1 / 3]})
        >>> card = dataset_card(ds, scoring_config={"beta": 1.0, "base_model": "google/gemma-3-270m"})
        >>> card.data["car_hf"]["beta"], "car" in card.data["tags"]
        (1.0, True)
    """
    splits = dataset_splits(dataset)
    config = scoring_record(leaderboard, scoring_config)
    audit = config.pop("audit", None) or {}  # the signal audit (car_hf.ranking.audit): its own section, not config
    stats = _stats(splits)
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
    if matrix is not None:
        digest = matrix.summary()
        data["car_hf"]["matrix"] = plain({key: digest.get(key) for key in
                                          ("students", "winners", "winner_differs", "common", "common_rule")})

    base = link(config["base_model"]) if config.get("base_model") else "a base model"
    intro = ((f"Responses from {link(source_dataset, 'dataset')}" if source_dataset else "Responses")
             + f" scored with car_hf for instruction-tuning {base}: every row carries its reward, its loss under the "
             "base model and its CAR" + ("; the leaderboard ranks the response generators."
                                         if leaderboard is not None else "."))
    return DatasetCard.from_template(
        data,
        template_path=str(TEMPLATES / "dataset_card.md"),
        title=title,
        intro=intro,
        config_table=_config_table(config),
        missing=[key for key in CONFIG_KEYS if config.get(key) is None and key not in OPTIONAL_KEYS],
        **(_leaderboard_values(leaderboard, config, audit.get("legend")) if leaderboard is not None else {}),
        audit_warnings=audit.get("warnings") if audit else None,
        audit_notes=audit.get("notes", []),
        plot_filename=plot_filename,
        matrix_markdown=matrix.markdown() if matrix is not None else None,
        glossary_table=_glossary_table(next(iter(splits.values())).column_names, config, stats),
        **_reproduce_values(config, repo_id, source_dataset),
        citation=CITATION,
    )

"""The model card of a model tuned on CAR-selected data, and the one function that writes it into a folder.

:func:`model_card` renders ``templates/model_card.md`` with ``ModelCard.from_template``; car_hf's part
of it sits between ``<!-- car_hf:begin -->`` and ``<!-- car_hf:end -->``. :func:`write_model_card`
merges that part into the ``README.md`` a trainer (TRL, ``Trainer``) already wrote, replacing an
earlier car_hf part, so however often it runs the card carries one selection section.
:func:`selection_section` renders that section from a selection summary, whatever the selection mode.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "README.md").write_text("# Model Card for sft\\n\\n## Training procedure\\n\\nSFT.\\n")
    >>> summary = {"selection": "top_k", "rows_kept": 2, "rows_total": 8, "beta": 1.0, "top_k": 2,
    ...            "generator_mix": {"a": 2}}
    >>> for _ in range(2):
    ...     readme = write_model_card(folder, base_model="google/gemma-3-270m", selection=summary)
    >>> text = readme.read_text()
    >>> text.count(CARD_HEADING), text.index("# Model Card") < text.index(CARD_HEADING) < text.index("## Training")
    (1, True)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import yaml_dump

from car_hf.publishing.cards.common import CITATION, TEMPLATES, is_hub_id, key_value_table, link, table, text
from car_hf.publishing.cards.dataset import scoring_record

MODEL_TAGS = ["car", "car_hf", "sft", "trl"]
# A model card's car_hf section sits between these markers, so a later write replaces only that part.
CARD_BEGIN = "<!-- car_hf:begin -->"
CARD_END = "<!-- car_hf:end -->"
CARD_HEADING = "## CAR data selection"
PAPER = "[arXiv 2411.07133](https://arxiv.org/abs/2411.07133)"
# Shown in prose or in their own tables, not as settings rows.
NOT_SETTINGS = ("rows_kept", "rows_total", "leaderboard")


def _rule(summary: Mapping[str, Any]) -> str:
    """How per-example CAR picked the rows, in words (best-of-N first, then a global cutoff)."""
    steps = []
    if summary.get("group_by"):
        steps.append(f"the highest-CAR row of each `{summary['group_by']}` group (best-of-N)")
    if summary.get("top_k") is not None:
        steps.append(f"the {summary['top_k']} rows with the highest CAR")
    elif summary.get("top_fraction") is not None:
        steps.append(f"the top {summary['top_fraction']:g} of rows by CAR")
    elif summary.get("threshold") is not None:
        steps.append(f"the rows with CAR >= {summary['threshold']}")
    return ", then ".join(steps)


def selection_section(summary: Mapping[str, Any] | None, dataset_repo: str | None = None) -> str:
    """The model card's "CAR data selection" section for a selection summary of any mode.

    ``summary`` is what :func:`car_hf.training.selection.select` (or ``CARFilter.summary()``) returns: prose
    saying how the rows were chosen, a settings table (``rows_kept / rows_total`` as a share, every
    other scalar), the rows kept per generator, and for ``generator`` selection the leaderboard.

    Example:
        >>> print(selection_section({"selection": "threshold", "rows_kept": 3, "rows_total": 4, "threshold": 0.2}))
        ## CAR data selection
        <BLANKLINE>
        Trained on 3 of 4 rows selected by per-example Compatibility-Adjusted Reward, CAR = reward / (1 + β · base_loss) ([arXiv 2411.07133](https://arxiv.org/abs/2411.07133)), with car_hf: the rows with CAR >= 0.2.
        <BLANKLINE>
        | setting                  | value         |
        |:-------------------------|:--------------|
        | `selection`              | threshold     |
        | `rows_kept / rows_total` | 3 / 4 (75.0%) |
        | `threshold`              | 0.2           |
    """
    source = f" of {link(dataset_repo, 'dataset')}" if dataset_repo else ""
    if not summary:
        return (f"{CARD_HEADING}\n\nThe training rows{source} were selected with the Compatibility-Adjusted Reward "
                f"(CAR, {PAPER}) computed by car_hf. No selection summary was recorded.")
    kept, total = summary.get("rows_kept"), summary.get("rows_total")
    counts = f"{kept} of {total} rows" if kept is not None and total else "rows"
    if summary.get("selection") == "generator" or "generator" in summary:
        prose = (f"Trained on the {counts}{source} written by `{summary.get('generator')}`, the response generator "
                 "with the best dataset-level Compatibility-Adjusted Reward for this base model, CAR = mean reward / "
                 f"(1 + β · mean base_loss) ({PAPER}), computed with car_hf.")
    else:
        rule = _rule(summary)
        prose = (f"Trained on {counts}{source} selected by per-example Compatibility-Adjusted Reward, CAR = reward / "
                 f"(1 + β · base_loss) ({PAPER}), with car_hf" + (f": {rule}." if rule else "."))
    if summary.get("rows_without_car"):
        n = summary["rows_without_car"]
        prose += (f" {n} row{'s' if n != 1 else ''} had no finite CAR (no reward, or an empty or fully truncated "
                  "response) and were never kept.")

    settings: dict[str, Any] = {key: summary[key] for key in ("selection",) if key in summary}
    if kept is not None and total:
        settings["rows_kept / rows_total"] = f"{kept} / {total} ({100 * kept / total:.1f}%)"
    tables = []
    for key, value in summary.items():
        if key in NOT_SETTINGS or key in settings or value is None:
            continue
        if key == "generator_mix":
            mix = sorted(value.items(), key=lambda item: -item[1])
            tables.append("**Rows kept per generator**\n\n" + table(["generator", "rows kept"],
                                                                      [[f"`{g}`", text(n)] for g, n in mix]))
        elif isinstance(value, Mapping):
            tables.append(f"**{key}**\n\n" + key_value_table(value, ("key", "value")))
        else:
            settings[key] = value
    if summary.get("leaderboard"):
        tables.append(f"**Generator leaderboard** (dataset-level CAR; the selected generator ranks first)\n\n"
                      f"{summary['leaderboard']}")
    return "\n\n".join([CARD_HEADING, prose, key_value_table(settings, ("setting", "value")), *tables])


def model_card(
    *,
    base_model: str | None,
    dataset_repo: str | None = None,
    selection_summary: Mapping[str, Any] | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    scoring: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    library_name: str = "transformers",
    eval_results: Sequence[EvalResult] | None = None,
    evaluation_section: str | None = None,
) -> ModelCard:
    """The model card of a model tuned on CAR-selected data (``eval_results``: its ``model-index``, and
    ``evaluation_section`` the text on them; :mod:`car_hf.publishing.eval_results` makes both).

    YAML: ``base_model`` (a Hub id: a local path is refused, the Hub would reject it; ``None`` leaves
    it out), ``datasets``, ``tags`` (car, car_hf, sft, trl), ``library_name`` ("peft" for an adapter),
    ``license`` when given (a fine-tune's license usually follows the base model's, so none is
    guessed), and the scoring record under ``car_hf``. Body (between the car_hf markers): the
    :func:`selection_section`, the hyper-parameters and the scoring record as tables, the paper's BibTeX.

    Example:
        >>> card = model_card(base_model="google/gemma-3-270m", dataset_repo="me/scored",
        ...                   selection_summary={"rows_kept": 500, "rows_total": 2000, "beta": 1.0,
        ...                                      "generator_mix": {"gemma-2-9b-it": 400, "gpt-4": 100}},
        ...                   hyperparameters={"learning_rate": 2e-5, "num_train_epochs": 2})
        >>> card.data.base_model, card.data.datasets
        ('google/gemma-3-270m', ['me/scored'])
    """
    if base_model is not None and not is_hub_id(base_model):
        raise ValueError(
            f"base_model must be the Hub id of the base model (e.g. 'google/gemma-3-270m'), got {base_model!r}; "
            "pass the Hub id even when training from a local copy, or None to leave it out of the card"
        )
    record = scoring_record(None, scoring) if scoring else None
    if repo_id:
        title = repo_id.split("/")[-1]
    else:
        title = f"{base_model.split('/')[-1]} tuned on CAR-selected data" if base_model else "Tuned on CAR-selected data"
    data = ModelCardData(
        base_model=base_model,
        datasets=[dataset_repo] if dataset_repo else None,
        library_name=library_name,
        license=license,
        pipeline_tag="text-generation",
        tags=list(MODEL_TAGS),
        car_hf=record,
        **({"eval_results": list(eval_results), "model_name": title} if eval_results else {}),
    )
    tuned = link(base_model) if base_model else "A base model"
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATES / "model_card.md"),
        title=title,
        intro=f"{tuned} fine-tuned (supervised, with TRL) on CAR-selected responses.",
        car_begin=CARD_BEGIN,
        car_end=CARD_END,
        selection_section="\n\n".join(filter(None, [selection_section(selection_summary, dataset_repo),
                                                     evaluation_section])),
        hyperparameters_table=key_value_table(hyperparameters) if hyperparameters else None,
        scoring_table=key_value_table(record, ("key", "value")) if record else None,
        citation=CITATION,
    )


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def _drop_legacy_sections(body: str) -> str:
    """Remove "## CAR data selection" sections outside the markers: earlier car_hf versions appended them to the card."""
    return re.sub(rf"^{re.escape(CARD_HEADING)}\n.*?(?=^## |\Z)", "", body, flags=re.MULTILINE | re.DOTALL)


def merge_model_card(existing: str, card: ModelCard) -> ModelCard:
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
    block = card.text[card.text.index(CARD_BEGIN): card.text.index(CARD_END) + len(CARD_END)]
    body = old.text
    start, end = body.find(CARD_BEGIN), body.find(CARD_END)
    if start >= 0 and end > start:
        body = (_drop_legacy_sections(body[:start]) + block
                + _drop_legacy_sections(body[end + len(CARD_END):]).rstrip("\n") + "\n")
    else:
        body = _drop_legacy_sections(body)
        heading = re.search(r"^## ", body, flags=re.MULTILINE)
        if heading:
            body = body[: heading.start()] + block + "\n\n" + body[heading.start():]
        else:
            body = body.rstrip("\n") + "\n\n" + block + "\n"
    return ModelCard(f"---\n{yaml_dump(metadata, sort_keys=False).strip()}\n---\n{body}")


def write_model_card(
    folder: str | Path,
    *,
    base_model: str | None,
    dataset_repo: str | None = None,
    selection: Mapping[str, Any] | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    scoring: Mapping[str, Any] | None = None,
    license: str | None = None,
    repo_id: str | None = None,
    eval_results: Sequence[EvalResult] | None = None,
    evaluation_section: str | None = None,
) -> Path:
    """Write car_hf's model card into ``<folder>/README.md``, merged into a card already there; return its path.

    The card is :func:`model_card` (``library_name`` "peft" when ``adapter_config.json`` is in the
    folder); ``selection`` is the selection summary; ``eval_results`` and ``evaluation_section`` the student's
    evaluation (see :func:`model_card`). An existing ``README.md`` is merged, not
    replaced (:func:`merge_model_card`), so writing twice, or after the trainer rewrote its card,
    leaves one car_hf section.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    library_name = "peft" if (folder / "adapter_config.json").is_file() else "transformers"
    card = model_card(base_model=base_model, dataset_repo=dataset_repo, selection_summary=selection,
                      hyperparameters=hyperparameters, scoring=scoring, repo_id=repo_id, license=license,
                      library_name=library_name, eval_results=eval_results, evaluation_section=evaluation_section)
    readme = folder / "README.md"
    if readme.is_file():
        card = merge_model_card(readme.read_text(encoding="utf-8"), card)
    card.save(readme)
    return readme


@dataclass
class CardInfo:
    """What car_hf's part of a model card needs beyond the trainer's own card (see ``CARSFTTrainer``)."""

    base_model: str | None = None
    dataset_repo: str | None = None
    hyperparameters: Mapping[str, Any] | None = None
    selection: Mapping[str, Any] | None = None
    scoring: Mapping[str, Any] | None = None
    license: str | None = None

    def write(self, folder: str | Path, repo_id: str | None = None) -> Path:
        """:func:`write_model_card` into ``folder`` with these values."""
        return write_model_card(folder, base_model=self.base_model, dataset_repo=self.dataset_repo,
                                selection=self.selection, hyperparameters=self.hyperparameters,
                                scoring=self.scoring, license=self.license, repo_id=repo_id)

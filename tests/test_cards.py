"""car_hf.publishing.cards: the sections of the dataset and model cards, the selection section once for every mode, templates.

The model-card tests merge into the card TRL itself writes (``trl.trainer.utils.generate_model_card``), built
from real selections (``car_hf.training.selection.select``) of a small scored dataset.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from huggingface_hub import ModelCard
from trl.trainer.utils import generate_model_card

import car_hf
from car_hf.publishing import cards, hub
from car_hf.publishing.cards import CARD_BEGIN, CARD_END, CARD_HEADING, CardInfo, dataset_card, model_card, write_model_card
from car_hf.publishing.cards.common import TEMPLATES
from car_hf.training.selection import select

NO_SUMMARY = "No selection summary was recorded."
# The mode, its value, and what the selection section says about the rule (from the real summary).
MODES = {
    "generator": (None, "written by `g"),
    "top_fraction": (0.25, "with car_hf: the top 0.25 of rows by CAR."),
    "top_k": (5, "with car_hf: the 5 rows with the highest CAR."),
    "threshold": (0.2, "with car_hf: the rows with CAR >= 0.2."),
    "best_of_n": (None, "with car_hf: the highest-CAR row of each `instruction_id` group (best-of-N)."),
}


def scored(n: int = 24) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset.from_dict({
        "instruction_id": [i // 3 for i in range(n)],
        "generator": [f"g{i % 3}" for i in range(n)],
        "reward": rng.uniform(0.1, 1.0, n).round(4).tolist(),
        "base_loss": rng.uniform(0.5, 3.0, n).round(4).tolist(),
        "base_loss_tokens": [10 + i for i in range(n)],
        "base_loss_truncated": [i == 0 for i in range(n)],
        "car": [0.1] * n,
    })


def headings(text: str, level: str = "## ") -> list[str]:
    return [line for line in text.splitlines() if line.startswith(level)]


def squeezed(text: str) -> str:
    """Markdown with the padding of ``DataFrame.to_markdown`` tables removed."""
    return re.sub(r" {2,}", " ", text)


def trl_card(folder: Path) -> str:
    """The README.md TRL's SFTTrainer writes (its own template and metadata), saved into ``folder``."""
    card = generate_model_card(base_model=None, model_name="sft-out", hub_model_id="me/sft-out", dataset_name=None,
                               tags=["trl", "sft"], wandb_url=None, trackio_url=None, comet_url=None,
                               trainer_name="SFT", trainer_citation=None, template_file=None, paper_title=None,
                               paper_id=None)
    card.save(folder / "README.md")
    return (folder / "README.md").read_text()


# ------------------------------------------------------------------------------------------------ dataset card
def test_dataset_card_sections_in_order():
    from car_hf import rank_generators

    ds = scored()
    table = rank_generators(ds, n_bootstrap=20, config={"base_model": "google/gemma-3-270m"})
    card = dataset_card(ds, leaderboard=table, plot_filename="ranking.png", repo_id="me/scored")
    text = card.text
    assert headings(text, "# ") == ["# scored"]
    assert headings(text) == ["## What CAR is", "## Scoring configuration", "## Leaderboard",
                              "## Columns added by car_hf", "## How to reproduce", "## Citation"]
    leaderboard = text[text.index("## Leaderboard"):text.index("## Columns added")]
    assert leaderboard.index("| rank | generator |") < leaderboard.index("- `car CI`: 95% bootstrap") \
        < leaderboard.index("The full table is in `leaderboard.csv`") < leaderboard.index("![ranking](ranking.png)")
    # Tables through DataFrame.to_markdown: integers read as integers, never in float notation.
    assert "| `n_bootstrap` | 20 |" in squeezed(text) and "| `base_loss_tokens` | int |" in squeezed(text)
    assert "Truncated rows: 1 of 24." in text and text.endswith("```\n")

    plain = dataset_card(ds, plot_filename="ranking.png").text  # no leaderboard: the plot stands alone
    assert headings(plain) == ["## What CAR is", "## Scoring configuration", "## Columns added by car_hf",
                               "## How to reproduce", "## Citation"]
    assert plain.index("does not record base_model, beta") < plain.index("![ranking](ranking.png)") \
        < plain.index("## Columns added by car_hf")
    assert 'load_dataset("<source dataset>", split="train")' in plain


# ------------------------------------------------------------------------------------------------ model card
def test_model_card_sections_in_order():
    card = model_card(base_model="google/gemma-3-270m", dataset_repo="me/scored",
                      selection_summary={"selection": "top_k", "rows_kept": 5, "rows_total": 24, "top_k": 5},
                      hyperparameters={"learning_rate": 2e-05, "max_steps": 1000000},
                      scoring={"beta": 1.0, "base_model": "google/gemma-3-270m"}, license="apache-2.0")
    text = card.text
    assert headings(text, "# ") == ["# gemma-3-270m tuned on CAR-selected data"]
    assert headings(text) == [CARD_HEADING, "## Training hyper-parameters", "## CAR scoring configuration",
                              "## Citation (CAR)"]
    assert text.index(CARD_BEGIN) < text.index(CARD_HEADING) and text.rstrip().endswith(CARD_END)
    assert "| `max_steps` | 1000000 |" in squeezed(text) and "| `beta` | 1.0 |" in squeezed(text)
    assert card.data.license == "apache-2.0" and card.data.car_hf["beta"] == 1.0

    bare = model_card(base_model=None).text  # nothing recorded: the selection section says so, nothing else
    assert headings(bare) == [CARD_HEADING, "## Citation (CAR)"] and bare.count(NO_SUMMARY) == 1


@pytest.fixture(scope="module")
def selections() -> dict[str, dict]:
    ds = scored()
    return {mode: select(ds, mode, value, n_bootstrap=0).summary for mode, (value, _) in MODES.items()}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_selection_section_once_per_mode_in_a_card_written_twice(mode, selections, tmp_path):
    summary = selections[mode]
    for _ in range(2):
        write_model_card(tmp_path, base_model="google/gemma-3-270m", selection=summary, hyperparameters={"seed": 1})
    text = (tmp_path / "README.md").read_text()
    assert text.count(CARD_HEADING) == 1 and text.count(CARD_BEGIN) == 1 and text.count("## Citation (CAR)") == 1
    assert NO_SUMMARY not in text and MODES[mode][1] in text
    kept, total = summary["rows_kept"], summary["rows_total"]
    assert f"| `selection` | {mode} |" in squeezed(text)
    assert f"| `rows_kept / rows_total` | {kept} / {total} ({100 * kept / total:.1f}%) |" in squeezed(text)
    for generator, rows in summary["generator_mix"].items():
        assert f"| `{generator}` | {rows} |" in squeezed(text)
    if mode == "generator":
        assert f"| 1 | {summary['generator']} |" in text  # the leaderboard it was chosen from


@pytest.mark.parametrize("mode", sorted(MODES))
def test_selection_section_once_per_mode_merged_into_trls_card(mode, selections, tmp_path):
    trl_card(tmp_path)
    for _ in range(2):
        CardInfo(base_model="google/gemma-3-270m", dataset_repo="me/scored", selection=selections[mode],
                 hyperparameters={"learning_rate": 2e-5}).write(tmp_path, "me/sft-out")
        text = (tmp_path / "README.md").read_text()
        assert text.count(CARD_HEADING) == 1 and text.count(CARD_BEGIN) == text.count(CARD_END) == 1
        assert NO_SUMMARY not in text and MODES[mode][1] in text
        # TRL's card is kept around car_hf's section: title and intro first, its own sections after.
        assert text.index("# Model Card for sft-out") < text.index(CARD_BEGIN) < text.index(CARD_END) \
            < text.index("## Quick start") < text.index("## Training procedure") < text.index("Cite TRL as:")
    card = ModelCard(text)
    assert card.data.base_model == "google/gemma-3-270m" and card.data.model_name == "sft-out"
    assert {"generated_from_trainer", "trl", "sft", "car", "car_hf"} <= set(card.data.tags)


def test_a_card_without_base_model_still_carries_the_selection(selections, tmp_path):
    trl_card(tmp_path)
    write_model_card(tmp_path, base_model=None, selection=selections["top_k"])
    card = ModelCard((tmp_path / "README.md").read_text())
    assert card.text.count(CARD_HEADING) == 1 and MODES["top_k"][1] in card.text
    assert card.data.base_model is None and card.data.model_name == "sft-out"
    with pytest.raises(ValueError, match="Hub id"):
        write_model_card(tmp_path, base_model="/tmp/some/local/model", selection=selections["top_k"])


def test_a_legacy_selection_section_is_replaced_not_kept(selections, tmp_path):
    """Earlier car_hf versions appended "## CAR data selection" after the card; a new write leaves one section."""
    legacy = (trl_card(tmp_path).rstrip("\n") + f"\n\n{CARD_HEADING}\n\nTrained on 4 of 8 rows selected by CAR.\n\n"
              "| setting | value |\n|---|---|\n| beta | 1.0 |\n")
    (tmp_path / "README.md").write_text(legacy)
    write_model_card(tmp_path, base_model=None, selection=selections["threshold"])
    text = (tmp_path / "README.md").read_text()
    assert text.count(CARD_HEADING) == 1 and "4 of 8 rows" not in text and "Cite TRL as:" in text


def test_a_legacy_carfilter_summary_renders_its_rule():
    """Summaries stored by earlier car_hf versions have no "selection" key; the rule comes from their settings."""
    text = model_card(base_model=None, selection_summary={
        "rows_kept": 4, "rows_total": 12, "rows_without_car": 1, "beta": 1.0, "reward_transform": "raise",
        "cutoff": 0.3, "threshold": None, "top_fraction": None, "top_k": 4, "group_by": None,
        "generator_mix": {"a": 3, "b": 1}}).text
    assert "Trained on 4 of 12 rows selected by per-example" in text and "the 4 rows with the highest CAR" in text
    assert "1 row had no finite CAR" in text and "| `cutoff` | 0.3 |" in squeezed(text)
    assert "`threshold`" not in text  # unset settings are left out
    assert squeezed(text).index("| `a` | 3 |") < squeezed(text).index("| `b` | 1 |")  # most rows first


# ------------------------------------------------------------------------------------------------ packaging
def test_templates_ship_as_package_data():
    """setup.cfg's [options.package_data] covers every template the cards read (checked by a wheel build too)."""
    setup = configparser.ConfigParser()
    setup.read(Path(car_hf.__file__).parent.parent / "setup.cfg")
    patterns = setup["options.package_data"]["car_hf"].split()
    package = Path(car_hf.__file__).parent
    shipped = {path for pattern in patterns for path in package.glob(pattern.strip())}
    assert {TEMPLATES / "dataset_card.md", TEMPLATES / "model_card.md"} <= shipped
    assert package / "metrics" / "answer_match" / "answer_match.py" in shipped  # car_hf.generation.tasks' offline metric
    for name in ("dataset_card.md", "model_card.md"):
        assert "{{ card_data }}" in (TEMPLATES / name).read_text()


def test_hub_keeps_the_public_card_names():
    assert hub.dataset_card is cards.dataset_card and hub.model_card is cards.model_card
    assert hub.leaderboard_markdown is cards.leaderboard_markdown and hub.CARD_BEGIN == CARD_BEGIN
    assert hub.PublishError is car_hf.PublishError and hub.HubAuthError is car_hf.HubAuthError

"""car_hf.training.callbacks: the selection summary in trainer_state.json, read back by ``car-hf push`` for every mode."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from datasets import Dataset
from huggingface_hub import ModelCard
from transformers import TrainerState

from car_hf.training.callbacks import STATE_KEY, SelectionCallback, read_selection_summary
from car_hf.publishing.cards import CARD_BEGIN, CARD_HEADING
from car_hf.cli import main as cli
from car_hf.training.selection import select

GENERATOR_SUMMARY = {"selection": "generator", "generator": "tidy-7b", "rows_kept": 4, "rows_total": 12, "beta": 1.0,
                     "reward_transform": "raise", "reward_column": "reward", "generator_mix": {"tidy-7b": 4},
                     "leaderboard": "| rank | generator |\n|---|---|\n| 1 | tidy-7b |\n| 2 | rambler-70b |"}


def saved_state(folder: Path, stateful_callbacks: dict) -> Path:
    """A trainer_state.json as the Trainer saves it, with these stateful_callbacks."""
    state = TrainerState()
    state.stateful_callbacks.update(stateful_callbacks)
    folder.mkdir(parents=True, exist_ok=True)
    state.save_to_json(str(folder / "trainer_state.json"))
    return folder


def test_train_begin_logs_and_stores_the_summary_under_one_key(tmp_path, caplog):
    state = TrainerState()
    with caplog.at_level(logging.INFO, logger="car_hf.training.callbacks"):
        SelectionCallback(GENERATOR_SUMMARY).on_train_begin(None, state, None)
    assert "CAR selection (generator): kept 4 of 12 rows; generator=tidy-7b, beta=1.0" in caplog.text
    assert list(state.stateful_callbacks) == [STATE_KEY] == ["CARSelection"]
    state.save_to_json(str(tmp_path / "trainer_state.json"))
    assert read_selection_summary(tmp_path) == GENERATOR_SUMMARY
    with pytest.raises(RuntimeError, match="holds no selection yet"):
        SelectionCallback().on_train_begin(None, TrainerState(), None)


def test_read_selection_summary_also_reads_what_earlier_versions_stored(tmp_path):
    carfilter = {"rows_kept": 3, "rows_total": 9, "top_k": 3, "generator_mix": {"a": 3}}
    legacy = saved_state(tmp_path / "carfilter", {"CARFilter": {"args": {"top_k": 3}, "attributes": {
        "summary_": carfilter}}})
    assert read_selection_summary(legacy) == carfilter
    summary = {k: v for k, v in GENERATOR_SUMMARY.items() if k != "leaderboard"}
    legacy = saved_state(tmp_path / "generator", {"GeneratorSelection": {"args": {
        "summary": summary, "leaderboard": GENERATOR_SUMMARY["leaderboard"]}, "attributes": {}}})
    assert read_selection_summary(legacy) == GENERATOR_SUMMARY
    assert read_selection_summary(saved_state(tmp_path / "none", {})) is None
    assert read_selection_summary(tmp_path / "missing") is None


def test_the_callback_completes_a_card_written_without_car_hf_and_leaves_a_complete_one(tmp_path):
    args = SimpleNamespace(output_dir=str(tmp_path))
    callback = SelectionCallback(GENERATOR_SUMMARY)
    callback.on_train_end(args, TrainerState(), None)
    assert not (tmp_path / "README.md").exists()  # no card, no change: the trainer writes the card
    (tmp_path / "README.md").write_text("---\nlibrary_name: transformers\n---\n\n# Model Card\n\n## Training\n")
    callback.on_save(args, TrainerState(is_world_process_zero=False), None)  # one writer: the main process
    assert CARD_BEGIN not in (tmp_path / "README.md").read_text()
    callback.on_save(args, TrainerState(), None)
    text = (tmp_path / "README.md").read_text()
    assert text.count(CARD_HEADING) == 1 and "written by `tidy-7b`" in text
    complete = text.replace("written by", "chosen as")  # stands for a fuller section, e.g. CARSFTTrainer's
    (tmp_path / "README.md").write_text(complete)
    callback.on_train_end(args, TrainerState(), None)
    assert (tmp_path / "README.md").read_text() == complete


def model_folder(path: Path, stateful_callbacks: dict) -> Path:
    """A trained model folder as recipes/sft.py leaves it: weights, TRL's card, trainer state, local scores."""
    saved_state(path, stateful_callbacks)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(b"\x00" * 64)
    (path / "_car_scored").mkdir()
    (path / "_car_scored" / "scores.parquet").write_bytes(b"PAR1")
    (path / "checkpoint-2").mkdir()
    (path / "README.md").write_text(
        "---\nlibrary_name: transformers\nmodel_name: sft\ntags:\n- trl\n- sft\n---\n\n# Model Card for sft\n\n"
        "It has been trained using [TRL](https://github.com/huggingface/trl).\n\n## Training procedure\n\nSFT.\n")
    return path


@pytest.mark.parametrize("stored", ["current", "legacy"])
def test_push_dry_run_of_a_generator_selection_carries_its_summary(stored, tmp_path, capsys):
    if stored == "current":
        callbacks = {STATE_KEY: {"summary": GENERATOR_SUMMARY}}
    else:
        callbacks = {"GeneratorSelection": {"args": {"summary": GENERATOR_SUMMARY, "leaderboard": ""}}}
    folder = model_folder(tmp_path / "sft", callbacks)
    before = (folder / "README.md").read_text()
    out = tmp_path / "dry"
    assert cli(["push", str(folder), "me/sft-car", "--dry-run", str(out), "--base-model", "google/gemma-3-270m",
                "--dataset-repo", "me/scored"]) == 0
    assert f"wrote: {out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "trainer_state.json"]  # what push_model would upload
    card = ModelCard((out / "README.md").read_text())
    text = card.text
    assert text.count(CARD_HEADING) == 1 and "No selection summary was recorded." not in text
    assert "Trained on the 4 of 12 rows of" in text and "written by `tidy-7b`" in text
    assert text.index("# Model Card for sft") < text.index(CARD_HEADING) < text.index("## Training procedure")
    assert ("| 2 | rambler-70b |" in text) == (stored == "current")
    assert card.data.base_model == "google/gemma-3-270m" and card.data.datasets == ["me/scored"]
    assert (folder / "README.md").read_text() == before  # the dry run wrote into its copy only


def test_push_dry_run_of_a_real_best_of_n_selection(tmp_path):
    ds = Dataset.from_dict({"instruction_id": [0, 0, 1, 1], "generator": ["a", "b", "a", "b"],
                            "reward": [0.9, 0.5, 0.2, 0.6], "base_loss": [1.0, 1.0, 1.0, 3.0]})
    chosen = select(ds, "best_of_n")
    state = TrainerState()
    chosen.callback.on_train_begin(None, state, None)
    folder = model_folder(tmp_path / "sft", state.stateful_callbacks)
    assert cli(["push", str(folder), "me/x", "--dry-run", str(tmp_path / "dry"), "--base-model", "org/base"]) == 0
    text = (tmp_path / "dry" / "README.md").read_text()
    assert text.count(CARD_HEADING) == 1 and "the highest-CAR row of each `instruction_id` group" in text
    assert json.loads((tmp_path / "dry" / "trainer_state.json").read_text())["stateful_callbacks"][STATE_KEY][
        "summary"] == chosen.summary

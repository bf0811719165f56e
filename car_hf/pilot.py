"""Pilot distillation: is CAR's choice of teacher right for *your* student? Predicted vs. realized.

:func:`run_pilot` takes a scored pool (a long-layout Dataset/DataFrame with ``instruction``/``prompt``/
``messages``, the response, the generator column, ``reward`` and ``base_loss``; or a teacher trial's
:class:`~car_hf.trial.TrialResult`) and:

1. chooses K teachers (:func:`choose_teachers`; default: CAR's top 3, the reward-only winner and CAR's
   bottom, deduplicated);
2. builds each teacher's training set on the SAME first ``n_instructions`` instructions they all answered;
3. fine-tunes the student on each (LoRA by default) through the SFT recipe's library functions
   (:mod:`car_hf.training`, :class:`~car_hf.integrations.trl.CARSFTTrainer`);
4. evaluates the untuned student and every tuned one on the same held-out set (:func:`car_hf.evaluate_student`);
5. reports the realized performance per teacher with intervals, a paired bootstrap test between the top two,
   ``spearman_table`` of every signal against the realized performance with bootstrap intervals over held-out
   items, ``fit_beta``, the budget and what it cost (:class:`car_hf.pilot_report.PilotReport`).

Everything that can be checked without a model is checked before training: K >= 2 teachers, teachers answering
the same instructions, a non-empty held-out set disjoint from the training instructions, and the scorers'
columns; the untuned student is evaluated first, so a metric returning non-numbers fails before any training.
Trained students and evaluations go to the score cache (:mod:`car_hf.cache`) under ``output_dir``: a killed
pilot resumes without retraining or re-evaluating a finished student. Under ``accelerate launch`` every
process trains; the main process evaluates and writes the report.

Example:
    >>> table = rank_generators({"generator": list("abcde"), "reward": [.9, .8, .7, .95, .1],
    ...                          "base_loss": [1.0, 1.2, 1.1, 4.0, 1.0]}, n_bootstrap=0)
    >>> choose_teachers(table)
    [('a', 'CAR rank 1'), ('b', 'CAR rank 2'), ('c', 'CAR rank 3'), ('d', 'reward-only winner'), ('e', 'CAR bottom')]
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._version import __version__
from .cache import ScoreCache
from .errors import ConfigError, InputError
from .evaluation import MEASURES, EvaluationConfig, StudentEvaluation, evaluate_student, summarize
from .formats import detect_layout, row_example
from .pilot_report import PilotReport, build_report
from .ranking import rank_generators

logger = logging.getLogger(__name__)

BASELINE = "(untuned student)"


@dataclass
class PilotArguments:
    """The pool, the held-out set, the teachers, the number of training instructions and the seeds (the options
    of ``car-hf pilot`` and ``recipes/pilot.py`` next to TRL's ``SFTConfig`` and ``ModelConfig``)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "The scored pool (long layout with reward and base_loss): a file, a "
                                        "save_to_disk folder (e.g. recipes/score.py's output_dir/scored) or a Hub id."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a Hub dataset or DatasetDict."})
    heldout_name: str | None = field(default=None, metadata={"help": "Held-out instructions (file, folder, Hub id)."})
    heldout_split: str = field(default="train", metadata={"help": "Split of the held-out dataset."})
    n_instructions: int = field(default=1000, metadata={"help": "Training instructions per teacher (the same ones)."})
    teachers: list[str] | None = field(
        default=None, metadata={"help": "Teachers to compare (default: CAR top 3, reward-only winner, CAR bottom)."})
    seeds: list[int] | None = field(
        default=None, metadata={"help": "Training seeds: one student per teacher and seed, realized values averaged "
                                        "over seeds (default: the training seed alone)."})
    by: str = field(default="generator", metadata={"help": "The column naming each row's teacher."})
    beta: float = field(default=1.0, metadata={"help": "CAR's beta for the prediction."})
    reward_transform: str = field(default="raise", metadata={"help": "CAR's reward transform (car_hf.car)."})
    measure: str | None = field(
        default=None, metadata={"help": "Realized measure: accuracy | reward | win_rate | lc_win_rate (default: "
                                        "the first the scorers give)."})


def pilot_parser(parser_class: type | None = None, **kwargs: Any) -> Any:
    """The ``TrlParser`` (or ``parser_class``, a subclass) of a pilot: :class:`PilotArguments`,
    ``EvaluationArguments`` (the scorers), ``TeacherConfig`` (the students' generation), ``trl.SFTConfig`` and
    ``trl.ModelConfig``; ``--config`` reads a YAML file of them (command-line options override it).

    >>> args, scorers, generation, training_args, model_args = pilot_parser().parse_args_and_config(
    ...     ["--model_name_or_path", "student", "--seeds", "0", "1", "--metric", "answer_match", "--use_peft",
    ...      "--use_cpu", "--bf16", "false"])  # SFTConfig's default bf16 needs a GPU
    >>> args.seeds, scorers.metric, model_args.use_peft
    ([0, 1], 'answer_match', True)
    """
    from trl import ModelConfig, SFTConfig, TrlParser

    from .evaluation import EvaluationArguments
    from .teacher import TeacherConfig

    return (parser_class or TrlParser)((PilotArguments, EvaluationArguments, TeacherConfig, SFTConfig, ModelConfig),
                                       **kwargs)


def pilot_from_arguments(args: PilotArguments, scorers: Any, generation: Any, training_args: Any,
                         model_args: Any) -> PilotReport | None:
    """:func:`run_pilot` from :func:`pilot_parser`'s dataclasses: sources checked, data loaded, report logged."""
    from .data import load_data
    from .distributed import setup_logging
    from .inputs import check_data_source, check_model_source

    setup_logging(training_args.process_index, training_args.world_size)
    check_model_source(model_args.model_name_or_path, "model_name_or_path")
    check_data_source(args.dataset_name)
    check_data_source(args.heldout_name, "heldout_name")
    evaluation = scorers.config(generation)
    pool = load_data(args.dataset_name, split=args.dataset_split)
    heldout = load_data(args.heldout_name, split=args.heldout_split)
    report = run_pilot(pool, heldout, training_args, model_args, evaluation, n_instructions=args.n_instructions,
                       output_dir=training_args.output_dir, teachers=args.teachers, beta=args.beta,
                       reward_transform=args.reward_transform, by=args.by, measure=args.measure, seeds=args.seeds)
    if report is not None:
        logger.info("pilot report (%s):\n%s", training_args.output_dir, report.to_markdown())
    return report


def choose_teachers(table: pd.DataFrame, teachers: Sequence[str] | None = None, *,
                    by: str = "generator") -> list[tuple[str, str]]:
    """``(teacher, why chosen)`` pairs: ``teachers`` as given, else CAR's top 3, the reward-only winner and CAR's
    bottom (deduplicated, in that order). Refuses fewer than 2 or a teacher missing from ``table``."""
    names = table[by].tolist()
    if teachers:
        missing = [t for t in teachers if t not in names]
        if missing:
            raise InputError(f"teacher(s) {missing} are not in the pool; it has {names}")
        chosen = [(t, "chosen by the user") for t in dict.fromkeys(teachers)]
    else:
        ranked = table.sort_values("car", ascending=False, kind="stable")[by].tolist()
        candidates = [(t, f"CAR rank {i + 1}") for i, t in enumerate(ranked[:3])]
        candidates += [(table.loc[table["reward"].idxmax(), by], "reward-only winner"), (ranked[-1], "CAR bottom")]
        chosen = list({t: (t, why) for t, why in reversed(candidates)}.values())[::-1]  # first reason wins
    if len(chosen) < 2:
        raise InputError(f"a pilot compares at least 2 teachers; got {[t for t, _ in chosen]}")
    return chosen


def _key(prompt: list[dict[str, str]]) -> str:
    return json.dumps([[turn["role"], turn["content"].strip()] for turn in prompt])


def _prompts(ds: Any, layout: Any) -> list[str]:
    """Each row's prompt as a comparable key (the conversation before the response)."""
    batch = ds.to_dict()
    return [_key(row_example(batch, i, layout, i).prompt) for i in range(len(ds))]


def training_rows(pool: Any, teachers: Sequence[str], n: int, *, by: str = "generator") -> dict[str, Any]:
    """Each teacher's rows on the same first ``n`` instructions (in pool order); refuses teachers that do not all
    answer them, or answer one twice."""
    layout = detect_layout(pool.column_names)
    keys, groups = _prompts(pool, layout), pool[by]
    answered: dict[str, dict[str, int]] = {t: {} for t in teachers}
    for i, (key, group) in enumerate(zip(keys, groups)):
        if group in answered:
            if key in answered[group]:
                raise InputError(f"teacher {group!r} answers one instruction twice (rows {answered[group][key]} and "
                                 f"{i}): a pilot trains each student on one answer per instruction")
            answered[group][key] = i
    common = [k for k in dict.fromkeys(keys) if all(k in answered[t] for t in teachers)]
    if n < 1:
        raise ConfigError(f"n_instructions must be >= 1, got {n}")
    if len(common) < n:
        short = {t: len(answered[t]) for t in teachers}
        raise InputError(f"the teachers must answer the same instructions: they share {len(common)}, fewer than "
                         f"n_instructions={n} (instructions answered per teacher: {short})")
    first = common[:n]
    return {t: pool.select([answered[t][k] for k in first]) for t in teachers}


def check_heldout(heldout: Any, train_keys: set[str]) -> None:
    """A non-empty held-out set that shares no instruction with the training set (the overlap is named)."""
    if heldout is None or len(heldout) == 0:
        raise InputError("the held-out set is empty: a pilot evaluates students on held-out instructions")
    from .generate import input_column, read_prompt
    from .teacher import TeacherConfig

    column = input_column(heldout.column_names, TeacherConfig())
    keys = [_key(read_prompt(v, row=i, column=column)) for i, v in enumerate(heldout[column])]
    overlap = [i for i, k in enumerate(keys) if k in train_keys]
    if overlap:
        shown = "; ".join(f"row {i}: {str(heldout[column][i])[:80]!r}" for i in overlap[:3])
        raise InputError(f"the held-out set overlaps the training instructions in {len(overlap)} row(s) ({shown}): "
                         "held-out items must be unseen in training")


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)[:60] + "-" + hashlib.blake2b(name.encode(), digest_size=3).hexdigest()


def content_digest(ds: Any) -> str:
    """A digest of a dataset's rows: the same rows give the same key, whatever file they were read from."""
    return hashlib.blake2b(ds.to_pandas().to_json(orient="records").encode(), digest_size=8).hexdigest()


def _scored_pool(pool: Any) -> Any:
    import datasets

    pool = getattr(pool, "scored", pool)  # a TrialResult: its scored rows
    if isinstance(pool, pd.DataFrame):
        return datasets.Dataset.from_pandas(pool, preserve_index=False)
    return datasets.Dataset.from_dict(dict(pool)) if isinstance(pool, dict) else pool


def run_pilot(pool: Any, heldout: Any, training_args: Any, model_args: Any, evaluation: EvaluationConfig, *,
              n_instructions: int, output_dir: str | Path, teachers: Sequence[str] | None = None,
              beta: float = 1.0, reward_transform: str = "raise", by: str = "generator",
              measure: str | None = None, plain_template: str | None = None,
              seeds: Sequence[int] | None = None) -> PilotReport | None:
    """Fine-tune the student ``model_args.model_name_or_path`` on each chosen teacher's answers and compare the
    predicted (CAR ...) and realized (evaluated) rankings; see the module docstring.

    Args:
        pool: scored rows (see the module docstring) or a ``TrialResult``.
        heldout: a Dataset of held-out instructions (with the columns the scorers need, e.g. ``answer``).
        training_args: ``trl.SFTConfig`` (epochs, learning rate ...); ``output_dir`` is set per student.
        model_args: ``trl.ModelConfig`` (the student, ``use_peft`` and the LoRA rank).
        evaluation: generation options and scorers of :func:`car_hf.evaluate_student`.
        n_instructions: training instructions per teacher (the same for every teacher).
        output_dir: the report, the picture and the cache (students and evaluations).
        teachers: the teachers to compare (default: see :func:`choose_teachers`).
        beta, reward_transform: CAR's, for the prediction (the table also fits beta).
        measure: the realized measure (default: the first of ``evaluation.measures()``).
        seeds: training seeds (default: ``training_args.seed`` alone); each teacher's student is trained once per
            seed and its realized value per held-out item is the mean over seeds (:func:`average_seeds`).

    Returns the report (None on the other processes of a multi-process run).
    """
    from accelerate import PartialState
    from transformers import AutoTokenizer

    from . import training
    from .config import PLAIN_TEMPLATE
    from .integrations.trl import training_hyperparameters
    from .models import local_model_path, model_fingerprint

    started = time.time()
    # 1. Checks that need no model.
    pool = _scored_pool(pool)
    table = rank_generators(pool, by=by, beta=beta, reward_transform=reward_transform,
                            n_bootstrap=evaluation.n_bootstrap, seed=evaluation.seed)
    chosen = choose_teachers(table, teachers, by=by)
    rows = training_rows(pool, [t for t, _ in chosen], n_instructions, by=by)
    layout = detect_layout(pool.column_names)
    check_heldout(heldout, set(_prompts(next(iter(rows.values())), layout)))
    evaluation.check(heldout)
    measure = measure or evaluation.measures()[0]
    if measure not in evaluation.measures():
        raise ConfigError(f"measure {measure!r} is not among the evaluated measures {evaluation.measures()}")
    training.check_training_arguments(training_args, model_args, training.SFTScriptArguments())
    seeds = list(dict.fromkeys(seeds)) if seeds is not None else [training_args.seed]
    if not seeds:
        raise ConfigError("seeds is empty: give at least one training seed")

    # 2. The tokenizer and each teacher's TRL records (a bad row is reported here, before training).
    student = local_model_path(model_args.model_name_or_path, revision=model_args.model_revision)
    tokenizer = AutoTokenizer.from_pretrained(student, revision=model_args.model_revision)
    training.check_tokenizer(tokenizer, training_args, model_args.model_name_or_path)
    records = {t: training.to_records(r, tokenizer, layout, plain_template or PLAIN_TEMPLATE) for t, r in rows.items()}

    # What a student's training depends on (so adding a teacher or changing the held-out set retrains nothing).
    # The seed is part of each student's name instead, so adding a seed retrains nothing either.
    training_budget = {"student": model_args.model_name_or_path, "n_instructions": n_instructions,
                       **{k: v for k, v in training_hyperparameters(training_args, model_args).items()
                          if v is not None and k != "seed"}}
    budget = training_budget | {"seeds": seeds, "n_heldout": len(heldout), "teachers": len(chosen)}
    root = Path(output_dir) / "cache"
    trained = ScoreCache(root, {"car_hf_version": __version__, "what": "pilot students",
                                "student": model_fingerprint(student, revision=model_args.model_revision),
                                "budget": training_budget})
    evaluations = {"car_hf_version": __version__, "what": "pilot evaluations", "heldout": content_digest(heldout),
                   "evaluation": evaluation.identity()}
    evaluated = ScoreCache(root, evaluations | {"students": trained.digest})
    untuned = ScoreCache(root, evaluations | {"student": trained.key["student"]})  # whatever the budget
    main = PartialState().is_main_process
    cost: dict[str, dict[str, Any]] = {}

    # 3. The untuned student first: the scorers run on real answers before any training.
    results: dict[str, StudentEvaluation] = {}
    if main:
        results[BASELINE], cost[BASELINE] = _evaluate(untuned, "eval-baseline", student, heldout, evaluation,
                                                      BASELINE)
    PartialState().wait_for_everyone()
    # 4. Each teacher and seed: train (unless cached), evaluate (unless cached).
    by_seed: dict[str, dict[int, StudentEvaluation]] = {}
    for teacher, _ in chosen:
        for seed in seeds:
            part = f"student-{_slug(teacher)}-{content_digest(records[teacher])}-seed{seed}"
            folder, seconds, reused = _train(trained, part, records[teacher], tokenizer, student, training_args,
                                             model_args, seed)
            PartialState().wait_for_everyone()
            if main:
                by_seed.setdefault(teacher, {})[seed], spent = _evaluate(evaluated, f"eval-{part}", folder, heldout,
                                                                         evaluation, teacher)
                cost.setdefault(teacher, Counter()).update(  # summed over seeds
                    {"train_seconds": seconds or 0.0, "eval_seconds": spent["eval_seconds"],
                     "training_reused": int(reused), "evaluation_reused": int(spent["evaluation_reused"])})
    if not main:
        return None
    for teacher, evaluations in by_seed.items():
        results[teacher] = average_seeds(evaluations, evaluation, list(heldout.column_names))
    # What the pilot cost (every student, including those a resumed run reused) and what this run took.
    spent = sum((c.get("train_seconds") or 0) + c["eval_seconds"] for c in cost.values())
    cost["total"] = {"compute_seconds": round(spent, 1), "wall_seconds": round(time.time() - started, 1),
                     "processes": training_args.world_size, "device": str(training_args.device)}
    realized_by_seed = {t: {seed: e.summary[measure]["mean"] for seed, e in evaluations.items()}
                        for t, evaluations in by_seed.items()}
    report = build_report(table, chosen, results, measure=measure, baseline=BASELINE, budget=budget, cost=cost,
                          evaluation=evaluation, by=by, by_seed=realized_by_seed)
    report.save(output_dir)
    return report


def average_seeds(evaluations: Mapping[int, StudentEvaluation], config: EvaluationConfig,
                  columns: Sequence[str]) -> StudentEvaluation:
    """One teacher's evaluation over its students of several seeds: per held-out item, the mean over seeds of each
    per-item measure (so intervals and paired tests stay over the same items), each seed's values and answers
    kept as ``<column>_seed<s>`` next to the held-out ``columns``.

    >>> import pandas as pd
    >>> one = StudentEvaluation("t", pd.DataFrame({"q": ["a", "b"], "response": ["1", "2"], "correct": [1., 0.]}), {})
    >>> two = StudentEvaluation("t", pd.DataFrame({"q": ["a", "b"], "response": ["1", "3"], "correct": [1., 1.]}), {})
    >>> mean = average_seeds({0: one, 1: two}, EvaluationConfig(n_bootstrap=0), ["q"])
    >>> mean.items["correct"].tolist(), mean.items["response_seed1"].tolist(), mean.summary["accuracy"]["mean"]
    ([1.0, 0.5], ['1', '3'], 0.75)
    """
    if len(evaluations) == 1:
        return next(iter(evaluations.values()))
    first = next(iter(evaluations.values()))
    items = first.items[[c for c in columns if c in first.items.columns]].copy()
    averaged = [c for c in (*MEASURES.values(), "length_difference") if c in first.items.columns]
    for column in ("response", *averaged):
        for seed, evaluation in evaluations.items():
            items[f"{column}_seed{seed}"] = evaluation.items[column].to_numpy()
    for column in averaged:
        items[column] = np.mean([e.items[column].to_numpy(float) for e in evaluations.values()], axis=0)
    return StudentEvaluation(first.name, items, summarize(items, config))


def _train(cache: ScoreCache, part: str, records: Any, tokenizer: Any, student: str, training_args: Any,
           model_args: Any, seed: int) -> tuple[Path, float | None, bool]:
    """The trained student's folder (an adapter with LoRA), its training seconds, and whether it was reused from
    the cache (trained only when the cache has no such part)."""
    folder = cache.folder / f"model-{part}"
    if cache.has(part):
        logger.info("reusing the trained student %s", folder)
        return folder, cache.load(part)[1].get("train_seconds"), True
    from trl import get_peft_config

    from .integrations.trl import CARSFTTrainer

    args = copy.deepcopy(training_args)
    args.output_dir = str(folder)
    args.seed = seed
    args.model_init_kwargs = {"dtype": model_args.dtype, "attn_implementation": model_args.attn_implementation,
                              **(training_args.model_init_kwargs or {})}
    start = time.time()
    trainer = CARSFTTrainer(model=student, args=args, train_dataset=records,
                            processing_class=tokenizer, peft_config=get_peft_config(model_args))
    result = trainer.train()
    trainer.save_model(str(folder))
    seconds = round(time.time() - start, 1)
    if trainer.is_world_process_zero():  # the part marks the student complete, so it is written last
        cache.save(part, records, meta={"train_seconds": seconds, "metrics": result.metrics})
    del trainer
    gc.collect()
    return folder, seconds, False


def _evaluate(cache: ScoreCache, part: str, model: Any, heldout: Any, evaluation: EvaluationConfig,
              name: str) -> tuple[StudentEvaluation, dict[str, Any]]:
    """A student's evaluation, from the cache when it holds this part."""
    import datasets

    loaded = cache.load(part)
    if loaded is not None:
        logger.info("reusing the evaluation of %s", name)
        return StudentEvaluation(name, loaded[0].to_pandas(), loaded[1]["summary"]), loaded[1]["cost"] | {
            "evaluation_reused": True}
    start = time.time()
    result = evaluate_student(str(model), heldout, evaluation, name=name)
    cost = {"eval_seconds": round(time.time() - start, 1), "evaluation_reused": False}
    cache.save(part, datasets.Dataset.from_pandas(result.items, preserve_index=False),
               meta={"summary": result.summary, "cost": cost})
    return result, cost

"""Pilot distillation: is CAR's choice of teacher right for *your* student? Predicted vs. realized.

:func:`run_pilot` takes a scored pool (a long-layout Dataset/DataFrame with ``instruction``/``prompt``/
``messages``, the response, the generator column, a reward column and ``base_loss``; or a teacher trial's
:class:`~car_hf.ranking.results.TrialResult`) and:

1. chooses K teachers (:func:`choose_teachers`; default: CAR's top 3, the reward-only winner and CAR's bottom,
   deduplicated);
2. builds each teacher's training set on the SAME first ``n_instructions`` instructions they all answer
   (:func:`car_hf.evaluation.pilot_data.training_rows`, which says what happens when they answer different ones);
3. fine-tunes the student on each (LoRA by default) through the SFT recipe's library functions
   (:mod:`car_hf.training.sft`, :class:`~car_hf.training.sft_trainer.CARSFTTrainer`);
4. evaluates the untuned student and every tuned one on the same held-out set (:func:`car_hf.evaluate_student`;
   a LoRA student merged into its base in the training dtype);
5. reports the realized performance per teacher with intervals, a paired bootstrap test between the top two,
   ``spearman_table`` of every signal against the realized performance with bootstrap intervals over held-out
   items and an exact permutation p-value over teachers, ``fit_beta``, the budget and what it cost
   (:class:`car_hf.evaluation.pilot_report.PilotReport`). The report is written after every round of finished students,
   so a stopped pilot leaves a partial one.

Everything that can be checked without a model is checked before training: K >= 2 teachers, their shared
instructions, a non-empty held-out set disjoint from the training instructions, and the scorers' columns; the
untuned student is evaluated first, so a metric returning non-numbers fails before any training. Trained students
and evaluations go to the score cache (:mod:`car_hf.core.cache`) under ``output_dir``, keyed by everything they depend
on (every ``SFTConfig`` and ``ModelConfig`` field but output and logging ones; the scorers, a reward function by
its source): a stopped pilot resumes without retraining or re-evaluating a finished student, and says so in one
line with the command to re-run.

Under ``accelerate launch`` (``output_dir`` on a filesystem every process sees) the processes train each student
together, ``num_processes`` students per round, then evaluate that round's students in parallel, one per process,
and meet: a process waits at most one evaluation (:data:`car_hf.evaluation.pilot_sft.PILOT_DDP_TIMEOUT`); an error on one
process is raised on every process. The main process writes the report.

Example:
    >>> table = rank_generators({"generator": list("abcde"), "reward": [.9, .8, .7, .95, .1],
    ...                          "base_loss": [1.0, 1.2, 1.1, 4.0, 1.0]}, n_bootstrap=0)
    >>> choose_teachers(table)
    [('a', 'CAR rank 1'), ('b', 'CAR rank 2'), ('c', 'CAR rank 3'), ('d', 'reward-only winner'), ('e', 'CAR bottom')]
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from car_hf._version import __version__
from car_hf.core.cache import ScoreCache, file_digests, rows_digest
from car_hf.core.errors import ConfigError, InputError
from car_hf.evaluation.student import MEASURES, EvaluationConfig, StudentEvaluation, evaluate_student, load_student, summarize
from car_hf.core.formats import detect_layout
from car_hf.evaluation.pilot_args import PilotArguments, pilot_parser
from car_hf.evaluation.pilot_data import (
    check_heldout,
    check_not_empty_file,
    choose_teachers,
    content_digest,
    prompt_keys,
    scored_pool,
    slug,
    training_rows,
)
from car_hf.evaluation.pilot_report import PilotReport, build_report, measure_label
from car_hf.ranking.audit import audit_leaderboard
from car_hf.ranking.leaderboard import rank_generators

logger = logging.getLogger(__name__)

BASELINE = "(untuned student)"
__all__ = ["BASELINE", "PilotArguments", "average_seeds", "choose_teachers", "pilot_from_arguments", "pilot_parser",
           "run_pilot", "training_identity", "training_rows"]

# SFTConfig fields that change where and how a run is logged or saved, not the student it trains (the seed is in
# each student's name instead, so adding a seed retrains nothing).
_NOT_TRAINING = ("output_dir", "overwrite_output_dir", "logging_", "log_", "report_to", "run_name", "project",
                 "trackio_", "disable_tqdm", "push_to_hub", "hub_", "save_", "resume_from_checkpoint", "ddp_timeout",
                 "local_rank", "seed")


def training_identity(training_args: Any, model_args: Any) -> dict[str, Any]:
    """What a trained student depends on, for its cache key: every ``SFTConfig`` field except the output and
    logging ones (optimizer, weight decay, max_grad_norm, checkpointing, precision ...), the number of processes
    (it sets the effective batch) and every ``ModelConfig`` field (dtype, LoRA ...)."""
    fields = {k: v for k, v in training_args.to_dict().items() if not k.startswith(_NOT_TRAINING)}
    return {"sft": fields, "num_processes": training_args.world_size, "model": dataclasses.asdict(model_args)}


def pilot_from_arguments(args: PilotArguments, scorers: Any, generation: Any, training_args: Any,
                         model_args: Any, *, rerun: str | None = None) -> PilotReport | None:
    """:func:`run_pilot` from :func:`pilot_parser`'s dataclasses: sources checked, data loaded (an empty file is
    refused by name), the report written (its path logged; the caller prints it). ``rerun``: the command that
    resumes, named if the pilot stops."""
    from car_hf.core.data import load_data
    from car_hf.core.distributed import setup_logging
    from car_hf.core.inputs import check_data_source, check_model_source

    setup_logging(training_args.process_index, training_args.world_size)
    check_model_source(model_args.model_name_or_path, "model_name_or_path")
    for source, option in ((args.dataset_name, "dataset_name"), (args.heldout_name, "heldout_name")):
        check_data_source(source, option)
        check_not_empty_file(source, option)
    evaluation = scorers.config(generation)
    pool = load_data(args.dataset_name, split=args.dataset_split)
    heldout = load_data(args.heldout_name, split=args.heldout_split)
    report = run_pilot(pool, heldout, training_args, model_args, evaluation, n_instructions=args.n_instructions,
                       output_dir=training_args.output_dir, teachers=args.teachers, beta=args.beta,
                       reward_transform=args.reward_transform, by=args.by, measure=args.measure, seeds=args.seeds,
                       reward_column=args.reward_column, measure_name=args.measure_name, rerun=rerun)
    if report is not None:
        logger.info("wrote the pilot report to %s", Path(training_args.output_dir) / "report.md")
    return report


def run_pilot(pool: Any, heldout: Any, training_args: Any, model_args: Any, evaluation: EvaluationConfig, *,
              n_instructions: int, output_dir: str | Path, teachers: Sequence[str] | None = None,
              beta: float = 1.0, reward_transform: str = "raise", by: str = "generator",
              measure: str | None = None, measure_name: str | None = None, reward_column: str = "reward",
              plain_template: str | None = None, seeds: Sequence[int] | None = None,
              rerun: str | None = None) -> PilotReport | None:
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
        measure: the realized measure (default: the first of ``evaluation.measures()``); ``measure_name`` its
            name in the report (default: :func:`car_hf.evaluation.pilot_report.measure_label`).
        reward_column: the pool's reward column.
        seeds: training seeds (default: ``training_args.seed`` alone); each teacher's student is trained once per
            seed and its realized value per held-out item is the mean over seeds (:func:`average_seeds`).
        rerun: the command that resumes this pilot, named in the line logged if it stops.

    Returns the report (None on the other processes of a multi-process run).
    """
    from accelerate import PartialState
    from transformers import AutoTokenizer

    from car_hf.training import sft as training
    from car_hf.core.config import PLAIN_TEMPLATE
    from car_hf.training.sft_trainer import training_hyperparameters
    from car_hf.core.models import local_model_path, model_fingerprint

    started = time.time()
    # 1. Checks that need no model.
    pool = scored_pool(pool)
    table = rank_generators(pool, by=by, beta=beta, reward_transform=reward_transform, reward_column=reward_column,
                            n_bootstrap=evaluation.n_bootstrap, seed=evaluation.seed)
    table = audit_leaderboard(table, pool, student=model_args.model_name_or_path)  # the report shows its warnings
    chosen = choose_teachers(table, teachers, by=by)
    shared = training_rows(pool, [t for t, _ in chosen], n_instructions, by=by)
    layout = detect_layout(pool.column_names)
    check_heldout(heldout, set(prompt_keys(next(iter(shared.rows.values())), layout)))
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
    records = {t: training.to_records(r, tokenizer, layout, plain_template or PLAIN_TEMPLATE)
               for t, r in shared.rows.items()}

    # What a student's training depends on (so adding a teacher or changing the held-out set retrains nothing).
    training_budget = {"student": model_args.model_name_or_path, "n_instructions": n_instructions,
                       **{k: v for k, v in training_hyperparameters(training_args, model_args).items()
                          if v is not None and k != "seed"}}
    budget = training_budget | {"seeds": seeds, "n_heldout": len(heldout), "teachers": len(chosen)} | (
        {"skipped_instructions": shared.skipped} if shared.skipped else {})
    root = Path(output_dir) / "cache"
    trained = ScoreCache(root, {"car_hf_version": __version__, "what": "pilot students",
                                "student": model_fingerprint(student, revision=model_args.model_revision),
                                "budget": training_budget, "training": training_identity(training_args, model_args)})
    evaluations = {"car_hf_version": __version__, "what": "pilot evaluations", "heldout": content_digest(heldout),
                   "evaluation": evaluation.identity()}
    evaluated = ScoreCache(root, evaluations | {"students": trained.digest})
    untuned = ScoreCache(root, evaluations | {"student": trained.key["student"]})  # whatever the budget
    state = PartialState()
    run = partial(_evaluate, heldout=heldout, evaluation=evaluation, merge_dtype=model_args.dtype)
    cost: dict[str, dict[str, Any]] = {}
    results: dict[str, StudentEvaluation] = {}
    by_seed: dict[str, dict[int, StudentEvaluation]] = {}
    students = [(teacher, seed) for teacher, _ in chosen for seed in seeds]

    def report(final: bool) -> PilotReport | None:
        """The report of the teachers whose every seed is evaluated (written as it stands when not final)."""
        done = {t: e for t, e in by_seed.items() if len(e) == len(seeds)}
        if not done:
            return None
        for teacher, evaluations_ in done.items():
            results[teacher] = average_seeds(evaluations_, evaluation, list(heldout.column_names))
        spent = sum((c.get("train_seconds") or 0) + c["eval_seconds"] for k, c in cost.items() if k != "total")
        cost["total"] = {"compute_seconds": round(spent, 1), "wall_seconds": round(time.time() - started, 1),
                         "processes": training_args.world_size, "device": str(training_args.device)}
        label = measure_label(measure, evaluation, results.values(), measure_name)
        partial_note = None if final else (f"partial: {len(done)} of {len(chosen)} teachers evaluated so far (the "
                                           "pilot is running, or stopped: re-run it to finish)")
        built = build_report(table, [c for c in chosen if c[0] in done], results, measure=measure, baseline=BASELINE,
                             budget=budget, cost=cost, evaluation=evaluation, by=by, label=label,
                             by_seed={t: {s: e.summary[measure]["mean"] for s, e in done[t].items()} for t in done},
                             partial=partial_note)
        built.save(output_dir)
        return built

    finished = 0
    try:
        # 3. The untuned student first: the scorers run on real answers before any training.
        results[BASELINE], spent = _share(state, [partial(run, untuned, "eval-baseline", student, BASELINE)])[0]
        cost[BASELINE] = spent
        # 4. Rounds of one student per process: trained together, then evaluated in parallel (unless cached).
        for start in range(0, len(students), state.num_processes):
            group, jobs, trainings = students[start:start + state.num_processes], [], []
            for teacher, seed in group:
                part = f"student-{slug(teacher)}-{content_digest(records[teacher])}-seed{seed}"
                folder, seconds, reused = _train(trained, part, records[teacher], tokenizer, student, training_args,
                                                 model_args, seed)
                trainings.append((seconds, reused))
                jobs.append(partial(run, evaluated, f"eval-{part}", folder, teacher))
                if state.is_main_process:  # a LoRA student merged here (once): only rank 0 can save it
                    load_student(folder, model_args.dtype)
            state.wait_for_everyone()  # every student of the round saved (and merged) before anyone loads one
            for (teacher, seed), (seconds, reused), (result, spent) in zip(group, trainings, _share(state, jobs)):
                by_seed.setdefault(teacher, {})[seed] = result
                cost.setdefault(teacher, Counter()).update(  # summed over seeds
                    {"train_seconds": seconds or 0.0, "eval_seconds": spent["eval_seconds"],
                     "training_reused": int(reused), "evaluation_reused": int(spent["evaluation_reused"])})
            finished += len(group)
            if state.is_main_process and finished < len(students):
                report(final=False)
    except BaseException as error:
        # A user error before any student finished is its own one-line message: re-running would not help.
        if state.is_main_process and (finished or not isinstance(error, (ConfigError, InputError))):
            logger.error("the pilot stopped after %d of %d students were trained and evaluated; they are kept in %s "
                         "(a partial report, if any, in %s): re-run %s to resume from there", finished,
                         len(students), root, Path(output_dir) / "report.md",
                         f"`{rerun}`" if rerun else "the same command")
        raise
    return report(final=True) if state.is_main_process else None


def _share(state: Any, jobs: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run ``jobs`` (at most one per process: job i on process i) and return every job's result on every process.

    The processes meet once, when every job is done, so a process waits at most the slowest other job. A job that
    fails is raised on its own process and named on the others, so no process waits for a job that will never
    finish."""
    if len(jobs) > state.num_processes:
        raise ValueError(f"{len(jobs)} jobs for {state.num_processes} processes: at most one each")
    outcome: tuple[str, Any] | None = None
    error: BaseException | None = None
    if state.process_index < len(jobs):
        try:
            outcome = ("ok", jobs[state.process_index]())
        except Exception as caught:  # reported to the other processes before it is raised here
            error, outcome = caught, ("error", f"{type(caught).__name__}: {caught}")
    if state.num_processes == 1:
        outcomes = [outcome]
    else:
        from accelerate.utils import gather_object

        outcomes = gather_object([outcome])
    if error is not None:
        raise error
    failed = [(i, o[1]) for i, o in enumerate(outcomes[:len(jobs)]) if o[0] == "error"]
    if failed:
        raise RuntimeError(f"process {failed[0][0]} failed: {failed[0][1]}")
    return [o[1] for o in outcomes[:len(jobs)]]


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
    kept = [*columns, "harness_task", "harness_doc_id", "harness_prompt", "harness_target"]  # harness items' keys
    items = first.items[[c for c in dict.fromkeys(kept) if c in first.items.columns]].copy()
    averaged = [c for c in (*MEASURES.values(), "length_difference", "harness_score", "harness")
                if c in first.items.columns]
    for column in ("response", *averaged):
        for seed, evaluation in evaluations.items():
            items[f"{column}_seed{seed}"] = evaluation.items[column].to_numpy()
    for column in averaged:
        items[column] = np.mean([e.items[column].to_numpy(float) for e in evaluations.values()], axis=0)
    if "empty_answer" in first.items.columns:  # per item: how many seeds' students answered nothing
        items["empty_answer"] = np.sum([e.items["empty_answer"].to_numpy(int) for e in evaluations.values()], axis=0)
    return StudentEvaluation(first.name, items, summarize(items, config, first.summary))


def _train(cache: ScoreCache, part: str, records: Any, tokenizer: Any, student: str, training_args: Any,
           model_args: Any, seed: int) -> tuple[Path, float | None, bool]:
    """The trained student's folder (an adapter with LoRA), its training seconds, and whether it was reused from
    the cache (trained only when the cache has no such part)."""
    folder = cache.folder / f"model-{part}"
    inputs = rows_digest(records)  # the part verifies against its training records and its model folder's files
    if (loaded := cache.load(part, inputs=inputs)) is not None:
        logger.info("reusing the trained student %s", folder)
        return folder, loaded[1].get("train_seconds"), True
    from trl import get_peft_config

    from car_hf.training.sft_trainer import CARSFTTrainer

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
        cache.save(part, records, meta={"train_seconds": seconds, "metrics": result.metrics}, inputs=inputs,
                   attached=[folder])
    del trainer
    gc.collect()
    return folder, seconds, False


def _evaluate(cache: ScoreCache, part: str, model: Any, name: str, *, heldout: Any, evaluation: EvaluationConfig,
              merge_dtype: str | None) -> tuple[StudentEvaluation, dict[str, Any]]:
    """A student's evaluation (a LoRA student merged in ``merge_dtype``), from the cache when it holds this part."""
    import datasets

    from car_hf.core.models import model_fingerprint

    # An evaluation verifies against the student's files (a retrained student is evaluated again; a folder's top
    # level only: the evaluation adds merged/ to a LoRA student's) and the held-out items.
    student = file_digests(model) if Path(model).is_dir() else model_fingerprint(str(model))
    inputs = {"model": student, "heldout": rows_digest(heldout)}
    loaded = cache.load(part, inputs=inputs)
    if loaded is not None:
        logger.info("reusing the evaluation of %s", name)
        return StudentEvaluation(name, loaded[0].to_pandas(), loaded[1]["summary"]), loaded[1]["cost"] | {
            "evaluation_reused": True}
    logger.info("evaluating %s", name)
    start = time.time()
    result = evaluate_student(str(model), heldout, evaluation, name=name, merge_dtype=merge_dtype)
    cost = {"eval_seconds": round(time.time() - start, 1), "evaluation_reused": False}
    cache.save(part, datasets.Dataset.from_pandas(result.items, preserve_index=False),
               meta={"summary": result.summary, "cost": cost}, inputs=inputs)
    return result, cost

"""Students evaluated on lm-evaluation-harness tasks, in memory, with per-item results.

:func:`run_harness` runs lm-evaluation-harness through its Python API (``lm_eval.simple_evaluate``) on a loaded
student: the model object car_hf's generation engine already holds, wrapped as
``lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=tokenizer)`` (no reload, no second copy of the
weights; a LoRA student is evaluated merged, as :func:`car_hf.evaluation.student.load_student` merges it, and a
loaded ``PeftModel`` as it is). The tasks are the harness's own definitions: its registry (``gsm8k``, ``ifeval``,
``arc_easy``, ``mmlu`` ..., whose data the Hub or its cache must serve) and local YAML tasks over local files in
``include_path`` (as ``lm_eval --include_path``). Prompts get the student's chat template and system prompt, as
car_hf's own generation does (``chat_template=False``: the task's raw text, the harness's default).

Per item (``log_samples=True``) every task gives one row: ``harness_task``, ``harness_doc_id``, ``harness_prompt``
(the text the model saw), ``harness_target``, ``response`` (the generated text), ``harness_answer`` (what the
task's filter kept of it; for a multiple-choice task the index of the choice with the highest log-likelihood),
``harness_score`` (the task's primary metric on this item:
its first metric under its first filter) and ``harness``, the item's share of the combined score. The measure
``harness:<task>`` is one task's primary metric (the mean of its items' ``harness_score``, checked against the
harness's own aggregate). The measure ``harness`` combines the tasks by one rule: **the mean over tasks of each
task's primary metric** (every task weighs the same, whatever its size). An item's ``harness`` value is its score
times ``n / (T * n_task)`` (n items in all, T tasks), so the plain mean over items is that combined score, and
bootstrap intervals and paired tests between students resample and pair harness items exactly as car_hf's own.

Refused before any model runs (:func:`resolve_tasks`, from ``EvaluationConfig.check``): lm-eval missing or outside
:data:`HARNESS_RANGE` (the message says what to install), an unknown task (with the harness's closest names), a
task that cannot load (e.g. its Hub data offline), a task whose primary metric is not a mean over items (BLEU,
perplexity: nothing to bootstrap or pair). :func:`write_heldout_task` writes a held-out set as a local task scored
by the same ``answer_match`` (the harness and ``--metric answer_match`` then agree item by item);
:func:`write_arithmetic_task` a GSM8K-shaped one over word problems generated here.

Example:
    >>> item_weights(["a", "a", "a", "b"])   # task b's one item weighs as much as task a's three
    [0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 2.0]
"""

from __future__ import annotations

import difflib
import importlib.metadata
import json
import os
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from car_hf.core.errors import ConfigError, InputError

HARNESS_RANGE = ">=0.4.5,<0.5"
"""The lm-evaluation-harness versions car_hf runs (the ``harness`` extra of setup.cfg pins the same range)."""
HARNESS_INSTALL = 'pip install "car_hf[harness]"'
MEASURE = "harness"
TASK_PREFIX = "harness:"
RULE = "mean over tasks of each task's primary metric"
ITEM_COLUMNS = ("harness_task", "harness_doc_id", "harness_prompt", "harness_target", "response", "harness_answer",
                "harness_score", MEASURE)


@dataclass(frozen=True)
class HarnessTask:
    """A resolved harness task: its primary metric and filter, output type, data and size."""

    name: str
    metric: str
    filter: str
    output_type: str
    dataset_path: str | None
    dataset_name: str | None
    split: str | None
    num_fewshot: int | None
    n_items: int
    version: Any = None


def require_harness() -> str:
    """The installed lm-eval version, or a ConfigError saying what to install."""
    from packaging.specifiers import SpecifierSet

    try:
        version = importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"harness tasks need lm-evaluation-harness (lm-eval{HARNESS_RANGE}), which is not "
                          f"installed: {HARNESS_INSTALL}") from None
    if version not in SpecifierSet(HARNESS_RANGE):
        raise ConfigError(f"lm-evaluation-harness {version} is installed; car_hf runs lm-eval{HARNESS_RANGE}: "
                          f"{HARNESS_INSTALL}")
    return version


@lru_cache(maxsize=8)
def _manager(include_path: str | None, defaults: bool, files: tuple[str, ...] = ()) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=defaults)


def task_manager(names: Sequence[str], include_path: str | None = None) -> Any:
    """A ``TaskManager`` that knows ``names``: the local tasks alone when they have them all (quick), else the
    harness's whole registry too (indexing it takes seconds; kept for the process)."""
    require_harness()
    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"harness_include_path {include_path!r} is not a folder (of harness task YAML files)")
    folder = str(Path(include_path).resolve()) if include_path else None
    files = tuple(sorted(str(p) for p in Path(folder).rglob("*.yaml"))) if folder else ()  # a new task: re-index
    if folder:
        local = _manager(folder, False, files)
        if all(n in local.all_tasks for n in names):
            return local
    return _manager(folder, True, files)


def resolve_tasks(names: Sequence[str], include_path: str | None = None) -> list[HarnessTask]:
    """The leaf tasks ``names`` load to (a group gives its subtasks), each checked to be scored per item."""
    if not names:
        raise ConfigError("harness_tasks is empty: name at least one lm-evaluation-harness task")
    manager = task_manager(names, include_path)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        close = "; ".join(f"{n!r}: {', '.join(difflib.get_close_matches(n, manager.all_tasks, 5, 0.6)) or 'none'}"
                          for n in unknown)
        where = f" and in {include_path}" if include_path else " (give --harness_include_path for local YAML tasks)"
        raise ConfigError(f"unknown harness task(s) {unknown}: not among lm-evaluation-harness's "
                          f"{len(manager.all_tasks)} tasks{where}. Closest names: {close}")
    try:
        loaded = manager.load(list(names))["tasks"]
    except Exception as error:  # the harness's own errors: a task's data missing offline, a bad YAML ...
        raise ConfigError(f"harness task(s) {list(names)} could not be loaded: {type(error).__name__}: "
                          f"{error}") from error
    return [_describe(name, task) for name, task in loaded.items()]


def _describe(name: str, task: Any) -> HarnessTask:
    from lm_eval.api.metrics import mean

    aggregation = task.aggregation()
    if not aggregation:
        raise ConfigError(f"harness task {name!r} has no metric")
    metric, combine = next(iter(aggregation.items()))
    if combine is not mean:
        raise ConfigError(f"harness task {name!r} is not scored per item: its metric {metric!r} is aggregated by "
                          f"{getattr(combine, '__name__', combine)!r}, not a mean over items, so it has no per-item "
                          "values to bootstrap or pair; choose a task scored per item (acc, exact_match ...)")
    config = task.config
    filters = config.filter_list or [{"name": "none"}]
    return HarnessTask(name, metric, filters[0]["name"], task.OUTPUT_TYPE, config.dataset_path, config.dataset_name,
                       config.test_split or config.validation_split, config.num_fewshot, len(task.eval_docs),
                       (config.metadata or {}).get("version"))


def harness_identity(config: Any) -> dict[str, Any]:
    """What an ``EvaluationConfig``'s harness results depend on, for cache keys: the tasks, the local task files'
    contents (an edited task re-evaluates), the chat template switch and the harness version."""
    from car_hf.core.cache import file_digests

    return {"tasks": config.harness_tasks, "chat_template": config.harness_chat_template, "lm_eval": require_harness(),
            "include_path": file_digests(config.harness_include_path) if config.harness_include_path else None}


def item_weights(tasks: Sequence[str]) -> list[float]:
    """Per item ``n / (T * n_task)``: the factor that makes the plain mean over items the mean over tasks."""
    counts = Counter(tasks)
    return [len(tasks) / (len(counts) * counts[t]) for t in tasks]


def run_harness(model: Any, tokenizer: Any, names: Sequence[str], include_path: str | None = None, *,
                system_prompt: str | None = None, chat_template: bool | str = True, batch_size: int = 16,
                seed: int = 0) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Evaluate a loaded ``(model, tokenizer)`` on harness tasks: the per-item rows (see the module docstring) and
    per task its description and the harness's own aggregate (``value``). ``chat_template``: True (the
    tokenizer's), a Jinja text (car_hf's ``chat_template`` option), or False (the raw task text)."""
    tasks = resolve_tasks(names, include_path)
    manager = task_manager(names, include_path)
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM

    templated = chat_template is not False
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              chat_template_args={"chat_template": chat_template} if isinstance(chat_template, str) else None)
    states, rank = (random.getstate(), np.random.get_state()), os.environ.get("LOCAL_RANK")
    # One process, one student (the pilot's processes each evaluate their own): simple_evaluate returns its results
    # only where LOCAL_RANK is 0. It seeds the global generators: restored after.
    os.environ["LOCAL_RANK"] = "0"
    with torch.random.fork_rng(devices=[]):
        try:
            out = lm_eval.simple_evaluate(lm, tasks=list(names), task_manager=manager, log_samples=True,
                                          bootstrap_iters=0, apply_chat_template=templated,
                                          fewshot_as_multiturn=templated, system_instruction=system_prompt,
                                          random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                          fewshot_random_seed=seed)
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            if rank is None:
                del os.environ["LOCAL_RANK"]
            else:
                os.environ["LOCAL_RANK"] = rank
    rows, described = [], {}
    for task in tasks:
        samples = sorted((s for s in out["samples"][task.name] if s["filter"] == task.filter),
                         key=lambda s: s["doc_id"])
        scores = [_number(s[task.metric], task) for s in samples]
        value = float(out["results"][task.name][f"{task.metric},{task.filter}"])
        if not samples or abs(float(np.mean(scores)) - value) > 1e-9:
            raise InputError(f"harness task {task.name!r}: its {task.metric} ({value}) is not the mean of its "
                             f"{len(samples)} per-item values: the task is not scored per item")
        described[task.name] = asdict(task) | {"value": value, "n_shot": out.get("n-shot", {}).get(task.name)}
        rows += [{"harness_task": task.name, "harness_doc_id": int(s["doc_id"]),
                  "harness_prompt": _prompt(s), "harness_target": str(s["target"]), "response": _generated(s),
                  "harness_answer": _response(s), "harness_score": score} for s, score in zip(samples, scores)]
    items = pd.DataFrame(rows, columns=list(ITEM_COLUMNS[:-1]))
    items[MEASURE] = items["harness_score"] * item_weights(items["harness_task"].tolist())
    return items, described


def _number(value: Any, task: HarnessTask) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise InputError(f"harness task {task.name!r}: its {task.metric} per item is {value!r}, not a number: the "
                         "task is not scored per item")
    return float(value)


def _prompt(sample: Mapping[str, Any]) -> str:
    first = sample["arguments"][0]
    return str(first[0] if isinstance(first, (list, tuple)) else first)


def _generated(sample: Mapping[str, Any]) -> str:
    """The generated text of a generation task (before its filters); empty for log-likelihood tasks."""
    first = sample["resps"][0][0] if sample["resps"] and sample["resps"][0] else ""
    return first if isinstance(first, str) else ""


def _response(sample: Mapping[str, Any]) -> str:
    """A generated answer as the filter left it; for log-likelihood tasks the index of the likeliest choice."""
    answer = sample["filtered_resps"][0] if len(sample["filtered_resps"]) == 1 else sample["filtered_resps"]
    if isinstance(answer, str):
        return answer
    values = [a[0] if isinstance(a, (list, tuple)) else a for a in sample["filtered_resps"]]
    return str(int(np.argmax(values))) if values else ""


def run_on_generator(generator: Any, config: Any) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """:func:`run_harness` with an ``EvaluationConfig``'s tasks on the model a response generator's transformers
    engine holds (the one that wrote the held-out answers: no second copy); under vLLM, on the same weights loaded
    with transformers once the vLLM engine is released. The student's system prompt and chat template (its
    ``chat_template`` override too) frame the prompts unless ``harness_chat_template`` is off."""
    from car_hf.generation.generate import clear_engine_cache

    c = generator.config
    if c.engine == "transformers":
        engine = generator.engine()
        model, tokenizer = engine.model, engine.tokenizer
    else:
        clear_engine_cache()
        model, tokenizer = generator.model.load(dtype=c.teacher_dtype, device=c.teacher_device)
    template = (c.template_text() or True) if config.harness_chat_template else False
    return run_harness(model, tokenizer, config.harness_tasks, config.harness_include_path,
                       system_prompt=c.system_prompt, chat_template=template, batch_size=config.batch_rows,
                       seed=config.seed)


# ------------------------------------------------------------------------------------------------ measures
def is_harness(measure: str) -> bool:
    return measure == MEASURE or measure.startswith(TASK_PREFIX)


def harness_rows(items: pd.DataFrame) -> pd.Series:
    """Which rows of a student's items are harness items (the others are the held-out set's)."""
    if "harness_task" not in items.columns:
        return pd.Series(False, index=items.index)
    return items["harness_task"].notna()


def measure_values(items: pd.DataFrame, measure: str, column: str | None) -> np.ndarray:
    """The per-item values of ``measure``: harness measures over their harness rows, the others (``column``)
    over the held-out rows."""
    harness = harness_rows(items)
    if measure == MEASURE:
        rows, column = harness, MEASURE
    elif measure.startswith(TASK_PREFIX):
        rows, column = items.get("harness_task") == measure[len(TASK_PREFIX):], "harness_score"
    else:
        rows = ~harness
    if column not in items.columns or not rows.any():
        raise KeyError(f"measure {measure!r} was not evaluated")
    return items.loc[rows, column].to_numpy(dtype=float)


def summarize_harness(items: pd.DataFrame, tasks: Mapping[str, Mapping[str, Any]], boot: Mapping[str, Any],
                      interval: Any) -> dict[str, dict[str, Any]]:
    """The ``harness`` measure (:data:`RULE`) and one ``harness:<task>`` measure per task, each the mean over
    items with ``interval``'s bootstrap (car_hf's ``bootstrap_interval``) and what the task is."""
    if not harness_rows(items).any():
        return {}
    names = list(dict.fromkeys(items.loc[harness_rows(items), "harness_task"]))
    summary = {MEASURE: interval(measure_values(items, MEASURE, None), **boot) | {"rule": RULE, "tasks": names}}
    for name in names:  # the task's description, then this evaluation's values (a seed average's, say)
        summary[TASK_PREFIX + name] = dict(tasks.get(TASK_PREFIX + name, tasks.get(name, {}))) | interval(
            measure_values(items, TASK_PREFIX + name, None), **boot)
    return summary


# ------------------------------------------------------------------------------------------------ local tasks
def _write_task(folder: Path, name: str, splits: Mapping[str, Sequence[Mapping[str, Any]]],
                spec: Mapping[str, Any], relative_to: str | Path | None = None) -> Path:
    """``<name>[_<split>].jsonl`` per split and ``<name>.yaml`` reading them (a ``!function`` value as the tag);
    the data paths absolute, or relative to ``relative_to`` (the folder the harness will run in)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in splits.items():
        data = folder / (f"{name}.jsonl" if split == "test" else f"{name}_{split}.jsonl")
        data.write_text("".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        files[split] = str(data.resolve().relative_to(Path(relative_to).resolve()) if relative_to else data.resolve())
    config = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": files}, "test_split": "test",
              **spec}
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    path = folder / f"{name}.yaml"
    path.write_text(re.sub(r"'(!function [\w.]+)'", r"\1", text), encoding="utf-8")
    return path


def answer_match_result(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, float]:
    """``process_results`` of :func:`write_heldout_task`'s tasks: car_hf's ``answer_match`` after
    ``extract_answer`` (the scorer of ``--metric answer_match``), as ``exact_match``."""
    return {"exact_match": _answer_reward()(prompts=[""], completions=[results[0]], answer=[doc["answer"]])[0]}


@lru_cache(maxsize=1)
def _answer_reward() -> Any:
    from car_hf.generation.tasks import AnswerReward

    return AnswerReward()


def write_heldout_task(heldout: Any, folder: str | Path, name: str = "car_heldout", *, max_new_tokens: int = 256,
                       until: Sequence[str] = (), prompt_column: str = "instruction",
                       answer_column: str = "answer") -> Path:
    """Write a held-out set (text prompts with reference answers) as a local harness task in ``folder``:
    ``<name>.jsonl`` and ``<name>.yaml`` (greedy, ``max_new_tokens``, stopping at ``until``, scored by
    :func:`answer_match_result`). Returns the YAML's path; ``--harness_include_path folder --harness_tasks name``
    runs it."""
    columns = list(heldout.column_names)
    missing = [c for c in (prompt_column, answer_column) if c not in columns]
    if missing:
        raise InputError(f"the held-out set has no column(s) {missing}; it has {columns}")
    rows = [{"instruction": row[prompt_column], "answer": str(row[answer_column])} for row in heldout]
    bad = next((i for i, r in enumerate(rows) if not isinstance(r["instruction"], str)), None)
    if bad is not None:
        raise InputError(f"row {bad}, column {prompt_column!r}: a harness task's prompt is text, got "
                         f"{type(rows[bad]['instruction']).__name__}")
    return _write_task(Path(folder), name, {"test": rows}, {
        "output_type": "generate_until", "doc_to_text": "{{instruction}}", "doc_to_target": "{{answer}}",
        "process_results": f"!function {__name__}.answer_match_result",
        "generation_kwargs": {"until": list(until), "max_gen_toks": max_new_tokens, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0}})


_ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cookies")
_NAMES = ("Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo")


def arithmetic_problems(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` two-step word problems generated here, each with a GSM8K-style worked ``answer`` ending in
    ``#### <number>``."""
    rng, rows = random.Random(seed), []
    for _ in range(n):
        who, thing = rng.choice(_NAMES), rng.choice(_ITEMS)
        boxes, per = rng.randint(2, 9), rng.randint(3, 12)
        total = boxes * per
        given = rng.randint(1, min(total - 1, 10))
        rows.append({"question": f"{who} has {boxes} boxes of {thing} with {per} {thing} in each box. {who} gives "
                                 f"away {given} {thing}. How many {thing} does {who} have left?",
                     "answer": f"{who} has {boxes} * {per} = {total} {thing}. After giving away {given}, {who} has "
                               f"{total} - {given} = {total - given} {thing} left.\n#### {total - given}"})
    return rows


def write_arithmetic_task(folder: str | Path, name: str = "arithmetic_gsm", *, n: int = 100, n_fewshot: int = 3,
                          seed: int = 0, max_new_tokens: int = 128, relative_to: str | Path | None = None) -> Path:
    """A GSM8K-shaped local task over :func:`arithmetic_problems`: ``Question: ...\\nAnswer:`` prompts,
    ``n_fewshot`` worked examples drawn from a separate train split, the harness's ``strict-match``
    (``#### <number>``) and ``flexible-extract`` (last number) filters and ``exact_match`` (primary: strict).
    ``relative_to``: write the data paths relative to that folder (e.g. the repository root for
    ``recipes/harness_tasks``)."""
    problems = arithmetic_problems(n + max(n_fewshot, 1) * 4, seed)
    return _write_task(Path(folder), name, {"test": problems[:n], "train": problems[n:]}, {
        "output_type": "generate_until", "training_split": "train", "fewshot_split": "train",
        "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "{{answer}}", "num_fewshot": n_fewshot,
        "generation_kwargs": {"until": ["Question:", "\n\n"], "max_gen_toks": max_new_tokens, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}],
        "filter_list": [
            {"name": "strict-match", "filter": [{"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                                                {"function": "take_first"}]},
            {"name": "flexible-extract", "filter": [{"function": "regex", "group_select": -1,
                                                     "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                                                    {"function": "take_first"}]}],
        "metadata": {"version": 1.0}}, relative_to)

"""Evaluate a (tuned) student: generate its answers to held-out instructions, then score them.

:func:`evaluate_student` generates with car_hf's generation engine (:func:`car_hf.generation.generate.add_responses`; greedy
by default) from a model folder, a Hub id, a loaded ``(model, tokenizer)`` pair or a LoRA adapter folder (merged
into its base), and scores every answer with any of these scorers (:class:`EvaluationConfig`):

* ``reward``: a reward model or reward function (:func:`car_hf.add_reward`) → per item ``reward``;
* ``metric``: reference answers through an ``evaluate`` metric after an answer extractor (default: car_hf's
  offline ``answer_match`` after :func:`car_hf.generation.tasks.extract_answer`) → per item ``correct``;
* ``judge``: an LLM judge on an OpenAI-compatible endpoint (through the generation engine's ``openai`` engine,
  i.e. ``huggingface_hub.InferenceClient``), pairwise against the ``reference_column`` outputs → per item
  ``judge_win`` (1: the student's answer preferred, 0: the reference's, NaN: the verdict was unreadable). The
  student's answer is shown first or second at random (seeded) to cancel the judge's position bias.
* ``harness``: lm-evaluation-harness tasks on the same in-memory student (:mod:`car_hf.evaluation.harness`) →
  per harness item ``harness_score``, after the held-out items; measures ``harness`` and ``harness:<task>``.

An empty answer is a wrong one: it scores 0 under every scorer (the metric, a reward model or function, the
judge), never NaN, so a student that answers nothing is not scored as if those items did not exist; the summary
counts them (``n_empty``). Answers are generated in length-sorted calls of ``batch_rows`` held-out rows, with a
progress bar per call; the transformers engine drops each row from its batch as soon as it ends its turn
(:mod:`car_hf.generation.engines.decoding`).

The summary gives, per measure, the mean over items and a percentile-bootstrap interval over items:
``reward``, ``accuracy``, ``win_rate`` and ``lc_win_rate``. The length-controlled win rate is a simplified
AlpacaEval-2 LC: a logistic regression ``P(win) = sigmoid(b0 + b1 * tanh(d / sd(d)))`` of the judge's verdict on
the character-length difference ``d`` = len(student) - len(reference), reported at zero difference
(``sigmoid(b0)``); it is left out (with the reason in ``lc_note``) when every verdict is the same or fewer than
:data:`MIN_LC_ITEMS` items have a verdict. Per-item results are kept for paired tests between students
(:func:`paired_comparison`).

Example:
    >>> bootstrap_interval([1, 0, 1, 1], n_bootstrap=0)
    {'mean': 0.75, 'low': nan, 'high': nan, 'n': 4}
    >>> wins, longer_by = [1, 1, 1, 0, 1, 0, 1, 0], [90, 70, -50, 30, -20, -40, 10, -60]
    >>> sum(wins) / len(wins), round(length_controlled_win_rate(wins, longer_by), 3)
    (0.625, 0.646)
    >>> parse_verdict(" (b) is better"), parse_verdict("neither")
    ('b', None)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from car_hf.core.errors import ConfigError, InputError
from car_hf.evaluation.stats import (  # the statistics, also importable from here as before
    MIN_LC_ITEMS,  # noqa: F401
    bootstrap_interval,
    lc_summary,
    length_controlled_win_rate,  # noqa: F401
    paired_comparison,  # noqa: F401
)
from car_hf.generation.tasks import extract_answer, metric_scores
from car_hf.generation.teacher import TeacherConfig

MEASURES = {"accuracy": "correct", "reward": "reward", "win_rate": "judge_win"}
"""Summary measure → the per-item column it averages (``lc_win_rate`` has no per-item value)."""

JUDGE_PROMPT = """You compare two outputs for the same instruction and say which one is better: more helpful, \
correct and relevant. Ignore the order in which they are shown.

## Instruction
{instruction}

## Output (a)
{a}

## Output (b)
{b}

Which output is better? Answer with a single letter: a or b."""


@dataclass
class JudgeConfig:
    """An LLM judge served on an OpenAI-compatible endpoint (vLLM, TGI, llama.cpp, a hosted API)."""

    base_url: str
    model: str
    api_key_env: str | None = None
    reference_column: str = "reference"
    max_concurrency: int = 8
    max_retries: int = 5

    def generator(self) -> Any:
        from car_hf.generation.generate import add_responses

        # Greedy, a few tokens: the verdict is one letter.
        return add_responses(self.model, engine="openai", base_url=self.base_url, api_key_env=self.api_key_env,
                             max_new_tokens=8, temperature=0.0, max_concurrency=self.max_concurrency,
                             max_retries=self.max_retries)


@dataclass
class EvaluationConfig:
    """How students are evaluated: generation options and the scorers (at least one)."""

    generation: TeacherConfig = field(default_factory=lambda: TeacherConfig(max_new_tokens=256))
    reward: Any = None  # a reward model (id, folder, pair) or function, or "module:function"
    metric: str | None = None  # an evaluate module: a name, a path, or car_hf.generation.tasks.ANSWER_MATCH
    answer_column: str = "answer"
    metric_key: str = "exact_match"
    extractor: Callable[[str], str] | str | None = extract_answer  # None: the whole answer; or "module:function"
    judge: JudgeConfig | None = None
    n_bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0
    batch_rows: int = 16  # held-out rows per generation call (transformers engine): the unit of progress
    harness_tasks: list[str] | None = None  # lm-evaluation-harness tasks (car_hf.evaluation.harness)
    harness_include_path: str | None = None  # a folder of local harness task YAML files
    harness_chat_template: bool = True  # harness prompts in the student's chat template, as car_hf generates

    def scorers(self) -> list[str]:
        """The measures of car_hf's own scorers (over the held-out set's answers)."""
        return ([m for m, on in (("accuracy", self.metric), ("reward", self.reward is not None)) if on]
                + (["win_rate", "lc_win_rate"] if self.judge else []))

    def measures(self) -> list[str]:
        """The summary measures these scorers give, the first being the default one to rank students by: car_hf's
        own, then ``harness`` and ``harness:<task>`` per task (the leaf tasks once :meth:`check` resolved them)."""
        leaves = getattr(self, "_harness_leaves", None) or self.harness_tasks or []
        return self.scorers() + (["harness", *(f"harness:{t}" for t in leaves)] if self.harness_tasks else [])

    def check(self, heldout: Any) -> None:
        """Refuse an empty held-out set, no scorer, a scorer whose reference column is missing, or harness tasks
        that cannot run (:func:`car_hf.evaluation.harness.resolve_tasks`)."""
        if self.harness_tasks:
            from car_hf.evaluation.harness import resolve_tasks

            if self.generation.engine == "openai" or self.generation.base_url:
                raise ConfigError("harness tasks run on the student's weights: evaluate it with the transformers "
                                  "or vllm engine, not an OpenAI-compatible endpoint")
            self._harness_leaves = [t.name for t in resolve_tasks(self.harness_tasks, self.harness_include_path)]
        if not self.measures():
            raise ConfigError("no scorer: set a reward (model or function), a metric, a judge, or harness tasks")
        if not self.scorers():
            return  # harness tasks alone: the held-out set is not answered
        if heldout is None or len(heldout) == 0:
            raise InputError("the held-out set is empty: evaluation needs held-out instructions")
        columns = list(heldout.column_names)
        for needed, column in ((self.metric, self.answer_column), (self.judge, getattr(self.judge, "reference_column",
                                                                                     None))):
            if needed and column not in columns:
                raise InputError(f"the held-out set has no column {column!r} (the references the "
                                 f"{'metric' if needed is self.metric else 'judge'} needs); it has {columns}")

    def identity(self) -> dict[str, Any]:
        """What evaluation results depend on, for :mod:`car_hf.core.cache` keys: a reward function by a hash of its
        source (:meth:`car_hf.scoring.reward.RewardFunctionScorer.cache_identity`), so editing a grader re-evaluates; a
        reward model by its fingerprint."""
        from car_hf.evaluation.harness import harness_identity

        return {"generation": self.generation.cache_key(), "reward": self._reward_identity(), "metric": self._metric_identity(),
                "answer_column": self.answer_column, "metric_key": self.metric_key, "extractor": self._extractor_identity(),
                "judge": vars(self.judge) if self.judge else None, "n_bootstrap": self.n_bootstrap,
                "confidence": self.confidence, "seed": self.seed} | (
            {"harness": harness_identity(self)} if self.harness_tasks else {})

    def _extractor_identity(self) -> Any:
        """By name and source hash (an edited extractor re-evaluates)."""
        if self.extractor is None:
            return None
        from car_hf.core.cache import code_digest
        from car_hf.core.config import import_object

        function = import_object(self.extractor, "extractor") if isinstance(self.extractor, str) else self.extractor
        return {"name": self.extractor if isinstance(self.extractor, str) else
                f"{function.__module__}.{function.__qualname__}", "source": code_digest(function)}

    def _metric_identity(self) -> Any:
        """A metric by name, and a local metric script or folder also by its files' contents."""
        if self.metric is None or not Path(self.metric).exists():
            return self.metric
        from car_hf.core.cache import file_digests

        path = Path(self.metric)
        return {"name": self.metric, "files": file_digests(path) if path.is_dir() else file_digests(path.parent)}

    def _reward_identity(self) -> Any:
        if self.reward is None:
            return None
        from car_hf.core.cache import scorer_identity
        from car_hf.scoring.reward import add_reward

        return scorer_identity(add_reward(self.reward))


@dataclass
class StudentEvaluation:
    """A student's per-item results (``items``) and the ``summary`` per measure (mean, low, high, n)."""

    name: str
    items: pd.DataFrame
    summary: dict[str, dict[str, Any]]

    def scores(self, measure: str) -> np.ndarray:
        """Per-item values of a measure (``lc_win_rate`` pairs by the judge's per-item verdicts): a harness measure
        over its harness items, the others over the held-out items."""
        from car_hf.evaluation.harness import measure_values

        try:
            return measure_values(self.items, measure, MEASURES.get(measure.replace("lc_", "")))
        except KeyError:
            raise KeyError(f"measure {measure!r} was not evaluated; evaluated: {sorted(self.summary)}") from None


# ------------------------------------------------------------------------------------------------ scorers
def parse_verdict(text: str) -> str | None:
    """The judge's choice, ``"a"`` or ``"b"``, from the start of its answer (None when unreadable)."""
    found = re.match(r"\W*(?:output\s*)?\(?([ab])\b", text.strip().lower())
    return found.group(1) if found else None


def judge_wins(judge: JudgeConfig, instructions: Sequence[Any], answers: Sequence[str], references: Sequence[str],
               seed: int = 0) -> list[float]:
    """Per item 1.0 when the judge prefers the student's answer to the reference, 0.0 when not, NaN unreadable."""
    student_first = np.random.default_rng(seed).integers(0, 2, len(answers)).astype(bool)
    # A conversation is shown as its turns; a single user turn as its text.
    instructions = [q if isinstance(q, str) else q[-1]["content"] if len(q) == 1 else
                    "\n\n".join(f"{turn['role']}: {turn['content']}" for turn in q) for q in instructions]
    prompts = [JUDGE_PROMPT.format(instruction=q, a=s if first else r, b=r if first else s)
               for q, s, r, first in zip(instructions, answers, references, student_first)]
    verdicts = [parse_verdict(g.text) for g in judge.generator().generate(prompts)]
    return [math.nan if v is None else float((v == "a") == first) for v, first in zip(verdicts, student_first)]


# ------------------------------------------------------------------------------------------------ the student
def load_student(model: Any, dtype: str | None = None) -> Any:
    """A LoRA adapter folder as the folder of its merged model (``<adapter>/merged``, as ``recipes/sft.py
    --merge_adapter`` writes it); anything else as given.

    ``dtype``: the dtype the base is loaded in before merging (the training dtype: a bf16 Hub base tuned in fp32
    must not be rounded to bf16 before an fp32 evaluation); None or ``"auto"``: the checkpoint's own. A merged
    folder of another dtype is merged again. A folder rather than a loaded model: every engine (vLLM too) can run
    it, and nothing stays in memory after."""
    folder = Path(model) if isinstance(model, (str, os.PathLike)) else None
    if folder is None or not (folder / "adapter_config.json").is_file():
        return model
    merged = folder / "merged"
    wanted = None if dtype in (None, "auto") else str(dtype).removeprefix("torch.")
    saved = json.loads((merged / "config.json").read_text()) if (merged / "config.json").is_file() else None
    if saved is None or (wanted is not None and saved.get("dtype", saved.get("torch_dtype")) != wanted):
        from car_hf.training.sft import merge_lora

        merge_lora(folder, merged, **({"dtype": wanted} if wanted else {}))
    return str(merged)


def evaluate_student(model: Any, heldout: Any, config: EvaluationConfig | None = None, *,
                     name: str | None = None, merge_dtype: str | None = None,
                     harness_tasks: Sequence[str] | None = None,
                     harness_include_path: str | None = None) -> StudentEvaluation:
    """Generate ``model``'s answers to ``heldout`` (a Dataset with an instruction/prompt/messages column) and score
    them with ``config``'s scorers (an empty answer scores 0; see the module docstring). ``merge_dtype``: the
    dtype a LoRA adapter's base is merged in (:func:`load_student`). ``harness_tasks`` (and
    ``harness_include_path``, a folder of local YAML tasks) set the config's: lm-evaluation-harness runs on the
    student the engine holds (:mod:`car_hf.evaluation.harness`), its items after the held-out ones in ``items``.

    Example (needs a model; see tests/test_evaluation.py):
        >>> from car_hf.generation.tasks import ANSWER_MATCH, make_tasks
        >>> result = evaluate_student("HuggingFaceTB/SmolLM2-135M-Instruct", make_tasks(20, seed=1),
        ...                           EvaluationConfig(metric=ANSWER_MATCH))  # doctest: +SKIP
        >>> result.summary["accuracy"]  # doctest: +SKIP
        {'mean': 0.35, 'low': 0.15, 'high': 0.55, 'n': 20}
    """
    from car_hf.core.models import clear_model_cache
    from car_hf.evaluation.harness import run_on_generator
    from car_hf.generation.generate import add_responses, clear_engine_cache

    config = config or EvaluationConfig()
    if harness_tasks is not None or harness_include_path is not None:
        config = dataclasses.replace(config, harness_tasks=list(harness_tasks or config.harness_tasks or []),
                                     harness_include_path=harness_include_path or config.harness_include_path)
    config.check(heldout)
    name = name or (str(model) if isinstance(model, (str, os.PathLike)) else "student")
    generation = dataclasses.replace(config.generation, generation_column="response", teacher_name=name)
    generator, answered, harness = add_responses(load_student(model, merge_dtype), config=generation), None, None
    try:
        if config.scorers():
            answered = _answer(generator, heldout, config.batch_rows, name)
        if config.harness_tasks:
            harness = run_on_generator(generator, config)
    finally:
        clear_engine_cache()  # students are evaluated one after another: free this one's engine (and GPUs)
        clear_model_cache()
    items = _score(answered, config) if answered is not None else pd.DataFrame({"empty_answer": []}, dtype=bool)
    if harness is not None:
        items = pd.concat([items, harness[0].assign(empty_answer=False)], ignore_index=True)
    return StudentEvaluation(name, items, summarize(items, config, harness[1] if harness else None))


def _score(answered: Any, config: EvaluationConfig) -> pd.DataFrame:
    """The held-out items with car_hf's scorers' per-item values (an empty answer scores 0)."""
    from car_hf.core.formats import is_empty

    items = answered.select_columns([c for c in answered.column_names if not c.endswith("_provenance")]).to_pandas()
    texts = items["response"].fillna("").tolist()
    empty = np.array([is_empty(t) for t in texts], dtype=bool)
    if config.metric:
        items["correct"] = metric_scores(texts, items[config.answer_column], config.metric, config.extractor,
                                         config.metric_key)
    if config.reward is not None:
        from car_hf.scoring.reward import add_reward

        # The prompt column named: a held-out `messages` column is the prompt here, not a whole conversation.
        scorer = add_reward(config.reward, prompt=_prompt_column(answered), response="response")
        items["reward"] = answered.map(scorer, batched=True, with_indices=True, desc="rewards")["reward"]
    if config.judge:
        references = items[config.judge.reference_column].astype(str).tolist()
        items["judge_win"] = judge_wins(config.judge, answered[_prompt_column(answered)], texts, references,
                                        config.seed)
        items["length_difference"] = [len(s) - len(r) for s, r in zip(texts, references)]
    for column in ("correct", "reward", "judge_win"):  # an empty answer is wrong: 0, not an item left out
        if column in items.columns:
            items.loc[empty, column] = 0.0
    items["empty_answer"] = empty
    return items


def _answer(generator: Any, heldout: Any, batch_rows: int, name: str) -> Any:
    """``heldout`` with the generator's columns: rows sorted by prompt length and generated ``batch_rows`` at a
    time (one call for vllm and openai, whose own schedulers take every row), one progress step per call."""
    from datasets.utils.tqdm import tqdm

    from car_hf.generation.generate import input_column

    column = input_column(heldout.column_names, generator.config)
    prompts = list(heldout[column])
    # Similar lengths share a batch, so short prompts are not padded to a long one's length.
    order = sorted(range(len(prompts)), key=lambda i: len(json.dumps(prompts[i])))
    step = batch_rows if generator.config.engine == "transformers" else len(order)
    if step < 1:
        raise ConfigError(f"batch_rows must be >= 1, got {batch_rows}")
    added: dict[str, list[Any]] = {}
    with tqdm(total=len(order), desc=f"answers of {name}", unit="answer", mininterval=0) as bar:  # a step a batch
        for start in range(0, len(order), step):
            rows = order[start:start + step]
            for key, values in generator(heldout[rows], rows).items():
                added.setdefault(key, [None] * len(order))
                for i, value in zip(rows, values):
                    added[key][i] = value
            bar.update(len(rows))
    for key, values in added.items():
        heldout = heldout.remove_columns(key) if key in heldout.column_names else heldout
        heldout = heldout.add_column(key, values)
    return heldout


def _prompt_column(ds: Any) -> str:
    from car_hf.generation.generate import input_column

    return input_column(ds.column_names, TeacherConfig())


def summarize(items: pd.DataFrame, config: EvaluationConfig,
              harness: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Per measure: the mean over items with its bootstrap interval (see the module docstring); ``harness``: the
    harness tasks' descriptions (:func:`car_hf.evaluation.harness.summarize_harness`)."""
    from car_hf.evaluation.harness import harness_rows, summarize_harness

    boot = {"n_bootstrap": config.n_bootstrap, "confidence": config.confidence, "seed": config.seed}
    own = items[~harness_rows(items)]
    n_empty = int(own["empty_answer"].sum()) if "empty_answer" in own.columns else 0
    summary = {m: bootstrap_interval(own[c], **boot) | {"n_empty": n_empty} for m, c in MEASURES.items()
               if c in own.columns}
    if "judge_win" in own.columns:
        summary["lc_win_rate"] = lc_summary(own["judge_win"].to_numpy(float),
                                            own["length_difference"].to_numpy(float), **boot)
    return summary | summarize_harness(items, harness or {}, boot, bootstrap_interval)

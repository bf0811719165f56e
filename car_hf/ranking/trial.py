"""Teacher trials: rank candidate teachers for your own instructions while generating only what the ranking needs.

:func:`rank_teachers` draws instructions in a seeded random order, in rounds (the schedule of
:func:`car_hf.ranking.stopping.plan_rounds`); in each round every teacher still in contention answers the round's
instructions (:func:`car_hf.generation.generate.add_responses`), the answers are scored under the student
(:func:`car_hf.add_car`: reward and base-model loss), and the rule decides:

* ``target="top1"`` (default): successive elimination (:func:`car_hf.ranking.stopping.eliminate`). On the instructions
  every active teacher has answered, a teacher that the leader beats with paired-bootstrap probability
  >= ``level`` is out of contention and is not generated for again; ``level = 1 - (1 - confidence) / (G - 1)``
  (Bonferroni over the G - 1 comparisons the winner must win). The trial stops ("confident") when one teacher
  is left.
* ``target="ranking"``: every teacher answers every drawn instruction, and the trial stops when every adjacent
  pair of the ranking is decided (:func:`car_hf.ranking.stopping.stop_decision`).

It also stops when the next round would exceed ``max_responses`` ("budget") or every instruction is drawn
("exhausted"). Generated and scored rounds go to the score cache under ``checkpoint`` (responses keyed by the
teacher, scores by the teacher and the scorer), so a killed trial resumes without generating anything twice,
and a trial re-run with another reward or beta reuses the responses.

Example (two stand-in teachers answering from a table; real ones are model ids or ``TeacherConfig``\\ s):
    >>> from datasets import Dataset
    >>> from car_hf.ranking.trial import rank_teachers
    >>> questions = Dataset.from_dict({"instruction": [f"q{i}" for i in range(60)]})
    >>> class Canned:
    ...     def __init__(self, name, answer):
    ...         self.name, self.answer = name, answer
    ...     def __call__(self, batch, indices):
    ...         return {"response": [self.answer] * len(indices), "response_teacher": [self.name] * len(indices)}
    >>> def reward(batch, indices):
    ...     return {"reward": [0.9 if r == "good" else 0.2 for r in batch["response"]], "base_loss": [2.0] * len(indices)}
    >>> result = rank_teachers(questions, [Canned("A", "good"), Canned("B", "bad")], reward, n_bootstrap=200)
    >>> result.stopped_because, result.table["generator"].tolist(), result.responses_generated
    ('confident', ['A', 'B'], 40)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from car_hf.ranking.stopping import AdaptiveResult
from car_hf.core.cache import ScoreCache, rows_digest, scorer_identity, scoring_key
from car_hf.core.data import map_scores
from car_hf.core.errors import ConfigError
from car_hf.generation.generate import map_batch_size
from car_hf.ranking.leaderboard import rank_generators
from car_hf.ranking.stopping import (
    DEFAULT_MIN_INSTRUCTIONS,
    DEFAULT_N_BOOTSTRAP,
    DEFAULT_ROUND_GROWTH,
    DEFAULT_ROUND_SIZE,
    TARGETS,
    StopDecision,
    decision_level,
    eliminate,
    instruction_cells,
    instruction_order,
    plan_rounds,
    stop_decision,
)

logger = logging.getLogger(__name__)

ID = "instruction_id"


@dataclass
class TrialResult(AdaptiveResult):
    """:class:`~car_hf.ranking.adaptive.AdaptiveResult` of a trial, plus what generation cost.

    ``scored`` holds every generated and scored row (instruction columns, the response columns, ``generator``
    naming the teacher, the score columns); ``eliminated`` lists ``{"generator", "round", "n_instructions",
    "p_leader_wins"}``; ``responses_exhaustive`` is what answering every instruction with every teacher costs.
    """

    responses_generated: int = 0
    responses_exhaustive: int = 0
    eliminated: list[dict[str, Any]] = field(default_factory=list)

    def cost_line(self) -> str:
        share = self.responses_generated / self.responses_exhaustive if self.responses_exhaustive else float("nan")
        return (f"generated {self.responses_generated} responses of the exhaustive trial's "
                f"{self.responses_exhaustive} ({100 * share:.1f}%)")

    def summary(self) -> str:
        trial = self.table.attrs.get("car", {}).get("trial", {})
        lines = [f"teacher trial: stopped ({self.stopped_because}) after {self.rounds} round(s), {self.n_instructions} "
                 f"of {self.n_instructions_total} instructions; target={trial.get('target')}, confidence="
                 f"{trial.get('confidence')} (each comparison >= {trial.get('level', float('nan')):.4g}, "
                 f"{trial.get('correction')})", self.cost_line()]
        lines += [f"  undecided: {p['better']} over {p['worse']}: P = {p['p_win']:.3f}" for p in self.undecided]
        lines += [f"  eliminated after {e['n_instructions']} instructions: {e['generator']} (P(leader wins) = "
                  f"{e['p_leader_wins']:.3f})" for e in self.eliminated]
        return "\n".join(lines)


def _label(teacher: Any) -> str:
    config = getattr(teacher, "config", None)
    return str(getattr(config, "label", None) or getattr(teacher, "name", None) or teacher)


def _generators(teachers: Sequence[Any], defaults: Any) -> list[Any]:
    """Teachers as ``Dataset.map`` transforms: ids and ``TeacherConfig``\\ s through ``add_responses``."""
    from car_hf.generation.generate import add_responses
    from car_hf.generation.teacher import TeacherConfig

    built = []
    for teacher in teachers:
        if isinstance(teacher, TeacherConfig):
            built.append(add_responses(config=teacher))
        elif isinstance(teacher, (str, os.PathLike, tuple)):
            built.append(add_responses(teacher, config=defaults))
        elif callable(teacher):
            built.append(teacher)
        else:
            raise ConfigError(f"a teacher is a model id, a folder, a TeacherConfig or a ResponseGenerator, got "
                              f"{type(teacher).__name__}")
    labels = [_label(g) for g in built]
    if len(built) < 2:
        raise ConfigError(f"a trial compares teachers: give at least 2, got {len(built)}")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"teachers need distinct labels to be told apart, got {labels}: set teacher_name (the same "
                          "model under other system prompts gets one per prompt by default)")
    return built


def _reading_responses(scorer: Any, columns: Sequence[str], generator: Any) -> Any:
    """``scorer`` reading the instruction column and the generated one: a car_hf scorer whose columns are not set
    is re-pointed (a ``messages`` column would otherwise be taken for whole conversations with their answer)."""
    from car_hf.scoring.scorer import CARScorer

    config = getattr(generator, "config", None)
    if not isinstance(scorer, CARScorer) or config is None or scorer.config.response_column:
        return scorer
    from car_hf.generation.generate import input_column

    reading = dataclasses.replace(scorer.config, prompt_column=input_column(columns, config), messages_column=None,
                                  response_column=config.generation_column)
    reward = scorer.reward.spec if scorer.reward is not None else None
    return CARScorer(scorer.loss.spec, reward_model=reward, config=reading, per_row_car=scorer.per_row_car)


def rank_teachers(
    instructions: Any,
    teachers: Sequence[Any],
    scorer: Any,
    *,
    target: str = "top1",
    beta: float | None = None,
    reward_transform: str | None = None,
    confidence: float = 0.95,
    correction: str = "bonferroni",
    max_responses: int | None = None,
    min_instructions: int = DEFAULT_MIN_INSTRUCTIONS,
    round_size: int = DEFAULT_ROUND_SIZE,
    round_growth: float = DEFAULT_ROUND_GROWTH,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    generation: Any = None,
    batch_size: int = 16,
    config: dict[str, Any] | None = None,
) -> TrialResult:
    """Rank ``teachers`` for the student of ``scorer`` on ``instructions``, generating only what the rule needs.

    Args:
        instructions: one row per instruction, with a prompt column (``messages``, ``prompt`` or ``instruction``,
            or the teachers' ``input_column``); an ``instruction_id`` column is added when missing.
        teachers: model ids / folders (generated with ``generation``'s options), ``TeacherConfig``\\ s, or
            ``add_responses`` transforms: at least 2, with distinct labels.
        scorer: ``add_car(...)`` for the student (reward model or reward function, base model); it reads the
            instruction and the generated ``response`` column.
        target, confidence, correction, min_instructions, round_size, round_growth, n_bootstrap, seed: the rule
            and the schedule, as in :func:`car_hf.ranking.adaptive.rank_adaptive`; ``beta`` and ``reward_transform``
            default to the scorer's.
        max_responses: generation budget (responses, all teachers together).
        checkpoint: folder of the score cache; a rerun resumes from it.
        config: extra entries recorded in ``table.attrs["car"]``.
    """
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {TARGETS}, got {target!r}")
    generators = _generators(teachers, generation)
    labels = [_label(g) for g in generators]
    scorer = _reading_responses(scorer, instructions.column_names, generators[0])
    scoring = getattr(scorer, "config", None)  # by default the car_hf scorer's beta and transform
    beta = beta if beta is not None else scoring.beta if scoring is not None else 1.0
    transform = reward_transform or (scoring.reward_transform if scoring is not None else "raise")
    if len(instructions) == 0:
        raise ConfigError("there are no instructions to try the teachers on")
    if ID not in instructions.column_names:
        instructions = instructions.add_column(ID, list(range(len(instructions))))
    order = instruction_order(len(instructions), seed).tolist()
    looks = plan_rounds([1] * len(order), min_instructions=min_instructions, round_size=round_size,
                        round_growth=round_growth)
    level = decision_level(confidence, len(labels) - 1, correction)
    common = {"order_seed": seed, "instructions": len(order)}
    caches = {}
    if checkpoint is not None:
        caches = {label: (ScoreCache(os.path.join(checkpoint, "responses"), scoring_key(g, instructions, **common)),
                          ScoreCache(os.path.join(checkpoint, "scores"),
                                     scoring_key(scorer, instructions, teacher=scorer_identity(g), **common)))
                  for label, g in zip(labels, generators)}

    def answer(k: int, lo: int, hi: int) -> Any:
        """Teacher ``k``'s scored answers to the instructions at positions [lo, hi) of the order (cached)."""
        rows, part = order[lo:hi], f"instructions-{lo:05d}-{hi:05d}"
        generated_cache, scored_cache = caches.get(labels[k], (None, None))
        # Responses verify against the instructions they answer, scores against the responses they score: a part
        # copied from another teacher or position, or damaged, is computed again.
        asked = rows_digest(instructions.select(rows), rows) if generated_cache is not None else None
        loaded = generated_cache.load(part, inputs=asked) if generated_cache is not None else None
        fresh = loaded is None
        if fresh:
            generated = map_scores(instructions.select(rows), generators[k], rows=rows,
                                   batch_size=map_batch_size(generators[k], batch_size),  # vllm/openai: all at once
                                   desc=f"{labels[k]}: answering {len(rows)} instructions")
            if generated_cache is not None:
                generated_cache.save(part, generated, inputs=asked)
        else:
            generated = loaded[0]
        answers = rows_digest(generated, rows) if scored_cache is not None else None
        loaded = scored_cache.load(part, inputs=answers) if scored_cache is not None else None
        if loaded is not None:
            return loaded[0], fresh
        scored = map_scores(generated, scorer, rows=rows, batch_size=batch_size, desc=f"scoring {labels[k]}")
        scored = scored.add_column("generator", [labels[k]] * len(rows))
        if scored_cache is not None:
            scored_cache.save(part, scored, inputs=answers)
        return scored, fresh

    parts: list[tuple[Any, list[int]]] = []
    frames: list[pd.DataFrame] = []
    active, eliminated, history = list(range(len(labels))), [], []
    done, generated, decision, stopped = 0, 0, None, "exhausted"
    for look in looks:
        cost = (look - done) * len(active)
        if max_responses is not None and generated + cost > max_responses:
            stopped = "budget"
            break
        for k in active:
            scored, fresh = answer(k, done, look)
            generated += len(scored)  # a cached answer was generated once: it counts in the trial's cost
            parts.append((scored, order[done:look]))
            frames.append(scored.select_columns(["generator", ID, "reward", "base_loss"]).to_pandas())
        done = look
        cells = instruction_cells(pd.concat(frames), by="generator", instruction_column=ID, reward_transform=transform)
        if target == "top1":
            out = eliminate(cells, [labels[k] for k in active], beta=beta, level=level,
                            min_instructions=min_instructions, n_bootstrap=n_bootstrap, seed=seed)
            for e in out.eliminated:
                eliminated.append(e | {"round": len(history) + 1, "n_instructions": out.n_instructions})
                active.remove(labels.index(e["generator"]))
            entry = {"round": len(history) + 1, "n_instructions": done, "responses": generated,
                     "leader": out.leader, "active": [labels[k] for k in active]}
            history.append(entry)
            logger.info("round %d: %d instructions, leader %s, still in contention: %s", entry["round"], done,
                        out.leader, entry["active"])
            if len(active) == 1:
                stopped = "confident"
                break
        else:
            decision = stop_decision(cells, beta=beta, target=target, confidence=confidence, correction=correction,
                                     min_instructions=min_instructions, n_bootstrap=n_bootstrap, seed=seed)
            history.append({"round": len(history) + 1, "n_instructions": done, "responses": generated,
                            "leader": decision.leader, "stop": decision.stop})
            if decision.stop:
                stopped = "confident"
                break
    if not parts:
        raise ConfigError(f"max_responses={max_responses} is smaller than the first round's "
                          f"{looks[0] * len(labels)} responses")
    return _result(parts, labels, active, eliminated, history, decision, stopped, done, generated, len(order),
                   scorer, beta=beta, transform=transform, target=target, confidence=confidence, correction=correction, level=level,
                   n_bootstrap=n_bootstrap, seed=seed, max_responses=max_responses, config=config)


def _result(parts, labels, active, eliminated, history, decision: StopDecision | None, stopped: str, done: int,
            generated: int, n_total: int, scorer: Any, **rule: Any) -> TrialResult:
    """The leaderboard of every scored row (eliminated teachers on the instructions they answered)."""
    import datasets

    scored = datasets.concatenate_datasets([d for d, _ in parts]) if len(parts) > 1 else parts[0][0]
    keys = list(zip(scored[ID], scored["generator"]))
    scored = scored.select(sorted(range(len(keys)), key=keys.__getitem__))  # instruction-major, teachers by name
    beta, transform = rule["beta"], rule["transform"]
    if decision is None:  # top1: what is still undecided among the teachers left
        cells = instruction_cells(scored.select_columns(["generator", ID, "reward", "base_loss"]).to_pandas(),
                                  by="generator", instruction_column=ID, reward_transform=transform)
        decision = stop_decision(cells, beta=beta, target="top1", confidence=rule["confidence"],
                                 correction=rule["correction"], min_instructions=1, n_bootstrap=rule["n_bootstrap"],
                                 seed=rule["seed"]) if len(active) > 1 else None
    trial = {key: rule[key] for key in ("target", "confidence", "correction", "level", "max_responses")} | {
        "teachers": labels, "stopped_because": stopped, "rounds": len(history), "n_instructions": done,
        "n_instructions_total": n_total, "responses_generated": generated, "responses_exhaustive": n_total * len(labels),
        "eliminated": eliminated, "order_seed": rule["seed"]}
    record = (scorer.scoring_config() if hasattr(scorer, "scoring_config") else {}) | dict(rule["config"] or {})
    table = rank_generators(scored, by="generator", beta=beta, reward_transform=transform, instruction_column=ID,
                            confidence=rule["confidence"], n_bootstrap=rule["n_bootstrap"], seed=rule["seed"],
                            config=record | {"trial": trial})
    undecided = [p for p in (decision.undecided if decision else []) if p["better"] in [labels[k] for k in active]
                 and p["worse"] in [labels[k] for k in active]]
    return TrialResult(
        table=table, scored=scored, indices=sorted({r for _, rows in parts for r in rows}), n_scored=len(scored),
        n_total=n_total * len(labels), n_instructions=done, n_instructions_total=n_total, rounds=len(history),
        stopped_because=stopped, undecided=undecided, history=history, decision=decision,
        responses_generated=generated, responses_exhaustive=n_total * len(labels), eliminated=eliminated)

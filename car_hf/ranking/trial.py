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

Several students (``students=[...]``, or ``add_car(base_model=[s1, s2])``): each response is generated once and
scored under every student (``reward`` once, ``base_loss@<label>`` each). ``target="top1"``: each student's own
elimination, the rule of a trial for it alone; a teacher is generated for while an undecided student still has it
in contention (:func:`car_hf.ranking.stopping.eliminate_students`). ``target="common"``: one contest for the best
common teacher. ``responses_separate``: what one trial per student generates (exact without a budget).

It also stops when the next round would exceed ``max_responses`` ("budget") or every instruction is drawn
("exhausted"). Generated and scored rounds go to the score cache under ``checkpoint`` (responses keyed by the
teacher, scores by the teacher and the scorer — the reward and each student apart), so a killed trial resumes
without generating anything twice, and a trial re-run with another reward, beta or student reuses the responses.

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
from typing import Any

import pandas as pd

from car_hf.ranking.results import TrialResult
from car_hf.core.cache import ScoreCache, rows_digest, scorer_identity, scoring_key
from car_hf.core.data import map_scores
from car_hf.core.errors import ConfigError
from car_hf.core.students import SHARED_COLUMNS, STUDENT_COLUMNS, split_student_column, student_column
from car_hf.generation.generate import map_batch_size
from car_hf.ranking.leaderboard import rank_generators
from car_hf.ranking.stopping import (
    DEFAULT_MIN_INSTRUCTIONS,
    DEFAULT_N_BOOTSTRAP,
    DEFAULT_ROUND_GROWTH,
    DEFAULT_ROUND_SIZE,
    TARGETS,
    decision_level,
    eliminate_students,
    instruction_cells,
    instruction_order,
    plan_rounds,
    stop_decision,
)

logger = logging.getLogger(__name__)

ID = "instruction_id"


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
    several = scorer.labels is not None  # rebuilt from its configuration: every student reads the responses
    base = (None if isinstance(scorer.config.base_model, list) else scorer.loss) if several else scorer.loss.spec
    return CARScorer(base, reward_model=reward, config=reading, per_row_car=scorer.per_row_car)


def _scoring_parts(scorer: Any, students: Any) -> tuple[list[Any], list[tuple[Any, Any]], Any]:
    """The students' labels, the scoring parts (each cached apart) and the scorer: ``[None], [(None, scorer)]``
    for one student scored by one transform (reward and loss together), else ``("reward", the reward transform)``
    then ``(label, loss transform)`` per student. ``students``: models (a car_hf ``scorer`` gives the reward and the loss
    options) or loss transforms with a ``label`` (or ``name``) adding ``base_loss``."""
    from car_hf.core.students import check_students
    from car_hf.scoring.scorer import CARScorer

    if students is not None and (isinstance(students, dict) or all(isinstance(s, (str, os.PathLike, tuple))
                                                                    for s in students)):
        check_students(students if isinstance(students, dict) else list(students))
        if not isinstance(scorer, CARScorer):
            raise ConfigError("students given as models need a car_hf scorer (add_car(...)) for the reward and the "
                              f"loss options, got {type(scorer).__name__}; or pass the students as loss transforms")
        scorer = CARScorer(students if isinstance(students, dict) else list(students), reward_model=scorer.reward,
                           config=scorer.config, per_row_car=False)
    elif students is not None:
        labels = [getattr(s, "label", None) or getattr(s, "name", None) if callable(s) else None for s in students]
        if None in labels or not labels:
            raise ConfigError("students are models (ids, folders, loaded pairs) or loss transforms with a label (a "
                              f".label or .name attribute), got {[type(s).__name__ for s in students]}")
        if len(set(labels)) != len(labels):
            raise ConfigError(f"students need distinct labels, got {labels}")
        return labels, [("reward", scorer), *zip(labels, students)], scorer
    if getattr(scorer, "labels", None) is None:
        return [None], [(None, scorer)], scorer
    parts = [("reward", scorer.reward_part()), *zip(scorer.labels, scorer.student_parts())]
    return list(scorer.labels), parts, scorer


def _joined(scored: Any, new: Any, kind: Any, several: bool) -> Any:
    """``scored`` with the columns of a scoring part ``new`` it lacks, a student's named for this run
    (``base_loss@label`` with several students, else ``base_loss``: the cache holds them as the part wrote them)."""
    import datasets

    if kind not in (None, "reward"):
        plain = {c: split_student_column(c)[0] for c in new.column_names}
        names = {c: student_column(p, kind) if several else p for c, p in plain.items() if p in STUDENT_COLUMNS}
        new = new.rename_columns({c: p for c, p in names.items() if c != p})
    extra = [c for c in new.column_names if c not in scored.column_names and c != "generator"]
    return datasets.concatenate_datasets([scored, new.select_columns(extra)], axis=1) if extra else scored


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
    students: Any = None,
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
        students: several students (module docstring): model ids / folders / ``"label=model"`` (scored with
            ``scorer``'s reward and loss options; a scorer ``add_car(base_model=[...])`` names them itself), or loss
            transforms with a ``label`` (stand-ins). ``target="common"``: one teacher for every student.
    """
    if target not in TARGETS + ("common",):
        raise ConfigError(f"target must be one of {TARGETS + ('common',)}, got {target!r}")
    generators = _generators(teachers, generation)
    labels = [_label(g) for g in generators]
    scorer = _reading_responses(scorer, instructions.column_names, generators[0])
    scoring = getattr(scorer, "config", None)  # by default the car_hf scorer's beta and transform
    beta = beta if beta is not None else scoring.beta if scoring is not None else 1.0
    transform = reward_transform or (scoring.reward_transform if scoring is not None else "raise")
    students, parts, scorer = _scoring_parts(scorer, students)
    several = len(students) > 1
    loss_of = {s: student_column("base_loss", s) if several else "base_loss" for s in students}
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
    if checkpoint is not None:  # responses per teacher; scores per teacher and part (reward, each student)
        caches = {label: [ScoreCache(os.path.join(checkpoint, "responses"), scoring_key(g, instructions, **common))]
                  + [ScoreCache(os.path.join(checkpoint, "scores"), scoring_key(
                      part, instructions, teacher=scorer_identity(g), **common)) for _, part in parts]
                  for label, g in zip(labels, generators)}

    def answer(k: int, lo: int, hi: int) -> Any:
        """Teacher ``k``'s scored answers to the instructions at positions [lo, hi) of the order (cached)."""
        rows, name = order[lo:hi], f"instructions-{lo:05d}-{hi:05d}"
        generated_cache, *scored_caches = caches.get(labels[k], [None] * (len(parts) + 1))
        # Responses verify against the instructions they answer, scores against the responses they score: a part
        # copied from another teacher or position, or damaged, is computed again.
        asked = rows_digest(instructions.select(rows), rows) if generated_cache is not None else None
        loaded = generated_cache.load(name, inputs=asked) if generated_cache is not None else None
        fresh = loaded is None
        if fresh:
            generated = map_scores(instructions.select(rows), generators[k], rows=rows,
                                   batch_size=map_batch_size(generators[k], batch_size),  # vllm/openai: all at once
                                   desc=f"{labels[k]}: answering {len(rows)} instructions")
            if generated_cache is not None:
                generated_cache.save(name, generated, inputs=asked)
        else:
            generated = loaded[0]
        answers = rows_digest(generated, rows) if generated_cache is not None else None
        scored = generated
        for (kind, part), cache in zip(parts, scored_caches):  # each student's loss is its own part
            loaded = cache.load(name, inputs=answers) if cache is not None else None
            if loaded is None:  # one student's part: the columns it adds (the reward part: the shared ones)
                new = map_scores(generated, part, rows=rows, batch_size=batch_size,
                                 desc=f"scoring {labels[k]}" + (f" ({kind})" if kind else ""))
                added = [c for c in new.column_names if c not in generated.column_names]
                new = new if kind is None else new.select_columns(
                    [c for c in added if kind != "reward" or c in SHARED_COLUMNS])
                if cache is not None:
                    cache.save(name, new, inputs=answers)
            else:
                new = loaded[0]
            scored = _joined(scored, new, kind, several)
        return scored.add_column("generator", [labels[k]] * len(rows)), fresh

    pieces: list[tuple[Any, list[int]]] = []
    frames: list[pd.DataFrame] = []
    contending = {s: list(labels) for s in students}
    separate = dict.fromkeys(students, 0)  # what one trial per student generates: the same rule, alone
    eliminated, history, decisions, leaders = [], [], {}, dict.fromkeys(students)
    done, generated, stopped = 0, 0, "exhausted"
    for look in looks:
        active = [k for k, t in enumerate(labels) if any(t in c for c in contending.values() if len(c) > 1)]
        if max_responses is not None and generated + (look - done) * len(active) > max_responses:
            stopped = "budget"
            break
        for s in students if target != "common" else ():  # what a trial for s alone generates in this round
            if len(contending[s]) > 1 and not getattr(decisions.get(s), "stop", False):
                separate[s] += (look - done) * len(contending[s])
        for k in active:
            scored, fresh = answer(k, done, look)
            generated += len(scored)  # a cached answer was generated once: it counts in the trial's cost
            pieces.append((scored, order[done:look]))
            frames.append(scored.select_columns(["generator", ID, "reward", *loss_of.values()]).to_pandas())
        done = look
        frame = pd.concat(frames)
        cells = {s: instruction_cells(frame, by="generator", instruction_column=ID, loss_column=loss_of[s],
                                      reward_transform=transform) for s in students}
        entry = {"round": len(history) + 1, "n_instructions": done, "responses": generated}
        if target != "ranking":
            out = eliminate_students(cells, contending, beta=beta, level=level, target=target,
                                     min_instructions=min_instructions, n_bootstrap=n_bootstrap, seed=seed)
            eliminated += [{k: v for k, v in e.items() if several or k != "student"} | {"round": entry["round"],
                           "n_instructions": out.n_instructions[e["student"] or students[0]]} for e in out.eliminated]
            contending, leaders = out.contending, out.leaders
            entry |= {"leader": out.leaders if several else out.leaders[students[0]], "active": out.generating}
            history.append(entry | ({"contending": contending} if several else {}))
            logger.info("round %d: %d instructions, leader %s, still generated for: %s", entry["round"], done,
                        entry["leader"], entry["active"])
            if out.settled:
                stopped = "confident"
                break
        else:
            decisions = {s: stop_decision(cells[s], beta=beta, target=target, confidence=confidence,
                                          correction=correction, min_instructions=min_instructions,
                                          n_bootstrap=n_bootstrap, seed=seed) for s in students}
            leaders = {s: d.leader for s, d in decisions.items()}
            history.append(entry | {"leader": leaders if several else leaders[students[0]],
                                    "stop": all(d.stop for d in decisions.values())})
            if history[-1]["stop"]:
                stopped = "confident"
                break
    if not pieces:
        raise ConfigError(f"max_responses={max_responses} is smaller than the first round's "
                          f"{looks[0] * len(labels)} responses")
    return _result(pieces, labels, students, contending, leaders, eliminated, history, decisions, stopped, done,
                   generated, len(order), scorer, beta=beta, transform=transform, target=target, confidence=confidence,
                   correction=correction, level=level, n_bootstrap=n_bootstrap, seed=seed, max_responses=max_responses,
                   config=config, separate=separate if target != "common" else {})


def _result(pieces, labels, students, contending, leaders, eliminated, history, decisions, stopped: str, done: int,
            generated: int, n_total: int, scorer: Any, **rule: Any) -> TrialResult:
    """Each student's leaderboard of every scored row (eliminated teachers on the instructions they answered)."""
    import datasets

    from car_hf.core.students import student_view

    scored = datasets.concatenate_datasets([d for d, _ in pieces]) if len(pieces) > 1 else pieces[0][0]
    keys = list(zip(scored[ID], scored["generator"]))
    scored = scored.select(sorted(range(len(keys)), key=keys.__getitem__))  # instruction-major, teachers by name
    beta, transform, several = rule["beta"], rule["transform"], len(students) > 1
    trial = {key: rule[key] for key in ("target", "confidence", "correction", "level", "max_responses")} | {
        "teachers": labels, "stopped_because": stopped, "rounds": len(history), "n_instructions": done,
        "n_instructions_total": n_total, "responses_generated": generated, "responses_exhaustive": n_total * len(labels),
        "eliminated": eliminated, "order_seed": rule["seed"]}
    if several:
        trial |= {"students": students, "responses_separate": rule["separate"]}
    record = (scorer.scoring_config() if hasattr(scorer, "scoring_config") else {}) | dict(rule["config"] or {})
    tables, winners, undecided, last = {}, {}, [], None
    for s in students:
        view = student_view(scored, s) if several else scored
        frame = view.select_columns(["generator", ID, "reward", "base_loss"]).to_pandas()
        cells = instruction_cells(frame, by="generator", instruction_column=ID, reward_transform=transform)
        decision = decisions.get(s)
        if rule["target"] != "ranking":  # top1: what is still undecided among the teachers left
            decision = stop_decision(cells, beta=beta, target="top1", confidence=rule["confidence"],
                                     correction=rule["correction"], min_instructions=1,
                                     n_bootstrap=rule["n_bootstrap"], seed=rule["seed"]) \
                if len(contending[s]) > 1 else None
        last = decision if last is None else last
        winners[s] = leaders[s]
        kept = contending[s] if rule["target"] != "ranking" else labels
        undecided += [p | ({"student": s} if several else {}) for p in (decision.undecided if decision else [])
                      if p["better"] in kept and p["worse"] in kept]
        tables[s] = rank_generators(view, by="generator", beta=beta, reward_transform=transform,
                                    instruction_column=ID, confidence=rule["confidence"],
                                    n_bootstrap=rule["n_bootstrap"], seed=rule["seed"],
                                    config=record | {"trial": trial | ({"student": s} if several else {})})
    table = tables[students[0]] if not several else pd.concat(
        [t.assign(student=s) for s, t in tables.items()], ignore_index=True)
    table.attrs = {"car": tables[students[0]].attrs["car"] | {"trial": trial}}
    return TrialResult(
        table=table, scored=scored, indices=sorted({r for _, rows in pieces for r in rows}), n_scored=len(scored),
        n_total=n_total * len(labels), n_instructions=done, n_instructions_total=n_total, rounds=len(history),
        stopped_because=stopped, undecided=undecided, history=history, decision=last,
        responses_generated=generated, responses_exhaustive=n_total * len(labels), eliminated=eliminated,
        students=students if several else [], tables=tables if several else {},
        winners=winners if several or students[0] is not None else {}, responses_separate=rule["separate"])

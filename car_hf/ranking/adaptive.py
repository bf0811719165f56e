"""Adaptive ranking: score instructions in seeded random rounds and stop once the ranking is decided.

:func:`rank_adaptive` is the loop: it scores whole instructions (every generator's row of each) round by round
with any ``Dataset.map`` scorer, asks the stopping rule of :mod:`car_hf.ranking.stopping` after each round, and can save
each round to a checkpoint folder to resume a killed run without scoring a row twice.

Example (a stand-in scorer that reads precomputed scores; a real one is
``add_car(base_model="google/gemma-3-270m", reward_column="judge_preference")``):
    >>> from datasets import Dataset
    >>> from car_hf.ranking.adaptive import rank_adaptive
    >>> zoo = Dataset.from_dict({"instruction_id": [i for i in range(100) for _ in "ab"],
    ...                          "generator": ["strong", "weak"] * 100, "r": [0.9, 0.3] * 100})
    >>> def scorer(batch, indices):
    ...     return {"reward": batch["r"], "base_loss": [2.0] * len(indices)}
    >>> result = rank_adaptive(zoo, scorer, confidence=0.95, n_bootstrap=200)
    >>> result.stopped_because, result.n_scored, result.n_total, result.table["generator"].tolist()
    ('confident', 40, 200, ['strong', 'weak'])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd

from car_hf.core.cache import ScoreCache, rows_digest, scoring_key
from car_hf.core.data import map_scores
from car_hf.ranking.leaderboard import bootstrap_car, rank_generators
from car_hf.ranking.results import AdaptiveResult
from car_hf.ranking.stopping import (
    DEFAULT_MIN_INSTRUCTIONS,
    DEFAULT_N_BOOTSTRAP,
    DEFAULT_ROUND_GROWTH,
    DEFAULT_ROUND_SIZE,
    TARGETS,
    StopDecision,
    decision_level,
    instruction_cells,
    instruction_order,
    pairwise_win_probability,
    plan_rounds,
    stop_decision,
)

logger = logging.getLogger(__name__)

def rank_adaptive(
    dataset: Any,
    scorer: Any,
    *,
    by: str = "generator",
    instruction_column: str | None = None,
    beta: float | None = None,
    reward_transform: str = "raise",
    reward_column: str = "reward",
    loss_column: str = "base_loss",
    confidence: float = 0.95,
    target: str = "top1",
    correction: str = "bonferroni",
    max_examples: int | None = None,
    round_size: int = DEFAULT_ROUND_SIZE,
    round_growth: float = DEFAULT_ROUND_GROWTH,
    min_instructions: int = DEFAULT_MIN_INSTRUCTIONS,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    seed: int = 0,
    batch_size: int = 64,
    num_proc: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    config: Mapping[str, Any] | None = None,
    teachers: Sequence[Any] | None = None,
    students: Any = None,
) -> AdaptiveResult:
    """Rank generators while scoring as few rows as the requested confidence allows.

    Instructions are scored in a random order fixed by ``seed``, whole (every generator's row of an instruction
    in the same round, so comparisons stay paired), in rounds (:func:`plan_rounds`: ``min_instructions`` first,
    then ``round_size`` or ``round_growth`` times the scored instructions more per round), each with
    ``dataset.select(rows).map(scorer, batched=True, with_indices=True)``. After each round
    :func:`stop_decision` decides; see :mod:`car_hf.ranking.stopping` for the rule.

    Args:
        dataset: a ``datasets.Dataset`` (or a DataFrame) in the long layout (one row per instruction x generator).
        scorer: a ``Dataset.map`` transform adding ``reward_column`` and ``loss_column``, e.g.
            ``add_car(base_model=..., reward_column="judge_preference")``.
        by: column naming the generator; instruction_column: the pairing column (default ``instruction_id`` when
            present, else ``instruction``).
        beta: CAR's loss weight; default ``scorer.beta`` when the scorer has one, else 1.0.
        confidence: each tested pair must be decided at this level (after the multiplicity ``correction``).
        target: ``"top1"`` (who is best) or ``"ranking"`` (the whole order, adjacent pairs).
        max_examples: row budget; only whole instructions are scored, so the rows scored are the longest prefix
            of the order that fits (never more than ``max_examples``; rows already in a checkpoint are used even
            beyond it). ``None``: no budget.
        round_size, round_growth, min_instructions: the schedule, see :func:`plan_rounds`; no stop before
            ``min_instructions`` instructions are scored.
        n_bootstrap, seed: resamples of the paired bootstrap (stopping rule and final table) and the seed of both
            the instruction order and the resamples.
        batch_size, num_proc: passed to ``Dataset.map``.
        checkpoint: a folder; each round's scored rows are saved there (``save_to_disk``) and a later call with
            the same dataset, scorer, instruction column and seed resumes from them, scoring no row twice.
        config: extra entries for ``table.attrs["car"]`` (default: ``scorer.scoring_config()`` when present).
        teachers: candidate teachers instead of existing responses: ``dataset`` holds instructions only, and the
            teachers answer them round by round, as few as the rule needs (:func:`car_hf.ranking.trial.rank_teachers`;
            ``max_examples`` then budgets the responses generated); ``students``: several students, as there.

    Returns:
        :class:`AdaptiveResult` (:class:`~car_hf.ranking.results.TrialResult` with ``teachers``).
    """
    import datasets

    if teachers is not None:
        from car_hf.ranking.trial import rank_teachers

        return rank_teachers(dataset, teachers, scorer, target=target, beta=beta, confidence=confidence,
                             reward_transform=reward_transform, correction=correction,
                             max_responses=max_examples, min_instructions=min_instructions, round_size=round_size,
                             round_growth=round_growth, n_bootstrap=n_bootstrap, seed=seed, checkpoint=checkpoint,
                             batch_size=batch_size, config=dict(config) if config else None, students=students)

    if students is not None:
        raise ValueError("students= runs a trial for several students: pass teachers= too (scored data with several "
                         "students: car_hf.ranking.matrix.rank_matrix)")
    if isinstance(dataset, pd.DataFrame):
        dataset = datasets.Dataset.from_pandas(dataset, preserve_index=False)
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    decision_level(confidence, 1, correction)  # validates correction
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    if beta is None:
        beta = float(getattr(scorer, "beta", 1.0))
    if instruction_column is None:
        instruction_column = next((c for c in ("instruction_id", "instruction") if c in dataset.column_names), None)
        if instruction_column is None:
            raise KeyError(f"rank_adaptive pairs rows by instruction: pass instruction_column=; columns: "
                           f"{dataset.column_names}")
    from car_hf.core.inputs import need_column

    need_column(instruction_column, dataset.column_names, "instruction_column: pairs rows across generators")
    need_column(by, dataset.column_names, "by: the generator of each row")
    if config is None and hasattr(scorer, "scoring_config"):
        config = scorer.scoring_config()

    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    keys = list(dataset[instruction_column])
    rows_of: dict[Any, list[int]] = {}
    for row, key in enumerate(keys):
        rows_of.setdefault(key, []).append(row)
    instructions = list(rows_of)
    order = [instructions[i] for i in instruction_order(len(instructions), seed)]
    counts = [len(rows_of[k]) for k in order]
    looks = plan_rounds(counts, min_instructions=min_instructions, round_size=round_size, round_growth=round_growth,
                        max_examples=max_examples)
    if not looks:
        raise ValueError(f"max_examples={max_examples} is smaller than the first instruction's {counts[0]} rows: "
                         "rank_adaptive scores whole instructions")

    parts: list[tuple[Any, list[int]]] = []
    history: list[dict[str, Any]] = []
    store = None

    def round_inputs(meta: dict[str, Any]) -> str:
        """What a round is computed from: the dataset's rows it names, positions and values."""
        return rows_digest(dataset.select(meta["rows"]), meta["rows"])

    if checkpoint is not None:
        # The score cache: a rerun with the same data, scorer, order and car_hf version resumes; any change starts
        # a new key beside the old one.
        store = ScoreCache(checkpoint, scoring_key(scorer, dataset, instruction_column=instruction_column, by=by,
                                                   order_seed=seed, adaptive="rounds"))
        # Rounds in sequence, each verified against the rows it names: resuming stops at the first one missing or
        # not verifying (a warning names it), and the rounds from there are scored again.
        while (loaded := store.load(f"round-{len(parts) + 1:05d}", inputs=round_inputs)) is not None:
            parts.append((loaded[0], loaded[1]["rows"]))
            history.append(loaded[1]["history"])
    done_rows = {r for _, rows in parts for r in rows}
    done = 0
    while done < len(order) and all(r in done_rows for r in rows_of[order[done]]):
        done += 1
    if len(done_rows) != sum(counts[:done]):
        raise ValueError(f"checkpoint {checkpoint} holds rows that are not a prefix of this seed's instruction order")
    if parts:
        logger.info("resuming from %s: %d rows (%d instructions) already scored", store.folder, len(done_rows), done)
    elif store is not None:
        logger.info(store.describe_miss())

    columns = [by, instruction_column, reward_column, loss_column]
    frames = [d.select_columns(columns).to_pandas().set_axis(rows) for d, rows in parts]

    def decide() -> StopDecision:
        # Rows in dataset order, as rank_generators sees them: the last decision's resamples are the table's.
        frame = pd.concat(frames).sort_index(kind="stable")
        cells = instruction_cells(frame, by=by, instruction_column=instruction_column,
                                  reward_column=reward_column, loss_column=loss_column,
                                  reward_transform=reward_transform)
        return stop_decision(cells, beta=beta, target=target, confidence=confidence, correction=correction,
                             min_instructions=min_instructions, n_bootstrap=n_bootstrap, seed=seed)

    decision = decide() if parts else None
    for look in looks:
        if decision is not None and decision.stop:
            break
        if look <= done:
            continue
        rows = [r for key in order[done:look] for r in rows_of[key]]
        new = map_scores(dataset.select(rows), scorer, rows=rows, batch_size=batch_size, num_proc=num_proc,
                         desc=f"Scoring round {len(parts) + 1} ({len(rows)} rows)")
        parts.append((new, rows))
        frames.append(new.select_columns(columns).to_pandas().set_axis(rows))
        done = look
        decision = decide()
        entry = {"round": len(parts), "n_scored": sum(counts[:done]), "n_instructions": done,
                 "leader": decision.leader, "p_top": decision.p_top, "n_undecided": len(decision.undecided),
                 "stop": decision.stop}
        history.append(entry)
        if store is not None:
            store.save(f"round-{len(parts):05d}", new, meta={"rows": rows, "history": entry},
                       inputs=round_inputs({"rows": rows}))
        logger.info("round %d: %d rows, leader %s, p_top %.4f, %s", len(parts), entry["n_scored"], decision.leader,
                    decision.p_top, "stop" if decision.stop else decision.note)
    if decision is None:
        raise RuntimeError("nothing was scored")  # unreachable: looks is non-empty
    if decision.stop:
        stopped_because = "confident"
    elif done == len(order):
        stopped_because = "exhausted"
    else:
        stopped_because = "budget"

    all_rows = [r for _, rows in parts for r in rows]
    joined = datasets.concatenate_datasets([d for d, _ in parts]) if len(parts) > 1 else parts[0][0]
    in_order = np.argsort(all_rows, kind="stable")
    scored = joined.select(in_order.tolist())
    indices = [all_rows[i] for i in in_order]
    adaptive = {
        "target": target, "confidence": confidence, "correction": correction, "level": decision.level,
        "min_instructions": min_instructions, "round_size": round_size, "round_growth": round_growth,
        "max_examples": max_examples,
        "stopped_because": stopped_because, "rounds": len(parts), "n_scored": len(indices),
        "n_total": len(dataset), "n_instructions": done, "n_instructions_total": len(order), "order_seed": seed,
        "p_top": decision.p_top, "undecided": decision.undecided,
    }
    table = rank_generators(
        scored, by=by, beta=beta, reward_transform=reward_transform, reward_column=reward_column,
        loss_column=loss_column, instruction_column=instruction_column, confidence=confidence,
        n_bootstrap=n_bootstrap, seed=seed, config={**dict(config or {}), "adaptive": adaptive},
    )
    boot_cells = instruction_cells(scored, by=by, instruction_column=instruction_column, reward_column=reward_column,
                                   loss_column=loss_column, reward_transform=reward_transform)
    wins = pairwise_win_probability(bootstrap_car(boot_cells, beta, n_bootstrap, seed)[0])  # = the last decision's
    position = {g: i for i, g in enumerate(boot_cells.groups)}
    names = table[by].tolist()
    table["p_beats_next"] = [float(wins[position[a], position[b]]) for a, b in pairwise(names)] + [np.nan]
    return AdaptiveResult(
        table=table, scored=scored, indices=indices, n_scored=len(indices), n_total=len(dataset),
        n_instructions=done, n_instructions_total=len(order), rounds=len(parts), stopped_because=stopped_because,
        undecided=decision.undecided, history=history, decision=decision,
    )

"""Adaptive ranking: score instructions in seeded random rounds and stop once the ranking is decided.

Ranking generators compares means, and the comparison is often settled long before every example is scored.
:func:`rank_adaptive` scores whole instructions (every generator's response to each, so the comparison stays
paired) in a random order fixed by ``seed``, and after each round asks the paired bootstrap of
:mod:`car_hf.ranking` whether the ranking is decided:

* the pairwise win probability ``P(a beats b)`` is the share of bootstrap resamples of the scored instructions
  (with replacement, the same resample for every generator) in which generator ``a``'s CAR is higher than
  ``b``'s (ties count one half);
* ``target="top1"``: the leader (highest CAR on the rows scored so far) must beat every other generator with
  probability >= ``level``; ``target="ranking"``: every adjacent pair of the ranking must be decided at ``level``;
* ``level = 1 - (1 - confidence) / m`` with ``m = G - 1`` tested pairs (Bonferroni, the default
  ``correction="bonferroni"``), or ``level = confidence`` (``correction="none"``);
* no decision is taken before ``min_instructions`` instructions are scored: bootstrap intervals from a handful of
  clusters are too narrow.

The defaults were chosen by replaying the rule on real scores (``bench/ADAPTIVE.md``): without the correction, a
contest between two close generators ended "confident" on the wrong leader in ~1 in 7 of its confident stops at
a nominal 95% (the rule looks repeatedly, and the bootstrap is optimistic on few instructions); with it, none did,
for about twice the rows scored.

It stops when that holds ("confident"), when the next round would exceed ``max_examples`` rows ("budget") or when
every row is scored ("exhausted"). :func:`stop_decision` is the rule as a pure function of
:class:`~car_hf.ranking.Cells`; :func:`plan_rounds` is the round schedule; ``bench/adaptive_replay.py`` replays both
on cached scores.

Example:
    >>> from car_hf import add_car
    >>> from car_hf.adaptive import rank_adaptive
    >>> scorer = add_car(base_model="google/gemma-3-270m", reward_column="judge_preference")  # doctest: +SKIP
    >>> result = rank_adaptive(zoo, scorer, confidence=0.95, checkpoint="ckpt/")  # doctest: +SKIP
    >>> result.stopped_because, result.n_scored, result.n_total  # doctest: +SKIP
    ('confident', 1430, 8855)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .car import transform_rewards
from .ranking import Cells, bootstrap_car, build_cells, rank_generators
from .data import map_scores

logger = logging.getLogger(__name__)

TARGETS = ("top1", "ranking")
CORRECTIONS = ("bonferroni", "none")
STOP_REASONS = ("confident", "budget", "exhausted")
DEFAULT_MIN_INSTRUCTIONS = 20
DEFAULT_ROUND_SIZE = 10
DEFAULT_ROUND_GROWTH = 0.1
DEFAULT_N_BOOTSTRAP = 1000
_STATE = "adaptive_state.json"


# --------------------------------------------------------------------------------------------------------------
# The rule, as pure functions (the replay benchmark calls these too)


def instruction_cells(
    data: Any,
    *,
    by: str = "generator",
    instruction_column: str = "instruction_id",
    reward_column: str = "reward",
    loss_column: str = "base_loss",
    reward_transform: str = "raise",
) -> Cells:
    """The (generator x instruction) sums the paired bootstrap resamples, as :func:`rank_generators` builds them.

    ``data``: a DataFrame, a ``datasets.Dataset`` or a dict of columns with ``by``, ``instruction_column``,
    ``reward_column`` and ``loss_column``. The reward transform is applied over the rows given.
    """
    if hasattr(data, "select_columns"):
        data = data.select_columns([by, instruction_column, reward_column, loss_column]).to_pandas()
    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(dict(data))
    raw = pd.to_numeric(frame[reward_column], errors="coerce").to_numpy(dtype=float)
    rewards, _ = transform_rewards(raw, reward_transform, column=reward_column)
    losses = pd.to_numeric(frame[loss_column], errors="coerce").to_numpy(dtype=float)
    return build_cells(frame[by].tolist(), frame[instruction_column].tolist(), rewards, losses)


def subset_cells(cells: Cells, columns: Sequence[int] | np.ndarray) -> Cells:
    """The cells of a subset of instructions (by column position): what scoring only those would give."""
    columns = np.asarray(columns, dtype=int)
    return Cells(cells.groups, cells.reward[:, columns], cells.loss[:, columns], cells.count[:, columns])


def point_car(cells: Cells, beta: float) -> np.ndarray:
    """CAR per generator on all the instructions of ``cells`` (NaN for a generator with no finite row)."""
    reward, loss = cells.means(np.ones((1, cells.count.shape[1])))
    return (reward / (1.0 + beta * loss))[0]


def pairwise_win_probability(boot: np.ndarray) -> np.ndarray:
    """``P[a, b]``: share of bootstrap resamples (rows of ``boot``, [B, G]) in which ``a`` beats ``b``.

    Ties count one half, so ``P + P.T == 1`` off the diagonal; NaN (a generator with no row in a resample)
    loses to any number. Pass the CAR draws of :func:`car_hf.ranking.bootstrap_car`.

    Example:
        >>> pairwise_win_probability(np.array([[1.0, 0.0], [2.0, 3.0], [1.0, 1.0]])).round(3).tolist()
        [[0.5, 0.5], [0.5, 0.5]]
    """
    filled = np.where(np.isnan(boot), -np.inf, np.asarray(boot, dtype=float))
    greater = (filled[:, :, None] > filled[:, None, :]).mean(axis=0)
    equal = (filled[:, :, None] == filled[:, None, :]).mean(axis=0)
    return greater + 0.5 * equal


def decision_level(confidence: float, n_pairs: int, correction: str = "bonferroni") -> float:
    """The win probability each tested pair needs: ``confidence``, or ``1 - (1 - confidence) / n_pairs``."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    if correction == "none" or n_pairs <= 1:
        return confidence
    return 1.0 - (1.0 - confidence) / n_pairs


@dataclass
class StopDecision:
    """What :func:`stop_decision` concluded on the instructions scored so far."""

    stop: bool
    order: list[Any]  # generators, best first (point CAR on the scored instructions)
    car: np.ndarray  # point CAR, in ``order``
    leader: Any
    p_top: float  # the leader's smallest win probability against another generator
    level: float  # the win probability each tested pair needed
    pairs: list[dict[str, Any]]  # the tested pairs: {"better", "worse", "p_win", "decided"}
    n_instructions: int
    note: str = ""  # why not, when it is not a stop

    @property
    def undecided(self) -> list[dict[str, Any]]:
        """Tested pairs whose order is not decided at ``level``."""
        return [p for p in self.pairs if not p["decided"]]


def stop_decision(
    cells: Cells,
    *,
    beta: float,
    target: str = "top1",
    confidence: float = 0.95,
    correction: str = "bonferroni",
    min_instructions: int = DEFAULT_MIN_INSTRUCTIONS,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    seed: int = 0,
) -> StopDecision:
    """The stopping rule: is the ranking on these instructions decided at ``confidence``?

    Generators are ordered by point CAR on the scored instructions. The tested pairs are, for
    ``target="top1"``, the leader against each other generator; for ``target="ranking"``, each adjacent pair
    of the order. Each pair's win probability comes from the paired bootstrap (:func:`car_hf.ranking.bootstrap_car`,
    ``n_bootstrap`` resamples of the instructions, ``seed``); the rule stops when every tested pair's is at least
    ``level`` (:func:`decision_level`: Bonferroni over the ``G - 1`` tested pairs by default) and at least
    ``min_instructions`` instructions are scored.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_bootstrap < 1:
        raise ValueError("the stopping rule needs bootstrap resamples: n_bootstrap >= 1")
    n_generators, n_instructions = cells.count.shape
    car = point_car(cells, beta)
    order = np.argsort(-np.where(np.isnan(car), -np.inf, car), kind="stable")
    n_pairs = max(n_generators - 1, 1)
    level = decision_level(confidence, n_pairs, correction)
    if n_instructions == 0:
        return StopDecision(False, [cells.groups[i] for i in order], car[order], None, float("nan"), level, [], 0,
                            "nothing scored")
    boot, _, _ = bootstrap_car(cells, beta, n_bootstrap, seed)
    wins = pairwise_win_probability(boot)
    if target == "top1":
        tested = [(order[0], other) for other in order[1:]]
    else:
        tested = list(pairwise(order))
    pairs = [{"better": cells.groups[a], "worse": cells.groups[b], "p_win": float(wins[a, b]),
              "decided": bool(wins[a, b] >= level)} for a, b in tested]
    p_top = float(min((wins[order[0], b] for b in order[1:]), default=1.0))
    decided = all(p["decided"] for p in pairs)
    note = ""
    if n_instructions < min_instructions:
        note = f"only {n_instructions} < min_instructions={min_instructions} instructions scored"
    elif not decided:
        note = f"{sum(not p['decided'] for p in pairs)} pair(s) below {level:.4g}"
    return StopDecision(decided and not note, [cells.groups[i] for i in order], car[order], cells.groups[order[0]],
                        p_top, level, pairs, n_instructions, note)


def instruction_order(n_instructions: int, seed: int) -> np.ndarray:
    """The scoring order: a permutation of the instructions (numbered by first appearance) fixed by ``seed``."""
    return np.random.default_rng(seed).permutation(n_instructions)


def plan_rounds(
    rows_per_instruction: Sequence[int],
    *,
    min_instructions: int = DEFAULT_MIN_INSTRUCTIONS,
    round_size: int = DEFAULT_ROUND_SIZE,
    round_growth: float = DEFAULT_ROUND_GROWTH,
    max_examples: int | None = None,
) -> list[int]:
    """The looks: cumulative numbers of instructions (in scoring order) after each round.

    The first round scores ``min_instructions`` instructions; each later one adds ``round_size`` instructions or
    ``round_growth`` times those already scored, whichever is more (so a large dataset takes O(log n) looks, and
    a stop overshoots the instructions needed by at most that share). The budget is whole instructions: the last
    look is the longest prefix of instructions whose rows total at most ``max_examples`` (never more rows than
    the budget; an instruction that does not fit is not started).

    Example:
        >>> plan_rounds([3] * 10, min_instructions=4, round_size=3, max_examples=25)
        [4, 7, 8]
        >>> plan_rounds([1] * 300, min_instructions=20, round_size=10, round_growth=0.25)
        [20, 30, 40, 50, 63, 79, 99, 124, 155, 194, 243, 300]
    """
    if min_instructions < 1 or round_size < 1 or round_growth < 0:
        raise ValueError("min_instructions and round_size must be >= 1, round_growth >= 0")
    counts = np.asarray(rows_per_instruction, dtype=int)
    cap = len(counts)
    if max_examples is not None:
        cap = int(np.searchsorted(np.cumsum(counts), max_examples, side="right"))
    looks = []
    n = min(min_instructions, cap)
    while n > (looks[-1] if looks else 0):
        looks.append(n)
        n = min(max(n + round_size, math.ceil(n * (1 + round_growth))), cap)
    return looks


# --------------------------------------------------------------------------------------------------------------
# The API


@dataclass
class AdaptiveResult:
    """What :func:`rank_adaptive` returns.

    ``table`` is :func:`car_hf.rank_generators` on the scored rows (best first) plus ``p_beats_next`` (win
    probability against the generator ranked just below); ``table.attrs["car"]["adaptive"]`` records the rule,
    the budget and why it stopped. ``scored`` holds the scored rows (input and score columns) in dataset order,
    ``indices`` their row numbers in the input dataset.
    """

    table: pd.DataFrame
    scored: Any
    indices: list[int]
    n_scored: int
    n_total: int
    n_instructions: int
    n_instructions_total: int
    rounds: int
    stopped_because: str
    undecided: list[dict[str, Any]]
    history: list[dict[str, Any]] = field(default_factory=list)
    decision: StopDecision | None = None

    @property
    def fraction_scored(self) -> float:
        return self.n_scored / self.n_total if self.n_total else float("nan")

    def summary(self) -> str:
        """One paragraph for a log or the CLI."""
        adaptive = self.table.attrs.get("car", {}).get("adaptive", {})
        lines = [(
            f"adaptive ranking: stopped ({self.stopped_because}) after {self.rounds} round(s): {self.n_scored} of "
            f"{self.n_total} rows ({100 * self.fraction_scored:.1f}%), {self.n_instructions} of "
            f"{self.n_instructions_total} instructions; target={adaptive.get('target')}, confidence="
            f"{adaptive.get('confidence')} (each tested pair >= {adaptive.get('level', float('nan')):.4g}, "
            f"{adaptive.get('correction')})"
        )]
        for pair in self.undecided:
            lines.append(f"  undecided: {pair['better']} over {pair['worse']}: P = {pair['p_win']:.3f}")
        return "\n".join(lines)


def _digest(values: Any) -> str:
    return hashlib.blake2b(json.dumps(values, default=str).encode(), digest_size=8).hexdigest()


def _scorer_hash(scorer: Any) -> str | None:
    try:
        from datasets.fingerprint import Hasher

        return Hasher.hash(scorer)
    except Exception:  # noqa: BLE001 - an unhashable scorer just is not checked on resume
        return None


class _Checkpoint:
    """A folder of ``round_NNNNN/`` parts (``save_to_disk`` + ``rows.json``) and the settings they belong to."""

    def __init__(self, folder: str | os.PathLike, settings: dict[str, Any]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        state = self.folder / _STATE
        if state.exists():
            saved = json.loads(state.read_text())
            changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v and saved.get(k) is not None}
            if changed:
                raise ValueError(
                    f"checkpoint {self.folder} was written for other data or settings ({changed}: saved vs now); "
                    "resume with the same dataset, scorer, instruction column and seed, or use another folder"
                )
        else:
            _write_json(state, settings)

    def parts(self) -> list[tuple[Any, list[int], dict[str, Any]]]:
        import datasets

        loaded = []
        for part in sorted(self.folder.glob("round_[0-9]*")):
            meta_path = part / "rows.json"
            if part.suffix == ".tmp" or not meta_path.exists():
                continue
            meta = json.loads(meta_path.read_text())
            loaded.append((datasets.load_from_disk(str(part / "data")), meta["rows"], meta.get("history", {})))
        return loaded

    def save(self, number: int, data: Any, rows: list[int], history: dict[str, Any]) -> None:
        final = self.folder / f"round_{number:05d}"
        tmp = self.folder / f"round_{number:05d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        data.save_to_disk(str(tmp / "data"))
        _write_json(tmp / "rows.json", {"rows": rows, "history": history})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    os.replace(tmp, path)


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
) -> AdaptiveResult:
    """Rank generators while scoring as few rows as the requested confidence allows.

    Instructions are scored in a random order fixed by ``seed``, whole (every generator's row of an instruction
    in the same round, so comparisons stay paired), in rounds (:func:`plan_rounds`: ``min_instructions`` first,
    then ``round_size`` or ``round_growth`` times the scored instructions more per round), each with
    ``dataset.select(rows).map(scorer, batched=True, with_indices=True)``. After each round
    :func:`stop_decision` decides; see the module docstring for the rule.

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

    Returns:
        :class:`AdaptiveResult`.
    """
    import datasets

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
    for column in (instruction_column, by):
        if column not in dataset.column_names:
            raise KeyError(f"column {column!r} is missing; the dataset has columns {dataset.column_names}")
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
    if checkpoint is not None:
        store = _Checkpoint(checkpoint, {
            "instruction_column": instruction_column, "by": by, "seed": seed, "n_total": len(dataset),
            "data": _digest([keys, list(dataset[by])]), "scorer": _scorer_hash(scorer),
        })
        for data, rows, entry in store.parts():
            parts.append((data, rows))
            if entry:
                history.append(entry)
    done_rows = {r for _, rows in parts for r in rows}
    done = 0
    while done < len(order) and all(r in done_rows for r in rows_of[order[done]]):
        done += 1
    if len(done_rows) != sum(counts[:done]):
        raise ValueError(f"checkpoint {checkpoint} holds rows that are not a prefix of this seed's instruction order")
    if parts:
        logger.info("resuming from %s: %d rows (%d instructions) already scored", checkpoint, len(done_rows), done)

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
            store.save(len(parts), new, rows, entry)
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

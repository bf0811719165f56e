"""The stopping rule of adaptive ranking: is the ranking of generators decided on the instructions scored so far?

Ranking generators compares means, and the comparison is often settled long before every example is scored.
:func:`car_hf.ranking.adaptive.rank_adaptive` scores whole instructions (every generator's response to each, so the
comparison stays paired) in a random order fixed by ``seed`` (:func:`instruction_order`), in rounds
(:func:`plan_rounds`), and after each round asks :func:`stop_decision` whether the paired bootstrap of
:mod:`car_hf.ranking.leaderboard` has decided the ranking:

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

The loop stops when that holds ("confident"), when the next round would exceed ``max_examples`` rows ("budget")
or when every row is scored ("exhausted"): :data:`STOP_REASONS`. Everything here is a pure function of
:class:`~car_hf.ranking.leaderboard.Cells`, so ``bench/adaptive_replay.py`` replays the very rule the API runs on cached
scores, with no model.

Example:
    >>> from car_hf.ranking.stopping import instruction_cells, stop_decision
    >>> scores = {"generator": ["a", "b"] * 30, "instruction_id": [i for i in range(30) for _ in "ab"],
    ...           "reward": [0.9, 0.3] * 30, "base_loss": [2.0, 2.1] * 30}
    >>> decision = stop_decision(instruction_cells(scores), beta=1.0, n_bootstrap=200)
    >>> decision.stop, decision.leader, decision.p_top, decision.n_instructions
    (True, 'a', 1.0, 30)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from car_hf.core.car import transform_rewards
from car_hf.core.inputs import check_numbers
from car_hf.ranking.leaderboard import Cells, _table_frame, bootstrap_car, build_cells

TARGETS = ("top1", "ranking")
CORRECTIONS = ("bonferroni", "none")
STOP_REASONS = ("confident", "budget", "exhausted")
DEFAULT_MIN_INSTRUCTIONS = 20
DEFAULT_ROUND_SIZE = 10
DEFAULT_ROUND_GROWTH = 0.1
DEFAULT_N_BOOTSTRAP = 1000


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
    ``reward_column`` and ``loss_column``. The reward transform is applied over the rows given. Rewards and
    losses follow the bad-input policy (:func:`car_hf.core.inputs.check_numbers`: None/NaN left out of the means,
    text or ±inf an InputError naming the row — the frame's index — and the column), as in
    :func:`~car_hf.ranking.leaderboard.rank_generators`; a missing column is an InputError listing those present.
    """
    columns = [by, instruction_column, reward_column, loss_column]
    roles = ["by: the generator of each row", "instruction_column: pairs rows across generators",
             "reward_column: rewards of each row", "loss_column: base-model loss of each row"]
    frame = _table_frame(data, columns, dict(zip(columns, roles)))
    raw = check_numbers(frame[reward_column], reward_column, names=frame.index)
    rewards, _ = transform_rewards(raw, reward_transform, names=frame.index, column=reward_column)
    losses = check_numbers(frame[loss_column], loss_column, names=frame.index, kind="loss")
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
    loses to any number. Pass the CAR draws of :func:`car_hf.ranking.leaderboard.bootstrap_car`.

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
    of the order. Each pair's win probability comes from the paired bootstrap (:func:`car_hf.ranking.leaderboard.bootstrap_car`,
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


@dataclass
class Elimination:
    """What :func:`eliminate` concluded on the instructions every active generator has answered."""

    leader: Any
    eliminated: list[dict[str, Any]]  # {"generator", "p_leader_wins"}: decided not to be the best
    p_leader_wins: dict[Any, float]  # against each other active generator
    n_instructions: int


def eliminate(
    cells: Cells,
    active: Sequence[Any],
    *,
    beta: float,
    level: float,
    min_instructions: int = DEFAULT_MIN_INSTRUCTIONS,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    seed: int = 0,
) -> Elimination:
    """Successive elimination for best-arm identification: which active generators are out of contention?

    On the instructions that every ``active`` generator has answered (those answered since the last elimination
    include them all: comparisons stay paired), the leader is the active generator with the highest point CAR;
    every other active generator that the leader beats with paired-bootstrap probability >= ``level`` is
    eliminated (it cannot be the best at that confidence), and nothing more needs to be generated for it. Before
    ``min_instructions`` common instructions nobody is eliminated. ``level`` is :func:`decision_level` over the
    ``G - 1`` comparisons the winner must win (Bonferroni), as in :func:`stop_decision`.

    Example:
        >>> scores = {"generator": ["a", "b", "c"] * 25, "instruction_id": [i for i in range(25) for _ in "abc"],
        ...           "reward": [0.9, 0.2, 0.88] * 25, "base_loss": [2.0, 2.0, 2.0] * 25}
        >>> out = eliminate(instruction_cells(scores), ["a", "b", "c"], beta=1.0, level=0.975, n_bootstrap=200)
        >>> out.leader, [e["generator"] for e in out.eliminated]
        ('a', ['b', 'c'])
    """
    leader, p, n_used = _contest([cells], active, beta=beta, min_instructions=min_instructions,
                                 n_bootstrap=n_bootstrap, seed=seed)
    return Elimination(leader, [{"generator": g, "p_leader_wins": v} for g, v in p.items() if v >= level], p, n_used)


def common_car(car: np.ndarray) -> np.ndarray:
    """The best-common-teacher score of each teacher from per-student CARs ``car`` [S, ..., G]: the mean over the
    students of CAR / that student's best CAR among the G teachers (higher is better), the rule ``"mean"`` of
    :func:`car_hf.ranking.matrix.rank_matrix` (smallest mean relative regret; CAR's scale differs by student).

    >>> common_car(np.array([[0.4, 0.2, 0.3], [0.1, 0.4, 0.3]])).round(3).tolist()
    [0.625, 0.75, 0.75]
    """
    car = np.asarray(car, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.mean(car / np.nanmax(np.where(np.isnan(car), -np.inf, car), axis=-1, keepdims=True), axis=0)


def _contest(cells: Sequence[Cells], active: Sequence[Any], *, beta: float, min_instructions: int,
             n_bootstrap: int, seed: int) -> tuple[Any, dict[Any, float], int]:
    """The leader among ``active`` (by CAR with one student's cells, by :func:`common_car` with several), the
    probability it beats each other one, and the instructions used: those every active teacher answered with a
    finite score under every student. One seed and one set of instructions give every student the same resamples,
    so the comparison stays paired."""
    subs = []
    for one in cells:
        index = {g: k for k, g in enumerate(one.groups)}
        rows = np.array([index[g] for g in active], dtype=int)
        subs.append(Cells(list(active), one.reward[rows], one.loss[rows], one.count[rows]))
    common = np.flatnonzero(np.all([(sub.count > 0).all(axis=0) for sub in subs], axis=0))
    subs = [subset_cells(sub, common) for sub in subs]
    score = (lambda cars: cars[0] if len(cars) == 1 else common_car(np.stack(cars)))  # noqa: E731
    car = score([point_car(sub, beta) for sub in subs]) if common.size else np.full(len(active), np.nan)
    lead = int(np.argmax(np.where(np.isnan(car), -np.inf, car)))
    if common.size < max(min_instructions, 1) or len(active) < 2:
        return active[lead], {}, int(common.size)
    wins = pairwise_win_probability(score([bootstrap_car(sub, beta, n_bootstrap, seed)[0] for sub in subs]))
    return active[lead], {active[k]: float(wins[lead, k]) for k in range(len(active)) if k != lead}, int(common.size)


STUDENT_TARGETS = ("top1", "common")


@dataclass
class StudentsElimination:
    """What :func:`eliminate_students` concluded on one look of a trial for several students."""

    contending: dict[Any, list[Any]]  # per student, the teachers still in contention after this look
    leaders: dict[Any, Any]  # per student, the leader among its contenders (target "common": the common leader)
    eliminated: list[dict[str, Any]]  # newly out: {"generator", "student", "p_leader_wins"} (student None: common)
    generating: list[Any]  # in contention for a student still undecided: what is still generated for
    n_instructions: dict[Any, int]  # per student, the instructions its comparisons used

    @property
    def settled(self) -> bool:
        """Every student is down to one contender: the trial is decided."""
        return all(len(c) <= 1 for c in self.contending.values())


def eliminate_students(
    cells: Mapping[Any, Cells],
    contending: Mapping[Any, Sequence[Any]],
    *,
    beta: float,
    level: float,
    target: str = "top1",
    min_instructions: int = DEFAULT_MIN_INSTRUCTIONS,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    seed: int = 0,
) -> StudentsElimination:
    """Successive elimination for several students that share the teachers' responses.

    ``cells``: each student's cells, built from the same rows (one loss column per student); ``contending``: the
    teachers still in contention for each student, in the teachers' order.

    * ``target="top1"``: each student's own :func:`eliminate` among its contenders — exactly the rule of a trial for
      that student alone (same instructions, order, level and bootstrap). A teacher out for one student is still
      generated for while it contends for another student whose contest is undecided, and dropped
      (``generating``) only when that holds for no student (a decided student's winner needs no more responses
      for it: its own trial would have stopped).
    * ``target="common"``: one contest for the best common teacher (:func:`common_car`): a teacher the common leader
      beats with probability >= ``level`` is out for every student at once.

    Example:
        >>> scores = {"generator": ["a", "b", "c"] * 25, "instruction_id": [i for i in range(25) for _ in "abc"],
        ...           "reward": [0.9, 0.88, 0.2] * 25, "loss_s": [2.0, 9.0, 2.0] * 25, "loss_t": [9.0, 2.0, 2.0] * 25}
        >>> cells = {s: instruction_cells(scores, loss_column=f"loss_{s}") for s in "st"}
        >>> out = eliminate_students(cells, {"s": ["a", "b", "c"], "t": ["a", "b", "c"]}, beta=1.0, level=0.975,
        ...                          n_bootstrap=200)
        >>> out.contending, out.settled, [(e["generator"], e["student"]) for e in out.eliminated]
        ({'s': ['a'], 't': ['b']}, True, [('b', 's'), ('c', 's'), ('a', 't'), ('c', 't')])
    """
    if target not in STUDENT_TARGETS:
        raise ValueError(f"target must be one of {STUDENT_TARGETS}, got {target!r}")
    if not cells or set(cells) != set(contending):
        raise ValueError(f"cells and contending must name the same students, got {list(cells)}, {list(contending)}")
    if len({c.count.shape[1] for c in cells.values()}) != 1:
        raise ValueError("every student's cells must cover the same instructions (build them from the same rows)")
    options = {"beta": beta, "min_instructions": min_instructions, "n_bootstrap": n_bootstrap, "seed": seed}
    kept = {s: list(c) for s, c in contending.items()}
    leaders, out, used = {}, [], {}
    contests = kept.items() if target == "top1" else [(None, list(dict.fromkeys(t for c in kept.values() for t in c)))]
    for student, teachers in contests:
        if len(teachers) < 2:
            leaders[student], used[student] = (teachers[0] if teachers else None), 0
            continue
        leader, p, used[student] = _contest([cells[student]] if student is not None else list(cells.values()),
                                            teachers, **options)
        leaders[student] = leader
        out += [{"generator": g, "student": student, "p_leader_wins": v} for g, v in p.items() if v >= level]
    for student in kept:  # the common target's one contest decides for every student
        gone = {e["generator"] for e in out if e["student"] in (student, None)}
        kept[student] = [t for t in kept[student] if t not in gone]
    if target == "common":
        leaders, used = dict.fromkeys(kept, leaders[None]), dict.fromkeys(kept, used[None])
    order = list(dict.fromkeys(t for c in contending.values() for t in c))
    generating = [t for t in order if any(t in c for c in kept.values() if len(c) > 1)]
    return StudentsElimination(kept, leaders, out, generating, used)


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

"""What the adaptive ranking and the teacher trial return: the leaderboard, the scored rows, why they stopped and,
for a trial, what generation cost.

Example:
    >>> import pandas as pd
    >>> result = TrialResult(table=pd.DataFrame(), scored=None, indices=[], n_scored=6, n_total=12, n_instructions=3,
    ...                      n_instructions_total=6, rounds=1, stopped_because="confident", undecided=[],
    ...                      responses_generated=6, responses_exhaustive=12)
    >>> result.fraction_scored, result.cost_line()
    (0.5, "generated 6 responses of the exhaustive trial's 12 (50.0%)")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from car_hf.ranking.stopping import StopDecision


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


@dataclass
class TrialResult(AdaptiveResult):
    """:class:`AdaptiveResult` of a trial, plus what generation cost.

    ``scored`` holds every generated and scored row (instruction columns, the response columns, ``generator``
    naming the teacher, the score columns); ``eliminated`` lists ``{"generator", "round", "n_instructions",
    "p_leader_wins"}`` (with several students also ``"student"``: None for the common target);
    ``responses_exhaustive`` is what answering every instruction with every teacher costs. With several students:
    ``students`` (labels), ``tables`` (each student's leaderboard; ``table`` stacks them with a ``student``
    column), ``winners`` (student → teacher) and ``responses_separate`` (student → what a trial for it alone
    generates; empty for the common target).
    """

    responses_generated: int = 0
    responses_exhaustive: int = 0
    eliminated: list[dict[str, Any]] = field(default_factory=list)
    students: list[str] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    winners: dict[str, Any] = field(default_factory=dict)
    responses_separate: dict[str, int] = field(default_factory=dict)

    def cost_line(self) -> str:
        share = self.responses_generated / self.responses_exhaustive if self.responses_exhaustive else float("nan")
        line = (f"generated {self.responses_generated} responses of the exhaustive trial's "
                f"{self.responses_exhaustive} ({100 * share:.1f}%)")
        if len(self.students) > 1 and self.responses_separate:
            total = sum(self.responses_separate.values())
            line += (f"; one trial per student would generate {total} ("
                     + " + ".join(f"{s} {n}" for s, n in self.responses_separate.items())
                     + f"): this trial generated {100 * self.responses_generated / total:.1f}% of them")
        elif len(self.students) > 1:
            line += f", for {len(self.students)} students at once (target=common: one teacher for all)"
        return line

    def summary(self) -> str:
        trial = self.table.attrs.get("car", {}).get("trial", {})
        lines = [f"teacher trial: stopped ({self.stopped_because}) after {self.rounds} round(s), {self.n_instructions} "
                 f"of {self.n_instructions_total} instructions; target={trial.get('target')}, confidence="
                 f"{trial.get('confidence')} (each comparison >= {trial.get('level', float('nan')):.4g}, "
                 f"{trial.get('correction')})", self.cost_line()]
        if self.students:
            lines.append("  winners: " + ", ".join(f"{s} → {t}" for s, t in self.winners.items()))
        at = lambda e: f" for {e['student']}" if e.get("student") else ""  # noqa: E731
        lines += [f"  undecided{at(p)}: {p['better']} over {p['worse']}: P = {p['p_win']:.3f}" for p in self.undecided]
        lines += [f"  eliminated{at(e)} after {e['n_instructions']} instructions: {e['generator']} (P(leader wins) = "
                  f"{e['p_leader_wins']:.3f})" for e in self.eliminated]
        return "\n".join(lines)

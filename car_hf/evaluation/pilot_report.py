"""The pilot's report: realized performance per teacher, the paired test, Spearman ρ with intervals, the β fit.

:func:`build_report` turns the pilot's evaluations into a :class:`PilotReport`:

* ``teachers``: one row per teacher, best realized first: why it was chosen, its predicted signals (``car`` at
  the chosen β, ``reward``, ``base_loss``, ``ppl``, ``ifd``, ``rsr``, ``response_tokens`` as the pool's
  leaderboard has them), the realized ``measure`` with its bootstrap interval over held-out items, the gain over
  the untuned student, the empty answers (scored 0), and the wall time of training and evaluation;
* ``paired``: a paired bootstrap over held-out items of the per-item difference between the top two students;
* ``spearman``: :func:`car_hf.ranking.leaderboard.spearman_table` of every signal (:data:`car_hf.ranking.leaderboard.BASELINES` and
  the loss, lower better) against the realized performance, with two kinds of uncertainty. ``rho_low``/
  ``rho_high``: percentiles of ρ over bootstrap resamples of the held-out items (the same resample for every
  student; for ``lc_win_rate`` the resampled per-item values are the judge's verdicts, i.e. the raw win rate):
  the noise of the held-out sample only, with these teachers and these students fixed. ``p_permutation``: the
  exact one-sided permutation p-value of ρ over the n teachers (:func:`permutation_p`): how often a random
  assignment of the realized values to the teachers ranks at least as well, the teacher-level uncertainty that
  item resampling cannot show (with 4 teachers it is never below 1/24). With several seeds, ``rho_seeds`` and
  ``rho_seed_sd``: ρ per training seed and its spread;
* ``beta``: the β used and :func:`car_hf.ranking.leaderboard.fit_beta`'s β and ρ;
* ``budget`` and ``cost`` (wall seconds per student, in all, processes, device).

:meth:`PilotReport.save` writes ``report.md``, ``report.json``, ``teachers.csv``, ``spearman.csv``,
``items.csv`` (every student's per-item results), ``pilot.png`` (predicted CAR vs. realized, one labelled point
per teacher, the untuned student as a dashed line) and ``README.md`` (the card, :mod:`car_hf.publishing.cards.pilot`), so the
folder can be pushed as is.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from car_hf.publishing.cards.common import plain, table, text
from car_hf.publishing.cards.pilot import write_pilot_card
from car_hf.evaluation.student import EvaluationConfig, StudentEvaluation, paired_comparison

SIGNALS = ("car", "reward", "base_loss", "ppl", "ifd", "rsr", "response_tokens")
FEW_TEACHERS = 4
"""At or below this many teachers the report warns that ρ means little (n = 4: ρ = 1 by chance once in 24)."""
EXACT_PERMUTATIONS = 8
"""Up to this many teachers :func:`permutation_p` enumerates every ordering (8! = 40320); above, 20000 random ones."""
INTERVALS = ("What each uncertainty covers: [CI] of a realized value and ρ's bootstrap interval resample the "
             "held-out items (these teachers, these trained students fixed); the permutation p asks whether these "
             "teachers' ranking could be chance; the seed spread is the training noise.")


@dataclass
class PilotReport:
    """What a pilot found; see the module docstring for each part."""

    measure: str
    teachers: pd.DataFrame
    baseline: dict[str, Any]
    paired: dict[str, Any]
    spearman: pd.DataFrame
    beta: dict[str, Any]
    budget: dict[str, Any]
    cost: dict[str, Any]
    evaluations: dict[str, StudentEvaluation] = field(default_factory=dict, repr=False)
    label: str | None = None  # the measure's name in the text (default: measure)
    partial: str | None = None  # why the report is not final yet
    audit: dict[str, Any] = field(default_factory=dict)  # the pool leaderboard's signal audit (car_hf.ranking.audit)

    @property
    def name(self) -> str:
        return self.label or self.measure

    def rho(self, metric: str = "CAR") -> float:
        """The Spearman ρ of one signal (its Table-4 name) against the realized performance."""
        return float(self.spearman.set_index("metric").loc[metric, "rho"])

    def to_markdown(self) -> str:
        """The report as markdown (also the pilot section of a card)."""
        m, b, total = self.name, self.baseline, self.cost["total"]
        reused = sum(int(c.get(k) or 0) for c in self.cost.values() for k in ("training_reused", "evaluation_reused"))
        seeds = "realized_seeds" in self.teachers.columns
        signals = [(c, h) for c, h in (("base_loss", "loss"), ("ifd", "IFD"), ("rsr", "RSR"))
                   if c in self.teachers.columns]
        rows = [[f"`{r.teacher}`", r.chosen_because, text(round(r.car, 4)), text(round(r.reward, 4))]
                + [text(round(getattr(r, c), 3)) for c, _ in signals]
                + [f"{r.realized:.3f} [{r.realized_low:.3f}, {r.realized_high:.3f}]"]
                + ([" / ".join(f"{v:.3f}" for v in r.realized_seeds)] if seeds else [])
                + [f"{r.gain_over_untuned:+.3f}"] for r in self.teachers.itertuples()]
        n = len(self.teachers)
        lines = [f"## Pilot: predicted vs. realized ({m})", ""] + ([f"**{self.partial}.**", ""] if self.partial else [])
        options = [f"{k}={v}" for k, v in self.budget.items() if k not in ("n_instructions", "n_heldout", "student")]
        lines += [f"Budget: {self.budget['n_instructions']} training instructions per teacher, "
                  f"{self.budget['n_heldout']} held-out items" + "".join(f", {o}" for o in options) + ".",
                  "", table(["teacher", "chosen as", f"CAR (β={_beta(self.beta['used'])})", "reward"]
                            + [h for _, h in signals] + [f"realized {m} [CI]"]
                            + (["per seed"] if seeds else []) + ["vs. untuned"], rows), "",
                  f"Untuned student: {b['mean']:.3f} [{b['low']:.3f}, {b['high']:.3f}] (n={b['n']}).", "",
                  _empty_note(self), ""] + _harness_note(self)
        if self.paired:
            p = self.paired
            lines += [f"Top two ({p['first']} vs. {p['second']}, {p['test']}): difference {p['difference']:+.3f} "
                      f"[{p['low']:.3f}, {p['high']:.3f}], p {_p_text(p['p_value'], p.get('n_bootstrap'))}, "
                      f"n = {p['n']}.", ""]
        seeds = "rho_seeds" in self.spearman.columns
        spearman = [[r.metric, r.direction, text(round(r.rho, 3)), f"[{r.rho_low:.2f}, {r.rho_high:.2f}]",
                     _p_text(r.p_permutation)]
                    + ([" / ".join(text(round(v, 2)) for v in r.rho_seeds), text(round(r.rho_seed_sd, 2))]
                       if seeds else []) for r in self.spearman.itertuples()]
        lines += ["### Spearman ρ of each signal against the realized performance", "",
                  table(["signal", "better when", "ρ", "bootstrap CI (items)", f"permutation p ({n} teachers)"]
                        + (["ρ per seed", "seed sd"] if seeds else []), spearman) if spearman
                  else "No signal varies across the teachers.", "", INTERVALS, ""]
        if n <= FEW_TEACHERS:
            lines += [f"**Warning:** ρ over {n} teachers means little: it takes few values, and a random order of "
                      f"{n} teachers gives ρ = 1 once in {math.factorial(n)}. Compare more teachers (or read the "
                      "paired test) before trusting it.", ""]
        if self.audit:
            from car_hf.ranking.audit import audit_markdown

            lines += ["### Signal audit of the pool's leaderboard", "", audit_markdown(self.audit, title=None), ""]
        lines += [f"Fitted β: {_beta(self.beta.get('fitted'))} (ρ = {text(_round(self.beta.get('rho')))})"
                  + (f"; {self.beta['note']}" if self.beta.get("note") else "") + ".", "",
                  f"Cost: {total['compute_seconds']} s of training and evaluation on {total['device']} "
                  f"({total['processes']} process(es)); this run took {total['wall_seconds']} s"
                  + (f", reusing {reused} finished step(s) from the cache." if reused else "."), ""]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return plain({"measure": self.measure, "label": self.name, "partial": self.partial,
                      "teachers": self.teachers.to_dict("records"),
                      "baseline": self.baseline, "paired": self.paired,
                      "spearman": self.spearman.to_dict("records"), "beta": self.beta, "budget": self.budget,
                      "cost": self.cost, "audit": self.audit})

    def save(self, output_dir: str | Path) -> Path:
        """Write the report files (see the module docstring) into ``output_dir``; returns it."""
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.md").write_text(self.to_markdown())
        (folder / "report.json").write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        self.teachers.to_csv(folder / "teachers.csv", index=False)
        self.spearman.to_csv(folder / "spearman.csv", index=False)
        if self.evaluations:
            pd.concat([e.items.assign(student=name) for name, e in self.evaluations.items()]).to_csv(
                folder / "items.csv", index=False)
        plot_pilot(self, folder / "pilot.png")
        write_pilot_card(self, folder, self.budget.get("student"))
        return folder


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def _beta(value: Any) -> str:
    """β with 3 significant digits (a fitted β comes off a log grid: 0.6766... is 0.677)."""
    return f"{value:.3g}" if isinstance(value, (int, float)) else text(value)


def _p_text(p: float, n_resamples: int | None = None) -> str:
    """``= 0.042``; a bootstrap p of 0 is ``< 1/n_resamples`` (no resample crossed zero), not a p of 0."""
    if p is None or not np.isfinite(p):
        return "n/a"
    if p == 0 and n_resamples:
        return f"< 1/{n_resamples}"
    return f"= {p:.3g}"


def _harness_note(report: PilotReport) -> list[str]:
    """For a harness measure: the tasks, each one's primary metric, and the rule that combines them."""
    from car_hf.evaluation.harness import RULE, TASK_PREFIX, is_harness

    if not is_harness(report.measure) or not report.evaluations:
        return []
    summary = next(iter(report.evaluations.values())).summary
    tasks = [f"`{k[len(TASK_PREFIX):]}` ({v.get('metric')}, filter {v.get('filter')}, {v.get('n')} items)"
             for k, v in summary.items() if k.startswith(TASK_PREFIX)]
    return [f"Realized `{report.measure}` by lm-evaluation-harness over {', '.join(tasks)}"
            + (f"; `harness` is the {RULE}." if report.measure == "harness" else "."), ""]


def _empty_note(report: PilotReport) -> str:
    """What the report assumes of empty answers, and how many there were."""
    counts = {name: int(e.items["empty_answer"].sum()) for name, e in report.evaluations.items()
              if "empty_answer" in e.items.columns}
    shown = ", ".join(f"{name}: {count}" for name, count in counts.items() if count)
    return ("An empty answer is wrong: it scores 0 (never left out). Empty answers: "
            + (shown if shown else "none") + ".")


def measure_label(measure: str, evaluation: EvaluationConfig, evaluations: Iterable[StudentEvaluation],
                  given: str | None = None) -> str:
    """The realized measure's name in the report: ``given``, else ``"accuracy"`` for a metric or a reward function
    whose every value is 0 or 1 (a grader), else ``measure``.

    >>> from car_hf.evaluation.student import StudentEvaluation
    >>> graded = StudentEvaluation("s", pd.DataFrame({"reward": [1.0, 0.0, 1.0]}), {})
    >>> measure_label("reward", EvaluationConfig(reward="car_hf.generation.tasks:AnswerReward"), [graded])
    'accuracy'
    >>> measure_label("reward", EvaluationConfig(reward="car_hf.generation.tasks:AnswerReward"), [graded], "exact match")
    'exact match'
    """
    if given:
        return given
    if measure != "reward":
        return measure
    from car_hf.scoring.reward import FUNCTION_SPEC, is_reward_function

    reward = evaluation.reward
    function = is_reward_function(reward) or (isinstance(reward, str) and FUNCTION_SPEC.fullmatch(reward))
    values = np.concatenate([e.items["reward"].to_numpy(float) for e in evaluations] or [np.array([])])
    values = values[np.isfinite(values)]
    return "accuracy" if function and len(values) and np.isin(values, (0.0, 1.0)).all() else measure


def permutation_p(signal: Sequence[float], realized: Sequence[float], seed: int = 0) -> float:
    """One-sided permutation p-value of Spearman ρ(signal, realized) over teachers: the share of orderings of the
    realized values whose ρ is at least the observed one; exact up to :data:`EXACT_PERMUTATIONS` teachers.

    >>> permutation_p([1, 2, 3, 4, 5], [10, 20, 30, 40, 50]) == 1 / 120   # only the observed order reaches ρ = 1
    True
    >>> round(permutation_p([1, 2, 3, 4], [1, 3, 2, 4]), 3)
    0.167
    """
    from itertools import permutations

    from scipy.stats import rankdata

    x, y = rankdata(np.asarray(signal, float)), rankdata(np.asarray(realized, float))
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan

    def rho(order: np.ndarray) -> np.ndarray:  # Pearson on ranks, vectorised over orderings
        a, b = x - x.mean(), order - order.mean(axis=-1, keepdims=True)
        return (b @ a) / np.sqrt((a @ a) * (b * b).sum(axis=-1))

    observed = rho(y[None, :])[0]
    if len(y) <= EXACT_PERMUTATIONS:
        orders = np.array(list(permutations(y)))
    else:
        rng = np.random.default_rng(seed)
        orders = np.array([rng.permutation(y) for _ in range(20000)])
    return float((rho(orders) >= observed - 1e-12).mean())


def plot_pilot(report: PilotReport, path: str | Path | None = None) -> Any:
    """Predicted CAR (x, with its interval when the pool had one) vs. realized performance (y, with its interval),
    one labelled point per teacher; the untuned student is the dashed line.

    >>> teachers = pd.DataFrame({"teacher": ["a", "b"], "car": [0.5, 0.2], "realized": [0.6, 0.1],
    ...                          "realized_low": [0.5, 0.0], "realized_high": [0.7, 0.2]})
    >>> report = PilotReport("accuracy", teachers, {"mean": 0.05}, {}, pd.DataFrame(), {"used": 1.0}, {}, {})
    >>> plot_pilot(report).axes[0].get_ylabel()
    'realized accuracy (tuned student)'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from car_hf.plots.labels import place_labels
    from car_hf.plots.plot import DPI, OTHER_COLOR

    t = report.teachers
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x, y = t["car"].to_numpy(float), t["realized"].to_numpy(float)
    yerr = np.vstack([y - t["realized_low"].to_numpy(float), t["realized_high"].to_numpy(float) - y])
    xerr = (np.vstack([x - t["car_low"].to_numpy(float), t["car_high"].to_numpy(float) - x])
            if "car_low" in t.columns else None)
    ax.errorbar(x, y, xerr=xerr, yerr=np.nan_to_num(yerr), fmt="o", color=OTHER_COLOR, capsize=3)
    ax.axhline(report.baseline["mean"], color="#7f7f7f", linestyle="--", linewidth=1, label="untuned student")
    ax.set_xlabel(f"predicted: CAR (β = {report.beta['used']})")
    ax.set_ylabel(f"realized {report.name} (tuned student)")
    rho = report.rho() if "metric" in report.spearman.columns and (report.spearman["metric"] == "CAR").any() else None
    ax.set_title(f"pilot: Spearman ρ(CAR, realized) = {rho:.2f}" if rho is not None else "pilot")
    ax.legend(loc="lower right", fontsize=8)
    fig.canvas.draw()  # label placement works in final pixel positions
    place_labels(ax, x, y, t["teacher"].astype(str).tolist(), xerr=xerr, yerr=np.nan_to_num(yerr))
    if path is not None:
        fig.savefig(path, dpi=DPI)
    return fig


def _spearman_intervals(sub: pd.DataFrame, spearman: pd.DataFrame, per_item: np.ndarray, n_bootstrap: int,
                        confidence: float, seed: int) -> pd.DataFrame:
    """Percentile intervals of each signal's ρ over resamples of held-out items (paired across students)."""
    from scipy.stats import spearmanr

    if not len(spearman) or not n_bootstrap:
        return spearman.assign(rho_low=math.nan, rho_high=math.nan)
    picks = np.random.default_rng(seed).integers(0, per_item.shape[1], (n_bootstrap, per_item.shape[1]))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # a resample where every student scores the same has no ρ (NaN)
        realized = np.stack([np.nanmean(per_item[:, p], axis=1) for p in picks])  # [B, T]
        tail = 100 * (1 - confidence) / 2
        low, high = [], []
        for row in spearman.itertuples():
            signal = (1 if row.direction == "higher" else -1) * sub[row.column].to_numpy(float)
            rhos = np.array([spearmanr(signal, r).statistic for r in realized], dtype=float)
            bounds = np.nanpercentile(rhos, [tail, 100 - tail]) if np.isfinite(rhos).any() else (math.nan,) * 2
            low.append(float(bounds[0]))
            high.append(float(bounds[1]))
    return spearman.assign(rho_low=low, rho_high=high)


def build_report(table_: pd.DataFrame, chosen: Sequence[tuple[str, str]], results: Mapping[str, StudentEvaluation],
                 *, measure: str, baseline: str, budget: dict[str, Any], cost: dict[str, Any],
                 evaluation: EvaluationConfig, by: str = "generator",
                 by_seed: Mapping[str, Mapping[int, float]] | None = None, label: str | None = None,
                 partial: str | None = None) -> PilotReport:
    """The report of a pilot from the pool's leaderboard, the chosen teachers and every student's evaluation
    (``by_seed``: each teacher's realized mean per training seed, shown next to the mean over seeds; ``label``:
    the measure's name; ``partial``: why the report is not final, for one written while the pilot runs)."""
    from car_hf.ranking.leaderboard import BASELINES, fit_beta, spearman_table

    names = [t for t, _ in chosen]
    sub = table_[table_[by].isin(names)].reset_index(drop=True)
    sub.attrs = table_.attrs
    realized = {t: results[t].summary[measure] for t in names}
    base = results[baseline].summary[measure]
    from car_hf.ranking.audit import AUDIT_COLUMNS

    columns = [c for c in (*SIGNALS, "car_low", "car_high", *AUDIT_COLUMNS) if c in sub.columns]
    teachers = sub[[by, *columns]].rename(columns={by: "teacher"}).assign(
        chosen_because=[dict(chosen)[t] for t in sub[by]],
        realized=[realized[t]["mean"] for t in sub[by]], realized_low=[realized[t]["low"] for t in sub[by]],
        realized_high=[realized[t]["high"] for t in sub[by]], n_items=[realized[t]["n"] for t in sub[by]],
        n_empty=[realized[t].get("n_empty", 0) for t in sub[by]],
        train_seconds=[cost[t].get("train_seconds") for t in sub[by]],
        eval_seconds=[cost[t]["eval_seconds"] for t in sub[by]])
    teachers["gain_over_untuned"] = teachers["realized"] - base["mean"]
    several = by_seed is not None and len(next(iter(by_seed.values()))) > 1
    if several:
        teachers["realized_seeds"] = [list(by_seed[t].values()) for t in teachers["teacher"]]
    teachers = teachers.sort_values("realized", ascending=False, kind="stable").reset_index(drop=True)
    teachers.insert(1, "realized_rank", teachers["realized"].rank(ascending=False, method="min").astype(int))

    boot = {"n_bootstrap": evaluation.n_bootstrap, "confidence": evaluation.confidence, "seed": evaluation.seed}
    paired: dict[str, Any] = {}
    if len(teachers) >= 2:  # a partial report may hold one teacher
        first, second = teachers["teacher"].iloc[:2]
        paired = {"first": first, "second": second, "measure": measure, "n_bootstrap": evaluation.n_bootstrap,
                  **paired_comparison(results[first].scores(measure), results[second].scores(measure), **boot)}

    measured = {t: realized[t]["mean"] for t in names}
    signals = {**BASELINES, "base_loss": ("Loss", -1)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # equal realized values: scipy warns and returns NaN, reported as such
        spearman = spearman_table(sub, measured, signals)
    per_item = np.stack([results[t].scores(measure) for t in sub[by]])
    spearman = _spearman_intervals(sub, spearman, per_item, **boot)
    spearman["p_permutation"] = [
        permutation_p(sub[r.column].to_numpy(float) * (1 if r.direction == "higher" else -1),
                      [measured[t] for t in sub[by]], evaluation.seed) for r in spearman.itertuples()]
    if several and len(spearman):  # the same table per seed, to show how much ρ moves with the training seed
        seeds = list(next(iter(by_seed.values())))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            per_seed = [spearman_table(sub, {t: by_seed[t][s] for t in names}, signals).set_index("metric")["rho"]
                        for s in seeds]
        spearman["rho_seeds"] = [[float(r.get(m, math.nan)) for r in per_seed] for m in spearman["metric"]]
        spearman["rho_seed_sd"] = [float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else math.nan
                                   for v in spearman["rho_seeds"]]
    beta = {"used": table_.attrs.get("car", {}).get("beta")}
    if len(set(measured.values())) > 1:
        fit = fit_beta(sub, measured)
        beta |= {"fitted": fit.beta, "rho": fit.rho}
    else:
        beta |= {"fitted": None, "rho": None, "note": "every student realized the same value: there is no ranking "
                                                      "to fit β to"}
    return PilotReport(measure, teachers, base, paired, spearman, beta, budget, cost, dict(results), label, partial,
                       audit=table_.attrs.get("car", {}).get("audit") or {})

"""The pilot's report: realized performance per teacher, the paired test, Spearman ρ with intervals, the β fit.

:func:`build_report` turns the pilot's evaluations into a :class:`PilotReport`:

* ``teachers``: one row per teacher, best realized first: why it was chosen, its predicted signals (``car`` at
  the chosen β, ``reward``, ``base_loss``, ``ppl``, ``ifd``, ``response_tokens`` as the pool's leaderboard has
  them), the realized ``measure`` with its bootstrap interval over held-out items, the gain over the untuned
  student, and the wall time of training and evaluation;
* ``paired``: a paired bootstrap over held-out items of the per-item difference between the top two students;
* ``spearman``: :func:`car_hf.ranking.spearman_table` of every signal (:data:`car_hf.ranking.BASELINES` and
  the loss, lower better) against the realized performance, with ``rho_low``/``rho_high``: percentiles of ρ over bootstrap
  resamples of the held-out items (the same resample for every student; for ``lc_win_rate`` the resampled
  per-item values are the judge's verdicts, i.e. the raw win rate);
* ``beta``: the β used and :func:`car_hf.ranking.fit_beta`'s β and ρ;
* ``budget`` and ``cost`` (wall seconds per student, in all, processes, device).

:meth:`PilotReport.save` writes ``report.md``, ``report.json``, ``teachers.csv``, ``spearman.csv``,
``items.csv`` (every student's per-item results), ``pilot.png`` (predicted CAR vs. realized, one labelled point
per teacher, the untuned student as a dashed line) and ``README.md`` (the card, :mod:`car_hf.cards.pilot`), so the
folder can be pushed as is.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .cards.common import plain, table, text
from .cards.pilot import write_pilot_card
from .evaluation import EvaluationConfig, StudentEvaluation, paired_comparison

SIGNALS = ("car", "reward", "base_loss", "ppl", "ifd", "response_tokens")


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

    def rho(self, metric: str = "CAR") -> float:
        """The Spearman ρ of one signal (its Table-4 name) against the realized performance."""
        return float(self.spearman.set_index("metric").loc[metric, "rho"])

    def to_markdown(self) -> str:
        """The report as markdown (also the pilot section of a card)."""
        m, b, total = self.measure, self.baseline, self.cost["total"]
        reused = sum(int(c.get(k) or 0) for c in self.cost.values() for k in ("training_reused", "evaluation_reused"))
        seeds = "realized_seeds" in self.teachers.columns
        rows = [[f"`{r.teacher}`", r.chosen_because, text(round(r.car, 4)), text(round(r.reward, 4)),
                 f"{r.realized:.3f} [{r.realized_low:.3f}, {r.realized_high:.3f}]"]
                + ([" / ".join(f"{v:.3f}" for v in r.realized_seeds)] if seeds else [])
                + [f"{r.gain_over_untuned:+.3f}"] for r in self.teachers.itertuples()]
        lines = [f"## Pilot: predicted vs. realized ({m})", "",
                 f"Budget: {self.budget['n_instructions']} training instructions per teacher, "
                 f"{self.budget['n_heldout']} held-out items, " + ", ".join(
                     f"{k}={v}" for k, v in self.budget.items() if k not in ("n_instructions", "n_heldout", "student"))
                 + ".",
                 "", table(["teacher", "chosen as", f"CAR (β={self.beta['used']})", "reward", f"realized {m} [CI]"]
                           + (["per seed"] if seeds else []) + ["vs. untuned"], rows), "",
                 f"Untuned student: {b['mean']:.3f} [{b['low']:.3f}, {b['high']:.3f}] (n={b['n']}).", ""]
        if self.paired:
            p = self.paired
            lines += [f"Top two ({p['first']} vs. {p['second']}, {p['test']}): difference {p['difference']:+.3f} "
                      f"[{p['low']:.3f}, {p['high']:.3f}], p = {p['p_value']:.3g}, n = {p['n']}.", ""]
        seeds = "rho_seeds" in self.spearman.columns
        spearman = [[r.metric, r.direction, text(round(r.rho, 3)), f"[{r.rho_low:.2f}, {r.rho_high:.2f}]"]
                    + ([" / ".join(text(round(v, 2)) for v in r.rho_seeds)] if seeds else [])
                    + [text(round(r.p_value, 3))] for r in self.spearman.itertuples()]
        lines += ["### Spearman ρ of each signal against the realized performance", "",
                  table(["signal", "better when", "ρ", "bootstrap CI"] + (["ρ per seed"] if seeds else []) + ["p"],
                        spearman) if spearman
                  else "No signal varies across the teachers.", "",
                  f"Fitted β: {text(self.beta.get('fitted'))} (ρ = {text(_round(self.beta.get('rho')))})"
                  + (f"; {self.beta['note']}" if self.beta.get("note") else "") + ".", "",
                  f"Cost: {total['compute_seconds']} s of training and evaluation on {total['device']} "
                  f"({total['processes']} process(es)); this run took {total['wall_seconds']} s"
                  + (f", reusing {reused} finished step(s) from the cache." if reused else "."), ""]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return plain({"measure": self.measure, "teachers": self.teachers.to_dict("records"),
                      "baseline": self.baseline, "paired": self.paired,
                      "spearman": self.spearman.to_dict("records"), "beta": self.beta, "budget": self.budget,
                      "cost": self.cost})

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

    from .labels import place_labels
    from .plot import DPI, OTHER_COLOR

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
    ax.set_ylabel(f"realized {report.measure} (tuned student)")
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
                 by_seed: Mapping[str, Mapping[int, float]] | None = None) -> PilotReport:
    """The report of a pilot from the pool's leaderboard, the chosen teachers and every student's evaluation
    (``by_seed``: each teacher's realized mean per training seed, shown next to the mean over seeds)."""
    from .ranking import BASELINES, fit_beta, spearman_table

    names = [t for t, _ in chosen]
    sub = table_[table_[by].isin(names)].reset_index(drop=True)
    sub.attrs = table_.attrs
    realized = {t: results[t].summary[measure] for t in names}
    base = results[baseline].summary[measure]
    columns = [c for c in (*SIGNALS, "car_low", "car_high") if c in sub.columns]
    teachers = sub[[by, *columns]].rename(columns={by: "teacher"}).assign(
        chosen_because=[dict(chosen)[t] for t in sub[by]],
        realized=[realized[t]["mean"] for t in sub[by]], realized_low=[realized[t]["low"] for t in sub[by]],
        realized_high=[realized[t]["high"] for t in sub[by]], n_items=[realized[t]["n"] for t in sub[by]],
        train_seconds=[cost[t].get("train_seconds") for t in sub[by]],
        eval_seconds=[cost[t]["eval_seconds"] for t in sub[by]])
    teachers["gain_over_untuned"] = teachers["realized"] - base["mean"]
    several = by_seed is not None and len(next(iter(by_seed.values()))) > 1
    if several:
        teachers["realized_seeds"] = [list(by_seed[t].values()) for t in teachers["teacher"]]
    teachers = teachers.sort_values("realized", ascending=False, kind="stable").reset_index(drop=True)
    teachers.insert(1, "realized_rank", teachers["realized"].rank(ascending=False, method="min").astype(int))

    boot = {"n_bootstrap": evaluation.n_bootstrap, "confidence": evaluation.confidence, "seed": evaluation.seed}
    first, second = teachers["teacher"].iloc[:2]
    paired = {"first": first, "second": second, "measure": measure,
              **paired_comparison(results[first].scores(measure), results[second].scores(measure), **boot)}

    measured = {t: realized[t]["mean"] for t in names}
    signals = {**BASELINES, "base_loss": ("Loss", -1)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # equal realized values: scipy warns and returns NaN, reported as such
        spearman = spearman_table(sub, measured, signals)
    per_item = np.stack([results[t].scores(measure) for t in sub[by]])
    spearman = _spearman_intervals(sub, spearman, per_item, **boot)
    if several:  # the same table per seed, to show how much ρ moves with the training seed
        seeds = list(next(iter(by_seed.values())))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            per_seed = [spearman_table(sub, {t: by_seed[t][s] for t in names}, signals).set_index("metric")["rho"]
                        for s in seeds]
        spearman["rho_seeds"] = [[float(r.get(m, math.nan)) for r in per_seed] for m in spearman["metric"]]
    beta = {"used": table_.attrs.get("car", {}).get("beta")}
    if len(set(measured.values())) > 1:
        fit = fit_beta(sub, measured)
        beta |= {"fitted": fit.beta, "rho": fit.rho}
    else:
        beta |= {"fitted": None, "rho": None, "note": "every student realized the same value: there is no ranking "
                                                      "to fit β to"}
    return PilotReport(measure, teachers, base, paired, spearman, beta, budget, cost, dict(results))

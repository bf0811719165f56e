"""The iso-CAR picture: where each generator sits between quality and compatibility.

CAR = r / (1 + beta * L) is constant along the curves r = c * (1 + beta * L) in the plane of mean
base-model loss L (x) and mean reward r (y).  Drawing the generators as points in that plane with a
few of those curves shows at a glance *why* a generator ranks where it does: a generator can win on
reward alone and still lose because its responses are far from what the base model would write.

Figures are built on matplotlib's Agg canvas directly (no pyplot, no display, no global backend
switch), so plotting works on headless machines and never leaks figures into pyplot's registry.
Point and curve labels are placed by :mod:`car_hf.plots.labels` so that none overlaps another or a point; the
optional per-example CAR panel is drawn by :mod:`car_hf.plots.examples`.

Example:
    >>> from car_hf.ranking.leaderboard import rank_generators
    >>> from car_hf.plots.plot import plot_ranking
    >>> scored = {"generator": ["a", "a", "b", "b", "c", "c"],
    ...           "reward": [0.3, 0.3, 0.4, 0.4, 0.2, 0.2],
    ...           "base_loss": [1.6, 1.6, 2.9, 2.9, 2.0, 2.0]}
    >>> table = rank_generators(scored, beta=0.5, n_bootstrap=0,
    ...                         config={"base_model": "google/gemma-3-270m"})
    >>> fig = plot_ranking(table)  # plot_ranking(table, scored, path="car.png") adds a panel, saves
    >>> len(fig.axes), fig.axes[0].get_xlabel().splitlines()[0]
    (1, 'mean response loss L under the base model [nats/token]')
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator

from car_hf.plots.labels import CAP_SIZE, FONT_SIZE, MARKER_SIZE, Curve, extents, label_curves, place_labels, point_boxes
from car_hf.plots.examples import draw_distributions, per_example_car

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["iso_car_levels", "plot_beta_curve", "plot_ranking"]

DPI = 150
BEST_COLOR = "#c8102e"
OTHER_COLOR = "#2a5d8f"
ISO_COLOR = "#7f7f7f"
BEST_MARKER_SIZE = 9.6  # the best generator's star (points; the others: labels.MARKER_SIZE)


# --------------------------------------------------------------------------------------- public API


def plot_ranking(
    table: pd.DataFrame,
    examples: pd.DataFrame | Dataset | None = None,
    *,
    beta: float | None = None,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Draw generators in (mean base loss, mean reward) space with iso-CAR curves.

    Args:
        table: ``rank_generators`` output: one row per generator, best first, with columns
            ``<group>, n, n_scored, reward, base_loss, car, rank`` and optionally
            ``reward_low/high``, ``base_loss_low/high`` (drawn as error bars). The group column is
            ``table.attrs["car"]["by"]`` if set, else the first column. ``table.attrs["car"]``
            holds ``beta``, ``reward_transform``, ``base_model`` and ``reward_model`` or
            ``reward_column``.
        examples: optional per-example scores (pandas DataFrame or ``datasets.Dataset``) with the
            group column and either the table's reward and loss columns (per-example CAR is then
            computed with the table's reward transform) or a ``car`` column. Adds a right panel with
            each generator's distribution of per-example CAR; NaN rows are left out and counted in
            the labels ("n" counts the rows drawn).
        beta: draw for this beta instead of the table's: points are re-ranked by
            reward / (1 + beta * base_loss) and per-example CAR is recomputed.
        path: if given, the PNG is written there (dpi 150).
        title: replaces the default title (base model, beta, reward source).

    Returns:
        The figure: one axes, or two when ``examples`` is given.

    Example:
        >>> import pandas as pd
        >>> table = pd.DataFrame({"generator": ["a", "b"], "n": [3, 3], "n_scored": [3, 3],
        ...                       "reward": [0.5, 0.6], "base_loss": [1.0, 2.0],
        ...                       "car": [0.25, 0.2], "rank": [1, 2]})
        >>> table.attrs["car"] = {"beta": 1.0, "reward_column": "score", "base_model": "m"}
        >>> ex = pd.DataFrame({"generator": ["a"] * 3 + ["b"] * 3,
        ...                    "car": [0.2, 0.3, None, 0.1, 0.2, 0.3]})
        >>> fig = plot_ranking(table, ex)
        >>> [t.get_text() for t in fig.axes[1].get_yticklabels()]
        ['#1 a (n=2, 1 NaN)', '#2 b (n=3)']
    """
    if len(table) == 0:
        raise ValueError("plot_ranking: the table has no rows")
    meta: Mapping[str, Any] = table.attrs.get("car", {})
    by = meta.get("by", table.columns[0])
    missing = {by, "reward", "base_loss"} - set(table.columns)
    if missing:
        raise ValueError(f"plot_ranking: table lacks column(s) {sorted(missing)}")
    table_beta = meta.get("beta")
    if beta is None and table_beta is None:
        raise ValueError("plot_ranking: no beta given and table.attrs['car'] has none")
    beta = float(table_beta if beta is None else beta)
    rebeta = table_beta is None or not math.isclose(beta, float(table_beta))

    rows = table.reset_index(drop=True).copy()
    rows["_name"] = _short_names([str(g) for g in rows[by]])
    ratio = rows["reward"] / (1 + beta * rows["base_loss"])
    if rebeta or "rank" not in rows:
        # Why: a different beta changes the order; the table's rank column belongs to its own beta.
        rows["_rank"] = ratio.rank(ascending=False, method="min")
    else:
        rows["_rank"] = rows["rank"]
        if "car" in rows and not np.allclose(rows["car"], ratio, rtol=1e-6, equal_nan=True):
            warnings.warn(
                "table 'car' differs from reward / (1 + beta * base_loss): the iso-CAR curves "
                "follow that formula, so points may sit off the curve their CAR suggests",
                stacklevel=2,
            )
    rows["_label"] = [f"#{float(r):g} {n}" if pd.notna(r) else f"#– {n}"
                      for r, n in zip(rows["_rank"], rows["_name"])]
    finite = np.isfinite(rows["reward"]) & np.isfinite(rows["base_loss"])
    shown = rows[finite].sort_values("_rank", kind="stable")
    if shown.empty:
        raise ValueError("plot_ranking: no generator has a finite reward and base_loss")

    per_example = None if examples is None else per_example_car(examples, meta, by, beta, rebeta)
    fig = Figure(figsize=(14.0 if per_example is not None else 8.5, max(5.5, 0.3 * len(rows) + 3.2)),
                 dpi=DPI)
    FigureCanvasAgg(fig)
    if per_example is None:
        ax = fig.subplots()
    else:
        ax, ax_dist = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.45, 1.0]})
        draw_distributions(ax_dist, rows, per_example, by, beta, (BEST_COLOR, OTHER_COLOR))

    source = _reward_source(meta)
    transform = meta.get("reward_transform")
    transform_note = "" if _is_identity(transform) else f", {transform}-transformed"
    base_model = meta.get("base_model") or "unknown"
    fig.suptitle(title or f"CAR ranking · base model {base_model} · β = {beta:g} · "
                          f"reward: {source}{transform_note}", fontsize=11, y=0.985)
    ax.set_xlabel(f"mean response loss L under the base model [nats/token]\n"
                  f"(base model: {base_model})", fontsize=9)
    ax.set_ylabel(f"mean reward r [{source} score{transform_note}]", fontsize=9)
    xerr, yerr = _ci(shown, "base_loss"), _ci(shown, "reward")
    ci_note = ""
    if xerr is not None or yerr is not None:
        level = meta.get("confidence")
        ci_note = f"; bars: {level:.0%} bootstrap CI" if level else "; bars: bootstrap CI"
    ax.set_title(f"Quality vs. compatibility — dashed: iso-CAR r = c·(1 + {beta:g}·L){ci_note}",
                 fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, color="#e6e6e6", linewidth=0.6, zorder=0)
    dropped = rows.loc[~finite, "_name"].tolist()
    if dropped:
        fig.text(0.01, 0.01, "not plotted (no finite reward or loss): " + ", ".join(dropped),
                 fontsize=8, color="#555555")

    best = shown.index[0]
    colors = [BEST_COLOR if i == best else OTHER_COLOR for i in shown.index]
    x, y = shown["base_loss"].to_numpy(float), shown["reward"].to_numpy(float)
    for k in range(len(shown) if xerr is not None or yerr is not None else 0):
        ax.errorbar(x[k], y[k], xerr=None if xerr is None else xerr[:, k : k + 1],
                    yerr=None if yerr is None else yerr[:, k : k + 1], fmt="none",
                    ecolor=colors[k], alpha=0.45, elinewidth=1.0, capsize=CAP_SIZE, zorder=2)
    ax.scatter(x[1:], y[1:], s=MARKER_SIZE**2, color=OTHER_COLOR, zorder=3, edgecolor="white",
               linewidth=0.6)
    ax.scatter(x[:1], y[:1], s=BEST_MARKER_SIZE**2, marker="*", color=BEST_COLOR, zorder=4,
               edgecolor="white", linewidth=0.6)

    labels = shown["_label"].tolist()
    styles = [{"color": c, "fontweight": "bold" if i == best else "normal"}
              for c, i in zip(colors, shown.index)]
    # Why: the label placer works in pixels, so limits and layout must be final before it runs;
    # the second layout pass accounts for tick labels that changed with the new limits.
    rect = (0, 0.03 if dropped else 0, 1, 0.975)
    fig.tight_layout(rect=rect)
    _set_limits(ax, x, y, xerr, yerr, max(labels, key=len))
    fig.tight_layout(rect=rect)
    curves = _draw_iso_car(ax, beta, y / (1 + beta * x), f"#{float(shown['_rank'].iloc[0]):g}")
    sizes = [BEST_MARKER_SIZE] + [MARKER_SIZE] * (len(x) - 1)
    texts = place_labels(ax, x, y, labels, xerr=xerr, yerr=yerr, marker_size=sizes, styles=styles,
                         soft_avoid=np.vstack([c.boxes for c in curves]))
    _, points = point_boxes(ax, x, y, xerr, yerr, sizes)
    label_curves(ax, curves, np.vstack([extents([t.get_window_extent() for t in texts]), points]))
    if path is not None:
        _save(fig, path)
    return fig


def plot_beta_curve(
    betas: Sequence[float],
    rhos: Sequence[float],
    best_beta: float | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Plot Spearman rho against beta, e.g. ``fit_beta``'s ``curve`` and ``beta``.

    The x axis is logarithmic for beta > 0 and linear near 0 (symlog), so beta = 0, the
    reward-only ranking, stays on the axis; its rho is drawn as a dotted reference line.

    Args:
        betas: the beta values tried (>= 0, any order).
        rhos: Spearman rho of the CAR ranking against the measured performance, per beta.
        best_beta: the beta to mark; defaults to the one with the highest rho (smallest on ties).
        path: if given, the PNG is written there (dpi 150).

    Example:
        >>> fig = plot_beta_curve([0, 0.1, 0.3, 1, 3], [0.55, 0.6, 0.7, 0.8, 0.72])
        >>> fig.axes[0].get_xscale(), fig.axes[0].get_legend().get_texts()[1].get_text()
        ('symlog', 'chosen β = 1: ρ = 0.800')
    """
    b, r = np.asarray(betas, dtype=float), np.asarray(rhos, dtype=float)
    if b.shape != r.shape or b.ndim != 1 or b.size == 0:
        raise ValueError("plot_beta_curve: betas and rhos must be 1-D and of equal, non-zero length")
    if not np.all(np.isfinite(b)) or np.any(b < 0):
        raise ValueError("plot_beta_curve: betas must be finite and >= 0")
    order = np.argsort(b, kind="stable")
    b, r = b[order], r[order]
    if best_beta is None:
        if not np.any(np.isfinite(r)):
            raise ValueError("plot_beta_curve: no finite rho to choose a best beta from")
        best_beta = float(b[np.nanargmax(r)])
    hits = np.flatnonzero(np.isclose(b, best_beta))
    best_rho = r[hits[0]] if hits.size else float(np.interp(best_beta, b, r))

    fig = Figure(figsize=(6.5, 4.2), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(b, r, marker="o", markersize=3.5, color=OTHER_COLOR, linewidth=1.2, zorder=3)
    positive = b[b > 0]
    if positive.size:
        ax.set_xscale("symlog", linthresh=float(positive.min()), linscale=0.5)
    if np.any(b == 0) and np.isfinite(r[0]):
        ax.axhline(r[0], color=ISO_COLOR, linestyle=":", linewidth=1,
                   label=f"β = 0 (reward only): ρ = {r[0]:.3f}")
    ax.axvline(best_beta, color=BEST_COLOR, linewidth=1, alpha=0.7,
               label=f"chosen β = {best_beta:.3g}: ρ = {best_rho:.3f}")
    ax.scatter([best_beta], [best_rho], color=BEST_COLOR, zorder=4, s=30)
    ax.set_xlabel("β (weight of base-model loss in CAR = r / (1 + β·L))", fontsize=9)
    ax.set_ylabel("Spearman ρ (CAR ranking vs. measured performance)", fontsize=9)
    ax.set_title("Choosing β", fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(True, color="#e6e6e6", linewidth=0.6, zorder=0)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    if path is not None:
        _save(fig, path)
    return fig


def iso_car_levels(
    beta: float,
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    cars: Sequence[float] = (),
) -> np.ndarray:
    """Round CAR values c whose curves r = c·(1 + beta·L) cross the box ``xlim`` × ``ylim``.

    Levels are evenly spaced, or 1-2-5 spaced when the generators' positive ``cars`` span more
    than a decade (then even spacing would leave the crowded low end without a curve).

    Example:
        >>> iso_car_levels(0.0, (1, 3), (0.0, 0.5)).tolist()
        [0.1, 0.2, 0.3, 0.4]
        >>> iso_car_levels(0.0, (1, 3), (0.0, 0.5), cars=[0.012, 0.03, 0.4]).tolist()
        [0.01, 0.02, 0.05, 0.1, 0.2]
    """
    # CAR over the box is extreme at its corners (monotone in r and L where 1 + beta*L > 0).
    corners = [r / (1 + beta * x) for x in xlim for r in ylim]
    lo, hi = min(corners), max(corners)
    cars = np.asarray(cars, dtype=float)
    if cars.size and np.all(cars > 0) and cars.max() / cars.min() > 10:
        lo = max(lo, cars.min() / 2)
        levels = LogLocator(subs=(1, 2, 5)).tick_values(lo, hi)
    else:
        levels = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
    # Why: 6 significant digits drop tick arithmetic noise such as 0.30000000000000004.
    levels = np.array([float(f"{v:.6g}") for v in levels])
    return levels[(levels > lo) & (levels < hi)]


# --------------------------------------------------------------------------------------- helpers


def _reward_source(meta: Mapping[str, Any]) -> str:
    return str(meta.get("reward_model") or meta.get("reward_column") or "reward")


def _is_identity(transform: Any) -> bool:
    # "raise" is car_hf's default: rewards used as they are (an error if one is negative).
    return transform is None or str(transform).lower() in {"raise", "none", "identity", ""}


def _short_names(names: list[str]) -> list[str]:
    """Drop Hub organisations ("meta-llama/Llama-3.1-8B" → "Llama-3.1-8B") when still unique."""
    short = [n.rsplit("/", 1)[-1] for n in names]
    return short if len(set(short)) == len(set(names)) else names


def _ci(rows: pd.DataFrame, column: str) -> np.ndarray | None:
    """Asymmetric error-bar lengths (2 × n) from ``<column>_low/high``, or None if absent."""
    low, high = f"{column}_low", f"{column}_high"
    if low not in rows or high not in rows:
        return None
    mid = rows[column].to_numpy(float)
    err = np.vstack([mid - rows[low].to_numpy(float), rows[high].to_numpy(float) - mid])
    return np.nan_to_num(np.clip(err, 0, None))


def _set_limits(ax: Axes, x: np.ndarray, y: np.ndarray, xerr: np.ndarray | None,
                yerr: np.ndarray | None, widest_label: str) -> None:
    """Fit the points and their error bars, with room on the right for the widest label."""
    x_lo, x_hi = (x, x) if xerr is None else (x - xerr[0], x + xerr[1])
    y_lo, y_hi = (y, y) if yerr is None else (y - yerr[0], y + yerr[1])
    x0, x1, y0, y1 = x_lo.min(), x_hi.max(), y_lo.min(), y_hi.max()
    x_span = (x1 - x0) or max(abs(x0), 1.0) * 0.2
    y_span = (y1 - y0) or max(abs(y0), 1.0) * 0.2
    renderer = ax.figure.canvas.get_renderer()
    probe = ax.text(0, 0, widest_label, fontsize=FONT_SIZE, fontweight="bold")
    label_frac = probe.get_window_extent(renderer).width / ax.get_window_extent(renderer).width
    probe.remove()
    margin = 0.06
    # Why: the rightmost point's label goes right of it; the span is solved so that it fits.
    total = x_span * (1 + 2 * margin) / max(1 - label_frac, 0.5)
    ax.set_xlim(x0 - margin * x_span, x0 - margin * x_span + total)
    ax.set_ylim(y0 - 0.08 * y_span, y1 + 0.1 * y_span)


def _draw_iso_car(ax: Axes, beta: float, cars: np.ndarray, best_tag: str) -> list[Curve]:
    """Draw iso-CAR curves r = c(1 + beta L): the best generator's (solid) and round levels.

    ``cars`` are the generators' CAR values, best first. Axis limits stay as they are.
    """
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    best_car = float(cars[0])
    levels = iso_car_levels(beta, xlim, ylim, cars)
    # Why: a round level right next to the best generator's curve would read as a double line.
    levels = [c for c in levels if abs(c - best_car) > 0.2 * _nearest_gap(c, levels, best_car)]
    half_width = ax.figure.dpi / 72
    L = np.linspace(*xlim, 300)
    curves = []
    specs = [(best_car, f"CAR {best_car:.3g} ({best_tag})", BEST_COLOR, "-")]
    specs += [(c, f"CAR {c:g}", ISO_COLOR, "--") for c in levels]
    for c, label, color, style in specs:
        r = c * (1 + beta * L)
        ax.plot(L, r, color=color, linestyle=style, linewidth=0.9, alpha=0.75, zorder=1)
        inside = (r >= ylim[0]) & (r <= ylim[1])
        pixels = ax.transData.transform(np.column_stack([L[inside], r[inside]]))
        curves.append(Curve(label, color, pixels, half_width))
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    return curves


def _nearest_gap(c: float, levels: Sequence[float], fallback: float) -> float:
    """Distance from level c to its nearest neighbouring level (``|fallback|`` if alone)."""
    gaps = [abs(c - o) for o in levels if o != c]
    return min(gaps) if gaps else abs(fallback) or 1.0


def _save(fig: Figure, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)

"""The iso-CAR picture: where each generator sits between quality and compatibility.

CAR = r / (1 + beta * L) is constant along the curves r = c * (1 + beta * L) in the plane of mean
base-model loss L (x) and mean reward r (y).  Drawing the generators as points in that plane with a
few of those curves shows at a glance *why* a generator ranks where it does: a generator can win on
reward alone and still lose because its responses are far from what the base model would write.

Figures are built on matplotlib's Agg canvas directly (no pyplot, no display, no global backend
switch), so plotting works on headless machines and never leaks figures into pyplot's registry.

Example:
    >>> from car_hf.ranking import rank_generators
    >>> from car_hf.plot import plot_ranking
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
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import LogLocator, MaxNLocator
from matplotlib.transforms import Bbox

from .car import example_car, transform_rewards

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["iso_car_levels", "place_labels", "plot_beta_curve", "plot_ranking"]

Boxes = Sequence[Bbox] | np.ndarray  # display-pixel boxes: Bbox objects or (n, 4) x0, y0, x1, y1

DPI = 150
FONT_SIZE = 8.5
BEST_COLOR = "#c8102e"
OTHER_COLOR = "#2a5d8f"
ISO_COLOR = "#7f7f7f"
MARKER_SIZE = 6.0  # points (diameter); the label placer keeps labels off the markers
BEST_MARKER_SIZE = 9.6  # the best generator's star
CAP_SIZE = 2.0  # points, error-bar caps
_HALO = [patheffects.withStroke(linewidth=2.5, foreground="white")]  # keeps text legible over lines


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

    per_example = None if examples is None else _per_example_car(examples, meta, by, beta, rebeta)
    fig = Figure(figsize=(14.0 if per_example is not None else 8.5, max(5.5, 0.3 * len(rows) + 3.2)),
                 dpi=DPI)
    FigureCanvasAgg(fig)
    if per_example is None:
        ax = fig.subplots()
    else:
        ax, ax_dist = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.45, 1.0]})
        _draw_distributions(ax_dist, rows, per_example, by, beta)

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
    _, points = _point_boxes(ax, x, y, xerr, yerr, sizes)
    _label_curves(ax, curves, np.vstack([_extents([t.get_window_extent() for t in texts]), points]))
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


def place_labels(
    ax: Axes,
    xs: Sequence[float],
    ys: Sequence[float],
    labels: Sequence[str],
    *,
    xerr: np.ndarray | None = None,
    yerr: np.ndarray | None = None,
    marker_size: float | Sequence[float] = MARKER_SIZE,
    styles: Sequence[Mapping[str, Any]] | None = None,
    fontsize: float = FONT_SIZE,
    avoid: Boxes = (),
    soft_avoid: Boxes = (),
) -> list[Text]:
    """Label points so that no two labels overlap each other, a marker, an error bar or ``avoid``.

    A deterministic greedy search in pixel space: labels are placed one by one, each taking among
    its free candidate spots (right or left of the point and its error bars, moved up and down in
    third-line steps, or above or below) the one with the least cost: distance from the point, a
    pixel or two of preference for right, then left, then above/below, and one line height for
    crossing ``soft_avoid`` (thin lines such as the iso-CAR curves). The search runs in a few
    orders (as given, by y and by x, both ways) and keeps the layout with the least total cost.
    A label that had to move off its point gets a thin leader line. Axis limits and the figure
    layout must be final before calling (positions are computed in pixels); labels stay inside the
    axes when there is room.

    Args:
        ax: axes whose data coordinates ``xs``, ``ys`` are in.
        xs, ys, labels: the points and their labels.
        xerr, yerr: the points' error bars as drawn, (2, n) lower and upper lengths, or None.
        marker_size: marker diameter(s) in points.
        styles: optional per-label keyword arguments for ``Axes.text`` (color, fontweight, ...).
        fontsize: label font size in points.
        avoid: boxes labels must not cover, besides labels, markers and error bars.
        soft_avoid: boxes labels keep off when a nearby spot allows it.
            Boxes are in display pixels: ``Bbox`` objects or an (n, 4) array of x0, y0, x1, y1.

    Returns:
        The label ``Text`` artists, in the order of ``labels``.

    Example:
        >>> from matplotlib.figure import Figure
        >>> from matplotlib.backends.backend_agg import FigureCanvasAgg
        >>> fig = Figure(); _ = FigureCanvasAgg(fig); ax = fig.subplots()
        >>> _ = ax.set_xlim(0, 1), ax.set_ylim(0, 1)
        >>> a, b = place_labels(ax, [0.5, 0.5], [0.5, 0.5], ["first", "second"])
        >>> bool(a.get_window_extent().overlaps(b.get_window_extent()))
        False
    """
    if not len(xs) == len(ys) == len(labels):
        raise ValueError("place_labels: xs, ys and labels must have the same length")
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    px_per_pt = ax.figure.dpi / 72
    pad = 1.5 * px_per_pt  # why: text extents move by a pixel when snapped; keep a visible gap
    points = ax.transData.transform(np.column_stack([xs, ys]).astype(float))
    footprints, parts = _point_boxes(ax, xs, ys, xerr, yerr, marker_size)
    obstacles = np.vstack([parts, _extents(avoid)])
    soft = _extents(soft_avoid)
    texts = [ax.text(0, 0, label, fontsize=fontsize, ha="left", va="bottom", zorder=6,
                     path_effects=_HALO, **(dict(styles[k]) if styles is not None else {}))
             for k, label in enumerate(labels)]
    candidates = []  # per label: spots, cost of each, whether each needs a leader line
    for k, (text, footprint) in enumerate(zip(texts, footprints)):
        size = text.get_window_extent(renderer)
        h = size.height
        spots, preference = _label_spots(*points[k], footprint, size.width, h, 2.5 * px_per_pt,
                                         frame.height)
        distance = _box_distance(spots, points)  # (spots, points)
        own = distance[:, k]
        # Why: a label nearer to another point than to its own would be read as that one's.
        misleading = np.delete(distance, k, axis=1).min(axis=1, initial=np.inf) <= own + h / 2
        px, py = points[k]
        beside = (((spots[:, 1] <= py) & (py <= spots[:, 3]))
                  | ((spots[:, 0] <= px) & (px <= spots[:, 2])))
        leader = misleading | ~beside  # diagonal or ambiguous spots get a leader line
        cost = (own + preference + h * _hits(spots, soft, pad) + 1.5 * h * misleading
                + 0.5 * h * leader)
        candidates.append((spots, cost, leader))

    def layout(order: Sequence[int]) -> tuple[float, dict[int, int]]:
        """Greedy placement in ``order``: total cost and the chosen spot per label."""
        taken, chosen, total = obstacles, {}, 0.0
        for k in order:
            spots, cost, _ = candidates[k]
            free = np.flatnonzero(_free(spots, taken, frame, pad))
            if free.size:
                chosen[k] = free[np.argmin(cost[free])]
                total += cost[chosen[k]]
            else:  # no room left at all: the spot that covers the least, at a prohibitive cost
                chosen[k] = np.argmin(_overlap_area(spots, taken).sum(axis=1))
                total += 1e9
            taken = np.vstack([taken, spots[chosen[k]]])
        return total, chosen

    # Why: greedy placement depends on the order; a few natural orders, best total cost wins.
    n = len(labels)
    orders = [range(n), *(np.argsort(key, kind="stable") for key in
                          (points[:, 1], -points[:, 1], points[:, 0], -points[:, 0]))]
    _, chosen = min((layout(order) for order in orders), key=lambda result: result[0])
    to_data = ax.transData.inverted().transform
    for k, text in enumerate(texts):
        spots, _, leader = candidates[k]
        box = spots[chosen[k]]
        text.set_position(to_data(box[:2]))
        if leader[chosen[k]]:
            # Why: a label moved away from its point must still say which point it names.
            (px, py), (x0, y0, x1, y1) = points[k], box
            end = (x0 if x0 > px else x1, min(max(py, y0 + 2), y1 - 2))
            (ax0, ay0), (ax1, ay1) = to_data((px, py)), to_data(end)
            ax.plot([ax0, ax1], [ay0, ay1], color=text.get_color(), alpha=0.5, linewidth=0.6,
                    zorder=2.5)
    return texts


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


def _point_boxes(ax: Axes, xs: Sequence[float], ys: Sequence[float], xerr: np.ndarray | None,
                 yerr: np.ndarray | None, marker_size: float | Sequence[float]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Pixel boxes of the points: each point's footprint (marker ∪ its error bars, (n, 4)) and
    the parts themselves (markers, then bars with their caps, (m, 4)) for overlap tests."""
    px_per_pt = ax.figure.dpi / 72
    centre = np.column_stack([xs, ys]).astype(float)
    half = np.broadcast_to(np.asarray(marker_size, dtype=float) * px_per_pt / 2, len(centre))[:, None]
    pixels = ax.transData.transform(centre)
    footprints = np.hstack([pixels - half, pixels + half])
    parts = [footprints]
    cap = CAP_SIZE * px_per_pt
    for axis, err in enumerate((xerr, yerr)):
        if err is None:
            continue
        low, high = centre.copy(), centre.copy()
        low[:, axis] -= err[0]
        high[:, axis] += err[1]
        bars = np.hstack([ax.transData.transform(low) - cap, ax.transData.transform(high) + cap])
        parts.append(bars)
        footprints = np.hstack([np.minimum(footprints[:, :2], bars[:, :2]),
                                np.maximum(footprints[:, 2:], bars[:, 2:])])
    return footprints, np.vstack(parts)


def _extents(boxes: Boxes) -> np.ndarray:
    """Boxes as an (n, 4) array of x0, y0, x1, y1, for vectorised overlap tests."""
    if isinstance(boxes, np.ndarray):
        return boxes.reshape(-1, 4).astype(float)
    return np.array([b.extents for b in boxes], dtype=float).reshape(-1, 4)


def _label_spots(px: float, py: float, footprint: np.ndarray, w: float, h: float, gap: float,
                 height: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate label boxes (n, 4) around a point and its error bars, and a preference cost
    (pixels) per box: right of the point reads best, then left, then above or below."""
    fx0, fy0, fx1, fy1 = footprint
    right, left = fx1 + gap, fx0 - gap - w
    spots, preference = [], []
    step = h / 3
    for dy in step * np.arange(-int(height / step) - 1, int(height / step) + 2):
        spots += [(right, py - h / 2 + dy), (left, py - h / 2 + dy)]
        preference += [0.0, 2.0]
    spots += [(px - w / 2, fy1 + gap), (px - w / 2, fy0 - gap - h)]
    preference += [4.0, 4.0]
    corners = np.array(spots)
    return np.hstack([corners, corners + (w, h)]), np.array(preference)


def _box_distance(boxes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance (n_boxes, n_points) from each point to the nearest edge of each box."""
    b, p = boxes[:, None, :], points[None, :, :]
    dx = np.clip(np.maximum(b[..., 0] - p[..., 0], p[..., 0] - b[..., 2]), 0, None)
    dy = np.clip(np.maximum(b[..., 1] - p[..., 1], p[..., 1] - b[..., 3]), 0, None)
    return np.hypot(dx, dy)


def _hits(boxes: np.ndarray, others: np.ndarray, pad: float) -> np.ndarray:
    """For each box, whether it comes within ``pad`` of any of ``others``."""
    b, o = boxes[:, None, :], others[None, :, :]
    near = ((b[..., 0] - pad <= o[..., 2]) & (o[..., 0] <= b[..., 2] + pad)
            & (b[..., 1] - pad <= o[..., 3]) & (o[..., 1] <= b[..., 3] + pad))
    return near.any(axis=1)


def _free(boxes: np.ndarray, taken: np.ndarray, frame: Bbox, pad: float) -> np.ndarray:
    """Boxes inside ``frame`` (with ``pad``) that touch none of ``taken``."""
    inside = ((boxes[:, 0] >= frame.x0 + pad) & (boxes[:, 2] <= frame.x1 - pad)
              & (boxes[:, 1] >= frame.y0 + pad) & (boxes[:, 3] <= frame.y1 - pad))
    return inside & ~_hits(boxes, taken, pad)


def _overlap_area(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    b, o = boxes[:, None, :], others[None, :, :]
    w = np.minimum(b[..., 2], o[..., 2]) - np.maximum(b[..., 0], o[..., 0])
    h = np.minimum(b[..., 3], o[..., 3]) - np.maximum(b[..., 1], o[..., 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


class _Curve:
    """One drawn iso-CAR curve: its label, colour, visible pixel points and boxes around them."""

    def __init__(self, label: str, color: str, pixels: np.ndarray, width: float):
        self.label, self.color, self.pixels = label, color, pixels
        self.boxes = np.hstack([pixels - width, pixels + width])


def _draw_iso_car(ax: Axes, beta: float, cars: np.ndarray, best_tag: str) -> list[_Curve]:
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
        curves.append(_Curve(label, color, pixels, half_width))
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    return curves


def _label_curves(ax: Axes, curves: list[_Curve], avoid: np.ndarray) -> None:
    """Label each curve with its CAR near where it leaves the plot, in a free spot beside it."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    pad = 1.5 * ax.figure.dpi / 72
    taken = avoid
    to_data = ax.transData.inverted().transform
    for curve in curves:
        if not len(curve.pixels):
            continue
        text = ax.text(0, 0, curve.label, fontsize=8, color=curve.color, ha="left", va="bottom",
                       zorder=5, path_effects=_HALO)
        size = text.get_window_extent(renderer)
        ends = curve.pixels[::-1]  # from the exit end: away from the crowded middle
        # Why: left of the curve point, on the side the curve does not run through (above it
        # when the curve rises, below when it falls), so the text never sits on its own line.
        rising = len(ends) < 2 or ends[0, 1] >= ends[-1, 1]
        x0 = ends[:, 0] - size.width - pad
        y0 = ends[:, 1] + pad if rising else ends[:, 1] - pad - size.height
        spots = np.column_stack([x0, y0, x0 + size.width, y0 + size.height])
        choice = np.flatnonzero(_free(spots, taken, frame, pad))
        if not choice.size:  # no free spot: an unlabelled dashed curve beats an overlap
            text.remove()
            continue
        box = spots[choice[0]]
        text.set_position(to_data(box[:2]))
        taken = np.vstack([taken, box])


def _nearest_gap(c: float, levels: Sequence[float], fallback: float) -> float:
    """Distance from level c to its nearest neighbouring level (``|fallback|`` if alone)."""
    gaps = [abs(c - o) for o in levels if o != c]
    return min(gaps) if gaps else abs(fallback) or 1.0


def _per_example_car(examples: pd.DataFrame | Dataset, meta: Mapping[str, Any], by: str, beta: float,
                     rebeta: bool) -> pd.DataFrame:
    """Per-example CAR by group, made the way the table's CAR was: same reward transform, same beta.

    Recomputed from the reward and loss columns the table was ranked on when present (a ``car``
    column may come from another beta or transform); else the ``car`` column is used as is.
    """
    reward_col = meta.get("reward_column", "reward")
    loss_col = meta.get("loss_column", "base_loss")
    if not isinstance(examples, pd.DataFrame):  # a datasets.Dataset: convert only what is used
        keep = [c for c in dict.fromkeys((by, reward_col, loss_col, "car")) if c in examples.column_names]
        examples = examples.select_columns(keep).to_pandas()
    if by not in examples:
        raise ValueError(f"plot_ranking: examples lack the group column {by!r}")
    if reward_col in examples and loss_col in examples:
        raw = pd.to_numeric(examples[reward_col], errors="coerce").to_numpy(float)
        rewards, record = transform_rewards(raw, meta.get("reward_transform") or "raise",
                                            column=reward_col)
        stats = {k: v for k, v in record.items() if k != "reward_transform" and k in meta}
        if any(not math.isclose(v, meta[k]) for k, v in stats.items()):
            # Why: pool transforms (minmax, shift) depend on the pool; another pool moves every value.
            warnings.warn(f"the examples' reward pool gives {stats}, the table was ranked with "
                          f"{ {k: meta[k] for k in stats} }: are they the same rows?", stacklevel=3)
        car = example_car(rewards, examples[loss_col].to_numpy(float), beta)
    elif "car" in examples and not rebeta:
        car = examples["car"].to_numpy(float)
    else:
        need = f"{reward_col!r} and {loss_col!r}" + ("" if rebeta else ", or 'car'")
        raise ValueError(f"plot_ranking: examples need {need} to show per-example CAR at beta={beta:g}")
    return pd.DataFrame({by: examples[by].astype(str), "car": car})


def _draw_distributions(ax: Axes, rows: pd.DataFrame, per_example: pd.DataFrame, by: str,
                        beta: float) -> None:
    """Horizontal box plots of per-example CAR, rank 1 on top, mean as a diamond."""
    order = rows.sort_values("_rank", kind="stable")
    groups = {k: v.to_numpy() for k, v in per_example.groupby(by)["car"]}
    positions, data, colors, tick_labels = [], [], [], []
    for slot, (_, row) in enumerate(order.iterrows()):
        values = groups.get(str(row[by]), np.array([]))
        finite = values[np.isfinite(values)]
        nan_note = f", {len(values) - len(finite)} NaN" if len(finite) < len(values) else ""
        tick_labels.append(f"{row['_label']} (n={len(finite)}{nan_note})")
        if len(finite):
            positions.append(len(order) - slot)
            data.append(finite)
            colors.append(BEST_COLOR if slot == 0 else OTHER_COLOR)
    if data:
        parts = ax.boxplot(data, positions=positions, orientation="horizontal", widths=0.6,
                           patch_artist=True, manage_ticks=False,
                           flierprops={"markersize": 2, "alpha": 0.3, "markeredgewidth": 0},
                           medianprops={"color": "black", "linewidth": 1})
        for patch, flier, color in zip(parts["boxes"], parts["fliers"], colors):
            patch.set(facecolor=color, alpha=0.35, edgecolor=color)
            flier.set(markerfacecolor=color)
        ax.scatter([d.mean() for d in data], positions, marker="D", s=22, color=colors,
                   edgecolor="white", linewidth=0.6, zorder=4)
    ax.set_yticks(range(len(order), 0, -1), tick_labels, fontsize=8)
    ax.get_yticklabels()[0].set(color=BEST_COLOR, fontweight="bold")
    ax.set_ylim(0.4, len(order) + 0.6)
    ax.set_xlabel(f"per-example CAR = rᵢ / (1 + {beta:g}·Lᵢ)  [reward units]", fontsize=9)
    ax.set_title("Per-example CAR (box: quartiles, line: median, ◆ mean)", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(True, axis="x", color="#e6e6e6", linewidth=0.6, zorder=0)


def _save(fig: Figure, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)

"""Pictures of the teachers × students matrix: a heatmap of CAR ranks and the iso-CAR plane with every student.

Both take what :func:`car_hf.ranking.matrix.rank_matrix` returns (any object with its ``cells``, ``students``,
``teachers``, ``by``, ``common`` and ``attrs``), drawn on matplotlib's Agg canvas (no pyplot, headless).

* :func:`plot_matrix_heatmap`: one cell per (teacher, student); the colour is the cell's CAR relative to the
  student's best (1 = the student's winner), the text its CAR rank under that student. The winner of each student
  is starred and framed; a cell whose rank is not decided at the matrix's confidence level (its bootstrap rank
  interval spans more than one rank, ``decided`` False) is hatched and reads ``≈#r`` with its rank interval.
* :func:`plot_matrix_iso_car`: the (mean loss under the student, mean reward) plane of :mod:`car_hf.plots.plot`,
  with one marker per student for each teacher (marker shape = student, colour = teacher, a thin line joins a
  teacher's markers). The iso-CAR curves r = c·(1 + β·L) do not depend on the student, so one set serves all;
  each student's winner is drawn larger with a red edge.

Example:
    >>> from car_hf.ranking.matrix import rank_matrix
    >>> scored = {"instruction_id": [0, 0, 1, 1], "generator": ["a", "b", "a", "b"], "reward": [.8, .9, .6, .7],
    ...           "base_loss@s1": [1.0, 3.0, 1.2, 2.6], "base_loss@s2": [2.0, 1.0, 2.2, 1.2]}
    >>> m = rank_matrix(scored, n_bootstrap=0)
    >>> fig = plot_matrix_heatmap(m)
    >>> sorted(t.get_text() for t in fig.axes[0].texts if "★" in t.get_text())
    ['★ #1\\n0.333', '★ #1\\n0.381']
    >>> len(plot_matrix_iso_car(m).axes[0].collections) >= 4   # 2 teachers × 2 students, plus the winners
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from car_hf.plots.labels import HALO, MARKER_SIZE, place_labels
from car_hf.plots.plot import BEST_COLOR, DPI, ISO_COLOR, _save, _short_names, iso_car_levels

__all__ = ["plot_matrix_heatmap", "plot_matrix_iso_car"]

STUDENT_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
UNDECIDED_HATCH = "///"


def _frame(matrix: Any, value: str) -> pd.DataFrame:
    """Teachers (rows, the matrix's order) × students (columns) of one cell column."""
    return matrix.cells.pivot(index=matrix.by, columns="student", values=value).reindex(
        index=list(matrix.teachers), columns=list(matrix.students))


def _reward_name(attrs: Any) -> str:
    """Where the rewards came from: the reward model, else a recorded ``reward_source``, else the reward column."""
    return str(attrs.get("reward_model") or attrs.get("reward_source") or attrs.get("reward_column") or "reward")


def plot_matrix_heatmap(matrix: Any, *, path: str | Path | None = None, title: str | None = None) -> Figure:
    """Heatmap of teachers (rows, best common teacher first) × students (columns): CAR rank in each cell.

    Colour: CAR / the student's best CAR. Text: ``#rank`` and the CAR; ``★`` and a red frame: the student's winner;
    hatched with ``≈#rank (low–high)``: the rank is undecided (bootstrap rank interval wider than one rank). The
    common teacher's row label ends in ``(common)``. ``path``: also write the PNG (dpi 150).
    """
    relative = _frame(matrix, "relative_car").to_numpy(float)
    rank, car = _frame(matrix, "rank"), _frame(matrix, "car").to_numpy(float)
    winner = _frame(matrix, "winner").fillna(False).to_numpy(bool)
    has_ci = "decided" in matrix.cells.columns
    decided = _frame(matrix, "decided").fillna(True).to_numpy(bool) if has_ci else np.ones_like(winner)
    low = _frame(matrix, "rank_low") if has_ci else None
    high = _frame(matrix, "rank_high") if has_ci else None
    teachers = _short_names([str(t) for t in matrix.teachers])
    n_t, n_s = relative.shape
    fig = Figure(figsize=(2.3 + 1.7 * n_s, 1.4 + 0.48 * n_t), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(relative), cmap="YlGnBu", vmin=max(0.0, float(np.nanmin(relative)) - 0.05),
                      vmax=1.0, aspect="auto")
    for i in range(n_t):
        for j in range(n_s):
            r = rank.iat[i, j]
            text = "–" if pd.isna(r) else f"#{int(r)}"
            if not decided[i, j]:
                text = f"≈{text} ({int(low.iat[i, j])}–{int(high.iat[i, j])})"
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch=UNDECIDED_HATCH,
                                       edgecolor="#666666", linewidth=0, alpha=0.6))
            if winner[i, j]:
                text = f"★ {text}"
                ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor=BEST_COLOR,
                                       linewidth=2.2))
            ax.text(j, i, f"{text}\n{car[i, j]:.3g}", ha="center", va="center", fontsize=8,
                    fontweight="bold" if winner[i, j] else "normal", color="black", path_effects=HALO)
    ax.set_xticks(range(n_s), list(matrix.students), fontsize=8)
    ax.set_yticks(range(n_t), [f"{t} (common)" if orig == matrix.common else t
                               for t, orig in zip(teachers, matrix.teachers)], fontsize=8)
    ax.xaxis.tick_top()
    ax.set_xlabel("student (base model to be tuned)", fontsize=9)
    ax.xaxis.set_label_position("top")
    level = matrix.attrs.get("confidence")
    undecided = f"hatched ≈: rank undecided at {level:.0%} (rank interval)" if has_ci and level else "no intervals"
    ax.set_title(title or f"CAR rank of each teacher per student · ★ the student's winner\n{undecided}\n"
                          f"β = {matrix.attrs.get('beta')} · reward: {_reward_name(matrix.attrs)}",
                 fontsize=8.5, pad=28)
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
    bar.set_label("CAR / the student's best CAR", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.tight_layout()
    if path is not None:
        _save(fig, path)
    return fig


def plot_matrix_iso_car(matrix: Any, *, path: str | Path | None = None, title: str | None = None) -> Figure:
    """The iso-CAR plane with one marker per student for each teacher (see the module docstring).

    x: mean response loss under the student [nats/token]; y: mean reward. ``path``: also write the PNG (dpi 150).
    """
    beta = float(matrix.attrs.get("beta", 1.0))
    loss, reward = _frame(matrix, "base_loss").to_numpy(float), _frame(matrix, "reward").to_numpy(float)
    winner = _frame(matrix, "winner").fillna(False).to_numpy(bool)
    teachers = _short_names([str(t) for t in matrix.teachers])
    colors = [f"C{k % 10}" for k in range(len(teachers))]
    fig = Figure(figsize=(9.0, 6.2), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    finite = np.isfinite(loss) & np.isfinite(reward)
    if not finite.any():
        raise ValueError("plot_matrix_iso_car: no cell has a finite reward and base_loss")
    x0, x1 = np.nanmin(loss[finite]), np.nanmax(loss[finite])
    y0, y1 = np.nanmin(reward[finite]), np.nanmax(reward[finite])
    xpad, ypad = 0.08 * ((x1 - x0) or 1.0), 0.1 * ((y1 - y0) or max(abs(y1), 1.0))
    ax.set_xlim(x0 - xpad, x1 + 3 * xpad)
    ax.set_ylim(y0 - ypad, y1 + ypad)
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    grid = np.linspace(*xlim, 200)
    kept: list[float] = []  # curves whose right-edge ends are at least 4% of the height apart (labels stay legible)
    for c in sorted(iso_car_levels(beta, xlim, ylim, (reward / (1 + beta * loss))[finite]), reverse=True):
        end = min(c * (1 + beta * xlim[1]), ylim[1])
        if any(abs(end - other) < 0.04 * (ylim[1] - ylim[0]) for other in kept):
            continue
        kept.append(end)
        ax.plot(grid, c * (1 + beta * grid), color=ISO_COLOR, linestyle="--", linewidth=0.8, alpha=0.6, zorder=1)
        y_end = c * (1 + beta * xlim[1])
        if ylim[0] < y_end < ylim[1]:  # label the curve where it leaves the axes: the right edge, else the top
            ax.text(xlim[1], y_end, f" CAR {c:g}", fontsize=7, color=ISO_COLOR, va="center", ha="left", clip_on=False)
        elif y_end >= ylim[1] and beta > 0 and xlim[0] < (ylim[1] / c - 1) / beta < xlim[1]:
            ax.text((ylim[1] / c - 1) / beta, ylim[1], f"CAR {c:g}", fontsize=7, color=ISO_COLOR, va="bottom",
                    ha="center", clip_on=False)
    for i, color in enumerate(colors):
        ok = finite[i]
        ax.plot(loss[i, ok], reward[i, ok], color=color, linewidth=0.8, alpha=0.5, zorder=2)
        for j, student in enumerate(matrix.students):
            if not ok[j]:
                continue
            marker = STUDENT_MARKERS[j % len(STUDENT_MARKERS)]
            size = (MARKER_SIZE * (1.6 if winner[i, j] else 1.0)) ** 2
            ax.scatter([loss[i, j]], [reward[i, j]], s=size, marker=marker, color=color, zorder=4 if winner[i, j] else 3,
                       edgecolor=BEST_COLOR if winner[i, j] else "white", linewidth=1.8 if winner[i, j] else 0.6)
    ax.set_xlabel("mean response loss L under the student [nats/token]", fontsize=9)
    ax.set_ylabel(f"mean reward r [{_reward_name(matrix.attrs)}]", fontsize=9)
    ax.set_title(title or f"Teachers × students · iso-CAR r = c·(1 + {beta:g}·L) (dashed) · "
                          "red edge: the student's winner", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, color="#e6e6e6", linewidth=0.6, zorder=0)
    handles = [Line2D([], [], marker=STUDENT_MARKERS[j % len(STUDENT_MARKERS)], linestyle="", color="#444444",
                      label=f"{student} (winner: {_short_names([str(w) for w in [matrix.winners[student]]])[0]})"
                      if hasattr(matrix, "winners") else student)
               for j, student in enumerate(matrix.students)]
    ax.legend(handles=handles, fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(handles), 3),
              title="student (marker)", title_fontsize=8, frameon=False)
    fig.tight_layout()
    first = [int(np.flatnonzero(finite[i])[0]) if finite[i].any() else -1 for i in range(len(teachers))]
    shown = [i for i in range(len(teachers)) if first[i] >= 0]
    place_labels(ax, [loss[i, first[i]] for i in shown], [reward[i, first[i]] for i in shown],
                 [teachers[i] for i in shown], styles=[{"color": colors[i]} for i in shown])
    if path is not None:
        _save(fig, path)
    return fig

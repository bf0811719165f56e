"""The per-example CAR panel of :func:`car_hf.plots.plot.plot_ranking`: each generator's distribution of CAR over its
examples, next to the iso-CAR picture of the means.

Per-example CAR is made the way the ranked table's CAR was: the same reward transform and the same beta.

Example:
    >>> import pandas as pd
    >>> examples = pd.DataFrame({"generator": ["a", "a", "b"], "reward": [0.5, 0.3, 0.6],
    ...                          "base_loss": [1.0, 0.5, 2.0]})
    >>> car = per_example_car(examples, {"reward_column": "reward"}, "generator", beta=1.0, rebeta=False)
    >>> car["generator"].tolist(), car["car"].round(3).tolist()
    (['a', 'a', 'b'], [0.25, 0.2, 0.2])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from car_hf.core.car import example_car, transform_rewards

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["draw_distributions", "per_example_car"]


def per_example_car(examples: pd.DataFrame | Dataset, meta: Mapping[str, Any], by: str, beta: float,
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


def draw_distributions(ax: Axes, rows: pd.DataFrame, per_example: pd.DataFrame, by: str, beta: float,
                       colors: tuple[str, str]) -> None:
    """Horizontal box plots of per-example CAR, rank 1 on top, mean as a diamond.

    ``rows`` are :func:`car_hf.plots.plot.plot_ranking`'s generators, with its ``_rank`` and ``_label`` columns;
    ``per_example`` is :func:`per_example_car`'s; ``colors`` the best generator's and the others'.
    """
    best_color, other_color = colors
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
            colors.append(best_color if slot == 0 else other_color)
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
    ax.get_yticklabels()[0].set(color=best_color, fontweight="bold")
    ax.set_ylim(0.4, len(order) + 0.6)
    ax.set_xlabel(f"per-example CAR = rᵢ / (1 + {beta:g}·Lᵢ)  [reward units]", fontsize=9)
    ax.set_title("Per-example CAR (box: quartiles, line: median, ◆ mean)", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(True, axis="x", color="#e6e6e6", linewidth=0.6, zorder=0)

"""Rankings of generators by dataset-level CAR: paired-bootstrap intervals, Spearman tables, fitting beta.

The bootstrap resamples *instructions* (every generator answers the same ones, so comparisons are
paired); :class:`Cells` holds the per (generator, instruction) sums it resamples, which the adaptive
stopping rule (:mod:`car_hf.ranking.stopping`) reuses.

Example:
    >>> table = rank_generators({"generator": ["a", "a", "b", "b"], "reward": [.8, .6, .9, .7],
    ...                          "base_loss": [1.0, 1.2, 3.0, 2.6]}, beta=1.0, n_bootstrap=0)
    >>> table[["generator", "car", "rank"]].round(3).values.tolist()
    [['a', 0.333, 1], ['b', 0.211, 2]]
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from car_hf._version import __version__
from car_hf.core.car import LOSS_DEFINITION, transform_rewards
from car_hf.core.errors import InputError
from car_hf.core.inputs import check_numbers, need_column

logger = logging.getLogger(__name__)


def _table_frame(data: Any, columns: Sequence[str], needed: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The ``columns`` of a Dataset / DataFrame / dict of lists that are present, as a DataFrame.

    ``needed`` maps each column that must be there to its role: a missing one is an InputError listing the
    columns the data has (checked before anything is read).
    """
    present = list(data.column_names) if hasattr(data, "column_names") else list(data.keys()) \
        if isinstance(data, Mapping) else list(data.columns)
    for column, role in (needed or {}).items():
        need_column(column, present, role)
    if isinstance(data, pd.DataFrame):
        return data
    if hasattr(data, "select_columns"):  # datasets.Dataset: read only what we need
        return data.select_columns([c for c in dict.fromkeys(columns) if c in present]).to_pandas()
    return pd.DataFrame(dict(data))


@dataclass
class Cells:
    """Per (generator, instruction) sums and counts: what the paired bootstrap resamples."""

    groups: list[Any]
    reward: np.ndarray  # [G, I] sums of finite rewards
    loss: np.ndarray  # [G, I] sums of finite losses
    count: np.ndarray  # [G, I] rows with both finite

    def means(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean reward and loss per generator for instruction weights [B, I] → two [B, G] arrays."""
        with np.errstate(invalid="ignore", divide="ignore"):
            n = weights @ self.count.T
            return (weights @ self.reward.T) / n, (weights @ self.loss.T) / n


def build_cells(groups: Sequence[Any], clusters: Sequence[Any], rewards: np.ndarray, losses: np.ndarray) -> Cells:
    names = list(dict.fromkeys(groups))
    cluster_ids = {c: k for k, c in enumerate(dict.fromkeys(clusters))}
    g_index = {g: k for k, g in enumerate(names)}
    shape = (len(names), len(cluster_ids))
    cells = Cells(names, np.zeros(shape), np.zeros(shape), np.zeros(shape))
    keep = np.isfinite(rewards) & np.isfinite(losses)
    gi = np.array([g_index[g] for g in groups], dtype=int)
    ci = np.array([cluster_ids[c] for c in clusters], dtype=int)
    np.add.at(cells.reward, (gi[keep], ci[keep]), rewards[keep])
    np.add.at(cells.loss, (gi[keep], ci[keep]), losses[keep])
    np.add.at(cells.count, (gi[keep], ci[keep]), 1)
    return cells


def bootstrap_weights(n_clusters: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """The instruction resamples of the paired bootstrap: [B, I] counts, row b = how often each instruction is
    drawn in resample b (with replacement, I draws). The one place car_hf draws them: :func:`bootstrap_car` and
    the teachers × students matrix (:mod:`car_hf.ranking.matrix`, the same draws for every student) use it.

    Example:
        >>> bootstrap_weights(3, 2, seed=0).sum(axis=1).tolist()
        [3.0, 3.0]
    """
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_bootstrap).astype(float)


def bootstrap_car(cells: Cells, beta: float, n_bootstrap: int, seed: int,
                  weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CAR, mean reward and mean loss per generator over ``n_bootstrap`` resamples of instructions.

    Instructions are resampled with replacement and every generator is evaluated on the same
    resample (paired), since all generators answer the same instructions. ``weights`` (from
    :func:`bootstrap_weights`) reuses given resamples instead of drawing them. Returns three [B, G] arrays.
    """
    if weights is None:
        weights = bootstrap_weights(cells.count.shape[1], n_bootstrap, seed)
    reward, loss = cells.means(weights)
    return reward / (1.0 + beta * loss), reward, loss


def rank_generators(
    data: Any,
    by: str = "generator",
    beta: float = 1.0,
    reward_transform: str = "raise",
    *,
    reward_column: str = "reward",
    loss_column: str = "base_loss",
    instruction_column: str | None = None,
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
    config: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Rank generators by dataset-level CAR, with paired-bootstrap confidence intervals.

    Args:
        data: a scored ``datasets.Dataset``, a pandas DataFrame, or a dict of columns.
        by: the column naming the generator of each row.
        beta: weight of the loss (compatibility) against the reward; 0 ranks by reward alone.
        reward_transform: see :func:`transform_rewards`; applied per example over the whole pool.
        instruction_column: pairs rows across generators for the bootstrap; defaults to
            ``instruction_id``, else ``instruction``, else ``prompt`` when present; without one every
            row is its own cluster (unpaired).
        confidence: level of the intervals; ``n_bootstrap`` resamples (0: no intervals).
        config: extra entries for ``table.attrs["car"]`` (base model, reward model, ...).

    Rows whose reward or loss is None/NaN (an empty response, a fully truncated one, a missing judge
    score) are left out of the means and counted: ``n`` rows, ``n_scored`` used. A reward, loss or
    ``base_rank`` that is text or ±inf is an :class:`~car_hf.core.errors.InputError` naming the row and the
    column (:func:`car_hf.core.inputs.check_numbers`), as is a missing column or data with no rows.

    Returns:
        One row per generator, best first: ``n, n_scored, reward, base_loss, car, rank``; with
        intervals ``car_low, car_high, reward_low, reward_high, base_loss_low, base_loss_high,
        p_best`` (share of resamples in which it has the highest CAR, ties split equally: :func:`p_best`)
        and ``rank_low, rank_high`` (tied generators share the better rank);
        and the paper's baselines the columns allow: ``ppl`` = exp(mean loss), ``ifd`` (mean),
        ``response_tokens`` (mean), and with a ``base_rank`` column ``base_rank`` (mean) and ``rsr`` = mean
        ``base_rank`` / mean loss over the rows where both are finite (the rank-surprisal ratio, arXiv
        2601.14249: lower is better). ``table.attrs["car"]`` records beta, the reward transform and ``config``.

    Example:
        >>> table = rank_generators({"generator": ["a", "a", "b", "b"], "reward": [.8, .6, .9, .7],
        ...                          "base_loss": [1.0, 1.2, 3.0, 2.6]}, beta=1.0, n_bootstrap=0)
        >>> table[["generator", "car", "rank"]].round(3).values.tolist()
        [['a', 0.333, 1], ['b', 0.211, 2]]
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    optional = ["ifd", "base_loss_tokens", "base_rank"]
    pairing = [instruction_column] if instruction_column else ["instruction_id", "instruction", "prompt"]
    needed = {by: "by: the generator of each row", reward_column: "reward_column: rewards of each row",
              loss_column: "loss_column: base-model loss of each row"}
    if instruction_column:
        needed[instruction_column] = "instruction_column: pairs rows across generators"
    frame = _table_frame(data, [by, reward_column, loss_column, *optional, *pairing], needed)
    if len(frame) == 0:
        raise InputError("the data has no rows: there is nothing to rank")
    cluster_column = next((c for c in pairing if c in frame.columns), None)
    raw = check_numbers(frame[reward_column], reward_column, names=frame.index)
    rewards, record = transform_rewards(raw, reward_transform, names=frame.index, column=reward_column)
    losses = check_numbers(frame[loss_column], loss_column, names=frame.index, kind="loss")
    groups = frame[by].tolist()
    clusters = frame[cluster_column].tolist() if cluster_column else list(range(len(frame)))
    cells = build_cells(groups, clusters, rewards, losses)

    counts = cells.count.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_reward = cells.reward.sum(axis=1) / counts
        mean_loss = cells.loss.sum(axis=1) / counts
    if np.any(mean_reward[counts > 0] < 0):  # zero is a real result (every answer wrong): CAR 0
        worst = cells.groups[int(np.nanargmin(mean_reward))]
        raise ValueError(f"generator {worst!r} has a negative mean reward: CAR needs rewards >= 0 (see transform_rewards)")
    car = mean_reward / (1.0 + beta * mean_loss)
    table = pd.DataFrame({
        by: cells.groups,
        "n": frame.groupby(by, sort=False).size().reindex(cells.groups).to_numpy(),
        "n_scored": counts.astype(int),
        "reward": mean_reward,
        "base_loss": mean_loss,
        "car": car,
    })
    excluded = int(table["n"].sum() - table["n_scored"].sum())
    if excluded:
        logger.warning("%d row(s) without a finite %s or %s are left out of the means (see n_scored)",
                       excluded, reward_column, loss_column)
    # Int64 keeps ranks integers next to the <NA> of a generator with no scored row (a numpy array would be float).
    table["rank"] = pd.Series(-car).rank(method="min").astype("Int64").array
    if n_bootstrap:
        boot_car, boot_reward, boot_loss = bootstrap_car(cells, beta, n_bootstrap, seed)
        tail = 100 * (1 - confidence) / 2
        # A generator with no scored row has all-NaN resamples: its NaN bounds are expected (n_scored 0 says why).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
            for name, values in (("car", boot_car), ("reward", boot_reward), ("base_loss", boot_loss)):
                table[f"{name}_low"] = np.nanpercentile(values, tail, axis=0)
                table[f"{name}_high"] = np.nanpercentile(values, 100 - tail, axis=0)
        from scipy.stats import rankdata

        table["p_best"] = p_best(boot_car)
        # Tied generators share the better rank, as the point ranks do (method "min").
        ranks = rankdata(-np.where(np.isnan(boot_car), -np.inf, boot_car), method="min", axis=1)
        table["rank_low"] = np.percentile(ranks, tail, axis=0, method="lower").astype(int)
        table["rank_high"] = np.percentile(ranks, 100 - tail, axis=0, method="higher").astype(int)
    table["ppl"] = np.exp(mean_loss)
    for column, name in (("ifd", "ifd"), ("base_loss_tokens", "response_tokens")):
        if column in frame.columns:
            table[name] = frame.groupby(by, sort=False)[column].mean().reindex(cells.groups).to_numpy()
    if "base_rank" in frame.columns:
        table["base_rank"], table["rsr"] = _rank_surprisal(frame, by, losses, cells.groups)
    table = table.sort_values(["rank", by], kind="stable").reset_index(drop=True)
    table.attrs["car"] = {
        "by": by, "beta": beta, **record, "reward_column": reward_column, "loss_column": loss_column,
        "loss_definition": LOSS_DEFINITION, "confidence": confidence if n_bootstrap else None,
        "n_bootstrap": n_bootstrap, "paired_by": cluster_column, "seed": seed, "car_hf_version": __version__,
        **dict(config or {}),
    }
    return table


def p_best(boot: np.ndarray) -> np.ndarray:
    """Per generator, the share of bootstrap resamples (rows of ``boot``, [B, G] CAR draws) in which it is the best.

    Generators tied for the highest CAR in a resample share it equally (two exactly tied teachers get 0.5 each,
    not 1 and 0 by their order); NaN (no scored row in that resample) is never the best, and a resample in
    which no generator has a CAR counts for none, so the shares sum to 1 whenever every resample has one.

    Example:
        >>> p_best(np.array([[1.0, 1.0, 0.0], [2.0, 1.0, np.nan]])).tolist()
        [0.75, 0.25, 0.0]
    """
    filled = np.where(np.isnan(boot), -np.inf, np.asarray(boot, dtype=float))
    top = filled.max(axis=1, keepdims=True)
    best = (filled == top) & np.isfinite(top)
    return (best / np.maximum(best.sum(axis=1, keepdims=True), 1)).sum(axis=0) / max(len(filled), 1)


def _rank_surprisal(frame: pd.DataFrame, by: str, losses: np.ndarray, groups: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per generator: mean ``base_rank`` and RSR = mean ``base_rank`` / mean loss, both over the rows where rank
    and loss are finite (a ratio of means, as the RSR paper pools tokens, not a mean of per-row ratios)."""
    rank = check_numbers(frame["base_rank"], "base_rank", names=frame.index, kind="rank")
    finite = np.isfinite(rank) & np.isfinite(losses)
    pooled = pd.DataFrame({"g": frame[by].to_numpy()[finite], "rank": rank[finite], "loss": losses[finite]})
    means = pooled.groupby("g", sort=False).mean().reindex(groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return means["rank"].to_numpy(), (means["rank"] / means["loss"]).to_numpy()


# metric column → (name in the paper's Table 4 or the metric's own paper, +1 if higher predicts better, -1 if lower)
BASELINES: dict[str, tuple[str, int]] = {
    "reward": ("Reward", 1),
    "ifd": ("IFD-Self", -1),
    "ppl": ("PPL-Self", -1),
    "response_tokens": ("Length", 1),
    "rsr": ("RSR", -1),  # rank-surprisal ratio, arXiv 2601.14249
    "car": ("CAR", 1),
}


def _measured_series(table: pd.DataFrame, measured: Any) -> tuple[pd.Series, pd.Series]:
    by = table.attrs.get("car", {}).get("by", table.columns[0])
    measured = pd.Series(measured, dtype=float) if not isinstance(measured, pd.Series) else measured.astype(float)
    missing = [g for g in table[by] if g not in measured.index]
    if missing:
        raise KeyError(f"no measured value for generator(s) {missing}; measured has {list(measured.index)}")
    return table.set_index(by), measured.reindex(table[by])


def spearman_table(
    table: pd.DataFrame, measured: Mapping[str, float] | pd.Series, metrics: Mapping[str, tuple[str, int]] | None = None
) -> pd.DataFrame:
    """Spearman ρ between each metric's ranking of the generators and their measured performance.

    ``measured`` maps generator → the tuned base model's measured score (higher is better), e.g.
    AlpacaEval 2 LC win rate. Metrics are oriented so that a positive ρ means "predicts well":
    reward, CAR and length count higher as better; PPL, IFD and RSR count lower as better (lower loss
    means more compatible). Returns the paper's Table 4 as rows (plus RSR when the table has ``rsr``):
    metric, column, direction, rho, p_value, n.

    Example:
        >>> t = rank_generators({"generator": list("abc"), "reward": [.9, .5, .7],
        ...                      "base_loss": [3.0, 1.0, 1.5], "base_rank": [9.0, 2.0, 2.0]}, n_bootstrap=0)
        >>> t.set_index("generator")["rsr"].round(3).to_dict()
        {'c': 1.333, 'b': 2.0, 'a': 3.0}
        >>> spearman_table(t, {"a": 10, "b": 12, "c": 30}).set_index("metric")["rho"].round(2).to_dict()
        {'Reward': -0.5, 'PPL-Self': 0.5, 'RSR': 1.0, 'CAR': 1.0}
    """
    from scipy.stats import spearmanr

    indexed, values = _measured_series(table, measured)
    rows = []
    for column, (name, direction) in (metrics or BASELINES).items():
        if column not in indexed.columns or indexed[column].nunique() < 2:
            continue  # a constant metric ranks nothing
        result = spearmanr(direction * indexed[column].to_numpy(dtype=float), values.to_numpy())
        rows.append({"metric": name, "column": column, "direction": "higher" if direction > 0 else "lower",
                     "rho": float(result.statistic), "p_value": float(result.pvalue), "n": len(values)})
    return pd.DataFrame(rows)


@dataclass
class BetaFit:
    """The beta that best ranks generators with known tuned performance, and the ρ(β) curve."""

    beta: float
    rho: float
    curve: pd.DataFrame


def fit_beta(table: pd.DataFrame, measured: Mapping[str, float] | pd.Series, betas: Sequence[float] | None = None) -> BetaFit:
    """Choose beta by Spearman ρ between CAR's ranking and measured tuned performance.

    The paper publishes no beta; car_hf's default of 1.0 is a convention (loss in nats and a reward
    in [0, 1] then weigh comparably). With few generators, ρ is coarse: many betas tie; the smallest
    of the best is returned (the least departure from ranking by reward). Grid: 0 and 60
    log-spaced values from 0.01 to 100.

    Example:
        >>> t = rank_generators({"generator": list("abc"), "reward": [.9, .5, .7],
        ...                      "base_loss": [3.0, 1.0, 1.5]}, n_bootstrap=0)
        >>> fit = fit_beta(t, {"a": 10, "b": 12, "c": 30})
        >>> fit.rho, round(fit.beta, 3)
        (1.0, 0.677)
    """
    from scipy.stats import spearmanr

    indexed, values = _measured_series(table, measured)
    grid = np.concatenate([[0.0], np.logspace(-2, 2, 60)]) if betas is None else np.asarray(betas, dtype=float)
    reward, loss = indexed["reward"].to_numpy(float), indexed["base_loss"].to_numpy(float)
    rhos = [float(spearmanr(reward / (1 + b * loss), values.to_numpy()).statistic) for b in grid]
    curve = pd.DataFrame({"beta": grid, "rho": rhos})
    best = int(np.nanargmax(np.round(rhos, 12)))
    return BetaFit(float(grid[best]), float(rhos[best]), curve)

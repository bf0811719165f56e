"""The CAR formula and what it needs from rewards: per-example and dataset-level CAR, reward transforms.

    CAR(D, θ) = r(D) / (1 + β · L(D, θ))

r is a generator's mean reward, L the mean ``base_loss`` of its responses under base model θ.
Rankings with confidence intervals live in :mod:`car_hf.ranking.leaderboard`; the ``Dataset.map`` scorer in
:mod:`car_hf.scoring.scorer`.

Example:
    >>> compatibility_adjusted_reward([0.5, 0.7], [1.0, 3.0], beta=0.5)
    0.3
    >>> example_car([0.5, 0.7], [1.0, 3.0], beta=0.5).round(4).tolist()
    [0.3333, 0.28]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from car_hf.core.config import LOSS_DEFINITION, POINTWISE_TRANSFORMS, REWARD_TRANSFORMS
from car_hf.core.errors import InputError

__all__ = ["LOSS_DEFINITION", "POINTWISE_TRANSFORMS", "REWARD_TRANSFORMS", "compatibility_adjusted_reward",
           "example_car", "transform_rewards"]


def _raise_negative(rewards: np.ndarray, names: Sequence[Any] | None, column: str) -> None:
    bad = np.flatnonzero(np.isfinite(rewards) & (rewards < 0))
    if bad.size:
        where = [names[i] if names is not None else int(i) for i in bad[:5]]
        raise InputError(
            f"column {column!r} has {bad.size} negative reward(s) (rows {where}{', ...' if bad.size > 5 else ''}): "
            "with a negative reward, r / (1 + beta * loss) grows with the loss, so CAR would favour "
            "incompatible responses. Set reward_transform to sigmoid (Bradley-Terry rewards to (0, 1)), "
            "minmax (rescale the pool to [0, 1]) or shift (subtract the pool minimum)."
        )


def transform_rewards(
    rewards: Sequence[float] | np.ndarray,
    how: str = "raise",
    *,
    names: Sequence[Any] | None = None,
    column: str = "reward",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Make rewards usable in the CAR ratio; returns the values and a record of what was done.

    * ``"raise"`` (default): leave them, but raise if any is negative (zero is fine: CAR 0).
    * ``"sigmoid"``: ``1 / (1 + exp(-r))``, the Bradley-Terry probability; pointwise.
    * ``"minmax"``: ``(r - min) / (max - min)`` over the pool given; affine, so rankings by mean
      reward are unchanged.
    * ``"shift"``: ``r - min``; the pool minimum becomes 0.

    NaN stays NaN and is ignored for the pool statistics.

    Example:
        >>> values, record = transform_rewards([-1.0, 1.0, 3.0], "minmax")
        >>> values.tolist(), record
        ([0.0, 0.5, 1.0], {'reward_transform': 'minmax', 'min': -1.0, 'max': 3.0})
    """
    r = np.asarray(rewards, dtype=float)
    finite = r[np.isfinite(r)]
    if how == "raise":
        _raise_negative(r, names, column)
        return r, {"reward_transform": "raise"}
    if how == "sigmoid":
        return 1.0 / (1.0 + np.exp(-r)), {"reward_transform": "sigmoid"}
    if how in ("minmax", "shift"):
        if finite.size == 0:
            raise ValueError(f"column {column!r} has no finite reward to compute a {how!r} transform from")
        lo, hi = float(finite.min()), float(finite.max())
        if how == "shift":
            return r - lo, {"reward_transform": "shift", "offset": -lo}
        span = hi - lo
        return ((r - lo) / span if span > 0 else np.ones_like(r)), {"reward_transform": "minmax", "min": lo, "max": hi}
    raise ValueError(f"reward_transform must be one of {REWARD_TRANSFORMS}, got {how!r}")


def example_car(rewards: Any, losses: Any, beta: float) -> np.ndarray:
    """Per-example CAR ``r / (1 + beta * loss)``; NaN where either input is NaN."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    return np.asarray(rewards, dtype=float) / (1.0 + beta * np.asarray(losses, dtype=float))


def compatibility_adjusted_reward(rewards: Sequence[float], losses: Sequence[float], beta: float = 1.0) -> float:
    """Dataset-level CAR: ``mean(reward) / (1 + beta * mean(loss))`` over rows where both are finite.

    Example:
        >>> compatibility_adjusted_reward([1.0, 3.0], [2.0, 2.0], beta=1.0)
        0.6666666666666666
    """
    r, loss = np.asarray(rewards, dtype=float), np.asarray(losses, dtype=float)
    if r.shape != loss.shape:
        raise ValueError(f"rewards and losses differ in length: {r.shape[0]} vs {loss.shape[0]}")
    keep = np.isfinite(r) & np.isfinite(loss)
    if not keep.any():
        raise ValueError("no row has both a finite reward and a finite loss")
    mean_r = float(r[keep].mean())
    if mean_r < 0:
        raise ValueError(f"the mean reward is {mean_r:.4g} < 0: CAR needs rewards >= 0 (see transform_rewards)")
    return float(mean_r / (1.0 + beta * loss[keep].mean()))

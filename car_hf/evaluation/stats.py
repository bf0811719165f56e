"""The statistics of an evaluation: means with percentile-bootstrap intervals over held-out items, the paired
bootstrap test between two students, and the length-controlled win rate (see :mod:`car_hf.evaluation.student`).

Example:
    >>> bootstrap_interval([1, 0, 1, 1], n_bootstrap=0)
    {'mean': 0.75, 'low': nan, 'high': nan, 'n': 4}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from car_hf.core.errors import InputError

MIN_LC_ITEMS = 10
"""Fewer judged items than this: no length-controlled win rate (the logistic fit would be noise)."""


def bootstrap_interval(values: Sequence[float], n_bootstrap: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> dict[str, Any]:
    """Mean of the finite ``values`` and its percentile-bootstrap interval over items (NaN bounds without one)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    low = high = math.nan
    if n_bootstrap:
        means = x[np.random.default_rng(seed).integers(0, len(x), (n_bootstrap, len(x)))].mean(axis=1)
        tail = 100 * (1 - confidence) / 2
        low, high = (float(v) for v in np.percentile(means, [tail, 100 - tail]))
    return {"mean": float(x.mean()), "low": low, "high": high, "n": int(len(x))}


def paired_comparison(a: Sequence[float], b: Sequence[float], n_bootstrap: int = 1000, confidence: float = 0.95,
                      seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap over items of mean(a - b) (items where both are finite): the difference, its interval,
    and the two-sided bootstrap p-value ``min(1, 2 * min(P*(d <= 0), P*(d >= 0)))``.

    >>> result = paired_comparison([1, 1, 1, 0, 1, 1], [0, 1, 0, 0, 0, 1], n_bootstrap=2000)
    >>> result["difference"], result["n"], result["p_value"] < 0.2
    (0.5, 6, True)
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise InputError(f"paired comparison needs the same items: {len(a)} vs {len(b)} values")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    result = bootstrap_interval(d, n_bootstrap, confidence, seed)
    p_value = math.nan
    if n_bootstrap and len(d):
        means = d[np.random.default_rng(seed).integers(0, len(d), (n_bootstrap, len(d)))].mean(axis=1)
        p_value = float(min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean())))
    return {"test": "paired bootstrap over held-out items", "difference": result["mean"], "low": result["low"],
            "high": result["high"], "p_value": p_value, "n": result["n"]}


def _logistic_intercept(y: np.ndarray, x: np.ndarray, ridge: float = 1e-3) -> float:
    """sigmoid(b0) of a ridge-penalised logistic regression y ~ b0 + b1 x (Newton's method)."""
    design = np.column_stack([np.ones_like(x), x])
    w = np.zeros(2)
    for _ in range(50):
        p = 1 / (1 + np.exp(-design @ w))
        gradient = design.T @ (y - p) - ridge * w
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w += step
        if np.abs(step).max() < 1e-10:
            break
    return float(1 / (1 + np.exp(-w[0])))


def length_controlled_win_rate(wins: Sequence[float], length_difference: Sequence[float]) -> float:
    """The judge's preference for the student at zero length difference (see the module docstring)."""
    y, d = np.asarray(wins, dtype=float), np.asarray(length_difference, dtype=float)
    keep = np.isfinite(y)
    y, d = y[keep], d[keep]
    scale = d.std()
    x = np.tanh(d / scale) if scale > 0 else np.zeros_like(d)
    return _logistic_intercept(y, x)


def lc_summary(wins: np.ndarray, difference: np.ndarray, n_bootstrap: int, confidence: float,
               seed: int) -> dict[str, Any]:
    """The length-controlled win rate with a bootstrap interval over items, or the reason it is left out."""
    keep = np.isfinite(wins)
    wins, difference = wins[keep], difference[keep]
    if len(wins) < MIN_LC_ITEMS or len(set(wins.tolist())) < 2:
        note = (f"fewer than {MIN_LC_ITEMS} verdicts" if len(wins) < MIN_LC_ITEMS
                else "the judge gave the same verdict on every item")
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": int(len(wins)), "lc_note": note}
    value = length_controlled_win_rate(wins, difference)
    low = high = math.nan
    if n_bootstrap:
        picks = np.random.default_rng(seed).integers(0, len(wins), (n_bootstrap, len(wins)))
        values = [length_controlled_win_rate(wins[p], difference[p]) for p in picks]
        tail = 100 * (1 - confidence) / 2
        low, high = (float(v) for v in np.percentile(values, [tail, 100 - tail]))
    return {"mean": value, "low": low, "high": high, "n": int(len(wins))}

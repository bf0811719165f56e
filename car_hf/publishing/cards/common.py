"""What car_hf's two cards share: markdown cells and tables, Hub links, the paper's citation, the templates.

Key/value and glossary tables go through ``DataFrame.to_markdown`` (tabulate) with number parsing off,
so every cell reads as car_hf wrote it: integers as integers, never ``1e+06``. The leaderboard keeps its
own compact writer because it formats per column: the decimals that give the column's largest value
four significant digits, and the bootstrap bounds folded into one ``car CI`` column.

Example:
    >>> print(key_value_table({"learning_rate": 2e-05, "max_steps": 1000000}))
    | name            | value   |
    |:----------------|:--------|
    | `learning_rate` | 2e-05   |
    | `max_steps`     | 1000000 |
    >>> text(float("nan")), link("google/gemma-3-270m").startswith("[`google/gemma-3-270m`](")
    ('n/a', True)
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from huggingface_hub import constants

TEMPLATES = Path(__file__).parent / "templates"  # package data (setup.cfg [options.package_data])

CITATION = """@article{xu2024stronger,
  title   = {Stronger Models are NOT Stronger Teachers for Instruction Tuning},
  author  = {Xu, Zhangchen and Jiang, Fengqing and Niu, Luyao and Lin, Bill Yuchen and Poovendran, Radha},
  journal = {arXiv preprint arXiv:2411.07133},
  year    = {2024},
  url     = {https://arxiv.org/abs/2411.07133}
}"""

LEADERBOARD_ORDER = ["rank", "generator", "n", "n_scored", "reward", "base_loss", "car", "car CI", "p_best",
                     "ppl", "ifd", "response_tokens"]


def plain(value: Any) -> Any:
    """numpy scalars → Python scalars (also inside lists and dicts), so YAML and markdown see plain values."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value.item() if hasattr(value, "item") and not isinstance(value, str) else value


def text(value: Any) -> str:
    """A value as it reads in a markdown table cell (None/NaN as n/a, pipes escaped, one line)."""
    value = plain(value)
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return str(value).replace("|", "\\|").replace("\n", " ")


def is_hub_id(name: Any) -> bool:
    """Spelled like a Hub repo id: ``"org/name"`` or ``"name"``."""
    return isinstance(name, str) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None


def link(name: Any, repo_type: str = "model") -> str:
    """A markdown link to a Hub repo, or the name as code when it is a local path rather than a Hub id."""
    if not is_hub_id(name) or Path(name).exists():
        return f"`{name}`"
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"[`{name}`]({constants.ENDPOINT}/{prefix}{name})"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table of ready-made cell strings, through ``DataFrame.to_markdown``."""
    return pd.DataFrame([list(row) for row in rows], columns=list(header)).to_markdown(
        index=False, disable_numparse=True)


def key_value_table(mapping: Mapping[str, Any], header: tuple[str, str] = ("name", "value")) -> str:
    """One row per item: the key as code, the value as :func:`text`."""
    return table(header, [[f"`{key}`", text(value)] for key, value in mapping.items()])


def _decimals(values: list[Any]) -> int:
    """Decimals that give the column's largest value four significant digits (0 to 4)."""
    finite = [abs(v) for v in values if isinstance(v, float) and math.isfinite(v)]
    biggest = max(finite, default=0.0)
    return 4 if biggest == 0 else max(0, min(4, 3 - math.floor(math.log10(biggest))))


def _cell(value: Any, decimals: int) -> str:
    """A leaderboard number with the column's decimals (integers as integers)."""
    value = plain(value)
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or math.isnan(value):
        return text(value)
    if isinstance(value, numbers.Integral):
        return str(value)
    fixed = f"{value:.{decimals}f}"
    # A tiny value next to big ones would print as 0.0000: keep three significant digits instead.
    return fixed if value == 0 or float(fixed) != 0 else f"{value:.3g}"


def leaderboard_columns(leaderboard: pd.DataFrame) -> list[str]:
    """Columns of the markdown leaderboard: the generator column first, ``car_low/high`` folded into "car CI".

    The other bootstrap bounds (``reward_low`` ... ``rank_high``) would double the width: they stay in
    ``leaderboard.csv``.
    """
    by = leaderboard.attrs.get("car", {}).get("by", "generator")
    present = [c for c in leaderboard.columns if not re.search(r"_(low|high)$", c)]
    if {"car_low", "car_high"} <= set(leaderboard.columns):
        present.append("car CI")
    order = [by if c == "generator" else c for c in LEADERBOARD_ORDER]
    return [c for c in order if c in present] + [c for c in present if c not in order]


def leaderboard_markdown(leaderboard: pd.DataFrame) -> str:
    """The leaderboard as a markdown table: floats to four significant digits, CI as ``[low, high]``.

    Example:
        >>> t = pd.DataFrame({"generator": ["a"], "n": [3], "n_scored": [3], "reward": [2.0],
        ...                   "base_loss": [1.0], "car": [1.0], "car_low": [0.8], "car_high": [1.25], "rank": [1]})
        >>> print(leaderboard_markdown(t))
        | rank | generator | n | n_scored | reward | base_loss | car | car CI |
        |---|---|---|---|---|---|---|---|
        | 1 | a | 3 | 3 | 2.000 | 1.000 | 1.000 | [0.800, 1.250] |
    """
    columns = leaderboard_columns(leaderboard)
    records = leaderboard.to_dict("records")
    decimals = {c: _decimals([plain(r[c]) for r in records]) for c in leaderboard.columns}
    if "car CI" in columns:
        decimals["car"] = _decimals([plain(r[c]) for r in records for c in ("car", "car_low", "car_high")])

    def cell(record: dict[str, Any], column: str) -> str:
        if column == "car CI":
            d = decimals["car"]
            return f"[{_cell(record['car_low'], d)}, {_cell(record['car_high'], d)}]"
        return _cell(record[column], decimals[column])

    # Unpadded rows, one per generator: the table reads the same in a terminal, a log and a card.
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(record, c) for c in columns) + " |" for record in records]
    return "\n".join(lines)

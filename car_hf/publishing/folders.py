"""The ranking folder ``car-hf push`` reads: leaderboard.md/.csv, car_config.json, the iso-CAR picture, scored rows.

Written by ``car-hf rank``/``demo``/``trial``, ``recipes/score.py`` and the adaptive ranking; read back by
``car-hf push``.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pandas as pd

from car_hf.core.data import load_data, save_data
from car_hf.publishing.cards import leaderboard_markdown


def ranking_markdown(table: pd.DataFrame) -> str:
    """The leaderboard as ``car-hf`` prints it and leaderboard.md holds it: the table, then how CAR was computed."""
    car = table.attrs.get("car", {})
    notes = ", ".join(f"{k}={car[k]}" for k in ("beta", "reward_transform", "reward_column", "reward_model",
                                                 "base_model", "confidence") if car.get(k) is not None)
    return f"{leaderboard_markdown(table)}\n\nCAR = reward / (1 + beta * base_loss); {notes}"


def write_ranking(out: str | Path, table: pd.DataFrame, scored: datasets.Dataset, *,
                  examples: datasets.Dataset | None = None) -> list[Path]:
    """The ranking folder ``car-hf push`` reads: leaderboard.md/.csv, car_config.json, [ranking.png], scored/.

    ``examples`` (the scored rows) adds the iso-CAR picture ``ranking.png``.

    Example:
        >>> import tempfile
        >>> from car_hf.ranking.leaderboard import rank_generators
        >>> scored = datasets.Dataset.from_dict({"generator": ["a", "a", "b", "b"], "reward": [.8, .6, .9, .7],
        ...                                      "base_loss": [1.0, 1.2, 3.0, 2.6]})
        >>> folder = Path(tempfile.mkdtemp()) / "ranking"
        >>> [p.name for p in write_ranking(folder, rank_generators(scored, n_bootstrap=0), scored)]
        ['leaderboard.md', 'leaderboard.csv', 'car_config.json', 'scored']
        >>> ds, table, plot = read_ranking(folder)
        >>> len(ds), table[["generator", "rank"]].values.tolist(), table.attrs["car"]["beta"], plot
        (4, [['a', 1], ['b', 2]], 1.0, None)
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "leaderboard.md", out / "leaderboard.csv", out / "car_config.json"]
    written[0].write_text(ranking_markdown(table) + "\n")
    table.to_csv(written[1], index=False)
    written[2].write_text(json.dumps(table.attrs.get("car", {}), indent=2, default=str) + "\n")
    if examples is not None:
        from car_hf.plots.plot import plot_ranking

        plot_ranking(table, examples, path=out / "ranking.png")
        written.append(out / "ranking.png")
    written.append(save_data(scored, str(out / "scored")))
    return written


def read_ranking(folder: str | Path) -> tuple[datasets.Dataset, pd.DataFrame, Path | None]:
    """Read back what :func:`write_ranking` wrote: (scored dataset, leaderboard with attrs, plot path or None)."""
    folder = Path(folder)
    for name in ("scored", "leaderboard.csv"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder / name} is missing: push expects a folder written by "
                                    "`car-hf rank --output-dir` or `car-hf demo`")
    # Int64: the rank of a generator with no scored row is empty in the CSV; the others stay integers.
    table = pd.read_csv(folder / "leaderboard.csv", dtype={"rank": "Int64"})
    config_file = folder / "car_config.json"
    table.attrs["car"] = json.loads(config_file.read_text()) if config_file.exists() else {}
    plot = folder / "ranking.png"
    return load_data(str(folder / "scored")), table, plot if plot.exists() else None

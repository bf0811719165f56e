"""The teachers × students compatibility matrix: one CAR cell per (teacher, student), paired intervals, winners,
and the regret of choosing one teacher for every student.

The paper's finding is that the best teacher depends on the student. Scored data with several students
(``base_loss@<label>`` per student, :mod:`car_hf.core.students`) gives :func:`rank_matrix` everything it needs:

* **cells**: each student's leaderboard (:func:`~car_hf.ranking.leaderboard.rank_generators` on that student's
  columns), stacked: ``student, <by>, n, n_scored, reward, base_loss, car, rank`` and, with the bootstrap, their
  intervals, ``p_best`` and ``rank_low/high``; plus ``relative_car`` (CAR / the student's best CAR), ``winner``
  (the student's highest CAR; on an exact tie the first by name) and ``decided`` (the cell's bootstrap rank
  interval is a single rank: its place in that student's order is settled at ``confidence``).
* **paired intervals**: one set of instruction resamples,
  :func:`~car_hf.ranking.leaderboard.bootstrap_weights` ``(instructions, n_bootstrap, seed)``, for every cell —
  every teacher under every student: each student's leaderboard draws exactly these (the same instructions and
  seed), and the cross-student quantities (``draws``, the regret intervals, ``p_winner_differs``) apply them to
  every student at once, so differences between cells (a student's winner against the common teacher, one
  student's winner against another's) have intervals too.
* **the best common teacher**: the teacher to choose when one teacher writes the data for every student.
  ``common="mean"`` (default): the teacher with the highest mean over students of ``relative_car``, i.e. the
  smallest average *relative* regret. CAR's scale differs between students (their losses differ: a student with
  lower losses has higher CARs), so raw CARs are normalised by each student's best before averaging; otherwise
  the student with the largest CARs would decide alone. ``common="minimax"``: the teacher whose largest relative
  regret over the students is smallest (no student is served badly; with two students and a clear trade-off
  both rules often agree). Ties go to the other rule, then to the name.
* **regret**: per student, its winner, the common teacher, ``regret = car(winner) - car(common)`` (≥ 0, CAR
  units of that student) and ``regret_rel = regret / car(winner)``, with a paired-bootstrap interval (in each
  resample: that resample's best CAR minus the common teacher's CAR, the common teacher fixed).

Example:
    >>> scored = {"instruction_id": [0, 0, 1, 1], "generator": ["a", "b", "a", "b"], "reward": [.8, .9, .6, .7],
    ...           "base_loss@s1": [1.0, 3.0, 1.2, 2.6], "base_loss@s2": [2.0, 1.0, 2.2, 1.2]}
    >>> m = rank_matrix(scored, n_bootstrap=0)
    >>> m.winners, m.common
    ({'s1': 'a', 's2': 'b'}, 'b')
    >>> m.regret[["student", "winner", "regret"]].round(3).values.tolist()
    [['s1', 'a', 0.123], ['s2', 'b', 0.0]]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from car_hf.core.car import transform_rewards
from car_hf.core.errors import ConfigError, InputError
from car_hf.core.inputs import check_numbers
from car_hf.core.students import check_student_rows, student_column, student_columns, student_label, students_in
from car_hf.publishing.cards.common import table
from car_hf.ranking.audit import audit_leaderboard, audit_markdown
from car_hf.ranking.leaderboard import _table_frame, bootstrap_car, bootstrap_weights, build_cells, rank_generators

COMMON_RULES = {
    "mean": "the teacher with the highest mean over students of CAR / the student's best CAR (smallest mean "
            "relative regret)",
    "minimax": "the teacher whose largest relative regret over the students is smallest",
}
FILES = ("matrix.md", "matrix.csv", "matrix_regret.csv", "matrix.json")


@dataclass
class Matrix:
    """What :func:`rank_matrix` returns: the cells, each student's regret under the common teacher, and the draws."""

    cells: pd.DataFrame
    regret: pd.DataFrame
    students: list[str]
    common: str
    by: str = "generator"
    attrs: dict[str, Any] = field(default_factory=dict)
    draws: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # student → [B, teachers] CAR draws
    teachers: list[Any] = field(default_factory=list)  # column order of the draws; rows of pivot()

    @property
    def winners(self) -> dict[str, Any]:
        """Student label → its highest-CAR teacher."""
        return dict(zip(self.regret["student"], self.regret["winner"]))

    @property
    def winner_differs(self) -> bool:
        """Whether the students do not all have the same winner."""
        return len(set(self.winners.values())) > 1

    def pivot(self, value: str = "rank") -> pd.DataFrame:
        """Teachers (rows, best common first) × students (columns) of one cell column, e.g. ``rank`` or ``car``."""
        return self.cells.pivot(index=self.by, columns="student", values=value).reindex(
            index=self.teachers, columns=self.students)

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest: students, winners, the common teacher and its rule, regrets, the settings."""
        regret = {row["student"]: {k: _plain(row[k]) for k in self.regret.columns if k != "student"}
                  for row in self.regret.to_dict("records")}
        return {"students": self.students, "winners": self.winners, "winner_differs": self.winner_differs,
                "common": self.common, "regret": regret, **self.attrs}

    def markdown(self) -> str:
        """The matrix as ``car-hf rank`` prints it: CAR [interval] and rank per cell, then the regret table."""
        cells = self.cells.set_index(["student", self.by])
        ci = "car_low" in cells.columns
        header = [f"{self.by} \\ student", *self.students, "mean relative CAR"]
        rows = []
        for teacher in self.teachers:
            row = [str(teacher)]
            for student in self.students:
                cell = cells.loc[(student, teacher)]
                text = f"{cell['car']:.4g}"
                if ci:
                    text += f" [{cell['car_low']:.4g}, {cell['car_high']:.4g}]"
                rank = f"#{cell['rank']}" if pd.notna(cell["rank"]) else "#–"
                if ci and not cell["decided"]:
                    rank = f"≈{rank} ({cell['rank_low']}–{cell['rank_high']})"
                text = f"{text} {rank}"
                row.append(f"**{text}** ★" if cell["winner"] else text)
            mean = self.cells.loc[self.cells[self.by] == teacher, "relative_car"].mean()
            row.append(f"{mean:.3f}" + (" (common)" if teacher == self.common else ""))
            rows.append(row)
        lines = [table(header, rows), ""]
        regret_rows = []
        for r in self.regret.to_dict("records"):
            interval = f" [{r['regret_low']:.3g}, {r['regret_high']:.3g}]" if "regret_low" in r else ""
            p_best = f"{r['p_best']:.2f}" if "p_best" in r else "–"
            regret_rows.append([r["student"], str(r["winner"]), f"{r['winner_car']:.4g}", p_best, str(self.common),
                                f"{r['common_car']:.4g}", f"{r['regret']:.3g}{interval}", f"{100 * r['regret_rel']:.1f}%"])
        lines += [table(["student", "winner", "CAR", "p_best", "common teacher", "its CAR", "regret",
                                   "relative"], regret_rows), ""]
        differs = "differs" if self.winner_differs else "is the same"
        p = self.attrs.get("p_winner_differs")
        lines.append(f"The winner {differs} by student" + (f" (in {100 * p:.0f}% of the paired resamples the "
                                                           "students' winners differ)" if p is not None else "")
                     + f". Common teacher: {COMMON_RULES[self.attrs.get('common_rule', 'mean')]}.")
        notes = ", ".join(f"{k}={self.attrs[k]}" for k in ("beta", "reward_transform", "reward_column", "confidence",
                                                            "n_bootstrap", "paired_by") if self.attrs.get(k) is not None)
        lines.append(f"CAR = reward / (1 + beta * base_loss@student); {notes}. ★ = the student's winner; "
                     "≈ = rank not decided at the confidence level (its interval of ranks is shown).")
        for student, audit in self.attrs.get("audit", {}).items():
            lines += ["", audit_markdown(audit, title=f"Signal audit, student {student}:")]
        return "\n".join(lines)

    def write(self, folder: str | Path) -> list[Path]:
        """Write ``matrix.md``, ``matrix.csv`` (the cells), ``matrix_regret.csv`` and ``matrix.json`` into ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / name for name in FILES]
        paths[0].write_text(self.markdown() + "\n")
        self.cells.to_csv(paths[1], index=False)
        self.regret.to_csv(paths[2], index=False)
        paths[3].write_text(json.dumps({**self.summary(), "by": self.by, "teachers": [_plain(t) for t in self.teachers]},
                                       indent=2, default=str) + "\n")
        return paths

    @classmethod
    def read(cls, folder: str | Path) -> Matrix:
        """What :meth:`write` wrote (without the bootstrap draws)."""
        folder = Path(folder)
        meta = json.loads((folder / "matrix.json").read_text())
        keep = {"students", "winners", "winner_differs", "common", "regret", "by", "teachers"}
        cells = pd.read_csv(folder / "matrix.csv", dtype={"rank": "Int64", "student": str})
        return cls(cells=cells, regret=pd.read_csv(folder / "matrix_regret.csv", dtype={"student": str}),
                   students=meta["students"], common=meta["common"], by=meta["by"], teachers=meta["teachers"],
                   attrs={k: v for k, v in meta.items() if k not in keep})


def rank_matrix(
    data: Any,
    students: Sequence[Any] | None = None,
    *,
    by: str = "generator",
    beta: float = 1.0,
    reward_transform: str = "raise",
    reward_column: str = "reward",
    instruction_column: str | None = None,
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
    common: str = "mean",
    config: Mapping[str, Any] | None = None,
) -> Matrix:
    """The teachers × students matrix of scored data holding several students (see the module docstring).

    Args:
        data: a ``datasets.Dataset``, a pandas DataFrame or a dict of columns, with ``by``, ``reward_column`` and
            ``base_loss@<label>`` per student (plus, optionally, ``base_loss_tokens@<label>``, ``base_rank@<label>``).
        students: labels or model ids (``"google/gemma-3-270m"`` → ``gemma-3-270m``); default: every student the
            data holds, in column order.
        common: how the best common teacher is chosen: ``"mean"`` (default) or ``"minimax"`` (module docstring).
        beta, reward_transform, reward_column, instruction_column, confidence, n_bootstrap, seed, config: as for
            :func:`~car_hf.ranking.leaderboard.rank_generators`, applied to every student (the same seed: the
            same instruction resamples for every cell).

    Raises:
        InputError: a student's ``base_loss@<label>`` column is missing, or missing (null) on some rows — the
            message names the student, the column and the rows (nothing is dropped); a bad reward or loss value.
        ConfigError: a student named twice, an unknown ``common`` rule.

    Example:
        >>> scored = {"instruction_id": [0, 0, 1, 1], "generator": ["a", "b", "a", "b"], "reward": [.8, .9, .6, .7],
        ...           "base_loss@s1": [1.0, 3.0, 1.2, 2.6], "base_loss@s2": [2.0, 1.0, 2.2, 1.2]}
        >>> m = rank_matrix(scored, ["s1", "s2"], n_bootstrap=200)
        >>> m.pivot("rank").values.tolist(), sorted(m.cells.columns)[:4]
        ([[2, 1], [1, 2]], ['base_loss', 'base_loss_high', 'base_loss_low', 'car'])
    """
    if common not in COMMON_RULES:
        raise ConfigError(f"common={common!r}: choose one of {sorted(COMMON_RULES)}")
    present = list(data.column_names) if hasattr(data, "column_names") else list(data.keys()) \
        if isinstance(data, Mapping) else list(data.columns)
    labels = _resolve(students, present)
    names = list(data.index) if isinstance(data, pd.DataFrame) else None
    check_student_rows(data, labels, names=names)
    pairing = [instruction_column] if instruction_column else ["instruction_id", "instruction", "prompt"]
    per_student = [c for label in labels for c in student_columns(label, present)]
    frame = _table_frame(data, [by, reward_column, *pairing, *per_student],
                         {by: "by: the teacher of each row", reward_column: "reward_column: rewards of each row"})
    if len(frame) == 0:
        raise InputError("the data has no rows: there is nothing to rank")
    settings = dict(by=by, beta=beta, reward_transform=reward_transform, reward_column=reward_column,
                    instruction_column=instruction_column, confidence=confidence, n_bootstrap=n_bootstrap, seed=seed)
    tables, audits = [], {}
    for label in labels:
        view = frame[[c for c in frame.columns if c not in per_student]].assign(
            **{plain: frame[column] for column, plain in student_columns(label, list(frame.columns)).items()})
        board = rank_generators(view, loss_column="base_loss", config={"student": label}, **settings)
        board = audit_leaderboard(board, view, student=label)  # the signal audit, per student
        audits[label] = board.attrs["car"]["audit"]
        board.insert(0, "student", label)
        tables.append(board)
    cells = pd.concat(tables, ignore_index=True)
    cells["relative_car"] = cells["car"] / cells.groupby("student")["car"].transform("max")
    cells["winner"] = ~cells.duplicated("student") & cells["car"].notna()  # each table is sorted best first
    if n_bootstrap:
        cells["decided"] = cells["rank_low"] == cells["rank_high"]

    relative = cells.pivot(index=by, columns="student", values="relative_car")[labels]
    mean, worst = relative.mean(axis=1), 1 - relative.min(axis=1)  # worst = the largest relative regret
    if common == "mean":
        teachers = sorted(relative.index, key=lambda t: (-mean[t], worst[t], str(t)))
    else:
        teachers = sorted(relative.index, key=lambda t: (worst[t], -mean[t], str(t)))
    chosen = teachers[0]

    draws = _draws(frame, labels, teachers, settings, pairing) if n_bootstrap else {}
    regret_rows = []
    for label in labels:
        own = cells[cells["student"] == label].set_index(by)
        winner = own.index[0]
        row = {"student": label, "winner": winner, "winner_car": own.loc[winner, "car"], "common": chosen,
               "common_car": own.loc[chosen, "car"]}
        row["regret"] = row["winner_car"] - row["common_car"]
        row["regret_rel"] = row["regret"] / row["winner_car"]
        if n_bootstrap:
            row["p_best"] = own.loc[winner, "p_best"]
            boot = draws[label]
            regret = np.nanmax(boot, axis=1) - boot[:, teachers.index(chosen)]
            tail = 100 * (1 - confidence) / 2
            row["regret_low"], row["regret_high"] = np.nanpercentile(regret, [tail, 100 - tail])
        regret_rows.append(row)
    attrs = {**{k: v for k, v in tables[0].attrs.get("car", {}).items() if k not in ("student", "audit")},
             "audit": audits,
             "common_rule": common, "common_rule_text": COMMON_RULES[common], **dict(config or {})}
    if draws:
        best = np.stack([np.nanargmax(np.where(np.isnan(d), -np.inf, d), axis=1) for d in draws.values()])
        attrs["p_winner_differs"] = float(np.mean(np.any(best != best[:1], axis=0)))
    return Matrix(cells=cells, regret=pd.DataFrame(regret_rows), students=labels, common=chosen, by=by,
                  attrs=attrs, draws=draws, teachers=teachers)


def _resolve(students: Sequence[Any] | None, present: Sequence[str]) -> list[str]:
    """The labels of ``students`` (labels as they are, model ids by :func:`student_label`), each once."""
    if students is None:
        labels = students_in(present)
        if not labels:
            raise InputError(f"no per-student loss columns (base_loss@<label>) among the columns {list(present)}: "
                             "score several students first (add_car(base_model=[a, b])), or rank one student's "
                             "base_loss with rank_generators")
        return labels
    labels = [s if isinstance(s, str) and student_column("base_loss", s) in present else student_label(s)
              for s in students]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise ConfigError(f"students {list(students)} name the student {label!r} twice (positions "
                              f"{labels.index(label)} and {i}): each student once")
    return labels


def _draws(frame: pd.DataFrame, labels: list[str], teachers: list[Any], settings: Mapping[str, Any],
           pairing: Sequence[str]) -> dict[str, np.ndarray]:
    """Per student, the [B, teachers] CAR of the paired bootstrap: ONE set of instruction resamples
    (:func:`bootstrap_weights`, the seed every cell's leaderboard used) applied to every student."""
    cluster_column = next((c for c in pairing if c and c in frame.columns), None)
    clusters = frame[cluster_column].tolist() if cluster_column else list(range(len(frame)))
    raw = check_numbers(frame[settings["reward_column"]], settings["reward_column"], names=frame.index)
    rewards, _ = transform_rewards(raw, settings["reward_transform"], names=frame.index,
                                   column=settings["reward_column"])
    groups = frame[settings["by"]].tolist()
    weights = bootstrap_weights(len(dict.fromkeys(clusters)), settings["n_bootstrap"], settings["seed"])
    draws = {}
    for label in labels:
        column = student_column("base_loss", label)
        losses = check_numbers(frame[column], column, names=frame.index, kind="loss")
        cells = build_cells(groups, clusters, rewards, losses)
        car, _, _ = bootstrap_car(cells, settings["beta"], settings["n_bootstrap"], settings["seed"], weights=weights)
        draws[label] = car[:, [cells.groups.index(t) for t in teachers]]
    return draws


def _plain(value: Any) -> Any:
    """numpy / pandas scalars as plain Python values (JSON-able)."""
    if isinstance(value, np.generic):
        return value.item()
    return None if value is pd.NA else value

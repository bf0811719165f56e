"""The signal audit of a leaderboard: when is a pick fragile? Degenerate responses, same-family teachers, β, agreement.

:func:`audit_leaderboard` adds to a :func:`~car_hf.ranking.leaderboard.rank_generators` table, per generator:

* ``loop_share``: responses caught in a repetition loop (:func:`is_loop`: over the whole response or its last
  :data:`LOOP_WINDOW` word 4-grams, fewer than :data:`LOOP_MAX_DISTINCT` of them distinct);
* ``empty_share``: empty or no-op answers (:func:`is_noop`: only whitespace and markup, or a copy of the instruction);
* ``truncated_share``: responses cut at a length limit: ``base_loss_truncated`` (the scorer's ``max_length``) or the
  generation's ``<response>_finish_reason == "length"`` / ``<response>_truncated``; NaN when neither is recorded;
* ``degenerate_share``: rows with any of the three, the cases a likelihood signal can reward (a loop is easy);
* ``same_family``: the teacher shares the student's tokenizer (:func:`vocabulary_overlap` of at least
  :data:`SAME_VOCABULARY`), or, when a tokenizer cannot be had, its model name's family (:func:`model_family`).

and ``table.attrs["car"]["audit"]``: the β segments over which each generator is the CAR top-1 (exact breakpoints,
:func:`pick_segments`), the top-1 of CAR, reward, RSR and the GRAPE likelihood (−``base_loss``) with Kendall τ
between them, ``notes`` (always) and ``warnings`` (only what triggered). :func:`audit_markdown` renders both.

Example:
    >>> table = pd.DataFrame({"generator": ["a", "b", "c"], "reward": [0.9, 0.7, 0.5],
    ...                       "base_loss": [3.0, 1.5, 0.5], "car": [0.225, 0.28, 1 / 3]})
    >>> [(round(lo, 3), round(hi, 3), g) for lo, hi, g in pick_segments(table)]
    [(0.0, 0.267, 'a'), (0.267, 0.5, 'b'), (0.5, inf, 'c')]
    >>> is_loop("I am sorry. " * 20), is_loop("A normal answer that says one thing once and then stops here.")
    (True, False)
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from car_hf.core.errors import InputError, ModelLoadError
from car_hf.core.formats import detect_layout, row_example
from car_hf.ranking.leaderboard import _table_frame

LOOP_N = 4
"""Repetition loops are counted on word n-grams of this size (words and runs of punctuation, lowercased)."""
LOOP_WINDOW = 64  # ... over the whole response and over its last this many n-grams (a loop that starts late)
LOOP_MAX_DISTINCT = 0.3
"""A response is a loop when under this share of those n-grams is distinct (19 zoo rows of 8855: all real loops)."""
LOOP_MIN_NGRAMS = 16  # responses with fewer n-grams are never called loops
MARKUP = "`*#_-=~>|.:"
"""An answer of nothing but these (and whitespace) is empty: code fences, rules, bullets, ellipses."""
NOOP_MIN_SHARE = 0.5
"""A no-op copies a contiguous part of the instruction at least this share of its length (and 3 tokens or more)."""
DEGENERATE_WARN = 0.05
"""A teacher with at least this share of degenerate responses is warned about."""
SAME_VOCABULARY = 0.9
"""Tokenizers whose vocabularies share at least this much (Jaccard of the token strings) are one family."""
BETA_FACTOR = 2.0
"""The pick is fragile when it changes within this factor of the chosen β (below β / 2 or above 2 β)."""
AUDIT_COLUMNS = ("loop_share", "empty_share", "truncated_share", "degenerate_share", "same_family")
LEGEND = {
    "loop_share": f"share of responses in a repetition loop (under {LOOP_MAX_DISTINCT:.0%} of the word {LOOP_N}-grams "
                  f"distinct, over the response or its last {LOOP_WINDOW})",
    "empty_share": "share of empty or no-op answers (only whitespace and markup, or a copy of the instruction)",
    "truncated_share": "share of responses cut at a length limit (scorer's max_length or generation's max_new_tokens)",
    "degenerate_share": f"share with any of the three (warned about at {DEGENERATE_WARN:.0%})",
    "same_family": "the teacher's tokenizer (or, when unknown, its model name's family) is the student's",
}
"""The audit columns' meanings, for cards and legends."""
SIGNALS = {"CAR": ("car", 1), "reward": ("reward", 1), "RSR": ("rsr", -1), "likelihood": ("base_loss", -1)}
"""Signal → (leaderboard column, +1 if higher is better); the likelihood is GRAPE's, −base_loss."""

_TOKEN = re.compile(r"\w+|[^\w\s]+")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def is_loop(text: str) -> bool:
    """Whether ``text`` is stuck in a repetition loop (see :data:`LOOP_MAX_DISTINCT`).

    >>> is_loop("- Veggie platters\\n" * 30), is_loop("1. Paris\\n2. Rome\\n3. Berlin\\n4. Madrid\\n5. Vienna")
    (True, False)
    """
    words = _tokens(text)
    grams = [tuple(words[i:i + LOOP_N]) for i in range(len(words) - LOOP_N + 1)]
    if len(grams) < LOOP_MIN_NGRAMS:
        return False
    tail = grams[-LOOP_WINDOW:]
    return min(len(set(grams)) / len(grams), len(set(tail)) / len(tail)) < LOOP_MAX_DISTINCT


def is_noop(text: str, instruction: str = "") -> bool:
    """An empty answer (nothing but whitespace and the markup characters of :data:`MARKUP`) or a copy of a part of
    the instruction at least :data:`NOOP_MIN_SHARE` of its length.

    >>> is_noop(" ```\\n``` "), is_noop("🐱😻🎾"), is_noop("Arts & Culture", "Pick one: News, Arts & Culture")
    (True, False, False)
    >>> is_noop("Translate this sentence into French", "Translate this sentence into French."), is_noop("( o.o )")
    (True, False)
    """
    if not text.strip(MARKUP + " \t\n\r"):
        return True
    words, source = _tokens(text), _tokens(instruction)
    if len(words) < 3 or len(words) < NOOP_MIN_SHARE * len(source):
        return False
    return f" {' '.join(words)} " in f" {' '.join(source)} "


def _truncation(frame: pd.DataFrame, response: str | None, scorer: str) -> tuple[np.ndarray | None, list[str]]:
    """Per row, whether it was cut at a length limit, from the columns that record it (None: none does)."""
    cut, sources = np.zeros(len(frame), bool), []
    for column in (scorer, f"{response}_truncated"):
        if column in frame.columns:
            cut |= frame[column].astype("boolean").fillna(False).to_numpy(bool)
            sources.append(column)
    if f"{response}_finish_reason" in frame.columns:
        cut |= (frame[f"{response}_finish_reason"] == "length").to_numpy()
        sources.append(f"{response}_finish_reason")
    return (cut if sources else None), sources


def response_flags(data: Any, by: str = "generator", loss_column: str = "base_loss") -> pd.DataFrame:
    """Per row of scored data: ``generator, loop, empty, truncated`` (``truncated`` NaN when not recorded), and
    ``attrs["truncation_from"]``, the columns it was read from (the scorer's flag beside ``loss_column``:
    ``base_loss_truncated``, or ``base_loss_truncated@<student>`` for ``base_loss@<student>``). Without response
    text (no layout :func:`~car_hf.core.formats.detect_layout` knows) ``loop`` and ``empty`` are NaN.

    >>> response_flags({"generator": ["a", "b"], "instruction": ["Say hi.", "Say hi."],
    ...                 "response": ["Hi!", ""], "base_loss_truncated": [True, False]}).values.tolist()
    [['a', False, False, True], ['b', False, True, False]]
    """
    present = list(data.column_names) if hasattr(data, "column_names") else list(
        data.keys() if isinstance(data, Mapping) else data.columns)
    try:
        layout = detect_layout(present)
    except InputError:
        layout = None
    response = layout.response if layout else None
    scorer = loss_column.replace("base_loss", "base_loss_truncated", 1)
    extra = [f"{response}_{s}" for s in ("truncated", "finish_reason")] + [scorer]
    text = [c for c in (layout.prompt, layout.response) if c] if layout else []
    frame = _table_frame(data, [by, *text, *extra], {by: "by: the generator of each row"})
    flags = pd.DataFrame({by: frame[by].to_numpy()})
    if layout is None:
        flags["loop"] = flags["empty"] = np.nan
    else:
        columns = {c: frame[c].tolist() for c in text}
        rows = [int(n) if isinstance(n, (int, np.integer)) else i for i, n in enumerate(frame.index)]
        examples = [row_example(columns, i, layout, row) for i, row in enumerate(rows)]
        flags["loop"] = [is_loop(e.response) for e in examples]
        flags["empty"] = [is_noop(e.response, e.prompt[-1]["content"] if e.prompt else "") for e in examples]
    cut, sources = _truncation(frame, response, scorer)
    flags["truncated"] = cut if cut is not None else np.nan
    flags.attrs["truncation_from"] = sources
    return flags


def model_family(name: str) -> str:
    """The family of a model by its name: the leading letters of the name after the organisation (and "Meta-").

    >>> [model_family(n) for n in ("google/gemma-3-270m", "gemma-2b-it", "HuggingFaceTB/SmolLM2-135M-Instruct",
    ...                            "meta-llama/Meta-Llama-3-8B", "gpt4_1106_preview")]
    ['gemma', 'gemma', 'smollm', 'llama', 'gpt']
    """
    base = re.sub(r"^meta-", "", str(name).rstrip("/").split("/")[-1].lower())
    match = re.match(r"[a-z]+", base)
    return match.group(0) if match else base


def vocabulary_overlap(first: Any, second: Any) -> float:
    """Jaccard overlap of two tokenizers' vocabularies (token strings): 1.0 for the same tokenizer."""
    a, b = set(first.get_vocab()), set(second.get_vocab())
    return len(a & b) / len(a | b) if a | b else 1.0


def _tokenizer(spec: Any) -> Any:
    """A tokenizer for ``spec`` (a tokenizer, a ``(model, tokenizer)`` pair, or an ``org/name`` model id or a folder
    loadable without the network), else None (a bare name such as a generator label is not tried)."""
    if isinstance(spec, tuple):
        return spec[1]
    if not isinstance(spec, (str, os.PathLike)):
        return spec if hasattr(spec, "get_vocab") else None
    if "/" not in str(spec) and not os.path.isdir(spec):
        return None
    from transformers import AutoTokenizer

    from car_hf.core.models import local_model_path

    try:
        return AutoTokenizer.from_pretrained(local_model_path(spec), local_files_only=True)
    except (OSError, ValueError, ModelLoadError):
        return None


def same_family(student: Any, teachers: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per teacher: ``{"same": bool, "by": "tokenizer" | "name", "detail": overlap | family}``: the vocabularies
    compared when both tokenizers can be had (``student`` and each teacher: a tokenizer, a model id or folder
    loadable offline, or a name), else the model names' families (:func:`model_family`).

    >>> same_family("google/gemma-3-270m", {"gemma-2b-it": "gemma-2b-it", "claude-2.1": "claude-2.1"})["gemma-2b-it"]
    {'same': True, 'by': 'name', 'detail': 'gemma'}
    """
    loaded = {teacher: _tokenizer(spec) for teacher, spec in teachers.items()}
    student_tokenizer = _tokenizer(student) if any(t is not None for t in loaded.values()) else None
    student_name = student if isinstance(student, str) else getattr(student, "name_or_path", "") or ""
    out = {}
    for teacher, spec in teachers.items():
        if student_tokenizer is not None and loaded[teacher] is not None:
            overlap = vocabulary_overlap(student_tokenizer, loaded[teacher])
            out[teacher] = {"same": overlap >= SAME_VOCABULARY, "by": "tokenizer", "detail": round(overlap, 4)}
        else:
            family = model_family(spec if isinstance(spec, str) else teacher)
            out[teacher] = {"same": bool(student_name) and family == model_family(student_name), "by": "name",
                            "detail": family}
    return out


def pick_segments(table: pd.DataFrame, by: str | None = None) -> list[tuple[float, float, Any]]:
    """``(β low, β high, top-1)`` for β from 0 to ∞: who has the highest ``reward / (1 + β·base_loss)``.

    Exact: two generators' CAR cross once at most, at β = (r_a − r_j) / (r_j·L_a − r_a·L_j); from each leader the
    next breakpoint is the nearest crossing ahead, and the new leader has a lower loss, so there are at most as many
    segments as generators. Generators tied at a breakpoint: the lower loss (ahead just after) leads.
    """
    by = by or table.attrs.get("car", {}).get("by", "generator")
    frame = table[[by, "reward", "base_loss"]].dropna()
    names, r, loss = frame[by].tolist(), frame["reward"].to_numpy(float), frame["base_loss"].to_numpy(float)
    if not names:
        return []
    order = sorted(range(len(names)), key=lambda i: (-r[i], loss[i], i))
    leader, start, segments = order[0], 0.0, []
    while True:
        ahead: list[tuple[float, float, int]] = []
        for j in range(len(names)):
            slope = r[j] * loss[leader] - r[leader] * loss[j]
            if j != leader and slope > 0:
                ahead.append((max(start, float((r[leader] - r[j]) / slope)), float(loss[j]), j))
        if not ahead:
            segments.append((start, math.inf, names[leader]))
            return segments
        crossing = min(a[0] for a in ahead)
        segments.append((start, crossing, names[leader]))
        leader = min((a for a in ahead if math.isclose(a[0], crossing, rel_tol=1e-12)), key=lambda a: (a[1], a[2]))[2]
        start = crossing


def _number(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.3g}"


def beta_sensitivity(table: pd.DataFrame, beta: float) -> dict[str, Any]:
    """Where the CAR top-1 at ``beta`` holds, who it is below and above, the reward's top-1, and whether the pick
    changes within a factor :data:`BETA_FACTOR` of ``beta`` (``fragile``); ``line`` says it in words."""
    segments = pick_segments(table)
    if not segments:
        return {"segments": [], "line": "β: no generator has a scored row", "fragile": False}
    k = next(i for i, (lo, hi, _) in enumerate(segments) if lo <= beta <= hi)
    lo, hi, pick = segments[k]
    if len(segments) == 1:
        text = f"β: the pick {pick} holds for every β ≥ 0 (it is also the reward's top-1)"
    else:
        span = f"β in [{_number(lo)}, {_number(hi)}]" if hi < math.inf else f"β ≥ {_number(lo)}"
        text = f"β: the pick {pick} holds for {span}"
        text += f"; below {_number(lo)} it is {segments[k - 1][2]}" if k > 0 else ""
        text += f"; at β ≥ {_number(hi)} it is {segments[k + 1][2]}" if hi < math.inf else ""
        text += f"; reward alone (β = 0): {segments[0][2]}"
    fragile = beta > 0 and (lo > beta / BETA_FACTOR or hi < beta * BETA_FACTOR)
    return {"beta": beta, "pick": pick, "holds": [lo, None if math.isinf(hi) else hi], "reward_top1": segments[0][2],
            "segments": [[s, None if math.isinf(e) else e, g] for s, e, g in segments], "fragile": fragile,
            "line": text}


def signal_agreement(table: pd.DataFrame, by: str | None = None) -> dict[str, Any]:
    """The top-1 of each signal of :data:`SIGNALS` the table has, and Kendall τ (scipy's τ-b) between every two,
    oriented so that τ = 1 means the same order; ``agree``: one top-1 for all."""
    from scipy.stats import kendalltau

    by = by or table.attrs.get("car", {}).get("by", "generator")
    oriented = {name: direction * table[column].to_numpy(float) for name, (column, direction) in SIGNALS.items()
                if column in table.columns and np.isfinite(table[column].to_numpy(float)).any()}
    names = table[by].tolist()
    top1 = {name: names[int(np.nanargmax(values))] for name, values in oriented.items()}
    tau = {}
    keys = list(oriented)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            keep = np.isfinite(oriented[a]) & np.isfinite(oriented[b])
            value = kendalltau(oriented[a][keep], oriented[b][keep]).statistic if keep.sum() >= 2 else math.nan
            tau[f"{a}~{b}"] = None if not np.isfinite(value) else round(float(value), 4)
    return {"top1": top1, "agree": len(set(top1.values())) <= 1, "kendall_tau": tau}


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%" if value >= 0.01 or value == 0 else f"{100 * value:.1f}%"


def _tau(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def audit_leaderboard(table: pd.DataFrame, scored: Any, *, student: Any = None,
                      teachers: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """``table`` with the audit columns and ``attrs["car"]["audit"]`` (see the module docstring); ``scored`` is the
    data it was ranked from. ``student``: the base model (id, folder or tokenizer; default the table's
    ``base_model``); ``teachers``: generator → its model (id, folder or tokenizer; default: the teacher recorded in
    the ``<response>_provenance`` column, else the generator's name)."""
    car = dict(table.attrs.get("car", {}))
    by, beta = car.get("by", "generator"), float(car.get("beta", 1.0))
    flags = response_flags(scored, by, car.get("loss_column", "base_loss"))
    shares = flags.groupby(by, sort=False)[["loop", "empty", "truncated"]].mean()
    degenerate = (flags[["loop", "empty", "truncated"]].astype(float).fillna(0.0) > 0).any(axis=1).astype(float)
    if flags[["loop", "truncated"]].isna().all().all():  # neither text nor truncation: nothing was checked
        degenerate = pd.Series(np.nan, index=flags.index)
    shares["degenerate"] = degenerate.groupby(flags[by], sort=False).mean()
    out = table.copy()
    for name in ("loop", "empty", "truncated", "degenerate"):
        out[f"{name}_share"] = out[by].map(shares[name]).astype(float)
    student = student if student is not None else car.get("base_model")
    families = same_family(student, _teacher_models(scored, out[by].tolist(), by, teachers)) if student else {}
    out["same_family"] = pd.array([families[str(g)]["same"] if str(g) in families else pd.NA for g in out[by]],
                                  "boolean")
    sensitivity, agreement = beta_sensitivity(out, beta), signal_agreement(out, by)
    tau = ", ".join(f"{k.replace('~', '–')} {_tau(v)}" for k, v in agreement["kendall_tau"].items())
    notes = [sensitivity["line"], "top-1: " + ", ".join(f"{k} {v}" for k, v in agreement["top1"].items())
             + (f"; Kendall τ: {tau}" if tau else "")]
    if not flags.attrs["truncation_from"]:
        notes.append("truncation: not recorded (no base_loss_truncated or finish_reason column)")
    if flags["loop"].isna().all():
        notes.append("degenerate responses: not checked (no response text)")
    thresholds = {"loop_ngram": LOOP_N, "loop_window": LOOP_WINDOW, "loop_max_distinct": LOOP_MAX_DISTINCT,
                  "degenerate_warn": DEGENERATE_WARN, "same_vocabulary": SAME_VOCABULARY, "beta_factor": BETA_FACTOR}
    car["audit"] = {"warnings": _warnings(out, by, families, sensitivity, agreement), "notes": notes,
                    "legend": LEGEND, "beta": sensitivity, "agreement": agreement, "same_family": families,
                    "truncation_from": flags.attrs["truncation_from"], "thresholds": thresholds}
    out.attrs = {**table.attrs, "car": car}
    return out


def _warnings(out: pd.DataFrame, by: str, families: Mapping[str, dict[str, Any]], sensitivity: Mapping[str, Any],
              agreement: Mapping[str, Any]) -> list[str]:
    """The audit's warnings, in this order: degenerate teachers, same-family teachers, a fragile pick, disagreement."""
    labels = (("loops", "loop_share"), ("empty/no-op", "empty_share"), ("cut at the length limit", "truncated_share"))
    degenerate: dict[str, list[str]] = {}  # teachers with the same figures share a line
    for k, row in enumerate(out.to_dict("records")):
        share = row["degenerate_share"]
        if np.isfinite(share) and share >= DEGENERATE_WARN:
            parts = ", ".join(f"{label} {_percent(row[c])}" for label, c in labels if row[c] > 0)  # NaN > 0: False
            degenerate.setdefault(f"{_percent(share)} of ITS responses are degenerate ({parts})", []).append(
                f"{row[by]}{' (the CAR pick)' if k == 0 else ''}")
    warnings_ = [f"{', '.join(names)}: " + line.replace("ITS", "its" if len(names) == 1 else "their")
                 for line, names in degenerate.items()]
    grouped: dict[str, list[str]] = {}
    for name in map(str, out[by]):
        found = families.get(name)
        if found and found["same"]:
            how = (f"{100 * found['detail']:.0f}% shared vocabulary" if found["by"] == "tokenizer"
                   else f"by name: {found['detail']}")
            grouped.setdefault(how, []).append(name)
    for how, names in grouped.items():
        warnings_.append(f"{', '.join(names)}: same family as the student ({how}): "
                         f"{'its' if len(names) == 1 else 'their'} loss can be low for reasons that are not quality")
    if sensitivity.get("fragile"):
        warnings_.append(f"fragile pick: {sensitivity['line'].removeprefix('β: ')} (β = {sensitivity['beta']:g})")
    if not agreement["agree"]:
        same = {name for names in grouped.values() for name in names}
        warnings_.append("signals disagree on the top-1: " + ", ".join(
            f"{k} {v}" + (" (same family)" if str(v) in same else "") for k, v in agreement["top1"].items()))
    return warnings_


def _teacher_models(scored: Any, generators: Sequence[Any], by: str,
                    given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Generator → what names its model: ``given``, else the provenance column's ``teacher``, else the name."""
    found: dict[str, Any] = {str(g): g for g in generators}
    columns = list(scored.column_names) if hasattr(scored, "column_names") else list(
        scored.keys() if isinstance(scored, Mapping) else scored.columns)
    provenance = next((c for c in columns if c.endswith("_provenance")), None)
    if provenance:
        frame = _table_frame(scored, [by, provenance])
        for generator, text in frame.drop_duplicates(by)[[by, provenance]].itertuples(index=False):
            try:
                if str(generator) in found:
                    found[str(generator)] = json.loads(text).get("teacher") or generator
            except (TypeError, ValueError, AttributeError):  # no provenance on this row: the name stays
                pass
    found.update({str(k): v for k, v in (given or {}).items()})
    return found


def audit_markdown(audit: pd.DataFrame | Mapping[str, Any], title: str | None = "Signal audit:") -> str:
    """An audit (an audited table, or its ``attrs["car"]["audit"]``) as markdown: ``title``, the notes, then the
    warnings; "" for a table never audited."""
    if isinstance(audit, pd.DataFrame):
        audit = audit.attrs.get("car", {}).get("audit") or {}
    if not audit:
        return ""
    lines = ([title] if title else []) + [f"- {note}" for note in audit["notes"]]
    lines += ["", "Warnings:", *(f"- {w}" for w in audit["warnings"])] if audit["warnings"] else ["", "Warnings: none."]
    return "\n".join(lines)

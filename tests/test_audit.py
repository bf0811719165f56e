"""car_hf.ranking.audit: each check on rows built to trigger it and on rows that must not; the leaderboard, CLI,
card and pilot report carry it; docs/AUDIT.md's command runs as written on tiny data."""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import tiny
from car_hf.cli import main
from car_hf.ranking.audit import (
    DEGENERATE_WARN,
    audit_leaderboard,
    audit_markdown,
    beta_sensitivity,
    is_loop,
    is_noop,
    pick_segments,
    response_flags,
    same_family,
    signal_agreement,
    vocabulary_overlap,
)
from car_hf.ranking.leaderboard import rank_generators

ROOT = Path(__file__).resolve().parents[1]
NORMAL = ("The French Revolution began in 1789. Rising bread prices, a bankrupt treasury and new ideas about "
          "rights turned a fiscal crisis into a political one: the Estates-General met, the Third Estate declared "
          "itself a National Assembly, and within weeks the Bastille had fallen. The monarchy ended in 1792.")
# A real loop, as phi-2-sft wrote it in the AlpacaEval zoo (instruction 624), and one that starts late.
LOOP = " instruct," * 200
LATE_LOOP = NORMAL + " " + "- Veggie platters\n" * 40


def three_teachers(beta=1.0, **extra):
    """a: best reward, highest loss; c: lowest reward and loss. Breakpoints (by hand): a→b at β = 0.2/0.75 = 4/15,
    b→c at β = 0.2/0.4 = 1/2 (a→c would be at 0.4/1.05, after b has taken over)."""
    rows = {"generator": ["a", "b", "c"], "reward": [0.9, 0.7, 0.5], "base_loss": [3.0, 1.5, 0.5], **extra}
    return rank_generators(rows, beta=beta, n_bootstrap=0)


def test_a_repetition_loop_is_flagged_and_normal_answers_are_not():
    assert is_loop(LOOP) and is_loop(LATE_LOOP) and is_loop("I am sorry. " * 20)
    assert not is_loop(NORMAL) and not is_loop("42") and not is_loop("")
    listing = "\n".join(f"{i}. **{name}** starred on Broadway in {1950 + 3 * i}." for i, name in
                        enumerate(["Patti LuPone", "Kevin Kline", "Barbra Streisand", "Hugh Jackman", "Meryl Streep",
                                   "Christopher Walken", "Ben Stiller", "Ethan Hawke"], 1))
    assert not is_loop(listing)  # a list repeats its frame, not its content
    assert not any(is_loop(row["output"]) for row in tiny.sample_rows(6, 3))


def test_empty_and_noop_answers_are_flagged_short_real_answers_are_not():
    assert is_noop("") and is_noop("  \n") and is_noop("```\n```") and is_noop("...")
    assert is_noop("What is the capital of France", "What is the capital of France?")
    assert not is_noop("42", "What is 40 + 2?") and not is_noop("🐱😻🎾", "Answer with emojis.")
    assert not is_noop("```\n /\\_/\\\n( o.o )\n > ^ <\n```", "Draw a cat in ASCII art.")  # symbols, not markup
    assert not is_noop("Arts & Culture", "Pick a category: News & Buzz, Travel, Arts & Culture, Style")


def test_response_flags_read_truncation_from_the_scorer_and_the_generation():
    scored = {"generator": ["a", "a", "b"], "instruction": ["q"] * 3, "response": ["Yes.", "No.", "Maybe."],
              "base_loss_truncated": [True, False, False], "response_finish_reason": ["stop", "stop", "length"]}
    flags = response_flags(scored)
    assert flags["truncated"].tolist() == [True, False, True]
    assert flags.attrs["truncation_from"] == ["base_loss_truncated", "response_finish_reason"]
    unknown = response_flags({"generator": ["a"], "instruction": ["q"], "output": ["Yes."]})
    assert math.isnan(unknown["truncated"][0]) and unknown.attrs["truncation_from"] == []
    assert response_flags({"generator": ["a"], "reward": [1.0]})["loop"].isna().all()  # no text: not checked
    chat = {"generator": ["a"], "messages": [[{"role": "user", "content": "Say hi."},
                                              {"role": "assistant", "content": LOOP}]]}
    assert response_flags(chat)["loop"].tolist() == [True]  # the last assistant turn is the response
    several = {"generator": ["a", "a"], "output": ["x", "y"], "instruction": ["q", "q"],
               "base_loss_truncated@small": [False, True], "base_loss_truncated@big": [False, False]}
    assert response_flags(several, loss_column="base_loss@small")["truncated"].tolist() == [False, True]


def test_beta_breakpoints_are_the_hand_computed_crossings():
    segments = pick_segments(three_teachers())
    assert [g for _, _, g in segments] == ["a", "b", "c"]
    assert segments[0][1] == pytest.approx(4 / 15, rel=1e-12) and segments[1][1] == pytest.approx(0.5, rel=1e-12)
    assert segments[2][1] == math.inf
    for beta, pick in ((0.0, "a"), (0.26, "a"), (0.27, "b"), (0.49, "b"), (0.51, "c"), (50.0, "c")):
        assert rank_generators({"generator": ["a", "b", "c"], "reward": [0.9, 0.7, 0.5], "base_loss": [3.0, 1.5, 0.5]},
                               beta=beta, n_bootstrap=0)["generator"][0] == pick


def test_beta_sensitivity_says_where_the_pick_holds_and_flags_a_fragile_one():
    steady = beta_sensitivity(three_teachers(beta=1.0), 1.0)
    assert steady["line"] == "β: the pick c holds for β ≥ 0.5; below 0.5 it is b; reward alone (β = 0): a"
    assert not steady["fragile"] and steady["reward_top1"] == "a"
    fragile = beta_sensitivity(three_teachers(beta=0.4), 0.4)
    assert fragile["line"] == ("β: the pick b holds for β in [0.267, 0.5]; below 0.267 it is a; "
                               "at β ≥ 0.5 it is c; reward alone (β = 0): a") and fragile["fragile"]
    audited = audit_leaderboard(three_teachers(beta=0.4), {"generator": ["a", "b", "c"]})
    assert any(w.startswith("fragile pick: the pick b holds for β in [0.267, 0.5]") for w in
               audited.attrs["car"]["audit"]["warnings"])
    dominant = beta_sensitivity(rank_generators({"generator": ["a", "b"], "reward": [0.9, 0.5],
                                                 "base_loss": [1.0, 2.0]}, n_bootstrap=0), 1.0)
    assert dominant["line"] == "β: the pick a holds for every β ≥ 0 (it is also the reward's top-1)"
    assert not dominant["fragile"]


def test_agreement_top1_and_kendall_tau_by_hand():
    # rsr = mean base_rank / mean loss: a 6/3 = 2, b 1.5/1.5 = 1, c 1.5/0.5 = 3 (b best: lower is better).
    table = three_teachers(beta=1.0, base_rank=[6.0, 1.5, 1.5])
    result = signal_agreement(table)
    assert result["top1"] == {"CAR": "c", "reward": "a", "RSR": "b", "likelihood": "c"} and not result["agree"]
    tau = result["kendall_tau"]
    # CAR c > b > a; reward a > b > c (every pair discordant); likelihood c > b > a; RSR b > a > c: 1 of 3 concordant.
    assert tau["CAR~reward"] == -1.0 and tau["CAR~likelihood"] == 1.0
    assert tau["CAR~RSR"] == pytest.approx(-1 / 3, abs=1e-4) and tau["reward~RSR"] == pytest.approx(1 / 3, abs=1e-4)
    audited = audit_leaderboard(table, {"generator": ["a", "b", "c"]})
    warnings = audited.attrs["car"]["audit"]["warnings"]
    assert "signals disagree on the top-1: CAR c, reward a, RSR b, likelihood c" in warnings
    dominant = audit_leaderboard(rank_generators({"generator": ["a", "b"], "reward": [0.9, 0.5],
                                                  "base_loss": [1.0, 2.0], "base_rank": [1.0, 4.0]}, n_bootstrap=0),
                                 {"generator": ["a", "b"]})
    assert signal_agreement(dominant)["agree"] and dominant.attrs["car"]["audit"]["warnings"] == []


def _word_tokenizer(words):
    backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator([" ".join(words)], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def test_same_family_compares_vocabularies_and_falls_back_to_names(tmp_path, tokenizer):
    other = _word_tokenizer(["alpha", "beta", "gamma", "delta"])
    assert vocabulary_overlap(tokenizer, tokenizer) == 1.0 and vocabulary_overlap(tokenizer, other) < 0.01
    tokenizer.save_pretrained(tmp_path / "student")
    found = same_family(str(tmp_path / "student"), {"own": str(tmp_path / "student"), "other": other})
    assert found["own"] == {"same": True, "by": "tokenizer", "detail": 1.0}
    assert found["other"]["same"] is False and found["other"]["by"] == "tokenizer"
    by_name = same_family("google/gemma-3-270m", {"gemma-2b-it": "gemma-2b-it", "claude-2.1": "claude-2.1"})
    assert by_name["gemma-2b-it"] == {"same": True, "by": "name", "detail": "gemma"}
    assert by_name["claude-2.1"]["same"] is False


def test_the_leaderboard_gets_the_columns_and_warnings_only_for_what_triggered(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path / "student")
    rows = []
    for i in range(10):  # "loopy": 2 loops in 10 (20%); "cut": 1 truncated in 25 (4% < 5%: no warning)
        rows.append({"generator": "loopy", "instruction": f"q{i}", "response": LOOP if i < 2 else NORMAL,
                     "reward": 0.8, "base_loss": 1.0, "base_loss_truncated": False})
    for i in range(25):
        rows.append({"generator": "cut", "instruction": f"q{i}", "response": NORMAL, "reward": 0.5, "base_loss": 2.0,
                     "base_loss_truncated": i == 0,
                     "response_provenance": json.dumps({"teacher": str(tmp_path / "student")})})
    frame = pd.DataFrame(rows)
    table = rank_generators(frame, n_bootstrap=0, config={"base_model": str(tmp_path / "student")})
    audited = audit_leaderboard(table, frame)
    got = audited.set_index("generator")
    assert got.loc["loopy", "loop_share"] == 0.2 and got.loc["loopy", "degenerate_share"] == 0.2
    assert got.loc["cut", "truncated_share"] == 0.04 < DEGENERATE_WARN and got.loc["cut", "loop_share"] == 0.0
    assert bool(got.loc["cut", "same_family"]) and not bool(got.loc["loopy", "same_family"])
    warnings = audited.attrs["car"]["audit"]["warnings"]
    assert warnings == [
        "loopy (the CAR pick): 20% of its responses are degenerate (loops 20%)",
        "cut: same family as the student (100% shared vocabulary): its loss can be low for reasons that are not "
        "quality",
    ]
    text = audit_markdown(audited)
    assert text.startswith("Signal audit:\n- β: the pick loopy holds for every β ≥ 0")
    assert "Warnings:\n- loopy" in text


def test_teachers_with_the_same_figures_share_one_warning_line():
    rows = [{"generator": g, "instruction": f"q{i}", "response": LOOP if i == 0 else NORMAL, "reward": r,
             "base_loss": 1.0} for g, r in (("x", 0.9), ("y", 0.8), ("z", 0.7)) for i in range(5 if g != "z" else 4)]
    frame = pd.DataFrame(rows)
    warnings = audit_leaderboard(rank_generators(frame, n_bootstrap=0), frame).attrs["car"]["audit"]["warnings"]
    assert warnings == ["x (the CAR pick), y: 20% of their responses are degenerate (loops 20%)",
                        "z: 25% of its responses are degenerate (loops 25%)"]


def test_car_hf_rank_prints_the_audit_and_the_card_carries_it(tmp_path, hf_cache, capsys):
    rows = tiny.sample_rows(5, 3)
    for i, row in enumerate(rows):
        row["base_loss"] = 1.0 + 0.1 * (i % 3)
        if row["generator"] == "gen-1" and row["instruction_id"] < 2:
            row["output"] = LOOP  # 2 of 5: 40%
    path = tmp_path / "scored.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ranking"
    assert main(["rank", str(path), "--reward-column", "judge_preference", "--bootstrap", "0",
                 "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Warnings:\n- gen-1" in printed and "40% of its responses are degenerate (loops 40%)" in printed
    table = pd.read_csv(out / "leaderboard.csv").set_index("generator")
    assert table.loc["gen-1", "loop_share"] == 0.4 and table.loc["gen-0", "loop_share"] == 0.0
    config = json.loads((out / "car_config.json").read_text())
    assert any("gen-1" in w for w in config["audit"]["warnings"])
    dry = tmp_path / "upload"
    assert main(["push", str(out), "me/audit-test", "--dry-run", str(dry)]) == 0
    card = (dry / "README.md").read_text()
    warnings = card.split("## Warnings", 1)[1].split("\n## ", 1)[0]
    assert "- gen-1: 40% of its responses are degenerate (loops 40%)" in warnings
    assert "`audit`" not in card.split("## Scoring configuration", 1)[1].split("\n## ", 1)[0]
    assert "`loop_share`" in card  # the legend explains the columns
    assert main(["rank", str(path), "--reward-column", "judge_preference", "--teacher-model", "gen-0"]) == 2
    assert "--teacher-model 'gen-0': expected GENERATOR=MODEL" in capsys.readouterr().err


def test_the_pilot_report_and_card_show_the_pools_audit(tmp_path):
    from car_hf.evaluation.pilot_report import build_report
    from test_pilot_report import CONFIG, N_ITEMS, evaluation_of

    rows = [{"generator": name, "instruction": f"q{i}", "response": LOOP if name == "a" and i < 2 else NORMAL,
             "reward": reward, "base_loss": loss} for name, reward, loss in (("a", 0.9, 1.0), ("b", 0.6, 1.5))
            for i in range(6)]
    frame = pd.DataFrame(rows)
    table = audit_leaderboard(rank_generators(frame, n_bootstrap=0), frame)
    results = {name: evaluation_of(name, [1] * count + [0] * (N_ITEMS - count))
               for name, count in (("(untuned student)", 5), ("a", 30), ("b", 20))}
    cost = {name: {"train_seconds": 1.0, "eval_seconds": 1.0} for name in results}
    cost["total"] = {"compute_seconds": 2.0, "wall_seconds": 3.0, "processes": 1, "device": "cpu"}
    report = build_report(table, [("a", "chosen by the user"), ("b", "chosen by the user")], results,
                          measure="accuracy", baseline="(untuned student)", budget={"n_instructions": 6,
                                                                                    "n_heldout": N_ITEMS},
                          cost=cost, evaluation=CONFIG)
    text = report.to_markdown()
    assert "### Signal audit of the pool's leaderboard\n\n- β: the pick a holds for every β ≥ 0" in text
    assert "Warnings:\n- a (the CAR pick): 33% of its responses are degenerate (loops 33%)" in text
    assert report.teachers.set_index("teacher").loc["a", "loop_share"] == pytest.approx(1 / 3)
    folder = report.save(tmp_path / "pilot")
    assert "33% of its responses are degenerate" in (folder / "README.md").read_text()
    assert json.loads((folder / "report.json").read_text())["audit"]["warnings"] == [
        "a (the CAR pick): 33% of its responses are degenerate (loops 33%)"]
    unaudited = build_report(rank_generators(frame, n_bootstrap=0), [("a", "x"), ("b", "y")], results,
                             measure="accuracy", baseline="(untuned student)",
                             budget={"n_instructions": 6, "n_heldout": N_ITEMS}, cost=cost, evaluation=CONFIG)
    assert "Signal audit" not in unaudited.to_markdown()


def test_the_documented_audit_command_runs_as_written_on_tiny_data(tmp_path):
    from datasets import Dataset

    doc = (ROOT / "docs" / "AUDIT.md").read_text()
    command = re.search(r"```bash\n(.+?)\n```", doc, re.S).group(1).strip()
    assert command.startswith("python bench/audit_real.py")
    rows = tiny.sample_rows(4, 3)
    rows[0]["output"] = LOOP  # gen-0 at instruction 0
    zoo = tmp_path / "zoo.jsonl"
    zoo.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scored = pd.DataFrame(rows).assign(**{"base_loss@small": [1.0 + 0.1 * (i % 3) for i in range(12)],
                                          "base_loss@big": [2.0 - 0.1 * (i % 3) for i in range(12)]})
    scored.to_parquet(tmp_path / "scored.parquet")
    pool = [{"generator": g, "instruction": f"q{i}", "response": LOOP if g == "t1" and i == 0 else NORMAL,
             "reward": r, "base_loss": loss} for g, r, loss in (("t1", 0.9, 2.0), ("t2", 0.5, 0.5)) for i in range(4)]
    Dataset.from_list(pool).save_to_disk(str(tmp_path / "pool"))
    argv = shlex.split(command) + ["--zoo", str(zoo), "--zoo-scored", str(tmp_path / "scored.parquet"),
                                   "--pilot-pool", str(tmp_path / "pool"), "--out", str(tmp_path / "AUDIT.md")]
    done = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = (tmp_path / "AUDIT.md").read_text()
    assert re.search(r"\| `gen-0` +\| 4 +\| 1 \(25.0%\) +\| 0 \(0.0%\) +\| 0 +\|", written)
    assert "#### Student `small`" in written and "#### Student `big`" in written
    assert "- gen-0 (the CAR pick): 25% of its responses are degenerate (loops 25%)" in written
    # The pool: t1 leads up to β = (0.9 - 0.5) / (0.5 * 2 - 0.9 * 0.5) = 0.727, within a factor 2 of β = 1.
    assert "- t1: 25% of its responses are degenerate (loops 25%)" in written
    assert "- fragile pick: the pick t2 holds for β ≥ 0.727; below 0.727 it is t1" in written

"""The teachers × students matrix (car_hf.ranking.matrix), its pictures (car_hf.plots.matrix), its card section and
``car-hf rank --base-model A --base-model B``."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import Dataset, load_from_disk

import tiny
from car_hf.cli import main
from car_hf.core.errors import ConfigError, InputError
from car_hf.core.students import student_view
from car_hf.plots.matrix import UNDECIDED_HATCH, plot_matrix_heatmap, plot_matrix_iso_car
from car_hf.publishing.cards.dataset import dataset_card
from car_hf.ranking.leaderboard import bootstrap_weights, rank_generators
from car_hf.ranking.matrix import Matrix, rank_matrix

@pytest.fixture(autouse=True)
def restore_global_state():
    """bench/matrix_real.py (run in-process below) quiets the stack for its report: put it back for later tests."""
    import datasets
    import torch
    import transformers

    threads, verbosity, bars = torch.get_num_threads(), transformers.logging.get_verbosity(), \
        datasets.is_progress_bar_enabled()
    yield
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity(verbosity)
    (datasets.enable_progress_bars if bars else datasets.disable_progress_bars)()


# 4 instructions × 3 teachers; rewards shared, losses per student. Student "small" fits teacher "t-short" best,
# student "big" fits "t-long": the winner differs by student.
REWARD = {"t-long": [0.9, 0.7, 0.8, 0.6], "t-mid": [0.6, 0.5, 0.7, 0.6], "t-short": [0.5, 0.4, 0.6, 0.5]}
LOSS = {
    "small": {"t-long": [3.0, 2.8, 3.2, 3.0], "t-mid": [1.6, 1.8, 1.7, 1.5], "t-short": [0.5, 0.7, 0.6, 0.6]},
    "big": {"t-long": [0.9, 1.1, 1.0, 1.0], "t-mid": [1.0, 1.2, 1.1, 0.9], "t-short": [1.5, 1.4, 1.6, 1.5]},
}


def scored_rows() -> dict:
    rows = {"instruction_id": [], "generator": [], "reward": [], "base_loss@small": [], "base_loss@big": []}
    for i in range(4):
        for teacher in REWARD:
            rows["instruction_id"].append(i)
            rows["generator"].append(teacher)
            rows["reward"].append(REWARD[teacher][i])
            rows["base_loss@small"].append(LOSS["small"][teacher][i])
            rows["base_loss@big"].append(LOSS["big"][teacher][i])
    return rows


def car(teacher: str, student: str) -> float:
    return np.mean(REWARD[teacher]) / (1 + np.mean(LOSS[student][teacher]))


def test_winner_differs_by_student_and_the_regret_is_the_hand_computed_one():
    m = rank_matrix(scored_rows(), n_bootstrap=0)
    # by hand: small: t-short .5/1.6=.3125, t-mid .6/2.65=.2264, t-long .75/4=.1875; big: t-long .75/2=.375,
    # t-mid .6/2.05=.2927, t-short .5/2.5=.2
    assert car("t-short", "small") == pytest.approx(0.3125) and car("t-long", "big") == pytest.approx(0.375)
    assert m.winners == {"small": "t-short", "big": "t-long"} and m.winner_differs
    cells = m.cells.set_index(["student", "generator"])
    for student in LOSS:
        for teacher in REWARD:
            assert cells.loc[(student, teacher), "car"] == pytest.approx(car(teacher, student))
    assert m.pivot("rank").loc[["t-short", "t-mid", "t-long"]].values.tolist() == [[1, 3], [2, 2], [3, 1]]
    # relative CAR: t-long (.6, 1) mean .8; t-mid (.7245, .7805) mean .7525; t-short (1, .5333) mean .7667
    assert m.common == "t-long"
    assert m.teachers == ["t-long", "t-short", "t-mid"]
    regret = m.regret.set_index("student")
    assert regret.loc["small", "regret"] == pytest.approx(0.3125 - 0.1875)
    assert regret.loc["small", "regret_rel"] == pytest.approx(0.4)
    assert regret.loc["big", "regret"] == 0.0
    # the minimax rule: the largest relative regret is .4 (t-long), .2755 (t-mid), .4667 (t-short) -> t-mid
    minimax = rank_matrix(scored_rows(), n_bootstrap=0, common="minimax")
    assert minimax.common == "t-mid"
    assert minimax.regret.set_index("student")["regret"].to_dict() == pytest.approx(
        {"small": 0.3125 - 0.6 / 2.65, "big": 0.375 - 0.6 / 2.05})
    with pytest.raises(ConfigError, match="common='best'"):
        rank_matrix(scored_rows(), n_bootstrap=0, common="best")


def test_each_cell_is_that_students_leaderboard_row():
    m = rank_matrix(scored_rows(), n_bootstrap=300, seed=3)
    alone = rank_generators({"instruction_id": scored_rows()["instruction_id"], "generator": scored_rows()["generator"],
                             "reward": scored_rows()["reward"], "base_loss": scored_rows()["base_loss@big"]},
                            n_bootstrap=300, seed=3)
    cells = m.cells[m.cells["student"] == "big"].reset_index(drop=True)
    for column in ("generator", "car", "car_low", "car_high", "p_best", "rank_low", "rank_high"):
        assert cells[column].tolist() == alone[column].tolist(), column


def test_paired_intervals_use_the_same_instruction_resamples_for_every_cell():
    rows = scored_rows()
    rows["base_loss@twin"] = list(rows["base_loss@small"])  # a student identical to "small"
    m = rank_matrix(rows, n_bootstrap=400, seed=7)
    # identical students: identical draws, so identical intervals and p_best (independent resamples would differ)
    np.testing.assert_array_equal(m.draws["twin"], m.draws["small"])
    twin, small = (m.cells[m.cells.student == s].set_index("generator") for s in ("twin", "small"))
    pd.testing.assert_frame_equal(twin.drop(columns="student"), small.drop(columns="student"))
    # by construction: the draws of EVERY student are those of one set of resamples of the 4 instructions
    weights = bootstrap_weights(4, 400, seed=7)
    for student, losses in (("small", LOSS["small"]), ("big", LOSS["big"])):
        for k, teacher in enumerate(m.teachers):
            r = weights @ np.array(REWARD[teacher]) / 4
            loss = weights @ np.array(losses[teacher]) / 4
            np.testing.assert_allclose(m.draws[student][:, k], r / (1 + loss))
    # the cells' intervals are the percentiles of those same draws
    big = m.cells[m.cells.student == "big"].set_index("generator")
    for k, teacher in enumerate(m.teachers):
        assert big.loc[teacher, "car_low"] == pytest.approx(np.nanpercentile(m.draws["big"][:, k], 2.5))
    # the regret interval: per resample, the best CAR minus the common teacher's, under the same resample
    assert m.common == "t-short"  # two of the three students fit t-short best now
    common = m.teachers.index(m.common)
    big_regret = m.draws["big"].max(axis=1) - m.draws["big"][:, common]
    row = m.regret.set_index("student").loc["big"]
    assert (row["regret_low"], row["regret_high"]) == pytest.approx(tuple(np.percentile(big_regret, [2.5, 97.5])))
    assert row["regret_low"] > 0  # t-short is worse than t-long for "big" on every instruction of these rows
    winners = np.stack([m.draws[s].argmax(axis=1) for s in m.students])
    assert m.attrs["p_winner_differs"] == pytest.approx(np.mean(np.any(winners != winners[:1], axis=0)))
    assert m.attrs["p_winner_differs"] == 1.0


def test_students_given_by_model_id_and_bad_student_lists():
    m = rank_matrix(scored_rows(), ["org/small", "big"], n_bootstrap=0)
    assert m.students == ["small", "big"]
    with pytest.raises(ConfigError, match="'small' twice"):
        rank_matrix(scored_rows(), ["small", "org/small"], n_bootstrap=0)
    with pytest.raises(InputError, match="student 'tiny' has no column 'base_loss@tiny'"):
        rank_matrix(scored_rows(), ["small", "tiny"], n_bootstrap=0)
    with pytest.raises(InputError, match=r"no per-student loss columns"):
        rank_matrix({"generator": ["a"], "reward": [1.0], "base_loss": [1.0]})


def test_a_student_missing_on_some_rows_is_an_error_naming_the_student_and_the_rows():
    rows = scored_rows()
    rows["base_loss@big"][4] = None
    rows["base_loss@big"][7] = None
    rows["base_loss@small"][5] = float("nan")  # a NaN is a value (an unscorable response), not a missing row
    with pytest.raises(InputError) as error:
        rank_matrix(Dataset.from_dict(rows), n_bootstrap=0)
    message = str(error.value)
    assert "rows [4, 7]" in message and "'base_loss@big'" in message and "student 'big'" in message
    assert "no row was dropped" in message
    rows["base_loss@big"][4] = rows["base_loss@big"][7] = 1.0
    m = rank_matrix(Dataset.from_dict(rows), n_bootstrap=0)
    assert m.cells.set_index(["student", "generator"]).loc[("small", "t-short"), "n_scored"] == 3


def test_markdown_write_read_and_the_card_carry_the_matrix(tmp_path):
    m = rank_matrix(scored_rows(), n_bootstrap=200)
    text = m.markdown()
    assert [c.strip() for c in text.splitlines()[0].split("|")[1:-1]] == [
        "generator \\ student", "small", "big", "mean relative CAR"]
    assert text.count("★") == 3  # two winners' cells and the legend line
    assert "The winner differs by student" in text and "t-long" in text
    paths = m.write(tmp_path / "out")
    back = Matrix.read(tmp_path / "out")
    assert [p.name for p in paths] == ["matrix.md", "matrix.csv", "matrix_regret.csv", "matrix.json"]
    assert back.winners == m.winners and back.common == m.common and back.teachers == m.teachers
    assert back.markdown() == text
    ds = Dataset.from_dict(scored_rows())
    card = dataset_card(ds, scoring_config={"beta": 1.0, "base_model": ["org/small", "org/big"]}, matrix=m)
    assert "## Teachers × students" in card.text and text.splitlines()[2] in card.text
    assert card.data["car_hf"]["matrix"]["winners"] == {"small": "t-short", "big": "t-long"}
    assert card.data["car_hf"]["matrix"]["common"] == "t-long"
    assert "## Teachers × students" not in dataset_card(ds, scoring_config={"beta": 1.0}).text


def test_heatmap_marks_winners_and_undecided_cells_and_the_iso_car_plot_has_a_marker_per_student(tmp_path):
    m = rank_matrix(scored_rows(), n_bootstrap=200)
    fig = plot_matrix_heatmap(m, path=tmp_path / "heat.png")
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert sum("★" in t for t in texts) == 2
    undecided = int((~m.cells["decided"]).sum())
    hatched = [p for p in fig.axes[0].patches if p.get_hatch() == UNDECIDED_HATCH]
    assert len(hatched) == undecided and sum("≈" in t for t in texts) == undecided
    assert (tmp_path / "heat.png").stat().st_size > 10_000
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == "t-long (common)"
    iso = plot_matrix_iso_car(m, path=tmp_path / "iso.png")
    markers = [c for c in iso.axes[0].collections if len(c.get_offsets()) == 1]
    assert len(markers) == 6  # 3 teachers × 2 students
    red = [c for c in markers if np.allclose(c.get_edgecolor()[0][:3], (0xc8 / 255, 0x10 / 255, 0x2e / 255))]
    np.testing.assert_allclose(sorted(tuple(c.get_offsets()[0]) for c in red), [(0.6, 0.5), (1.0, 0.75)])


def test_cli_rank_with_two_students_prints_and_writes_the_matrix(tmp_path, capsys):
    data = tmp_path / "scored.parquet"
    pd.DataFrame(scored_rows()).to_parquet(data)
    out = tmp_path / "matrix"
    assert main(["rank", str(data), "--base-model", "small", "--base-model", "big", "--bootstrap", "100",
                 "--output-dir", str(out), "--plot"]) == 0
    printed = capsys.readouterr().out
    assert "The winner differs by student" in printed and "★" in printed
    summary = json.loads((out / "matrix.json").read_text())
    assert summary["winners"] == {"small": "t-short", "big": "t-long"} and summary["n_bootstrap"] == 100
    assert (out / "matrix.png").stat().st_size > 10_000 and (out / "matrix_iso_car.png").is_file()
    assert len(load_from_disk(str(out / "scored"))) == 12
    dry = tmp_path / "upload"
    assert main(["push", str(out), "me/matrix", "--dry-run", str(dry)]) == 0
    card = (dry / "README.md").read_text()
    assert "## Teachers × students" in card and "t-short" in card


def test_cli_rank_scores_two_tiny_students_one_at_a_time(tmp_path, tiny_model_dir, gemma3_lm, tokenizer, capsys):
    second = tiny.save_tiny(gemma3_lm, tokenizer, tmp_path / "gemma-tiny")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in tiny.sample_rows(4, 3)))
    out = tmp_path / "matrix"
    assert main(["rank", str(data), "--base-model", f"llama={tiny_model_dir}", "--base-model", f"gemma={second}",
                 "--reward-column", "judge_preference", "--bootstrap", "50", "--output-dir", str(out)]) == 0
    cells = pd.read_csv(out / "matrix.csv")
    assert sorted(set(cells.student)) == ["gemma", "llama"] and len(cells) == 6
    scored = load_from_disk(str(out / "scored"))
    assert {"base_loss@llama", "base_loss@gemma", "reward"} <= set(scored.column_names)
    by_student = cells.set_index(["student", "generator"])
    alone = rank_generators(student_view(scored, "gemma"), n_bootstrap=0)
    for row in alone.to_dict("records"):
        assert by_student.loc[("gemma", row["generator"]), "car"] == pytest.approx(row["car"])


def test_the_real_run_report_ranks_a_scored_file_and_writes_the_docs(tmp_path):
    """``bench/matrix_real.py --report --write`` on a scored file laid out like the real run's (scoring needs the
    real models: docs/MATRIX.md's run)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import matrix_real

    rows = scored_rows()
    frame = pd.DataFrame({"instruction_id": rows["instruction_id"], "generator": rows["generator"],
                          "reward": rows["reward"]})
    for old, label in (("small", "SmolLM2-135M-Instruct"), ("big", "gemma-3-270m")):
        frame[f"base_loss@{label}"] = rows[f"base_loss@{old}"]
        frame[f"base_loss_tokens@{label}"] = 40
        frame[f"base_loss_truncated@{label}"] = False
    frame.to_parquet(tmp_path / "scored.parquet")
    (tmp_path / "scored.json").write_text(json.dumps({"scoring_seconds": {"gemma-3-270m": 120.0}}))
    assert matrix_real.main(["--report", "--write", "--out", str(tmp_path), "--docs-dir", str(tmp_path / "docs"),
                             "--bootstrap", "100"]) == 0
    text = (tmp_path / "docs" / "MATRIX.md").read_text()
    assert "`SmolLM2-135M-Instruct` → **t-short**, `gemma-3-270m` → **t-long**" in text
    assert "The winner **differs** by student" in text and "Best common teacher" in text
    assert "| gemma-3-270m | 1.183 | 40 | 0 | 2.0 min (10.00 s/row) |" in text
    assert (tmp_path / "docs" / "matrix-heatmap.png").stat().st_size > 10_000
    assert Matrix.read(tmp_path / "matrix").winners == {"SmolLM2-135M-Instruct": "t-short", "gemma-3-270m": "t-long"}


def test_the_real_run_scores_zoo_rows_per_student_and_resumes_from_its_cache(tmp_path, tiny_model_dir, capfd):
    """``bench/matrix_real.py``'s scoring path, with the tiny model as the student (the real run: docs/MATRIX.md)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import matrix_real

    if not matrix_real.zoo_path().is_file():
        pytest.skip("the shared AlpacaEval zoo is not here")
    argv = ["--instructions", "1", "--students", str(tiny_model_dir), "--out", str(tmp_path), "--threads", "1"]
    assert matrix_real.main(argv) == 0
    frame = pd.read_parquet(tmp_path / "scored.parquet")
    label = tiny_model_dir.name
    assert len(frame) == 10 and frame["generator"].nunique() == 10 and frame["instruction_id"].nunique() == 1
    assert "gpt4_1106_preview" not in set(frame["generator"])
    assert frame[f"base_loss@{label}"].between(0.1, 20).all() and (frame[f"base_loss_tokens@{label}"] > 0).all()
    assert "rows 0-9 in" in capfd.readouterr().err
    assert matrix_real.main(argv) == 0  # the second run reads the cache: nothing is scored again
    assert "rows 0-9 in" not in capfd.readouterr().err
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "scored.parquet"), frame)


def test_each_student_gets_its_own_signal_audit():
    """The audit runs per student: loops are the teacher's (the same under both), the signals' agreement is each
    student's own — under "big" CAR, reward and likelihood all pick t-long, under "small" CAR picks t-short."""
    rows = scored_rows()
    loop = " ".join(["the same words again and again"] * 20)
    rows["output"] = [loop if g == "t-mid" else f"answer {i} from {g}, in a few plain words"
                      for i, g in zip(rows["instruction_id"], rows["generator"])]
    rows["instruction"] = [f"question {i}" for i in rows["instruction_id"]]
    matrix = rank_matrix(rows, n_bootstrap=0)
    assert set(matrix.attrs["audit"]) == {"small", "big"}
    loops = matrix.cells.set_index(["student", "generator"])["loop_share"]
    assert loops[("small", "t-mid")] == loops[("big", "t-mid")] == 1.0 and loops[("big", "t-long")] == 0.0
    small, big = matrix.attrs["audit"]["small"]["warnings"], matrix.attrs["audit"]["big"]["warnings"]
    assert any("disagree" in w for w in small) and not any("disagree" in w for w in big)
    assert any("t-mid" in w for w in big)
    text = matrix.markdown()
    assert "Signal audit, student small:" in text and "Signal audit, student big:" in text

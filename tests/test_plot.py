"""The iso-CAR picture: files written, panels, axis units, labels in the picture, iso-CAR curve math, bad input.

The 11 generators are the real AlpacaEval zoo with its judge_preference means as rewards (ten of them
within 0.02-0.16, one at 0.5: a crowded picture) and synthetic base losses 1.5-3.5 nats/token.
"""

import doctest
import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import car_hf.plots.plot
from car_hf.plots.labels import MARKER_SIZE
from car_hf.plots.plot import iso_car_levels, plot_beta_curve, plot_ranking
from car_hf.ranking.leaderboard import fit_beta, rank_generators

ZOO = Path("/work/shared/data/alpaca_eval_zoo")
BETA = 0.5
BASE = "google/gemma-3-270m"
CI_COLUMNS = ["car_low", "car_high", "reward_low", "reward_high", "base_loss_low", "base_loss_high"]


@pytest.fixture(scope="module")
def examples() -> pd.DataFrame:
    """Per-example rows: real judge_preference, synthetic base_loss, 3 NaN rewards for gemma-7b-it."""
    zoo = pd.read_json(ZOO / "zoo.jsonl.gz", lines=True)[["instruction_id", "generator", "judge_preference"]]
    rng = np.random.default_rng(0)
    generators = sorted(zoo["generator"].unique())
    mean_loss = dict(zip(generators, rng.permutation(np.linspace(1.5, 3.5, len(generators)))))
    zoo["base_loss"] = zoo["generator"].map(mean_loss) + rng.normal(0, 0.4, len(zoo))
    zoo.loc[zoo.index[zoo["generator"] == "gemma-7b-it"][:3], "judge_preference"] = np.nan
    return zoo


@pytest.fixture(scope="module")
def table(examples) -> pd.DataFrame:
    return rank_generators(examples, beta=BETA, reward_column="judge_preference", n_bootstrap=200,
                           config={"base_model": BASE})


@pytest.fixture(scope="module")
def drawn(table, examples, tmp_path_factory):
    """The full picture (table with intervals + examples), drawn once for the geometry tests."""
    path = tmp_path_factory.mktemp("plot") / "ranking.png"
    return plot_ranking(table, examples, path=path), path


def _point_labels(ax):
    return [t for t in ax.texts if t.get_text().startswith("#")]


def test_table_is_the_crowded_case_the_picture_must_handle(table):
    assert len(table) == 11
    rewards = np.sort(table["reward"].to_numpy())
    assert rewards[-1] == pytest.approx(0.5) and rewards[-2] < 0.2  # ten points in the bottom third
    assert table.loc[table["generator"] == "gemma-7b-it", "n_scored"].item() == 802


def test_full_picture_png_two_panels_units_and_title(drawn):
    fig, path = drawn
    assert path.stat().st_size > 50_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 2
    left, right = fig.axes
    assert "nats/token" in left.get_xlabel() and BASE in left.get_xlabel()
    assert "judge_preference" in left.get_ylabel()
    title = fig.get_suptitle()
    assert BASE in title and "β = 0.5" in title and "judge_preference" in title
    assert "95% bootstrap CI" in left.get_title()
    assert len(left.containers) == 11  # one error bar per generator
    assert min(t.get_fontsize() for t in left.texts + right.get_yticklabels()) >= 8


def test_distribution_panel_in_rank_order_with_nan_counted(drawn, table):
    fig, _ = drawn
    ticks = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    expected = [f"#{r} {g} (n={805 - 3 * (g == 'gemma-7b-it')}{', 3 NaN' if g == 'gemma-7b-it' else ''})"
                for r, g in zip(table["rank"], table["generator"])]
    assert ticks == expected
    assert "#5 gemma-7b-it (n=802, 3 NaN)" in ticks


def test_best_generator_highlighted(drawn, table):
    fig, _ = drawn
    best = table["generator"].iloc[0]
    label = next(t for t in _point_labels(fig.axes[0]) if t.get_text() == f"#1 {best}")
    assert label.get_fontweight() == "bold" and label.get_color() == car_hf.plots.plot.BEST_COLOR
    assert fig.axes[1].get_yticklabels()[0].get_color() == car_hf.plots.plot.BEST_COLOR


def test_labels_do_not_overlap_each_other_markers_or_leave_the_axes(drawn, table):
    fig, _ = drawn
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    labels = _point_labels(ax)
    assert sorted(t.get_text() for t in labels) == sorted(f"#{r} {g}" for r, g in zip(table["rank"], table["generator"]))
    boxes = [t.get_window_extent(renderer) for t in ax.texts]  # point labels and curve labels
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    frame = ax.get_window_extent(renderer)
    for box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
    radius = MARKER_SIZE / 2 * fig.dpi / 72
    points = ax.transData.transform(table[["base_loss", "reward"]].to_numpy())
    for box in (t.get_window_extent(renderer) for t in labels):
        for px, py in points:
            assert not (box.x0 - radius < px < box.x1 + radius and box.y0 - radius < py < box.y1 + radius)


def test_iso_car_curves_follow_r_equals_c_times_one_plus_beta_l(drawn, table):
    fig, _ = drawn
    ax = fig.axes[0]
    curves = [line for line in ax.lines if len(line.get_xdata()) > 2]
    labels = {t.get_text() for t in ax.texts if t.get_text().startswith("CAR ")}
    assert len(curves) >= 4
    levels = []
    for line in curves:
        loss, reward = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        c = reward[0] / (1 + BETA * loss[0])
        sample = np.linspace(0, len(loss) - 1, 7).astype(int)
        np.testing.assert_allclose(reward[sample], c * (1 + BETA * loss[sample]), rtol=1e-12)
        levels.append(c)
    # The first curve runs through the best generator, at its CAR; the others are labelled round levels.
    assert levels[0] == pytest.approx(table["car"].iloc[0], rel=1e-12)
    assert f"CAR {table['car'].iloc[0]:.3g} (#1)" in labels
    for c in levels[1:]:
        assert f"CAR {float(f'{c:.6g}'):g}" in labels
    # 1-2-5 levels here: the generators' CAR spans more than a decade, so the crowded low end gets curves.
    assert [float(f"{c:.6g}") for c in levels[1:]] == [0.01, 0.02, 0.05, 0.1]


def test_iso_car_levels_even_and_one_two_five():
    assert iso_car_levels(0.0, (1, 3), (0.0, 0.5)).tolist() == [0.1, 0.2, 0.3, 0.4]
    assert iso_car_levels(1.0, (1, 3), (0.0, 0.8)).tolist() == [0.1, 0.2, 0.3]  # CAR in the box: 0..0.4
    assert iso_car_levels(0.0, (1, 3), (0.0, 0.5), cars=[0.012, 0.4]).tolist() == [0.01, 0.02, 0.05, 0.1, 0.2]


def test_without_examples_or_intervals_one_panel_no_error_bars(table, tmp_path):
    bare = table.drop(columns=CI_COLUMNS)
    path = tmp_path / "sub" / "bare.png"
    fig = plot_ranking(bare, path=path, title="my title")
    assert path.stat().st_size > 30_000
    assert len(fig.axes) == 1 and not fig.axes[0].containers
    assert fig.get_suptitle() == "my title" and "CI" not in fig.axes[0].get_title()
    assert len(_point_labels(fig.axes[0])) == 11


def test_beta_override_reranks_and_recomputes_per_example_car(table, examples):
    fig = plot_ranking(table, examples, beta=0.0)
    by_reward = table.sort_values("reward", ascending=False)["generator"].tolist()
    ticks = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    assert [t.split(" ")[1] for t in ticks] == by_reward
    assert "β = 0 " in fig.get_suptitle()
    horizontal = [line for line in fig.axes[0].lines if len(line.get_xdata()) > 2]
    assert all(np.ptp(line.get_ydata()) == 0 for line in horizontal)  # beta = 0: iso-CAR = iso-reward
    # The right panel's CAR is recomputed with beta = 0: the rewards themselves, so the mean markers
    # (top row first) are the generators' mean rewards, best first.
    means = fig.axes[1].collections[-1].get_offsets()
    top_first = np.asarray(means)[np.argsort(-np.asarray(means)[:, 1])]
    np.testing.assert_allclose(top_first[:, 0], np.sort(table["reward"].to_numpy())[::-1], rtol=1e-9)
    with pytest.raises(ValueError, match="'judge_preference' and 'base_loss'"):
        plot_ranking(table, examples[["generator"]].assign(car=1.0), beta=2.0)


def test_examples_as_datasets_dataset_or_car_column_give_the_same_panel(table, examples):
    from datasets import Dataset

    def ticks(ex):
        return [t.get_text() for t in plot_ranking(table, ex).axes[1].get_yticklabels()]

    expected = ticks(examples)
    assert ticks(Dataset.from_pandas(examples, preserve_index=False)) == expected
    car = examples["judge_preference"] / (1 + BETA * examples["base_loss"])
    assert ticks(examples[["generator"]].assign(car=car)) == expected


def test_group_column_other_than_generator(examples):
    renamed = examples.rename(columns={"generator": "teacher"})
    table = rank_generators(renamed, by="teacher", beta=BETA, reward_column="judge_preference", n_bootstrap=0)
    fig = plot_ranking(table, renamed)
    assert fig.axes[1].get_yticklabels()[0].get_text().startswith("#1 gpt4_1106_preview")


def test_hub_ids_are_shortened_when_unique():
    table = pd.DataFrame({"generator": ["google/gemma-2-9b-it", "meta-llama/Llama-3.1-70B-Instruct"],
                          "reward": [0.6, 0.5], "base_loss": [1.0, 1.2]})
    table["car"] = table["reward"] / (1 + table["base_loss"])
    table["rank"] = [1, 2]
    table.attrs["car"] = {"beta": 1.0, "reward_model": "Skywork/Skywork-Reward-Llama-3.1-8B"}
    fig = plot_ranking(table)
    assert sorted(t.get_text() for t in _point_labels(fig.axes[0])) == ["#1 gemma-2-9b-it", "#2 Llama-3.1-70B-Instruct"]
    assert "Skywork/Skywork-Reward-Llama-3.1-8B" in fig.axes[0].get_ylabel()


def test_generators_without_a_finite_mean_are_listed_not_plotted(table):
    broken = table.copy()
    broken.loc[3, ["reward", "base_loss", "car"]] = math.nan
    fig = plot_ranking(broken)
    assert len(_point_labels(fig.axes[0])) == 10
    assert any(f"not plotted (no finite reward or loss): {table['generator'][3]}" == t.get_text() for t in fig.texts)


def test_bad_inputs_raise_clear_errors(table, examples):
    with pytest.raises(ValueError, match="no rows"):
        plot_ranking(table.iloc[:0])
    with pytest.raises(ValueError, match="base_loss"):
        plot_ranking(table.drop(columns=["base_loss"]))
    no_beta = table.copy()
    no_beta.attrs = {"car": {k: v for k, v in table.attrs["car"].items() if k != "beta"}}
    with pytest.raises(ValueError, match="no beta"):
        plot_ranking(no_beta)
    with pytest.raises(ValueError, match="group column 'generator'"):
        plot_ranking(table, examples.drop(columns=["generator"]))


def test_inconsistent_car_column_warns(table):
    off = table.copy()
    off["car"] = off["car"] * 1.1
    with pytest.warns(UserWarning, match="iso-CAR curves follow"):
        plot_ranking(off)


def test_beta_curve_symlog_with_zero_and_best_marked(table, tmp_path):
    measured = pd.read_csv(ZOO / "zoo.generators.csv").set_index("generator")["lc_win_rate"]
    fit = fit_beta(table, measured)
    path = tmp_path / "beta.png"
    fig = plot_beta_curve(fit.curve["beta"], fit.curve["rho"], fit.beta, path=path)
    assert path.stat().st_size > 20_000
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog" and ax.get_xlim()[0] < 0 < ax.get_xlim()[1]  # beta = 0 on the axis
    assert "Spearman ρ" in ax.get_ylabel() and "β" in ax.get_xlabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("β = 0 (reward only): ρ = ") and legend[1].startswith(f"chosen β = {fit.beta:.3g}")
    # Default best: the highest rho, smallest beta on ties.
    fig = plot_beta_curve([1.0, 0.0, 0.1], [0.7, 0.5, 0.7])
    assert fig.axes[0].get_legend().get_texts()[1].get_text() == "chosen β = 0.1: ρ = 0.700"
    with pytest.raises(ValueError, match=">= 0"):
        plot_beta_curve([-1.0, 1.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="equal"):
        plot_beta_curve([0.0, 1.0], [0.1])


def test_docstring_examples_run():
    assert doctest.testmod(car_hf.plots.plot).failed == 0

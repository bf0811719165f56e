"""Label placement in pixels: no overlaps, determinism, leader lines, curve labels, point footprints."""

import doctest
import itertools

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import car_hf.plots.labels
from car_hf.plots.labels import CAP_SIZE, Curve, label_curves, place_labels, point_boxes


def axes(width=6, height=5, dpi=150, xlim=(0.0, 1.0), ylim=(0.0, 1.0)):
    """Axes with final limits and layout, as the placer needs."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    return ax


def test_place_labels_separates_eleven_close_points_deterministically():
    # Eleven points within 1% of the y range and 10% of the x range: every label must move.
    xs = 2.0 + 0.02 * np.arange(11)
    ys = 0.05 + 0.001 * np.sin(np.arange(11))
    names = [f"#{k + 1} generator-{k}-instruct" for k in range(11)]

    def layout():
        ax = axes(xlim=(1.0, 4.0), ylim=(0.0, 0.1))
        texts = place_labels(ax, xs, ys, names, xerr=np.full((2, 11), 0.01), yerr=np.full((2, 11), 0.002))
        return [t.get_window_extent(ax.figure.canvas.get_renderer()) for t in texts], ax

    boxes, ax = layout()
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    assert [t.get_text() for t in ax.texts] == names
    again, _ = layout()
    assert [b.bounds for b in boxes] == [b.bounds for b in again]
    assert len([line for line in ax.lines if len(line.get_xdata()) == 2]) > 0  # displaced labels get leaders


def test_a_lone_label_sits_right_of_its_point_without_a_leader():
    ax = axes()
    (text,) = place_labels(ax, [0.5], [0.5], ["only"])
    box = text.get_window_extent(ax.figure.canvas.get_renderer())
    px, py = ax.transData.transform((0.5, 0.5))
    marker_half = car_hf.plots.labels.MARKER_SIZE / 2 * 150 / 72
    assert px + marker_half < box.x0 < px + marker_half + 10  # right of the marker, a small gap
    assert box.y0 < py < box.y1  # vertically centred on the point
    assert not ax.lines  # no leader line
    with pytest.raises(ValueError, match="same length"):
        place_labels(ax, [0.1, 0.2], [0.1], ["a", "b"])


def test_labels_keep_off_avoid_boxes():
    ax = axes()
    px, py = ax.transData.transform((0.5, 0.5))
    right = np.array([[px, py - 40, px + 200, py + 40]])  # the spots right of the point are taken
    (text,) = place_labels(ax, [0.5], [0.5], ["label"], avoid=right)
    box = text.get_window_extent(ax.figure.canvas.get_renderer())
    assert box.x1 < px  # moved to the left side


def test_point_boxes_are_marker_and_error_bar_footprints():
    ax = axes(dpi=72)  # 1 point = 1 pixel
    px, py = ax.transData.transform((0.5, 0.5))
    (lo, _), (hi, _) = ax.transData.transform([(0.4, 0.5), (0.7, 0.5)])  # x error bar: -0.1, +0.2
    footprints, parts = point_boxes(ax, [0.5], [0.5], np.array([[0.1], [0.2]]), None, marker_size=6.0)
    np.testing.assert_allclose(parts[0], [px - 3, py - 3, px + 3, py + 3])  # the marker
    np.testing.assert_allclose(parts[1], [lo - CAP_SIZE, py - CAP_SIZE, hi + CAP_SIZE, py + CAP_SIZE])  # the bar
    np.testing.assert_allclose(footprints[0], [lo - CAP_SIZE, py - 3, hi + CAP_SIZE, py + 3])  # their union


def test_curve_labels_avoid_each_other_and_skip_curves_with_no_room():
    ax = axes()
    renderer = ax.figure.canvas.get_renderer()
    x = np.linspace(0, 1, 50)
    rising = Curve("rising", "k", ax.transData.transform(np.column_stack([x, 0.2 + 0.6 * x])), 1.0)
    parallel = Curve("parallel", "k", ax.transData.transform(np.column_stack([x, 0.25 + 0.6 * x])), 1.0)
    hidden = Curve("hidden", "k", np.empty((0, 2)), 1.0)  # not visible: nothing to label
    label_curves(ax, [rising, parallel, hidden], avoid=np.empty((0, 4)))
    texts = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
    assert set(texts) == {"rising", "parallel"}
    assert not texts["rising"].overlaps(texts["parallel"])
    frame = ax.get_window_extent(renderer)
    full = np.array([[frame.x0, frame.y0, frame.x1, frame.y1]])
    label_curves(ax, [Curve("crowded", "k", rising.pixels, 1.0)], avoid=full)  # no free spot anywhere
    assert "crowded" not in [t.get_text() for t in ax.texts]


def test_docstring_examples_run():
    assert doctest.testmod(car_hf.plots.labels).failed == 0

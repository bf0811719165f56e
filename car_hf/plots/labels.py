"""Label placement: each label beside what it names, overlapping no other label, marker or error bar.

:func:`place_labels` labels points (a deterministic greedy search over candidate spots in display pixels, with
leader lines for labels that had to move); :func:`label_curves` labels drawn curves near where they leave the
axes. Both work in pixels, so axis limits and the figure layout must be final before calling them.
:mod:`car_hf.plots.plot` uses them for the iso-CAR picture; they work on any matplotlib axes.

Example:
    >>> from matplotlib.backends.backend_agg import FigureCanvasAgg
    >>> from matplotlib.figure import Figure
    >>> from car_hf.plots.labels import place_labels
    >>> fig = Figure(figsize=(4, 3)); _ = FigureCanvasAgg(fig); ax = fig.subplots()
    >>> _ = ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    >>> texts = place_labels(ax, [0.30, 0.31, 0.32], [0.5, 0.5, 0.5], ["first", "second", "third"])
    >>> boxes = [t.get_window_extent() for t in texts]
    >>> any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    False
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.text import Text
from matplotlib.transforms import Bbox

__all__ = ["Curve", "extents", "label_curves", "place_labels", "point_boxes"]

Boxes = Sequence[Bbox] | np.ndarray  # display-pixel boxes: Bbox objects or (n, 4) x0, y0, x1, y1

FONT_SIZE = 8.5  # points, point labels
MARKER_SIZE = 6.0  # points (diameter); the label placer keeps labels off the markers
CAP_SIZE = 2.0  # points, error-bar caps
HALO = [patheffects.withStroke(linewidth=2.5, foreground="white")]  # keeps text legible over lines


def place_labels(
    ax: Axes,
    xs: Sequence[float],
    ys: Sequence[float],
    labels: Sequence[str],
    *,
    xerr: np.ndarray | None = None,
    yerr: np.ndarray | None = None,
    marker_size: float | Sequence[float] = MARKER_SIZE,
    styles: Sequence[Mapping[str, Any]] | None = None,
    fontsize: float = FONT_SIZE,
    avoid: Boxes = (),
    soft_avoid: Boxes = (),
) -> list[Text]:
    """Label points so that no two labels overlap each other, a marker, an error bar or ``avoid``.

    A deterministic greedy search in pixel space: labels are placed one by one, each taking among
    its free candidate spots (right or left of the point and its error bars, moved up and down in
    third-line steps, or above or below) the one with the least cost: distance from the point, a
    pixel or two of preference for right, then left, then above/below, and one line height for
    crossing ``soft_avoid`` (thin lines such as the iso-CAR curves). The search runs in a few
    orders (as given, by y and by x, both ways) and keeps the layout with the least total cost.
    A label that had to move off its point gets a thin leader line. Axis limits and the figure
    layout must be final before calling (positions are computed in pixels); labels stay inside the
    axes when there is room.

    Args:
        ax: axes whose data coordinates ``xs``, ``ys`` are in.
        xs, ys, labels: the points and their labels.
        xerr, yerr: the points' error bars as drawn, (2, n) lower and upper lengths, or None.
        marker_size: marker diameter(s) in points.
        styles: optional per-label keyword arguments for ``Axes.text`` (color, fontweight, ...).
        fontsize: label font size in points.
        avoid: boxes labels must not cover, besides labels, markers and error bars.
        soft_avoid: boxes labels keep off when a nearby spot allows it.
            Boxes are in display pixels: ``Bbox`` objects or an (n, 4) array of x0, y0, x1, y1.

    Returns:
        The label ``Text`` artists, in the order of ``labels``.

    Example:
        >>> from matplotlib.figure import Figure
        >>> from matplotlib.backends.backend_agg import FigureCanvasAgg
        >>> fig = Figure(); _ = FigureCanvasAgg(fig); ax = fig.subplots()
        >>> _ = ax.set_xlim(0, 1), ax.set_ylim(0, 1)
        >>> a, b = place_labels(ax, [0.5, 0.5], [0.5, 0.5], ["first", "second"])
        >>> bool(a.get_window_extent().overlaps(b.get_window_extent()))
        False
    """
    if not len(xs) == len(ys) == len(labels):
        raise ValueError("place_labels: xs, ys and labels must have the same length")
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    px_per_pt = ax.figure.dpi / 72
    pad = 1.5 * px_per_pt  # why: text extents move by a pixel when snapped; keep a visible gap
    points = ax.transData.transform(np.column_stack([xs, ys]).astype(float))
    footprints, parts = point_boxes(ax, xs, ys, xerr, yerr, marker_size)
    obstacles = np.vstack([parts, extents(avoid)])
    soft = extents(soft_avoid)
    texts = [ax.text(0, 0, label, fontsize=fontsize, ha="left", va="bottom", zorder=6,
                     path_effects=HALO, **(dict(styles[k]) if styles is not None else {}))
             for k, label in enumerate(labels)]
    candidates = []  # per label: spots, cost of each, whether each needs a leader line
    for k, (text, footprint) in enumerate(zip(texts, footprints)):
        size = text.get_window_extent(renderer)
        h = size.height
        spots, preference = _label_spots(*points[k], footprint, size.width, h, 2.5 * px_per_pt,
                                         frame.height)
        distance = _box_distance(spots, points)  # (spots, points)
        own = distance[:, k]
        # Why: a label nearer to another point than to its own would be read as that one's.
        misleading = np.delete(distance, k, axis=1).min(axis=1, initial=np.inf) <= own + h / 2
        px, py = points[k]
        beside = (((spots[:, 1] <= py) & (py <= spots[:, 3]))
                  | ((spots[:, 0] <= px) & (px <= spots[:, 2])))
        leader = misleading | ~beside  # diagonal or ambiguous spots get a leader line
        cost = (own + preference + h * _hits(spots, soft, pad) + 1.5 * h * misleading
                + 0.5 * h * leader)
        candidates.append((spots, cost, leader))

    def layout(order: Sequence[int]) -> tuple[float, dict[int, int]]:
        """Greedy placement in ``order``: total cost and the chosen spot per label."""
        taken, chosen, total = obstacles, {}, 0.0
        for k in order:
            spots, cost, _ = candidates[k]
            free = np.flatnonzero(_free(spots, taken, frame, pad))
            if free.size:
                chosen[k] = free[np.argmin(cost[free])]
                total += cost[chosen[k]]
            else:  # no room left at all: the spot that covers the least, at a prohibitive cost
                chosen[k] = np.argmin(_overlap_area(spots, taken).sum(axis=1))
                total += 1e9
            taken = np.vstack([taken, spots[chosen[k]]])
        return total, chosen

    # Why: greedy placement depends on the order; a few natural orders, best total cost wins.
    n = len(labels)
    orders = [range(n), *(np.argsort(key, kind="stable") for key in
                          (points[:, 1], -points[:, 1], points[:, 0], -points[:, 0]))]
    _, chosen = min((layout(order) for order in orders), key=lambda result: result[0])
    to_data = ax.transData.inverted().transform
    for k, text in enumerate(texts):
        spots, _, leader = candidates[k]
        box = spots[chosen[k]]
        text.set_position(to_data(box[:2]))
        if leader[chosen[k]]:
            # Why: a label moved away from its point must still say which point it names.
            (px, py), (x0, y0, x1, y1) = points[k], box
            end = (x0 if x0 > px else x1, min(max(py, y0 + 2), y1 - 2))
            (ax0, ay0), (ax1, ay1) = to_data((px, py)), to_data(end)
            ax.plot([ax0, ax1], [ay0, ay1], color=text.get_color(), alpha=0.5, linewidth=0.6,
                    zorder=2.5)
    return texts


class Curve:
    """A drawn curve to label (e.g. an iso-CAR curve): its label, colour, visible points in pixels, and boxes
    ``width`` pixels around them, which point labels keep off (``soft_avoid`` of :func:`place_labels`)."""

    def __init__(self, label: str, color: str, pixels: np.ndarray, width: float):
        self.label, self.color, self.pixels = label, color, pixels
        self.boxes = np.hstack([pixels - width, pixels + width])


def label_curves(ax: Axes, curves: Sequence[Curve], avoid: np.ndarray) -> None:
    """Label each curve near where it leaves the axes, in a free spot beside it.

    Free: inside the axes, off ``avoid`` ((n, 4) pixel boxes, e.g. point labels and markers) and off the
    labels of the curves before it. A curve with no free spot stays unlabelled.
    """
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    pad = 1.5 * ax.figure.dpi / 72
    taken = avoid
    to_data = ax.transData.inverted().transform
    for curve in curves:
        if not len(curve.pixels):
            continue
        text = ax.text(0, 0, curve.label, fontsize=8, color=curve.color, ha="left", va="bottom",
                       zorder=5, path_effects=HALO)
        size = text.get_window_extent(renderer)
        ends = curve.pixels[::-1]  # from the exit end: away from the crowded middle
        # Why: left of the curve point, on the side the curve does not run through (above it
        # when the curve rises, below when it falls), so the text never sits on its own line.
        rising = len(ends) < 2 or ends[0, 1] >= ends[-1, 1]
        x0 = ends[:, 0] - size.width - pad
        y0 = ends[:, 1] + pad if rising else ends[:, 1] - pad - size.height
        spots = np.column_stack([x0, y0, x0 + size.width, y0 + size.height])
        choice = np.flatnonzero(_free(spots, taken, frame, pad))
        if not choice.size:  # no free spot: an unlabelled dashed curve beats an overlap
            text.remove()
            continue
        box = spots[choice[0]]
        text.set_position(to_data(box[:2]))
        taken = np.vstack([taken, box])


def point_boxes(ax: Axes, xs: Sequence[float], ys: Sequence[float], xerr: np.ndarray | None,
                yerr: np.ndarray | None, marker_size: float | Sequence[float]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Pixel boxes of the points: each point's footprint (marker ∪ its error bars, (n, 4)) and
    the parts themselves (markers, then bars with their caps, (m, 4)) for overlap tests."""
    px_per_pt = ax.figure.dpi / 72
    centre = np.column_stack([xs, ys]).astype(float)
    half = np.broadcast_to(np.asarray(marker_size, dtype=float) * px_per_pt / 2, len(centre))[:, None]
    pixels = ax.transData.transform(centre)
    footprints = np.hstack([pixels - half, pixels + half])
    parts = [footprints]
    cap = CAP_SIZE * px_per_pt
    for axis, err in enumerate((xerr, yerr)):
        if err is None:
            continue
        low, high = centre.copy(), centre.copy()
        low[:, axis] -= err[0]
        high[:, axis] += err[1]
        bars = np.hstack([ax.transData.transform(low) - cap, ax.transData.transform(high) + cap])
        parts.append(bars)
        footprints = np.hstack([np.minimum(footprints[:, :2], bars[:, :2]),
                                np.maximum(footprints[:, 2:], bars[:, 2:])])
    return footprints, np.vstack(parts)


def extents(boxes: Boxes) -> np.ndarray:
    """Boxes as an (n, 4) array of x0, y0, x1, y1, for vectorised overlap tests."""
    if isinstance(boxes, np.ndarray):
        return boxes.reshape(-1, 4).astype(float)
    return np.array([b.extents for b in boxes], dtype=float).reshape(-1, 4)


def _label_spots(px: float, py: float, footprint: np.ndarray, w: float, h: float, gap: float,
                 height: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate label boxes (n, 4) around a point and its error bars, and a preference cost
    (pixels) per box: right of the point reads best, then left, then above or below."""
    fx0, fy0, fx1, fy1 = footprint
    right, left = fx1 + gap, fx0 - gap - w
    spots, preference = [], []
    step = h / 3
    for dy in step * np.arange(-int(height / step) - 1, int(height / step) + 2):
        spots += [(right, py - h / 2 + dy), (left, py - h / 2 + dy)]
        preference += [0.0, 2.0]
    spots += [(px - w / 2, fy1 + gap), (px - w / 2, fy0 - gap - h)]
    preference += [4.0, 4.0]
    corners = np.array(spots)
    return np.hstack([corners, corners + (w, h)]), np.array(preference)


def _box_distance(boxes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance (n_boxes, n_points) from each point to the nearest edge of each box."""
    b, p = boxes[:, None, :], points[None, :, :]
    dx = np.clip(np.maximum(b[..., 0] - p[..., 0], p[..., 0] - b[..., 2]), 0, None)
    dy = np.clip(np.maximum(b[..., 1] - p[..., 1], p[..., 1] - b[..., 3]), 0, None)
    return np.hypot(dx, dy)


def _hits(boxes: np.ndarray, others: np.ndarray, pad: float) -> np.ndarray:
    """For each box, whether it comes within ``pad`` of any of ``others``."""
    b, o = boxes[:, None, :], others[None, :, :]
    near = ((b[..., 0] - pad <= o[..., 2]) & (o[..., 0] <= b[..., 2] + pad)
            & (b[..., 1] - pad <= o[..., 3]) & (o[..., 1] <= b[..., 3] + pad))
    return near.any(axis=1)


def _free(boxes: np.ndarray, taken: np.ndarray, frame: Bbox, pad: float) -> np.ndarray:
    """Boxes inside ``frame`` (with ``pad``) that touch none of ``taken``."""
    inside = ((boxes[:, 0] >= frame.x0 + pad) & (boxes[:, 2] <= frame.x1 - pad)
              & (boxes[:, 1] >= frame.y0 + pad) & (boxes[:, 3] <= frame.y1 - pad))
    return inside & ~_hits(boxes, taken, pad)


def _overlap_area(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    b, o = boxes[:, None, :], others[None, :, :]
    w = np.minimum(b[..., 2], o[..., 2]) - np.maximum(b[..., 0], o[..., 0])
    h = np.minimum(b[..., 3], o[..., 3]) - np.maximum(b[..., 1], o[..., 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)

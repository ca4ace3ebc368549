"""Figures of a sweep's method map (rendering only: they read a SweepMap): effect vs trainable parameters,
effect vs collateral drift, and the configurations' component heatmaps side by side.

Every point is a configuration's mean over seeds; the error bars span its seeds' min..max, so two
configurations whose bars overlap are not separated by this many seeds. :func:`map_figures` draws all three,
keyed by the slugs of :data:`FIGURES` (the map's Markdown and HTML, :mod:`tokenlens.report.sweep_map`, name
them by these slugs).
"""

from __future__ import annotations

import math

from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from tokenlens.report.plots.common import LITERAL, new_figure
from tokenlens.sweep.results import ConfigSummary, Spread, SweepMap

FIGURES = ("effect-vs-params", "effect-vs-collateral", "components")


def _bars(spread: Spread) -> tuple[float, list[list[float]]]:
    return spread.mean, [[spread.mean - spread.low], [spread.high - spread.mean]]


_OFFSETS = (
    (6, 4),
    (6, -12),
    (-6, 4),
    (-6, -12),
    (6, 16),
    (-6, 16),
    (6, -24),
    (-6, -24),
    (18, 28),
    (-18, 28),
    (18, -36),
    (-18, -36),
)
"""Label positions tried around a point, in points (right/left, above/below), nearest first."""


def _scatter(ax, configs: tuple[ConfigSummary, ...], x_of, xlabel: str, log: bool) -> None:
    points = []
    for i, c in enumerate(configs):
        gain = c.spread("gain")
        x, xerr = x_of(c)
        y, yerr = _bars(gain)
        colour = f"C{i % 10}"
        ax.errorbar(x, y, yerr=yerr, xerr=xerr, fmt="o", color=colour, capsize=3, label=c.config)
        points.append((c.config, x, y, colour))
    if log:
        ax.set_xscale("log")
    ax.axhline(0.0, color="#888", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("intended effect: mean target p gain")
    ax.grid(True, alpha=0.3)
    _label_points(ax, points)


def _label_points(ax, points: list[tuple[str, float, float, str]]) -> None:
    """Name each point in its colour, trying positions around it until the label overlaps no point, no label
    placed before it and stays inside the axes; a thin line joins a label to its point."""
    ax.figure.draw_without_rendering()  # lay the figure out first: label boxes are measured in pixels
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    taken = []
    for _, x, y, _ in points:
        px, py = ax.transData.transform((x, y))
        taken.append(Bbox.from_extents(px - 5, py - 5, px + 5, py + 5))
    for name, x, y, colour in points:
        chosen = _OFFSETS[0]  # when no position is free: the nearest
        for dx, dy in _OFFSETS:
            box = _text_box(_label(ax, name, x, y, colour, dx, dy, line=False), renderer, remove=True)
            free = not any(box.overlaps(other) for other in taken)
            if free and inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1):
                chosen = (dx, dy)
                break
        far = chosen not in _OFFSETS[:2]  # away from its point: a thin line joins them
        taken.append(_text_box(_label(ax, name, x, y, colour, *chosen, line=far), renderer, remove=False))


def _text_box(label, renderer, *, remove: bool) -> Bbox:
    """The pixel box of an annotation's text (not its line), optionally removing the annotation."""
    label.update_positions(renderer)  # offset-point texts get their place only here
    box = Text.get_window_extent(label, renderer)
    if remove:
        label.remove()
    return box


def _label(ax, name: str, x: float, y: float, colour: str, dx: float, dy: float, *, line: bool):
    arrow = {"arrowstyle": "-", "color": colour, "linewidth": 0.6, "shrinkA": 0, "shrinkB": 4}
    return ax.annotate(
        name,
        (x, y),
        textcoords="offset points",
        xytext=(dx, dy),
        ha="left" if dx > 0 else "right",
        fontsize=8,
        color=colour,
        arrowprops=arrow if line else None,
        **LITERAL,
    )


def effect_vs_params(m: SweepMap) -> Figure:
    """Intended effect (mean target-probability gain) against trainable parameters, log x."""
    fig = new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    _scatter(ax, m.configs, lambda c: (max(c.trainable, 1), None), "trainable parameters (log scale)", True)
    ax.set_title(f"Effect vs parameters ({m.task}, {len(m.seeds)} seed(s), bars: min..max)", fontsize=10)
    return fig


def effect_vs_collateral(m: SweepMap) -> Figure:
    """Intended effect against collateral drift (mean KL over control probes)."""
    fig = new_figure(6.5, 4.2)
    ax = fig.add_subplot()

    def x_of(c: ConfigSummary):
        x, err = _bars(c.spread("collateral_kl"))
        return x, err

    _scatter(ax, m.configs, x_of, "collateral drift: mean KL(base ‖ tuned) on controls, nats", False)
    ax.set_title("Effect vs collateral drift (up and left is better)", fontsize=10)
    return fig


def component_heatmap(m: SweepMap) -> Figure:
    """Configurations × components (embedding, layers, readout terms): where each one's effect lives.

    Each row is scaled by its own largest score (the scales differ by orders of magnitude between
    methods); the row's largest score, in logit units, is printed on the right.
    """
    names = list(m.configs[0].components)
    for c in m.configs[1:]:
        names += [n for n in c.components if n not in names]
    rows = []
    for c in m.configs:
        scores = c.components
        peak = max((scores.get(n, 0.0) for n in names), default=0.0)
        rows.append([scores.get(n, 0.0) / peak if peak > 0 else 0.0 for n in names])
    fig = new_figure(max(7.0, 0.12 * len(names) + 3), 0.45 * len(m.configs) + 2.2)
    ax = fig.add_subplot()
    image = ax.imshow(rows, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks(range(len(m.configs)), [c.config for c in m.configs], fontsize=8)
    step = max(1, math.ceil(len(names) / 80))
    ticks = list(range(0, len(names), step))
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=6)
    for row, c in enumerate(m.configs):
        peak = max(c.components.values(), default=0.0)
        ax.annotate(
            f"max {peak:.3g}",
            (1.01, 1 - (row + 0.5) / len(m.configs)),
            xycoords="axes fraction",
            fontsize=7,
            va="center",
        )
    fig.colorbar(image, ax=ax, label="share of the row's largest score", pad=0.12)
    kind = "|causal| where measured, else |direct|" if m.causal else "|direct| (exact split)"
    ax.set_title(f"Where the effect lives: mean {kind} over intended probes", fontsize=10)
    return fig


def map_figures(m: SweepMap) -> dict[str, Figure]:
    """Every figure of the map, keyed by :data:`FIGURES` slugs."""
    return {
        "effect-vs-params": effect_vs_params(m),
        "effect-vs-collateral": effect_vs_collateral(m),
        "components": component_heatmap(m),
    }

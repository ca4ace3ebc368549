"""Figures of causal effects: ablation, patching, norm/RoPE ablation bars, and estimates beside exact effects.

Every bar here is a *measured* change of a metric (a real forward pass with something changed, minus one
without), except attribution-patching estimates, which are labelled as first-order estimates and drawn
hatched next to the exact effect that confirms them.
"""

from __future__ import annotations

import math

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from tokenlens.causal.results import Ablation, EstimateCheck, Metric, NormAblation, Patching
from tokenlens.report.plots.common import (
    LITERAL,
    literal_legend,
    metric_label,
    new_figure,
    set_ticks,
    set_title,
    signed_colour,
)

LIMIT = 64
"""Effect plots with more sites than this show the ``LIMIT`` largest by ``|Δ|``."""

_METHODS = {
    "zero": "Zero ablation",
    "mean": "Mean ablation",
    "resample": "Resample ablation",
    "rope": "RoPE ablation (rotation removed)",
    "virtual": "Attention to the virtual tokens cut",
    "norm": "Norm-scale ablation",
}


def effect_bars(obj: Ablation | Patching | EstimateCheck | NormAblation, limit: int = LIMIT) -> Figure:
    """One horizontal bar per site: the measured change of the metric (estimates beside exact effects).

    Args:
        obj: An ablation (also RoPE), a patching, an estimate check or a norm ablation.
        limit: At most this many sites; past it, the largest by ``|Δ|`` (the title says so).

    Raises:
        TypeError: ``obj`` is none of these.
    """
    if isinstance(obj, NormAblation):
        return _ablation(obj.ablation, "Norm-scale ablation: measured effects, not contributions", limit)
    if isinstance(obj, Ablation):
        return _ablation(obj, None, limit)
    if isinstance(obj, Patching):
        return _patching(obj, limit)
    if isinstance(obj, EstimateCheck):
        return _estimates(obj)
    raise TypeError(f"no effect plot for a {type(obj).__name__}")


def _largest(names: list[str], values: list[float], limit: int) -> tuple[list[int], str | None]:
    """The indices shown (all, in order, or the ``limit`` largest ``|value|`` first) and a note if cut."""
    if len(names) <= limit:
        return list(range(len(names))), None
    order = sorted(range(len(names)), key=lambda i: -abs(values[i]))[:limit]
    return order, f"the {limit} largest |Δ| of {len(names)} sites"


def _bars(n: int) -> tuple[Figure, Axes]:
    fig = new_figure(8.0, max(3.0, 2.0 + 0.26 * n))
    return fig, fig.add_subplot()


def _finish(fig: Figure, ax: Axes, names: list[str], metric: Metric, fragments: list[str]) -> None:
    what, units = metric_label(metric)
    set_ticks(ax.yaxis, names, fontsize=7)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first site on top
    ax.axvline(0.0, color="black", lw=0.6)
    ax.margins(x=0.25)
    ax.set_xlabel(f"Δ {what} ({units})", **LITERAL)
    set_title(ax, fig, fragments)


def _ablation(ablation: Ablation, title: str | None, limit: int) -> Figure:
    names, values = [e.name for e in ablation.each], [e.delta for e in ablation.each]
    shown, note = _largest(names, values, limit)
    names, values = [names[i] for i in shown], [values[i] for i in shown]
    if ablation.together is not None:
        names.append("together (all sites)")
        values.append(ablation.together.delta)
    fig, ax = _bars(len(names))
    bars = ax.barh(range(len(names)), values, height=0.7, color=[signed_colour(v) for v in values])
    if ablation.together is not None:
        bars[-1].set(hatch="//", edgecolor="black")
    ax.bar_label(bars, [f"{v:+.4g}" for v in values], padding=3, fontsize=7)
    what, units = metric_label(ablation.metric)
    heading = title or f"{_METHODS.get(ablation.method, ablation.method)}: measured effects"
    fragments = [
        heading,
        f"on {what}",
        f"Δ from baseline {ablation.baseline:.4g} ({units})",
        f"replacement: {ablation.reference}",
    ]
    if ablation.final_scale_frozen:
        fragments.append("final-norm scale frozen")
    _finish(fig, ax, names, ablation.metric, fragments + ([note] if note else []))
    return fig


def _patching(patching: Patching, limit: int) -> Figure:
    names, values = [e.name for e in patching.effects], [e.delta for e in patching.effects]
    shown, note = _largest(names, values, limit)
    effects = [patching.effects[i] for i in shown]
    fig, ax = _bars(len(effects))
    values = [e.delta for e in effects]
    bars = ax.barh(range(len(effects)), values, height=0.7, color=[signed_colour(v) for v in values])
    labels = [f"{e.delta:+.4g}" + ("" if math.isnan(e.restored) else f" ({e.restored:.0%})") for e in effects]
    ax.bar_label(bars, labels, padding=3, fontsize=7)
    what, units = metric_label(patching.metric)
    fragments = [
        "Activation patching clean → corrupted: measured effects",
        f"on {what}",
        f"clean {patching.clean:.4g}, corrupted {patching.corrupted:.4g} ({units})",
        "Δ = patched − corrupted, (%) = share of the gap restored",
    ]
    if patching.positions is not None:
        fragments.append("positions " + ", ".join(map(str, patching.positions)))
    _finish(fig, ax, [e.name for e in effects], patching.metric, fragments + ([note] if note else []))
    return fig


def _estimates(check: EstimateCheck) -> Figure:
    rows, estimates = check.rows, check.estimates
    fig, ax = _bars(2 * len(rows))
    where = range(len(rows))
    values = [r.estimate for r in rows]
    ax.barh(
        [y - 0.2 for y in where],
        values,
        height=0.38,
        color=[signed_colour(v, light=True) for v in values],
        hatch="//",
        edgecolor="0.3",
        label="estimate (first-order, attribution patching)",
    )
    values = [r.exact for r in rows]
    ax.barh(
        [y + 0.2 for y in where],
        values,
        height=0.38,
        color=[signed_colour(v) for v in values],
        label="exact (measured by patching)",
    )
    for container in ax.containers:
        ax.bar_label(container, [f"{v:+.4g}" for v in container.datavalues], padding=3, fontsize=7)
    handles = [
        Patch(facecolor="0.85", hatch="//", edgecolor="0.3", label=ax.containers[0].get_label()),
        Patch(facecolor="0.45", label=ax.containers[1].get_label()),
    ]
    literal_legend(ax.legend(handles=handles, fontsize=7, loc="best"))
    what, units = metric_label(estimates.metric)
    names = [r.name + ("" if r.sign_agrees else "  (sign differs)") for r in rows]
    fragments = [
        "Attribution patching: first-order estimates beside exact effects",
        f"on {what}",
        f"top {len(rows)} of {len(estimates.names)} sites by |estimate|, each confirmed by exact patching",
        f"reference: {estimates.reference}",
        f"baseline {estimates.baseline:.4g} ({units})",
    ]
    _finish(fig, ax, names, estimates.metric, fragments)
    return fig

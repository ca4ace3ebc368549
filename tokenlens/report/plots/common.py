"""Shared pieces of the plots: figures without pyplot, literal token labels, signed colours, units.

Every figure is a :class:`~matplotlib.figure.Figure` with its own Agg canvas: no pyplot, no global state.
Token strings are untrusted text: they are shown as their ``repr`` (whitespace visible) and every text that
may hold one is drawn with mathtext and TeX off, so ``$x$`` stays ``$x$``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from tokenlens.attribution.result import LogitAttribution
from tokenlens.causal.results import Metric
from tokenlens.report.kit.text import cut, show_token

LITERAL = {"parse_math": False, "usetex": False}
"""Text properties for every label that may hold token text: ``$`` is a character, never mathtext or TeX."""

SIGNED_CMAP = "RdBu"
"""Signed values: negative red, positive blue, white at zero (with :func:`signed_norm`)."""

PROBABILITY_CMAP = "Blues"
MAX_TICK_LABELS = 80
"""More ticks than this on one axis: only every n-th is labelled."""

UNITS = {
    "logit": "logit units",
    "logit_diff": "logit-difference units",
    "logprob": "log-prob units (nats)",
    "prob": "probability units",
}


def new_figure(width: float, height: float, *, layout: str | None = "constrained") -> Figure:
    """A figure of ``width`` × ``height`` inches on its own Agg canvas (never pyplot)."""
    figure = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(figure)
    return figure


def token_label(token: str, limit: int = 32) -> str:
    """A token's ``repr`` (whitespace visible), cut to ``limit`` characters with ``…``."""
    return cut(show_token(token), limit)


def flow(fragments: Sequence[str], width: int) -> str:
    """Join ``fragments`` with ``"; "``, starting a new line before one that would pass ``width`` characters.

    A fragment is never broken, so a token label inside one stays whole.
    """
    lines: list[str] = []
    for fragment in fragments:
        if lines and len(lines[-1]) + 2 + len(fragment) <= width:
            lines[-1] += "; " + fragment
        else:
            lines.append(fragment)
    return "\n".join(lines)


def chars_across(width_inches: float, fontsize: float) -> int:
    """About how many characters of a ``fontsize`` sans-serif line fit in ``width_inches``."""
    return max(20, int(width_inches * 72 / (0.6 * fontsize)))


def set_title(ax: Axes, fig: Figure, fragments: Sequence[str], fontsize: float = 9.5) -> None:
    """``ax``'s title, left-aligned and drawn literally: the ``fragments`` flowed (:func:`flow`) to the
    figure's width less the colour bar's and labels' share."""
    text = flow(fragments, chars_across(fig.get_figwidth() - 1.4, fontsize))
    ax.set_title(text, loc="left", fontsize=fontsize, **LITERAL)


def signed_norm(values: torch.Tensor) -> Normalize:
    """A colour norm symmetric around zero: ``[-m, m]`` with ``m`` the largest finite ``|value|`` (1 if 0)."""
    finite = values[torch.isfinite(values)]
    peak = float(finite.abs().max()) if finite.numel() else 0.0
    peak = peak if peak > 0 else 1.0
    return Normalize(vmin=-peak, vmax=peak)


def signed_colour(value: float, *, light: bool = False) -> tuple[float, float, float, float]:
    """The bar colour of a signed value: blue up, red down (lighter for estimates), grey for zero."""
    cmap = colormaps[SIGNED_CMAP]
    if value > 0:
        return cmap(0.7 if light else 0.85)
    if value < 0:
        return cmap(0.3 if light else 0.15)
    return (0.6, 0.6, 0.6, 1.0)


def ink_for(background: Sequence[float]) -> str:
    """Black or white, whichever reads better on ``background`` (RGB or RGBA in 0..1)."""
    r, g, b = background[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def number(value: float) -> str:
    """A signed value with three significant digits (``+0.0145``, ``-12.3``)."""
    return "nan" if math.isnan(value) else f"{value:+.3g}"


def set_ticks(axis: Axis, labels: Sequence[str], **text: object) -> None:
    """Label positions ``0 … n-1`` of ``axis`` literally; past :data:`MAX_TICK_LABELS`, every n-th one."""
    step = max(1, math.ceil(len(labels) / MAX_TICK_LABELS))
    keep = list(range(0, len(labels), step))
    axis.set_ticks(keep, [labels[i] for i in keep], **text, **LITERAL)


def literal_legend(legend) -> None:
    """Draw a legend's texts literally (see :data:`LITERAL`)."""
    for entry in legend.get_texts():
        entry.set(**LITERAL)


def explained(result: LogitAttribution) -> tuple[str, str]:
    """``(what, units)`` of an attribution: ``logit[' Paris']`` in logit units, or the difference."""
    target = token_label(result.target.token)
    if result.quantity == "logprob":
        return f"log p({target})", UNITS["logprob"]
    if result.contrast is None:
        return f"logit[{target}]", UNITS["logit"]
    return f"logit[{target}] − logit[{token_label(result.contrast.token)}]", UNITS["logit_diff"]


def where(result: LogitAttribution) -> str:
    """``position 4 (next token after ' is')``."""
    return f"position {result.position} (next token after {token_label(result.tokens[result.position])})"


def metric_label(metric: Metric) -> tuple[str, str]:
    """``(what, units)`` of a causal metric, e.g. ``logit[' Paris'] − logit[' London'] at position 4``."""

    def name(text: str | None, token_id: int | None) -> str:
        return token_label(text) if text is not None else f"id {token_id}"

    target = name(metric.target_text, metric.target_id)
    built_in = {
        "logit": f"logit[{target}]",
        "logprob": f"log p({target})",
        "prob": f"p({target})",
        "logit_diff": f"logit[{target}] − logit[{name(metric.contrast_text, metric.contrast_id)}]",
    }
    what = built_in.get(metric.kind, f"{metric.kind} of {target}")  # a custom metric: its name
    return f"{what} at position {metric.position}", UNITS.get(metric.kind, f"{metric.kind} units")

"""What the causal sections share: how they name the metric they measured, and their figure.

A :class:`~tokenlens.causal.metrics.Metric` carries its tokens' text, or only their ids when the text is
unknown; every format names it the same way (``logit_diff of ' Paris' vs ' London' at position 4``), tokens
as literals. Every causal result is drawn as bars of its effects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokenlens.causal.results import Metric
from tokenlens.report.kit import html, markdown
from tokenlens.report.kit.text import show_token

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def metric_to_dict(metric: Metric) -> dict[str, Any]:
    """The metric's JSON form: its kind, target and contrast (ids and text) and position."""
    return {
        "kind": metric.kind,
        "target_id": metric.target_id,
        "target": metric.target_text,
        "contrast_id": metric.contrast_id,
        "contrast": metric.contrast_text,
        "position": metric.position,
    }


def metric_words(metric: Metric) -> tuple[str, str | None]:
    """A metric's target and contrast (``None`` without one) as token literals, or ``id N`` without text."""
    target = show_token(metric.target_text) if metric.target_text is not None else f"id {metric.target_id}"
    contrast = None
    if metric.contrast_id is not None:
        contrast = (
            show_token(metric.contrast_text)
            if metric.contrast_text is not None
            else f"id {metric.contrast_id}"
        )
    return target, contrast


def metric_text(metric: Metric) -> str:
    """``logit_diff of ' Paris' vs ' London' at position 4``: the metric in plain text."""
    target, contrast = metric_words(metric)
    vs = f" vs {contrast}" if contrast is not None else ""
    return f"{metric.kind} of {target}{vs} at position {metric.position}"


def metric_html(metric: Metric) -> str:
    """:func:`metric_text` as HTML, each token bidi-isolated."""
    target, contrast = metric_words(metric)
    vs = f' vs <bdi dir="ltr">{html.escape(contrast)}</bdi>' if contrast is not None else ""
    return (
        f'{html.escape(metric.kind)} of <bdi dir="ltr">{html.escape(target)}</bdi>{vs} '
        f"at position {metric.position}"
    )


def metric_markdown(metric: Metric) -> str:
    """:func:`metric_text` as Markdown, each token in a code span."""
    target, contrast = metric_words(metric)
    vs = f" vs {markdown.code(contrast)}" if contrast is not None else ""
    return f"{metric.kind} of {markdown.code(target)}{vs} at position {metric.position}"


def effect_figure(value: Any) -> Figure:
    """:func:`~tokenlens.report.plots.causal.effect_bars` of a causal result (matplotlib is imported only
    when a figure is drawn: JSON and terminal reports never draw)."""
    from tokenlens.report.plots.causal import effect_bars

    return effect_bars(value)

"""Jupyter helpers: results as HTML in a notebook, and tokenlens figures inline.

A :class:`~tokenlens.attribution.result.LogitAttribution` in a notebook cell shows itself with
:func:`attribution_html` (registered for it in :mod:`tokenlens.display` by the top-level package); the other
helpers display the matplotlib figures of :mod:`tokenlens.report.plots` as inline PNG images without
touching pyplot's global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure


def attribution_html(result: Any) -> str:
    """The report's tables for ``result`` as an HTML fragment whose styles are scoped to the output cell,
    with the report's explorer (:mod:`tokenlens.report.explorer`): its script acts only inside this output,
    and where the notebook does not run it (untrusted, or a viewer that strips scripts) the tables read as the
    static report."""
    from tokenlens.report.html import render_html_fragment

    return render_html_fragment(result)


def show(figure: Figure, dpi: int = 80) -> None:
    """Display one figure inline (as a PNG at ``dpi``)."""
    from IPython.display import Image, display

    from tokenlens.report.plots import figure_png

    display(Image(data=figure_png(figure, dpi=dpi), format="png"))


def show_all(result: Any, lens: Any = None, sections: Sequence[tuple[str, Any]] = ()) -> list[str]:
    """Display every figure that applies to ``result``, the lens and causal sections; return their keys."""
    from tokenlens.report.plots import attribution_figures

    figures = attribution_figures(result, lens=lens, sections=sections)
    for figure in figures.values():
        show(figure)
    return list(figures)


def _fragment(content_html: str) -> str:
    """``content_html`` in a ``<div class="tokenlens-report">`` with the report's styles scoped to it."""
    from tokenlens.report.kit import html

    css = html.scoped_css(html.CSS, ".tokenlens-report")
    return f'<div class="tokenlens-report"><style>{css}</style>{content_html}</div>'


def grids_html(grids: Any) -> str:
    """A :class:`~tokenlens.causal.grid_results.PatchGrids` (patching grids or a causal trace) as the HTML
    report's section: the heatmap tables, styles scoped to the output cell."""
    from tokenlens.report.kinds.grids import to_html

    title = "Causal trace" if grids.trace is not None else "Patching grid"
    return _fragment(f"<h2>{title} (measured)</h2>{to_html(grids)}")


def location_html(location: Any) -> str:
    """A :class:`~tokenlens.causal.grid_results.Location`: the recommendation, then the trace it reads."""
    from tokenlens.report.kinds.grids import to_html
    from tokenlens.report.kit import html

    return _fragment(f"<p><strong>{html.escape(location.sentence())}</strong></p>{to_html(location.trace)}")

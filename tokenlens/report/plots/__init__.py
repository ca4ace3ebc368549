"""matplotlib figures of tokenlens results (rendering only: no model runs here).

One function per figure, each returning a :class:`~matplotlib.figure.Figure` on its own Agg canvas (never
pyplot): :func:`waterfall`, :func:`layer_heatmap`, :func:`head_heatmap`, :func:`source_heat`,
:func:`lens_grid`, :func:`effect_bars`, :func:`grid_heatmaps`. :func:`attribution_figures` builds every one
that applies, keyed by a stable slug; :func:`figure_png`, :func:`figure_svg` and :func:`save_figure` turn them
into files.

Conventions: signed values use a red–white–blue map centred at zero (blue raises the explained quantity);
token strings appear as their ``repr`` with whitespace visible and are never parsed as mathtext or TeX;
titles name the explained quantity (target, contrast), the position and the units.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from tokenlens.attribution.result import LogitAttribution, LogitLens
from tokenlens.report.plots.attribution import head_heatmap, layer_heatmap, source_heat, waterfall
from tokenlens.report.plots.causal import effect_bars
from tokenlens.report.plots.files import figure_png, figure_svg, save_figure
from tokenlens.report.plots.grids import grid_heatmaps
from tokenlens.report.plots.lens import lens_grid
from tokenlens.report.sections import check_sections, with_lens

__all__ = [
    "attribution_figures",
    "effect_bars",
    "figure_png",
    "figure_svg",
    "grid_heatmaps",
    "head_heatmap",
    "layer_heatmap",
    "lens_grid",
    "save_figure",
    "source_heat",
    "waterfall",
]


def attribution_figures(
    result: LogitAttribution, lens: LogitLens | None = None, sections: Sequence[tuple[str, Any]] = ()
) -> dict[str, Figure]:
    """Every figure that applies, keyed by a stable slug, in display order.

    ``waterfall`` and ``layers`` always; ``heads`` with a per-head split; ``sources-{name}`` per source
    split (``sources-L1.H0``, ``sources-L2``); then one per section with a figure, keyed by the section's
    key (:mod:`tokenlens.report.sections`: ``lens``, ``ablation``, ``patching``, ``estimates``, ``rope``,
    ``virtual``, ``norms``, ``grid``, ``trace``), drawn by its kind's
    :attr:`~tokenlens.report.sections.SectionKind.to_figure`.

    Args:
        result: The attribution.
        lens: A logit lens: the same as a first ``("lens", lens)`` section.
        sections: ``(key, result)`` pairs as ``tokenlens inspect`` builds them.

    Raises:
        ValueError: An unknown section key, a result of the wrong type for its key, or a key given twice.
    """
    figures = {"waterfall": waterfall(result), "layers": layer_heatmap(result)}
    if result.heads is not None:
        figures["heads"] = head_heatmap(result)
    for split in result.sources:
        _add(figures, f"sources-{split.name}", source_heat(result, split))
    for _, kind, value in check_sections(with_lens(lens, sections)):
        if kind.to_figure is not None:
            _add(figures, kind.key, kind.to_figure(value))
    return figures


def _add(figures: dict[str, Figure], key: str, figure: Figure) -> None:
    if key in figures:
        raise ValueError(f"two figures keyed {key!r}")
    figures[key] = figure

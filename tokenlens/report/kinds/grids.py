"""The patching-grid and causal-trace sections: one heatmap per grid of rows (layers or heads) × prompt
positions, each cell the MEASURED metric of one patched run (reads a
:class:`~tokenlens.causal.grid_results.PatchGrids`).

Every format shows a cell as its *restored* share: the patched metric's change from the run written into, as
a share of the gap to the run the activation came from (100%: that one patch alone gives the source run's
value; NaN, shown ``—`` and ``null``, when the two runs give the same metric). Green restores, red pushes
further away; the shade is scaled to each grid's largest ``|restored|``. The JSON has the patched metric
itself (``value``) beside it. A ``heads`` grid (one row per head: hundreds) shows its :data:`TOP_ROWS` rows
with the largest change in the terminal and in Markdown; the HTML adds every row in a ``<details>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.color import Color
from rich.console import Group, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text

from tokenlens.attribution.result import LogitAttribution
from tokenlens.causal.grid_results import KIND_WORDS, PatchGrid, PatchGrids
from tokenlens.report.kinds.common import metric_html, metric_markdown, metric_text, metric_to_dict
from tokenlens.report.kit import html, markdown, terminal
from tokenlens.report.kit.text import cut, finite_json, probability, show_token

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TOP_ROWS = 16
"""A ``heads`` grid shows this many rows (the largest max ``|change|``) outside the HTML's full table."""

HEADER_CHARS = 8
"""A terminal column header's token literal is cut to this many characters."""

_GREEN, _RED = (46, 158, 79), (214, 69, 65)


def top_rows(grids: PatchGrids, grid: PatchGrid, limit: int = TOP_ROWS) -> list[int]:
    """Every row index of ``grid``, or for a ``heads`` grid with more rows than ``limit`` the ``limit`` rows
    whose largest ``|metric − baseline|`` is greatest, in row order (ranked by the change itself, so it
    also works when the gap is zero)."""
    n = len(grid.rows)
    if grid.kind != "heads" or n <= limit:
        return list(range(n))
    change = (grid.value - grids.target).abs().nan_to_num(nan=-1.0).amax(dim=1)
    return sorted(change.argsort(descending=True, stable=True)[:limit].tolist())


def columns_of(grid: PatchGrid, positions: Sequence[int] | None) -> list[int]:
    """The column indices of ``grid`` whose positions are in ``positions`` (every column for ``None``)."""
    return [c for c, p in enumerate(grid.positions) if positions is None or p in positions]


def peak_of(values: list[list[float]]) -> float:
    """The largest finite ``|value|`` (0 when there is none)."""
    return max((abs(v) for row in values for v in row if math.isfinite(v)), default=0.0)


def percent(value: float) -> str:
    """A restored share in percent (``63%``), ``—`` for NaN."""
    if not math.isfinite(value):
        return "—"
    text = f"{100 * value:.0f}"
    return ("0" if text == "-0" else text) + "%"


def metric_value(grids: PatchGrids, value: float) -> str:
    """A value of the metric: a probability as :func:`~tokenlens.report.kit.text.probability` (small ones
    in e-notation), others with four decimals."""
    return probability(value) if grids.metric.kind == "prob" else f"{value:.4f}"


def kind_title(grid: PatchGrid) -> str:
    """``mlp: MLP output``; with a window, how many layers each row restores."""
    window = f", {grid.window} layers restored together per row" if grid.window > 1 else ""
    return f"{grid.kind}: {KIND_WORDS.get(grid.kind, grid.kind)}{window}"


def setup_text(grids: PatchGrids) -> str:
    """The metric, both runs' values, the direction and (a trace) how the run was noised, in plain text."""
    out = (
        f"{metric_text(grids.metric)}; clean {metric_value(grids, grids.clean)}, "
        f"corrupted {metric_value(grids, grids.corrupted)}; {grids.direction}"
    )
    t = grids.trace
    if t is not None:
        subject = f"subject {show_token(t.subject)}, " if t.subject is not None else ""
        out += (
            f"; {subject}noised positions {', '.join(map(str, t.noised))} (σ {t.noise:.4g} = {t.scale:g} × "
            f"the embedding std), {t.samples} noise samples, seed {t.seed}"
        )
    return out


def to_dict(grids: PatchGrids) -> dict[str, Any]:
    """The metric, both runs' values, the direction, the tokens, the trace's set-up and every grid's cells:
    ``value[r][p]`` the patched metric, ``restored[r][p]`` its share of the gap (NaN -> ``null``)."""
    t = grids.trace
    return finite_json(
        {
            "metric": metric_to_dict(grids.metric),
            "clean": float(grids.clean),
            "corrupted": float(grids.corrupted),
            "direction": grids.direction,
            "tokens": list(grids.tokens),
            "trace": None
            if t is None
            else {
                "subject": t.subject,
                "noised": list(t.noised),
                "noise": float(t.noise),
                "scale": float(t.scale),
                "samples": t.samples,
                "seed": t.seed,
            },
            "grid": [
                {
                    "kind": g.kind,
                    "rows": list(g.rows),
                    "positions": list(g.positions),
                    "tokens": [grids.tokens[p] for p in g.positions],
                    "window": g.window,
                    "value": g.value.tolist(),
                    "restored": grids.restored(g).tolist(),
                }
                for g in grids.grids
            ],
        }
    )


def _terminal_style(value: float, peak: float, strong: bool) -> Style:
    strength = min(1.0, abs(value) / peak) if math.isfinite(value) and peak > 0 else 0.0
    if strength < 0.1:
        return Style(dim=not strong, bold=strong, underline=strong)
    rgb = [round(c * (0.25 + 0.75 * strength)) for c in (_GREEN if value > 0 else _RED)]
    return Style(color="white", bgcolor=Color.from_rgb(*rgb), bold=strong, underline=strong)


def heatmap(
    grids: PatchGrids,
    grid: PatchGrid,
    positions: Sequence[int] | None = None,
    mark: tuple[str, int] | None = None,
) -> RenderableType:
    """One grid as a terminal heatmap: its rows (a ``heads`` grid: :func:`top_rows`) × its columns at
    ``positions`` (default: all), each cell the restored share on a green / red background; ``mark``
    ``(row name, position)`` is drawn bold and underlined."""
    rows, cols = top_rows(grids, grid), columns_of(grid, positions)
    restored = grids.restored(grid)
    values = [[float(restored[r, c]) for c in cols] for r in rows]
    peak = peak_of(values)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    width = max((len(grid.rows[r]) for r in rows), default=3)
    table.add_column(Text("row"), justify="left", no_wrap=True, min_width=width)
    for c in cols:
        p = grid.positions[c]
        header = Text(f"{p}\n{cut(show_token(grids.tokens[p]), HEADER_CHARS)}")
        table.add_column(header, justify="right", no_wrap=True)
    for r, line in zip(rows, values):
        name = grid.rows[r]
        cells = [
            Text(percent(v), style=_terminal_style(v, peak, mark == (name, grid.positions[c])))
            for c, v in zip(cols, line)
        ]
        table.add_row(Text(name), *cells)
    detail = "each cell: the share of the gap restored by patching that row at that position"
    if len(rows) < len(grid.rows):
        detail += f"; the {len(rows)} of {len(grid.rows)} rows that change the metric most"
    return terminal.captioned(kind_title(grid), detail, table)


def to_table(grids: PatchGrids, result: LogitAttribution | None = None) -> RenderableType:
    """The set-up (metric, both runs, a trace's noise), then one terminal heatmap per grid
    (:func:`heatmap`)."""
    what = "Causal trace" if grids.trace is not None else "Patching grid"
    return Group(
        Text(f"{what}, {grids.direction} (measured)", style="bold"),
        Text(setup_text(grids), style="dim"),
        *(heatmap(grids, g) for g in grids.grids),
    )


def _html_cell(restored: float, value: float, peak: float) -> str:
    if not math.isfinite(restored):
        return f'<td class="num dim" data-value="null" title="metric {value:.6g}">—</td>'
    style = html.shade(restored, peak)
    style = f' style="{style}"' if style else ""
    title = f'title="metric {value:.6g}"'
    return f'<td class="num" data-value="{restored!r}"{style} {title}>{percent(restored)}</td>'


def html_grid(grids: PatchGrids, grid: PatchGrid, rows: Sequence[int] | None = None) -> str:
    """One grid as an HTML table heatmap: a token per column, a restored share per cell (exact in
    ``data-value``, shaded by :func:`~tokenlens.report.kit.html.shade`, the patched metric in its title)."""
    rows = range(len(grid.rows)) if rows is None else rows
    restored = grids.restored(grid)
    peak = peak_of(restored.tolist())
    head = ["row", *(f"{p}<br>{html.token(grids.tokens[p])}" for p in grid.positions)]
    lines = [
        html.row(
            grid.rows[r],
            *(
                _html_cell(float(restored[r, c]), float(grid.value[r, c]), peak)
                for c in range(len(grid.positions))
            ),
        )
        for r in rows
    ]
    return html.table(head, lines, "grid")


def _how_to_read_html(grids: PatchGrids) -> str:
    source, target = grids.direction.split(" → ")
    fmt = "p" if grids.metric.kind == "prob" else ".4f"
    return (
        f"<p>{html.badge('MEASURED')} Each cell is one forward pass of the {html.escape(target)} run with "
        f"one activation (the row) at one prompt position (the column) taken from the {html.escape(source)} "
        f"run: its metric as a share of the gap from the {html.escape(target)} run's value to the "
        f"{html.escape(source)} run's (100%: that patch alone gives the {html.escape(source)} value). Green "
        "moves the metric towards it, red away; the shade is scaled to each grid's largest share; the exact "
        "share is in <code>data-value</code>, the patched metric in each cell's tooltip. "
        f"{metric_html(grids.metric)}; clean {html.number(grids.clean, fmt, False, 'span')}, "
        f"corrupted {html.number(grids.corrupted, fmt, False, 'span')}.</p>"
    )


def _trace_html(grids: PatchGrids) -> str:
    t = grids.trace
    if t is None:
        return ""
    subject = f"subject {html.token(t.subject)}, " if t.subject is not None else ""
    return (
        f"<p>Causal trace: {subject}token embeddings noised at positions "
        f"{html.escape(', '.join(map(str, t.noised)))} (noise σ {t.noise:.4g} = {t.scale:g} × the embedding "
        f"standard deviation), {t.samples} noise samples averaged, seed {t.seed}.</p>"
    )


def to_html(grids: PatchGrids, result: LogitAttribution | None = None) -> str:
    """How to read it, then one heatmap table per grid; a ``heads`` grid: its top rows, then every row in a
    ``<details>``."""
    parts = [_how_to_read_html(grids), _trace_html(grids)]
    for grid in grids.grids:
        rows = top_rows(grids, grid)
        parts.append(f"<h3>{html.escape(kind_title(grid))}</h3>")
        if len(rows) == len(grid.rows):
            parts.append(html_grid(grids, grid))
            continue
        parts.append(
            f"<p>The {len(rows)} of {len(grid.rows)} rows whose patch changes the metric most, in model "
            "order.</p>"
            + html_grid(grids, grid, rows)
            + f"<details><summary>All {len(grid.rows)} rows</summary>{html_grid(grids, grid)}</details>"
        )
    return "\n".join(p for p in parts if p)


def markdown_grid(
    grids: PatchGrids,
    grid: PatchGrid,
    positions: Sequence[int] | None = None,
    mark: tuple[str, int] | None = None,
) -> str:
    """One grid as a Markdown table of restored shares (a ``heads`` grid: :func:`top_rows`), a column per
    position at ``positions`` (default: all) headed by its index and token; ``mark`` ``(row name,
    position)`` in bold."""
    rows, cols = top_rows(grids, grid), columns_of(grid, positions)
    restored = grids.restored(grid)

    def cell(r: int, c: int) -> str:
        text = percent(float(restored[r, c]))
        return f"**{text}**" if mark == (grid.rows[r], grid.positions[c]) else text

    head = [
        "row",
        *(f"{grid.positions[c]} {markdown.token(grids.tokens[grid.positions[c]], table=True)}" for c in cols),
    ]
    lines = [[grid.rows[r], *(cell(r, c) for c in cols)] for r in rows]
    note = (
        ""
        if len(rows) == len(grid.rows)
        else f"The {len(rows)} of {len(grid.rows)} rows that change the metric most.\n\n"
    )
    return note + markdown.table(head, lines)


def grids_markdown(grids: PatchGrids) -> str:
    """Every grid as :func:`markdown_grid` under its title, after the set-up."""
    t = grids.trace
    trace = ""
    if t is not None:
        subject = f"subject {markdown.token(t.subject)}, " if t.subject is not None else ""
        trace = (
            f" Causal trace: {subject}token embeddings noised at positions {', '.join(map(str, t.noised))} "
            f"(σ {t.noise:.4g} = {t.scale:g} × the embedding std), {t.samples} noise samples, seed {t.seed}."
        )
    lead = (
        f"**MEASURED**: each cell is the metric with one row's activation at one position patched "
        f"({grids.direction}), as a share of the gap between the two runs; {metric_markdown(grids.metric)}; "
        f"clean {metric_value(grids, grids.clean)}, corrupted {metric_value(grids, grids.corrupted)}.{trace}"
    )
    blocks = [lead] + [f"**{kind_title(g)}**\n\n{markdown_grid(grids, g)}" for g in grids.grids]
    return "\n\n".join(blocks)


def to_markdown(grids: PatchGrids, result: LogitAttribution | None = None) -> str:
    """:func:`grids_markdown`."""
    return grids_markdown(grids)


def to_figure(grids: PatchGrids) -> Figure:
    """:func:`~tokenlens.report.plots.grids.grid_heatmaps` (matplotlib is imported when a figure is
    drawn)."""
    from tokenlens.report.plots.grids import grid_heatmaps

    return grid_heatmaps(grids)

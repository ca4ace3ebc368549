"""The logit lens section: the model's guess after every layer (reads a
:class:`~tokenlens.attribution.lens.LogitLens`).

Each depth's stream is decoded through the final norm (with its own scale) and the head; the last depth is
the model's own output. Every format shows one row per depth at one position (the explained one in the
terminal, the last kept one in HTML and Markdown) and, when several positions were kept (``--lens all``), a
depth × position grid of top-1 guesses at every kept position (terminal, HTML and Markdown alike); the JSON
has every number of every kept position.

Ranks are shown counting from 1 (rank 1 = the top-1 token), as everywhere in the reports; the JSON's
``target_rank`` counts from 0 (0 = top-1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tokenlens.attribution.result import LogitAttribution, LogitLens
from tokenlens.report.kit import html, markdown, terminal
from tokenlens.report.kit.text import cut, probability, show_token

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GRID_CHARS = 10
"""A token in the terminal's depth × position grid is cut to this many characters."""


def to_dict(lens: LogitLens) -> dict[str, Any]:
    """Every number of the lens: per depth and kept position, the top-k and the target's logit/prob/rank."""
    positions = lens.positions.tolist()
    return {
        "target": {"id": lens.target_id, "token": lens.target},
        "depths": list(lens.depths),
        "positions": positions,
        "cells": [
            {
                "depth": depth,
                "position": position,
                "top": [
                    {"id": i, "token": t, "prob": p}
                    for i, t, p in zip(
                        lens.top_ids[d, c].tolist(), lens.top_tokens[d][c], lens.top_probs[d, c].tolist()
                    )
                ],
                "target_logit": float(lens.target_logit[d, c]),
                "target_prob": float(lens.target_prob[d, c]),
                "target_rank": int(lens.target_rank[d, c]),
                "scale": float(lens.scale[d, c]),
            }
            for d, depth in enumerate(lens.depths)
            for c, position in enumerate(positions)
        ],
    }


def to_table(lens: LogitLens, result: LogitAttribution) -> RenderableType:
    """One row per depth at the explained position (the last kept one if it was not kept): top tokens,
    the target's probability and rank."""
    kept = lens.positions.tolist()
    column = kept.index(result.position) if result.position in kept else len(kept) - 1
    position = kept[column]
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("depth", "top tokens (prob)", f"p({show_token(lens.target)})", "rank (1 = top-1)"):
        table.add_column(name, justify="left" if name in ("depth", "top tokens (prob)") else "right")
    for d, depth in enumerate(lens.depths):
        tops = "  ".join(
            f"{show_token(t)} {p:.2f}"
            for t, p in zip(lens.top_tokens[d][column], lens.top_probs[d, column].tolist())
        )
        table.add_row(
            depth,
            Text(tops, overflow="ellipsis", no_wrap=True),
            f"{float(lens.target_prob[d, column]):.3f}",
            str(int(lens.target_rank[d, column]) + 1),
        )
    detail = (
        f"position {position} (token {show_token(lens.tokens[position])}); each depth's stream decoded "
        "through the final norm with its own scale and the head; the last depth is the model's output"
    )
    view = terminal.captioned("Logit lens", detail, table)
    if len(kept) < 2:
        return view
    grid = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    grid.add_column("depth")
    for j in kept:
        grid.add_column(f"{j} {cut(show_token(lens.tokens[j]), GRID_CHARS)}", justify="left")
    for d, depth in enumerate(lens.depths):
        cells = []
        for c in range(len(kept)):
            top = cut(show_token(lens.top_tokens[d][c][0]), GRID_CHARS)
            label = f"{top} {float(lens.top_probs[d, c, 0]):.2f}"
            target = int(lens.top_ids[d, c, 0]) == lens.target_id
            cells.append(Text(label, style="bold underline" if target else "", no_wrap=True))
        grid.add_row(depth, *cells)
    every = (
        f"top-1 guess and its probability at every depth and kept position (columns: position and its token, "
        f"predicting the next one); underlined: the target {show_token(lens.target)}"
    )
    return Group(view, terminal.captioned("Logit lens at every position", every, grid))


def to_html(lens: LogitLens, result: LogitAttribution) -> str:
    """The per-depth table at the last kept position, and with several positions a depth × position grid
    of top-1 guesses shaded by the target's probability."""
    positions = lens.positions.tolist()
    c = len(positions) - 1
    rows = []
    for d, depth in enumerate(lens.depths):
        tops = " ".join(
            f"{html.token(t)} {probability(p)}"
            for t, p in zip(lens.top_tokens[d][c], lens.top_probs[d, c].tolist())
        )
        rows.append(
            f'<tr data-name="{html.escape(depth)}"><td>{html.escape(depth)}</td><td>{tops}</td>'
            f"{html.number(float(lens.target_logit[d, c]), '.4f', False)}"
            f"{html.number(float(lens.target_prob[d, c]), 'p', False)}"
            f"{html.number(int(lens.target_rank[d, c]) + 1, 'd', False)}</tr>"
        )
    out = (
        f"<p>The stream after each depth decoded through the final norm (with its own scale) and the head, "
        f"at position {positions[c]} (token {html.token(lens.tokens[positions[c]])}); the last depth is the "
        f"model's own output. Target: {html.token(lens.target)} (rank 1 = top-1).</p>"
        + html.table(["depth", "top tokens (probability)", "target logit", "p(target)", "rank"], rows)
    )
    if len(positions) > 1:
        out += "<p>Top-1 guess at every depth and position; green shading: the target's probability.</p>"
        out += _grid_html(lens)
    return out


def _grid_html(lens: LogitLens) -> str:
    positions = lens.positions.tolist()
    head = ["depth", *(f"{j} {html.token(lens.tokens[j])}" for j in positions)]
    grid = []
    for d, depth in enumerate(lens.depths):
        cells = "".join(
            f'<td style="{html.shade(float(lens.target_prob[d, k]), 1.0)}" title="p(target) '
            f'{float(lens.target_prob[d, k]):.4f}, rank {int(lens.target_rank[d, k]) + 1}">'
            f"{html.token(lens.top_tokens[d][k][0])} {probability(float(lens.top_probs[d, k, 0]))}</td>"
            for k in range(len(positions))
        )
        grid.append(f"<tr><td>{html.escape(depth)}</td>{cells}</tr>")
    return html.table(head, grid)


def to_markdown(lens: LogitLens, result: LogitAttribution) -> str:
    """The per-depth table at the last kept position, and with several kept positions a depth × position
    grid of top-1 guesses (the target's in bold)."""
    positions = lens.positions.tolist()
    c = len(positions) - 1
    rows = [
        [
            depth,
            " ".join(
                f"{markdown.token(t, True)} {probability(p)}"
                for t, p in zip(lens.top_tokens[d][c], lens.top_probs[d, c].tolist())
            ),
            f"{float(lens.target_logit[d, c]):.4f}",
            probability(float(lens.target_prob[d, c])),
            str(int(lens.target_rank[d, c]) + 1),
        ]
        for d, depth in enumerate(lens.depths)
    ]
    out = (
        f"Each depth's stream decoded through the final norm and head at position {positions[c]} "
        f"(token {markdown.token(lens.tokens[positions[c]])}); target {markdown.token(lens.target)}, "
        "rank 1 = top-1.\n\n"
        + markdown.table(["depth", "top tokens (p)", "target logit", "p(target)", "rank"], rows)
    )
    if len(positions) < 2:
        return out
    grid = []
    for d, depth in enumerate(lens.depths):
        cells = []
        for k in range(len(positions)):
            cell = f"{markdown.token(lens.top_tokens[d][k][0], True)} {float(lens.top_probs[d, k, 0]):.2f}"
            cells.append(f"**{cell}**" if int(lens.top_ids[d, k, 0]) == lens.target_id else cell)
        grid.append([depth, *cells])
    head = ["depth", *(f"{j} {markdown.token(lens.tokens[j], True)}" for j in positions)]
    return (
        out
        + "\n\nTop-1 guess and its probability at every depth and kept position (each column predicts the "
        f"token after its own; bold: the target {markdown.token(lens.target)}).\n\n"
        + markdown.table(head, grid)
    )


def to_figure(lens: LogitLens) -> Figure:
    """:func:`~tokenlens.report.plots.lens.lens_grid` (matplotlib is imported when a figure is drawn)."""
    from tokenlens.report.plots.lens import lens_grid

    return lens_grid(lens)

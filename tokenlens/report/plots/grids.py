"""Figure of patching grids and causal traces: one heatmap per grid of the share of the gap each
(row, position) patch restores."""

from __future__ import annotations

import math

from matplotlib import colormaps
from matplotlib.figure import Figure

from tokenlens.causal.grid_results import KIND_WORDS, PatchGrid, PatchGrids
from tokenlens.report.plots.common import (
    LITERAL,
    SIGNED_CMAP,
    chars_across,
    flow,
    ink_for,
    metric_label,
    new_figure,
    set_ticks,
    signed_norm,
    token_label,
)

ANNOTATE_CELLS = 200
"""Grids with at most this many cells print each cell's percentage."""

HEAD_LABELS = 40
"""A ``heads`` grid with more rows than this labels only each layer's first head (``L3`` at ``L3.H0``; at
most this many layers, evenly spaced), with a thin line between layers."""


def _height(grid: PatchGrid) -> float:
    rows = len(grid.rows)
    if grid.kind == "heads" and rows > HEAD_LABELS:
        return min(9.0, max(3.0, 0.02 * rows))
    return min(5.0, max(1.4, 0.5 + 0.2 * rows))


def _row_ticks(ax, grid: PatchGrid) -> None:
    rows = list(grid.rows)
    if grid.kind == "heads" and len(rows) > HEAD_LABELS:
        starts = [i for i, name in enumerate(rows) if name.endswith(".H0")]
        for i in starts[1:]:
            ax.axhline(i - 0.5, color="0.5", linewidth=0.3)
        keep = starts[:: max(1, math.ceil(len(starts) / HEAD_LABELS))]
        ax.yaxis.set_ticks(keep, [rows[i].split(".")[0] for i in keep], fontsize=6, **LITERAL)
        ax.set_ylabel("head (layer's first head labelled)")
    else:
        set_ticks(ax.yaxis, rows, fontsize=7)
        ax.set_ylabel("head" if grid.kind == "heads" else "layer")


def _annotate(ax, restored, cmap, norm) -> None:
    """Each finite cell's share in percent, black or white on its colour."""
    for r, line in enumerate(restored.tolist()):
        for c, v in enumerate(line):
            if math.isfinite(v):
                text = f"{100 * v:.0f}"
                ax.text(
                    c,
                    r,
                    "0" if text == "-0" else text,
                    ha="center",
                    va="center",
                    fontsize=6,
                    color=ink_for(cmap(norm(v))),
                )


def grid_heatmaps(grids: PatchGrids) -> Figure:
    """One heatmap per grid, stacked: the share of the gap each (row, position) patch restores, on a
    red–white–blue map centred at 0 (blue: towards the source run's value), each with its own colour bar.

    Columns are prompt positions labelled by their tokens (under the last heatmap only when every grid has
    the same positions); rows are layers or heads (``L3.H5``).
    """
    shown = grids.grids
    same = len({g.positions for g in shown}) <= 1
    n_pos = max((len(g.positions) for g in shown), default=1)
    rotate = n_pos > 4
    label_space = 1.3 if rotate else 0.4
    heights = [
        _height(g) + 0.35 + (0 if same and k < len(shown) - 1 else label_space) for k, g in enumerate(shown)
    ]
    fig = new_figure(min(24.0, max(7.0, 2.8 + 0.6 * n_pos)), 1.0 + sum(heights))
    spec = fig.add_gridspec(max(1, len(shown)), 1, height_ratios=heights or [1.0])
    cmap = colormaps[SIGNED_CMAP]
    what, units = metric_label(grids.metric)
    fragments = [
        ("Causal trace" if grids.trace is not None else "Patching grid") + " (measured)",
        f"share of the gap restored by patching each row at each position ({grids.direction})",
        f"metric {what} ({units})",
        f"clean {grids.clean:.4g}, corrupted {grids.corrupted:.4g}",
    ]
    t = grids.trace
    if t is not None:
        if t.subject is not None:
            fragments.append(f"subject {token_label(t.subject)}")
        fragments.append(f"noised at {', '.join(map(str, t.noised))} (σ {t.noise:.3g}), {t.samples} samples")
    for k, grid in enumerate(shown):
        ax = fig.add_subplot(spec[k])
        restored = grids.restored(grid)
        norm = signed_norm(restored)
        image = ax.imshow(restored.numpy(), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
        if restored.numel() <= ANNOTATE_CELLS:
            _annotate(ax, restored, cmap, norm)
        _row_ticks(ax, grid)
        if same and k < len(shown) - 1:
            ax.xaxis.set_ticks(range(len(grid.positions)), [])
        else:
            columns = [f"{token_label(grids.tokens[p], 16)} ({p})" for p in grid.positions]
            set_ticks(ax.xaxis, columns, fontsize=7, rotation=90 if rotate else 0)
        if k == len(shown) - 1:
            ax.set_xlabel("prompt position (its token)")
        bar = fig.colorbar(image, ax=ax, shrink=0.9)
        bar.set_label("restored", fontsize=7)
        window = f", {grid.window} layers restored together per row" if grid.window > 1 else ""
        kind = f"{grid.kind}: {KIND_WORDS.get(grid.kind, grid.kind)}{window}"
        lead = flow(fragments, chars_across(fig.get_figwidth() - 1.4, 9.5)) + "\n" if k == 0 else ""
        ax.set_title(lead + kind, loc="left", fontsize=9 if k == 0 else 8.5, **LITERAL)
    return fig

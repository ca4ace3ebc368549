"""Figures of a whole-answer attribution: the steps × layers heatmap, labelled with the answer's tokens."""

from __future__ import annotations

from matplotlib.figure import Figure

from tokenlens.attribution.sequence_result import SequenceAttribution
from tokenlens.report.kit.text import QUANTITY_WORDS
from tokenlens.report.plots.common import (
    LITERAL,
    SIGNED_CMAP,
    ink_for,
    new_figure,
    number,
    set_ticks,
    set_title,
    signed_norm,
    token_label,
)
from tokenlens.report.sequence_layout import layer_grid

ANNOTATE_CELLS = 300
"""Heatmaps with at most this many cells print each cell's value."""


def step_layer_heatmap(result: SequenceAttribution) -> Figure:
    """Each layer's direct term (attention + MLP + their biases) at each step, answer tokens as column labels.

    Blue raises the step's explained value, red lowers it; a column sums to the step's value (with the
    ``other`` row: head bias and entropy, when there is any).
    """
    grid, depths = layer_grid(result)  # (depth, step)
    n_steps = grid.shape[1]
    fig = new_figure(min(24.0, 3.0 + 0.42 * n_steps), 1.8 + 0.26 * len(depths))
    ax = fig.add_subplot()
    norm = signed_norm(grid)
    image = ax.imshow(
        grid.float().numpy(), cmap=SIGNED_CMAP, norm=norm, aspect="auto", interpolation="nearest"
    )
    labels = [f"{token_label(t, 16)} ({s.position})" for t, s in zip(result.answer_tokens, result.steps)]
    set_ticks(ax.xaxis, labels, rotation=90, fontsize=7)
    set_ticks(ax.yaxis, depths, fontsize=7)
    if grid.numel() <= ANNOTATE_CELLS:
        cmap = image.get_cmap()
        for (d, k), value in zip(
            [(d, k) for d in range(grid.shape[0]) for k in range(n_steps)], grid.flatten().tolist()
        ):
            ink = ink_for(cmap(norm(value)))
            ax.text(k, d, number(value), ha="center", va="center", fontsize=6, color=ink, **LITERAL)
    what, units = QUANTITY_WORDS[result.quantity]
    fig.colorbar(image, ax=ax, label=units)
    ax.set_xlabel("answer token (position it is predicted at)")
    set_title(
        ax,
        fig,
        [
            f"Each layer's direct contribution to every answer token's {what}",
            f"{len(result.answer_ids)} steps",
            units,
            f"model {result.model}",
        ],
    )
    return fig


def sequence_figures(result: SequenceAttribution) -> dict[str, Figure]:
    """Every figure of a whole-answer report by slug: ``steps-layers``."""
    return {"steps-layers": step_layer_heatmap(result)}

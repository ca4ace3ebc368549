"""Figure of a logit lens: the model's top next-token guess at every depth and position."""

from __future__ import annotations

from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from tokenlens.attribution.result import LogitLens
from tokenlens.report.plots.common import (
    LITERAL,
    PROBABILITY_CMAP,
    ink_for,
    new_figure,
    set_ticks,
    set_title,
    token_label,
)

CELL_CHARS = 12
"""A cell's token label is cut to this many characters."""


def lens_grid(lens: LogitLens) -> Figure:
    """A depth × position grid: each cell's text is the top token at that depth, its colour that token's
    probability (0 to 1). Cells whose top token is the tracked target are bold.

    Rows run from the embedding down to the last layer, whose guesses are the model's own output; each
    column is a prompt position, predicting the token after it.
    """
    probs = lens.top_probs[:, :, 0].float()  # (depth, pos)
    n_depth, n_pos = probs.shape
    positions = lens.positions.tolist()
    fig = new_figure(max(6.0, 2.8 + 0.95 * n_pos), max(3.6, 2.2 + 0.3 * n_depth))
    ax = fig.add_subplot()
    cmap, norm = colormaps[PROBABILITY_CMAP], Normalize(vmin=0.0, vmax=1.0)
    image = ax.imshow(probs.numpy(), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    for d in range(n_depth):
        for c in range(n_pos):
            ink = ink_for(cmap(norm(float(probs[d, c]))))
            weight = "bold" if int(lens.top_ids[d, c, 0]) == lens.target_id else "normal"
            label = token_label(lens.top_tokens[d][c][0], CELL_CHARS)
            ax.text(
                c, d, label, ha="center", va="center", fontsize=7, color=ink, fontweight=weight, **LITERAL
            )
    set_ticks(ax.yaxis, list(lens.depths), fontsize=7)
    columns = [f"{token_label(lens.tokens[p], 16)} ({p})" for p in positions]
    set_ticks(ax.xaxis, columns, fontsize=7, rotation=90 if n_pos > 4 else 0)
    ax.set_xlabel("prompt position (its token); each column predicts the token after it")
    ax.set_ylabel("depth: stream after the embedding / layer")
    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    bar.set_label("probability of the top token")
    fragments = [
        "Logit lens: top next-token guess (text) and its probability (colour) at each depth and position",
        f"tracked target {token_label(lens.target)} in bold where it is the top token",
        "each depth decoded through the final norm with its own scale and the head",
        f"model {lens.model}",
    ]
    set_title(ax, fig, fragments)
    return fig

"""Figures of one logit attribution: the component waterfall, layer and head heatmaps, source-token heat.

Every number is a direct contribution in the units of the explained quantity (the target's logit, or its
logit difference with a contrast token), read off a :class:`~tokenlens.attribution.result.LogitAttribution`.
"""

from __future__ import annotations

import re

import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Patch

from tokenlens.attribution.result import Decomposition, LogitAttribution, SourceSplit
from tokenlens.report.plots.common import (
    LITERAL,
    SIGNED_CMAP,
    chars_across,
    explained,
    flow,
    ink_for,
    literal_legend,
    new_figure,
    number,
    set_ticks,
    set_title,
    signed_colour,
    signed_norm,
    token_label,
    where,
)

ANNOTATE_CELLS = 300
"""Heatmaps with at most this many cells print each cell's value."""

_LAYER_PART = re.compile(r"L(\d+)\.(attn|mlp)(\.bias)?")


def waterfall(result: LogitAttribution) -> Figure:
    """Bars that accumulate each component's contribution in model order, ending at the model's value.

    Bar ``c`` spans from the sum of the components before it to the sum including it (blue: raises the
    explained logit, red: lowers it); a last grey bar from zero shows the sum of all components, and a
    dashed line the model's own value from its forward pass (they agree when the split is exact).
    """
    d = result.decomposition
    values = d.contributions.double()
    ends = values.cumsum(0)
    starts = ends - values
    n = len(d.names)
    what, units = explained(result)
    fig = new_figure(max(6.5, 1.6 + 0.24 * (n + 1)), 5.0)
    ax = fig.add_subplot()
    ax.bar(
        range(n),
        values.tolist(),
        bottom=starts.tolist(),
        width=0.75,
        color=[signed_colour(v) for v in values],
    )
    ax.bar([n], [d.total], width=0.75, color="0.35")
    for bar in ax.patches:  # a bar's bottom is "sticky" and would stop the margin above the highest bottom
        bar.sticky_edges.y.clear()
    ax.margins(y=0.08)
    ax.hlines(
        ends.tolist(), [i + 0.375 for i in range(n)], [i + 0.625 for i in range(n)], colors="0.5", lw=0.6
    )
    ax.axhline(0.0, color="black", lw=0.5)
    label = f"model's own value {d.logit:+.4f} (error {d.error:.1e})"
    model_line = ax.axhline(d.logit, color="black", ls="--", lw=0.8, label=label)
    ax.annotate(
        f"Σ {d.total:+.4f}",
        (n, d.total),
        xytext=(0, 4 if d.total >= 0 else -4),
        textcoords="offset points",
        ha="center",
        va="bottom" if d.total >= 0 else "top",
        fontsize=8,
        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
    )
    set_ticks(ax.xaxis, [*d.names, "total"], rotation=90, fontsize=7)
    ax.set_xlim(-0.6, n + 0.6)
    ax.set_ylabel(f"cumulative {what} ({units})", **LITERAL)
    handles = [
        Patch(color=signed_colour(1.0), label="raises"),
        Patch(color=signed_colour(-1.0), label="lowers"),
        Patch(color="0.35", label=f"sum of components {d.total:+.4f}"),
        model_line,
    ]
    literal_legend(ax.legend(handles=handles, fontsize=7, loc="best"))
    set_title(
        ax,
        fig,
        [
            f"Direct logit attribution of {what}",
            f"at {where(result)}",
            units,
            f"model {result.model}",
            "each component's direct path to the logit, accumulated in model order",
        ],
    )
    return fig


def _layer_grid(d: Decomposition) -> tuple[torch.Tensor, tuple[str, ...], list[str]]:
    """``(layer, part)`` contributions, the parts (``attn``, ``mlp``, bias terms present) and the rest."""
    cells: dict[tuple[int, str], float] = {}
    rest: list[str] = []
    for name, value in d.as_dict().items():
        match = _LAYER_PART.fullmatch(name)
        if match:
            cells[(int(match[1]), match[2] + (match[3] or ""))] = value
        else:
            rest.append(f"{name} {number(value)}")
    present = {part for _, part in cells}
    parts = ("attn", "mlp") + tuple(p for p in ("attn.bias", "mlp.bias") if p in present)
    n_layers = 1 + max((layer for layer, _ in cells), default=-1)
    grid = torch.full((n_layers, len(parts)), float("nan"))  # (layer, part)
    for (layer, part), value in cells.items():
        grid[layer, parts.index(part)] = value
    return grid, parts, rest


def _signed_heatmap(
    fig: Figure, ax: Axes, grid: torch.Tensor, rows: list[str], columns: list[str], units: str
):
    """``grid`` ``(row, column)`` as a heatmap centred at zero, values printed in small grids."""
    norm, cmap = signed_norm(grid), colormaps[SIGNED_CMAP]
    image: AxesImage = ax.imshow(grid.numpy(), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    set_ticks(ax.yaxis, rows, fontsize=7)
    set_ticks(ax.xaxis, columns, fontsize=7)
    if grid.numel() <= ANNOTATE_CELLS:
        for (i, j), value in zip(
            torch.cartesian_prod(*map(torch.arange, grid.shape)).tolist(), grid.flatten()
        ):
            if torch.isfinite(value):
                colour = ink_for(cmap(norm(float(value))))
                ax.text(j, i, number(float(value)), ha="center", va="center", fontsize=6, color=colour)
    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    bar.set_label(units, **LITERAL)
    return image


def layer_heatmap(result: LogitAttribution) -> Figure:
    """Each layer's attention and MLP contribution (rows: layers, columns: attn, mlp, any bias terms).

    The embedding and a logit bias are not per-layer; their values are printed in the title.
    """
    grid, parts, rest = _layer_grid(result.decomposition)
    what, units = explained(result)
    fig = new_figure(max(5.5, 3.2 + 1.0 * len(parts)), max(3.6, 2.0 + 0.26 * grid.shape[0]))
    ax = fig.add_subplot()
    _signed_heatmap(fig, ax, grid, [f"L{i}" for i in range(grid.shape[0])], list(parts), units)
    ax.set_ylabel("layer")
    set_title(
        ax,
        fig,
        [
            f"Layer contributions to {what}",
            f"at {where(result)}",
            units,
            "not in the grid: " + ", ".join(rest),
        ],
    )
    return fig


def head_heatmap(result: LogitAttribution) -> Figure:
    """Each attention head's direct contribution (rows: layers, columns: heads).

    Row ``i`` sums to ``L{i}.attn`` (the ``o_proj`` bias, if any, is the separate ``L{i}.attn.bias``).

    Raises:
        ValueError: The result has no per-head split (attribute with ``heads=True``).
    """
    if result.heads is None:
        raise ValueError("this attribution has no per-head split: attribute with heads=True")
    grid = result.heads.contributions.float()  # (layer, head)
    what, units = explained(result)
    fig = new_figure(max(6.0, 3.0 + 0.45 * grid.shape[1]), max(3.6, 2.0 + 0.26 * grid.shape[0]))
    ax = fig.add_subplot()
    rows, columns = [f"L{i}" for i in range(grid.shape[0])], [f"H{h}" for h in range(grid.shape[1])]
    _signed_heatmap(fig, ax, grid, rows, columns, units)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    set_title(ax, fig, [f"Attention heads' direct contributions to {what}", f"at {where(result)}", units])
    return fig


_FONT = 10.0
_CHAR = 0.602 * _FONT / 72  # inches per character of DejaVu Sans Mono at _FONT points
_LINE, _GAP, _MARGIN, _TEXT_LINE = 0.36, 0.1, 0.3, 0.19  # inches: token row, gap, margin, caption line


def _flow_tokens(labels: list[str], width: float) -> list[tuple[float, int]]:
    """``(x inches, line)`` of each label, laid out left to right and wrapped at ``width`` inches."""
    places, x, line = [], 0.0, 0
    for label in labels:
        span = len(label) * _CHAR + 0.08
        if x > 0 and x + span > width:
            x, line = 0.0, line + 1
        places.append((x, line))
        x += span + _GAP
    return places


def source_heat(result: LogitAttribution, split: SourceSplit, width: float = 10.0) -> Figure:
    """The prompt as text, each source token's background coloured by what it contributed through a head.

    Only tokens up to the explained position are shown (later ones cannot be attended to). Each token's text
    object has the gid ``{split.name}.S{j}``. The value-projection bias and the split's residual are not on
    any token; their values are printed in the title.

    Args:
        result: The attribution ``split`` belongs to (its tokens, target and position label the figure).
        split: One of ``result.sources``.
        width: The widest the text block may be, in inches (narrower for a short prompt).

    Raises:
        ValueError: ``split`` does not have one contribution per prompt token.
    """
    sources = result.source_tokens
    if tuple(split.contributions.shape) != (len(sources),):
        raise ValueError(f"split of shape {tuple(split.contributions.shape)} for {len(sources)} sources")
    values = split.contributions[: result.source_end].double()  # (source,) up to the query
    labels = [token_label(t, 40) for t in sources[: result.source_end]]
    width = min(width, max(7.0, sum(len(label) * _CHAR + 0.08 + _GAP for label in labels)))
    places = _flow_tokens(labels, width)

    what, units = explained(result)
    fragments = [f"Sources through {split.name}: direct contribution to {what}", f"at {where(result)}", units]
    fragments.append(f"value bias {number(split.value_bias)} and residual {split.residual:+.1e} on no token")
    if result.position + 1 < len(result.tokens):
        fragments.append(f"{len(result.tokens) - result.position - 1} later token(s) not shown")
    title = flow(fragments, chars_across(width, 9.5))
    top = sorted(range(len(labels)), key=lambda j: -abs(values[j]))[:6]
    ranked = flow([f"S{j} {labels[j]} {number(float(values[j]))}" for j in top], chars_across(width, 8))

    head = 0.25 + _TEXT_LINE * (title.count("\n") + 1)
    text_height = (places[-1][1] + 1) * _LINE
    foot = 0.95 + _TEXT_LINE * (ranked.count("\n") + 1)
    fig_width, fig_height = width + 2 * _MARGIN, head + text_height + foot
    fig = new_figure(fig_width, fig_height, layout=None)
    left = _MARGIN / fig_width
    ax = fig.add_axes((left, foot / fig_height, width / fig_width, text_height / fig_height))
    ax.set(xlim=(0, width), ylim=(text_height, 0))  # data units are inches from the top left
    ax.axis("off")
    norm, cmap = signed_norm(values), colormaps[SIGNED_CMAP]
    for j, (label, (x, line), value) in enumerate(zip(labels, places, values.tolist())):
        colour = cmap(norm(value))
        box = {"boxstyle": "square,pad=0.25", "facecolor": colour, "edgecolor": "0.75", "linewidth": 0.4}
        y = (line + 0.5) * _LINE
        ax.text(x + 0.04, y, label, family="monospace", fontsize=_FONT, va="center", color=ink_for(colour),
                bbox=box, gid=f"{split.name}.S{j}", **LITERAL)  # fmt: skip
    fig.text(left, 1 - 0.12 / fig_height, title, va="top", fontsize=9.5, **LITERAL)
    fig.text(left, (foot - 0.2) / fig_height, "top sources: " + ranked, va="top", fontsize=8, **LITERAL)
    cax = fig.add_axes((left, 0.45 / fig_height, min(4.0, width) / fig_width, 0.14 / fig_height))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal")
    bar.set_label(f"contribution ({units})", fontsize=8, **LITERAL)
    bar.ax.tick_params(labelsize=7)
    return fig

"""Figures of a base-vs-tuned diff: the exact split of a probe's change, a probes × components heatmap, and
each probe's top-k probabilities before and after (rendering only: reads a
:class:`~tokenlens.diff.result.DiffReport`).

Conventions as in the other plots: figures on their own Agg canvas (never pyplot), signed values blue up
and red down, token text drawn literally (its ``repr``, no mathtext). A causal value is only drawn where
it was measured; a heatmap of causal effects leaves unmeasured cells blank and says so in its title.
"""

from __future__ import annotations

import math

import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from tokenlens.diff.result import READOUT_TERMS, DiffReport, ProbeDiff, Telescope
from tokenlens.report.diff_layout import (
    MAX_INTENDED,
    MAX_PROBES,
    chosen_probes,
    column_chunks,
    heatmap_grid,
    probe_number,
)
from tokenlens.report.kit.text import cut, probability
from tokenlens.report.plots.attribution import ANNOTATE_CELLS
from tokenlens.report.plots.common import (
    LITERAL,
    SIGNED_CMAP,
    chars_across,
    flow,
    ink_for,
    literal_legend,
    new_figure,
    set_ticks,
    set_title,
    signed_colour,
    signed_norm,
    token_label,
)
from tokenlens.report.plots.common import number as short

MAX_INCHES = 18.0
"""No side of a heatmap figure is drawn larger than this (inches); wider grids are split into parts."""

__all__ = [
    "MAX_INTENDED",
    "MAX_PROBES",
    "chosen_probes",
    "delta_heatmap",
    "diff_figures",
    "diff_waterfall",
    "heatmap_figures",
    "topk_bars",
]

_UNITS = "logit units"


def _explained(probe: ProbeDiff, split: Telescope) -> str:
    """``logit[' Lyon']`` or ``logit[' Lyon'] − logit[' Paris']`` for a split of ``probe``."""
    names = {s.id: s.token for s in (*probe.base_top, *probe.tuned_top, probe.tracked)}

    def label(token_id: int) -> str:
        return token_label(names[token_id]) if token_id in names else f"id {token_id}"

    what = f"logit[{label(split.target_id)}]"
    return what if split.contrast_id is None else f"{what} − logit[{label(split.contrast_id)}]"


def _probe_name(index: int | None, probe: ProbeDiff) -> str:
    prefix = "" if index is None else f"probe {index}: "
    return prefix + repr(cut(probe.probe.label, 48))


def diff_waterfall(probe: ProbeDiff, *, index: int | None = None, flip: bool = False) -> Figure:
    """The exact split of the tracked token's logit change, as a waterfall from base to tuned.

    A grey bar from zero to the base model's value, one floating bar per component's direct term (base
    readout frozen) in model order, one hatched bar per readout term (:data:`READOUT_TERMS`), and a grey
    bar from zero to the tuned model's value. The bars chain exactly when the split is exact (its error is
    printed in the title). Bars: ``components + 6``.

    Args:
        probe: The probe.
        index: Its number, for the title (:func:`~tokenlens.report.diff_layout.probe_number`).
        flip: Draw ``probe.flip_split`` (the change of ``logit[tuned top-1] − logit[base top-1]``) instead.

    Raises:
        ValueError: ``flip`` for a probe whose top-1 did not change.
    """
    split = probe.flip_split if flip else probe.split
    if split is None:
        raise ValueError("this probe's top-1 token did not change: it has no flip split")
    terms = [*split.direct.double().tolist(), *split.readout.double().tolist()]
    names = [*split.names, *READOUT_TERMS]
    ends = torch.tensor([split.base_value, *terms], dtype=torch.float64).cumsum(0)[1:]
    starts = ends - torch.tensor(terms, dtype=torch.float64)
    n = len(terms)
    fig = new_figure(max(6.5, 1.8 + 0.26 * (n + 2)), 5.0)
    ax = fig.add_subplot()
    ax.bar([0], [split.base_value], width=0.75, color="0.55")
    bars = ax.bar(
        range(1, n + 1), terms, bottom=starts.tolist(), width=0.75, color=[signed_colour(v) for v in terms]
    )
    for bar in bars.patches[len(split.names) :]:
        bar.set(hatch="//", edgecolor="0.25")
    ax.bar([n + 1], [split.tuned_value], width=0.75, color="0.35")
    for bar in ax.patches:  # a bar's bottom is "sticky" and would stop the margin above the highest bottom
        bar.sticky_edges.y.clear()
    ax.margins(y=0.08)
    ax.axhline(0.0, color="black", lw=0.5)
    set_ticks(ax.xaxis, ["base", *names, "tuned"], rotation=90, fontsize=7)
    ax.set_xlim(-0.6, n + 1.6)
    what = _explained(probe, split)
    ax.set_ylabel(f"{what} ({_UNITS})", **LITERAL)
    handles = [
        Patch(color=signed_colour(1.0), label="raises"),
        Patch(color=signed_colour(-1.0), label="lowers"),
        Patch(facecolor="white", hatch="//", edgecolor="0.25", label="readout term"),
    ]
    literal_legend(ax.legend(handles=handles, fontsize=7, loc="best"))
    set_title(
        ax,
        fig,
        [
            f"Change of {what}, base → tuned: exact split",
            _probe_name(index, probe),
            f"base {split.base_value:+.4f} → tuned {split.tuned_value:+.4f} (Δ {split.observed:+.4f})",
            "direct terms with the base readout frozen, then the readout's own change",
            f"split error {split.error:.1e}",
        ],
    )
    return fig


def delta_heatmap(report: DiffReport, *, kind: str = "auto", columns: range | None = None) -> Figure:
    """Probes × components: each component's effect on each probe's tracked-token logit.

    Args:
        report: The diff.
        kind: ``"direct"`` (the exact split's component terms), ``"causal"`` (MEASURED by patching; cells
            not measured stay blank) or ``"auto"``: causal when any component was measured, else direct.
            The title names the kind.
        columns: Draw only these components (indices into the grid's model-ordered names, a part of
            :func:`~tokenlens.report.diff_layout.column_chunks`); the colour scale stays the whole grid's, so
            the parts of one heatmap compare. Default: all.

    Raises:
        ValueError: An unknown ``kind``.
    """
    heat = heatmap_grid(report, kind)
    full = torch.tensor(
        [[math.nan if v is None else v for v in row] for row in heat.values], dtype=torch.float64
    ).reshape(len(heat.values), len(heat.names))  # (probe, component)
    columns = range(len(heat.names)) if columns is None else columns
    grid = full[:, list(columns)]
    names = [heat.names[j] for j in columns]
    labels = [f"{probe_number(p, i)} {cut(p.probe.label, 28)!r}" for i, p in enumerate(report.probes)]
    width = min(MAX_INCHES, max(6.0, 4.2 + 0.3 * len(names)))
    fig = new_figure(width, min(MAX_INCHES, max(3.2, 2.2 + 0.3 * len(labels))))
    ax = fig.add_subplot()
    ax.set_facecolor("0.9")  # blank (unmeasured) cells
    norm, cmap = signed_norm(full), colormaps[SIGNED_CMAP]
    image = ax.imshow(grid.numpy(), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    set_ticks(ax.yaxis, labels, fontsize=7)
    set_ticks(ax.xaxis, names, rotation=90, fontsize=7)
    if grid.numel() <= ANNOTATE_CELLS:
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                value = float(grid[i, j])
                if math.isfinite(value):
                    ink = ink_for(cmap(norm(value)))
                    ax.text(j, i, short(value), ha="center", va="center", fontsize=6, color=ink)
    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    bar.set_label(f"Δ tracked-token logit ({_UNITS}); blue up, red down", **LITERAL)
    what = (
        ["causal effects, MEASURED by patching", "each tuned output into the base run", "grey: not measured"]
        if heat.kind == "causal"
        else ["direct terms of the exact split", "base readout frozen"]
    )
    if len(names) < len(heat.names):
        what.append(f"components {columns.start + 1}–{columns.stop} of {len(heat.names)}")
    fragments = ["Base → tuned: each component's effect", "on each probe's tracked-token logit", *what]
    text = flow(fragments, chars_across(fig.get_figwidth() - 0.4, 9.5))
    fig.suptitle(text, x=0.01, ha="left", fontsize=9.5, **LITERAL)
    return fig


def topk_bars(probe: ProbeDiff, *, index: int | None = None) -> Figure:
    """The base and the tuned model's top-k next tokens side by side (probabilities).

    Left panel: the base model's top-k; right: the tuned model's. A token in both lists is drawn dark, one
    in only one list light; the tracked token's label is marked ``◆``. Bars: ``len(base_top) +
    len(tuned_top)``.
    """
    fig = new_figure(9.0, max(3.0, 1.8 + 0.3 * max(len(probe.base_top), len(probe.tuned_top))))
    left, right = fig.subplots(1, 2, sharex=True)
    peak = max((s.prob for s in (*probe.base_top, *probe.tuned_top)), default=0.0) or 1.0
    base_ids = {s.id for s in probe.base_top}
    tuned_ids = {s.id for s in probe.tuned_top}
    for ax, scores, other, title in (
        (left, probe.base_top, tuned_ids, "base"),
        (right, probe.tuned_top, base_ids, "tuned"),
    ):
        probs = [s.prob for s in scores]
        colours = [signed_colour(1.0, light=s.id not in other) for s in scores]
        bars = ax.barh(range(len(scores)), probs, height=0.7, color=colours)
        ax.bar_label(bars, [probability(p, 3, 1) for p in probs], padding=3, fontsize=7)
        marks = [("◆ " if s.id == probe.tracked.id else "") + token_label(s.token, 24) for s in scores]
        set_ticks(ax.yaxis, marks, fontsize=7)
        ax.set_ylim(len(scores) - 0.5, -0.5)
        ax.set_xlim(0, 1.3 * peak)
        ax.set_xlabel("probability")
        ax.set_title(f"{title} top-{len(scores)}", fontsize=9)
    handles = [
        Patch(color=signed_colour(1.0), label="in both top-k lists"),
        Patch(color=signed_colour(1.0, light=True), label="in one list only"),
    ]
    literal_legend(fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncols=2))
    flip = "; top-1 flipped" if probe.flipped else ""
    text = flow(
        [
            f"Next-token probabilities before and after: {_probe_name(index, probe)}",
            f"KL(base‖tuned) {probe.kl:.4g} nats, JS {probe.js:.4g}{flip}",
            f"◆ tracked {token_label(probe.tracked.token)}: p {probability(probe.tracked.prob, 3, 1)} → "
            f"{probability(probe.tracked_tuned.prob, 3, 1)}",
        ],
        chars_across(fig.get_figwidth() - 0.6, 9.5),
    )
    fig.suptitle(text, x=0.02, ha="left", fontsize=9.5, **LITERAL)
    return fig


def heatmap_figures(report: DiffReport) -> dict[str, Figure]:
    """:func:`delta_heatmap` by slug: ``heatmap`` when it has at most
    :data:`~tokenlens.report.diff_layout.HEATMAP_COLUMNS` components, else ``heatmap-1of3``, ``heatmap-2of3``
    … (parts of about equal width, one colour scale); nothing without probes."""
    if not report.probes:
        return {}
    chunks = column_chunks(len(heatmap_grid(report).names))
    if len(chunks) <= 1:
        return {"heatmap": delta_heatmap(report)}
    n = len(chunks)
    return {f"heatmap-{k}of{n}": delta_heatmap(report, columns=c) for k, c in enumerate(chunks, 1)}


def diff_figures(
    report: DiffReport,
    max_probes: int = MAX_PROBES,
    *,
    max_intended: int = MAX_INTENDED,
    heatmap: bool = True,
) -> dict[str, Figure]:
    """Every diff figure, keyed by a stable slug, in display order.

    The heatmap (:func:`heatmap_figures`: ``heatmap`` or its parts ``heatmap-1of3`` …; left out with
    ``heatmap=False``, as the HTML report shows it as a table), then per chosen probe
    (:func:`~tokenlens.report.diff_layout.chosen_probes`: the intended ones and up to ``max_probes`` others)
    numbered ``n`` (:func:`~tokenlens.report.diff_layout.probe_number`: its probe-file line, else its place
    among the command-line prompts from 1): ``waterfall-{n}``, ``flip-{n}`` when its top-1 flipped, and
    ``topk-{n}``.
    """
    figures = heatmap_figures(report) if heatmap else {}
    for i in chosen_probes(report, max_probes, max_intended):
        p = report.probes[i]
        n = probe_number(p, i)
        figures[f"waterfall-{n}"] = diff_waterfall(p, index=n)
        if p.flip_split is not None:
            figures[f"flip-{n}"] = diff_waterfall(p, index=n, flip=True)
        figures[f"topk-{n}"] = topk_bars(p, index=n)
    return figures

"""Result objects of position-resolved patching: grids, causal traces and the location they point to.

A *grid* holds one measured metric per (row, position): the run the activations are written into, with one
row's activation at one prompt position replaced by its value from the other run. Rows are layers
(``L3``: the residual stream entering layer 3, or layer 3's attention or MLP output) or heads (``L3.H5``).
Every number is the metric of a real forward pass; "restored" is its change as a share of the gap between
the two runs. They carry their own labels, so renderers never need a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from tokenlens.attribution.result import component_columns, require_pandas
from tokenlens.causal.results import Metric
from tokenlens.display import html_for

GRID_KINDS = ("resid", "attn", "mlp", "heads")
"""What a patching grid can patch, per layer and position."""

TRACE_KINDS = ("resid", "attn", "mlp", "resid-mlp-severed", "resid-attn-severed")
"""What a causal trace restores: the grid kinds over layers, and the residual stream restored with every
later MLP (or attention) output at that position held at its corrupted value."""

WEAK = 0.1
"""A location whose peak restores less than this share of the gap is flagged as weak evidence."""

KIND_WORDS = {
    "resid": "residual stream entering the layer",
    "attn": "attention output",
    "mlp": "MLP output",
    "heads": "head output (its slice of o_proj's input)",
    "resid-mlp-severed": "residual stream, later MLPs at that position frozen",
    "resid-attn-severed": "residual stream, later attention at that position frozen",
}
"""Each kind in words, for labels."""


@dataclass(frozen=True)
class PatchGrid:
    """The metric with one row's activation at one position taken from the source run.

    Attributes:
        kind: One of :data:`GRID_KINDS` or :data:`TRACE_KINDS`.
        rows: Row names, ``L0``, ``L1``, … (layers) or ``L0.H0``, … (heads).
        positions: The prompt positions patched (the columns), increasing.
        value: ``(rows, positions)`` float64: the metric of the patched run (averaged over noise samples in
            a causal trace).
        window: Layers restored together around each row's layer (1: the row's layer alone).
    """

    kind: str
    rows: tuple[str, ...]
    positions: tuple[int, ...]
    value: torch.Tensor
    window: int = 1

    def __post_init__(self) -> None:
        if self.value.shape != (len(self.rows), len(self.positions)):
            raise ValueError(
                f"{len(self.rows)} rows × {len(self.positions)} positions for values of shape "
                f"{tuple(self.value.shape)}"
            )


@dataclass(frozen=True)
class TraceSetup:
    """How a causal trace corrupted its run.

    Attributes:
        subject: The subject text found in the prompt (``None`` when positions were given).
        noised: The prompt positions whose token embeddings got noise, increasing.
        noise: The noise's standard deviation (``scale`` × the embedding matrix's standard deviation).
        scale: The multiple of the embedding standard deviation.
        samples: How many noise draws are averaged.
        seed: The seed of the noise.
    """

    subject: str | None
    noised: tuple[int, ...]
    noise: float
    scale: float
    samples: int
    seed: int


@dataclass(frozen=True)
class PatchGrids:
    """Patching grids of one clean / corrupted pair (or one causal trace) and the metric they measure.

    Attributes:
        metric: What was measured, at the same position in both runs.
        tokens: Every prompt token as decoded text, ``(seq,)``.
        clean: The metric on the clean run.
        corrupted: The metric on the corrupted run (averaged over noise samples in a trace).
        direction: ``clean → corrupted`` (clean activations written into the corrupted run: how much
            each restores) or ``corrupted → clean`` (corrupted activations written into the clean run: how
            much each breaks).
        grids: One grid per kind, in the order asked for.
        trace: How the run was corrupted in a causal trace (``None`` for a two-prompt grid).
    """

    metric: Metric
    tokens: tuple[str, ...]
    clean: float
    corrupted: float
    direction: str
    grids: tuple[PatchGrid, ...]
    trace: TraceSetup | None = None

    @property
    def source(self) -> float:
        """The metric of the run activations are taken from."""
        return self.clean if self.direction == "clean → corrupted" else self.corrupted

    @property
    def target(self) -> float:
        """The metric of the run activations are written into (each grid cell's baseline)."""
        return self.corrupted if self.direction == "clean → corrupted" else self.clean

    def restored(self, grid: PatchGrid) -> torch.Tensor:
        """``(rows, positions)`` float64: each cell's change as a share of the source − target gap.

        1 means the patch alone moves the metric all the way to the source run's value; NaN everywhere when
        the two runs give the same metric.
        """
        gap = self.source - self.target
        if gap == 0:
            return torch.full_like(grid.value, math.nan)
        return (grid.value - self.target) / gap

    def _repr_html_(self) -> str | None:
        """Jupyter shows the grids as the HTML report's heatmap tables (:mod:`tokenlens.display`)."""
        return html_for(self)

    def to_dataframe(self) -> Any:
        """Every grid's cells as a long pandas ``DataFrame`` (pandas is imported here; not a dependency).

        One row per (grid, row, position): ``kind``, ``row`` (``L3`` or ``L3.H5``), ``layer``, ``head``
        (empty for layer rows), ``position``, ``token`` (the clean prompt's token there), ``value`` (the
        metric of the patched run), ``restored`` (its share of the gap, :meth:`restored`; NaN when the two
        runs give the same metric), ``window``.

        Raises:
            TokenlensError: pandas is not installed.
        """
        pandas = require_pandas()
        rows = []
        for grid in self.grids:
            restored = self.restored(grid).tolist()
            for r, name in enumerate(grid.rows):
                layer, part = component_columns(name)
                head = int(part[1:]) if part.startswith("H") else None
                for c, position in enumerate(grid.positions):
                    value = float(grid.value[r, c])
                    token = self.tokens[position]
                    rows.append(
                        (grid.kind, name, layer, head, position, token, value, restored[r][c], grid.window)
                    )
        columns = ["kind", "row", "layer", "head", "position", "token", "value", "restored", "window"]
        frame = pandas.DataFrame(rows, columns=columns)
        for column in ("layer", "head"):
            frame[column] = frame[column].astype("Int64")
        return frame

    def grid(self, kind: str) -> PatchGrid:
        """The grid of ``kind``.

        Raises:
            KeyError: No grid of that kind was computed.
        """
        for grid in self.grids:
            if grid.kind == kind:
                return grid
        raise KeyError(f"no {kind!r} grid: computed {', '.join(g.kind for g in self.grids)}")


@dataclass(frozen=True)
class Location:
    """Where a causal trace says the target is carried: a position and a window of MLP layers.

    Attributes:
        trace: The causal trace it is read from.
        position: The prompt position whose restored MLP outputs restore the most.
        token: That position's token text.
        layers: ``(first, last)`` the layers of the peak row's window (restored together).
        peak_layer: The ``mlp`` grid's row (the window's centre) that restores the most at ``position``.
        peak: Its restored share of the gap.
        last_subject_token: Whether ``position`` is the last noised position (the published pattern for facts
            is mid-layer MLPs at the subject's last token).
    """

    trace: PatchGrids
    position: int
    token: str
    layers: tuple[int, int]
    peak_layer: int
    peak: float
    last_subject_token: bool

    def _repr_html_(self) -> str | None:
        """Jupyter shows the recommendation and the trace behind it (:mod:`tokenlens.display`)."""
        return html_for(self)

    @property
    def layer_list(self) -> tuple[int, ...]:
        """Every layer of the window, ``first..last``."""
        return tuple(range(self.layers[0], self.layers[1] + 1))

    def sentence(self) -> str:
        """The recommendation in words."""
        first, last = self.layers
        span = f"layer {first}" if first == last else f"layers {first}–{last}"
        return (
            f"the target is carried at position {self.position} (token {self.token!r}) by the MLPs of {span} "
            f"(restoring them there restores {100 * self.peak:.0f}% of the gap"
            + (f"; weak evidence, under {100 * WEAK:.0f}%)" if self.weak else ")")
        )

    @property
    def weak(self) -> bool:
        """Whether the peak restores less than :data:`WEAK` of the gap (the location is a weak guess)."""
        return self.peak < WEAK

"""The view of ``tokenlens locate``: where a causal trace says the target is carried (reads a
:class:`~tokenlens.causal.grid_results.Location`).

Every format gives the recommendation in one sentence (position, token, MLP layers, the share of the gap
their restore brings back; weak evidence flagged), then the evidence: the trace's ``mlp`` grid at the noised
positions, the chosen cell marked. The JSON has the location's fields and the whole trace
(:func:`tokenlens.report.kinds.grids.to_dict`).
"""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.text import Text

from tokenlens.causal.grid_results import WEAK, Location
from tokenlens.report.kinds import grids as grid_views
from tokenlens.report.kit import markdown


def location_to_dict(location: Location) -> dict[str, Any]:
    """``{"location": {position, token, layers, peak_layer, peak, weak, last_subject_token, sentence},
    "trace": <the trace's JSON>}``."""
    return {
        "location": {
            "position": location.position,
            "token": location.token,
            "layers": list(location.layers),
            "peak_layer": location.peak_layer,
            "peak": float(location.peak),
            "weak": location.weak,
            "last_subject_token": location.last_subject_token,
            "sentence": location.sentence(),
        },
        "trace": grid_views.to_dict(location.trace),
    }


def _noised(location: Location) -> tuple[int, ...]:
    return location.trace.trace.noised if location.trace.trace is not None else ()


def location_table(location: Location) -> list[RenderableType]:
    """Rich renderables, in order: the sentence (bold), whether the position is the subject's last token
    and the trace's set-up, then the trace's ``mlp`` heatmap at the noised positions with the chosen cell
    bold and underlined."""
    where = "the last noised (subject) token" if location.last_subject_token else "not the last noised token"
    lines: list[RenderableType] = [
        Text(location.sentence(), style="bold yellow" if location.weak else "bold"),
        Text(
            f"position {location.position} is {where}; {grid_views.setup_text(location.trace)}", style="dim"
        ),
    ]
    grid = location.trace.grid("mlp")
    mark = (grid.rows[location.peak_layer], location.position)
    lines.append(grid_views.heatmap(location.trace, grid, _noised(location), mark))
    return lines


def location_markdown(location: Location) -> str:
    """The sentence, the trace's ``mlp`` grid at the noised positions, then the whole trace
    (:func:`~tokenlens.report.kinds.grids.grids_markdown`)."""
    first, last = location.layers
    span = f"layer {first}" if first == last else f"layers {first}–{last}"
    weak = f"; **weak evidence**, under {100 * WEAK:.0f}%" if location.weak else ""
    where = "the last noised (subject) token" if location.last_subject_token else "not the last noised token"
    sentence = (
        f"The target is carried at position {location.position} (token {markdown.token(location.token)}, "
        f"{where}) by the MLPs of {span}: restoring them there restores {100 * location.peak:.0f}% of the "
        f"gap{weak}."
    )
    grid = location.trace.grid("mlp")
    mark = (grid.rows[location.peak_layer], location.position)
    table = grid_views.markdown_grid(location.trace, grid, _noised(location), mark)
    return (
        f"{sentence}\n\n**The MLP restores at the noised positions** (row: the centre of a window of "
        f"{grid.window} layers; the chosen cell in bold)\n\n{table}\n\n"
        + grid_views.grids_markdown(location.trace)
    )

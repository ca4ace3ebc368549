"""The norm-scale ablation section: each norm's scale replaced by its reference, the metric's change
MEASURED (reads a :class:`~tokenlens.causal.results.NormAblation`).

It is an ablation (:mod:`tokenlens.report.kinds.ablation`) that also shows each norm's scale at the
explained position and the value it was replaced by. An effect, not a contribution.
"""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType

from tokenlens.attribution.result import LogitAttribution
from tokenlens.causal.results import NormAblation
from tokenlens.report.kinds import ablation


def to_dict(norms: NormAblation) -> dict[str, Any]:
    """The ablation's JSON form, plus each norm's scale per position and the value it was replaced by."""
    data = ablation.to_dict(norms.ablation)
    data["scales"] = {e.name: row for e, row in zip(norms.ablation.each, norms.scales.tolist())}
    data["references"] = {e.name: v for e, v in zip(norms.ablation.each, norms.references.tolist())}
    return data


def to_table(norms: NormAblation, result: LogitAttribution) -> RenderableType:
    """Effect of replacing each norm's scale by its reference (an ablation effect, not a contribution)."""
    return ablation.effects_table(norms.ablation, "Norm-scale ablation (measured effects, not contributions)")


def to_html(norms: NormAblation, result: LogitAttribution) -> str:
    """The ablation's effects with each norm's scale at the position and its replacement."""
    return ablation.effects_html(norms.ablation, norms)


def to_markdown(norms: NormAblation, result: LogitAttribution) -> str:
    """The ablation's effects with each norm's scale at the position and its replacement."""
    return ablation.effects_markdown(norms.ablation, norms)

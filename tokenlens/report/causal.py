"""Rendering of causal results (ablation, patching, attribution-patching estimates, norm and RoPE ablation).

Rendering only: these functions read result objects from :mod:`tokenlens.causal` and never run a model.
Each result has a JSON form (``*_to_dict``) carrying every number the table shows, and a rich table.
"""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tokenlens.causal.metrics import Metric
from tokenlens.causal.results import Ablation, EstimateCheck, NormAblation, Patching


def _number(value: float) -> float | None:
    """JSON has no NaN: an undefined number (e.g. a fraction of a zero gap) is ``null``."""
    return None if math.isnan(value) else value


def metric_to_dict(metric: Metric) -> dict[str, Any]:
    return {
        "kind": metric.kind,
        "target_id": metric.target_id,
        "target": metric.target_text,
        "contrast_id": metric.contrast_id,
        "contrast": metric.contrast_text,
        "position": metric.position,
    }


def ablation_to_dict(ablation: Ablation) -> dict[str, Any]:
    return {
        "metric": metric_to_dict(ablation.metric),
        "method": ablation.method,
        "reference": ablation.reference,
        "sites": list(ablation.sites),
        "baseline": ablation.baseline,
        "final_scale_frozen": ablation.final_scale_frozen,
        "each": [{"name": e.name, "value": e.value, "delta": e.delta} for e in ablation.each],
        "together": None
        if ablation.together is None
        else {"value": ablation.together.value, "delta": ablation.together.delta},
    }


def patching_to_dict(patching: Patching) -> dict[str, Any]:
    return {
        "metric": metric_to_dict(patching.metric),
        "clean": patching.clean,
        "corrupted": patching.corrupted,
        "positions": None if patching.positions is None else list(patching.positions),
        "effects": [
            {"name": e.name, "value": e.value, "delta": e.delta, "restored": _number(e.restored)}
            for e in patching.effects
        ],
    }


def estimates_to_dict(check: EstimateCheck) -> dict[str, Any]:
    estimates = check.estimates
    return {
        "metric": metric_to_dict(estimates.metric),
        "kind": "attribution patching (first-order estimates)",
        "reference": estimates.reference,
        "baseline": estimates.baseline,
        "estimates": [
            {"name": n, "estimate": float(v)} for n, v in zip(estimates.names, estimates.estimates.tolist())
        ],
        "confirmed": [
            {"name": r.name, "estimate": r.estimate, "exact": r.exact, "sign_agrees": r.sign_agrees}
            for r in check.rows
        ],
    }


def norms_to_dict(norms: NormAblation) -> dict[str, Any]:
    data = ablation_to_dict(norms.ablation)
    data["scales"] = {e.name: row for e, row in zip(norms.ablation.each, norms.scales.tolist())}
    data["references"] = {e.name: v for e, v in zip(norms.ablation.each, norms.references.tolist())}
    return data


def _delta(value: float) -> Text:
    return Text(f"{value:+.4f}", style="green" if value > 0 else "red" if value < 0 else "dim")


def _metric_title(metric: Metric) -> str:
    what = repr(metric.target_text) if metric.target_text is not None else f"id {metric.target_id}"
    if metric.contrast_id is not None:
        other = repr(metric.contrast_text) if metric.contrast_text is not None else f"id {metric.contrast_id}"
        what = f"{what} vs {other}"
    return f"{metric.kind} of {what} at position {metric.position}"


def _captioned(title: str, detail: str, table: Table) -> RenderableType:
    """A bold title and a wrapped explanation line above a table (a table's own title wraps to its width)."""
    return Group(Text(title, style="bold"), Text(detail, style="dim"), table)


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    return table


def ablation_table(ablation: Ablation, title: str | None = None) -> RenderableType:
    """Each site's measured effect (and all together) on the metric, against the unmodified baseline."""
    frozen = "; final-norm scale frozen" if ablation.final_scale_frozen else ""
    table = _table("ablated", "metric", "Δ")
    for effect in ablation.each:
        table.add_row(effect.name, f"{effect.value:.4f}", _delta(effect.delta))
    if ablation.together is not None:
        table.add_row("together", f"{ablation.together.value:.4f}", _delta(ablation.together.delta))
    return _captioned(
        title or f"{ablation.method.capitalize()} ablation (measured effects)",
        f"{_metric_title(ablation.metric)}; baseline {ablation.baseline:.4f}; replacement: "
        f"{ablation.reference}{frozen}",
        table,
    )


def patching_table(patching: Patching, limit: int = 20) -> RenderableType:
    """Patched sites by |Δ|, with the fraction of the clean–corrupted gap each restores."""
    table = _table("patched", "metric", "Δ", "restored")
    for effect in sorted(patching.effects, key=lambda e: -abs(e.delta))[:limit]:
        restored = "—" if math.isnan(effect.restored) else f"{100 * effect.restored:.0f}%"
        table.add_row(effect.name, f"{effect.value:.4f}", _delta(effect.delta), restored)
    return _captioned(
        "Activation patching, clean → corrupted (measured)",
        f"{_metric_title(patching.metric)}; clean {patching.clean:.4f}, corrupted {patching.corrupted:.4f}; "
        f"top {min(limit, len(patching.effects))} of {len(patching.effects)} by |Δ|",
        table,
    )


def estimates_table(check: EstimateCheck) -> RenderableType:
    """The top estimates with their exact confirmations."""
    e = check.estimates
    table = _table("site", "estimate", "exact", "sign")
    for row in check.rows:
        table.add_row(row.name, _delta(row.estimate), _delta(row.exact), "✓" if row.sign_agrees else "✗")
    return _captioned(
        "Attribution patching: first-order ESTIMATES, top ones confirmed exactly",
        f"{_metric_title(e.metric)}; reference: {e.reference}; {len(e.names)} sites from one backward pass",
        table,
    )


def norms_table(norms: NormAblation) -> RenderableType:
    """Effect of replacing each norm's scale by its reference (an ablation effect, not a contribution)."""
    return ablation_table(norms.ablation, title="Norm-scale ablation (measured effects, not contributions)")

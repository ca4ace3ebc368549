"""The ablation sections: each site replaced, the model rerun, the metric's change MEASURED (reads an
:class:`~tokenlens.causal.results.Ablation`).

One renderer serves every ablation-shaped result: site ablation (zero, mean, resample), RoPE removed per
layer, attention to prompt-tuning virtual tokens cut per layer; :mod:`tokenlens.report.kinds.norms` adds
the norm scales to it. An effect is a change of the metric with everything downstream recomputed, not an
additive share of the logit.
"""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType

from tokenlens.attribution.result import LogitAttribution
from tokenlens.causal.results import Ablation, Effect, NormAblation
from tokenlens.report.kinds.common import metric_html, metric_markdown, metric_text, metric_to_dict
from tokenlens.report.kit import html, markdown, terminal


def to_dict(ablation: Ablation) -> dict[str, Any]:
    """The metric, the replacement, the baseline, and each site's (and all sites') value and Δ."""
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


def effects_table(ablation: Ablation, title: str) -> RenderableType:
    """Each site's measured effect (and all together) on the metric, under ``title``."""
    frozen = "; final-norm scale frozen" if ablation.final_scale_frozen else ""
    table = terminal.table("ablated", "metric", "Δ")
    for effect in ablation.each:
        table.add_row(effect.name, f"{effect.value:.4f}", terminal.signed(effect.delta))
    if ablation.together is not None:
        table.add_row("together", f"{ablation.together.value:.4f}", terminal.signed(ablation.together.delta))
    detail = (
        f"{metric_text(ablation.metric)}; baseline {ablation.baseline:.4f}; replacement: "
        f"{ablation.reference}{frozen}"
    )
    return terminal.captioned(title, detail, table)


def to_table(ablation: Ablation, result: LogitAttribution) -> RenderableType:
    """Each site's measured effect (and all together) on the metric, against the unmodified baseline."""
    return effects_table(ablation, f"{ablation.method.capitalize()} ablation (measured effects)")


def _effects(a: Ablation) -> list[Effect]:
    return [*a.each, *([a.together] if a.together is not None else [])]


def effects_html(a: Ablation, norms: NormAblation | None) -> str:
    """Each effect's value and Δ with a bar, badged MEASURED; with ``norms``, each norm's scale at the
    position and its replacement too."""
    frozen = "; the final-norm scale held at its unmodified value" if a.final_scale_frozen else ""
    effects = _effects(a)
    peak = max((abs(e.delta) for e in effects), default=0.0)
    rows = []
    for k, effect in enumerate(effects):
        extra = ""
        if norms is not None:
            inside = k < len(a.each)
            scale = (
                html.number(float(norms.scales[k, a.metric.position]), ".5f", False)
                if inside
                else "<td></td>"
            )
            extra = scale + (html.number(float(norms.references[k]), ".5f", False) if inside else "<td></td>")
        cells = (
            html.number(effect.value, ".4f", False),
            html.number(effect.delta),
            html.bar(effect.delta, peak),
        )
        rows.append(html.row(effect.name, extra, *cells))
    head = [
        "ablated",
        *(["scale at position", "replaced by"] if norms else []),
        "metric",
        "Δ (measured)",
        "− | +",
    ]
    return (
        f"<p>{html.badge('MEASURED')} Each site replaced ({html.escape(a.method)}; replacement: "
        f"{html.escape(a.reference)}{frozen}), the model rerun, and the change of the metric measured: "
        f"{metric_html(a.metric)}; unmodified baseline {html.number(a.baseline, '.4f', False, 'span')}. "
        "An effect, not an additive share of the logit.</p>" + html.table(head, rows)
    )


def to_html(ablation: Ablation, result: LogitAttribution) -> str:
    """Each effect's value and Δ with a bar, badged MEASURED."""
    return effects_html(ablation, None)


def effects_markdown(a: Ablation, norms: NormAblation | None) -> str:
    """Each effect's value and Δ, labelled MEASURED; with ``norms``, each norm's scale at the position and
    its replacement too."""
    frozen = "; final-norm scale frozen" if a.final_scale_frozen else ""
    rows = []
    for k, e in enumerate(_effects(a)):
        scales = []
        if norms is not None:
            inside = k < len(a.each)
            scales = [
                f"{float(norms.scales[k, a.metric.position]):.5f}" if inside else "",
                f"{float(norms.references[k]):.5f}" if inside else "",
            ]
        rows.append([e.name, *scales, f"{e.value:.4f}", f"{e.delta:+.4f}"])
    head = ["ablated", *(["scale at position", "replaced by"] if norms else []), "metric", "Δ (measured)"]
    return (
        f"**MEASURED** effects ({markdown.plain(a.method)}; replacement: {markdown.plain(a.reference)}"
        f"{frozen}): {metric_markdown(a.metric)}; baseline {a.baseline:.4f}.\n\n" + markdown.table(head, rows)
    )


def to_markdown(ablation: Ablation, result: LogitAttribution) -> str:
    """Each effect's value and Δ, labelled MEASURED."""
    return effects_markdown(ablation, None)

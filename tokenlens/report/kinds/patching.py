"""The activation-patching section: each site's activation from the clean run patched into the corrupted
run, the metric's change MEASURED (reads a :class:`~tokenlens.causal.results.Patching`).

"restored" is a site's Δ as a share of the clean − corrupted gap (undefined, ``—`` or ``null``, when the gap
is zero). Every format lists the sites by |Δ|.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import RenderableType

from tokenlens.attribution.result import LogitAttribution
from tokenlens.causal.results import PatchEffect, Patching
from tokenlens.report.kinds.common import metric_html, metric_markdown, metric_text, metric_to_dict
from tokenlens.report.kit import html, markdown, terminal
from tokenlens.report.kit.text import json_number

TABLE_LIMIT = 20
"""The terminal lists this many sites at most (the largest |Δ|)."""


def _by_size(patching: Patching) -> list[PatchEffect]:
    return sorted(patching.effects, key=lambda e: -abs(e.delta))


def _restored(effect: PatchEffect) -> str:
    return "—" if math.isnan(effect.restored) else f"{100 * effect.restored:.0f}%"


def to_dict(patching: Patching) -> dict[str, Any]:
    """The metric, the clean and corrupted values, the positions patched and every site's effect."""
    return {
        "metric": metric_to_dict(patching.metric),
        "clean": patching.clean,
        "corrupted": patching.corrupted,
        "positions": None if patching.positions is None else list(patching.positions),
        "effects": [
            {"name": e.name, "value": e.value, "delta": e.delta, "restored": json_number(e.restored)}
            for e in patching.effects
        ],
    }


def to_table(patching: Patching, result: LogitAttribution) -> RenderableType:
    """The patched sites by |Δ| (at most :data:`TABLE_LIMIT`), with the share of the gap each restores."""
    table = terminal.table("patched", "metric", "Δ", "restored")
    for effect in _by_size(patching)[:TABLE_LIMIT]:
        table.add_row(effect.name, f"{effect.value:.4f}", terminal.signed(effect.delta), _restored(effect))
    return terminal.captioned(
        "Activation patching, clean → corrupted (measured)",
        f"{metric_text(patching.metric)}; clean {patching.clean:.4f}, corrupted {patching.corrupted:.4f}; "
        f"top {min(TABLE_LIMIT, len(patching.effects))} of {len(patching.effects)} by |Δ|",
        table,
    )


def to_html(patching: Patching, result: LogitAttribution) -> str:
    """Every site by |Δ|: value, Δ, restored and a bar, badged MEASURED."""
    effects = _by_size(patching)
    peak = max((abs(e.delta) for e in effects), default=0.0)
    rows = [
        html.row(
            e.name,
            html.number(e.value, ".4f", False),
            html.number(e.delta),
            f'<td class="num" data-value="{e.restored!r}">{_restored(e)}</td>',
            html.bar(e.delta, peak),
        )
        for e in effects
    ]
    p = patching
    where = "all positions" if p.positions is None else "positions " + ", ".join(map(str, p.positions))
    return (
        f"<p>{html.badge('MEASURED')} Each site's activation taken from the clean run and patched into the "
        f"corrupted run ({where}), one at a time: {metric_html(p.metric)}; clean "
        f"{html.number(p.clean, '.4f', False, 'span')}, "
        f"corrupted {html.number(p.corrupted, '.4f', False, 'span')}. "
        "“restored” is Δ as a share of the clean − corrupted gap.</p>"
        + html.table(["patched", "metric", "Δ (measured)", "restored", "− | +"], rows)
    )


def to_markdown(patching: Patching, result: LogitAttribution) -> str:
    """Every site by |Δ|: value, Δ and restored, labelled MEASURED."""
    rows = [[e.name, f"{e.value:.4f}", f"{e.delta:+.4f}", _restored(e)] for e in _by_size(patching)]
    return (
        f"**MEASURED** effects of patching each site from the clean run into the corrupted run: "
        f"{metric_markdown(patching.metric)}; clean {patching.clean:.4f}, "
        f"corrupted {patching.corrupted:.4f}.\n\n"
        + markdown.table(["patched", "metric", "Δ (measured)", "restored"], rows)
    )

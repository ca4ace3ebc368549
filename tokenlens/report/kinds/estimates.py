"""The attribution-patching section: first-order ESTIMATES of every site's effect from one backward pass,
the top ones confirmed by exact patching, MEASURED (reads an
:class:`~tokenlens.causal.results.EstimateCheck`).

Estimates and measured effects are always labelled apart: an estimate is a linear approximation of the
effect an exact patch measures, and the two can disagree (even in sign) where the model is far from linear.
Zero-ablation estimates (no clean prompt) are the worst case and carry :data:`ZERO_WARNING` in every view.
"""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType

from tokenlens.attribution.result import LogitAttribution
from tokenlens.causal.results import EstimateCheck
from tokenlens.report.kinds.common import metric_html, metric_markdown, metric_text, metric_to_dict
from tokenlens.report.kit import html, markdown, terminal

ZERO_WARNING = (
    "Zero-ablation estimates rank components poorly: removing a whole write is no small change, and the "
    "final norm hides much of it from a first-order term (on SmolLM2-135M one layer estimated +0.20 has an "
    "exact effect of -4.28). Read only the MEASURED column; besides the top estimates, the sites with the "
    "largest bound sum_pos |a|*|grad| are measured too. A clean prompt (--patch) gives far better estimates."
)
"""Shown wherever zero-ablation estimates are (``reference == "zero"``)."""


def _warning(check: EstimateCheck) -> str:
    """:data:`ZERO_WARNING` for zero-ablation estimates, else ``""``."""
    return ZERO_WARNING if check.estimates.reference == "zero" else ""


def to_dict(check: EstimateCheck) -> dict[str, Any]:
    """The metric, the reference, every site's estimate, and the confirmed ones with their exact effect."""
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


def to_table(check: EstimateCheck, result: LogitAttribution) -> RenderableType:
    """The top estimates with their exact confirmations."""
    e = check.estimates
    table = terminal.table("site", "estimate", "exact", "sign")
    for row in check.rows:
        sign = "✓" if row.sign_agrees else "✗"
        table.add_row(row.name, terminal.signed(row.estimate), terminal.signed(row.exact), sign)
    caption = f"{metric_text(e.metric)}; reference: {e.reference}; "
    caption += f"{len(e.names)} sites from one backward pass"
    warning = _warning(check)
    return terminal.captioned(
        "Attribution patching: first-order ESTIMATES, top ones confirmed exactly",
        f"{caption}\n{warning}" if warning else caption,
        table,
    )


def to_html(check: EstimateCheck, result: LogitAttribution) -> str:
    """The confirmed sites (estimate beside exact effect), then every estimate in a folded table."""
    e = check.estimates
    rows = [
        html.row(
            row.name,
            html.number(row.estimate),
            html.number(row.exact),
            f"<td>{'<span class=ok>✓</span>' if row.sign_agrees else '<span class=bad>✗</span>'}</td>",
        )
        for row in check.rows
    ]
    ranked = [html.row(name, html.number(value)) for name, value in e.ranked()]
    return (
        f"<p>{html.badge('ESTIMATE')} First-order estimates (attribution patching) of every site's effect, "
        f"{len(e.names)} sites from one backward pass; reference: {html.escape(e.reference)}; "
        f"{metric_html(e.metric)}; baseline {html.number(e.baseline, '.4f', False, 'span')}. The top ones "
        f"are confirmed by exact patching: the {html.badge('MEASURED')} column.</p>"
        + (f'<p class="note">{html.escape(_warning(check))}</p>' if _warning(check) else "")
        + html.table(["site", "estimate (ESTIMATE)", "exact (MEASURED)", "same sign"], rows)
        + f"<details><summary>All {len(e.names)} estimates, by |estimate|</summary>"
        + html.table(["site", "estimate"], ranked)
        + "</details>"
    )


def to_markdown(check: EstimateCheck, result: LogitAttribution) -> str:
    """The confirmed sites, estimate beside exact effect."""
    e = check.estimates
    rows = [
        [row.name, f"{row.estimate:+.4f}", f"{row.exact:+.4f}", "✓" if row.sign_agrees else "✗"]
        for row in check.rows
    ]
    return (
        f"**ESTIMATES** (attribution patching, first order) for {len(e.names)} sites from one backward pass "
        f"(reference: {markdown.plain(e.reference)}): {metric_markdown(e.metric)}; "
        f"baseline {e.baseline:.4f}. The top ones confirmed by exact patching (**MEASURED**).\n\n"
        + (f"> {markdown.plain(_warning(check))}\n\n" if _warning(check) else "")
        + markdown.table(["site", "estimate (ESTIMATE)", "exact (MEASURED)", "same sign"], rows)
    )

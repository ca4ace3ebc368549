"""A GitHub-flavoured Markdown report of a base-vs-tuned diff, for pull requests and CI logs (rendering only).

The sections of the HTML diff report (:mod:`tokenlens.report.diff_html`) as compact tables: summary,
probes, one subsection per probe, weights, aggregates. Untrusted text follows
:mod:`tokenlens.report.markdown`: tokens and prompts are their ``repr`` in a code span (``|`` escaped inside
tables), other free text is escaped with :func:`~tokenlens.report.markdown.plain`. Causal effects are
labelled MEASURED, attribution-patching values ESTIMATE; ``—`` marks a value that was not measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import quote

from tokenlens.diff.result import (
    READOUT_TERMS,
    AggregateRow,
    ComponentEffect,
    DiffReport,
    ProbeDiff,
    Telescope,
)
from tokenlens.report.diff import (
    HOW_TO_READ,
    layer_ranges,
    number,
    prob_change,
    sorted_effects,
    verdict_summary,
    verdict_word,
)
from tokenlens.report.markdown import _p, _table, code, plain, token


def _f(value: float | None, fmt: str = "+.4f") -> str:
    value = number(value)
    return "—" if value is None else format(value, fmt)


def _label(p: ProbeDiff, limit: int = 60, table: bool = True) -> str:
    text = p.probe.label
    return token(text if len(text) <= limit else text[: limit - 1] + "…", table)


def _summary(report: DiffReport) -> str:
    failures = ", ".join(
        f"[{i}](#probe-{i})" for i, p in enumerate(report.probes) if p.verdict.passed is False
    )
    lines = [
        f"- **base**: {code(report.base)}",
        f"- **tuned**: {code(report.tuned)}",
        f"- **pairing**: {plain(report.pairing)}",
        f"- **thresholds**: intended probes gain p ≥ {report.min_gain:g}; controls keep KL(base ‖ tuned) ≤ "
        f"{report.max_kl:g} nats",
        f"- **check**: **{verdict_summary(report)}**",
    ]
    if failures:
        lines.append(f"- **failing probes**: {failures}")
    return "\n".join(lines)


def _probes(report: DiffReport) -> str:
    rows = []
    for i, p in enumerate(report.probes):
        b, t = p.base_top[0], p.tuned_top[0]
        rows.append(
            [
                f"[{i}](#probe-{i})",
                _label(p),
                p.probe.expect or "—",
                f"{token(b.token, True)} {_p(b.prob)}",
                f"{token(t.token, True)} {_p(t.prob)}",
                "⇄ yes" if p.flipped else "no",
                f"{p.kl:.4f}",
                f"{p.js:.4f}",
                token(p.tracked.token, True) + (" (target)" if p.tracked_is_target else ""),
                f"{_p(p.tracked.prob)} → {_p(p.tracked_tuned.prob)}",
                f"{prob_change(p.prob_gain)}",
                "✅ pass" if p.verdict.passed else "❌ **FAIL**" if p.verdict.passed is False else "—",
            ]
        )
    head = ["#", "probe", "expect", "base top-1", "tuned top-1", "flip", "KL", "JS", "tracked", "p", "Δp"]
    return _table([*head, "check"], rows)


def _top(p: ProbeDiff) -> str:
    rows = []
    for k in range(max(len(p.base_top), len(p.tuned_top))):
        cells = [str(k + 1)]
        for side in (p.base_top, p.tuned_top):
            s = side[k] if k < len(side) else None
            cells += ["", ""] if s is None else [token(s.token, True), _p(s.prob)]
        rows.append(cells)
    return _table(["rank", "base token", "base p", "tuned token", "tuned p"], rows)


def _split(p: ProbeDiff, split: Telescope, what: str) -> str:
    readout = ", ".join(f"{name} {v:+.4f}" for name, v in zip(READOUT_TERMS, split.readout.tolist()))
    mark = "✓ exact" if split.exact else "✗ **NOT EXACT**"
    direct = float(split.direct.double().sum())
    return (
        f"- **{what}**: {split.base_value:+.4f} → {split.tuned_value:+.4f} (Δ {split.observed:+.4f}) = "
        f"Σ direct {direct:+.4f} + readout terms ({readout}); split error {split.error:.1e} {mark}"
    )


def _effects(effects: Sequence[ComponentEffect], top: int) -> str:
    rows = [
        [
            e.name,
            _f(e.direct),
            _f(e.causal),
            _f(e.causal_reverse),
            _f(e.causal_kl, ".4f"),
            _f(e.estimate),
        ]
        for e in sorted_effects(effects)[:top]
    ]
    head = ["component", "direct", "causal (MEASURED)", "reverse (MEASURED)", "KL", "estimate (ESTIMATE)"]
    note = f"Top {len(rows)} of {len(effects)} by measured |causal|.\n\n"
    return note + _table(head, rows)


def _prompt(p: ProbeDiff) -> str:
    """The prompt's repr, or each chat message as ``role: repr(content)``."""
    if p.probe.prompt is not None or p.probe.messages is None:
        return token(p.probe.prompt or "")
    turns = [
        f"{plain(str(m.get('role', '?')))}: {token(str(m.get('content', '')))}" for m in p.probe.messages
    ]
    return "chat messages " + "; ".join(turns)


def _probe(i: int, p: ProbeDiff, top: int) -> str:
    tracked = token(p.tracked.token)
    source = f" (line {p.probe.line})" if p.probe.line is not None else ""
    lines = [
        f"- **prompt**{source}: {_prompt(p)}",
        f"- **explained position**: {p.position} (next token after {token(p.tokens[p.position])})"
        if 0 <= p.position < len(p.tokens)
        else f"- **explained position**: {p.position}",
        f"- **expect**: {p.verdict.expect or '—'}; **verdict**: {verdict_word(p.verdict.passed)} — "
        f"{plain(p.verdict.reason)}",
        f"- **tracked** {tracked} (id {p.tracked.id}){' = target' if p.tracked_is_target else ''}: p "
        f"{_p(p.tracked.prob)} → {_p(p.tracked_tuned.prob)} ({prob_change(p.prob_gain)}), "
        f"rank {p.base_rank} → {p.tuned_rank}; KL(base ‖ tuned) {p.kl:.4f}, JS {p.js:.4f}",
        _split(p, p.split, f"logit[{tracked}]"),
    ]
    if p.flip_split is not None:
        flip = f"logit[{token(p.tuned_top[0].token)}] − logit[{token(p.base_top[0].token)}]"
        lines.append(_split(p, p.flip_split, f"flip {flip}"))
    parts = ["\n".join(lines), _top(p), "**Components**: " + _effects(p.components, top)]
    if p.heads:
        parts.append("**Heads**: " + _effects(p.heads, top))
    if p.neurons:
        parts.append("**Neurons**: " + _effects(p.neurons, top))
    if p.experts:
        parts.append("**Experts**: " + _effects(p.experts, top))
    if p.virtual:
        parts.append("**Attention to the virtual tokens** (direct): " + _effects(p.virtual, top))
    if p.notes:
        parts.append("\n".join(f"> note: {plain(n)}" for n in p.notes))
    return "\n\n".join(parts)


def _weights(report: DiffReport, top: int) -> str:
    w = report.weights
    rows = [
        [code(c.name).replace("|", "\\|"), c.kind, "—" if c.layer is None else str(c.layer), f"{c.norm:.4g}",
         _f(c.relative, ".3g"), f"{c.numel:,}"]
        for c in w.changes[:top]
    ]  # fmt: skip
    return (
        f"Layers touched: **{layer_ranges(w.layers)}**; {len(w.changes)} tensors differ, {w.unchanged} "
        f"unchanged. {plain(w.note)}\n\n"
        + _table(["tensor", "kind", "layer", "‖ΔW‖", "relative", "elements"], rows)
    )


def _aggregate(rows: Sequence[AggregateRow], top: int) -> str:
    body = [
        [r.name, _f(r.mean_abs_causal, ".4f"), _f(r.mean_abs_direct, ".4f"), f"{r.measured}/{r.probes}"]
        for r in rows[:top]
    ]
    return _table(["component", "mean \\|causal\\| (MEASURED)", "mean \\|direct\\|", "measured"], body)


def _image(slug: str, path: str) -> str:
    return f"![{plain(slug)}]({quote(path, safe='/')})"


def _home(slug: str, count: int) -> str:
    """The section a figure goes to: ``probe-{i}`` for ``waterfall-3``, ``probes`` for the heatmap."""
    kind, _, rest = slug.rpartition("-")
    if kind and rest.isdigit() and int(rest) < count:
        return f"probe-{rest}"
    return "probes" if slug == "heatmap" else "figures"


def render_diff_markdown(
    report: DiffReport, *, figures: Mapping[str, str] | None = None, top: int = 10
) -> str:
    """A GitHub-flavoured Markdown report of ``report``: summary, probes, per-probe details, weights,
    aggregates, how to read it.

    Args:
        report: The diff.
        figures: Figure paths relative to the Markdown file, by the slugs of
            :func:`tokenlens.report.plots.diff.diff_figures` (``heatmap`` under the probes, ``waterfall-3``,
            ``flip-3``, ``topk-3`` under probe 3, any other slug in a Figures section).
        top: Rows per components / heads / neurons / weights / aggregate table (the JSON has all).

    Returns:
        The Markdown text, ending with a newline. Every probe has an anchor ``probe-{i}``.
    """
    homes: dict[str, list[str]] = {}
    for slug, path in (figures or {}).items():
        homes.setdefault(_home(slug, len(report.probes)), []).append(_image(slug, path))

    def block(anchor: str, title: str, content: str, level: str = "##") -> str:
        heading = f'<a id="{anchor}"></a>\n{level} {title}'
        return "\n\n".join(part for part in (heading, content, *homes.get(anchor, [])) if part)

    parts = [
        f"# tokenlens diff: {code(report.base)} → {code(report.tuned)}",
        block("summary", "Summary", _summary(report)),
        block("probes", "Probes", _probes(report)),
    ]
    for i, p in enumerate(report.probes):
        parts.append(block(f"probe-{i}", f"Probe {i}: {_label(p, table=False)}", _probe(i, p, top), "###"))
    parts.append(block("weights", "Weights", _weights(report, top)))
    aggregate = [_aggregate(report.aggregate, top)]
    if len(report.groups) > 1:
        aggregate += [
            f"**Group {code(name) or '(none)'}**\n\n{_aggregate(rows, top)}"
            for name, rows in report.groups.items()
        ]
    parts.append(block("aggregate", "Components over all probes", "\n\n".join(aggregate)))
    if "figures" in homes:
        parts.append(block("figures", "Figures", ""))
    parts.append(
        block("how-to-read", "How to read this report", "\n\n".join(plain(text) for text in HOW_TO_READ))
    )
    return "\n\n".join(parts) + "\n"

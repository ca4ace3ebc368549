"""A self-contained HTML report of a base-vs-tuned diff (rendering only: no model runs here).

One HTML5 file built from :mod:`tokenlens.report.kit.html` with the attribution report's safety rules:
inline styles, a Content-Security-Policy that forbids network loads and every script but the report's own
explorer (:mod:`tokenlens.report.diff_explorer`, allowed by its hash: a base / tuned / change toggle, failing
probes only, a heatmap row jumps to its probe; it only adds to the static page), figures as ``data:`` PNG
URIs, every token and prompt shown as its escaped ``repr`` in a bidi-isolated box. Sections
follow :func:`tokenlens.report.diff_layout.plan_diff` and have stable ids: ``summary``, ``probes``,
``probe-{n}`` per probe (``n`` its probe-file line, or its place among command-line prompts from 1),
``weights``, ``aggregate`` (``figures`` for figures with no other home), ``how-to-read``; the probes ×
components heatmap is a table (``heatmap``, under the probe table), not a picture. Number cells carry their
exact value in ``data-value`` (``null`` for a value that was not measured, shown as ``—``); every row of a
probe's components, heads, neurons, experts and virtual-token tables carries ``data-component`` (its name)
and ``data-value`` (its direct term: its part of the change of the tracked value); causal effects are badged
MEASURED, attribution-patching values ESTIMATE. Colours: green up and red down in the tables,
blue up and red down in the figures (how-to-read says so).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from tokenlens.attribution.result import TokenScore
from tokenlens.diff.result import (
    READOUT_TERMS,
    AggregateRow,
    ComponentEffect,
    Continuations,
    DiffReport,
    ProbeDiff,
    TargetAnswer,
    Telescope,
)
from tokenlens.report import diff_explorer, explorer
from tokenlens.report import diff_layout as layout
from tokenlens.report.kit import html
from tokenlens.report.kit.html import number, optional_number
from tokenlens.report.kit.text import change_format, cut, probability, show_token, visible

_DIFF_CSS = """
.kind.pass{background:#1a7f37}.kind.fail{background:#c62828}.kind.none{background:#888}
tr.failed td{background:#fdecea}.flip{color:#a86a1f;font-weight:bold}
table.heat td,table.heat th{padding:.1em .3em;font-size:.8em;border-bottom:1px solid #f0f0f0}
table.heat th.component{writing-mode:vertical-rl;transform:rotate(180deg);font-weight:normal;
font-family:ui-monospace,monospace;white-space:nowrap;vertical-align:bottom}
table.heat td.num{color:#1b1b1b}table.heat td.probe{position:sticky;left:0;background:#fff;white-space:nowrap}
"""


def _gain(value: float, tag: str = "td") -> str:
    """A probability change, in e-notation below 0.001 in size."""
    return number(value, change_format(value), tag=tag)


def _verdict(passed: bool | None) -> str:
    cls = "none" if passed is None else "pass" if passed else "fail"
    return f'<span class="kind {cls}">{html.escape(layout.verdict_word(passed).upper())}</span>'


def _label(p: ProbeDiff, limit: int = 48) -> str:
    return html.token(cut(p.probe.label, limit), title=visible(p.probe.label))


def _score(s: TokenScore) -> str:
    return f"{html.token(s.token, title=f'id {s.id}')} {html.escape(probability(s.prob))}"


def _summary(report: DiffReport) -> str:
    failing = [
        (layout.probe_number(p, i), layout.probe_where(p, i))
        for i, p in enumerate(report.probes)
        if p.verdict.passed is False
    ]
    check = "none" if report.judged == 0 else "pass" if report.passed else "fail"
    rows = [
        f'<tr><th>base</th><td><bdi dir="ltr">{html.escape(visible(report.base))}</bdi></td></tr>',
        f'<tr><th>tuned</th><td><bdi dir="ltr">{html.escape(visible(report.tuned))}</bdi></td></tr>',
        f"<tr><th>pairing</th><td>{html.escape(visible(report.pairing))}</td></tr>",
        f"<tr><th>intended probes</th><td>pass when the target's probability gains at least "
        f"{number(report.min_gain, 'g', False, 'span', name='min_gain')} (a target answer: "
        "when log p(target) gains that many nats)</td></tr>",
        f"<tr><th>controls</th><td>pass when KL(base ‖ tuned) is at most "
        f"{number(report.max_kl, 'g', False, 'span', name='max_kl')} nats</td></tr>",
        f'<tr><th>check</th><td id="verdict" class="kind {check}">'
        f"{html.escape(layout.verdict_summary(report))}</td></tr>",
    ]
    if failing:
        links = ", ".join(f'<a href="#probe-{n}">{where}</a>' for n, where in failing)
        rows.append(f"<tr><th>failing probes</th><td>{links}</td></tr>")
    return html.key_values(rows)


def _probes(report: DiffReport) -> str:
    rows = []
    for i, p in enumerate(report.probes):
        cls = ' class="failed"' if p.verdict.passed is False else ""
        tracked = html.token(p.tracked.token, title=f"id {p.tracked.id}") + (
            " (target)" if p.tracked_is_target else ""
        )
        n = layout.probe_number(p, i)
        rows.append(
            f'<tr data-name="probe-{n}"{cls}><td><a href="#probe-{n}">{n}</a></td><td>{_label(p)}</td>'
            f"<td>{html.escape(p.probe.expect or '—')}</td><td>{_score(p.base_top[0])}</td>"
            f"<td>{_score(p.tuned_top[0])}</td>"
            f"<td>{'<span class=flip>⇄ flip</span>' if p.flipped else ''}</td>"
            f"{number(p.kl, '.4f', False)}{number(p.js, '.4f', False)}<td>{tracked}</td>"
            f"{number(p.tracked.prob, 'p', False)}{number(p.tracked_tuned.prob, 'p', False)}"
            f"{_gain(p.prob_gain)}"
            f"<td>{_verdict(p.verdict.passed)}</td></tr>"
        )
    head = [
        layout.number_column(report),
        "probe",
        "expect",
        "base top-1",
        "tuned top-1",
        "",
        "KL",
        "JS",
        "tracked",
        "p base",
    ]
    return html.table([*head, "p tuned", "Δp", "check"], rows, "probes")


def _heatmap(report: DiffReport) -> str:
    """Probes × components as a table (the PNG heatmap's numbers, readable at any width): one row per probe,
    one column per component in model order, each cell its value on a green (up) / red (down) background
    whose strength is |value| over the largest |value|; ``—`` where not measured."""
    if not report.probes:
        return ""
    heat = layout.heatmap_grid(report)
    peak = heat.peak
    rows = []
    for i, (p, values) in enumerate(zip(report.probes, heat.values, strict=True)):
        n = layout.probe_number(p, i)
        cells = "".join(
            optional_number(None, name=name)
            if v is None
            else number(v, "+.2f", False, style=html.shade(v, peak), name=name)
            for name, v in zip(heat.names, values, strict=True)
        )
        rows.append(
            f'<tr data-name="probe-{n}"><td class="probe"><a href="#probe-{n}">{n}</a> {_label(p, 28)}</td>'
            f"{cells}</tr>"
        )
    head = [f"{html.escape(layout.number_column(report))} probe"]
    head += [f'<bdi dir="ltr">{html.escape(visible(name))}</bdi>' for name in heat.names]
    table = html.table(head, rows, "heat").replace("<th><bdi", '<th class="component"><bdi')
    what = (
        f"causal effects {html.badge('MEASURED')} by patching each tuned output into the base run (— not "
        "measured)"
        if heat.kind == "causal"
        else "direct terms of the exact split (base readout frozen)"
    )
    return (
        '<div id="heatmap" data-sides="change">'
        "<h3>Each component's effect on each probe's tracked-token logit</h3>"
        f"<p>Probes × components: {what}, in logit units; green raises the tracked token's logit, red lowers "
        f"it, the strongest colour is the largest |value| ({number(peak, '.3g', False, 'span')}).</p>"
        f"{table}</div>"
    )


def _top(p: ProbeDiff) -> str:
    def cells(s: TokenScore | None) -> str:
        return (
            "<td></td><td></td>"
            if s is None
            else f"<td>{html.token(s.token)}</td>{number(s.prob, 'p', False)}"
        )

    rows = [f"<tr><td>{k}</td>{cells(b)}{cells(t)}</tr>" for k, b, t in layout.top_rows(p)]
    return html.table(layout.TOP_COLUMNS, rows)


def _split(split: Telescope, what: str, anchor: str) -> str:
    cells = "".join(number(v, name=name) for name, v in zip(READOUT_TERMS, split.readout.tolist()))
    rows = [f"<tr><td>Δ</td>{cells}</tr>"]
    base = number(split.base_value, "+.4f", False, "span")
    tuned = number(split.tuned_value, "+.4f", False, "span")
    direct = number(float(split.direct.double().sum()), tag="span")
    error = number(split.error, ".1e", False, "span")
    return (
        f'<div id="{html.escape(anchor)}" data-sides="change"><p>{what}: {base} → {tuned} '
        f"(Δ {number(split.observed, tag='span')}) = Σ direct {direct} + the readout terms:</p>"
        + html.table(["readout term", *READOUT_TERMS], rows)
        + f'<p class="check">split error {error} {html.exact_mark(split.exact)}</p></div>'
    )


def _effects(part: layout.ProbePart, top: int) -> str:
    effects = part.effects
    rows = [
        _effect_row(
            e,
            optional_number(e.direct),
            optional_number(e.causal),
            optional_number(e.causal_reverse),
            optional_number(e.causal_kl, ".4f", False),
            optional_number(e.estimate),
        )
        for e in effects[:top]
    ]
    measured, estimate = html.badge("MEASURED"), html.badge("ESTIMATE")
    head = [
        "component",
        "direct",
        f"causal {measured}",
        f"reverse {measured}",
        "KL (nats)",
        f"estimate {estimate}",
    ]
    return (
        f'<div class="effects" data-part="{html.escape(part.key)}" data-sides="change">'
        f"<h3>{html.escape(part.heading)}</h3>"
        f"<p>The top {len(rows)} of {len(effects)} by measured |causal|.</p>"
        f"{html.table(head, rows)}</div>"
    )


def _effect_row(e: ComponentEffect, *cells_html: str) -> str:
    """A component's (head's, neuron's, …) row: ``data-component`` its name, ``data-value`` its direct term
    exactly (``null`` when there is none)."""
    if e.direct is not None and math.isfinite(e.direct):
        return html.row(e.name, *cells_html, value=e.direct)
    name = html.escape(e.name)
    return (
        f'<tr data-name="{name}" data-component="{name}" data-value="null"><td>{name}</td>'
        f"{''.join(cells_html)}</tr>"
    )


FAILED = ' class="failed"'


def _continuations(c: Continuations, anchor: str) -> str:
    def cell(text: str | None) -> str:
        return "<td>—</td>" if text is None else f"<td>{html.token(text)}</td>"

    rows = [
        f"<tr{FAILED if diverged else ''}><td>{k}</td>{cell(b)}{cell(t)}"
        f"{optional_number(kl, '.4f', False)}</tr>"
        for k, b, t, kl, diverged in layout.continuation_rows(c)
    ]
    facts = [
        f"<tr><th>base continuation</th><td>{html.token(''.join(c.base_tokens))}</td></tr>",
        f"<tr><th>tuned continuation</th><td>{html.token(''.join(c.tuned_tokens))}</td></tr>",
        f"<tr><th>where</th><td>{html.escape(visible(layout.continuation_summary(c, show_token)))}</td></tr>",
        f"<tr><th>mean KL along base</th>{number(c.mean_kl, '.4f', False, name='mean_kl')}</tr>",
    ]
    return (
        f'<div id="{html.escape(anchor)}"><h3>Greedy continuations</h3>'
        + html.key_values(facts)
        + html.table(layout.CONTINUATION_COLUMNS, rows)
        + "</div>"
    )


def _target(a: TargetAnswer, anchor: str) -> str:
    rows = [
        f"<tr><td>{k}</td><td>{html.token(tok)}</td>{number(b, '+.4f', False)}{number(t, '+.4f', False)}"
        f"{number(t - b)}<td>{html.token(bt.token)}</td><td>{html.token(tt.token)}</td>"
        f"{number(kl, '.4f', False)}</tr>"
        for k, tok, b, t, bt, tt, kl in layout.target_rows(a)
    ]
    notes = "".join(f'<p class="note">note: {html.escape(visible(n))}</p>' for n in a.notes)
    return (
        f'<div id="{html.escape(anchor)}"><h3>Target answer {html.token(a.text)}</h3>'
        f"<p>{html.escape(visible(layout.target_summary(a)))}</p>"
        + html.table(layout.TARGET_COLUMNS, rows)
        + notes
        + "</div>"
    )


def _part(n: int, p: ProbeDiff, part: layout.ProbePart, top: int) -> str:
    if part.key == "answer":
        anchor = f"probe-{n}-answer"
        return (
            _continuations(p.answer, anchor)
            if isinstance(p.answer, Continuations)
            else _target(p.answer, anchor)
        )
    if part.key == "split":
        return _split(part.split, layout.tracked_value(p, html.token), f"probe-{n}-split")
    if part.key == "flip":
        what = f"flip: logit[{html.token(p.tuned_top[0].token)}] − logit[{html.token(p.base_top[0].token)}]"
        return _split(part.split, what, f"probe-{n}-flip")
    return _effects(part, top)


def _prompt(p: ProbeDiff) -> str:
    """The prompt's repr, or each chat message as ``role: repr(content)``."""
    if p.probe.prompt is not None or p.probe.messages is None:
        return f'<bdi dir="ltr">{html.escape(show_token(p.probe.prompt or ""))}</bdi>'
    turns = [
        f"{html.escape(visible(str(m.get('role', '?'))))}: "
        f'<bdi dir="ltr">{html.escape(show_token(str(m.get("content", ""))))}</bdi>'
        for m in p.probe.messages
    ]
    return "chat messages:<br>" + "<br>".join(turns)


def _probe(i: int, p: ProbeDiff, top: int) -> str:
    line = "" if p.probe.line is None else f" (probe file line {p.probe.line})"
    target = " (the target)" if p.tracked_is_target else ""
    tokens = html.token_row(p.tokens, p.token_ids, p.position)
    expect = html.escape(p.verdict.expect or "—")
    rows = [
        f"<tr><th>prompt</th><td>{_prompt(p)}{html.escape(line)}</td></tr>",
        f'<tr><th>tokens</th><td class="tokens">{tokens}</td></tr>',
        f"<tr><th>position</th><td>{p.position}</td></tr>",
        f"<tr><th>verdict</th><td>{_verdict(p.verdict.passed)} expect {expect}: "
        f"{html.escape(visible(p.verdict.reason))}</td></tr>",
        f"<tr><th>tracked</th><td>{html.token(p.tracked.token)} id {p.tracked.id}{target}"
        f"; rank {p.base_rank} → {p.tuned_rank} (1 = top-1)</td></tr>",
        f"<tr><th>p base → tuned</th><td>{number(p.tracked.prob, 'p', False, 'span')} → "
        f"{number(p.tracked_tuned.prob, 'p', False, 'span')} ({_gain(p.prob_gain, 'span')})</td></tr>",
        f"<tr><th>KL(base ‖ tuned)</th>{number(p.kl, '.4f', False, name='kl')}</tr>",
        f"<tr><th>JS</th>{number(p.js, '.4f', False, name='js')}</tr>",
    ]
    n = layout.probe_number(p, i)
    parts = [html.key_values(rows), _top(p), *(_part(n, p, part, top) for part in layout.probe_plan(p))]
    parts += [f'<p class="note">note: {html.escape(visible(n))}</p>' for n in p.notes]
    return "".join(parts)


def _weights(report: DiffReport, top: int) -> str:
    w = report.weights
    rows = [
        f'<tr data-name="{html.escape(c.name)}"><td><bdi dir="ltr">{html.escape(visible(c.name))}</bdi></td>'
        f"<td>{html.escape(c.kind)}</td>"
        f"<td>{'—' if c.layer is None else c.layer}</td>{number(c.norm, '.4g', False)}"
        f"{optional_number(c.relative, '.3g', False)}{number(c.numel, ',', False)}</tr>"
        for c in w.changes[:top]
    ]
    return (
        f"<p>Layers touched: <b>{html.escape(layout.layer_ranges(w.layers))}</b>; {len(w.changes)} tensors "
        f"differ, {w.unchanged} unchanged. {html.escape(visible(w.note))}</p>"
        + html.table(layout.WEIGHT_COLUMNS, rows)
    )


def _aggregate_table(rows: Sequence[AggregateRow], top: int) -> str:
    body = [
        html.row(
            r.name,
            optional_number(r.mean_abs_causal, ".4f", False),
            number(r.mean_abs_direct, ".4f", False),
            f'<td class="num">{r.measured}/{r.probes}</td>',
        )
        for r in rows[:top]
    ]
    return html.table(
        ["component", f"mean |causal| {html.badge('MEASURED')}", "mean |direct|", "measured"], body
    )


def _aggregate(report: DiffReport, top: int) -> str:
    return "".join(
        ("" if name is None else f"<h3>Group {html.token(name) if name else '(none)'}</h3>")
        + _aggregate_table(rows, top)
        for name, rows in layout.aggregate_tables(report)
    )


def _metrics(report: DiffReport) -> str:
    rows = [
        f'<tr data-name="{html.escape(m.name)}"><td>{html.escape(m.name)}</td>'
        f"{optional_number(m.share if m.total else None, '.3f', False)}"
        f"<td>{html.escape(visible(layout.metric_value(m)))}</td><td>{html.escape(visible(m.protocol))}</td></tr>"
        for m in report.metrics
    ]
    return html.table(["metric", "share", "value", "protocol: what counts, over which probes"], rows)


def _corpus(report: DiffReport) -> str:
    c = report.corpus
    if c is None:
        return ""
    rows = [
        f'<tr data-name="drifted-{k}"><td>{k}</td><td>{d.passage + 1}</td><td>{d.position}</td>'
        f"{number(d.kl, '.4g', False)}<td>{html.token(d.base_top1.token)}</td>"
        f"<td>{html.token(d.tuned_top1.token)}{' <span class=flip>⇄</span>' if d.changed else ''}</td>"
        f"<td>{html.escape(', '.join(layout.mover_text(e) for e in layout.movers(d)))}</td>"
        f"<td>{html.token(layout.context_tail(d), title=d.text)}</td></tr>"
        for k, d in enumerate(c.drifted, 1)
    ]
    facts = [
        f'<tr><th>corpus</th><td><bdi dir="ltr">{html.escape(visible(c.source))}</bdi></td></tr>',
        f"<tr><th>mean KL</th>{number(c.mean_kl, '.4g', False, name='corpus_mean_kl')}</tr>",
        f"<tr><th>p99 KL</th>{number(c.p99_kl, '.4g', False, name='corpus_p99_kl')}</tr>",
        f"<tr><th>top-1 changed</th>{number(c.top1_share, '.3f', False, name='corpus_top1_changed')}</tr>",
        f"<tr><th>scored</th><td>{html.escape(visible(layout.corpus_summary(c)))}</td></tr>",
        f"<tr><th>protocol</th><td>{html.escape(layout.CORPUS_PROTOCOL)}</td></tr>",
    ]
    head = ["#", "passage", "token", "KL", "base top-1", "tuned top-1", "moved by", "context (its end)"]
    return html.key_values(facts) + "<h3>Most-drifted contexts</h3>" + html.table(head, rows)


def _images(report: DiffReport) -> dict[str, bytes]:
    from tokenlens.report.plots import figure_png
    from tokenlens.report.plots.diff import diff_figures

    return {slug: figure_png(fig, dpi=96) for slug, fig in diff_figures(report, heatmap=False).items()}


def render_diff_html(
    report: DiffReport, *, figures: bool = True, images: Mapping[str, bytes] | None = None, top: int = 10
) -> str:
    """One self-contained HTML5 document showing ``report`` (no network, inline styles), ending with the
    explorer's data and script (:mod:`tokenlens.report.diff_explorer`; the page is the static report without
    it).

    Args:
        report: The diff.
        figures: Draw :func:`tokenlens.report.plots.diff.diff_figures` and embed them as PNG ``data:`` URIs
            (each probe's figures in its section). The probes × components heatmap is always an HTML table
            under the probe table (id ``heatmap``), never a picture.
        images: Ready PNG bytes by slug instead of drawing them (same slugs; a ``heatmap`` image is left
            out: the table replaces it); ignored when ``figures`` is false.
        top: Rows per components / heads / neurons / weights / aggregate table (the JSON has all).

    Returns:
        The document.

    Raises:
        ValueError: An image that is not PNG data.
    """
    pngs = (dict(images) if images is not None else _images(report)) if figures else {}
    pngs = {slug: png for slug, png in pngs.items() if layout.figure_home(slug, ()) != "probes"}
    plan, homes = layout.plan_diff(report, list(pngs))
    placed = {
        anchor: "".join(html.figure(s, pngs[s], layout.figure_alt(s)) for s in slugs)
        for anchor, slugs in homes.items()
    }
    content = {
        "summary": lambda _: _summary(report),
        "metrics": lambda _: _metrics(report),
        "probes": lambda _: _probes(report) + _heatmap(report),
        "corpus": lambda _: _corpus(report),
        "probe": lambda i: _probe(i, report.probes[i], top),
        "weights": lambda _: _weights(report, top),
        "aggregate": lambda _: _aggregate(report, top),
        "figures": lambda _: "",
        "how-to-read": lambda _: html.paragraphs((*layout.HOW_TO_READ, layout.RANKS, layout.COLOURS_HTML)),
    }
    sections = []
    for s in plan:
        title = s.title if s.index is None else f"{s.title}: {_label(report.probes[s.index])}"
        sections.append(html.section(s.anchor, title, content[s.key](s.index), placed.get(s.anchor, "")))
    nav = " ".join(f'<a href="#{a}">{a}</a>' for a in ("summary", "probes", "weights", "aggregate"))
    title = visible(f"tokenlens diff: {report.base} → {report.tuned}")
    header = (
        f"<h1>{html.escape(title)}</h1>\n<p>Which next-token choices moved between the base model and its "
        f"fine-tune, which components moved them, and whether they moved only where intended. Check: "
        f"<b>{html.escape(layout.verdict_summary(report))}</b>.</p>\n<nav>{nav}</nav>"
    )
    return html.page(
        title,
        header,
        "\n".join(sections),
        html.CSS + _DIFF_CSS + explorer.CSS + diff_explorer.CSS,
        end_html=explorer.explorer_html(diff_explorer.diff_explorer_data(report), diff_explorer.SCRIPT),
        script_hashes=[explorer.script_hash(diff_explorer.SCRIPT)],
    )

"""A GitHub-flavoured Markdown report of a base-vs-tuned diff, for pull requests and CI logs (rendering only).

The sections of the HTML diff report (both follow :func:`tokenlens.report.diff_layout.plan_diff`) as
compact tables: summary, probes, one subsection per probe, weights, aggregates. Untrusted text follows
:mod:`tokenlens.report.kit.markdown`: tokens and prompts are their ``repr`` in a code span (``|`` escaped
inside tables), other free text is escaped with :func:`~tokenlens.report.kit.markdown.plain`. Causal effects
are labelled MEASURED, attribution-patching values ESTIMATE; ``—`` marks a value that was not measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tokenlens.attribution.result import TokenScore
from tokenlens.diff.result import (
    READOUT_TERMS,
    AggregateRow,
    Continuations,
    DiffReport,
    ProbeDiff,
    TargetAnswer,
    Telescope,
)
from tokenlens.report import diff_layout as layout
from tokenlens.report.kit import markdown
from tokenlens.report.kit.markdown import code, plain, token
from tokenlens.report.kit.text import cut, json_number, probability, probability_change, show_token


def _f(value: float | None, fmt: str = "+.4f") -> str:
    value = json_number(value)
    return "—" if value is None else format(value, fmt)


def _label(p: ProbeDiff, limit: int = 60, table: bool = True) -> str:
    return token(cut(p.probe.label, limit), table)


def _summary(report: DiffReport) -> str:
    failures = ", ".join(
        f"[{layout.probe_where(p, i)}](#probe-{layout.probe_number(p, i)})"
        for i, p in enumerate(report.probes)
        if p.verdict.passed is False
    )
    lines = [
        f"- **base**: {code(report.base)}",
        f"- **tuned**: {code(report.tuned)}",
        f"- **pairing**: {plain(report.pairing)}",
        f"- **thresholds**: intended probes gain p ≥ {report.min_gain:g} (target answers: log p ≥ "
        f"{report.min_gain:g} nats of the whole target); controls keep KL(base ‖ tuned) ≤ "
        f"{report.max_kl:g} nats (continuations: the mean per token)",
        f"- **check**: **{layout.verdict_summary(report)}**",
    ]
    if failures:
        lines.append(f"- **failing probes**: {failures}")
    return "\n".join(lines)


def _probes(report: DiffReport) -> str:
    rows = []
    for i, p in enumerate(report.probes):
        b, t, n = p.base_top[0], p.tuned_top[0], layout.probe_number(p, i)
        rows.append(
            [
                f"[{n}](#probe-{n})",
                _label(p),
                p.probe.expect or "—",
                f"{token(b.token, True)} {probability(b.prob)}",
                f"{token(t.token, True)} {probability(t.prob)}",
                "⇄ yes" if p.flipped else "no",
                f"{p.kl:.4f}",
                f"{p.js:.4f}",
                token(p.tracked.token, True) + (" (target)" if p.tracked_is_target else ""),
                f"{probability(p.tracked.prob)} → {probability(p.tracked_tuned.prob)}",
                f"{probability_change(p.prob_gain)}",
                "✅ pass" if p.verdict.passed else "❌ **FAIL**" if p.verdict.passed is False else "—",
            ]
        )
    head = [
        layout.number_column(report),
        "probe",
        "expect",
        "base top-1",
        "tuned top-1",
        "flip",
        "KL",
        "JS",
        "tracked",
        "p",
        "Δp",
    ]
    return markdown.table([*head, "check"], rows)


def _top(p: ProbeDiff) -> str:
    def cells(s: TokenScore | None) -> list[str]:
        return ["", ""] if s is None else [token(s.token, True), probability(s.prob)]

    return markdown.table(
        layout.TOP_COLUMNS, [[str(k), *cells(b), *cells(t)] for k, b, t in layout.top_rows(p)]
    )


def _split(split: Telescope, what: str) -> str:
    readout = ", ".join(f"{name} {v:+.4f}" for name, v in zip(READOUT_TERMS, split.readout.tolist()))
    direct = float(split.direct.double().sum())
    return (
        f"- **{what}**: {split.base_value:+.4f} → {split.tuned_value:+.4f} (Δ {split.observed:+.4f}) = "
        f"Σ direct {direct:+.4f} + readout terms ({readout}); split error {split.error:.1e} "
        f"{markdown.exact_mark(split.exact)}"
    )


def _effects(part: layout.ProbePart, top: int) -> str:
    effects = part.effects
    rows = [
        [e.name, _f(e.direct), _f(e.causal), _f(e.causal_reverse), _f(e.causal_kl, ".4f"), _f(e.estimate)]
        for e in effects[:top]
    ]
    head = ["component", "direct", "causal (MEASURED)", "reverse (MEASURED)", "KL", "estimate (ESTIMATE)"]
    return f"Top {len(rows)} of {len(effects)} by measured |causal|.\n\n" + markdown.table(head, rows)


def _continuations(c: Continuations) -> str:
    rows = [
        [str(k), "—" if b is None else token(b, True), "—" if t is None else token(t, True), _f(kl, ".4f")]
        + (["⇄ diverge"] if diverged else [""])
        for k, b, t, kl, diverged in layout.continuation_rows(c)
    ]
    lines = [
        f"- **base continuation**: {token(''.join(c.base_tokens))}",
        f"- **tuned continuation**: {token(''.join(c.tuned_tokens))}",
        f"- {plain(layout.continuation_summary(c, show_token))}",
    ]
    return "\n".join(lines) + "\n\n" + markdown.table([*layout.CONTINUATION_COLUMNS, ""], rows)


def _target(a: TargetAnswer) -> str:
    rows = [
        [str(k), token(tok, True), _f(b), _f(t), _f(t - b), token(bt.token, True), token(tt.token, True),
         _f(kl, ".4f")]
        for k, tok, b, t, bt, tt, kl in layout.target_rows(a)
    ]  # fmt: skip
    head = f"**Target answer** {token(a.text)}: {plain(layout.target_summary(a))}"
    notes = "".join(f"\n\n> note: {plain(n)}" for n in a.notes)
    return head + "\n\n" + markdown.table(layout.TARGET_COLUMNS, rows) + notes


def _part(p: ProbeDiff, part: layout.ProbePart, top: int) -> str:
    if part.key == "answer":
        return _continuations(p.answer) if isinstance(p.answer, Continuations) else _target(p.answer)
    if part.key == "split":
        return _split(part.split, layout.tracked_value(p, token))
    if part.key == "flip":
        return _split(
            part.split, f"flip logit[{token(p.tuned_top[0].token)}] − logit[{token(p.base_top[0].token)}]"
        )
    note = f" ({part.note})" if part.note else ""
    return f"**{part.title}**{note}: " + _effects(part, top)


def _prompt(p: ProbeDiff) -> str:
    """The prompt's repr, or each chat message as ``role: repr(content)``."""
    if p.probe.prompt is not None or p.probe.messages is None:
        return token(p.probe.prompt or "")
    turns = [
        f"{plain(str(m.get('role', '?')))}: {token(str(m.get('content', '')))}" for m in p.probe.messages
    ]
    return "chat messages " + "; ".join(turns)


def _probe(p: ProbeDiff, top: int) -> str:
    """The probe's facts and split lines as a list, its top-k table, then its component tables."""
    source = f" (line {p.probe.line})" if p.probe.line is not None else ""
    position = f"- **explained position**: {p.position}"
    if 0 <= p.position < len(p.tokens):
        position += f" (next token after {token(p.tokens[p.position])})"
    target = " = target" if p.tracked_is_target else ""
    lines = [
        f"- **prompt**{source}: {_prompt(p)}",
        position,
        f"- **expect**: {p.verdict.expect or '—'}; **verdict**: {layout.verdict_word(p.verdict.passed)} — "
        f"{plain(p.verdict.reason)}",
        f"- **tracked** {token(p.tracked.token)} (id {p.tracked.id}){target}: "
        f"p {probability(p.tracked.prob)} → {probability(p.tracked_tuned.prob)} "
        f"({probability_change(p.prob_gain)}), rank {p.base_rank} → {p.tuned_rank} (1 = top-1); "
        f"KL(base ‖ tuned) {p.kl:.4f}, JS {p.js:.4f}",
    ]
    plan = layout.probe_plan(p)
    lines += [_part(p, part, top) for part in plan if part.split is not None]
    answer = [_part(p, part, top) for part in plan if part.key == "answer"]
    tables = [_part(p, part, top) for part in plan if part.split is None and part.key != "answer"]
    parts = ["\n".join(lines), *answer, _top(p), *tables]
    if p.notes:
        parts.append("\n".join(f"> note: {plain(n)}" for n in p.notes))
    return "\n\n".join(parts)


def _weights(report: DiffReport, top: int) -> str:
    w = report.weights
    rows = [
        [code(c.name, True), c.kind, "—" if c.layer is None else str(c.layer), f"{c.norm:.4g}",
         _f(c.relative, ".3g"), f"{c.numel:,}"]
        for c in w.changes[:top]
    ]  # fmt: skip
    return (
        f"Layers touched: **{layout.layer_ranges(w.layers)}**; {len(w.changes)} tensors differ, "
        f"{w.unchanged} unchanged. {plain(w.note)}\n\n" + markdown.table(layout.WEIGHT_COLUMNS, rows)
    )


def _aggregate_table(rows: Sequence[AggregateRow], top: int) -> str:
    body = [
        [r.name, _f(r.mean_abs_causal, ".4f"), _f(r.mean_abs_direct, ".4f"), f"{r.measured}/{r.probes}"]
        for r in rows[:top]
    ]
    return markdown.table(
        ["component", "mean \\|causal\\| (MEASURED)", "mean \\|direct\\|", "measured"], body
    )


def _aggregate(report: DiffReport, top: int) -> str:
    return "\n\n".join(
        ("" if name is None else f"**Group {code(name) or '(none)'}**\n\n") + _aggregate_table(rows, top)
        for name, rows in layout.aggregate_tables(report)
    )


def _metrics(report: DiffReport) -> str:
    return "\n".join(
        f"- **{m.name}**: {plain(layout.metric_value(m))} — {plain(m.protocol)}" for m in report.metrics
    )


def _corpus(report: DiffReport) -> str:
    c = report.corpus
    if c is None:
        return ""
    rows = [
        [str(k), str(d.passage + 1), str(d.position), f"{d.kl:.4g}", token(d.base_top1.token, True),
         token(d.tuned_top1.token, True) + (" ⇄" if d.changed else ""),
         plain(", ".join(layout.mover_text(e) for e in layout.movers(d))),
         token(layout.context_tail(d), True)]
        for k, d in enumerate(c.drifted, 1)
    ]  # fmt: skip
    head = ["#", "passage", "token", "KL", "base top-1", "tuned top-1", "moved by", "context (its end)"]
    return (
        f"- **corpus**: {code(c.source)}\n- {plain(layout.corpus_summary(c))}\n"
        f"- **protocol**: {plain(layout.CORPUS_PROTOCOL)}\n\n**Most-drifted contexts**\n\n"
        + markdown.table(head, rows)
    )


def render_diff_markdown(
    report: DiffReport, *, figures: Mapping[str, str] | None = None, top: int = 10
) -> str:
    """A GitHub-flavoured Markdown report of ``report``: summary, probes, per-probe details, weights,
    aggregates, how to read it.

    Args:
        report: The diff.
        figures: Figure paths relative to the Markdown file, by the slugs of
            :func:`tokenlens.report.plots.diff.diff_figures` (``heatmap`` under the probes, ``waterfall-3``,
            ``flip-3``, ``topk-3`` under probe number 3, any other slug in a Figures section).
        top: Rows per components / heads / neurons / weights / aggregate table (the JSON has all).

    Returns:
        The Markdown text, ending with a newline. Every probe has an anchor ``probe-{n}``, ``n`` its number
        (:func:`~tokenlens.report.diff_layout.probe_number`).
    """
    paths = dict(figures or {})
    plan, homes = layout.plan_diff(report, list(paths))
    content = {
        "summary": lambda _: _summary(report),
        "metrics": lambda _: _metrics(report),
        "probes": lambda _: _probes(report),
        "corpus": lambda _: _corpus(report),
        "probe": lambda i: _probe(report.probes[i], top),
        "weights": lambda _: _weights(report, top),
        "aggregate": lambda _: _aggregate(report, top),
        "figures": lambda _: "",
        "how-to-read": lambda _: "\n\n".join(
            plain(text) for text in (*layout.HOW_TO_READ, layout.RANKS, layout.COLOURS_MARKDOWN)
        ),
    }
    parts = [f"# tokenlens diff: {code(report.base)} → {code(report.tuned)}"]
    for s in plan:
        if s.index is None:
            heading = f"## {s.title}"
        else:
            heading = f"### {s.title}: {_label(report.probes[s.index], table=False)}"
        images = [markdown.image(layout.figure_alt(slug), paths[slug]) for slug in homes.get(s.anchor, [])]
        block = (f'<a id="{s.anchor}"></a>\n{heading}', content[s.key](s.index), *images)
        parts.append("\n\n".join(part for part in block if part))
    return "\n\n".join(parts) + "\n"

"""The terminal view of a base-vs-tuned diff (rich; rendering only: reads a
:class:`~tokenlens.diff.result.DiffReport`).

It follows the diff plan (:mod:`tokenlens.report.diff_layout`) for the details of at most
:data:`~tokenlens.report.diff_layout.DETAIL_ALL` probes (past that, of the failing and flipped ones); the
JSON has everything. Positive changes are green, negative red; ``—`` marks a value that was not measured.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

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
from tokenlens.report.kit import terminal
from tokenlens.report.kit.terminal import signed, unsigned
from tokenlens.report.kit.text import cut, probability, probability_change, show_token

EFFECTS_KEY = (
    "Sorted by measured |causal|. direct: the exact split's term; causal / reverse: MEASURED by patching "
    "(tuned output into the base run / base output into the tuned run); ESTIMATE: first-order "
    "attribution-patching estimate; KL: KL(base ‖ patched base), nats; —: not measured. L{i}.virtual "
    "(prompt tuning): reverse is the tuned run with that layer's attention to the virtual tokens cut."
)


def _verdict(passed: bool | None) -> Text:
    style = "dim" if passed is None else "green" if passed else "bold red"
    return Text(layout.verdict_word(passed), style=style)


def _top1(score: TokenScore) -> str:
    return f"{show_token(score.token)} {probability(score.prob, 3, 1)}"


def _header(report: DiffReport) -> list[RenderableType]:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("diff", Text(f"{report.base} → {report.tuned}", overflow="fold"))
    grid.add_row("pairing", Text(report.pairing))
    grid.add_row(
        "thresholds",
        Text(
            f"intended: p gain ≥ {report.min_gain:g} (target answers: log p gain ≥ {report.min_gain:g} "
            "nats); "
            f"controls: KL(base‖tuned) ≤ {report.max_kl:g} nats (continuations: mean per token)"
        ),
    )
    style = "dim" if report.judged == 0 else "bold green" if report.passed else "bold red"
    grid.add_row("check", Text(layout.verdict_summary(report), style=style))
    return [grid]


_PROBE_COLUMNS = (
    "#",
    "probe",
    "expect",
    "base top-1",
    "flip",
    "tuned top-1",
    "KL",
    "JS",
    "tracked",
    "p base→tuned",
)


def _probes(report: DiffReport, shown: int) -> list[RenderableType]:
    """The probe table, and a line saying whose details follow when not every probe's do."""
    table = Table(
        title="Probes (next token at each probe's position; ◆ tracked token = the probe's target)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
    )
    for column in (layout.number_column(report), *_PROBE_COLUMNS[1:]):
        table.add_column(
            column,
            justify="right" if column in ("#", "line", "KL", "JS", "p base→tuned") else "left",
            no_wrap=True,
            overflow="ellipsis",
            max_width=26 if column == "probe" else None,
            min_width=len(column) if column in ("#", "line") else None,  # never squeezed out of the table
        )
    table.add_column("check")
    for i, p in enumerate(report.probes):
        tracked = show_token(p.tracked.token) + (" ◆" if p.tracked_is_target else "")
        table.add_row(
            str(layout.probe_number(p, i)),
            Text(cut(p.probe.label, 26)),
            Text(p.probe.expect or "—", style="" if p.probe.expect else "dim"),
            Text(_top1(p.base_top[0])),
            Text("⇄", style="bold yellow") if p.flipped else Text("→", style="dim"),
            Text(_top1(p.tuned_top[0])),
            f"{p.kl:.3f}",
            f"{p.js:.3f}",
            Text(tracked),
            Text(f"{probability(p.tracked.prob, 3, 1)}→{probability(p.tracked_tuned.prob, 3, 1)}"),
            _verdict(p.verdict.passed),
        )
    if shown == len(report.probes):
        return [table]
    return [table, Text(f"Details for the {shown} failing or flipped probes:", style="bold")]


def _effects_table(title: str, part: layout.ProbePart, top: int) -> Table:
    table = terminal.table(
        "component", "direct", "causal (measured)", "reverse", "ESTIMATE", "KL", title=title
    )
    for e in part.effects[:top]:
        table.add_row(
            e.name,
            signed(e.direct),
            signed(e.causal),
            signed(e.causal_reverse),
            signed(e.estimate),
            unsigned(e.causal_kl),
        )
    return table


def _split_line(name: str, split: Telescope, token_text: str) -> Text:
    readout = "  ".join(f"{t} {v:+.4f}" for t, v in zip(READOUT_TERMS, split.readout.tolist()))
    return Text.assemble(
        f"{name} {token_text}: {split.base_value:+.4f} → {split.tuned_value:+.4f} (Δ {split.observed:+.4f}) "
        f"= Σ direct {float(split.direct.double().sum()):+.4f} + readout terms; error {split.error:.1e} ",
        terminal.exact_mark(split.exact),
        f"\n  {readout}",
    )


def _continuations(c: Continuations) -> RenderableType:
    table = terminal.table(*layout.CONTINUATION_COLUMNS, title="Greedy continuations")
    for k, base, tuned, kl, diverged in layout.continuation_rows(c):
        style = "bold yellow" if diverged else ""
        table.add_row(
            str(k),
            Text("—" if base is None else show_token(base), style=style),
            Text("—" if tuned is None else show_token(tuned), style=style),
            unsigned(kl),
        )
    return Group(
        Text(f"base:  {show_token(''.join(c.base_tokens))}", overflow="fold"),
        Text(f"tuned: {show_token(''.join(c.tuned_tokens))}", overflow="fold"),
        Text(layout.continuation_summary(c, show_token)),
        table,
    )


def _target(a: TargetAnswer) -> RenderableType:
    table = terminal.table(*layout.TARGET_COLUMNS, title="Target answer, token by token (teacher-forced)")
    for k, tok, base, tuned, base_top, tuned_top, kl in layout.target_rows(a):
        table.add_row(
            str(k), show_token(tok), signed(base), signed(tuned), signed(tuned - base),
            show_token(base_top.token), show_token(tuned_top.token), unsigned(kl),
        )  # fmt: skip
    lines = [Text(f"target answer {show_token(a.text)}: {layout.target_summary(a)}", overflow="fold"), table]
    return Group(*lines, *(Text(f"note: {n}", style="dim") for n in a.notes))


def _part(p: ProbeDiff, part: layout.ProbePart, top: int) -> RenderableType:
    if part.key == "answer":
        return _continuations(p.answer) if isinstance(p.answer, Continuations) else _target(p.answer)
    if part.key == "split":
        return _split_line("split of", part.split, layout.tracked_value(p, show_token))
    if part.key == "flip":
        what = f"logit[{show_token(p.tuned_top[0].token)}] − logit[{show_token(p.base_top[0].token)}]"
        return _split_line("flip split of", part.split, what)
    if part.key == "components":
        title = f"Top components of Δ{layout.tracked_value(p, show_token)}"
    else:
        title = part.heading if part.note else f"Top {part.title.lower()}"
    return _effects_table(title, part, top)


def _probe(i: int, p: ProbeDiff, top: int) -> list[RenderableType]:
    tracked = show_token(p.tracked.token)
    parts: list[RenderableType] = [
        Text(f"{layout.probe_title(p, i)}: {cut(p.probe.label, 100)}", style="bold"),
        Text.assemble(("verdict: ", "bold"), _verdict(p.verdict.passed), f"  {p.verdict.reason}"),
        Text(
            f"tracked {tracked}: p {probability(p.tracked.prob, 4, 1)} → "
            f"{probability(p.tracked_tuned.prob, 4, 1)} ({probability_change(p.prob_gain)}), "
            f"rank {p.base_rank} → {p.tuned_rank} (1 = top-1)"
        ),
        Text(
            "top-k base: "
            + "  ".join(_top1(s) for s in p.base_top)
            + " | tuned: "
            + "  ".join(_top1(s) for s in p.tuned_top),
            overflow="fold",
        ),
    ]
    parts += [_part(p, part, top) for part in layout.probe_plan(p)]
    parts.append(Text(EFFECTS_KEY, style="dim"))
    parts += [Text(f"note: {n}", style="dim") for n in p.notes]
    return [Group(*parts)]


def _weights(report: DiffReport, top: int) -> list[RenderableType]:
    w = report.weights
    table = terminal.table(
        "tensor", title=f"Changed weights (top {min(top, len(w.changes))} of {len(w.changes)})"
    )
    for column in ("kind", "layer", "‖ΔW‖", "relative", "elements"):
        table.add_column(column, justify="right")
    for c in w.changes[:top]:
        layer = "—" if c.layer is None else str(c.layer)
        table.add_row(c.name, c.kind, layer, f"{c.norm:.4g}", unsigned(c.relative, ".3g"), f"{c.numel:,}")
    line = f"layers touched: {layout.layer_ranges(w.layers)}; {w.unchanged} tensors unchanged; {w.note}"
    return [Group(table, Text(line, style="dim"))]


def _aggregate_table(title: str, rows: Sequence[AggregateRow], top: int) -> Table:
    table = terminal.table("component", "mean |causal|", "mean |direct|", "measured", title=title)
    for r in rows[:top]:
        table.add_row(
            r.name, unsigned(r.mean_abs_causal), unsigned(r.mean_abs_direct), f"{r.measured}/{r.probes}"
        )
    return table


def _aggregate(report: DiffReport, top: int) -> list[RenderableType]:
    return [
        _aggregate_table(
            "Components over all probes" if name is None else f"Group {name or '(none)'!r}", rows, top
        )
        for name, rows in layout.aggregate_tables(report)
    ]


def _metrics(report: DiffReport) -> list[RenderableType]:
    table = terminal.table("metric", title="Editing metrics")
    table.add_column("value")
    table.add_column("protocol: what counts, over which probes", overflow="fold")
    for m in report.metrics:
        table.add_row(m.name, layout.metric_value(m), Text(m.protocol, overflow="fold"))
    return [table]


def _corpus(report: DiffReport) -> list[RenderableType]:
    c = report.corpus
    if c is None:
        return []
    style = "dim" if c.passed is None else "bold green" if c.passed else "bold red"
    head = Text.assemble(
        ("Drift over a held-out text ", "bold"), (f"{c.source}: ", "bold"), (layout.corpus_summary(c), style)
    )
    table = terminal.table(
        "#", "passage", "token", "KL", title="Most-drifted contexts (largest KL of each passage)"
    )
    for column in ("base top-1", "tuned top-1", "moved by (terms of the exact split)", "context (its end)"):
        table.add_column(column, overflow="fold")
    for k, d in enumerate(c.drifted, 1):
        table.add_row(
            str(k), str(d.passage + 1), str(d.position), f"{d.kl:.4g}", show_token(d.base_top1.token),
            Text(show_token(d.tuned_top1.token), style="bold yellow" if d.changed else ""),
            ", ".join(layout.mover_text(e) for e in layout.movers(d)),
            Text(show_token(layout.context_tail(d, 40)), overflow="fold"),
        )  # fmt: skip
    return [Group(head, table, Text(layout.CORPUS_PROTOCOL, style="dim"))]


def render_diff(report: DiffReport, *, top: int = 8) -> RenderableType:
    """The diff for a terminal: header and verdict, the probe table, probe details, weights, aggregates.

    Details (tracked token, exact split, top ``top`` components, heads and neurons) are shown for every
    probe when there are at most :data:`~tokenlens.report.diff_layout.DETAIL_ALL` probes, else only for
    failing and flipped probes (the JSON has all). Figures and the how-to-read text are left to the HTML and
    Markdown reports (the key to the columns follows each probe).
    """
    shown = layout.detail_probes(report)
    plan, _ = layout.plan_diff(report, probes=shown)
    content = {
        "summary": lambda _: _header(report),
        "metrics": lambda _: _metrics(report),
        "probes": lambda _: _probes(report, len(shown)),
        "corpus": lambda _: _corpus(report),
        "probe": lambda s: _probe(s.index, report.probes[s.index], top),
        "weights": lambda _: _weights(report, top),
        "aggregate": lambda _: _aggregate(report, top),
    }
    return Group(*(part for s in plan if s.key in content for part in content[s.key](s)))

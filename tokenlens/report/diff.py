"""Rendering of a base-vs-tuned diff: its JSON form and a rich terminal view (rendering only).

Reads a :class:`~tokenlens.diff.result.DiffReport` and never runs a model. The JSON form
(:func:`diff_to_dict`) carries every number any view shows; values that were not measured (a component's
causal effect, an unused estimate) are ``null``, never a made-up zero. Two kinds of per-component numbers
are kept apart everywhere: *direct* terms of the exact telescoping split, *causal* effects MEASURED by
patching, and first-order ESTIMATES from attribution patching, always labelled as estimates.

The helpers :func:`sorted_effects` (from :mod:`tokenlens.diff.result`; the engine orders with it too),
:func:`verdict_summary`, :func:`layer_ranges` and :func:`detail_probes` are shared by the Markdown and HTML
renderers, so every format orders and judges the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tokenlens import __version__
from tokenlens.attribution.result import TokenScore
from tokenlens.diff.result import (
    READOUT_TERMS,
    AggregateRow,
    ComponentEffect,
    DiffReport,
    ProbeDiff,
    Telescope,
    sorted_effects,
)
from tokenlens.report.terminal import show_token

SCHEMA_VERSION = 1
DETAIL_ALL = 6
"""The terminal details every probe up to this many probes; past it only failing and flipped ones."""


HOW_TO_READ = (
    "Each probe's tracked token is its target (else the tuned model's top-1). Its logit change splits "
    "exactly: one direct term per component (its own output change, read through the base model's frozen "
    "final norm and head), plus the readout's own change (readout.scale, readout.norm, readout.head, "
    "readout.logit_bias); the terms add up to the observed change up to float32 rounding (the split error).",
    "causal (MEASURED): the tracked logit's change when that component's tuned output is patched into the "
    "base run, everything downstream recomputed; reverse: the base output patched into the tuned run; KL: "
    "KL(base ‖ patched base) in nats. ESTIMATE: a first-order attribution-patching estimate of causal. "
    "— means not measured. Components are sorted by measured |causal|, then |estimate|, then |direct|.",
    "The check: an intended probe (expect changed) passes when its target's probability gains at least "
    "min_gain; a control (expect unchanged) passes when KL(base ‖ tuned) stays at most max_kl.",
)
"""Paragraphs explaining a diff report (Markdown and HTML)."""


# --- shared helpers -----------------------------------------------------------------------------------------


def number(value: float | None) -> float | None:
    """A JSON-safe float: ``None`` for a missing, NaN or infinite value."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def verdict_summary(report: DiffReport) -> str:
    """``PASS 5/5 judged``, ``FAIL: 2 of 6 judged`` or ``not judged``, plus unjudged probes if any."""
    judged, total = report.judged, len(report.probes)
    rest = f" ({total - judged} not judged)" if 0 < judged < total else ""
    if judged == 0:
        return f"not judged (none of {total} probes has an expectation)"
    if report.passed:
        return f"PASS {judged}/{judged} judged{rest}"
    return f"FAIL: {len(report.failures)} of {judged} judged{rest}"


def layer_ranges(layers: Sequence[int]) -> str:
    """``0–3, 5, 7–8`` for ``(0, 1, 2, 3, 5, 7, 8)``; ``none`` when empty."""
    runs: list[list[int]] = []
    for layer in sorted(set(layers)):
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in runs) or "none"


def detail_probes(report: DiffReport, limit: int = DETAIL_ALL) -> list[int]:
    """The probes worth a detailed look: all up to ``limit``, else the failing and flipped ones."""
    if len(report.probes) <= limit:
        return list(range(len(report.probes)))
    return [i for i, p in enumerate(report.probes) if p.verdict.passed is False or p.flipped]


def verdict_word(passed: bool | None) -> str:
    """``pass``, ``FAIL`` or ``—`` (not judged)."""
    return "—" if passed is None else "pass" if passed else "FAIL"


def prob(value: float, digits: int = 3) -> str:
    """A probability: fixed-point, or ``6.6e-06`` below 0.001 (a rounded ``0.000`` hides a change)."""
    if math.isnan(value):
        return "—"
    return f"{value:.{digits}f}" if value >= 1e-3 or value == 0 else f"{value:.1e}"


def prob_change(value: float) -> str:
    """A signed probability change: ``+0.6000``, or ``-6.1e-07`` below 0.001 in size."""
    return f"{value:+.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:+.1e}"


def cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with ``…``."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- JSON ---------------------------------------------------------------------------------------------------


def _score(score: TokenScore) -> dict[str, Any]:
    return {"id": score.id, "token": score.token, "logit": number(score.logit), "prob": number(score.prob)}


def _effect(effect: ComponentEffect) -> dict[str, Any]:
    return {
        "name": effect.name,
        "direct": number(effect.direct),
        "causal": number(effect.causal),
        "causal_kl": number(effect.causal_kl),
        "causal_reverse": number(effect.causal_reverse),
        "causal_estimate": number(effect.estimate),  # an ESTIMATE (attribution patching)
    }


def _telescope(split: Telescope) -> dict[str, Any]:
    return {
        "target_id": split.target_id,
        "contrast_id": split.contrast_id,
        "base_value": number(split.base_value),
        "tuned_value": number(split.tuned_value),
        "observed": number(split.observed),
        "total": number(split.total),
        "error": number(split.error),
        "exact": split.exact,
        "terms": {name: number(v) for name, v in split.as_dict().items()},
    }


def _aggregate(rows: Sequence[AggregateRow]) -> list[dict[str, Any]]:
    return [
        {
            "name": r.name,
            "mean_abs_causal": number(r.mean_abs_causal),
            "mean_abs_direct": number(r.mean_abs_direct),
            "measured": r.measured,
            "probes": r.probes,
        }
        for r in rows
    ]


def probe_to_dict(index: int, p: ProbeDiff) -> dict[str, Any]:
    """One probe's JSON form (see :func:`diff_to_dict`)."""
    probe, split = p.probe, p.split
    return {
        "index": index,
        "label": probe.label,
        "prompt": probe.prompt,
        "messages": None if probe.messages is None else [dict(m) for m in probe.messages],
        "target": probe.target,
        "expect": probe.expect,
        "group": probe.group,
        "line": probe.line,
        "tokens": [{"id": i, "token": t} for i, t in zip(p.token_ids, p.tokens)],
        "position": p.position,
        "base_top": [_score(s) for s in p.base_top],
        "tuned_top": [_score(s) for s in p.tuned_top],
        "kl": number(p.kl),
        "js": number(p.js),
        "flipped": p.flipped,
        "tracked": {
            "id": p.tracked.id,
            "token": p.tracked.token,
            "base_logit": number(p.tracked.logit),
            "tuned_logit": number(p.tracked_tuned.logit),
            "base_prob": number(p.tracked.prob),
            "tuned_prob": number(p.tracked_tuned.prob),
            "prob_gain": number(p.prob_gain),
            "base_rank": p.base_rank,
            "tuned_rank": p.tuned_rank,
            "is_target": p.tracked_is_target,
        },
        "delta_logit": number(split.observed),
        "readout": {name: number(v) for name, v in zip(READOUT_TERMS, split.readout.tolist())},
        "split_error": number(split.error),
        "split": _telescope(split),
        "flip_split": None if p.flip_split is None else _telescope(p.flip_split),
        "components": [_effect(e) for e in sorted_effects(p.components)],
        "heads": [_effect(e) for e in sorted_effects(p.heads)],
        "neurons": [_effect(e) for e in sorted_effects(p.neurons)],
        "experts": [_effect(e) for e in sorted_effects(p.experts)],
        "virtual": [_effect(e) for e in sorted_effects(p.virtual)],
        "verdict": {"expect": p.verdict.expect, "passed": p.verdict.passed, "reason": p.verdict.reason},
        "notes": list(p.notes),
    }


def diff_to_dict(report: DiffReport) -> dict[str, Any]:
    """A JSON-ready dict of the whole diff: plain floats, ints, strings, booleans and ``None`` only.

    NaN and infinite values (e.g. a mean over no measured probe) become ``None``, as do values that were
    not measured. Per probe, ``components``, ``heads``, ``neurons`` and ``experts`` are sorted by measured
    |causal| (unmeasured last, by |estimate|, then |direct|); ``split`` and ``flip_split`` hold every term
    of the exact telescoping split (``terms``: components in model order, then the readout terms).
    ``failures`` lists probe indices (0-based, as in ``probes[i].index``).
    """
    w = report.weights
    return {
        "tool": "tokenlens",
        "kind": "diff",
        "schema": SCHEMA_VERSION,
        "tokenlens_version": __version__,
        "base": report.base,
        "tuned": report.tuned,
        "pairing": report.pairing,
        "thresholds": {"min_gain": number(report.min_gain), "max_kl": number(report.max_kl)},
        "passed": report.passed,
        "judged": report.judged,
        "failures": [i for i, p in enumerate(report.probes) if p.verdict.passed is False],
        "summary": verdict_summary(report),
        "weights": {
            "changes": [
                {
                    "name": c.name,
                    "kind": c.kind,
                    "layer": c.layer,
                    "norm": number(c.norm),
                    "relative": number(c.relative),
                    "numel": c.numel,
                }
                for c in w.changes
            ],
            "unchanged": w.unchanged,
            "note": w.note,
            "layers": list(w.layers),
        },
        "aggregate": _aggregate(report.aggregate),
        "groups": {name: _aggregate(rows) for name, rows in report.groups.items()},
        "probes": [probe_to_dict(i, p) for i, p in enumerate(report.probes)],
    }


# --- terminal -----------------------------------------------------------------------------------------------


def _signed(value: float | None, digits: int = 4) -> Text:
    """Green for positive, red for negative, a dim ``—`` when not measured."""
    value = number(value)
    if value is None:
        return Text("—", style="dim")
    return Text(f"{value:+.{digits}f}", style="green" if value > 0 else "red" if value < 0 else "dim")


def _plain(value: float | None, fmt: str = ".4f") -> Text:
    value = number(value)
    return Text("—", style="dim") if value is None else Text(format(value, fmt))


def _verdict(passed: bool | None) -> Text:
    style = "dim" if passed is None else "green" if passed else "bold red"
    return Text(verdict_word(passed), style=style)


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    return table


def _header(report: DiffReport) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("diff", Text(f"{report.base} → {report.tuned}", overflow="fold"))
    grid.add_row("pairing", Text(report.pairing))
    grid.add_row(
        "thresholds",
        Text(f"intended: p gain ≥ {report.min_gain:g}; controls: KL(base‖tuned) ≤ {report.max_kl:g} nats"),
    )
    style = "dim" if report.judged == 0 else "bold green" if report.passed else "bold red"
    grid.add_row("check", Text(verdict_summary(report), style=style))
    return grid


def _top1(score: TokenScore) -> str:
    return f"{show_token(score.token)} {prob(score.prob)}"


def _probes_table(report: DiffReport) -> Table:
    table = Table(
        title="Probes (next token at each probe's position; ◆ tracked token = the probe's target)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
    )
    for column in (
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
    ):
        table.add_column(
            column,
            justify="right" if column in ("#", "KL", "JS", "p base→tuned") else "left",
            no_wrap=True,
            overflow="ellipsis",
            max_width=26 if column == "probe" else None,
        )
    table.add_column("check")
    for i, p in enumerate(report.probes):
        tracked = show_token(p.tracked.token) + (" ◆" if p.tracked_is_target else "")
        table.add_row(
            str(i),
            Text(cut(p.probe.label, 26)),
            Text(p.probe.expect or "—", style="" if p.probe.expect else "dim"),
            Text(_top1(p.base_top[0])),
            Text("⇄", style="bold yellow") if p.flipped else Text("→", style="dim"),
            Text(_top1(p.tuned_top[0])),
            f"{p.kl:.3f}",
            f"{p.js:.3f}",
            Text(tracked),
            Text(f"{prob(p.tracked.prob)}→{prob(p.tracked_tuned.prob)}"),
            _verdict(p.verdict.passed),
        )
    return table


def _effects_table(title: str, effects: Sequence[ComponentEffect], top: int) -> Table:
    table = _table(title, "component", "direct", "causal (measured)", "reverse", "ESTIMATE", "KL")
    for e in sorted_effects(effects)[:top]:
        table.add_row(
            e.name,
            _signed(e.direct),
            _signed(e.causal),
            _signed(e.causal_reverse),
            _signed(e.estimate),
            _plain(e.causal_kl),
        )
    return table


def _split_line(name: str, split: Telescope, token_text: str) -> Text:
    readout = "  ".join(f"{t} {v:+.4f}" for t, v in zip(READOUT_TERMS, split.readout.tolist()))
    mark = Text("✓ exact", style="green") if split.exact else Text("✗ NOT EXACT", style="bold red")
    return Text.assemble(
        f"{name} {token_text}: {split.base_value:+.4f} → {split.tuned_value:+.4f} (Δ {split.observed:+.4f}) "
        f"= Σ direct {float(split.direct.double().sum()):+.4f} + readout terms; error {split.error:.1e} ",
        mark,
        f"\n  {readout}",
    )


def _probe_detail(i: int, p: ProbeDiff, top: int) -> RenderableType:
    tracked = show_token(p.tracked.token)
    parts: list[RenderableType] = [
        Text(f"Probe {i}: {cut(p.probe.label, 100)}", style="bold"),
        Text.assemble(("verdict: ", "bold"), _verdict(p.verdict.passed), f"  {p.verdict.reason}"),
        Text(
            f"tracked {tracked}: p {prob(p.tracked.prob, 4)} → {prob(p.tracked_tuned.prob, 4)} "
            f"({prob_change(p.prob_gain)}), "
            f"rank {p.base_rank} → {p.tuned_rank}"
        ),
        Text(
            "top-k base: "
            + "  ".join(_top1(s) for s in p.base_top)
            + " | tuned: "
            + "  ".join(_top1(s) for s in p.tuned_top),
            overflow="fold",
        ),
        _split_line("split of", p.split, f"logit[{tracked}]"),
    ]
    if p.flip_split is not None:
        what = f"logit[{show_token(p.tuned_top[0].token)}] − logit[{show_token(p.base_top[0].token)}]"
        parts.append(_split_line("flip split of", p.flip_split, what))
    parts.append(_effects_table(f"Top components of Δlogit[{tracked}]", p.components, top))
    if p.heads:
        parts.append(_effects_table("Top heads", p.heads, top))
    if p.neurons:
        parts.append(_effects_table("Top neurons", p.neurons, top))
    if p.experts:
        parts.append(_effects_table("Top experts", p.experts, top))
    if p.virtual:
        parts.append(_effects_table("Attention to the virtual tokens (direct)", p.virtual, top))
    parts.append(Text(EFFECTS_KEY, style="dim"))
    parts += [Text(f"note: {n}", style="dim") for n in p.notes]
    return Group(*parts)


EFFECTS_KEY = (
    "Sorted by measured |causal|. direct: the exact split's term; causal / reverse: MEASURED by patching "
    "(tuned output into the base run / base output into the tuned run); ESTIMATE: first-order "
    "attribution-patching estimate; KL: KL(base ‖ patched base), nats; —: not measured. L{i}.virtual "
    "(prompt tuning): reverse is the tuned run with that layer's attention to the virtual tokens cut."
)


def _weights(report: DiffReport, top: int) -> RenderableType:
    w = report.weights
    table = _table(f"Changed weights (top {min(top, len(w.changes))} of {len(w.changes)})", "tensor")
    for column in ("kind", "layer", "‖ΔW‖", "relative", "elements"):
        table.add_column(column, justify="right")
    for c in w.changes[:top]:
        layer = "—" if c.layer is None else str(c.layer)
        table.add_row(c.name, c.kind, layer, f"{c.norm:.4g}", _plain(c.relative, ".3g"), f"{c.numel:,}")
    line = f"layers touched: {layer_ranges(w.layers)}; {w.unchanged} tensors unchanged; {w.note}"
    return Group(table, Text(line, style="dim"))


def _aggregate_table(title: str, rows: Sequence[AggregateRow], top: int) -> Table:
    table = _table(title, "component", "mean |causal|", "mean |direct|", "measured")
    for r in rows[:top]:
        table.add_row(
            r.name, _plain(r.mean_abs_causal), _plain(r.mean_abs_direct), f"{r.measured}/{r.probes}"
        )
    return table


def render_diff(report: DiffReport, *, top: int = 8) -> RenderableType:
    """The diff for a terminal: header and verdict, the probe table, probe details, weights, aggregates.

    Details (tracked token, exact split, top ``top`` components, heads and neurons) are shown for every
    probe when there are at most :data:`DETAIL_ALL` probes, else only for failing and flipped probes (the
    JSON has all). Positive changes are green, negative red; ``—`` marks a value that was not measured.
    """
    parts: list[RenderableType] = [_header(report), _probes_table(report)]
    shown = detail_probes(report)
    if len(shown) < len(report.probes):
        parts.append(Text(f"Details for the {len(shown)} failing or flipped probes:", style="bold"))
    parts += [_probe_detail(i, report.probes[i], top) for i in shown]
    parts.append(_weights(report, top))
    parts.append(_aggregate_table("Components over all probes", report.aggregate, top))
    if len(report.groups) > 1:
        for name, rows in report.groups.items():
            parts.append(_aggregate_table(f"Group {name or '(none)'!r}", rows, top))
    return Group(*parts)

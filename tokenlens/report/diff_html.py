"""A self-contained HTML report of a base-vs-tuned diff (rendering only: no model runs here).

One HTML5 file with the attribution report's safety rules (:mod:`tokenlens.report.html`): inline styles, no
script, a Content-Security-Policy that forbids scripts and network loads, figures as ``data:`` PNG URIs,
every token and prompt shown as its escaped ``repr`` in a bidi-isolated box. Sections have stable ids:
``summary``, ``probes``, ``probe-{i}`` per probe, ``weights``, ``aggregate`` (``figures`` for figures with
no other home), ``how-to-read``. Number cells carry their exact value in ``data-value`` (``null`` for a
value that was not measured, shown as ``—``); causal effects are badged MEASURED, attribution-patching
values ESTIMATE.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

import tokenlens
from tokenlens.attribution.result import TokenScore
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
    sorted_effects,
    verdict_summary,
    verdict_word,
)
from tokenlens.report.html import _CSP, _CSS, PNG_MAGIC, _badge, _e, _num, _pfmt, _table, _tok
from tokenlens.report.layout import visible
from tokenlens.report.terminal import show_token

_DIFF_CSS = """
.kind.pass{background:#1a7f37}.kind.fail{background:#c62828}.kind.none{background:#888}
tr.failed td{background:#fdecea}.flip{color:#a86a1f;font-weight:bold}
"""

_FIGURE_ALT = {
    "heatmap": "Each component's effect on each probe's tracked-token logit (probes × components)",
    "waterfall": "The exact split of probe {i}'s tracked-token logit change, base to tuned",
    "flip": "The exact split of probe {i}'s change of logit[tuned top-1] − logit[base top-1]",
    "topk": "Probe {i}: the base and the tuned model's top-k next tokens",
}


def _opt(value: float | None, fmt: str = "+.4f", signed: bool = True, name: str = "") -> str:
    """A number cell, or ``—`` with ``data-value="null"`` when the value was not measured."""
    value = number(value)
    if value is None:
        attr = f' data-name="{_e(name)}"' if name else ""
        return f'<td class="num dim" data-value="null"{attr}>—</td>'
    return _num(value, fmt, signed, name=name)


def _gain(value: float, tag: str = "td") -> str:
    """A probability change, in e-notation below 0.001 in size."""
    return _num(value, "+.4f" if abs(value) >= 1e-3 or value == 0 else "+.1e", tag=tag)


def _verdict(passed: bool | None) -> str:
    cls = "none" if passed is None else "pass" if passed else "fail"
    return f'<span class="kind {cls}">{_e(verdict_word(passed).upper())}</span>'


def _label(p: ProbeDiff, limit: int = 48) -> str:
    text = p.probe.label
    return _tok(text if len(text) <= limit else text[: limit - 1] + "…", title=text)


def _score(s: TokenScore) -> str:
    return f"{_tok(s.token, title=f'id {s.id}')} {_e(_pfmt(s.prob))}"


def _summary(report: DiffReport) -> str:
    failing = [i for i, p in enumerate(report.probes) if p.verdict.passed is False]
    check = "none" if report.judged == 0 else "pass" if report.passed else "fail"
    rows = [
        f'<tr><th>base</th><td><bdi dir="ltr">{_e(visible(report.base))}</bdi></td></tr>',
        f'<tr><th>tuned</th><td><bdi dir="ltr">{_e(visible(report.tuned))}</bdi></td></tr>',
        f"<tr><th>pairing</th><td>{_e(visible(report.pairing))}</td></tr>",
        f"<tr><th>intended probes</th><td>pass when the target's probability gains at least "
        f"{_num(report.min_gain, 'g', False, 'span', name='min_gain')}</td></tr>",
        f"<tr><th>controls</th><td>pass when KL(base ‖ tuned) is at most "
        f"{_num(report.max_kl, 'g', False, 'span', name='max_kl')} nats</td></tr>",
        f'<tr><th>check</th><td id="verdict" class="kind {check}">{_e(verdict_summary(report))}</td></tr>',
    ]
    if failing:
        links = ", ".join(f'<a href="#probe-{i}">probe {i}</a>' for i in failing)
        rows.append(f"<tr><th>failing probes</th><td>{links}</td></tr>")
    return f'<table class="kv">{"".join(rows)}</table>'


def _probes(report: DiffReport) -> str:
    rows = []
    for i, p in enumerate(report.probes):
        cls = ' class="failed"' if p.verdict.passed is False else ""
        tracked = _tok(p.tracked.token, title=f"id {p.tracked.id}") + (
            " (target)" if p.tracked_is_target else ""
        )
        rows.append(
            f'<tr data-name="probe-{i}"{cls}><td><a href="#probe-{i}">{i}</a></td><td>{_label(p)}</td>'
            f"<td>{_e(p.probe.expect or '—')}</td><td>{_score(p.base_top[0])}</td>"
            f"<td>{_score(p.tuned_top[0])}</td>"
            f"<td>{'<span class=flip>⇄ flip</span>' if p.flipped else ''}</td>"
            f"{_num(p.kl, '.4f', False)}{_num(p.js, '.4f', False)}<td>{tracked}</td>"
            f"{_num(p.tracked.prob, 'p', False)}{_num(p.tracked_tuned.prob, 'p', False)}{_gain(p.prob_gain)}"
            f"<td>{_verdict(p.verdict.passed)}</td></tr>"
        )
    head = ["#", "probe", "expect", "base top-1", "tuned top-1", "", "KL", "JS", "tracked", "p base"]
    return _table([*head, "p tuned", "Δp", "check"], rows)


def _top(p: ProbeDiff) -> str:
    rows = []
    for k in range(max(len(p.base_top), len(p.tuned_top))):
        cells = f"<td>{k + 1}</td>"
        for side in (p.base_top, p.tuned_top):
            s = side[k] if k < len(side) else None
            cells += (
                "<td></td><td></td>" if s is None else f"<td>{_tok(s.token)}</td>{_num(s.prob, 'p', False)}"
            )
        rows.append(f"<tr>{cells}</tr>")
    return _table(["rank", "base token", "base p", "tuned token", "tuned p"], rows)


def _split(split: Telescope, what: str, anchor: str) -> str:
    cells = "".join(_num(v, name=name) for name, v in zip(READOUT_TERMS, split.readout.tolist()))
    rows = [f"<tr><td>Δ</td>{cells}</tr>"]
    mark = '<span class="ok">✓ exact</span>' if split.exact else '<span class="bad">✗ NOT EXACT</span>'
    return (
        f'<div id="{_e(anchor)}"><p>{what}: {_num(split.base_value, "+.4f", False, "span")} → '
        f"{_num(split.tuned_value, '+.4f', False, 'span')} (Δ {_num(split.observed, tag='span')}) = Σ direct "
        f"{_num(float(split.direct.double().sum()), tag='span')} + the readout terms:</p>"
        + _table(["readout term", *READOUT_TERMS], rows)
        + f'<p class="check">split error {_num(split.error, ".1e", False, "span")} {mark}</p></div>'
    )


def _effects(title: str, effects: Sequence[ComponentEffect], top: int) -> str:
    rows = [
        f'<tr data-name="{_e(e.name)}"><td>{_e(e.name)}</td>{_opt(e.direct)}{_opt(e.causal)}'
        f"{_opt(e.causal_reverse)}{_opt(e.causal_kl, '.4f', False)}{_opt(e.estimate)}</tr>"
        for e in sorted_effects(effects)[:top]
    ]
    head = [
        "component",
        "direct",
        f"causal {_badge('MEASURED')}",
        f"reverse {_badge('MEASURED')}",
        "KL (nats)",
        f"estimate {_badge('ESTIMATE')}",
    ]
    return f"<h3>{_e(title)}</h3><p>The top {len(rows)} of {len(effects)} by measured |causal|.</p>" + _table(
        head, rows
    )


def _prompt(p: ProbeDiff) -> str:
    """The prompt's repr, or each chat message as ``role: repr(content)``."""
    if p.probe.prompt is not None or p.probe.messages is None:
        return f'<bdi dir="ltr">{_e(show_token(p.probe.prompt or ""))}</bdi>'
    turns = [
        f'{_e(visible(str(m.get("role", "?"))))}: <bdi dir="ltr">{_e(show_token(str(m.get("content", ""))))}'
        "</bdi>"
        for m in p.probe.messages
    ]
    return "chat messages:<br>" + "<br>".join(turns)


def _probe(i: int, p: ProbeDiff, top: int) -> str:
    tracked = _tok(p.tracked.token)
    line = "" if p.probe.line is None else f" (probe file line {p.probe.line})"
    tokens = " ".join(
        _tok(
            t,
            "tok here" if j == p.position else "tok after" if j > p.position else "tok",
            title=f"{j}: id {k}",
        )
        for j, (t, k) in enumerate(zip(p.tokens, p.token_ids))
    )
    rows = [
        f"<tr><th>prompt</th><td>{_prompt(p)}{_e(line)}</td></tr>",
        f'<tr><th>tokens</th><td class="tokens">{tokens}</td></tr>',
        f"<tr><th>position</th><td>{p.position}</td></tr>",
        f"<tr><th>verdict</th><td>{_verdict(p.verdict.passed)} expect {_e(p.verdict.expect or '—')}: "
        f"{_e(visible(p.verdict.reason))}</td></tr>",
        f"<tr><th>tracked</th><td>{tracked} id {p.tracked.id}{' (the target)' if p.tracked_is_target else ''}"
        f"; rank {p.base_rank} → {p.tuned_rank}</td></tr>",
        f"<tr><th>p base → tuned</th><td>{_num(p.tracked.prob, 'p', False, 'span')} → "
        f"{_num(p.tracked_tuned.prob, 'p', False, 'span')} ({_gain(p.prob_gain, 'span')})</td></tr>",
        f"<tr><th>KL(base ‖ tuned)</th>{_num(p.kl, '.4f', False, name='kl')}</tr>",
        f"<tr><th>JS</th>{_num(p.js, '.4f', False, name='js')}</tr>",
    ]
    parts = [f'<table class="kv">{"".join(rows)}</table>', _top(p)]
    parts.append(_split(p.split, f"logit[{tracked}]", f"probe-{i}-split"))
    if p.flip_split is not None:
        what = f"flip: logit[{_tok(p.tuned_top[0].token)}] − logit[{_tok(p.base_top[0].token)}]"
        parts.append(_split(p.flip_split, what, f"probe-{i}-flip"))
    parts.append(_effects("Components", p.components, top))
    if p.heads:
        parts.append(_effects("Heads", p.heads, top))
    if p.neurons:
        parts.append(_effects("Neurons", p.neurons, top))
    if p.experts:
        parts.append(_effects("Experts", p.experts, top))
    if p.virtual:
        parts.append(_effects("Attention to the virtual tokens (direct)", p.virtual, top))
    parts += [f'<p class="note">note: {_e(visible(n))}</p>' for n in p.notes]
    return "".join(parts)


def _weights(report: DiffReport, top: int) -> str:
    w = report.weights
    rows = [
        f'<tr data-name="{_e(c.name)}"><td><bdi dir="ltr">{_e(visible(c.name))}</bdi></td>'
        f"<td>{_e(c.kind)}</td>"
        f"<td>{'—' if c.layer is None else c.layer}</td>{_num(c.norm, '.4g', False)}"
        f"{_opt(c.relative, '.3g', False)}{_num(c.numel, ',', False)}</tr>"
        for c in w.changes[:top]
    ]
    return (
        f"<p>Layers touched: <b>{_e(layer_ranges(w.layers))}</b>; {len(w.changes)} tensors differ, "
        f"{w.unchanged} unchanged. {_e(visible(w.note))}</p>"
        + _table(["tensor", "kind", "layer", "‖ΔW‖", "relative", "elements"], rows)
    )


def _aggregate(rows: Sequence[AggregateRow], top: int) -> str:
    body = [
        f'<tr data-name="{_e(r.name)}"><td>{_e(r.name)}</td>{_opt(r.mean_abs_causal, ".4f", False)}'
        f'{_num(r.mean_abs_direct, ".4f", False)}<td class="num">{r.measured}/{r.probes}</td></tr>'
        for r in rows[:top]
    ]
    return _table(["component", f"mean |causal| {_badge('MEASURED')}", "mean |direct|", "measured"], body)


def _figure(slug: str, png: bytes) -> str:
    if not png.startswith(PNG_MAGIC):
        raise ValueError(f"image {slug!r} is not PNG data")
    kind, _, i = slug.rpartition("-")
    alt = _FIGURE_ALT.get(kind, _FIGURE_ALT.get(slug, f"Figure {slug}")).format(i=i)
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="figure-{_e(slug)}"><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
        f"<figcaption>{_e(alt)}</figcaption></figure>"
    )


def _home(slug: str, count: int) -> str:
    kind, _, rest = slug.rpartition("-")
    if kind and rest.isdigit() and int(rest) < count:
        return f"probe-{rest}"
    return "probes" if slug == "heatmap" else "figures"


def _images(report: DiffReport) -> dict[str, bytes]:
    from tokenlens.report.plots import figure_png
    from tokenlens.report.plots.diff import diff_figures

    return {slug: figure_png(fig, dpi=96) for slug, fig in diff_figures(report).items()}


def render_diff_html(
    report: DiffReport, *, figures: bool = True, images: Mapping[str, bytes] | None = None, top: int = 10
) -> str:
    """One self-contained HTML5 document showing ``report`` (no scripts, no network, inline styles).

    Args:
        report: The diff.
        figures: Draw :func:`tokenlens.report.plots.diff.diff_figures` and embed them as PNG ``data:`` URIs
            (the heatmap under the probe table, each probe's figures in its section).
        images: Ready PNG bytes by slug instead of drawing them (same slugs); ignored when ``figures`` is
            false.
        top: Rows per components / heads / neurons / weights / aggregate table (the JSON has all).

    Returns:
        The document.

    Raises:
        ValueError: An image that is not PNG data.
    """
    pngs = (dict(images) if images is not None else _images(report)) if figures else {}
    homes: dict[str, list[str]] = {}
    for slug, png in pngs.items():
        homes.setdefault(_home(slug, len(report.probes)), []).append(_figure(slug, png))

    def section(anchor: str, title: str, content: str) -> str:
        figures = "".join(homes.get(anchor, []))
        return f'<section id="{anchor}">\n<h2>{title}</h2>\n{content}\n{figures}</section>'

    parts = [
        section("summary", "Summary", _summary(report)),
        section("probes", "Probes", _probes(report)),
    ]
    parts += [
        section(f"probe-{i}", f"Probe {i}: {_label(p)}", _probe(i, p, top))
        for i, p in enumerate(report.probes)
    ]
    parts.append(section("weights", "Weights", _weights(report, top)))
    aggregate = [_aggregate(report.aggregate, top)]
    if len(report.groups) > 1:
        aggregate += [
            f"<h3>Group {_tok(name) if name else '(none)'}</h3>{_aggregate(rows, top)}"
            for name, rows in report.groups.items()
        ]
    parts.append(section("aggregate", "Components over all probes", "".join(aggregate)))
    if "figures" in homes:
        parts.append(section("figures", "Figures", ""))
    parts.append(
        section("how-to-read", "How to read this report", "".join(f"<p>{_e(t)}</p>" for t in HOW_TO_READ))
    )
    return _page(report, parts)


def _page(report: DiffReport, sections: list[str]) -> str:
    nav = " ".join(f'<a href="#{a}">{a}</a>' for a in ("summary", "probes", "weights", "aggregate"))
    title = visible(f"tokenlens diff: {report.base} → {report.tuned}")
    return (
        '<!DOCTYPE html>\n<html lang="en" dir="ltr">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}{_DIFF_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{_e(title)}</h1>\n<p>Which next-token choices moved between the base model and its "
        f"fine-tune, which components moved them, and whether they moved only where intended. Check: "
        f"<b>{_e(verdict_summary(report))}</b>.</p>\n<nav>{nav}</nav></header>\n<main>\n"
        + "\n".join(sections)
        + f'\n</main>\n<footer class="note">tokenlens {_e(tokenlens.__version__)}</footer>'
        + "\n</body>\n</html>\n"
    )

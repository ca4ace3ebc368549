"""A self-contained HTML report of a logit attribution (rendering only: no model runs here).

The report is one HTML5 file that needs nothing else: styles sit in one ``<style>`` element, figures are
``data:`` URIs, there is no script, and a Content-Security-Policy meta tag forbids scripts and every network
load outright. Token strings and prompts are untrusted: each is shown as its ``repr`` (whitespace, zero-width
and bidi control characters become visible escapes such as ``'\\u202e'``), HTML-escaped, and isolated in
``<bdi>`` so right-to-left text cannot reorder the page around it. Every section has a stable ``id``
(``prediction``, ``top``, ``components``, ``heads``, ``neurons``, ``experts``, ``sources``, ``lens``, one per
causal section, ``figures``, ``settings``, ``how-to-read``) and every number cell carries its exact value in
``data-value``.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import tokenlens
from tokenlens.attribution.lens import LogitLens
from tokenlens.attribution.result import LogitAttribution, SourceSplit
from tokenlens.causal.metrics import Metric
from tokenlens.causal.results import Ablation, EstimateCheck, NormAblation, Patching
from tokenlens.report.layout import (
    HOW_TO_READ,
    figure_alt,
    metric_words,
    plan_report,
    source_anchors,
    visible,
)
from tokenlens.report.terminal import show_token
from tokenlens.report.words import QUANTITY_WORDS, rounding_note

_EMPTY: Mapping = MappingProxyType({})
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#1b1b1b}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;margin-top:2em}h3{margin-bottom:.3em}
nav a{margin-right:.8em}table{border-collapse:collapse;margin:.5em 0}
th,td{padding:.15em .6em;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.pos{color:#1a7f37}.neg{color:#c62828}.dim,.note{color:#666}.grid td.num{color:#1b1b1b}
bdi,.tok{unicode-bidi:isolate}
.tok{font-family:ui-monospace,monospace;white-space:pre;border:1px solid #bbb;border-radius:3px;
padding:0 .2em;margin:.1em;display:inline-block}
.tok.here{border:2px solid #333}.tok.after{opacity:.45}.tokens{line-height:2}
td.bar{position:relative;width:14em;min-width:8em}
td.bar::before{content:"";position:absolute;left:50%;top:10%;bottom:10%;border-left:1px solid #888}
td.bar span{position:absolute;top:25%;height:50%}
td.bar span.pos{left:50%;background:#2e9e4f}td.bar span.neg{right:50%;background:#d64541}
.check{font-family:ui-monospace,monospace}.ok{color:#1a7f37}.bad{color:#c62828;font-weight:bold}
.kind{display:inline-block;font-weight:bold;padding:0 .4em;border-radius:3px;color:#fff}
.measured{background:#1f5fa8}.estimate{background:#a86a1f}tr.target td{font-weight:bold}
.scroll{overflow-x:auto}.kv td.num{text-align:left}.setting{font-family:ui-monospace,monospace}
figure{margin:1em 0}figure img{max-width:100%;height:auto}
figcaption{color:#666;font-size:.9em}
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _tok(token: str, cls: str = "tok", style: str = "", title: str = "") -> str:
    """One untrusted token: its repr, escaped, bidi-isolated, in a bordered box."""
    attrs = (
        f' class="{cls}"'
        + (f' style="{style}"' if style else "")
        + (f' title="{_e(title)}"' if title else "")
    )
    return f'<span{attrs}><bdi dir="ltr">{_e(show_token(token))}</bdi></span>'


def _pfmt(p: float) -> str:
    return "—" if math.isnan(p) else f"{p:.4f}" if p >= 1e-3 or p == 0 else f"{p:.2e}"


def _fmt(value: float, fmt: str) -> str:
    return "—" if math.isnan(value) else _pfmt(value) if fmt == "p" else format(value, fmt)


def _num(
    value: float, fmt: str = "+.4f", signed: bool = True, tag: str = "td", style: str = "", name: str = ""
) -> str:
    """A number: formatted text, green/red by sign when ``signed``, its exact value in ``data-value``."""
    value = value if isinstance(value, int) else float(value)
    cls = "num" + ((" pos" if value > 0 else " neg" if value < 0 else "") if signed else "")
    extra = (f' style="{style}"' if style else "") + (f' data-name="{_e(name)}"' if name else "")
    return f'<{tag} class="{cls}" data-value="{value!r}"{extra}>{_fmt(value, fmt)}</{tag}>'


def _bar(value: float, peak: float) -> str:
    """An inline CSS bar: green right of the centre line for a positive value, red left for a negative one."""
    width = 50 * abs(value) / peak if peak > 0 else 0.0
    side = "pos" if value > 0 else "neg"
    return f'<td class="bar"><span class="{side}" style="width:{width:.1f}%"></span></td>'


def _shade(value: float, peak: float) -> str:
    """A diverging background colour: green for positive, red for negative, stronger for larger |value|."""
    if peak <= 0 or value == 0 or math.isnan(value):
        return ""
    alpha = 0.7 * min(1.0, abs(value) / peak)
    rgb = "46,158,79" if value > 0 else "214,69,65"
    return f"background-color:rgba({rgb},{alpha:.2f})"


def _table(head: Sequence[str], rows: Sequence[str], cls: str = "") -> str:
    cells = "".join(f"<th>{h}</th>" for h in head)
    attr = f' class="{cls}"' if cls else ""
    return f"<div class=scroll><table{attr}><tr>{cells}</tr>\n" + "\n".join(rows) + "</table></div>"


def _row(name: str, *cells: str) -> str:
    return f'<tr data-name="{_e(name)}"><td>{_e(name)}</td>{"".join(cells)}</tr>'


def _metric_html(metric: Metric) -> str:
    target, contrast = metric_words(metric)
    vs = f' vs <bdi dir="ltr">{_e(contrast)}</bdi>' if contrast is not None else ""
    return f'{_e(metric.kind)} of <bdi dir="ltr">{_e(target)}</bdi>{vs} at position {metric.position}'


def _figure(slug: str, png: bytes) -> str:
    if not png.startswith(PNG_MAGIC):
        raise ValueError(f"image {slug!r} is not PNG data")
    data = base64.b64encode(png).decode("ascii")
    alt, anchor = _e(figure_alt(slug)), re.sub(r"[^\w.-]", "-", slug)
    return (
        f'<figure id="figure-{anchor}"><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption>{alt}</figcaption></figure>"
    )


def _badge(kind: str) -> str:
    return f'<span class="kind {kind.lower()}">{kind}</span>'


def _prediction(r: LogitAttribution) -> str:
    d, t = r.decomposition, r.target
    tokens = " ".join(
        _tok(
            token,
            "tok here" if j == r.position else "tok after" if j > r.position else "tok",
            title=f"{j}: id {i}",
        )
        for j, (token, i) in enumerate(zip(r.tokens, r.token_ids))
    )
    chat = " (wrapped as a user turn with the chat template; the tokens include it)" if r.chat else ""
    rows = [
        f'<tr><th>prompt</th><td><bdi dir="ltr">{_e(show_token(r.prompt))}</bdi>{chat}</td></tr>',
        f'<tr><th>tokens</th><td class="tokens">{tokens}</td></tr>',
        f"<tr><th>position</th><td>{r.position} of {len(r.tokens)}: the next token after "
        f"{_tok(r.tokens[r.position])}</td></tr>",
        f"<tr><th>target</th><td>{_tok(t.token)} id {t.id}</td></tr>",
        f"<tr><th>logit</th>{_num(t.logit, '.4f', False, name='logit')}</tr>",
        f"<tr><th>probability</th>{_num(t.prob, 'p', False, name='prob')}</tr>",
        f"<tr><th>log-probability</th>{_num(r.logprob, '.3f', False, name='logprob')}</tr>",
    ]
    quantity = "the target's logit" if r.quantity == "logit" else f"log p({_tok(t.token)})"
    if r.contrast is not None:
        c = r.contrast
        quantity = f"logit[{_tok(t.token)}] − logit[{_tok(c.token)}]"
        rows += [
            f"<tr><th>contrast (vs)</th><td>{_tok(c.token)} id {c.id}</td></tr>",
            f"<tr><th>contrast logit</th>{_num(c.logit, '.4f', False, name='contrast_logit')}</tr>",
            f"<tr><th>contrast probability</th>{_num(c.prob, 'p', False, name='contrast_prob')}</tr>",
        ]
    rows.append(
        f"<tr><th>explained</th><td>{quantity} = {_num(d.logit, name='explained', tag='span')}</td></tr>"
    )
    return f'<table class="kv">{"".join(rows)}</table>'


def _top(r: LogitAttribution) -> str:
    rows = [
        f'<tr data-name="{s.id}"{" class=target" if s.id == r.target.id else ""}><td>{k}</td>'
        f"<td>{_tok(s.token)}</td><td>{s.id}</td>{_num(s.logit, '.4f', False)}{_num(s.prob, 'p', False)}</tr>"
        for k, s in enumerate(r.top, 1)
    ]
    note = (
        f"<p>The {len(r.top)} most likely next tokens at position {r.position} among ids the tokenizer can "
        "decode; probabilities are over the model's full vocabulary.</p>"
    )
    return note + _table(["rank", "token", "id", "logit", "probability"], rows)


def _components(r: LogitAttribution) -> str:
    d = r.decomposition
    values = d.as_dict()
    peak = max((abs(v) for v in values.values()), default=0.0)
    rows = []
    for name, value in values.items():
        share = f"{100 * value / d.logit:+.0f}%" if abs(d.logit) > 1e-9 else ""
        rows.append(_row(name, _num(value), f'<td class="num">{share}</td>', _bar(value, peak)))
    what, units = QUANTITY_WORDS[r.quantity]
    verdict = '<span class="ok">✓ exact</span>' if d.exact else '<span class="bad">✗ NOT EXACT</span>'
    return (
        f"<p>Each component's direct contribution to the {what}, in {units}, in model order.</p>"
        + _table(["component", "logit", "share", "− | +"], rows)
        + f'<p id="check" class="check">sum of components {_num(d.total, ".6f", False, "span")} | model '
        f"{what} {_num(d.logit, '.6f', False, 'span')} | error {_num(d.error, '.1e', False, 'span')} "
        f"(tolerance {_num(d.tolerance, '.1e', False, 'span')}) {verdict}</p>"
        f'<p class="note">final-norm scale s = {_num(d.scale, ".5f", False, "span")}; captured writes vs the '
        f"stream the final norm received: max error {_num(d.stream_error, '.1e', False, 'span')}.</p>"
        + (f'<p class="note">{_e(rounding_note(r))}</p>' if d.model_value is not None else "")
    )


def _heads(r: LogitAttribution) -> str:
    c = r.heads.contributions
    peak = float(c.abs().max()) if c.numel() else 0.0
    rows = []
    for i, row in enumerate(c.tolist()):
        cells = "".join(
            _num(v, "+.3f", False, style=_shade(v, peak), name=f"L{i}.H{h}") for h, v in enumerate(row)
        )
        total = _num(math.fsum(row), "+.4f", name=f"L{i}.heads")
        residual = _num(float(r.heads.residual[i]), ".1e", False)
        rows.append(f'<tr data-name="L{i}"><td>L{i}</td>{cells}{total}{residual}</tr>')
    head = ["layer", *(f"H{h}" for h in range(c.shape[1])), "Σ heads", "residual"]
    return (
        "<p>Each attention head's direct contribution (logit units): cell colour green up, red down; each "
        "row sums to its layer's attention write (its residual is what the split leaves over).</p>"
        + _table(head, rows, "grid")
    )


def _neurons(r: LogitAttribution) -> str:
    n = r.neurons
    peak = float(n.contributions.abs().max()) if n.contributions.numel() else 0.0
    rows = [
        _row(f"L{layer}.N{nid}", f"<td>L{layer}.mlp</td>", _num(v), _num(act, "+.3f", False), _bar(v, peak))
        for k, layer in enumerate(n.layers)
        for nid, v, act in zip(n.ids[k].tolist(), n.contributions[k].tolist(), n.activations[k].tolist())
    ]
    residual = ", ".join(f"L{layer}.mlp {v:.1e}" for layer, v in zip(n.layers, n.residual.tolist()))
    return (
        f"<p>The top {n.ids.shape[1]} neurons of each dense MLP layer by |contribution|; neuron n writes "
        "act_n · W_down[:, n] to the stream.</p>"
        + _table(["neuron", "parent", "logit", "activation", "− | +"], rows)
        + f'<p class="note">split residual (layer MLP − Σ all its neurons): {residual}</p>'
    )


def _experts(r: LogitAttribution) -> str:
    x = r.experts
    peak = float(x.contributions.abs().max()) if x.contributions.numel() else 0.0
    rows = [
        _row(f"L{layer}.E{eid}", f"<td>L{layer}.mlp</td>", _num(v), _num(w, ".3f", False), _bar(v, peak))
        for k, layer in enumerate(x.layers)
        for eid, w, v in zip(
            x.expert_ids[k].tolist(), x.router_weights[k].tolist(), x.contributions[k].tolist()
        )
    ]
    residual = ", ".join(f"L{layer}.mlp {v:.1e}" for layer, v in zip(x.layers, x.residual.tolist()))
    return (
        "<p>The experts the router chose at the position, each with its router weight and the direct "
        "contribution of its weighted output.</p>"
        + _table(["expert", "parent", "logit", "router weight", "− | +"], rows)
        + f'<p class="note">split residual (layer MLP − Σ experts): {residual}</p>'
    )


def _source_split(r: LogitAttribution, split: SourceSplit, anchor: str, figures: str) -> str:
    upto = r.source_end
    values = split.contributions.tolist()
    peak = max((abs(v) for v in values[:upto]), default=0.0)
    shaded = " ".join(
        _tok(token, "tok", _shade(values[j], peak), f"S{j}: {values[j]:+.4f}")
        if j < upto
        else _tok(token, "tok after")
        for j, token in enumerate(r.source_tokens)
    )
    rows = [
        f'<tr data-name="{split.name}.S{j}"><td>S{j}</td><td>{_tok(r.source_tokens[j])}</td>{_num(values[j])}'
        f'<td class="num">{" ".join(f"{a:.3f}" for a in split.pattern[:, j].tolist())}</td>'
        f"{_bar(values[j], peak)}</tr>"
        for j in range(upto)
    ]
    rows.append(
        _row(
            f"{split.name}.v_bias",
            "<td>value bias</td>",
            _num(split.value_bias),
            "<td></td>",
            _bar(split.value_bias, peak),
        )
    )
    parent = f"head {split.name}" if split.head is not None else f"layer L{split.layer} (all heads)"
    attention = "attention" if split.head is not None else "attention per head"
    return (
        f'<div class="split" id="{_e(anchor)}"><h3>Sources through {_e(parent)}</h3>'
        f"<p>The prompt, each token shaded by how much it contributed through {_e(parent)} to the explained "
        f"logit at position {r.position} (green up, red down); the value-projection bias term "
        f"{_num(split.value_bias, tag='span')} is kept apart.</p>"
        f'<p class="tokens">{shaded}</p>'
        + _table(["source", "token", "logit", attention, "− | +"], rows)
        + f'<p class="note">split residual: {_num(split.residual, ".1e", False, "span")}</p>{figures}</div>'
    )


def _lens(lens: LogitLens) -> str:
    positions = lens.positions.tolist()
    c = len(positions) - 1
    rows = []
    for d, depth in enumerate(lens.depths):
        tops = " ".join(
            f"{_tok(t)} {_pfmt(p)}" for t, p in zip(lens.top_tokens[d][c], lens.top_probs[d, c].tolist())
        )
        rows.append(
            f'<tr data-name="{_e(depth)}"><td>{_e(depth)}</td><td>{tops}</td>'
            f"{_num(float(lens.target_logit[d, c]), '.4f', False)}"
            f"{_num(float(lens.target_prob[d, c]), 'p', False)}"
            f"{_num(int(lens.target_rank[d, c]), 'd', False)}</tr>"
        )
    out = (
        f"<p>The stream after each depth decoded through the final norm (with its own scale) and the head, "
        f"at position {positions[c]} (token {_tok(lens.tokens[positions[c]])}); the last depth is the "
        f"model's own output. Target: {_tok(lens.target)} (rank 0 = top-1).</p>"
        + _table(["depth", "top tokens (probability)", "target logit", "p(target)", "rank"], rows)
    )
    if len(positions) > 1:
        head = ["depth", *(f"{j} {_tok(lens.tokens[j])}" for j in positions)]
        grid = []
        for d, depth in enumerate(lens.depths):
            cells = "".join(
                f'<td style="{_shade(float(lens.target_prob[d, k]), 1.0)}" title="p(target) '
                f'{float(lens.target_prob[d, k]):.4f}, rank {int(lens.target_rank[d, k])}">'
                f"{_tok(lens.top_tokens[d][k][0])} {_pfmt(float(lens.top_probs[d, k, 0]))}</td>"
                for k in range(len(positions))
            )
            grid.append(f"<tr><td>{_e(depth)}</td>{cells}</tr>")
        out += "<p>Top-1 guess at every depth and position; green shading: the target's probability.</p>"
        out += _table(head, grid)
    return out


def _effects(a: Ablation, norms: NormAblation | None = None) -> str:
    frozen = "; the final-norm scale held at its unmodified value" if a.final_scale_frozen else ""
    effects = [*a.each, *([a.together] if a.together is not None else [])]
    peak = max((abs(e.delta) for e in effects), default=0.0)
    rows = []
    for k, effect in enumerate(effects):
        extra = ""
        if norms is not None:
            inside = k < len(a.each)
            scale = _num(float(norms.scales[k, a.metric.position]), ".5f", False) if inside else "<td></td>"
            extra = scale + (_num(float(norms.references[k]), ".5f", False) if inside else "<td></td>")
        rows.append(
            _row(
                effect.name,
                extra,
                _num(effect.value, ".4f", False),
                _num(effect.delta),
                _bar(effect.delta, peak),
            )
        )
    head = [
        "ablated",
        *(["scale at position", "replaced by"] if norms else []),
        "metric",
        "Δ (measured)",
        "− | +",
    ]
    return (
        f"<p>{_badge('MEASURED')} Each site replaced ({_e(a.method)}; replacement: {_e(a.reference)}"
        f"{frozen}), the model rerun, and the change of the metric measured: {_metric_html(a.metric)}; "
        "unmodified baseline "
        f"{_num(a.baseline, '.4f', False, 'span')}. An effect, not an additive share of the logit.</p>"
        + _table(head, rows)
    )


def _patching(p: Patching) -> str:
    effects = sorted(p.effects, key=lambda e: -abs(e.delta))
    peak = max((abs(e.delta) for e in effects), default=0.0)
    rows = [
        _row(
            e.name,
            _num(e.value, ".4f", False),
            _num(e.delta),
            f'<td class="num" data-value="{e.restored!r}">'
            f"{'—' if math.isnan(e.restored) else f'{100 * e.restored:.0f}%'}</td>",
            _bar(e.delta, peak),
        )
        for e in effects
    ]
    where = "all positions" if p.positions is None else "positions " + ", ".join(map(str, p.positions))
    return (
        f"<p>{_badge('MEASURED')} Each site's activation taken from the clean run and patched into the "
        f"corrupted run ({where}), one at a time: {_metric_html(p.metric)}; clean "
        f"{_num(p.clean, '.4f', False, 'span')}, corrupted {_num(p.corrupted, '.4f', False, 'span')}. "
        "“restored” is Δ as a share of the clean − corrupted gap.</p>"
        + _table(["patched", "metric", "Δ (measured)", "restored", "− | +"], rows)
    )


def _estimates(check: EstimateCheck) -> str:
    e = check.estimates
    rows = [
        _row(
            row.name,
            _num(row.estimate),
            _num(row.exact),
            f"<td>{'<span class=ok>✓</span>' if row.sign_agrees else '<span class=bad>✗</span>'}</td>",
        )
        for row in check.rows
    ]
    ranked = [_row(name, _num(value)) for name, value in e.ranked()]
    return (
        f"<p>{_badge('ESTIMATE')} First-order estimates (attribution patching) of every site's effect, "
        f"{len(e.names)} sites from one backward pass; reference: {_e(e.reference)}; "
        f"{_metric_html(e.metric)}; baseline {_num(e.baseline, '.4f', False, 'span')}. The top ones are "
        f"confirmed by exact patching: the {_badge('MEASURED')} column.</p>"
        + _table(["site", "estimate (ESTIMATE)", "exact (MEASURED)", "same sign"], rows)
        + f"<details><summary>All {len(e.names)} estimates, by |estimate|</summary>"
        + _table(["site", "estimate"], ranked)
        + "</details>"
    )


def _settings(r: LogitAttribution, settings: Mapping[str, str] | None) -> str:
    items = {
        "model": r.model,
        "dtype": r.dtype,
        "device": r.device,
        "tokenlens version": tokenlens.__version__,
        "chat template": "yes" if r.chat else "no",
        "explained position": str(r.position),
    }
    for key, value in (settings or {}).items():
        if items.get(key) != str(value):
            items[f"{key} (requested)" if key in items else key] = str(value)
    rows = [
        f'<tr data-name="{_e(key)}"><th>{_e(key)}</th>'
        f'<td class="setting"><bdi dir="ltr">{_e(visible(value))}</bdi></td></tr>'
        for key, value in items.items()
    ]
    return f'<table class="kv">{"".join(rows)}</table>'


def _how_to_read() -> str:
    return "".join(f"<p>{_e(paragraph)}</p>" for paragraph in HOW_TO_READ)


def _section(anchor: str, title: str, content: str, figures: str = "") -> str:
    return f'<section id="{_e(anchor)}">\n<h2>{_e(title)}</h2>\n{content}\n{figures}</section>'


def render_html(
    result: LogitAttribution,
    *,
    lens: LogitLens | None = None,
    sections: Sequence[tuple[str, object]] = (),
    images: Mapping[str, bytes] = _EMPTY,
    settings: Mapping[str, str] | None = None,
) -> str:
    """One self-contained HTML5 document explaining ``result`` (no scripts, no network, inline styles).

    Args:
        result: The attribution to show, with any finer splits it carries.
        lens: A logit lens to show (its own section), or ``None``.
        sections: Causal results as ``(key, result)``: ``ablation`` and ``rope`` (:class:`Ablation`),
            ``norms`` (:class:`NormAblation`), ``patching`` (:class:`Patching`), ``estimates``
            (:class:`EstimateCheck`); shown in the given order, a repeated key's anchor numbered.
        images: PNG bytes by slug, embedded as ``data:`` URIs in the section the slug names (``heads``,
            ``lens``, ``sources-L1.H0``, ``ablation``; ``waterfall`` and ``layers`` go with the components);
            any other slug in a ``figures`` section.
        settings: Extra run settings to list (e.g. the command line); a key that repeats a value from the
            result is not shown twice, one that differs is shown as ``key (requested)``.

    Returns:
        The document.

    Raises:
        ValueError: An unknown section key, a section of the wrong type, or an image that is not PNG.
    """
    plan, homes = plan_report(result, lens, sections, list(images))

    def figures(anchor: str) -> str:
        return "".join(_figure(slug, images[slug]) for slug in homes.get(anchor, ()))

    def sources() -> str:
        anchors = source_anchors(result)
        return "".join(_source_split(result, s, a, figures(a)) for s, a in zip(result.sources, anchors))

    content = {
        "prediction": lambda _: _prediction(result),
        "top": lambda _: _top(result),
        "components": lambda _: _components(result),
        "heads": lambda _: _heads(result),
        "neurons": lambda _: _neurons(result),
        "experts": lambda _: _experts(result),
        "sources": lambda _: sources(),
        "lens": lambda _: _lens(lens),
        "ablation": _effects,
        "rope": _effects,
        "virtual": _effects,
        "norms": lambda value: _effects(value.ablation, value),
        "patching": _patching,
        "estimates": _estimates,
        "figures": lambda _: "",
        "settings": lambda _: _settings(result, settings),
        "how-to-read": lambda _: _how_to_read(),
    }
    return _page(
        result,
        [(s.anchor, _section(s.anchor, s.title, content[s.key](s.value), figures(s.anchor))) for s in plan],
    )


_NAV = {
    "prediction": "prediction",
    "top": "alternatives",
    "components": "components",
    "heads": "heads",
    "neurons": "neurons",
    "experts": "experts",
    "sources": "sources",
    "lens": "logit lens",
    "figures": "figures",
    "settings": "settings",
    "how-to-read": "how to read",
}


def _page(result: LogitAttribution, sections: list[tuple[str, str]]) -> str:
    """The document around the ``(anchor, html)`` sections, with a header and a table of contents."""
    nav = " ".join(f'<a href="#{_e(a)}">{_e(_NAV.get(a, a))}</a>' for a, _ in sections)
    d, t = result.decomposition, result.target
    vs = "" if result.contrast is None else f" vs {show_token(result.contrast.token)}"
    verdict = "the parts sum exactly to it" if d.exact else "WARNING: the parts do NOT sum to it"
    lead = (
        f'<p>Why does <bdi dir="ltr">{_e(visible(result.model))}</bdi> give {_tok(t.token)}'
        f"{'' if result.contrast is None else ' vs ' + _tok(result.contrast.token)} the "
        f"{QUANTITY_WORDS[result.quantity][0]} it does after this prompt? "
        f"Direct logit attribution splits it over the model's components; {verdict}.</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en" dir="ltr">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(visible(f'tokenlens: {show_token(t.token)}{vs} — {result.model}'))}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>tokenlens report: {_tok(t.token)}"
        f"{'' if not vs else ' vs ' + _tok(result.contrast.token)}</h1>\n{lead}\n"
        f"<nav>{nav}</nav></header>\n<main>\n"
        + "\n".join(part for _, part in sections)
        + f'\n</main>\n<footer class="note">tokenlens {_e(tokenlens.__version__)}</footer>'
        + "\n</body>\n</html>\n"
    )


def _scoped_css(css: str, scope: str) -> str:
    """``css`` with every rule limited to elements inside ``scope`` (``body`` becomes the scope itself)."""

    def scope_rule(match: re.Match) -> str:
        selectors = [s.strip() for s in match[1].split(",")]
        scoped = [scope if s == "body" else f"{scope} {s}" for s in selectors]
        return ",".join(scoped) + "{" + match[2] + "}"

    return re.sub(r"([^{}]+)\{([^{}]*)\}", scope_rule, css)


def render_html_fragment(result: LogitAttribution, **kwargs: object) -> str:
    """The report's body as an HTML fragment with styles scoped to it, for a notebook cell.

    Takes the arguments of :func:`render_html`. The styles apply only inside the fragment's
    ``<div class="tokenlens-report">``, so the notebook around it keeps its own look.
    """
    page = render_html(result, **kwargs)  # type: ignore[arg-type]
    body = page[page.index("<body>") + len("<body>") : page.rindex("</body>")]
    return (
        f'<div class="tokenlens-report"><style>{_scoped_css(_CSS, ".tokenlens-report")}</style>{body}</div>'
    )

"""A self-contained HTML report of a logit attribution (rendering only: no model runs here).

The report is one HTML5 file that needs nothing else (:mod:`tokenlens.report.kit.html`): styles sit in one
``<style>`` element, figures are ``data:`` URIs, and a Content-Security-Policy meta tag forbids every network
load and every script but the report's own explorer (:mod:`tokenlens.report.explorer`, allowed by its
hash), which only adds to the static page: click a layer for its heads, a head for its sources, hover the
lens. Token strings and prompts are untrusted: each is shown as its ``repr`` (whitespace, zero-width and
bidi control characters become visible escapes such as ``'\\u202e'``), HTML-escaped, and isolated in
``<bdi>`` so right-to-left text cannot reorder the page around it. Every section has a stable ``id``
(``prediction``, ``top``, ``components``, ``heads``, ``neurons``, ``experts``, ``sources``, one per section
given as ``(key, result)`` such as ``lens`` or ``ablation``, ``figures``, ``settings``, ``how-to-read``),
every number cell carries its exact value in ``data-value``, and every component, head, neuron, expert and
source row (a heads-grid cell) names itself in ``data-component``, its exact value in ``data-value``.
The sections follow :func:`tokenlens.report.layout.plan_report`; a section kind's content is its
:attr:`~tokenlens.report.sections.SectionKind.to_html` renderer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from tokenlens.attribution.result import LogitAttribution, LogitLens, SourceSplit
from tokenlens.report import explorer
from tokenlens.report.kit import html
from tokenlens.report.kit.text import QUANTITY_WORDS, show_token, visible
from tokenlens.report.layout import figure_alt, plan_report, settings_items, source_anchors, split_rows
from tokenlens.report.sections import section_kinds, with_lens
from tokenlens.report.words import HOW_TO_READ, rounding_note

_EMPTY: Mapping = MappingProxyType({})


def _prediction(r: LogitAttribution) -> str:
    d, t = r.decomposition, r.target
    tokens = html.token_row(r.tokens, r.token_ids, r.position)
    chat = " (wrapped as a user turn with the chat template; the tokens include it)" if r.chat else ""
    rows = [
        f'<tr><th>prompt</th><td><bdi dir="ltr">{html.escape(show_token(r.prompt))}</bdi>{chat}</td></tr>',
        f'<tr><th>tokens</th><td class="tokens">{tokens}</td></tr>',
        f"<tr><th>position</th><td>{r.position} of {len(r.tokens)}: the next token after "
        f"{html.token(r.tokens[r.position])}</td></tr>",
        f"<tr><th>target</th><td>{html.token(t.token)} id {t.id}</td></tr>",
        f"<tr><th>logit</th>{html.number(t.logit, '.4f', False, name='logit')}</tr>",
        f"<tr><th>probability</th>{html.number(t.prob, 'p', False, name='prob')}</tr>",
        f"<tr><th>log-probability</th>{html.number(r.logprob, '.3f', False, name='logprob')}</tr>",
    ]
    quantity = "the target's logit" if r.quantity == "logit" else f"log p({html.token(t.token)})"
    if r.contrast is not None:
        c = r.contrast
        quantity = f"logit[{html.token(t.token)}] − logit[{html.token(c.token)}]"
        rows += [
            f"<tr><th>contrast (vs)</th><td>{html.token(c.token)} id {c.id}</td></tr>",
            f"<tr><th>contrast logit</th>{html.number(c.logit, '.4f', False, name='contrast_logit')}</tr>",
            f"<tr><th>contrast probability</th>{html.number(c.prob, 'p', False, name='contrast_prob')}</tr>",
        ]
    explained = html.number(d.logit, name="explained", tag="span")
    rows.append(f"<tr><th>explained</th><td>{quantity} = {explained}</td></tr>")
    return html.key_values(rows)


def _top(r: LogitAttribution) -> str:
    rows = [
        f'<tr data-name="{s.id}"{" class=target" if s.id == r.target.id else ""}><td>{k}</td>'
        f"<td>{html.token(s.token)}</td><td>{s.id}</td>{html.number(s.logit, '.4f', False)}"
        f"{html.number(s.prob, 'p', False)}</tr>"
        for k, s in enumerate(r.top, 1)
    ]
    note = (
        f"<p>The {len(r.top)} most likely next tokens at position {r.position} among ids the tokenizer can "
        "decode; probabilities are over the model's full vocabulary.</p>"
    )
    return note + html.table(["rank", "token", "id", "logit", "probability"], rows)


def _components(r: LogitAttribution) -> str:
    d = r.decomposition
    values = d.as_dict()
    peak = max((abs(v) for v in values.values()), default=0.0)
    rows = []
    for name, value in values.items():
        share = f"{100 * value / d.logit:+.0f}%" if abs(d.logit) > 1e-9 else ""
        rows.append(
            html.row(
                name, html.number(value), f'<td class="num">{share}</td>', html.bar(value, peak), value=value
            )
        )
    what, units = QUANTITY_WORDS[r.quantity]

    def plain(value: float, fmt: str) -> str:
        return html.number(value, fmt, False, "span")

    return (
        f"<p>Each component's direct contribution to the {what}, in {units}, in model order.</p>"
        + html.table(["component", "logit", "share", "− | +"], rows)
        + f'<p id="check" class="check">sum of components {plain(d.total, ".6f")} | model '
        f"{what} {plain(d.logit, '.6f')} | error {plain(d.error, '.1e')} "
        f"(tolerance {plain(d.tolerance, '.1e')}) {html.exact_mark(d.exact)}</p>"
        f'<p class="note">final-norm scale s = {plain(d.scale, ".5f")}; captured writes vs the '
        f"stream the final norm received: max error {plain(d.stream_error, '.1e')}.</p>"
        + (f'<p class="note">{html.escape(rounding_note(r))}</p>' if d.model_value is not None else "")
    )


def _heads(r: LogitAttribution) -> str:
    c = r.heads.contributions
    peak = float(c.abs().max()) if c.numel() else 0.0
    rows = []
    for i, row in enumerate(c.tolist()):
        cells = "".join(
            html.number(v, "+.3f", False, style=html.shade(v, peak), name=f"L{i}.H{h}", component=True)
            for h, v in enumerate(row)
        )
        total = html.number(math.fsum(row), "+.4f", name=f"L{i}.heads")
        residual = html.number(float(r.heads.residual[i]), ".1e", False)
        rows.append(f'<tr data-name="L{i}"><td>L{i}</td>{cells}{total}{residual}</tr>')
    head = ["layer", *(f"H{h}" for h in range(c.shape[1])), "Σ heads", "residual"]
    return (
        "<p>Each attention head's direct contribution (logit units): cell colour green up, red down; each "
        "row sums to its layer's attention write (its residual is what the split leaves over).</p>"
        + html.table(head, rows, "grid")
    )


def _mlp_split(r: LogitAttribution, split: str, intro: str, extra: tuple[str, str], residual: str) -> str:
    """The rows of a split of the MLPs (``neurons`` or ``experts``): each row's parent, contribution, extra
    number (``(column, format)``) and bar, then each layer's split residual."""
    rows = split_rows(r, split)
    parts = getattr(r, split)
    peak = float(parts.contributions.abs().max()) if parts.contributions.numel() else 0.0
    body = [
        html.row(
            name,
            f"<td>{parent}</td>",
            html.number(v),
            html.number(x, extra[1], False),
            html.bar(v, peak),
            value=v,
        )
        for name, parent, v, x in rows
    ]
    left = ", ".join(f"L{layer}.mlp {v:.1e}" for layer, v in zip(parts.layers, parts.residual.tolist()))
    return (
        f"<p>{intro}</p>"
        + html.table([split[:-1], "parent", "logit", extra[0], "− | +"], body)
        + f'<p class="note">split residual ({residual}): {left}</p>'
    )


def _neurons(r: LogitAttribution) -> str:
    intro = (
        f"The top {r.neurons.ids.shape[1]} neurons of each dense MLP layer by |contribution|; neuron n "
        "writes act_n · W_down[:, n] to the stream."
    )
    return _mlp_split(r, "neurons", intro, ("activation", "+.3f"), "layer MLP − Σ all its neurons")


def _experts(r: LogitAttribution) -> str:
    intro = (
        "The experts the router chose at the position, each with its router weight and the direct "
        "contribution of its weighted output."
    )
    return _mlp_split(r, "experts", intro, ("router weight", ".3f"), "layer MLP − Σ experts")


def _source_split(r: LogitAttribution, split: SourceSplit, anchor: str, figures: str) -> str:
    upto = r.source_end
    values = split.contributions.tolist()
    peak = max((abs(v) for v in values[:upto]), default=0.0)
    shaded = " ".join(
        html.token(token, "tok", html.shade(values[j], peak), f"S{j}: {values[j]:+.4f}")
        if j < upto
        else html.token(token, "tok after")
        for j, token in enumerate(r.source_tokens)
    )
    rows = [
        f'<tr data-name="{split.name}.S{j}" data-component="{split.name}.S{j}" data-value="{values[j]!r}">'
        f"<td>S{j}</td><td>{html.token(r.source_tokens[j])}</td>"
        f"{html.number(values[j])}"
        f'<td class="num">{" ".join(f"{a:.3f}" for a in split.pattern[:, j].tolist())}</td>'
        f"{html.bar(values[j], peak)}</tr>"
        for j in range(upto)
    ]
    bias = split.value_bias
    rows.append(
        html.row(
            f"{split.name}.v_bias",
            "<td>value bias</td>",
            html.number(bias),
            "<td></td>",
            html.bar(bias, peak),
            value=bias,
        )
    )
    parent = f"head {split.name}" if split.head is not None else f"layer L{split.layer} (all heads)"
    attention = "attention" if split.head is not None else "attention per head"
    return (
        f'<div class="split" id="{html.escape(anchor)}"><h3>Sources through {html.escape(parent)}</h3>'
        f"<p>The prompt, each token shaded by how much it contributed through {html.escape(parent)} to the "
        f"explained logit at position {r.position} (green up, red down); the value-projection bias term "
        f"{html.number(bias, tag='span')} is kept apart.</p>"
        f'<p class="tokens">{shaded}</p>'
        + html.table(["source", "token", "logit", attention, "− | +"], rows)
        + f'<p class="note">split residual: {html.number(split.residual, ".1e", False, "span")}</p>'
        + f"{figures}</div>"
    )


def _settings(r: LogitAttribution, settings: Mapping[str, str] | None) -> str:
    return html.key_values(
        f'<tr data-name="{html.escape(key)}"><th>{html.escape(key)}</th>'
        f'<td class="setting"><bdi dir="ltr">{html.escape(visible(value))}</bdi></td></tr>'
        for key, value in settings_items(r, settings, detail=True).items()
    )


def render_html(
    result: LogitAttribution,
    *,
    lens: LogitLens | None = None,
    sections: Sequence[tuple[str, object]] = (),
    images: Mapping[str, bytes] = _EMPTY,
    settings: Mapping[str, str] | None = None,
) -> str:
    """One self-contained HTML5 document explaining ``result`` (no network, inline styles, one inline script:
    the explorer, which only adds to the static page).

    Args:
        result: The attribution to show, with any finer splits it carries.
        lens: A logit lens to show: the same as a first ``("lens", lens)`` section.
        sections: Results shown beside it as ``(key, result)``, keys of :mod:`tokenlens.report.sections`
            (``lens``, ``ablation``, ``rope``, ``virtual``, ``norms``, ``patching``, ``estimates``); shown in
            the given order, a repeated key's anchor numbered.
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
    plan, homes = plan_report(result, with_lens(lens, sections), list(images))

    def figures(anchor: str) -> str:
        return "".join(
            html.figure(slug, images[slug], figure_alt(slug), re.sub(r"[^\w.-]", "-", slug))
            for slug in homes.get(anchor, ())
        )

    def sources() -> str:
        anchors = source_anchors(result)
        return "".join(_source_split(result, s, a, figures(a)) for s, a in zip(result.sources, anchors))

    parts = {
        "prediction": lambda: _prediction(result),
        "top": lambda: _top(result),
        "components": lambda: _components(result),
        "heads": lambda: _heads(result),
        "neurons": lambda: _neurons(result),
        "experts": lambda: _experts(result),
        "sources": sources,
        "figures": lambda: "",
        "settings": lambda: _settings(result, settings),
        "how-to-read": lambda: html.paragraphs(HOW_TO_READ),
    }
    body = [
        (
            s.anchor,
            html.section(
                s.anchor,
                html.escape(s.title),
                s.kind.to_html(s.value, result) if s.kind else parts[s.key](),
                figures(s.anchor),
            ),
        )
        for s in plan
    ]
    lenses = [(s.anchor, s.value) for s in plan if s.kind is not None and isinstance(s.value, LogitLens)]
    return _page(result, body, explorer.explorer_data(result, lenses))


_NAV = {
    "prediction": "prediction",
    "top": "alternatives",
    "components": "components",
    "heads": "heads",
    "neurons": "neurons",
    "experts": "experts",
    "sources": "sources",
    "figures": "figures",
    "settings": "settings",
    "how-to-read": "how to read",
}


def _page(result: LogitAttribution, sections: list[tuple[str, str]], data: dict) -> str:
    """The document around the ``(anchor, html)`` sections, with a header and a table of contents, and the
    explorer over ``data`` (:func:`~tokenlens.report.explorer.explorer_data`) at the end."""
    labels = _NAV | {kind.key: kind.label for kind in section_kinds() if kind.label}
    nav = " ".join(f'<a href="#{html.escape(a)}">{html.escape(labels.get(a, a))}</a>' for a, _ in sections)
    d, t = result.decomposition, result.target
    vs = "" if result.contrast is None else f" vs {show_token(result.contrast.token)}"
    vs_html = "" if result.contrast is None else " vs " + html.token(result.contrast.token)
    verdict = "the parts sum exactly to it" if d.exact else "WARNING: the parts do NOT sum to it"
    lead = (
        f'<p>Why does <bdi dir="ltr">{html.escape(visible(result.model))}</bdi> give {html.token(t.token)}'
        f"{vs_html} the {QUANTITY_WORDS[result.quantity][0]} it does after this prompt? "
        f"Direct logit attribution splits it over the model's components; {verdict}.</p>"
    )
    header = f"<h1>tokenlens report: {html.token(t.token)}{vs_html}</h1>\n{lead}\n<nav>{nav}</nav>"
    title = visible(f"tokenlens: {show_token(t.token)}{vs} — {result.model}")
    return html.page(
        title,
        header,
        "\n".join(part for _, part in sections),
        html.CSS + explorer.CSS,
        end_html=explorer.explorer_html(data),
        script_hashes=[explorer.script_hash(explorer.SCRIPT)],
    )


def render_html_fragment(result: LogitAttribution, **kwargs: object) -> str:
    """The report's body as an HTML fragment with styles scoped to it, for a notebook cell.

    Takes the arguments of :func:`render_html`. The styles apply only inside the fragment's
    ``<div class="tokenlens-report">``, so the notebook around it keeps its own look. It ends with the
    explorer's data and script, which act only inside that ``div``; where the notebook does not run the
    script (an untrusted notebook, a viewer that strips scripts) the fragment is the static report.
    """
    page = render_html(result, **kwargs)  # type: ignore[arg-type]
    body = page[page.index("<body>") + len("<body>") : page.rindex("</body>")]
    css = html.scoped_css(html.CSS + explorer.CSS, ".tokenlens-report")
    return f'<div class="tokenlens-report"><style>{css}</style>{body}</div>'

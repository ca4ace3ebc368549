"""A self-contained HTML report of a whole-answer attribution (rendering only), and its notebook fragment.

The same page rules as the single-prediction report (:mod:`tokenlens.report.kit.html`: no network, tokens
escaped and bidi-isolated, exact values in ``data-value``, one inline script allowed by its hash: the
explorer of :mod:`tokenlens.report.explorer`, here stepping through the answer's tokens — choose a step to
see its split, expand a layer into its heads, colour the tokens by a head's sources where computed).
Sections, each with a stable id: ``answer`` (the prompt and the answer's tokens shaded by one component's
share of each step, and the notes), ``sequence`` (the answer's log-probability split), ``steps`` (every
step × every component), ``figures``, ``settings``, ``how-to-read``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from tokenlens.attribution.sequence_result import SequenceAttribution
from tokenlens.report import explorer
from tokenlens.report.kit import html
from tokenlens.report.kit.text import QUANTITY_WORDS, show_token, visible
from tokenlens.report.sequence_layout import colour_component, shares, source_words
from tokenlens.report.words import HOW_TO_READ
from tokenlens.version import __version__

_EMPTY: Mapping = MappingProxyType({})

SEQUENCE_WORDS = (
    "A whole answer is one next-token prediction per answer token: step k predicts answer token k from the "
    "prompt and the answer's first k tokens, all from one forward pass over prompt and answer (attention is "
    "causal, so later tokens change nothing at earlier positions). Each step's value splits exactly over the "
    "components, as a single prediction does.",
    "The answer's log-probability is the sum of its tokens' log-probabilities; each of those splits exactly "
    "(each component's push on the token relative to its probability-weighted push on every token, plus an "
    "entropy term), so the sum does too: a component's term of the answer is its sum over the steps.",
    "A token's share of a component is the component's term at that step divided by the sum of the absolute "
    "terms of the step, between −1 and 1.",
)
FIGURE_ALT = {"steps-layers": "Each layer's direct contribution to every answer token, steps × layers"}


def _answer(r: SequenceAttribution, colour_by: str | None) -> str:
    component = colour_component(r, colour_by)
    prompt = " ".join(
        html.token(t, title=f"{j}: id {i}") for j, (t, i) in enumerate(zip(r.prompt_tokens, r.prompt_ids))
    )
    answer = " ".join(
        html.token(t, "tok", html.shade(s, 1.0), f"{step.position + 1}: id {step.target.id}; share {s:+.3f}")
        for t, s, step in zip(r.answer_tokens, shares(r, component), r.steps, strict=True)
    )
    chat = " (wrapped as a user turn with the chat template; the tokens include it)" if r.chat else ""
    rows = [
        f'<tr><th>prompt</th><td><bdi dir="ltr">{html.escape(show_token(r.prompt))}</bdi>{chat}</td></tr>',
        f'<tr><th>prompt tokens</th><td class="tokens">{prompt}</td></tr>',
        f"<tr><th>answer</th><td>{len(r.answer_ids)} tokens, {html.escape(source_words(r))}</td></tr>",
        f'<tr><th>answer tokens</th><td class="tokens">{answer}</td></tr>',
        f"<tr><th>coloured by</th><td>{html.escape(component)}'s share of each step (green up, red "
        "down)</td></tr>",
    ]
    notes = "".join(f'<p class="note" data-name="note">note: {html.escape(visible(n))}</p>' for n in r.notes)
    return html.key_values(rows) + notes


def _sequence(r: SequenceAttribution) -> str:
    s = r.sequence
    values = s.as_dict()
    peak = max((abs(v) for v in values.values()), default=0.0)
    rows = [html.row(name, html.number(v), html.bar(v, peak)) for name, v in values.items()]
    tokens = [
        html.row(f"step {k}", f"<td>{html.token(t)}</td>", html.number(lp, ".4f", False))
        for k, (t, lp) in enumerate(zip(r.answer_tokens, s.step_logprobs.tolist(), strict=True))
    ]

    def plain(value: float, fmt: str) -> str:
        return html.number(value, fmt, False, "span")

    return (
        f"<p>log p(answer) = Σ over the {len(r.answer_ids)} steps of log p(token) = "
        f"{html.number(s.logprob, '.4f', False, 'span', name='logprob')} nats, split over the components "
        "(each component's term summed over the steps).</p>"
        + html.table(["component", "log p", "− | +"], rows)
        + f'<p id="sequence-check" class="check">sum of components {plain(s.total, ".6f")} | log p(answer) '
        f"{plain(s.logprob, '.6f')} | error {plain(s.error, '.1e')} (tolerance {plain(s.tolerance, '.1e')}) "
        f"{html.exact_mark(s.exact)}</p>" + html.table(["step", "token", "log p"], tokens)
    )


def _steps(r: SequenceAttribution) -> str:
    grid = r.grid.double()
    peak = float(grid.abs().max()) if grid.numel() else 0.0
    what, units = QUANTITY_WORDS[r.quantity]
    rows = []
    for step, values in zip(r.steps, grid.tolist(), strict=True):
        d = step.decomposition
        cells = "".join(
            html.number(v, "+.3f", False, style=html.shade(v, peak), name=n) for n, v in zip(r.names, values)
        )
        rows.append(
            f'<tr data-name="{step.position}"><td>{step.position}</td>'
            f"<td>{html.token(step.target.token)}</td>"
            f"{html.number(step.target.prob, 'p', False)}{html.number(d.logit, '+.4f', name='value')}"
            f"{cells}<td>{html.exact_mark(d.exact)}</td></tr>"
        )
    head = ["position", "token", "p", "value", *(html.escape(n) for n in r.names), "check"]
    return (
        f"<p>Each answer token's {what} ({units}) split over the components; a row sums to its value. "
        "Finer splits (heads, sources, neurons, experts) of every step are in the JSON output and, with "
        "JavaScript, in the step explorer: click a row to choose its step.</p>"
        + html.table(head, rows, "grid")
    )


def _settings(r: SequenceAttribution, settings: Mapping[str, str] | None) -> str:
    step = r.steps[0]
    items = {"model": r.model, "dtype": step.dtype, "device": step.device, "tokenlens version": __version__}
    items["chat template"] = "yes" if r.chat else "no"
    items["tokenization"] = r.tokenization
    for key, value in (settings or {}).items():
        if items.get(key) != str(value):
            items[f"{key} (requested)" if key in items else key] = str(value)
    return html.key_values(
        f'<tr data-name="{html.escape(k)}"><th>{html.escape(k)}</th>'
        f'<td class="setting"><bdi dir="ltr">{html.escape(visible(v))}</bdi></td></tr>'
        for k, v in items.items()
    )


def render_sequence_html(
    result: SequenceAttribution,
    *,
    images: Mapping[str, bytes] = _EMPTY,
    settings: Mapping[str, str] | None = None,
    colour_by: str | None = None,
) -> str:
    """One self-contained HTML5 document explaining the whole answer.

    Args:
        result: The whole-answer attribution.
        images: PNG bytes by slug (``steps-layers``), shown in the ``figures`` section.
        settings: Extra run settings to list (e.g. the command line).
        colour_by: The component whose share colours the answer's tokens (default: the largest one).

    Raises:
        ValueError: An image that is not PNG, or an unknown ``colour_by`` component.
    """
    figures = "".join(
        html.figure(slug, png, FIGURE_ALT.get(slug, f"Figure {slug}"), re.sub(r"[^\w.-]", "-", slug))
        for slug, png in images.items()
    )
    parts = [
        ("answer", "The answer", _answer(result, colour_by)),
        ("sequence", "The answer's log-probability, split", _sequence(result)),
        ("steps", "Steps × components", _steps(result)),
    ]
    if figures:
        parts.append(("figures", "Figures", ""))
    parts += [
        ("settings", "Settings", _settings(result, settings)),
        ("how-to-read", "How to read this report", html.paragraphs(SEQUENCE_WORDS + HOW_TO_READ)),
    ]
    body = "\n".join(
        html.section(anchor, html.escape(title), content, figures if anchor == "figures" else "")
        for anchor, title, content in parts
    )
    nav = " ".join(f'<a href="#{a}">{html.escape(t.lower())}</a>' for a, t, _ in parts)
    verdict = (
        "every split sums exactly to the model's numbers" if result.exact else "WARNING: a split is NOT exact"
    )
    answer = html.escape(show_token(result.answer_text))
    header = (
        "<h1>tokenlens report: a whole answer</h1>\n"
        f'<p>Why does <bdi dir="ltr">{html.escape(visible(result.model))}</bdi> give the answer '
        f'<bdi dir="ltr">{answer}</bdi> the probability it does, token by token? '
        f"{verdict}.</p>\n<nav>{nav}</nav>"
    )
    title = visible(f"tokenlens: {show_token(result.answer_text)[:60]} — {result.model}")
    return html.page(
        title,
        header,
        body,
        html.CSS + explorer.CSS,
        end_html=explorer.explorer_html(explorer.sequence_explorer_data(result.steps)),
        script_hashes=[explorer.script_hash(explorer.SCRIPT)],
    )


def sequence_html_fragment(result: SequenceAttribution, **kwargs: object) -> str:
    """The report's body as an HTML fragment with styles scoped to it, for a notebook cell (the renderer
    :mod:`tokenlens.display` uses for a :class:`SequenceAttribution`)."""
    page = render_sequence_html(result, **kwargs)  # type: ignore[arg-type]
    body = page[page.index("<body>") + len("<body>") : page.rindex("</body>")]
    css = html.scoped_css(html.CSS + explorer.CSS, ".tokenlens-report")
    return f'<div class="tokenlens-report"><style>{css}</style>{body}</div>'

"""A GitHub-flavoured Markdown report of a logit attribution, for pull requests and issues (rendering only).

The same sections as the HTML report (:mod:`tokenlens.report.html`, both follow
:func:`tokenlens.report.layout.plan_report`), as compact tables. Token strings and prompts are untrusted:
each is its ``repr`` (whitespace and invisible characters visible) inside a code span, so Markdown, HTML,
``$math$`` and ``@mentions`` in them stay literal text (:mod:`tokenlens.report.kit.markdown`). Figures are
linked by relative path. A section kind's content is its
:attr:`~tokenlens.report.sections.SectionKind.to_markdown` renderer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from tokenlens.attribution.result import LogitAttribution, LogitLens, SourceSplit
from tokenlens.report.kit import markdown
from tokenlens.report.kit.markdown import code, plain, token
from tokenlens.report.kit.text import QUANTITY_WORDS, probability
from tokenlens.report.layout import figure_alt, plan_report, settings_items, source_anchors, split_rows
from tokenlens.report.sections import with_lens
from tokenlens.report.words import HOW_TO_READ, rounding_note

_EMPTY: Mapping = MappingProxyType({})


def _prediction(r: LogitAttribution) -> str:
    d, t = r.decomposition, r.target
    tokens = " ".join(f"**{token(x)}**" if j == r.position else token(x) for j, x in enumerate(r.tokens))
    lines = [
        f"- **prompt**: {token(r.prompt)}" + (" (wrapped with the chat template)" if r.chat else ""),
        f"- **tokens**: {tokens}",
        f"- **position**: {r.position} of {len(r.tokens)} (next token after {token(r.tokens[r.position])})",
        f"- **target**: {token(t.token)} (id {t.id}): logit {t.logit:.4f}, p {probability(t.prob)}, "
        f"log p {r.logprob:.3f}",
    ]
    explained = "logit"
    if r.contrast is not None:
        c = r.contrast
        lines.append(f"- **vs**: {token(c.token)} (id {c.id}): logit {c.logit:.4f}, p {probability(c.prob)}")
        explained = f"logit[{token(t.token)}] − logit[{token(c.token)}]"
    return "\n".join([*lines, f"- **explained**: {explained} = {d.logit:+.4f}"])


def _top(r: LogitAttribution) -> str:
    rows = [
        [str(k), token(s.token, True), str(s.id), f"{s.logit:.4f}", probability(s.prob)]
        for k, s in enumerate(r.top, 1)
    ]
    return markdown.table(["rank", "token", "id", "logit", "p"], rows)


def _components(r: LogitAttribution) -> str:
    d = r.decomposition
    rows = [
        [name, f"{v:+.4f}", f"{100 * v / d.logit:+.0f}%" if abs(d.logit) > 1e-9 else ""]
        for name, v in d.as_dict().items()
    ]
    what, units = QUANTITY_WORDS[r.quantity]
    return (
        f"Direct contributions to the {what} ({units}), in model order.\n\n"
        + markdown.table(["component", "logit", "share"], rows)
        + f"\n\nCheck: sum of components {d.total:.6f}; model {what} {d.logit:.6f}; error {d.error:.1e} "
        f"(tolerance {d.tolerance:.1e}) {markdown.exact_mark(d.exact)}. Final-norm scale s = {d.scale:.5f}."
        + (f" {rounding_note(r)}" if d.model_value is not None else "")
    )


def _heads(r: LogitAttribution) -> str:
    c = r.heads.contributions
    rows = [
        [f"L{i}", *(f"{v:+.3f}" for v in row), f"{math.fsum(row):+.4f}", f"{float(r.heads.residual[i]):.1e}"]
        for i, row in enumerate(c.tolist())
    ]
    return markdown.table(["layer", *(f"H{h}" for h in range(c.shape[1])), "Σ heads", "residual"], rows)


def _neurons(r: LogitAttribution) -> str:
    rows = [[name, f"{v:+.4f}", f"{act:+.3f}"] for name, _, v, act in split_rows(r, "neurons")]
    return f"Top {r.neurons.ids.shape[1]} neurons per dense MLP layer.\n\n" + markdown.table(
        ["neuron", "logit", "activation"], rows
    )


def _experts(r: LogitAttribution) -> str:
    rows = [[name, f"{w:.3f}", f"{v:+.4f}"] for name, _, v, w in split_rows(r, "experts")]
    return markdown.table(["expert", "router weight", "logit"], rows)


def _source_split(r: LogitAttribution, split: SourceSplit) -> str:
    values = split.contributions.tolist()
    rows = [
        [
            f"S{j}",
            token(r.source_tokens[j], True),
            f"{values[j]:+.4f}",
            " ".join(f"{a:.3f}" for a in split.pattern[:, j].tolist()),
        ]
        for j in range(r.source_end)
    ]
    rows.append([f"{split.name}.v_bias", "value bias", f"{split.value_bias:+.4f}", ""])
    parent = f"head {split.name}" if split.head is not None else f"layer L{split.layer} (all heads)"
    return (
        f"### Sources through {parent}\n\n"
        + markdown.table(["source", "token", "logit", "attention"], rows)
        + f"\n\nSplit residual: {split.residual:.1e}."
    )


def _settings(r: LogitAttribution, settings: Mapping[str, str] | None) -> str:
    items = settings_items(r, settings, detail=False)
    return "\n".join(f"- **{plain(key)}**: {code(value)}" for key, value in items.items())


def render_markdown(
    result: LogitAttribution,
    *,
    lens: LogitLens | None = None,
    sections: Sequence[tuple[str, object]] = (),
    image_paths: Mapping[str, str] = _EMPTY,
    settings: Mapping[str, str] | None = None,
) -> str:
    """A GitHub-flavoured Markdown report of ``result``: the HTML report's sections as compact tables.

    Takes the arguments of :func:`tokenlens.report.html.render_html`, with ``image_paths`` (figure paths
    relative to the Markdown file, by slug, placed as in the HTML report) for its ``images``.

    Returns:
        The Markdown text, ending with a newline.

    Raises:
        ValueError: An unknown section key or a section of the wrong type.
    """
    plan, homes = plan_report(result, with_lens(lens, sections), list(image_paths))

    def block(anchor: str, title: str, content: str) -> str:
        images = [markdown.image(figure_alt(slug), image_paths[slug]) for slug in homes.get(anchor, ())]
        return "\n\n".join(part for part in (f"## {title}" if title else "", content, *images) if part)

    def sources() -> str:
        anchors = source_anchors(result)
        return "\n\n".join(block(a, "", _source_split(result, s)) for s, a in zip(result.sources, anchors))

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
        "how-to-read": lambda: "\n\n".join(HOW_TO_READ),
    }
    t = result.target
    vs = "" if result.contrast is None else f" vs {token(result.contrast.token)}"
    out = [f"# tokenlens report: {token(t.token)}{vs}"]
    out += [
        block(s.anchor, s.title, s.kind.to_markdown(s.value, result) if s.kind else parts[s.key]())
        for s in plan
    ]
    return "\n\n".join(out) + "\n"

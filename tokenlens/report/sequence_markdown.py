"""A GitHub-flavoured Markdown report of a whole-answer attribution (rendering only): the HTML report's
sections as compact tables, tokens as literals in code spans (:mod:`tokenlens.report.kit.markdown`)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from tokenlens.attribution.sequence_result import SequenceAttribution
from tokenlens.report.kit import markdown
from tokenlens.report.kit.markdown import code, plain, token
from tokenlens.report.kit.text import QUANTITY_WORDS, probability
from tokenlens.report.sequence_html import FIGURE_ALT, SEQUENCE_WORDS
from tokenlens.report.sequence_layout import (
    colour_component,
    compact_rows,
    shares,
    source_words,
    top_components,
)
from tokenlens.version import __version__

_EMPTY: Mapping = MappingProxyType({})


def render_sequence_markdown(
    result: SequenceAttribution,
    *,
    image_paths: Mapping[str, str] = _EMPTY,
    settings: Mapping[str, str] | None = None,
    colour_by: str | None = None,
) -> str:
    """The Markdown report: the answer (each token with its share of the ``colour_by`` component), the notes,
    the answer's log-probability split, a compact steps × components table, figures linked by relative path
    (``image_paths`` by slug), the settings and how to read it. Ends with a newline.

    Raises:
        ValueError: An unknown ``colour_by`` component.
    """
    r, s = result, result.sequence
    component = colour_component(r, colour_by)
    tokens = " ".join(
        f"{token(t)} ({share:+.0%})" for t, share in zip(r.answer_tokens, shares(r, component), strict=True)
    )
    what, units = QUANTITY_WORDS[r.quantity]
    lines = [
        "# tokenlens report: a whole answer",
        "\n".join(
            [
                f"- **model**: {code(r.model)}",
                f"- **prompt**: {token(r.prompt)}" + (" (wrapped with the chat template)" if r.chat else ""),
                f"- **prompt tokens**: {' '.join(token(t) for t in r.prompt_tokens)}",
                f"- **answer**: {len(r.answer_ids)} tokens, {plain(source_words(r))}",
                f"- **answer tokens** (each with {plain(component)}'s share of its step): {tokens}",
                f"- **each step explains**: the answer token's {what}",
            ]
        ),
        *(f"> **Note**: {plain(note)}" for note in r.notes),
        "## The answer's log-probability, split",
        f"log p(answer) = Σ over the {len(r.answer_ids)} steps of log p(token) = {s.logprob:.4f} nats.",
        markdown.table(["component", "log p"], [[n, f"{v:+.4f}"] for n, v in s.as_dict().items()]),
        f"Check: sum of components {s.total:.6f}; log p(answer) {s.logprob:.6f}; error {s.error:.1e} "
        f"(tolerance {s.tolerance:.1e}) {markdown.exact_mark(s.exact)}.",
        "## Steps × components",
    ]
    columns = top_components(r)
    rows = [
        [
            str(pos),
            token(t, True),
            probability(step.target.prob),
            f"{value:+.4f}",
            *(f"{v:+.3f}" for v in terms),
            f"{rest:+.3f}",
        ]
        for step, (pos, t, value, terms, rest) in zip(r.steps, compact_rows(r, columns), strict=True)
    ]
    lines += [
        f"Each answer token's {what} ({units}): the {len(columns)} components with the largest terms over "
        "the answer, the rest summed; each row sums to its value. Every component of every step (and the "
        "finer splits) is in the JSON and HTML outputs.",
        markdown.table(["position", "token", "p", "value", *columns, "rest"], rows),
        f"Every step exact: {markdown.exact_mark(all(st.decomposition.exact for st in r.steps))}",
    ]
    if image_paths:
        lines.append("## Figures")
        lines += [markdown.image(FIGURE_ALT.get(slug, slug), path) for slug, path in image_paths.items()]
    step = r.steps[0]
    items = {"model": r.model, "dtype": step.dtype, "device": step.device, "tokenlens version": __version__}
    items["tokenization"] = r.tokenization
    for key, value in (settings or {}).items():
        if items.get(key) != str(value):
            items[f"{key} (requested)" if key in items else key] = str(value)
    lines += ["## Settings", "\n".join(f"- **{plain(k)}**: {code(v)}" for k, v in items.items())]
    lines += ["## How to read this report", *(plain(t) for t in SEQUENCE_WORDS)]
    return "\n\n".join(lines) + "\n"

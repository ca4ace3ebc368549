"""Section kinds: one registered record puts a new kind of result into every report format (JSON, terminal,
HTML, Markdown, figures), and the built-in kinds are records like any other."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from matplotlib.figure import Figure
from rich.console import RenderableType

from tokenlens.attribution.direct import attribute
from tokenlens.report import sections
from tokenlens.report.html import render_html
from tokenlens.report.json_report import attribution_to_dict
from tokenlens.report.kit import html, markdown, terminal
from tokenlens.report.kit.terminal import renderables_to_text
from tokenlens.report.markdown import render_markdown
from tokenlens.report.plots import attribution_figures, figure_png
from tokenlens.report.sections import SectionKind, register_section, section_kind, section_kinds
from tokenlens.report.terminal import render_report

PROMPT = "The capital of France is"


@dataclass(frozen=True)
class Answer:
    """A stand-in for a new kind of result: a generated answer, token by token."""

    tokens: tuple[str, ...]
    probs: tuple[float, ...]


def answer_to_dict(answer: Answer) -> dict:
    return {"tokens": [{"token": t, "prob": p} for t, p in zip(answer.tokens, answer.probs)]}


def answer_table(answer: Answer, result) -> RenderableType:
    table = terminal.table("token", "p")
    for token, p in zip(answer.tokens, answer.probs):
        table.add_row(repr(token), f"{p:.3f}")
    return terminal.captioned(f"Answer after position {result.position}", "each token's probability", table)


def answer_html(answer: Answer, result) -> str:
    rows = [html.row(t, html.number(p, "p", False)) for t, p in zip(answer.tokens, answer.probs)]
    return html.table(["token", "p"], rows)


def answer_markdown(answer: Answer, result) -> str:
    return markdown.table(
        ["token", "p"], [[markdown.token(t, True), f"{p:.3f}"] for t, p in zip(answer.tokens, answer.probs)]
    )


def answer_figure(answer: Answer) -> Figure:
    from tokenlens.report.plots.common import new_figure

    figure = new_figure(3, 2)
    figure.add_subplot().bar(range(len(answer.probs)), answer.probs)
    return figure


ANSWER = SectionKind(
    key="answer",
    result_type=Answer,
    title="Answer, token by token",
    figure_alt="Each answer token's probability",
    to_dict=answer_to_dict,
    to_table=answer_table,
    to_html=answer_html,
    to_markdown=answer_markdown,
    to_figure=answer_figure,
    label="answer",
)


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry for one test: what the test registers is gone afterwards."""
    monkeypatch.setattr(sections, "_KINDS", dict(sections._KINDS))


@pytest.fixture(scope="module")
def result(tiny_loaded):
    return attribute(tiny_loaded("qwen3-tied-gqa"), PROMPT)


def test_one_record_puts_a_new_kind_in_every_format(registry, result):
    assert register_section(ANSWER) is ANSWER and section_kind("answer") is ANSWER
    answer = Answer((" Paris", "."), (0.5, 0.25))
    shown = [("answer", answer)]
    data = json.loads(json.dumps(attribution_to_dict(result, shown)))
    assert data["answer"] == {"tokens": [{"token": " Paris", "prob": 0.5}, {"token": ".", "prob": 0.25}]}
    text = renderables_to_text(render_report(result, shown))
    assert f"Answer after position {result.position}" in text and "' Paris'   0.500" in text
    figures = attribution_figures(result, sections=shown)
    assert list(figures) == ["waterfall", "layers", "answer"]
    page = render_html(result, sections=shown, images={"answer": figure_png(figures["answer"], dpi=40)})
    section = page[page.index('<section id="answer">') : page.index("</section>", page.index('id="answer"'))]
    assert "<h2>Answer, token by token</h2>" in section and 'data-name=" Paris"' in section
    assert 'id="figure-answer"' in section and 'alt="Each answer token&#x27;s probability"' in section
    assert '<a href="#answer">answer</a>' in page
    text = render_markdown(result, sections=shown, image_paths={"answer": "f/answer.png"})
    assert "## Answer, token by token\n\n| token | p |" in text and "(f/answer.png)" in text


def test_registering_checks_keys_and_types(registry, result):
    register_section(ANSWER)
    with pytest.raises(ValueError, match="'answer' is registered already"):
        register_section(ANSWER)
    with pytest.raises(ValueError, match="report section 'answer' needs a Answer, got str"):
        render_html(result, sections=[("answer", "not an answer")])
    with pytest.raises(ValueError, match="unknown report section 'answers': use one of lens, ablation"):
        attribution_to_dict(result, [("answers", None)])


def test_a_kind_without_a_figure_draws_none(registry, result):
    register_section(SectionKind(**{**ANSWER.__dict__, "key": "plain", "to_figure": None}))
    assert list(attribution_figures(result, sections=[("plain", Answer(("a",), (1.0,)))])) == [
        "waterfall",
        "layers",
    ]


def test_the_built_in_kinds():
    keys = [kind.key for kind in section_kinds()]
    assert keys == ["lens", "ablation", "rope", "virtual", "norms", "patching", "estimates", "grid", "trace"]
    for kind in section_kinds():
        assert kind.title and kind.figure_alt and kind.to_figure is not None
        assert kind.key == "lens" or "measured" in kind.title or "estimates" in kind.title

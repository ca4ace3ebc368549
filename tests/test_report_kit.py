"""The rendering kit on its own: number formats, JSON-safe values, HTML pieces, Markdown pieces, rich pieces.

The reports that use the kit are tested on real results elsewhere; these pin the rules every renderer
relies on, including the edge cases (NaN, infinity, hostile text) that real results rarely produce.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tokenlens.report.kit import html, markdown, terminal, text

HOSTILE = '<b x="1">&</b> \u202e $x$'


def test_probabilities_and_changes():
    assert text.probability(0.5) == "0.5000" and text.probability(0.0) == "0.0000"
    assert text.probability(6.6e-06) == "6.60e-06" and text.probability(6.6e-06, 3, 1) == "6.6e-06"
    assert text.probability(math.nan) == "—"
    assert text.probability_change(0.6) == "+0.6000" and text.probability_change(-6.1e-07) == "-6.1e-07"
    assert text.change_format(0.0) == "+.4f"


def test_json_numbers_are_finite_or_null():
    assert text.json_number(None) is None and text.json_number(math.nan) is None
    assert text.json_number(math.inf) is None and text.json_number(2) == 2.0
    nested = {"a": [1.0, math.nan, {"b": -math.inf}], "c": "x"}
    assert text.finite_json(nested) == {"a": [1.0, None, {"b": None}], "c": "x"}


def test_text_is_made_visible_and_cut():
    assert text.show_token(" Paris\n") == "' Paris\\n'"
    assert text.visible("a\u202eb\nc") == "a\\u202eb\\nc"
    assert text.cut("abcdef", 4) == "abc…" and text.cut("abc", 3) == "abc"


def test_html_numbers_carry_their_exact_value():
    assert html.number(0.125) == '<td class="num pos" data-value="0.125">+0.1250</td>'
    assert html.number(-2, "d", tag="span", name="n<") == (
        '<span class="num neg" data-value="-2" data-name="n&lt;">-2</span>'
    )
    assert html.number(1e-5, "p", False) == '<td class="num" data-value="1e-05">1.00e-05</td>'
    assert html.number(math.nan).endswith(">—</td>")
    assert html.optional_number(math.inf) == '<td class="num dim" data-value="null">—</td>'
    assert (
        html.optional_number(None, name="x") == '<td class="num dim" data-value="null" data-name="x">—</td>'
    )


def test_html_text_and_tokens_are_escaped_and_isolated():
    assert html.escape(HOSTILE) == "&lt;b x=&quot;1&quot;&gt;&amp;&lt;/b&gt; \u202e $x$"
    box = html.token(HOSTILE, title='"t"')
    assert box.startswith('<span class="tok" title="&quot;t&quot;"><bdi dir="ltr">&#x27;&lt;b')
    assert "\u202e" not in box and "\\u202e" in box
    row = html.token_row(["a", "b", "c"], [7, 8, 9], 1)
    assert [c in row for c in ('"tok" title="0: id 7"', '"tok here" title="1: id 8"', '"tok after"')] == [
        True
    ] * 3


def test_html_page_figure_and_scoped_styles():
    page = html.page("t <x>", "<h1>h</h1>", "<section>s</section>", html.CSS + ".extra{}")
    assert page.startswith("<!DOCTYPE html>") and f'content="{html.CSP}"' in page
    assert "<title>t &lt;x&gt;</title>" in page and "</main>\n<footer" in page and ".extra{}</style>" in page
    with pytest.raises(ValueError, match="image 'x' is not PNG data"):
        html.figure("x", b"GIF89a", "alt")
    figure = html.figure("a b", html.PNG_MAGIC + b"...", 'say "hi"', anchor="a-b")
    assert (
        figure.startswith('<figure id="figure-a-b"><img src="data:image/png;base64,') and "&quot;hi" in figure
    )
    scoped = html.scoped_css("body{x:1}a,b{y:2}", ".r")
    assert scoped == ".r{x:1}.r a,.r b{y:2}"
    assert html.shade(0.0, 1.0) == "" and html.shade(-1.0, 1.0) == "background-color:rgba(214,69,65,0.70)"


def test_markdown_spans_tables_and_images():
    assert markdown.code("a`b") == "``a`b``" and markdown.code("") == ""
    assert markdown.token("x|y", table=True) == "`'x\\|y'`"
    assert markdown.plain("*a* <b> | @c") == "\\*a\\* \\<b\\> \\| \\@c"
    assert markdown.table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
    assert markdown.image("a [b]", "f files/x.png") == "![a \\[b\\]](f%20files/x.png)"
    assert markdown.exact_mark(False) == "✗ **NOT EXACT**"


def test_terminal_pieces():
    assert terminal.signed(None).plain == "—" and terminal.signed(math.nan).style == "dim"
    assert terminal.signed(0.5, 2).plain == "+0.50" and terminal.signed(0.5, 2).style == "green"
    assert terminal.signed(-2.0, 1, strong=1.0).style == "bold red"
    assert terminal.unsigned(3.0, ".1f").plain == "3.0" and terminal.bar(-1.0, 1.0).plain.startswith("█" * 16)
    table = terminal.table("name", "value", title="T")
    table.add_row("a", "1")
    assert terminal.renderables_to_text([terminal.captioned("Title", "detail", table)], width=40).startswith(
        "Title\ndetail\n"
    )


RESULTS = (
    "tokenlens.attribution.result",
    "tokenlens.attribution.sequence_result",
    "tokenlens.causal.grid_results",
    "tokenlens.causal.results",
    "tokenlens.diff.result",
    "tokenlens.sweep.results",
    "tokenlens.sweep.recommend",
)
"""The result modules: the reports read results from these, and import no module that runs a model."""

BELOW = ("tokenlens.io", "tokenlens.version")
"""Foundations any report module may import besides the result modules (the kit: the version only)."""


def test_imports_point_downwards():
    """The kit imports nothing else from the reports; the reports import result modules (never a model's
    engine) and never the command line."""
    report = Path(html.__file__).parent.parent
    for module in report.rglob("*.py"):
        lines = [line.strip() for line in module.read_text().splitlines()]
        names = [line.split()[1] for line in lines if line.startswith(("from tokenlens", "import tokenlens"))]
        outside = [n for n in names if not n.startswith("tokenlens.report")]
        assert all(n in (*RESULTS, *BELOW) for n in outside), (module.name, outside)
        if module.parent.name == "kit":
            assert all(n.startswith(("tokenlens.version", "tokenlens.report.kit")) for n in names), module

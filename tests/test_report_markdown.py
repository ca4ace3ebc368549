"""The Markdown report: sections, numbers against the model's forward pass, tokens with ``|`` and backticks
kept inside their table cells, untrusted text kept literal, and figure links. Rendered with markdown-it-py
(a CommonMark parser with GFM tables, installed with rich) as an independent reader."""

from __future__ import annotations

import math
from html.parser import HTMLParser

import pytest
import torch
from markdown_it import MarkdownIt

import tokenlens
import tokenlens.causal as causal
from tokenlens.attribution.direct import attribute
from tokenlens.attribution.lens import logit_lens
from tokenlens.report.kit.markdown import code, token
from tokenlens.report.markdown import render_markdown

PROMPT = "The capital of France is"
TRICKY = "a|b c `d` e ```f | g x || y"
HOSTILE = '<script>alert("x")</script> & "quotes" \u202e RTL \u200b zero-width $x$'


class Page(HTMLParser):
    """The rendered HTML as tables (rows of ``(cell text, code texts)``), code spans, images and text."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[tuple[str, list[str]]]]] = []
        self.codes: list[str] = []
        self.images: list[dict] = []
        self.outside_code: list[str] = []
        self.tags: list[str] = []
        self._code: str | None = None
        self._cell: list | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ["", []]
        elif tag == "code":
            self._code = ""
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append((self._cell[0].strip(), self._cell[1]))
            self._cell = None
        elif tag == "code":
            self.codes.append(self._code)
            if self._cell is not None:
                self._cell[1].append(self._code)
            self._code = None

    def handle_data(self, data):
        if self._code is not None:
            self._code += data
        else:
            self.outside_code.append(data)
        if self._cell is not None:
            self._cell[0] += data


def read(markdown: str) -> Page:
    return Page(MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown))


def sections(markdown: str) -> dict[str, str]:
    """``{## heading: its Markdown}`` in order."""
    out = {}
    for chunk in markdown.split("\n## ")[1:]:
        title, _, body = chunk.partition("\n")
        out[title] = body
    return out


@pytest.fixture(scope="module")
def loaded(tiny_loaded):
    return tiny_loaded("qwen3-tied-gqa")


@pytest.fixture(scope="module")
def full(loaded):
    result = attribute(
        loaded, PROMPT, target=" Paris", vs=" London", heads=True, neurons=2, sources=["L1", "L2.H0"]
    )
    lens = logit_lens(loaded, PROMPT, target_id=result.target.id, k=3)
    found = [
        ("ablation", causal.ablation(loaded, PROMPT, "L1.H0,L2.mlp")),
        ("patching", causal.patching(loaded, PROMPT, "The capital of Italy is")),
        ("estimates", causal.estimate_check(loaded, PROMPT, top_k=3)),
        ("rope", causal.rope_ablation(loaded, PROMPT)),
        ("norms", causal.norm_ablation(loaded, PROMPT, layers=False)),
    ]
    paths = {
        "waterfall": "report files/water fall.png",
        "sources-L2.H0": "report_files/sources-L2.H0.png",
        "ablation": "report_files/ablation.png",
        "extra": "report_files/extra.png",
    }
    text = render_markdown(result, lens=lens, sections=found, image_paths=paths, settings={"command": "tl x"})
    return dict(result=result, lens=lens, sections=dict(found), text=text)


def test_sections_in_order(full):
    assert full["text"].startswith("# tokenlens report: `' Paris'` vs `' London'`\n")
    assert list(sections(full["text"])) == [
        "Prediction", "Top alternatives", "Direct logit attribution", "Attention heads", "Top MLP neurons",
        "Source positions", "Logit lens", "Ablation (measured)", "Activation patching (measured)",
        "Attribution patching (estimates)", "RoPE ablation (measured)", "Norm-scale ablation (measured)",
        "Figures", "Settings", "How to read this report",
    ]  # fmt: skip
    parts = sections(full["text"])
    for title in ("Ablation (measured)", "Activation patching (measured)", "RoPE ablation (measured)"):
        assert "**MEASURED**" in parts[title] and "ESTIMATE" not in parts[title]
    assert "**ESTIMATES**" in parts["Attribution patching (estimates)"]
    settings = parts["Settings"]
    assert f"`{tokenlens.__version__}`" in settings and "- **command**: `tl x`" in settings


def test_numbers_match_the_model(full, loaded):
    result = full["result"]
    ids = loaded.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = loaded.model(ids).logits[0, -1].double()
    paris, london = loaded.tokenizer.encode(" Paris")[0], loaded.tokenizer.encode(" London")[0]
    parts = sections(full["text"])
    (table,) = read(parts["Direct logit attribution"]).tables
    names = [row[0][0] for row in table[1:]]
    shown = [float(row[1][0]) for row in table[1:]]
    assert names == list(result.decomposition.names)
    assert all(len(row) == 3 for row in table)
    assert math.fsum(shown) == pytest.approx(float(logits[paris] - logits[london]), abs=5e-5 * len(shown))
    assert "✓ exact" in parts["Direct logit attribution"]
    assert f"= {float(logits[paris] - logits[london]):+.4f}" in parts["Prediction"]
    (top,) = read(parts["Top alternatives"]).tables
    probs = logits.softmax(-1)
    for row in top[1:]:
        assert float(row[4][0]) == pytest.approx(float(probs[int(row[2][0])]), rel=5e-3)
    (heads,) = read(parts["Attention heads"]).tables
    for i, row in enumerate(heads[1:]):
        cells = [float(text) for text, _ in row[1:-2]]
        assert cells == pytest.approx(result.heads.contributions[i].tolist(), abs=5e-4)
        assert math.fsum(cells) == pytest.approx(shown[names.index(f"L{i}.attn")], abs=3e-3)
    ablation = read(parts["Ablation (measured)"]).tables[0]
    assert [(r[0][0], float(r[2][0])) for r in ablation[1:]] == [
        (e.name, pytest.approx(e.delta, abs=5e-5)) for e in full["sections"]["ablation"].each
    ] + [("together", pytest.approx(full["sections"]["ablation"].together.delta, abs=5e-5))]
    estimates = read(parts["Attribution patching (estimates)"]).tables[0]
    for row, checked in zip(estimates[1:], full["sections"]["estimates"].rows, strict=True):
        assert (float(row[1][0]), float(row[2][0])) == pytest.approx(
            (checked.estimate, checked.exact), abs=5e-5
        )


def test_tokens_with_pipes_and_backticks_stay_in_their_cells(loaded):
    result = attribute(loaded, TRICKY, target=" `", sources=["L1"], top_k=5)
    reprs = [repr(t) for t in result.tokens]
    assert any("|" in t for t in result.tokens) and any("```" in t for t in result.tokens)
    text = render_markdown(result)
    page = read(text)
    assert page.codes[0] == repr(" `")  # the title's target
    source_table = next(t for t in page.tables if t[0][0][0] == "source")
    assert all(len(row) == 4 for row in source_table)
    assert [row[1][1] for row in source_table[1 : len(reprs) + 1]] == [[r] for r in reprs]
    prediction = read(sections(text)["Prediction"])
    assert reprs[0] in prediction.codes and prediction.codes.index(reprs[0]) + len(reprs) <= len(
        prediction.codes
    )
    start = prediction.codes.index(reprs[0])
    assert prediction.codes[start : start + len(reprs)] == reprs
    top = next(t for t in page.tables if t[0][0][0] == "rank")
    assert all(len(row) == 5 for row in top) and len(top) == 6


@pytest.mark.parametrize("text", ["`", "a``b", "x|y", " ```", "a\\|b", "|`|", "a\\\\|b", "`` |", "\\"])
def test_a_token_survives_a_table_cell(text):
    page = read(f"| a | b |\n|---|---|\n| {token(text, table=True)} | z |\n")
    assert page.tables[0][1] == [(repr(text), [repr(text)]), ("z", [])]
    assert read(f"x {token(text)} y\n").codes == [repr(text)]


@pytest.mark.parametrize("text", ["`a", "a`", " a ", "``", " `` "])
def test_a_code_span_keeps_its_edges(text):
    assert read(f"x {code(text)} y\n").codes == [text]


def test_hostile_prompt_stays_literal(loaded):
    result = attribute(loaded, HOSTILE, sources=["L0.H1"])
    text = render_markdown(result, settings={"command": HOSTILE})
    assert "\u202e" not in text and "\u200b" not in text
    page = read(text)
    assert "script" not in page.tags
    assert repr(HOSTILE) in page.codes
    assert not any("$x$" in chunk or "<script" in chunk for chunk in page.outside_code)


def test_figures_are_linked_in_their_sections(full):
    parts = sections(full["text"])
    (waterfall,) = read(parts["Direct logit attribution"]).images
    assert waterfall["src"] == "report%20files/water%20fall.png" and "Waterfall" in waterfall["alt"]
    source = parts["Source positions"]
    assert source.index("(report_files/sources-L2.H0.png)") > source.index("### Sources through head L2.H0")
    assert read(parts["Ablation (measured)"]).images[0]["src"] == "report_files/ablation.png"
    assert [i["src"] for i in read(parts["Figures"]).images] == ["report_files/extra.png"]
    assert "Figures" not in sections(render_markdown(full["result"]))


def test_a_lens_is_a_section_and_unknown_sections_raise(full):
    result, lens = full["result"], full["lens"]
    assert render_markdown(result, sections=[("lens", lens)]) == render_markdown(result, lens=lens)
    with pytest.raises(ValueError, match="unknown report section 'bogus'"):
        render_markdown(full["result"], sections=[("bogus", lens)])
    with pytest.raises(ValueError, match="report section 'lens' needs a LogitLens"):
        render_markdown(full["result"], sections=[("lens", full["sections"]["ablation"])])

"""Renderers of a base-vs-tuned diff (JSON, terminal, Markdown, HTML, figures), on DiffReports built by hand.

These test the rendering, not the engine: every expected number below is written out by hand, so a renderer
that drops, reorders, rounds away or invents a number fails. Three probes: an intended probe whose top-1
flipped and that passes, a control with hostile token text that fails, and an unjudged chat probe without
measured causal effects (one of them NaN) but with a flip split.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch
from markdown_it import MarkdownIt
from rich.console import Console

from tokenlens.attribution.result import TokenScore as TS
from tokenlens.diff.result import (
    READOUT_TERMS,
    AggregateRow,
    ComponentEffect,
    DiffReport,
    Probe,
    ProbeDiff,
    Telescope,
    Verdict,
    WeightChange,
    WeightSummary,
    sorted_effects,
)
from tokenlens.report.diff_html import render_diff_html
from tokenlens.report.diff_json import diff_to_dict
from tokenlens.report.diff_layout import layer_ranges, plan_diff, probe_plan, verdict_summary
from tokenlens.report.diff_markdown import render_diff_markdown
from tokenlens.report.diff_terminal import render_diff
from tokenlens.report.plots import figure_png
from tokenlens.report.plots.diff import delta_heatmap, diff_figures, diff_waterfall, topk_bars

NAMES = ("embed", "L0.attn", "L0.mlp", "L1.attn", "L1.mlp")
HOSTILE = "x <script>alert(1)</script> a|b `c` d\nnew"
PNG = b"\x89PNG\r\n\x1a\n"
CE = ComponentEffect


def telescope(target, contrast, direct, readout, base, tuned):
    return Telescope(target, contrast, NAMES, torch.tensor(direct), torch.tensor(readout), base, tuned)


def intended() -> ProbeDiff:
    """Top-1 flips from ' Paris' to the target ' Lyon'; every component measured; passes."""
    return ProbeDiff(
        probe=Probe("The capital of France is", target=" Lyon", expect="changed", group="edit", line=3),
        token_ids=(1, 2, 3, 4, 5),
        tokens=("The", " capital", " of", " France", " is"),
        position=4,
        base_top=(TS(10, " Paris", 5.0, 0.6), TS(11, " Lyon", 3.2, 0.1), TS(12, "|", 2.0, 0.05)),
        tuned_top=(TS(11, " Lyon", 6.0, 0.7), TS(10, " Paris", 4.5, 0.2), TS(13, "`", 1.0, 0.01)),
        kl=0.9,
        js=0.2,
        tracked=TS(11, " Lyon", 3.2, 0.1),
        tracked_tuned=TS(11, " Lyon", 6.0, 0.7),
        tracked_is_target=True,
        base_rank=2,
        tuned_rank=1,
        split=telescope(11, None, [0.1, 0.5, 1.5, -0.2, 0.6], [0.2, 0.0, 0.1, 0.0], 3.2, 6.0),
        flip_split=telescope(11, 10, [0.0, 0.8, 2.0, -0.3, 0.5], [0.1, 0.0, 0.2, 0.0], -1.8, 1.5),
        components=(  # not sorted: the renderers must sort by |causal|
            CE("embed", 0.1, causal=0.05, causal_kl=0.001, causal_reverse=-0.04, estimate=0.06),
            CE("L0.attn", 0.5, causal=0.4, causal_kl=0.01, causal_reverse=-0.38, estimate=0.45),
            CE("L0.mlp", 1.5, causal=1.9, causal_kl=0.2, causal_reverse=-1.7, estimate=1.6),
            CE("L1.attn", -0.2, causal=-2.5, causal_kl=0.3, causal_reverse=2.4, estimate=-2.2),
            CE("L1.mlp", 0.6, causal=0.7, causal_kl=0.05, causal_reverse=-0.65, estimate=0.75),
        ),
        heads=(CE("L1.H1", 0.2, estimate=0.25), CE("L1.H0", -0.1, causal=-0.3)),
        neurons=(CE("L0.N7", 0.9),),
        verdict=Verdict("changed", True, "p(' Lyon') gained +0.6000 ≥ 0.1"),
    )


def control() -> ProbeDiff:
    """A control whose distribution moved too much; hostile token text everywhere."""
    return ProbeDiff(
        probe=Probe(HOSTILE, expect="unchanged", group="control", line=7),
        token_ids=(20, 21, 22, 23, 24, 25, 26),
        tokens=("x", " <script>", "alert", "|", "`", "\n", "</script>"),
        position=6,
        base_top=(TS(30, "<script>", 4.0, 0.5), TS(31, "|", 3.0, 0.2)),
        tuned_top=(TS(30, "<script>", 3.9, 0.4), TS(32, "`", 3.5, 0.3)),
        kl=0.3,
        js=0.07,
        tracked=TS(30, "<script>", 4.0, 0.5),
        tracked_tuned=TS(30, "<script>", 3.9, 0.4),
        tracked_is_target=False,
        base_rank=1,
        tuned_rank=1,
        split=telescope(30, None, [0.0, -0.05, 0.02, -0.1, 0.03], [0.0, 0.0, 0.0, 0.0], 4.0, 3.9),
        flip_split=None,
        components=(
            CE("embed", 0.0),
            CE("L0.attn", -0.05, estimate=-0.06),
            CE("L0.mlp", 0.02, causal=0.01, causal_kl=0.002, causal_reverse=-0.01, estimate=0.015),
            CE("L1.attn", -0.1, causal=-0.08, causal_kl=0.03, causal_reverse=0.09, estimate=-0.07),
            CE("L1.mlp", 0.03, estimate=0.04),
        ),
        heads=(),
        neurons=(),
        verdict=Verdict("unchanged", False, "KL 0.3000 > 0.05 | `bad` <b>x</b>"),
        notes=("a note with <b>html</b> | pipe",),
    )


def unjudged() -> ProbeDiff:
    """A chat probe, not judged, top-1 flipped, no causal value measured (one is NaN)."""
    messages = ({"role": "system", "content": "be brief"}, {"role": "user", "content": "Say `hi` | now"})
    return ProbeDiff(
        probe=Probe(None, messages=messages, line=9),
        token_ids=tuple(range(40, 50)),
        tokens=("<|im_start|>", "user", "\n", "Say", " `", "hi", "`", " |", " now", "<|im_end|>"),
        position=9,
        base_top=(TS(50, " yes", 2.0, 0.4), TS(51, " no", 1.5, 0.3)),
        tuned_top=(TS(51, " no", 2.5, 0.5), TS(50, " yes", 1.9, 0.35)),
        kl=0.12,
        js=0.03,
        tracked=TS(51, " no", 1.5, 0.3),
        tracked_tuned=TS(51, " no", 2.5, 0.5),
        tracked_is_target=False,
        base_rank=2,
        tuned_rank=1,
        split=telescope(51, None, [0.1, 0.2, 0.3, 0.2, 0.1], [0.05, 0.05, 0.0, 0.0], 1.5, 2.5),
        flip_split=telescope(51, 50, [0.2, 0.2, 0.3, 0.2, 0.1], [0.1, 0.0, 0.0, 0.0], -0.5, 0.6),
        components=(
            CE("embed", 0.1),
            CE("L0.attn", 0.2),
            CE("L0.mlp", 0.3),
            CE("L1.attn", 0.2),
            CE("L1.mlp", 0.1, causal=math.nan),
        ),
        heads=(),
        neurons=(),
        verdict=Verdict(None, None, "not judged"),
        notes=("virtual tokens: none",),
    )


def build(*probes: ProbeDiff) -> DiffReport:
    weights = WeightSummary(
        changes=(
            WeightChange("model.layers.0.self_attn.o_proj.weight", "changed", 0, 0.5, 0.01, 1024),
            WeightChange("model.layers.1.mlp.down_proj.bias", "added", 1, 0.2, None, 32),
            WeightChange("model.layers.3.mlp.up_proj.lora|x", "lora", 3, 0.1, 0.001, 2048),
            WeightChange("lm_head.weight", "changed", None, 1.5, 0.002, 4864),
        ),
        unchanged=20,
        note="two models compared",
    )
    rows = (AggregateRow("L1.attn", 1.29, 0.15, 2, 3), AggregateRow("embed", math.nan, 0.0667, 0, 3))
    groups = {"edit": rows[:1], "control": rows[1:], "": rows}
    return DiffReport(
        "base-model", "tuned <b>model</b>", "two models", probes, weights, rows, groups, 0.1, 0.05
    )


@pytest.fixture(scope="module")
def report() -> DiffReport:
    return build(intended(), control(), unjudged())


# --- shared helpers -----------------------------------------------------------------------------------------


def test_helpers():
    assert layer_ranges((3, 0, 1, 7, 8, 1)) == "0–1, 3, 7–8" and layer_ranges(()) == "none"
    assert [e.name for e in sorted_effects(intended().components)] == [
        "L1.attn",
        "L0.mlp",
        "L1.mlp",
        "L0.attn",
        "embed",
    ]
    assert verdict_summary(build(intended(), unjudged())) == "PASS 1/1 judged (1 not judged)"
    assert verdict_summary(build(intended(), control(), unjudged())) == "FAIL: 1 of 2 judged (1 not judged)"
    assert verdict_summary(build(unjudged())).startswith("not judged")


def test_an_empty_report_renders_everywhere():
    empty = build()
    assert diff_to_dict(empty)["probes"] == [] and diff_figures(empty) == {}
    assert "not judged" in terminal(empty) and "## Probes" in render_diff_markdown(empty)
    assert 'id="probes"' in render_diff_html(empty)


def test_every_format_follows_the_plans():
    drilled = dataclasses.replace(
        intended(), experts=(CE("L1.E3", 0.4, causal=-0.9),), virtual=(CE("L0.virtual", 0.3),)
    )
    keys = ["split", "flip", "components", "heads", "neurons", "experts", "virtual"]
    assert [part.key for part in probe_plan(drilled)] == keys
    assert [part.key for part in probe_plan(control())] == ["split", "components"]
    titles = ["Components", "Heads", "Neurons", "Experts", "Attention to the virtual tokens"]
    text = terminal(build(drilled))
    shown = ["Top components of", "Top heads", "Top neurons", "Top experts", f"{titles[-1]} (direct)"]
    assert [text.index(t) for t in ["split of", "flip split of", *shown]] == sorted(
        text.index(t) for t in ["split of", "flip split of", *shown]
    )
    markdown = render_diff_markdown(build(drilled))
    bold = re.findall(r"\*\*(Components|Heads|Neurons|Experts|Attention to the virtual tokens)\*\*", markdown)
    assert bold == titles and markdown.index("- **logit[") < markdown.index("- **flip logit[")
    page = render_diff_html(build(drilled))
    headings = re.findall(r"<h3>([^<]*)</h3>", page)
    assert headings[0] == "Each component's effect on each probe's tracked-token logit"  # the heatmap table
    assert headings[1:6] == [*titles[:-1], f"{titles[-1]} (direct)"]
    assert page.index('id="probe-3-split"') < page.index('id="probe-3-flip"') < page.index("<h3>Components")
    report = build(intended(), control())
    plan, homes = plan_diff(report, ["heatmap", "topk-7", "topk-1", "extra"], probes=[1])
    assert [s.anchor for s in plan] == [
        "summary", "metrics", "probes", "probe-7", "weights", "aggregate", "figures", "how-to-read",
    ]  # fmt: skip
    assert homes == {"probes": ["heatmap"], "probe-7": ["topk-7"], "figures": ["topk-1", "extra"]}
    assert [s.anchor for s in plan_diff(report)[0]].count("figures") == 0


# --- JSON ---------------------------------------------------------------------------------------------------


def test_moe_experts_are_shown_in_every_format():
    experts = (CE("L1.E0", 0.01, causal=0.02), CE("L1.E3", 0.4, causal=-0.9))
    moe = dataclasses.replace(intended(), experts=experts)
    data = diff_to_dict(build(moe))
    assert [e["name"] for e in data["probes"][0]["experts"]] == ["L1.E3", "L1.E0"]  # by |causal|
    assert data["probes"][0]["experts"][0]["causal"] == -0.9
    assert "Top experts" in terminal(build(moe)) and "L1.E3" in terminal(build(moe))
    assert "**Experts**" in render_diff_markdown(build(moe)) and "L1.E3" in render_diff_markdown(build(moe))
    assert ">Experts" in render_diff_html(build(moe)) and "L1.E3" in render_diff_html(build(moe))
    assert "Top experts" not in terminal(build(intended()))  # dense models: no section


def test_json_round_trips_and_carries_every_number(report):
    data = diff_to_dict(report)
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["tool"] == "tokenlens" and data["kind"] == "diff"
    assert data["thresholds"] == {"min_gain": 0.1, "max_kl": 0.05}
    assert (data["passed"], data["judged"], data["failures"]) == (False, 2, [7])
    assert data["weights"]["layers"] == [0, 1, 3] and data["weights"]["changes"][1]["relative"] is None
    assert data["aggregate"][1] == {
        "name": "embed",
        "mean_abs_causal": None,
        "mean_abs_direct": 0.0667,
        "measured": 0,
        "probes": 3,
    }
    assert list(data["groups"]) == ["edit", "control", ""]

    p0, p1, p2 = data["probes"]
    assert p0["tracked"] == {
        "id": 11,
        "token": " Lyon",
        "base_logit": 3.2,
        "tuned_logit": 6.0,
        "base_prob": 0.1,
        "tuned_prob": 0.7,
        "prob_gain": pytest.approx(0.6),
        "base_rank": 2,
        "tuned_rank": 1,
        "is_target": True,
    }
    assert p0["base_top"][2] == {"id": 12, "token": "|", "logit": 2.0, "prob": 0.05}
    assert (p0["kl"], p0["js"], p0["flipped"], p0["position"]) == (0.9, 0.2, True, 4)
    assert p0["delta_logit"] == pytest.approx(2.8) and abs(p0["split_error"]) < 1e-6
    assert p0["readout"] == pytest.approx(dict(zip(READOUT_TERMS, [0.2, 0.0, 0.1, 0.0])))
    assert p0["split"]["terms"]["L0.mlp"] == pytest.approx(1.5)
    flip = p0["flip_split"]
    assert (flip["target_id"], flip["contrast_id"]) == (11, 10) and flip["observed"] == pytest.approx(3.3)
    assert flip["terms"]["L0.mlp"] == pytest.approx(2.0) and abs(flip["error"]) < 1e-6
    assert [c["name"] for c in p0["components"]] == ["L1.attn", "L0.mlp", "L1.mlp", "L0.attn", "embed"]
    assert p0["components"][0] == {
        "name": "L1.attn",
        "direct": -0.2,
        "causal": -2.5,
        "causal_kl": 0.3,
        "causal_reverse": 2.4,
        "causal_estimate": -2.2,
    }
    assert [h["name"] for h in p0["heads"]] == ["L1.H0", "L1.H1"]  # measured before estimated
    assert p0["neurons"] == [
        {"name": "L0.N7", "direct": 0.9, "causal": None, "causal_kl": None, "causal_reverse": None,
         "causal_estimate": None}
    ]  # fmt: skip
    assert p0["verdict"] == {"expect": "changed", "passed": True, "reason": "p(' Lyon') gained +0.6000 ≥ 0.1"}

    # measured by |causal| first, then estimated by |estimate|, then by |direct|
    assert [c["name"] for c in p1["components"]] == ["L1.attn", "L0.mlp", "L0.attn", "L1.mlp", "embed"]
    assert p1["flip_split"] is None and p1["tokens"][5] == {"id": 25, "token": "\n"}
    assert p1["prompt"] == HOSTILE and p1["notes"] == ["a note with <b>html</b> | pipe"]

    assert p2["prompt"] is None and p2["messages"][1]["content"] == "Say `hi` | now"
    assert p2["verdict"]["passed"] is None and p2["expect"] is None
    assert all(c["causal"] is None and c["causal_estimate"] is None for c in p2["components"])  # NaN -> null
    assert [c["name"] for c in p2["components"]] == ["L0.mlp", "L0.attn", "L1.attn", "embed", "L1.mlp"]
    assert p2["flip_split"]["observed"] == pytest.approx(1.1)


# --- terminal -----------------------------------------------------------------------------------------------


def terminal(report: DiffReport, styles: bool = False) -> str:
    console = Console(
        record=True, width=140, file=io.StringIO(), force_terminal=styles, color_system="standard"
    )
    console.print(render_diff(report))
    return console.export_text(styles=styles)


def test_terminal_shows_probes_verdicts_and_tokens(report):
    text = terminal(report)
    assert "base-model → tuned <b>model</b>" in text and "FAIL: 1 of 2 judged (1 not judged)" in text
    for p in report.probes:  # numbered by their probe file's line, as check names them
        assert f"Probe on line {p.probe.line}: {p.probe.label}" in text
    assert "The capital of France is" in text.split("Probe on line 3:")[0]  # in the probe table
    for token in (" Paris", " Lyon", "<script>", "|", "`", " no", " yes"):
        assert repr(token) in text
    assert "⇄" in text and "layers touched: 0–1, 3" in text and "ESTIMATE" in text
    table = text.split("Probe on line 3:")[0]
    assert re.search(r"^ *line +probe", table, re.M) and re.search(r"^ +7 +x <script>", table, re.M)
    assert re.search(r"\bpass\b", table) and "FAIL" in table and "—" in table
    assert "0.100→0.700" in table and "0.900" in table
    # probe 0's components in |causal| order, all five shown
    details = text.split("Probe on line 3:")[1].split("Probe on line 7:")[0]
    order = [details.index(f"\n  {name} ") for name in ("L1.attn", "L0.mlp", "L1.mlp", "L0.attn", "embed")]
    assert order == sorted(order)
    assert "Group 'edit'" in text and "1/3" not in text and "2/3" in text


def test_terminal_colours_and_which_probes_get_details(report):
    coloured = terminal(report, styles=True)
    assert re.search(r"\x1b\[31m *-2\.5000", coloured) and re.search(r"\x1b\[32m *\+1\.9000", coloured)
    quiet = dataclasses.replace(intended(), tuned_top=intended().base_top, flip_split=None)
    many = build(control(), unjudged(), *[quiet] * 5)
    text = terminal(many)
    assert re.findall(r"Probe on line (\d+):", text) == ["7", "9"]  # failing and flipped only
    assert "Details for the 2 failing or flipped probes" in text


# --- Markdown -----------------------------------------------------------------------------------------------


class Cells(HTMLParser):
    """Rendered Markdown: tables as rows of (text outside code, [code texts]), tags, image sources."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tables, self.tags, self.images, self.cell, self.code = [], [], [], None, None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ["", []]
        elif tag == "code":
            self.code = ""
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append((self.cell[0].strip(), self.cell[1]))
            self.cell = None
        elif tag == "code":
            if self.cell is not None:
                self.cell[1].append(self.code)
            self.code = None

    def handle_data(self, data):
        if self.code is not None:
            self.code += data
        elif self.cell is not None:
            self.cell[0] += data


def render(markdown: str) -> Cells:
    return Cells(MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown))


def json_numbers(data) -> list[float]:
    if isinstance(data, dict):
        return [x for v in data.values() for x in json_numbers(v)]
    if isinstance(data, list):
        return [x for v in data for x in json_numbers(v)]
    return [float(data)] if isinstance(data, int | float) and not isinstance(data, bool) else []


def test_markdown_tables_keep_their_columns_and_escape_tokens(report):
    text = render_diff_markdown(report)
    for block in re.findall(r"(?:^\|.*\|$\n?)+", text, flags=re.M):
        lines = block.strip().split("\n")
        pipes = [len(re.findall(r"(?<!\\)(?:\\\\)*\|", line)) for line in lines]
        assert len(set(pipes)) == 1, lines  # every row splits into the header's columns
    page = render(text)
    assert "script" not in page.tags and "b" not in page.tags  # hostile text never becomes HTML
    probes = next(t for t in page.tables if t[0][0][0] == "line")
    assert len(probes) == 4 and all(len(row) == 12 for row in probes)
    assert probes[2][3][1] == [repr("<script>")] and probes[2][11][0] == "❌ FAIL"
    assert probes[1][4][1] == [repr(" Lyon")] and probes[3][2][0] == "—"
    assert [cell[0] for cell in probes[1][6:11]] == [
        "0.9000",
        "0.2000",
        "(target)",
        "0.1000 → 0.7000",
        "+0.6000",
    ]
    tops = [t for t in page.tables if t[0][0][0] == "rank"]
    assert [row[1][1] for row in tops[0][1:]] == [[repr(" Paris")], [repr(" Lyon")], [repr("|")]]
    assert tops[1][2][3][1] == [repr("`")]
    components = [t for t in page.tables if t[0][0][0] == "component" and "direct" in t[0][1][0]]
    assert [row[0][0] for row in components[0][1:]] == ["L1.attn", "L0.mlp", "L1.mlp", "L0.attn", "embed"]
    assert components[-1][-1][2][0] == "—"  # probe 2's NaN causal
    assert any("ESTIMATE" in cell[0] for cell in components[0][0])


def test_every_number_in_a_markdown_table_is_in_the_json(report):
    numbers = json_numbers(diff_to_dict(report))
    page = render(render_diff_markdown(report))
    checked = 0
    for table in page.tables:
        for row in table[1:]:
            for text, _ in row[1:]:
                for found in re.findall(r"[+-]?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?", text):
                    value = float(found.replace(",", ""))
                    places = len(found.split(".")[1].split("e")[0]) if "." in found else 0
                    assert any(abs(value - n) <= 0.51 * 10**-places for n in numbers), (found, row)
                    checked += 1
    assert checked > 100


def test_markdown_places_figures_and_anchors(report):
    figures = {"heatmap": "figs/heat map.png", "waterfall-9": "figs/w2.png", "other": "o.png"}
    text = render_diff_markdown(report, figures=figures)
    sections = {m[1]: m[2] for m in re.finditer(r'<a id="([\w-]+)"></a>\n(.*?)(?=<a id=|\Z)', text, re.S)}
    assert list(sections) == [
        "summary", "metrics", "probes", "probe-3", "probe-7", "probe-9", "weights", "aggregate", "figures",
        "how-to-read",
    ]  # fmt: skip
    assert "figs/heat%20map.png" in sections["probes"] and "figs/w2.png" in sections["probe-9"]
    assert "o.png" in sections["figures"] and "[line 7](#probe-7)" in sections["summary"]
    assert "Layers touched: **0–1, 3**" in sections["weights"]
    assert f"``{HOSTILE!r}``" in sections["probe-7"]  # the raw prompt, newline visible


# --- HTML ---------------------------------------------------------------------------------------------------


class Dom(HTMLParser):
    """Ids, tags, ``(data-name, data-value)`` cells per section id, and image sources."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.ids, self.tags, self.images, self.values, self.section = [], [], [], {}, None
        self.text: dict[str, str] = {}
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "section":
            self.section = attrs["id"]
        if tag == "img":
            self.images.append((self.section, attrs["src"]))
        if "data-value" in attrs:
            self.values.setdefault(self.section, []).append(attrs["data-value"])

    def handle_data(self, data):
        if self.section is not None:
            self.text[self.section] = self.text.get(self.section, "") + data


def test_html_is_escaped_and_structured(report):
    images = {slug: figure_png(topk_bars(intended()), dpi=20) for slug in ("heatmap", "topk-7", "extra")}
    text = render_diff_html(report, images=images)
    assert text.startswith("<!DOCTYPE html>") and "<b>model" not in text
    assert text.lower().count("<script") == 2  # the explorer's JSON data and its script, nothing else
    assert "&lt;script&gt;" in text and "&lt;b&gt;model" in text and "Content-Security-Policy" in text
    dom = Dom(text)
    assert dom.tags.count("script") == 2 and "b" in dom.tags  # only the renderer's own <b>
    sections = [i for i in dom.ids if i in {"summary", "probes", "weights", "aggregate", "figures"}]
    assert sections == ["summary", "probes", "weights", "aggregate", "figures"]
    assert {"probe-3", "probe-7", "probe-9", "probe-3-flip", "how-to-read", "verdict"} <= set(dom.ids)
    assert [s for s, _ in dom.images] == ["probe-7", "figures"]  # the heatmap is a table, never a picture
    assert all(base64.b64decode(src.split(",", 1)[1]).startswith(PNG) for _, src in dom.images)
    assert "FAIL: 1 of 2 judged" in dom.text["summary"] and repr(HOSTILE) in dom.text["probe-7"]
    assert "system: 'be brief'" in dom.text["probe-9"]
    assert re.search(r'<tr data-name="probe-7" class="failed">.*?kind fail', text)
    # not measured: probe 2's 5 components × (causal, reverse, KL, estimate); probe 0's heads and neuron
    assert dom.values["probe-9"].count("null") == 20 and dom.values["probe-3"].count("null") == 3 + 3 + 4
    assert "2.4" in dom.values["probe-3"]  # causal_reverse of L1.attn
    with pytest.raises(ValueError, match="not PNG"):
        render_diff_html(report, images={"topk-3": b"GIF89a"})


def test_html_component_rows_carry_their_name_and_exact_direct_term(report):
    """Every row of a probe's components, heads and neurons tables names its component and carries its
    direct term (its part of the tracked value's change) exactly, as written in the fixtures above."""
    text = render_diff_html(report, figures=False, top=10)
    expected = {
        "probe-3": [
            ("L1.attn", -0.2), ("L0.mlp", 1.5), ("L1.mlp", 0.6), ("L0.attn", 0.5), ("embed", 0.1),
            ("L1.H0", -0.1), ("L1.H1", 0.2), ("L0.N7", 0.9),
        ],
        "probe-7": [
            ("L1.attn", -0.1), ("L0.mlp", 0.02), ("L0.attn", -0.05), ("L1.mlp", 0.03), ("embed", 0.0),
        ],
        "probe-9": [("L0.mlp", 0.3), ("L0.attn", 0.2), ("L1.attn", 0.2), ("embed", 0.1), ("L1.mlp", 0.1)],
    }  # fmt: skip
    for anchor, rows in expected.items():
        part = text.split(f'<section id="{anchor}">')[1].split("</section>")[0]
        found = re.findall(r'<tr data-name="([^"]+)" data-component="\1" data-value="([^"]+)">', part)
        assert found == [(name, repr(value)) for name, value in rows], anchor
    assert text.count('class="effects" data-part="heads" data-sides="change"') == 1
    missing = dataclasses.replace(intended(), components=(CE("L0.mlp", None, causal=0.3),))
    assert '<tr data-name="L0.mlp" data-component="L0.mlp" data-value="null">' in render_diff_html(
        build(missing), figures=False
    )


def test_html_draws_its_own_figures(report):
    dom = Dom(render_diff_html(report))
    slugs = [src for _, src in dom.images]
    assert len(slugs) == 3 + 2 + 3  # waterfalls, flip waterfalls, top-k (the heatmap is a table)
    assert all(base64.b64decode(src.split(",", 1)[1]).startswith(PNG) for src in slugs)
    assert not Dom(render_diff_html(report, figures=False)).images


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_chromium_renders_the_diff_page(report, tmp_path):
    page = tmp_path / "diff.html"
    page.write_text(render_diff_html(report, figures=False), encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path}/p"]
    done = subprocess.run(
        ["chromium", *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = Dom(done.stdout)
    assert dom.tags.count("script") == 2  # the explorer's data and script; the hostile text stays text
    assert {"summary", "probes", "probe-9", "weights", "aggregate"} <= set(dom.ids)
    assert (
        repr(HOSTILE) in dom.text["probe-7"]
        and "'x <script>alert(1)</script> a|b `c` d new'" in dom.text["probes"]
    )


# --- figures ------------------------------------------------------------------------------------------------


def test_waterfall_chains_from_base_to_tuned():
    p = intended()
    ax = diff_waterfall(p, index=0).axes[0]
    bars = ax.patches
    assert len(bars) == len(NAMES) + 4 + 2
    assert bars[0].get_height() == pytest.approx(3.2) and bars[-1].get_height() == pytest.approx(6.0)
    terms = [0.1, 0.5, 1.5, -0.2, 0.6, 0.2, 0.0, 0.1, 0.0]
    assert [b.get_height() for b in bars[1:-1]] == pytest.approx(terms)
    assert bars[-2].get_y() + bars[-2].get_height() == pytest.approx(6.0, abs=1e-6)  # chains to tuned
    assert [b.get_y() for b in bars[1:-1]] == pytest.approx([3.2 + sum(terms[:k]) for k in range(9)])
    flip = diff_waterfall(p, index=0, flip=True).axes[0].patches
    assert flip[0].get_height() == pytest.approx(-1.8) and flip[-1].get_height() == pytest.approx(1.5)
    assert "' Lyon'" in diff_waterfall(p).axes[0].get_title(loc="left")
    with pytest.raises(ValueError, match="did not change"):
        diff_waterfall(control(), flip=True)


def test_heatmap_shows_causal_where_measured_else_direct(report):
    heat = delta_heatmap(report)
    ax = heat.axes[0]
    grid = torch.tensor(ax.images[0].get_array().filled(math.nan), dtype=torch.float64)
    assert grid.shape == (3, len(NAMES)) and "MEASURED" in heat.get_suptitle()
    assert [t.get_text() for t in ax.get_xticklabels()] == list(NAMES)
    assert grid[0].tolist() == pytest.approx([0.05, 0.4, 1.9, -2.5, 0.7])
    assert grid[1, 2] == pytest.approx(0.01) and math.isnan(grid[1, 0]) and torch.isnan(grid[2]).all()
    heat = delta_heatmap(report, kind="direct")
    direct = torch.tensor(heat.axes[0].images[0].get_array(), dtype=torch.float64)
    assert direct[2].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.2, 0.1]) and "direct" in heat.get_suptitle()
    assert "direct terms" in delta_heatmap(build(unjudged())).get_suptitle()  # nothing measured
    with pytest.raises(ValueError):
        delta_heatmap(report, kind="causl")


def test_topk_bars_and_figure_set(report):
    base, tuned = topk_bars(intended()).axes[:2]
    assert [b.get_width() for b in base.patches] == pytest.approx([0.6, 0.1, 0.05])
    assert [b.get_width() for b in tuned.patches] == pytest.approx([0.7, 0.2, 0.01])
    assert [t.get_text() for t in tuned.get_yticklabels()] == ["◆ ' Lyon'", "' Paris'", "'`'"]
    figures = diff_figures(report, max_probes=1)  # the intended probe (apart), the failing one before flipped
    assert list(figures) == ["heatmap", "waterfall-3", "flip-3", "topk-3", "waterfall-7", "topk-7"]
    assert list(diff_figures(report, max_probes=0, max_intended=0)) == ["heatmap"]
    assert "heatmap" not in diff_figures(report, heatmap=False)


def test_command_line_prompts_are_numbered_from_1_in_every_format():
    """Without a probe file, a probe's number is its place among the prompts, counted from 1, everywhere."""
    prompts = [
        dataclasses.replace(p, probe=dataclasses.replace(p.probe, line=None)) for p in (intended(), control())
    ]
    report = build(*prompts)
    assert [s.anchor for s in plan_diff(report)[0]][3:5] == ["probe-1", "probe-2"]
    data = diff_to_dict(report)
    assert [p["number"] for p in data["probes"]] == [1, 2] and data["failures"] == [2]
    text = terminal(report)
    assert "Prompt 1: The capital" in text and "Prompt 2: x <script>" in text
    assert re.search(r"^ +# +probe", text, re.M) and re.search(r"^ +2 +x <script>", text, re.M)
    markdown = render_diff_markdown(report)
    assert "[prompt 2](#probe-2)" in markdown and "| [1](#probe-1) |" in markdown
    assert '<a href="#probe-2">prompt 2</a>' in render_diff_html(report, figures=False)
    assert list(diff_figures(report, max_probes=1, max_intended=0)) == ["heatmap", "waterfall-2", "topk-2"]


# --- the heatmap as a table, figures for intended probes, colours and ranks in words (issue 19.7) ---------


class HeatTable(HTMLParser):
    """The ``heatmap`` table: its header texts and, per row, its data-name, text and cells
    ``(data-name, data-value, style)``."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.inside, self.head, self.rows, self.cell = False, [], [], None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id") == "heatmap":
            self.inside = True
        if not self.inside:
            return
        if tag == "th":
            self.head.append("")
            self.cell = "th"
        elif tag == "tr" and "data-name" in attrs:
            self.rows.append({"name": attrs["data-name"], "text": "", "cells": []})
        elif tag == "td" and "data-value" in attrs:
            self.rows[-1]["cells"].append(
                (attrs.get("data-name"), attrs["data-value"], attrs.get("style", ""))
            )
        elif tag == "td":
            self.cell = "label"

    def handle_endtag(self, tag):
        if tag == "div" and self.inside and self.rows and not self.cell:
            self.inside = False
        if tag in ("th", "td"):
            self.cell = None

    def handle_data(self, data):
        if self.inside and self.cell == "th":
            self.head[-1] += data
        elif self.inside and self.cell == "label":
            self.rows[-1]["text"] += data


MEASURED = {  # each probe's causal effects as written in the fixtures above (None: not measured)
    "probe-3": [0.05, 0.4, 1.9, -2.5, 0.7],
    "probe-7": [None, None, 0.01, -0.08, None],
    "probe-9": [None] * 5,
}


def test_html_heatmap_is_a_table_of_the_measured_effects(report):
    page = render_diff_html(report, figures=False)
    table = HeatTable(page)
    assert table.head[1:] == list(NAMES) and table.head[0] == "line probe"
    assert [r["name"] for r in table.rows] == ["probe-3", "probe-7", "probe-9"]
    for row in table.rows:
        assert [c[0] for c in row["cells"]] == list(NAMES)
        values = [None if v == "null" else float(v) for _, v, _ in row["cells"]]
        assert values == pytest.approx(MEASURED[row["name"]])
        for _, value, style in row["cells"]:
            if value == "null":
                assert style == ""
                continue
            value = float(value)
            rgb, alpha = re.fullmatch(r"background-color:rgba\((\d+,\d+,\d+),([\d.]+)\)", style).groups()
            assert rgb == ("46,158,79" if value > 0 else "214,69,65")  # green up, red down
            assert float(alpha) == pytest.approx(0.7 * abs(value) / 2.5, abs=0.006)  # peak |value| 2.5
    assert (
        repr(HOSTILE[:27] + "…") in table.rows[1]["text"]
        and "<script>" not in page.split('id="heatmap"')[1].split("</section>")[0]
    )
    assert "MEASURED" in page.split('id="heatmap"')[1].split("</p>")[0]
    direct = HeatTable(render_diff_html(build(unjudged()), figures=False))  # nothing measured: direct terms
    assert [float(v) for _, v, _ in direct.rows[0]["cells"]] == pytest.approx([0.1, 0.2, 0.3, 0.2, 0.1])


def wide(components: int = 61) -> DiffReport:
    """Two probes over ``components`` components (SmolLM2 has 61): values ``±(j + 1) / 10``."""
    names = tuple(f"L{j}.mlp" for j in range(components))
    probes = []
    for sign, p in ((1.0, intended()), (-1.0, control())):
        values = [sign * (j + 1) / 10 for j in range(components)]
        split = Telescope(
            p.split.target_id, None, names, torch.tensor(values), torch.zeros(4), 0.0, sum(values)
        )
        effects = tuple(CE(n, v, causal=v) for n, v in zip(names, values))
        probes.append(dataclasses.replace(p, split=split, flip_split=None, components=effects))
    return build(*probes)


def test_a_wide_heatmap_is_split_into_readable_parts():
    from tokenlens.report.diff_layout import HEATMAP_COLUMNS, column_chunks, figure_home
    from tokenlens.report.plots.diff import MAX_INCHES, heatmap_figures

    assert [len(c) for c in column_chunks(61)] == [21, 20, 20] and column_chunks(30) == [range(30)]
    report = wide(61)
    parts = heatmap_figures(report)
    assert list(parts) == ["heatmap-1of3", "heatmap-2of3", "heatmap-3of3"]
    shown, limits = [], set()
    for fig in parts.values():
        ax = fig.axes[0]
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert len(labels) <= HEATMAP_COLUMNS and max(fig.get_size_inches()) <= MAX_INCHES
        grid = ax.images[0].get_array()
        assert grid.tolist()[0] == pytest.approx([(int(n[1:-4]) + 1) / 10 for n in labels])
        limits.add((ax.images[0].norm.vmin, ax.images[0].norm.vmax))
        shown += labels
    assert shown == [f"L{j}.mlp" for j in range(61)] and limits == {(-6.1, 6.1)}  # one colour scale
    assert {figure_home(slug, [3, 7]) for slug in parts} == {"probes"}
    text = render_diff_markdown(report, figures={slug: f"f/{slug}.png" for slug in parts})
    probes = text.split('<a id="probes"></a>')[1].split("<a id=")[0]
    assert all(f"f/{slug}.png" in probes for slug in parts) and "part 2 of 3" in probes
    assert len(HeatTable(render_diff_html(report, figures=False)).head) == 1 + 61
    assert list(heatmap_figures(wide(30))) == ["heatmap"]


def test_intended_probes_get_figures_when_many_controls_fail():
    from tokenlens.report.diff_layout import chosen_probes

    controls = [
        dataclasses.replace(control(), probe=dataclasses.replace(control().probe, line=10 + k))
        for k in range(12)
    ]
    probes = [
        *controls[:6],
        intended(),
        *controls[6:],
        dataclasses.replace(intended(), verdict=Verdict("changed", True, "ok")),
    ]
    report = build(*probes)
    chosen = chosen_probes(report)
    assert 6 in chosen and 13 in chosen  # both intended probes, though 12 failing controls come first
    assert len([i for i in chosen if report.probes[i].probe.expect == "unchanged"]) == 8
    assert chosen_probes(report, max_probes=0) == [6, 13]


def test_words_name_the_colours_each_format_uses(report):
    from matplotlib import colormaps

    from tokenlens.report.plots.common import SIGNED_CMAP, signed_norm

    page = render_diff_html(report, figures=False)
    how = Dom(page).text["how-to-read"]
    assert "green is a positive value" in how and "figures (waterfalls, top-k bars) blue is up" in how
    assert "rgba(46,158,79" in page  # the tables really are green for a positive value …
    markdown = render_diff_markdown(report)
    assert "green" not in markdown.lower() and "blue is a positive value" in markdown
    red, _, blue, _ = colormaps[SIGNED_CMAP](signed_norm(torch.tensor([2.0]))(2.0))  # … and figures blue
    assert blue > red
    assert "green" not in terminal(report).lower()  # the terminal shows colours, never names them


def test_ranks_count_from_1_in_every_view(report):
    """The fixture's intended probe has rank 2 under the base model and rank 1 (top-1) under the tuned one."""
    line = "rank 2 → 1 (1 = top-1)"
    assert line in terminal(report) and line in render_diff_markdown(report)
    page = render_diff_html(report, figures=False)
    assert line in Dom(page).text["probe-3"] and "Ranks count from 1" in Dom(page).text["how-to-read"]
    assert diff_to_dict(report)["probes"][0]["tracked"]["base_rank"] == 2  # the JSON counts from 1 too

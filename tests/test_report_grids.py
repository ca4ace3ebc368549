"""The report views of patching grids and causal traces (``grid`` / ``trace`` sections) and of a location:
every format's numbers against the result, hostile tokens kept inert, the heads grid cut to its top rows."""

from __future__ import annotations

import json
import re

import pytest
import torch
from rich.console import Console

from tokenlens.attribution.direct import attribute
from tokenlens.causal.grid_results import Location, PatchGrid, PatchGrids, TraceSetup
from tokenlens.causal.results import Metric
from tokenlens.report.html import render_html
from tokenlens.report.json_report import attribution_to_dict
from tokenlens.report.kinds import grids as views
from tokenlens.report.kit.terminal import renderables_to_text
from tokenlens.report.location import location_markdown, location_table, location_to_dict
from tokenlens.report.markdown import render_markdown
from tokenlens.report.plots import attribution_figures, figure_png
from tokenlens.report.plots.common import token_label
from tokenlens.report.plots.grids import grid_heatmaps
from tokenlens.report.sections import section_kind
from tokenlens.report.terminal import render_report

HOSTILE = "<script>alert(1)</script>"
TOKENS = ("<a>", " \"q'", HOSTILE, "x\u202ey", "z\u200bw", " end")
LAYERS, HEADS = 3, 4


def _grid(
    kind: str, rows: tuple[str, ...], positions: tuple[int, ...], seed: int, window: int = 1
) -> PatchGrid:
    g = torch.Generator().manual_seed(seed)
    value = torch.rand(len(rows), len(positions), generator=g, dtype=torch.float64) * 2 - 0.5
    return PatchGrid(kind, rows, positions, value, window)


def make_grids(
    clean: float = 1.0, corrupted: float = -1.0, heads: int = HEADS, trace: bool = False
) -> PatchGrids:
    """A hand-made result: resid / mlp grids over layers, a heads grid over ``heads`` heads per layer."""
    layers = tuple(f"L{i}" for i in range(LAYERS))
    positions = (1, 2, 3, 4, 5)
    kinds = [_grid("resid", layers, positions, 0), _grid("mlp", layers, positions, 1, window=2)]
    if heads:
        names = tuple(f"L{i}.H{h}" for i in range(LAYERS) for h in range(heads))
        kinds.append(_grid("heads", names, positions, 2))
    setup = TraceSetup(HOSTILE, (1, 2), 0.06, 3.0, 5, 0) if trace else None
    metric = Metric("logit_diff", 11, 5, 12, " P<b>", "`|x")
    return PatchGrids(metric, TOKENS, clean, corrupted, "clean → corrupted", tuple(kinds), setup)


def test_json_round_trip_has_every_value_and_the_restored_share():
    grids = make_grids(trace=True)
    data = json.loads(json.dumps(views.to_dict(grids), allow_nan=False))
    assert data["clean"] == 1.0 and data["corrupted"] == -1.0 and data["direction"] == "clean → corrupted"
    assert data["tokens"] == list(TOKENS) and data["metric"]["target"] == " P<b>"
    assert data["trace"] == {
        "subject": HOSTILE,
        "noised": [1, 2],
        "noise": 0.06,
        "scale": 3.0,
        "samples": 5,
        "seed": 0,
    }
    assert [g["kind"] for g in data["grid"]] == ["resid", "mlp", "heads"]
    for grid, out in zip(grids.grids, data["grid"]):
        assert out["rows"] == list(grid.rows) and out["positions"] == [1, 2, 3, 4, 5]
        assert out["tokens"] == list(TOKENS[1:]) and out["window"] == grid.window
        assert torch.equal(torch.tensor(out["value"], dtype=torch.float64), grid.value)
        restored = torch.tensor(out["restored"], dtype=torch.float64)
        assert torch.allclose(restored, (grid.value - grids.corrupted) / (grids.clean - grids.corrupted))
    assert views.to_dict(make_grids())["trace"] is None


def test_nan_is_null_when_the_two_runs_agree():
    data = json.loads(json.dumps(views.to_dict(make_grids(0.5, 0.5)), allow_nan=False))
    assert all(v is None for g in data["grid"] for row in g["restored"] for v in row)
    assert all(isinstance(v, float) for g in data["grid"] for row in g["value"] for v in row)
    page = views.to_html(make_grids(0.5, 0.5))
    assert 'data-value="null"' in page and 'data-value="nan"' not in page
    assert "| — |" in views.to_markdown(make_grids(0.5, 0.5))
    figure = grid_heatmaps(make_grids(0.5, 0.5))
    assert len(figure.axes) == 6


def test_html_keeps_hostile_tokens_inert_and_every_cell_has_its_value():
    grids = make_grids(trace=True)
    page = views.to_html(grids)
    assert "<script" not in page and "\u202e" not in page and "\u200b" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&quot;q\\&#x27;" in page
    assert "x\\u202ey" in page and "z\\u200bw" in page
    assert 'class="kind measured">MEASURED' in page and "<details>" not in page
    cells = re.findall(r'<td class="num[^"]*"([^>]*)>', page)
    assert cells and all("data-value=" in c for c in cells)
    values = [float(v) for v in re.findall(r'<td class="num" data-value="([^"]+)"', page)]
    expected = [float(v) for g in grids.grids for v in grids.restored(g).flatten()]
    assert values == expected
    assert "style=" in page and "background-color:rgba(" in page


def test_html_heads_grid_shows_top_rows_then_every_row():
    grids = make_grids(heads=16)
    page = views.to_html(grids)
    assert page.count("<details>") == 1 and "All 48 rows" in page
    top, _, everything = page.rpartition("<details>")[0], None, page.rpartition("<details>")[2]
    heads_top = top[top.index("heads: ") :]
    assert heads_top.count("<tr data-name=") == views.TOP_ROWS and everything.count("<tr data-name=") == 48


def test_terminal_heads_view_limits_rows_and_tokens_are_literals():
    grids = make_grids(heads=16, trace=True)
    text = renderables_to_text([views.to_table(grids)], width=160)
    heads = text[text.index("heads: ") :]
    assert len(re.findall(r"^ ?L\d+\.H\d+ ", heads, re.M)) == views.TOP_ROWS
    assert f"the {views.TOP_ROWS} of 48 rows" in heads
    kept = views.top_rows(grids, grids.grid("heads"))
    change = (grids.grid("heads").value - grids.target).abs().amax(dim=1)
    assert sorted(kept) == kept and min(change[kept]) >= max(change[[i for i in range(48) if i not in kept]])
    assert "'x\\u202…" in text and "\u202e" not in text and "'<scrip…" in text  # cut to 8 chars
    assert text.startswith("Causal trace, clean → corrupted (measured)\n")
    assert "subject '<script>alert(1)</script>'" in text and "noised positions 1, 2" in text
    assert "5 noise samples" in text and "logit_diff of ' P<b>' vs '`|x' at position 5" in text
    assert len(re.findall(r"^ ?L\d ", text[: text.index("heads: ")], re.M)) == 2 * LAYERS


def test_terminal_cells_are_coloured_by_sign():
    grids = make_grids(heads=0)
    console = Console(width=160, record=True, color_system="truecolor", force_terminal=True)
    console.print(views.to_table(grids))
    ansi = console.export_text(styles=True)
    assert "48;2;" in ansi  # 24-bit backgrounds
    restored = grids.restored(grids.grid("resid"))
    assert f"{100 * float(restored.max()):.0f}%" in ansi


def test_markdown_table_shape():
    grids = make_grids(heads=16)
    text = views.to_markdown(grids)
    tables = [b for b in text.split("\n\n") if b.startswith("| row")]
    assert len(tables) == 3
    for table, rows in zip(tables, (LAYERS, LAYERS, views.TOP_ROWS)):
        lines = table.splitlines()
        assert len(lines) == 2 + rows and all(line.count(" | ") == 5 for line in lines if "---" not in line)
    assert "`'<script>alert(1)</script>'`" in tables[0] and "`'x\\u202ey'`" in tables[0]
    assert f"The {views.TOP_ROWS} of 48 rows" in text and "**MEASURED**" in text


def test_figure_has_one_heatmap_per_grid_and_the_tokens_as_ticks():
    grids = make_grids(trace=True)
    figure = grid_heatmaps(grids)
    heatmaps = [ax for ax in figure.axes if ax.images]
    assert len(heatmaps) == 3 and len(figure.axes) == 6  # + one colour bar each
    labels = [t.get_text() for t in heatmaps[-1].get_xticklabels()]
    assert labels == [f"{token_label(t, 16)} ({p})" for p, t in enumerate(TOKENS) if p >= 1]
    assert all(
        t.get_text() == "" for t in heatmaps[0].get_xticklabels()
    )  # shared columns: labels at the bottom
    assert not any(t.get_parse_math() for t in heatmaps[-1].get_xticklabels())
    assert "logit[' P<b>'] − logit['`|x']" in heatmaps[0].get_title(loc="left")
    figure_png(figure, dpi=30)


def test_figure_thins_the_labels_of_a_large_heads_grid():
    grids = make_grids(heads=32)  # 96 heads
    figure = grid_heatmaps(grids)
    ax = [ax for ax in figure.axes if ax.images][-1]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"L{i}" for i in range(LAYERS)]
    assert figure.get_figheight() < 20


def test_the_sections_are_registered():
    for key, title in (("grid", "Patching grid (measured)"), ("trace", "Causal trace (measured)")):
        kind = section_kind(key)
        assert kind.result_type is PatchGrids and kind.title == title and kind.to_figure is not None


@pytest.fixture(scope="module")
def result(tiny_loaded):
    return attribute(tiny_loaded("qwen3-tied-gqa"), "The capital of France is")


def test_every_report_shows_grid_and_trace_sections(result):
    grid, trace = make_grids(), make_grids(trace=True)
    shown = [("grid", grid), ("trace", trace)]
    data = json.loads(json.dumps(attribution_to_dict(result, shown), allow_nan=False))
    assert data["grid"] == views.to_dict(grid) and data["trace"]["trace"]["subject"] == HOSTILE
    text = renderables_to_text(render_report(result, shown), width=140)
    assert text.count("resid: residual stream entering the layer") == 2
    figures = attribution_figures(result, sections=shown)
    assert list(figures)[-2:] == ["grid", "trace"]
    images = {key: figure_png(figures[key], dpi=30) for key in ("grid", "trace")}
    page = render_html(result, sections=shown, images=images)
    assert '<section id="grid">' in page and '<section id="trace">' in page
    assert page.count("<script") == 2  # the explorer's data and its one hash-allowed script
    assert '<a href="#trace">causal trace</a>' in page and 'id="figure-trace"' in page
    markdown = render_markdown(result, sections=shown, image_paths={"grid": "f/grid.png"})
    assert "## Patching grid (measured)" in markdown and "## Causal trace (measured)" in markdown


def _location(peak: float = 0.4) -> Location:
    trace = make_grids(0.9, 0.1, heads=0, trace=True)
    return Location(trace, 2, HOSTILE, (1, 2), 1, peak, True)


def test_location_views():
    location = _location()
    data = json.loads(json.dumps(location_to_dict(location), allow_nan=False))
    assert data["location"] == {
        "position": 2,
        "token": HOSTILE,
        "layers": [1, 2],
        "peak_layer": 1,
        "peak": 0.4,
        "weak": False,
        "last_subject_token": True,
        "sentence": location.sentence(),
    }
    assert data["trace"] == views.to_dict(location.trace)
    text = renderables_to_text(location_table(location), width=200)
    assert location.sentence() in text and "position 2 is the last noised (subject) token" in text
    mlp = text[text.index("mlp: MLP output") :]
    header = next(line for line in mlp.splitlines() if line.strip().startswith("1"))
    assert header.split() == ["1", "2"]  # the noised positions only
    assert len(re.findall(r"^ ?L\d ", mlp, re.M)) == LAYERS
    md = location_markdown(_location(0.05))
    assert "(token `'<script>alert(1)</script>'`, the last noised (subject) token)" in md
    assert "by the MLPs of layers 1–2" in md and "**weak evidence**" in md
    assert "<script" not in re.sub(r"(`+).*?\1", "", md)
    table = md[md.index("| row") :].split("\n\n")[0].splitlines()
    assert len(table) == 2 + LAYERS and table[0].count(" | ") == 2
    peak = f"{100 * float(location.trace.restored(location.trace.grid('mlp'))[1, 1]):.0f}%"
    assert table[3].strip("| ").split(" | ") == [
        "L1",
        table[3].split(" | ")[1],
        f"**{peak}**",
    ]  # row L1, position 2

"""The matplotlib figures, checked on content, not pixels.

Results come from real runs on a tiny model. Bars, heatmap arrays and cell texts are compared with the result
objects and with independent numbers: the model's own logits from a plain HF forward pass (no hooks), the
tokenizer's decoding of HF's argmax, cumulative sums recomputed here. Token text must reach every label
literally (whitespace visible, ``$`` never mathtext), and the files must be valid PNG / SVG written
atomically.
"""

from __future__ import annotations

import dataclasses
import math
import os
import xml.etree.ElementTree as ET

import pytest
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.text import Text

import tokenlens.causal as causal
from tokenlens.attribution.direct import attribute
from tokenlens.attribution.lens import logit_lens
from tokenlens.attribution.result import Decomposition, HeadSplit
from tokenlens.report.kit.text import show_token
from tokenlens.report.plots import (
    attribution_figures,
    effect_bars,
    figure_png,
    figure_svg,
    head_heatmap,
    layer_heatmap,
    lens_grid,
    save_figure,
    source_heat,
    waterfall,
)
from tokenlens.report.plots.common import MAX_TICK_LABELS

PROMPT = "The capital of France is"
WEIRD = "$x$ <script>\t"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tiny_loaded):
    """A tiny MHA model, an attribution (heads, two source splits, a contrast) and a logit lens."""
    loaded = tiny_loaded("qwen3-untied-mha")
    result = attribute(loaded, PROMPT, heads=True, sources=["L1", "L2.H0"], target=" Paris", vs=" London")
    lens = logit_lens(loaded, PROMPT, target=" Paris", k=3)
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([result.token_ids])).logits[0].double()  # (seq, vocab)
    return loaded, result, lens, logits


@pytest.fixture(scope="module")
def sections(run):
    loaded, result, _, _ = run
    metric = causal.metric_for(
        loaded,
        list(result.token_ids),
        kind="logit_diff",
        target_id=result.target.id,
        contrast_id=result.contrast.id,
        position=result.position,
    )
    return [
        ("ablation", causal.ablation(loaded, PROMPT, "L1.H0,L2.mlp", metric=metric)),
        ("patching", causal.patching(loaded, PROMPT, "The capital of Italy is", metric=metric)),
        ("estimates", causal.estimate_check(loaded, PROMPT, top_k=3, metric=metric)),
        ("rope", causal.rope_ablation(loaded, PROMPT, metric=metric)),
        ("norms", causal.norm_ablation(loaded, PROMPT, metric=metric)),
    ]


def model_value(result, logits: torch.Tensor) -> float:
    """The explained logit difference from a plain HF forward pass."""
    row = logits[result.position]
    return float(row[result.target.id] - row[result.contrast.id])


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text)]


def title(fig: Figure) -> str:
    return fig.axes[0].get_title(loc="left")


def assert_symmetric(norm, values: torch.Tensor) -> None:
    assert norm.vmin == -norm.vmax
    assert norm.vmax == pytest.approx(float(values.abs().max()), rel=1e-6)


def test_waterfall_bars_accumulate_to_the_models_logit(run):
    _, result, _, logits = run
    d = result.decomposition
    ax = waterfall(result).axes[0]
    bars = ax.patches
    assert len(bars) == len(d.names) + 1  # one per component, then the total
    running = 0.0
    for bar, value in zip(bars, d.contributions.tolist()):
        assert bar.get_y() == pytest.approx(running, abs=1e-6)
        assert bar.get_height() == pytest.approx(value, abs=1e-6)
        running += value
    final = bars[len(d.names) - 1]
    assert final.get_y() + final.get_height() == pytest.approx(d.total, abs=1e-6)
    assert bars[-1].get_y() == 0 and bars[-1].get_height() == pytest.approx(d.total, abs=1e-9)
    assert d.total == pytest.approx(model_value(result, logits), abs=1e-4)  # independent: HF's own logits
    assert [t.get_text() for t in ax.get_xticklabels()] == [*d.names, "total"]
    blue, red = (
        bar.get_facecolor() for bar in (bars[d.contributions.argmax()], bars[d.contributions.argmin()])
    )
    assert blue[2] > blue[0] and red[0] > red[2]  # raises: blue, lowers: red
    heading = ax.get_title(loc="left")
    for part in ("' Paris'", "' London'", "position 4", "' is'", "logit-difference units"):
        assert part in heading
    assert any(f"{d.total:+.4f}" in t for t in texts(ax.figure))  # the total is marked


def test_layer_heatmap_matches_components_and_sums_to_the_logit(run):
    _, result, _, logits = run
    values = result.decomposition.as_dict()
    ax = layer_heatmap(result).axes[0]
    image = ax.images[0]
    grid = torch.tensor(image.get_array(), dtype=torch.float64)
    expected = torch.tensor(
        [[values[f"L{i}.attn"], values[f"L{i}.mlp"]] for i in range(3)], dtype=torch.float64
    )
    torch.testing.assert_close(grid, expected, atol=1e-6, rtol=0)
    assert values["embed"] + float(grid.sum()) == pytest.approx(model_value(result, logits), abs=1e-4)
    assert_symmetric(image.norm, expected)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["attn", "mlp"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L0", "L1", "L2"]
    assert "' Paris'" in title(ax.figure) and "position 4" in title(ax.figure)
    assert "embed" in title(ax.figure)  # what the grid leaves out is named


def test_layer_heatmap_gives_bias_terms_their_own_columns(tiny_loaded):
    loaded = tiny_loaded("llama-out-bias")  # o_proj and down_proj biases: L{i}.attn.bias, L{i}.mlp.bias
    result = attribute(loaded, PROMPT, target=" Paris")
    ax = layer_heatmap(result).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["attn", "mlp", "attn.bias", "mlp.bias"]
    grid = torch.tensor(ax.images[0].get_array(), dtype=torch.float64)
    values = result.decomposition.as_dict()
    assert float(grid[1, 2]) == pytest.approx(values["L1.attn.bias"], abs=1e-7)
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([result.token_ids])).logits[0, -1].double()
    assert values["embed"] + float(grid.sum()) == pytest.approx(float(logits[result.target.id]), abs=1e-4)
    assert "logit units" in title(ax.figure) and "logit-difference" not in title(ax.figure)


def test_head_heatmap_matches_heads_and_rows_sum_to_layers(run):
    _, result, _, _ = run
    ax = head_heatmap(result).axes[0]
    image = ax.images[0]
    grid = torch.tensor(image.get_array())
    torch.testing.assert_close(grid, result.heads.contributions.float(), atol=0, rtol=0)
    attn = torch.tensor([result.decomposition.as_dict()[f"L{i}.attn"] for i in range(3)])
    torch.testing.assert_close(grid.sum(1), attn, atol=1e-5, rtol=0)
    assert_symmetric(image.norm, grid)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["H0", "H1", "H2", "H3"]
    assert len(ax.texts) == grid.numel()  # small grid: every value printed
    assert "' Paris'" in title(ax.figure) and "position 4" in title(ax.figure)
    with pytest.raises(ValueError, match="heads=True"):
        head_heatmap(dataclasses.replace(result, heads=None))


def test_source_heat_colours_each_token_by_its_contribution(run):
    _, result, _, _ = run
    for split in result.sources:
        fig = source_heat(result, split)
        tokens = {t.get_gid(): t for t in fig.findobj(Text) if (t.get_gid() or "").startswith(split.name)}
        assert len(tokens) == len(result.tokens)  # position is the last token: all shown
        values = split.contributions.double()
        peak = float(values.abs().max())
        for j, value in enumerate(values.tolist()):
            text = tokens[f"{split.name}.S{j}"]
            assert text.get_text() == show_token(result.tokens[j])
            face = text.get_bbox_patch().get_facecolor()
            expected = colormaps["RdBu"]((value / peak + 1) / 2)  # independent symmetric scaling
            assert face == pytest.approx(expected, abs=0.02)
            if abs(value) > 0.2 * peak:
                assert (face[2] > face[0]) == (value > 0)  # blue raises, red lowers
        assert "' capital'" in texts(fig)  # whitespace visible
        heading = next(t for t in texts(fig) if t.startswith("Sources through"))
        assert split.name in heading and "' Paris'" in heading and "position 4" in heading


def test_source_heat_hides_tokens_after_the_position(run):
    loaded, _, _, _ = run
    result = attribute(loaded, PROMPT, position=2, sources=["L1"])
    fig = source_heat(result, result.sources[0])
    shown = [t.get_text() for t in fig.findobj(Text) if (t.get_gid() or "").startswith("L1.S")]
    assert shown == [show_token(t) for t in result.tokens[:3]]
    assert any("2 later token(s) not shown" in t for t in texts(fig))
    with pytest.raises(ValueError, match="sources"):
        source_heat(dataclasses.replace(result, tokens=result.tokens[:-1]), result.sources[0])


def test_lens_grid_cells_are_the_top_tokens(run):
    loaded, _, lens, logits = run
    ax = lens_grid(lens).axes[0]
    image = ax.images[0]
    torch.testing.assert_close(torch.tensor(image.get_array()), lens.top_probs[:, :, 0].float())
    assert (image.norm.vmin, image.norm.vmax) == (0.0, 1.0)
    n_depth, n_pos = len(lens.depths), len(lens.positions)
    cells = ax.texts
    assert len(cells) == n_depth * n_pos
    for d in range(n_depth):
        for c in range(n_pos):
            expected = show_token(lens.top_tokens[d][c][0])
            got = cells[d * n_pos + c].get_text()
            assert got == expected or (got.endswith("…") and expected.startswith(got[:-1]))
    decodable = len(loaded.tokenizer)  # the last depth is the model's output: HF's own argmax, decoded here
    for c, position in enumerate(lens.positions.tolist()):
        top = int(logits[position, :decodable].argmax())
        word = loaded.tokenizer.decode([top], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert cells[(n_depth - 1) * n_pos + c].get_text().rstrip("…") in show_token(word)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(lens.depths)
    assert "' capital' (1)" in [t.get_text() for t in ax.get_xticklabels()]
    assert "' Paris'" in title(ax.figure)


def test_lens_grid_marks_the_target_in_bold(run):
    _, _, lens, _ = run
    top = int(lens.top_ids[1, 2, 0])
    fig = lens_grid(dataclasses.replace(lens, target_id=top))
    bold = [t for t in fig.axes[0].texts if t.get_fontweight() == "bold"]
    assert len(bold) == int((lens.top_ids[:, :, 0] == top).sum()) >= 1


def bar_widths(ax) -> list[float]:
    return [p.get_width() for p in ax.patches]


def test_ablation_and_norm_bars_are_the_measured_effects(sections):
    found = dict(sections)
    for key in ("ablation", "rope"):
        ablation = found[key]
        ax = effect_bars(ablation).axes[0]
        expected = [e.delta for e in ablation.each] + [ablation.together.delta]
        assert bar_widths(ax) == pytest.approx(expected, abs=1e-9)
        names = [t.get_text() for t in ax.get_yticklabels()]
        assert names == [e.name for e in ablation.each] + ["together (all sites)"]
        assert "measured" in title(ax.figure) and "' Paris'" in title(ax.figure)
        assert "position 4" in title(ax.figure) and "logit-difference units" in title(ax.figure)
    assert "RoPE" in title(effect_bars(found["rope"]))
    norms = found["norms"]
    ax = effect_bars(norms).axes[0]
    assert norms.ablation.together is None  # norm ablation measures each norm alone
    assert bar_widths(ax) == pytest.approx([e.delta for e in norms.ablation.each])
    assert [t.get_text() for t in ax.get_yticklabels()][:2] == ["final_norm", "L0.attn_norm"]
    assert "not contributions" in title(ax.figure)


def test_patching_bars_and_their_limit(sections):
    patching = dict(sections)["patching"]
    ax = effect_bars(patching).axes[0]
    assert bar_widths(ax) == pytest.approx([e.delta for e in patching.effects], abs=1e-9)
    assert [t.get_text() for t in ax.get_yticklabels()] == [e.name for e in patching.effects]
    embed = next(e for e in patching.effects if e.name == "embed")
    assert any(f"({embed.restored:.0%})" in t for t in texts(ax.figure))  # share of the gap restored
    top3 = sorted(patching.effects, key=lambda e: -abs(e.delta))[:3]
    ax = effect_bars(patching, limit=3).axes[0]
    assert bar_widths(ax) == pytest.approx([e.delta for e in top3])
    assert f"the 3 largest |Δ| of {len(patching.effects)} sites" in title(ax.figure)


def test_estimates_are_labelled_and_beside_exact_effects(sections):
    check = dict(sections)["estimates"]
    fig = effect_bars(check)
    ax = fig.axes[0]
    by_label = {c.get_label(): [p.get_width() for p in c] for c in ax.containers}
    estimate = next(v for k, v in by_label.items() if k.startswith("estimate"))
    exact = next(v for k, v in by_label.items() if k.startswith("exact"))
    assert estimate == pytest.approx([r.estimate for r in check.rows])
    assert exact == pytest.approx([r.exact for r in check.rows])
    assert [t.get_text() for t in ax.get_legend().get_texts()][0].startswith("estimate")
    assert "estimates" in title(fig) and f"of {len(check.estimates.names)} sites" in title(fig)
    with pytest.raises(TypeError):
        effect_bars(object())


def test_attribution_figures_keys(run, sections):
    _, result, lens, _ = run
    figures = attribution_figures(result, lens=lens, sections=sections)
    assert list(figures) == [
        "waterfall",
        "layers",
        "heads",
        "sources-L1",
        "sources-L2.H0",
        "lens",
        "ablation",
        "patching",
        "estimates",
        "rope",
        "norms",
    ]
    assert all(isinstance(f, Figure) for f in figures.values())
    plain = dataclasses.replace(result, heads=None, sources=())
    assert list(attribution_figures(plain)) == ["waterfall", "layers"]
    with pytest.raises(ValueError, match="unknown report section 'mystery'"):
        attribution_figures(result, sections=[("mystery", None)])
    with pytest.raises(ValueError, match="'lens'"):
        attribution_figures(result, lens=lens, sections=[("lens", lens)])


def test_token_text_is_literal_in_every_figure(run):
    """A token with ``$x$`` and markup is shown as its repr, never parsed as mathtext (before and after a
    draw)."""
    _, result, lens, _ = run
    tokens = (WEIRD,) + result.tokens[1:]
    weird = dataclasses.replace(result, tokens=tokens, target=dataclasses.replace(result.target, token=WEIRD))
    top = tuple(tuple((WEIRD,) + cell[1:] for cell in row) for row in lens.top_tokens)
    figures = [
        waterfall(weird),
        head_heatmap(weird),
        source_heat(weird, weird.sources[0]),
        lens_grid(dataclasses.replace(lens, tokens=tokens, top_tokens=top, target=WEIRD)),
    ]
    for fig in figures:
        for drawn in (False, True):
            if drawn:
                figure_png(fig)
            dollars = [t for t in fig.findobj(Text) if "$" in t.get_text()]
            assert any(show_token(WEIRD) in t.get_text() for t in dollars)
            assert all(t.get_parse_math() is False and not t.get_usetex() for t in dollars)
        ET.fromstring(figure_svg(fig))  # markup in token text cannot break the SVG
    assert "'$x$ <script>\\t'" in texts(figures[2])


def test_large_models_stay_legible(run):
    """A SmolLM2-sized split (30 layers × 9 heads, 61 components) and an oversized one (150 layers)."""
    _, result, _, _ = run
    generator = torch.Generator().manual_seed(0)
    for layers, heads in ((30, 9), (150, 16)):
        names = ("embed",) + tuple(f"L{i}.{p}" for i in range(layers) for p in ("attn", "mlp"))
        values = torch.randn(len(names), generator=generator)
        d = dataclasses.replace(
            result.decomposition, names=names, contributions=values, logit=float(values.sum())
        )
        split = HeadSplit(torch.randn(layers, heads, generator=generator), torch.zeros(layers))
        big = dataclasses.replace(result, decomposition=d, heads=split)
        fig = waterfall(big)
        ax = fig.axes[0]
        assert len(ax.patches) == len(names) + 1
        assert fig.get_figwidth() >= 0.2 * len(names)  # about a quarter inch per bar
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert len(labels) <= MAX_TICK_LABELS + 1 and labels[0] == "embed"
        heat = head_heatmap(big)
        assert heat.get_figheight() >= 0.25 * layers
        assert len(heat.axes[0].get_yticklabels()) <= MAX_TICK_LABELS
        assert isinstance(big.decomposition, Decomposition)
    assert len(heat.axes[0].texts) == 0  # too many cells to print values in


def test_png_svg_and_save_figure(run, tmp_path):
    _, result, _, _ = run
    fig = waterfall(result)
    png = figure_png(fig)
    assert png.startswith(PNG_MAGIC)
    svg = figure_svg(fig)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert figure_svg(waterfall(result)) == figure_svg(waterfall(result))  # reproducible: no date, salted ids
    stem = tmp_path / "out" / "sources-L2.H0"
    paths = save_figure(fig, stem)
    assert paths == (tmp_path / "out" / "sources-L2.H0.png", tmp_path / "out" / "sources-L2.H0.svg")
    assert paths[0].read_bytes().startswith(PNG_MAGIC)
    ET.fromstring(paths[1].read_text(encoding="utf-8"))
    save_figure(fig, stem)  # overwriting works too
    assert sorted(os.listdir(tmp_path / "out")) == ["sources-L2.H0.png", "sources-L2.H0.svg"]  # no temp files
    width, height = (int(v) for v in (fig.get_figwidth() * 144, fig.get_figheight() * 144))
    assert int.from_bytes(png[16:20], "big") == width and math.isclose(
        int.from_bytes(png[20:24], "big"), height
    )

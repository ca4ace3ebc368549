"""The method map of ``tokenlens sweep`` in every format (rendering only: it reads a SweepMap, never trains).

A map is one row per configuration (a post-training method and where it is applied), each number a mean over
seeds with its min..max range, then the recommendation's reasoning and how to read the numbers. Every
format shows the same text cells:

* :func:`render_map`: a compact terminal table (rich), where each effect lives, the recommendation;
* :func:`map_to_dict`: everything as JSON-ready data, per run and per configuration (undefined is ``null``);
* :func:`render_map_markdown`: GitHub-flavoured Markdown, figures linked by relative path;
* :func:`render_map_html`: one self-contained HTML page (figures as ``data:`` URIs, no script, no network),
  each number cell carrying its mean in ``data-value``.

Untrusted text (model and configuration names, notes) goes through the kit (:mod:`tokenlens.report.kit`);
the figures are drawn by :mod:`tokenlens.report.plots.sweep`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tokenlens.report.kit import html, markdown
from tokenlens.report.kit.text import finite_json
from tokenlens.sweep.recommend import CLEAR_GAIN, thresholds
from tokenlens.sweep.results import COLLATERAL_FLOOR, METRICS, ConfigSummary, RunMetrics, Spread, SweepMap
from tokenlens.version import __version__

if TYPE_CHECKING:
    from rich.console import RenderableType

HOW_TO_READ = (
    "Each row is one configuration (a post-training method and where it is applied), trained with every seed "
    "on the same data and step budget, then compared with the base model on the same probes.",
    "gain: the intended probes' mean target-probability change (tuned − base); flips: intended probes whose "
    "target became the top-1 token.",
    "general. (generalization): the share of the intended probes in a paraphrase group that pass check; "
    "— when the probes have none.",
    "control KL: the mean KL(base ‖ tuned) over the control probes, in nats (collateral drift); unintended "
    "flips: controls whose top-1 token changed (locality = 1 − unintended flips / controls).",
    "corpus KL: the mean per-token KL(base ‖ tuned) over every token of a held-out text (sweep --corpus); "
    "the JSON also has the share of its tokens whose top-1 changed; — when not measured.",
    "check fails: the probes tokenlens check would fail at the map's thresholds (an intended probe whose "
    "target neither becomes top-1 nor gains min gain; a control whose top-1 changes or whose KL exceeds max "
    "KL), of the judged probes; a configuration passes check when no seed fails any.",
    "effect/param = gain / trainable parameters; "
    f"effect/collateral = gain / (control KL + {COLLATERAL_FLOOR:g}).",
    "Numbers are means over seeds with their min..max range; ranges that overlap mean the seeds do not "
    "separate the two configurations.",
    f"Only configurations whose every seed gains at least {CLEAR_GAIN:g} are ranked: those that pass check "
    "first, by effect/collateral; then the others, least control KL first. Only one that passes check is "
    "recommended, and only over another that passes when their effect/collateral ranges do not overlap.",
    "The heatmap shows where each configuration's effect lives: per component (embedding, each layer's "
    "attention and MLP) and readout term (readout.head for a head fine-tune), scaled to the row's largest.",
    "The direct split credits each component for the change of its own write, so a LoRA on early layers can "
    "show its effect in late layers whose inputs it changed; --causal patches the top components to measure "
    "what each one causes.",
)

FIGURE_ALT = {
    "effect-vs-params": "Intended effect against trainable parameters (log scale), one point per config",
    "effect-vs-collateral": "Intended effect against collateral drift on the control probes",
    "components": "Where each configuration's effect lives: configurations × components heatmap",
}

COLUMNS = (
    "config",
    "trainable",
    "lr",
    "gain",
    "flips",
    "general.",
    "control KL",
    "unint. flips",
    "corpus KL",
    "check fails",
    "effect/param",
    "effect/collateral",
    "wall s",
    "peak MiB",
    "top components",
)
"""The map's columns in Markdown and HTML (:func:`_cells` gives a row's text in this order)."""

CELL_METRICS = tuple(metric for metric in METRICS if metric != "final_loss")
"""The metric behind each column from ``gain`` to ``peak MiB``, in order (the HTML cells' ``data-name``):
every metric spread over seeds but the final training loss, which the map leaves to the JSON."""

TERMINAL = (
    "config",
    "params",
    "gain",
    "flips",
    "gen.",
    "ctrl KL",
    "unint.",
    "corpus",
    "check",
    "eff/param",
    "eff/coll",
    "wall s",
    "MiB",
)
"""The terminal table's columns (the top components follow as lines; the lr is in the JSON)."""


def _spread_text(spread: Spread | None, fmt: str) -> str:
    """The mean in ``fmt``, then the seeds' ``(min..max)`` when they differ; ``—`` when not measured."""
    if spread is None:
        return "—"
    if len(spread.values) == 1 or spread.low == spread.high:
        return format(spread.mean, fmt)
    short = ".2e" if "e" in fmt else "g" if fmt == "g" else ".2g"
    return f"{format(spread.mean, fmt)} ({format(spread.low, short)}..{format(spread.high, short)})"


def _cells(c: ConfigSummary) -> list[str]:
    """One configuration's row as text cells, in :data:`COLUMNS` order."""
    first = c.runs[0]
    flips = c.spread("flips")
    unint = c.spread("unintended_flips")
    top = ", ".join(f"{name} {score:.2g}" for name, score in c.top_components[:3])
    return [
        c.config,
        f"{c.trainable:,}",
        f"{c.lr:g}",
        _spread_text(c.spread("gain"), ".3f"),
        f"{_spread_text(flips, 'g')}/{first.intended}",
        _spread_text(c.spread("generalization"), ".2g"),
        _spread_text(c.spread("collateral_kl"), ".3g"),
        f"{_spread_text(unint, 'g')}/{first.controls}",
        _spread_text(c.spread("corpus_kl"), ".3g"),
        f"{_spread_text(c.spread('check_failures'), 'g')}/{first.intended + first.controls}",
        _spread_text(c.spread("effect_per_param"), ".2e"),
        _spread_text(c.spread("effect_per_collateral"), ".3g"),
        _spread_text(c.spread("wall_s"), ".0f"),
        _spread_text(c.spread("peak_mb"), ".0f"),
        top,
    ]


def _header(m: SweepMap) -> str:
    """One line saying what was swept: model, task, steps, seeds, how components were scored and the check's
    thresholds."""
    causal = "causal (exact patching of the top 3)" if m.causal else "direct split"
    return (
        f"model {m.model} · task {m.task} · {m.steps} steps · seeds {', '.join(map(str, m.seeds))} · "
        f"components by {causal} · check at {thresholds(m.min_gain, m.max_kl)}"
    )


def render_map(m: SweepMap) -> RenderableType:
    """The map as rich renderables: a compact table, where each effect lives, and the recommendation."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"tokenlens sweep: {_header(m)}", title_justify="left")
    for i, column in enumerate(TERMINAL):
        table.add_column(column, justify="left" if i == 0 else "right", overflow="fold")
    for c in m.configs:
        cells = _cells(c)
        table.add_row(*cells[:2], *cells[3:-1])
    lines = [Text("Where the effect lives (top components)", style="bold")]
    lines += [Text(f"  {c.config}: {_cells(c)[-1] or '—'}") for c in m.configs]
    lines += [Text("Recommendation", style="bold")] + [Text(f"  {line}") for line in m.recommendation.lines]
    lines += [Text(f"note: {n}", style="dim") for n in m.notes]
    return Group(table, *lines)


def _spread_dict(spread: Spread | None) -> dict[str, Any] | None:
    if spread is None:
        return None
    return {
        "mean": spread.mean,
        "min": spread.low,
        "max": spread.high,
        "std": spread.std,
        "values": list(spread.values),
    }


def _run_dict(r: RunMetrics) -> dict[str, Any]:
    return {
        "seed": r.seed,
        "run_dir": r.run_dir,
        "lr": r.lr,
        "steps": r.steps,
        "final_loss": r.final_loss,
        "trainable": r.trainable,
        "wall_s": r.wall_s,
        "peak_mb": r.peak_mb,
        "gain": r.gain,
        "flips": r.flips,
        "intended": r.intended,
        "collateral_kl": r.collateral_kl,
        "unintended_flips": r.unintended_flips,
        "controls": r.controls,
        "check_failures": r.check_failures,
        "generalization": r.generalization,
        "corpus_kl": r.corpus_kl,
        "corpus_changed": r.corpus_changed,
        "effect_per_param": r.effect_per_param,
        "effect_per_collateral": r.effect_per_collateral,
        "top_components": [{"name": n, "score": s} for n, s in r.top_components],
        "components": dict(r.components),
    }


def map_to_dict(m: SweepMap) -> dict[str, Any]:
    """Everything in the map as JSON-ready data (NaN never appears: undefined values are ``null``)."""
    configs = []
    for c in m.configs:
        entry = {
            "config": c.config,
            "method": c.method,
            "summary": c.summary,
            "lr": c.lr,
            "trainable": c.trainable,
            "passes_check": c.passes_check,
        }
        entry.update({metric: _spread_dict(c.spread(metric)) for metric in METRICS})
        entry["top_components"] = [{"name": n, "score": s} for n, s in c.top_components]
        entry["runs"] = [_run_dict(r) for r in c.runs]
        configs.append(entry)
    rec = m.recommendation
    return finite_json(
        {
            "tool": f"tokenlens {__version__}",
            "model": m.model,
            "task": m.task,
            "data": m.data,
            "probes": m.probes,
            "steps": m.steps,
            "seeds": list(m.seeds),
            "causal": m.causal,
            "check_thresholds": {"min_gain": m.min_gain, "max_kl": m.max_kl},
            "definitions": {
                "effect_per_param": "gain / trainable",
                "effect_per_collateral": f"gain / (collateral_kl + {COLLATERAL_FLOOR:g})",
                "clear_gain": CLEAR_GAIN,
            },
            "configs": configs,
            "recommendation": {
                "recommended": rec.recommended,
                "ranking": list(rec.ranking),
                "excluded": list(rec.excluded),
                "separable": list(rec.separable),
                "reasoning": list(rec.lines),
            },
            "lr_search": {k: {f"{lr:g}": loss for lr, loss in v.items()} for k, v in m.lr_search.items()},
            "notes": list(m.notes),
        }
    )


def render_map_markdown(m: SweepMap, figures: Mapping[str, str] | None = None) -> str:
    """The map as GitHub-flavoured Markdown; ``figures``: slug -> relative PNG path."""
    plain = markdown.plain
    parts = [
        f"# tokenlens sweep: {plain(m.model)} on {plain(m.task)}",
        "",
        plain(_header(m)),
        "",
        markdown.table(COLUMNS, [[plain(cell) for cell in _cells(c)] for c in m.configs]),
        "",
        "## Recommendation",
        "",
    ]
    parts += [f"- {plain(line)}" for line in m.recommendation.lines]
    parts += ["", *[f"> note: {plain(n)}" for n in m.notes]]
    for slug, path in (figures or {}).items():
        parts += ["", markdown.image(FIGURE_ALT.get(slug, slug), path)]
    parts += ["", "## How to read this map", "", *[f"- {plain(t)}" for t in HOW_TO_READ], ""]
    return "\n".join(parts)


def _html_row(c: ConfigSummary) -> str:
    """A configuration's row; each number cell carries its mean in ``data-value`` (``null``: not measured)."""
    cells = _cells(c)
    out = [
        html.number(c.trainable, ",", False, name="trainable"),
        html.number(c.lr, "g", False, name="lr"),
    ]
    for metric, text in zip(CELL_METRICS, cells[3:-1], strict=True):
        spread = c.spread(metric)
        value = "null" if spread is None else repr(spread.mean)
        out.append(f'<td class="num" data-name="{metric}" data-value="{value}">{html.escape(text)}</td>')
    return html.row(c.config, *out, f"<td>{html.escape(cells[-1])}</td>")


def render_map_html(m: SweepMap, images: Mapping[str, bytes] | None = None) -> str:
    """One self-contained HTML5 page (no script, no network; figures as PNG ``data:`` URIs).

    Raises:
        ValueError: An image that is not PNG data.
    """
    figures = "".join(
        html.figure(slug, png, FIGURE_ALT.get(slug, slug)) for slug, png in (images or {}).items()
    )
    rec = "".join(f"<li>{html.escape(line)}</li>" for line in m.recommendation.lines)
    notes = "".join(f'<p class="note">note: {html.escape(n)}</p>' for n in m.notes)
    table = html.table([html.escape(c) for c in COLUMNS], [_html_row(c) for c in m.configs])
    sections = [
        ("map", "Map", table + notes),
        ("recommendation", "Recommendation", f"<ul>{rec}</ul>"),
        ("figures", "Figures", figures),
        ("how-to-read", "How to read this map", html.paragraphs(HOW_TO_READ)),
    ]
    body = "\n".join(html.section(anchor, html.escape(title), content) for anchor, title, content in sections)
    title = f"tokenlens sweep: {m.model} on {m.task}"
    header = f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(_header(m))}</p>"
    return html.page(title, header, body)

"""The method map in every format (rendering only: no model runs here): a terminal table (rich), JSON
(everything, per run and per configuration), Markdown (with PNG figures beside it) and one self-contained
HTML page (figures as ``data:`` URIs, the same safety rules as :mod:`tokenlens.report.diff_html`).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from urllib.parse import quote

import tokenlens
from tokenlens.report.html import _CSP, _CSS, PNG_MAGIC, _e, _num, _table
from tokenlens.report.markdown import _table as _md_table
from tokenlens.report.markdown import plain
from tokenlens.sweep.recommend import CLEAR_GAIN
from tokenlens.sweep.results import COLLATERAL_FLOOR, METRICS, ConfigSummary, RunMetrics, Spread, SweepMap

HOW_TO_READ = (
    "Each row is one configuration (a post-training method and where it is applied), trained with every seed "
    "on the same data and step budget, then compared with the base model on the same probes.",
    "gain: the intended probes' mean target-probability change (tuned − base); flips: intended probes whose "
    "target became the top-1 token.",
    "control KL: the mean KL(base ‖ tuned) over the control probes, in nats (collateral drift); unintended "
    "flips: controls whose top-1 token changed.",
    "effect/param = gain / trainable parameters; "
    f"effect/collateral = gain / (control KL + {COLLATERAL_FLOOR:g}).",
    "Numbers are means over seeds with their min..max range; ranges that overlap mean the seeds do not "
    "separate the two configurations.",
    f"Only configurations whose every seed gains at least {CLEAR_GAIN:g} are ranked; one is recommended over "
    "another only when their effect/collateral ranges do not overlap.",
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
    "control KL",
    "unint. flips",
    "effect/param",
    "effect/collateral",
    "wall s",
    "peak MiB",
    "top components",
)


def _spread_text(spread: Spread | None, fmt: str) -> str:
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
        _spread_text(c.spread("collateral_kl"), ".3g"),
        f"{_spread_text(unint, 'g')}/{first.controls}",
        _spread_text(c.spread("effect_per_param"), ".2e"),
        _spread_text(c.spread("effect_per_collateral"), ".3g"),
        _spread_text(c.spread("wall_s"), ".0f"),
        _spread_text(c.spread("peak_mb"), ".0f"),
        top,
    ]


def _header(m: SweepMap) -> str:
    causal = "causal (exact patching of the top 3)" if m.causal else "direct split"
    return (
        f"model {m.model} · task {m.task} · {m.steps} steps · seeds {', '.join(map(str, m.seeds))} · "
        f"components by {causal}"
    )


TERMINAL = (
    "config",
    "params",
    "gain",
    "flips",
    "ctrl KL",
    "unint.",
    "eff/param",
    "eff/coll",
    "wall s",
    "MiB",
)
"""The terminal table's columns (the top components follow as lines; the lr is in the JSON)."""


def render_map(m: SweepMap):
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


def _spread_dict(spread: Spread | None) -> dict | None:
    if spread is None:
        return None
    return {
        "mean": spread.mean,
        "min": spread.low,
        "max": spread.high,
        "std": spread.std,
        "values": list(spread.values),
    }


def _run_dict(r: RunMetrics) -> dict:
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
        "effect_per_param": r.effect_per_param,
        "effect_per_collateral": r.effect_per_collateral,
        "top_components": [{"name": n, "score": s} for n, s in r.top_components],
        "components": dict(r.components),
    }


def map_to_dict(m: SweepMap) -> dict:
    """Everything in the map as JSON-ready data (NaN never appears: undefined values are ``null``)."""
    configs = []
    for c in m.configs:
        entry = {
            "config": c.config,
            "method": c.method,
            "summary": c.summary,
            "lr": c.lr,
            "trainable": c.trainable,
        }
        entry.update({metric: _spread_dict(c.spread(metric)) for metric in METRICS})
        entry["top_components"] = [{"name": n, "score": s} for n, s in c.top_components]
        entry["runs"] = [_run_dict(r) for r in c.runs]
        configs.append(entry)
    rec = m.recommendation
    return _clean(
        {
            "tool": f"tokenlens {tokenlens.__version__}",
            "model": m.model,
            "task": m.task,
            "data": m.data,
            "probes": m.probes,
            "steps": m.steps,
            "seeds": list(m.seeds),
            "causal": m.causal,
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


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def render_map_markdown(m: SweepMap, figures: Mapping[str, str] | None = None) -> str:
    """The map as GitHub-flavoured Markdown; ``figures``: slug -> relative PNG path."""
    parts = [
        f"# tokenlens sweep: {plain(m.model)} on {plain(m.task)}",
        "",
        plain(_header(m)),
        "",
        _md_table(COLUMNS, [[plain(cell) for cell in _cells(c)] for c in m.configs]),
        "",
        "## Recommendation",
        "",
    ]
    parts += [f"- {plain(line)}" for line in m.recommendation.lines]
    parts += ["", *[f"> note: {plain(n)}" for n in m.notes]]
    for slug, path in (figures or {}).items():
        parts += ["", f"![{plain(FIGURE_ALT.get(slug, slug))}]({quote(path, safe='/')})"]
    parts += ["", "## How to read this map", "", *[f"- {plain(t)}" for t in HOW_TO_READ], ""]
    return "\n".join(parts)


_HTML_METRICS = {
    3: "gain",
    4: "flips",
    5: "collateral_kl",
    6: "unintended_flips",
    7: "effect_per_param",
    8: "effect_per_collateral",
    9: "wall_s",
    10: "peak_mb",
}


def _html_row(c: ConfigSummary) -> str:
    """A configuration's row; each number cell carries its mean in ``data-value`` (``null``: not measured)."""
    cells = _cells(c)
    out = [
        f"<td>{_e(cells[0])}</td>",
        _num(c.trainable, ",", False, name="trainable"),
        _num(c.lr, "g", False, name="lr"),
    ]
    for index in range(3, len(cells) - 1):
        spread = c.spread(_HTML_METRICS[index])
        value = "null" if spread is None else repr(spread.mean)
        out.append(
            f'<td class="num" data-name="{_HTML_METRICS[index]}" data-value="{value}">{_e(cells[index])}</td>'
        )
    return f'<tr data-name="{_e(c.config)}">' + "".join(out) + f"<td>{_e(cells[-1])}</td></tr>"


def render_map_html(m: SweepMap, images: Mapping[str, bytes] | None = None) -> str:
    """One self-contained HTML5 page (no script, no network; figures as PNG ``data:`` URIs).

    Raises:
        ValueError: An image that is not PNG data.
    """
    figures = []
    for slug, png in (images or {}).items():
        if not png.startswith(PNG_MAGIC):
            raise ValueError(f"image {slug!r} is not PNG data")
        alt = FIGURE_ALT.get(slug, slug)
        data = base64.b64encode(png).decode("ascii")
        figures.append(
            f'<figure id="figure-{_e(slug)}"><img src="data:image/png;base64,{data}" '
            f'alt="{_e(alt)}"><figcaption>{_e(alt)}</figcaption></figure>'
        )
    rec = "".join(f"<li>{_e(line)}</li>" for line in m.recommendation.lines)
    notes = "".join(f'<p class="note">note: {_e(n)}</p>' for n in m.notes)
    sections = [
        ("map", "Map", _table([_e(c) for c in COLUMNS], [_html_row(c) for c in m.configs]) + notes),
        ("recommendation", "Recommendation", f"<ul>{rec}</ul>"),
        ("figures", "Figures", "".join(figures)),
        ("how-to-read", "How to read this map", "".join(f"<p>{_e(t)}</p>" for t in HOW_TO_READ)),
    ]
    body = "\n".join(f'<section id="{a}">\n<h2>{t}</h2>\n{c}\n</section>' for a, t, c in sections)
    title = f"tokenlens sweep: {m.model} on {m.task}"
    return (
        '<!DOCTYPE html>\n<html lang="en" dir="ltr">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{_e(title)}</h1>\n<p>{_e(_header(m))}</p></header>\n<main>\n{body}\n</main>\n"
        f'<footer class="note">tokenlens {_e(tokenlens.__version__)}</footer>\n</body>\n</html>\n'
    )

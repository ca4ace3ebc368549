"""A GitHub-flavoured Markdown report of a logit attribution, for pull requests and issues (rendering only).

The same sections as the HTML report (:mod:`tokenlens.report.html`), as compact tables. Token strings and
prompts are untrusted: each is its ``repr`` (whitespace and invisible characters visible) inside a code
span, so Markdown, HTML, ``$math$`` and ``@mentions`` in them stay literal text. A code span's fence is one
backtick longer than the longest run of backticks in the token, and inside a table ``|`` is written ``\\|``
(GFM splits cells before it parses code spans); ``repr`` doubles every backslash, so the escape cannot be
undone by one. Figures are linked by relative path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from urllib.parse import quote

import tokenlens
from tokenlens.attribution.lens import LogitLens
from tokenlens.attribution.result import LogitAttribution, SourceSplit
from tokenlens.causal.metrics import Metric
from tokenlens.causal.results import Ablation, EstimateCheck, NormAblation, Patching
from tokenlens.report.layout import (
    HOW_TO_READ,
    figure_alt,
    metric_words,
    plan_report,
    source_anchors,
    visible,
)
from tokenlens.report.terminal import show_token
from tokenlens.report.words import QUANTITY_WORDS, rounding_note

_EMPTY: Mapping = MappingProxyType({})


def code(text: str) -> str:
    """``text`` as a code span that nothing in it can break (outside tables: see :func:`token`)."""
    text = visible(text)
    if not text:
        return ""
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", text)), default=0))
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def token(text: str, table: bool = False) -> str:
    """A token (or prompt) as its repr in a code span; ``table``: with ``|`` escaped for a table cell.

    The escape is safe because a repr has an even number of backslashes before any ``|``, so the ``\\|``
    written here is always read as an escaped pipe.
    """
    span = code(show_token(text))
    return span.replace("|", "\\|") if table else span


def plain(text: str) -> str:
    """Untrusted text outside code spans, with every character Markdown, HTML or GFM act on escaped."""
    return re.sub(r"([\\`*_\[\]<>#|~$&!{}:@])", r"\\\1", visible(text))


def _p(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.4f}" if value >= 1e-3 or value == 0 else f"{value:.2e}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _metric(metric: Metric) -> str:
    target, contrast = metric_words(metric)
    vs = f" vs {code(contrast)}" if contrast is not None else ""
    return f"{metric.kind} of {code(target)}{vs} at position {metric.position}"


def _prediction(r: LogitAttribution) -> str:
    d, t = r.decomposition, r.target
    tokens = " ".join(f"**{token(x)}**" if j == r.position else token(x) for j, x in enumerate(r.tokens))
    lines = [
        f"- **prompt**: {token(r.prompt)}" + (" (wrapped with the chat template)" if r.chat else ""),
        f"- **tokens**: {tokens}",
        f"- **position**: {r.position} of {len(r.tokens)} (next token after {token(r.tokens[r.position])})",
        f"- **target**: {token(t.token)} (id {t.id}): logit {t.logit:.4f}, p {_p(t.prob)}, "
        f"log p {r.logprob:.3f}",
    ]
    explained = "logit"
    if r.contrast is not None:
        c = r.contrast
        lines.append(f"- **vs**: {token(c.token)} (id {c.id}): logit {c.logit:.4f}, p {_p(c.prob)}")
        explained = f"logit[{token(t.token)}] − logit[{token(c.token)}]"
    return "\n".join([*lines, f"- **explained**: {explained} = {d.logit:+.4f}"])


def _top(r: LogitAttribution) -> str:
    rows = [
        [str(k), token(s.token, True), str(s.id), f"{s.logit:.4f}", _p(s.prob)]
        for k, s in enumerate(r.top, 1)
    ]
    return _table(["rank", "token", "id", "logit", "p"], rows)


def _components(r: LogitAttribution) -> str:
    d = r.decomposition
    rows = [
        [name, f"{v:+.4f}", f"{100 * v / d.logit:+.0f}%" if abs(d.logit) > 1e-9 else ""]
        for name, v in d.as_dict().items()
    ]
    what, units = QUANTITY_WORDS[r.quantity]
    verdict = "✓ exact" if d.exact else "✗ **NOT EXACT**"
    return (
        f"Direct contributions to the {what} ({units}), in model order.\n\n"
        + _table(["component", "logit", "share"], rows)
        + f"\n\nCheck: sum of components {d.total:.6f}; model {what} {d.logit:.6f}; error {d.error:.1e} "
        f"(tolerance {d.tolerance:.1e}) {verdict}. Final-norm scale s = {d.scale:.5f}."
        + (f" {rounding_note(r)}" if d.model_value is not None else "")
    )


def _heads(r: LogitAttribution) -> str:
    c = r.heads.contributions
    rows = [
        [f"L{i}", *(f"{v:+.3f}" for v in row), f"{math.fsum(row):+.4f}", f"{float(r.heads.residual[i]):.1e}"]
        for i, row in enumerate(c.tolist())
    ]
    return _table(["layer", *(f"H{h}" for h in range(c.shape[1])), "Σ heads", "residual"], rows)


def _neurons(r: LogitAttribution) -> str:
    n = r.neurons
    rows = [
        [f"L{layer}.N{nid}", f"{v:+.4f}", f"{act:+.3f}"]
        for k, layer in enumerate(n.layers)
        for nid, v, act in zip(n.ids[k].tolist(), n.contributions[k].tolist(), n.activations[k].tolist())
    ]
    return f"Top {n.ids.shape[1]} neurons per dense MLP layer.\n\n" + _table(
        ["neuron", "logit", "activation"], rows
    )


def _experts(r: LogitAttribution) -> str:
    x = r.experts
    rows = [
        [f"L{layer}.E{eid}", f"{w:.3f}", f"{v:+.4f}"]
        for k, layer in enumerate(x.layers)
        for eid, w, v in zip(
            x.expert_ids[k].tolist(), x.router_weights[k].tolist(), x.contributions[k].tolist()
        )
    ]
    return _table(["expert", "router weight", "logit"], rows)


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
        + _table(["source", "token", "logit", "attention"], rows)
        + f"\n\nSplit residual: {split.residual:.1e}."
    )


def _lens(lens: LogitLens) -> str:
    positions = lens.positions.tolist()
    c = len(positions) - 1
    rows = [
        [
            depth,
            " ".join(
                f"{token(t, True)} {_p(p)}"
                for t, p in zip(lens.top_tokens[d][c], lens.top_probs[d, c].tolist())
            ),
            f"{float(lens.target_logit[d, c]):.4f}",
            _p(float(lens.target_prob[d, c])),
            str(int(lens.target_rank[d, c])),
        ]
        for d, depth in enumerate(lens.depths)
    ]
    return (
        f"Each depth's stream decoded through the final norm and head at position {positions[c]} "
        f"(token {token(lens.tokens[positions[c]])}); target {token(lens.target)}, rank 0 = top-1.\n\n"
        + _table(["depth", "top tokens (p)", "target logit", "p(target)", "rank"], rows)
    )


def _effects(a: Ablation, norms: NormAblation | None = None) -> str:
    frozen = "; final-norm scale frozen" if a.final_scale_frozen else ""
    rows = []
    for k, e in enumerate([*a.each, *([a.together] if a.together is not None else [])]):
        scales = []
        if norms is not None:
            inside = k < len(a.each)
            scales = [
                f"{float(norms.scales[k, a.metric.position]):.5f}" if inside else "",
                f"{float(norms.references[k]):.5f}" if inside else "",
            ]
        rows.append([e.name, *scales, f"{e.value:.4f}", f"{e.delta:+.4f}"])
    head = ["ablated", *(["scale at position", "replaced by"] if norms else []), "metric", "Δ (measured)"]
    return (
        f"**MEASURED** effects ({plain(a.method)}; replacement: {plain(a.reference)}{frozen}): "
        f"{_metric(a.metric)}; baseline {a.baseline:.4f}.\n\n" + _table(head, rows)
    )


def _patching(p: Patching) -> str:
    rows = [
        [
            e.name,
            f"{e.value:.4f}",
            f"{e.delta:+.4f}",
            "—" if math.isnan(e.restored) else f"{100 * e.restored:.0f}%",
        ]
        for e in sorted(p.effects, key=lambda e: -abs(e.delta))
    ]
    return (
        f"**MEASURED** effects of patching each site from the clean run into the corrupted run: "
        f"{_metric(p.metric)}; clean {p.clean:.4f}, corrupted {p.corrupted:.4f}.\n\n"
        + _table(["patched", "metric", "Δ (measured)", "restored"], rows)
    )


def _estimates(check: EstimateCheck) -> str:
    e = check.estimates
    rows = [
        [row.name, f"{row.estimate:+.4f}", f"{row.exact:+.4f}", "✓" if row.sign_agrees else "✗"]
        for row in check.rows
    ]
    return (
        f"**ESTIMATES** (attribution patching, first order) for {len(e.names)} sites from one backward pass "
        f"(reference: {plain(e.reference)}): {_metric(e.metric)}; baseline {e.baseline:.4f}. The top ones "
        "confirmed by exact patching (**MEASURED**).\n\n"
        + _table(["site", "estimate (ESTIMATE)", "exact (MEASURED)", "same sign"], rows)
    )


def _settings(r: LogitAttribution, settings: Mapping[str, str] | None) -> str:
    items = {
        "model": r.model,
        "dtype": r.dtype,
        "device": r.device,
        "tokenlens version": tokenlens.__version__,
    }
    for key, value in (settings or {}).items():
        if items.get(key) != str(value):
            items[f"{key} (requested)" if key in items else key] = str(value)
    return "\n".join(f"- **{plain(key)}**: {code(value)}" for key, value in items.items())


def _image(slug: str, path: str) -> str:
    return f"![{plain(figure_alt(slug))}]({quote(path, safe='/')})"


def render_markdown(
    result: LogitAttribution,
    *,
    lens: LogitLens | None = None,
    sections: Sequence[tuple[str, object]] = (),
    image_paths: Mapping[str, str] = _EMPTY,
    settings: Mapping[str, str] | None = None,
) -> str:
    """A GitHub-flavoured Markdown report of ``result``: the HTML report's sections as compact tables.

    Args:
        result: The attribution to show, with any finer splits it carries.
        lens: A logit lens to show, or ``None``.
        sections: Causal results as ``(key, result)``, keys as in :func:`tokenlens.report.html.render_html`.
        image_paths: Figure paths relative to the Markdown file, by slug (placed as in the HTML report).
        settings: Extra run settings to list (e.g. the command line), as in the HTML report.

    Returns:
        The Markdown text, ending with a newline.

    Raises:
        ValueError: An unknown section key or a section of the wrong type.
    """
    plan, homes = plan_report(result, lens, sections, list(image_paths))

    def block(anchor: str, title: str, content: str, level: str = "##") -> str:
        images = [_image(slug, image_paths[slug]) for slug in homes.get(anchor, ())]
        return "\n\n".join(part for part in (f"{level} {title}" if title else "", content, *images) if part)

    def sources() -> str:
        anchors = source_anchors(result)
        return "\n\n".join(block(a, "", _source_split(result, s)) for s, a in zip(result.sources, anchors))

    content = {
        "prediction": lambda _: _prediction(result),
        "top": lambda _: _top(result),
        "components": lambda _: _components(result),
        "heads": lambda _: _heads(result),
        "neurons": lambda _: _neurons(result),
        "experts": lambda _: _experts(result),
        "sources": lambda _: sources(),
        "lens": lambda _: _lens(lens),
        "ablation": _effects,
        "rope": _effects,
        "virtual": _effects,
        "norms": lambda value: _effects(value.ablation, value),
        "patching": _patching,
        "estimates": _estimates,
        "figures": lambda _: "",
        "settings": lambda _: _settings(result, settings),
        "how-to-read": lambda _: "\n\n".join(HOW_TO_READ),
    }
    t = result.target
    vs = "" if result.contrast is None else f" vs {token(result.contrast.token)}"
    parts = [f"# tokenlens report: {token(t.token)}{vs}"]
    parts += [block(s.anchor, s.title, content[s.key](s.value)) for s in plan]
    return "\n\n".join(parts) + "\n"

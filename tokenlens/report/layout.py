"""What a report contains and where things go, whatever its format (HTML or Markdown).

The causal section kinds, the stable section anchors in page order, which section each figure belongs to,
figure alt texts, the "how to read this report" text, and how untrusted text is made visible. The HTML and
Markdown renderers both use these, so the two formats always show the same sections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenlens.attribution.lens import LogitLens
from tokenlens.attribution.result import LogitAttribution
from tokenlens.causal.metrics import Metric
from tokenlens.causal.results import Ablation, EstimateCheck, NormAblation, Patching
from tokenlens.report.terminal import show_token

SECTION_KINDS: dict[str, tuple[type, str]] = {
    "ablation": (Ablation, "Ablation (measured)"),
    "rope": (Ablation, "RoPE ablation (measured)"),
    "virtual": (Ablation, "Attention to the virtual tokens cut (measured)"),
    "norms": (NormAblation, "Norm-scale ablation (measured)"),
    "patching": (Patching, "Activation patching (measured)"),
    "estimates": (EstimateCheck, "Attribution patching (estimates)"),
}
"""Causal section key -> (result type, title)."""


FIGURE_ALT = {
    "waterfall": "Waterfall: each component's direct contribution, accumulating to the explained logit",
    "layers": "Each layer's attention and MLP contribution to the explained logit",
    "heads": "Each attention head's contribution, layer by head",
    "neurons": "The top neurons' contributions",
    "experts": "The routed experts' contributions",
    "sources": "Each source position's contribution",
    "lens": "Logit lens: the target's probability and rank after each layer",
    "ablation": "The measured effect of ablating each site",
    "rope": "The measured effect of removing RoPE from each layer",
    "virtual": "The measured effect of cutting each layer's attention to the virtual tokens",
    "norms": "The measured effect of replacing each norm's scale",
    "patching": "The measured effect of patching each site from the clean run",
    "estimates": "First-order estimates next to the exactly measured effects",
}
"""Alt text (and caption) of a figure by slug; ``sources-L1.H0`` takes the ``sources`` text."""


_FIGURE_ALIASES = {"waterfall": "components", "layers": "components"}


HOW_TO_READ = (
    "Direct logit attribution. The residual stream at the explained position is a sum of writes: the token "
    "embedding plus every attention layer's and every MLP's output. With the final RMSNorm's scale s taken "
    "from the real forward pass, the target's logit is the sum over components c of u·(g ⊙ c)·s (u: the "
    "target's row of the output head, g: the final-norm weight), plus the head's bias if the model has one. "
    "Each row of the components table is one such term.",
    "The parts sum exactly to the model's logit (or to the logit difference against the contrast token), up "
    "to float32 rounding: the check line shows the sum, the model's own number, the error and the tolerance "
    "(1e-4 × max(1, largest |part|)). Finer splits (heads, neurons, experts, source positions) split one "
    "parent component further; their residual is what is left over (0 up to rounding unless the weights "
    "are quantised).",
    "Direct, measured, estimated. A direct contribution credits a component's own path to the logits only; "
    "its indirect effect through later layers is not in it. Sections marked MEASURED (ablation, activation "
    "patching, RoPE and norm-scale ablation) rerun the model with something changed and report the change "
    "of the metric, indirect effects included. Attribution patching gives first-order ESTIMATES of such "
    "changes from one backward pass; the exactly measured effect stands next to each confirmed one.",
    "Units. Contributions and logits are in logit units (natural-log odds before the softmax): +1 multiplies "
    "the target's odds against every other token by e. Probabilities lie between 0 and 1; log-probabilities "
    "are natural logs. A Δ is in the unit of its section's metric. Green pushes the target (or the metric) "
    "up, red down.",
    "Tokens are shown as Python string literals: ' Paris' has a leading space, '\\n' is a newline, and "
    "invisible or direction-changing characters appear as escapes such as '\\u200b'.",
)


def visible(text: str) -> str:
    """``text`` with every non-printable character (newline, zero-width, bidi control) as its escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def check_sections(sections: Sequence[tuple[str, object]]) -> list[tuple[str, str, object]]:
    """``(anchor id, key, result)`` per causal section; a repeated key gets ``ablation-2``, ``ablation-3``, ….

    Raises:
        ValueError: An unknown key, or a result of the wrong type for its key.
    """
    out, seen = [], {}
    for key, value in sections:
        if key not in SECTION_KINDS:
            raise ValueError(f"unknown report section {key!r}: use one of {', '.join(SECTION_KINDS)}")
        kind = SECTION_KINDS[key][0]
        if not isinstance(value, kind):
            raise ValueError(f"report section {key!r} needs a {kind.__name__}, got {type(value).__name__}")
        seen[key] = seen.get(key, 0) + 1
        out.append((key if seen[key] == 1 else f"{key}-{seen[key]}", key, value))
    return out


def source_anchors(result: LogitAttribution) -> list[str]:
    """One unique anchor per source split: ``sources-L1.H0``, ``sources-L2`` (``…-2`` when repeated)."""
    out: list[str] = []
    for split in result.sources:
        anchor = f"sources-{split.name}"
        out.append(anchor if anchor not in out else f"{anchor}-{out.count(anchor) + 1}")
    return out


@dataclass(frozen=True)
class Section:
    """One section of a report, in page order.

    Attributes:
        anchor: Its stable id (``heads``, ``ablation-2``).
        title: Its heading.
        key: What renders it: ``prediction``, ``top``, ``components``, ``heads``, ``neurons``, ``experts``,
            ``sources``, ``lens``, a causal key (:data:`SECTION_KINDS`), ``figures``, ``settings`` or
            ``how-to-read``.
        value: The causal result it shows (``None`` for the others).
    """

    anchor: str
    title: str
    key: str
    value: object = None


def plan_report(
    result: LogitAttribution,
    lens: LogitLens | None,
    sections: Sequence[tuple[str, object]],
    slugs: Sequence[str],
) -> tuple[list[Section], dict[str, list[str]]]:
    """The sections a report of ``result`` has, in page order, and each figure's section (by anchor).

    Args:
        result: The attribution shown.
        lens: A logit lens shown in its own section, or ``None``.
        sections: Causal results as ``(key, result)``, checked by :func:`check_sections`.
        slugs: The figures' slugs (see :func:`figure_homes`).

    Raises:
        ValueError: An unknown causal key or a result of the wrong type for its key.
    """
    plan = [
        Section("prediction", "Prediction", "prediction"),
        Section("top", "Top alternatives", "top"),
        Section("components", "Direct logit attribution", "components"),
    ]
    if result.heads is not None:
        plan.append(Section("heads", "Attention heads", "heads"))
    if result.neurons is not None and result.neurons.layers:
        plan.append(Section("neurons", "Top MLP neurons", "neurons"))
    if result.experts is not None and result.experts.layers:
        plan.append(Section("experts", "Routed experts", "experts"))
    if result.sources:
        plan.append(Section("sources", "Source positions", "sources"))
    if lens is not None:
        plan.append(Section("lens", "Logit lens", "lens"))
    plan += [
        Section(anchor, SECTION_KINDS[key][1], key, value) for anchor, key, value in check_sections(sections)
    ]
    present = [s.anchor for s in plan] + (source_anchors(result) if result.sources else [])
    homes = figure_homes(slugs, present)
    if "figures" in homes:
        plan.append(Section("figures", "Figures", "figures"))
    plan += [
        Section("settings", "Settings", "settings"),
        Section("how-to-read", "How to read this report", "how-to-read"),
    ]
    return plan, homes


def figure_homes(slugs: Sequence[str], present: Sequence[str]) -> dict[str, list[str]]:
    """Each figure's section: its own (``heads``, ``sources-L1.H0``, ``ablation``), its prefix's
    (``sources-…`` -> ``sources``), ``components`` for ``waterfall`` / ``layers``, else ``figures``."""
    homes: dict[str, list[str]] = {}
    for slug in slugs:
        candidates = (_FIGURE_ALIASES.get(slug, slug), slug.split("-", 1)[0])
        home = next((c for c in candidates if c in present), "figures")
        homes.setdefault(home, []).append(slug)
    return homes


def figure_alt(slug: str) -> str:
    """Alt text for a figure from its slug (``sources-L1.H0`` -> the sources text, naming ``L1.H0``)."""
    base, _, detail = slug.partition("-")
    text = FIGURE_ALT.get(slug) or FIGURE_ALT.get(base) or f"Figure {slug}"
    return f"{text} ({detail})" if detail and slug not in FIGURE_ALT else text


def metric_words(metric: Metric) -> tuple[str, str | None]:
    """A metric's target and contrast (``None`` without one) as token literals, or ``id N`` without text."""
    target = show_token(metric.target_text) if metric.target_text is not None else f"id {metric.target_id}"
    contrast = None
    if metric.contrast_id is not None:
        contrast = (
            show_token(metric.contrast_text)
            if metric.contrast_text is not None
            else f"id {metric.contrast_id}"
        )
    return target, contrast

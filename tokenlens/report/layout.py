"""What an attribution report contains and where things go, whatever its format (HTML or Markdown).

A report is a list of sections in page order (:func:`plan_report`): the attribution's own parts
(prediction, alternatives, components, and each finer split it carries), then the sections given as
``(key, result)`` pairs (:mod:`tokenlens.report.sections`), then figures without a home, the settings and
how to read it. Each figure goes to the section its slug names (:func:`figure_homes`). The HTML and
Markdown renderers both follow the plan, so the two formats always show the same sections in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tokenlens.attribution.result import LogitAttribution
from tokenlens.report.sections import SectionKind, check_sections, section_kinds
from tokenlens.version import __version__

FIGURE_ALT = {
    "waterfall": "Waterfall: each component's direct contribution, accumulating to the explained logit",
    "layers": "Each layer's attention and MLP contribution to the explained logit",
    "heads": "Each attention head's contribution, layer by head",
    "neurons": "The top neurons' contributions",
    "experts": "The routed experts' contributions",
    "sources": "Each source position's contribution",
}
"""Alt text (and caption) of the attribution's own figures by slug; ``sources-L1.H0`` takes the ``sources``
text. A section kind's figure takes its :attr:`~tokenlens.report.sections.SectionKind.figure_alt`."""

_FIGURE_ALIASES = {"waterfall": "components", "layers": "components"}


@dataclass(frozen=True)
class Section:
    """One section of a report, in page order.

    Attributes:
        anchor: Its stable id (``heads``, ``ablation-2``).
        title: Its heading.
        key: What renders it: ``prediction``, ``top``, ``components``, ``heads``, ``neurons``, ``experts``,
            ``sources``, ``figures``, ``settings``, ``how-to-read``, or a section kind's key.
        kind: The section kind, for a section given as ``(key, result)`` (else ``None``).
        value: Its result (``None`` for the attribution's own parts).
    """

    anchor: str
    title: str
    key: str
    kind: SectionKind | None = None
    value: object = None


def plan_report(
    result: LogitAttribution, sections: Sequence[tuple[str, object]], slugs: Sequence[str]
) -> tuple[list[Section], dict[str, list[str]]]:
    """The sections a report of ``result`` has, in page order, and each figure's section (by anchor).

    Args:
        result: The attribution shown.
        sections: Results shown beside it as ``(key, result)``, checked by
            :func:`~tokenlens.report.sections.check_sections`.
        slugs: The figures' slugs (see :func:`figure_homes`).

    Raises:
        ValueError: An unknown section key or a result of the wrong type for its key.
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
    plan += [
        Section(anchor, kind.title, kind.key, kind, value) for anchor, kind, value in check_sections(sections)
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


def source_anchors(result: LogitAttribution) -> list[str]:
    """One unique anchor per source split: ``sources-L1.H0``, ``sources-L2`` (``…-2`` when repeated)."""
    out: list[str] = []
    for split in result.sources:
        anchor = f"sources-{split.name}"
        out.append(anchor if anchor not in out else f"{anchor}-{out.count(anchor) + 1}")
    return out


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
    alts = FIGURE_ALT | {kind.key: kind.figure_alt for kind in section_kinds()}
    base, _, detail = slug.partition("-")
    text = alts.get(slug) or alts.get(base) or f"Figure {slug}"
    return f"{text} ({detail})" if detail and slug not in alts else text


def split_rows(result: LogitAttribution, split: str) -> list[tuple[str, str, float, float]]:
    """``(name, parent, contribution, extra)`` per row of a split of the MLPs, in layer order: ``neurons``
    (``L1.N7``; extra: the activation) or ``experts`` (``L1.E3``; extra: the router weight)."""
    if split == "neurons":
        parts, letter = result.neurons, "N"
        ids, extra = parts.ids, parts.activations
    else:
        parts, letter = result.experts, "E"
        ids, extra = parts.expert_ids, parts.router_weights
    return [
        (f"L{layer}.{letter}{i}", f"L{layer}.mlp", value, x)
        for k, layer in enumerate(parts.layers)
        for i, value, x in zip(ids[k].tolist(), parts.contributions[k].tolist(), extra[k].tolist())
    ]


def settings_items(
    result: LogitAttribution, settings: Mapping[str, str] | None, *, detail: bool
) -> dict[str, str]:
    """The settings section: what the result says about its run (model, dtype, device, tokenlens version;
    with ``detail`` also the chat template and the explained position), then each extra setting given (e.g.
    the command line). A setting that repeats a shown value is not shown twice; one that differs is shown
    as ``key (requested)``."""
    items = {"model": result.model, "dtype": result.dtype, "device": result.device}
    items["tokenlens version"] = __version__
    if detail:
        items["chat template"] = "yes" if result.chat else "no"
        items["explained position"] = str(result.position)
    for key, value in (settings or {}).items():
        if items.get(key) != str(value):
            items[f"{key} (requested)" if key in items else key] = str(value)
    return items

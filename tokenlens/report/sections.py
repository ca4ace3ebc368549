"""Section kinds: the results a report can show beside an attribution, each described by one record.

An attribution report has fixed parts read off the :class:`~tokenlens.attribution.result.LogitAttribution`
(prediction, components, heads, sources, …) and any number of *sections*: other results about the same
prompt, target and position, given as ``(key, result)`` pairs — a logit lens, an ablation, a patching, … .
Everything a report needs to know about one key is a :class:`SectionKind`: its result type, its title and
figure caption, and one renderer per format. The JSON writer, the terminal view, the HTML and Markdown
reports and the figures all look the key up here (:func:`section_kind`), so a new kind of result is one
record (:func:`register_section`) plus its renderers, in a module of :mod:`tokenlens.report.kinds`.

Renderers only read results; the experiments that produce them are run by the command line
(``tokenlens/cli/causal_options.py``) or by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import RenderableType

from tokenlens.attribution.result import LogitAttribution, LogitLens
from tokenlens.causal.grid_results import PatchGrids
from tokenlens.causal.results import Ablation, EstimateCheck, NormAblation, Patching
from tokenlens.report.kinds import ablation, estimates, grids, lens, norms, patching
from tokenlens.report.kinds.common import effect_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class SectionKind:
    """Everything the reports need to show one kind of section.

    Attributes:
        key: The section's key: its JSON key, its HTML anchor (``ablation``; a repeat gets ``ablation-2``)
            and its figure's slug.
        result_type: The type of result it shows; another type under this key is refused.
        title: Its heading in the HTML and Markdown reports (say MEASURED or ESTIMATES where it applies).
        figure_alt: The alt text and caption of its figure.
        to_dict: The result's JSON form: plain numbers, strings, lists and dicts (no NaN).
        to_table: Its terminal view (a rich renderable), given the result and the attribution it sits
            beside.
        to_html: Its HTML section content, given the same; untrusted text escaped (use
            :mod:`tokenlens.report.kit.html`).
        to_markdown: Its Markdown section content, given the same (use :mod:`tokenlens.report.kit.markdown`).
        to_figure: Its matplotlib figure, given the result, or ``None`` for none (import matplotlib inside
            the function: JSON and terminal reports never draw).
        label: Its name in the HTML page's table of contents ("": its anchor).
    """

    key: str
    result_type: type
    title: str
    figure_alt: str
    to_dict: Callable[[Any], dict[str, Any]]
    to_table: Callable[[Any, LogitAttribution], RenderableType]
    to_html: Callable[[Any, LogitAttribution], str]
    to_markdown: Callable[[Any, LogitAttribution], str]
    to_figure: Callable[[Any], Figure] | None = None
    label: str = ""


_KINDS: dict[str, SectionKind] = {}


def register_section(kind: SectionKind) -> SectionKind:
    """Make ``kind`` known to every report; return it.

    Raises:
        ValueError: A kind with the same key is registered already.
    """
    if kind.key in _KINDS:
        raise ValueError(f"a report section kind {kind.key!r} is registered already")
    _KINDS[kind.key] = kind
    return kind


def section_kind(key: str) -> SectionKind:
    """The kind registered under ``key``.

    Raises:
        ValueError: No kind has that key.
    """
    if key not in _KINDS:
        raise ValueError(f"unknown report section {key!r}: use one of {', '.join(_KINDS)}")
    return _KINDS[key]


def section_kinds() -> tuple[SectionKind, ...]:
    """Every registered kind, in registration order."""
    return tuple(_KINDS.values())


def check_sections(sections: Sequence[tuple[str, object]]) -> list[tuple[str, SectionKind, object]]:
    """``(anchor, kind, result)`` per section; a repeated key's anchors are ``ablation-2``, ``ablation-3``, ….

    Raises:
        ValueError: An unknown key, or a result of the wrong type for its key.
    """
    out, seen = [], {}
    for key, value in sections:
        kind = section_kind(key)
        if not isinstance(value, kind.result_type):
            raise ValueError(
                f"report section {key!r} needs a {kind.result_type.__name__}, got {type(value).__name__}"
            )
        seen[key] = seen.get(key, 0) + 1
        out.append((key if seen[key] == 1 else f"{key}-{seen[key]}", kind, value))
    return out


def with_lens(lens: LogitLens | None, sections: Sequence[tuple[str, object]]) -> list[tuple[str, object]]:
    """``sections`` after a ``("lens", lens)`` section when ``lens`` is given (the renderers' ``lens=``)."""
    return ([("lens", lens)] if lens is not None else []) + list(sections)


# fmt: off
BUILT_IN = (  # fields in order: key, result type, title, figure alt, renderers (kinds module), label
    SectionKind(
        "lens", LogitLens, "Logit lens", "Logit lens: the target's probability and rank after each layer",
        lens.to_dict, lens.to_table, lens.to_html, lens.to_markdown, lens.to_figure, "logit lens",
    ),
    SectionKind(
        "ablation", Ablation, "Ablation (measured)", "The measured effect of ablating each site",
        ablation.to_dict, ablation.to_table, ablation.to_html, ablation.to_markdown, effect_figure,
    ),
    SectionKind(
        "rope", Ablation, "RoPE ablation (measured)", "The measured effect of removing RoPE from each layer",
        ablation.to_dict, ablation.to_table, ablation.to_html, ablation.to_markdown, effect_figure,
    ),
    SectionKind(
        "virtual", Ablation, "Attention to the virtual tokens cut (measured)",
        "The measured effect of cutting each layer's attention to the virtual tokens",
        ablation.to_dict, ablation.to_table, ablation.to_html, ablation.to_markdown, effect_figure,
    ),
    SectionKind(
        "norms", NormAblation, "Norm-scale ablation (measured)",
        "The measured effect of replacing each norm's scale",
        norms.to_dict, norms.to_table, norms.to_html, norms.to_markdown, effect_figure,
    ),
    SectionKind(
        "patching", Patching, "Activation patching (measured)",
        "The measured effect of patching each site from the clean run",
        patching.to_dict, patching.to_table, patching.to_html, patching.to_markdown, effect_figure,
    ),
    SectionKind(
        "estimates", EstimateCheck, "Attribution patching (estimates)",
        "First-order estimates next to the exactly measured effects",
        estimates.to_dict, estimates.to_table, estimates.to_html, estimates.to_markdown, effect_figure,
    ),
    SectionKind(
        "grid", PatchGrids, "Patching grid (measured)",
        "The share of the gap restored by patching each layer or head at each prompt position",
        grids.to_dict, grids.to_table, grids.to_html, grids.to_markdown, grids.to_figure, "patching grid",
    ),
    SectionKind(
        "trace", PatchGrids, "Causal trace (measured)",
        "The share of the noised run's drop restored by restoring each layer at each prompt position",
        grids.to_dict, grids.to_table, grids.to_html, grids.to_markdown, grids.to_figure, "causal trace",
    ),
)
# fmt: on
"""The kinds tokenlens ships: each module of :mod:`tokenlens.report.kinds` renders one result type."""

for _kind in BUILT_IN:
    register_section(_kind)

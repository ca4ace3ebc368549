"""tokenlens: explain and check a causal language model's single token choices.

The residual stream of a pre-norm decoder is a sum of writes (embedding, every attention layer, every MLP),
so with the final norm's scale frozen, a target token's logit splits exactly into per-component terms.
tokenlens captures those writes with hooks on the real Hugging Face modules and reports the split.
Causal effects (ablation, patching, attribution patching, norm and RoPE ablation) are in
:mod:`tokenlens.causal`.

Importing this package is cheap: torch and transformers load only when a model-facing name is used.

Base vs fine-tune: :func:`pair_models` and :func:`load_probes` (or :func:`prompt_probes`), then
``tokenlens.diff_models(pair, probes)`` gives a ``DiffReport`` (``report.passed`` is the check's verdict) and
``tokenlens.check(pair, probes)`` is ``tokenlens check`` (the same report, causal effects off by default);
:func:`train` post-trains a loaded model. ``diff_models`` is :func:`tokenlens.diff.diff` under a name that
does not shadow the :mod:`tokenlens.diff` subpackage (``tokenlens.diff.diff`` keeps working).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokenlens import display
from tokenlens.errors import TokenlensError
from tokenlens.version import __version__

__all__ = [
    "TokenlensError",
    "load",
    "LoadedModel",
    "attribute",
    "attribute_batch",
    "attribute_positions",
    "attribute_sequence",
    "SequenceAttribution",
    "AttributionRequest",
    "patching_grids",
    "trace",
    "locate",
    "PatchGrids",
    "Location",
    "logit_lens",
    "LogitLens",
    "decompose_logit",
    "LogitAttribution",
    "Decomposition",
    "train",
    "TrainResult",
    "pair_models",
    "load_probes",
    "prompt_probes",
    "DiffOptions",
    "DiffReport",
    "diff_models",
    "check",
    "explore",
    "ZOO",
    "DEFAULT_MODEL",
    "__version__",
]

_LAZY = {
    "load": "tokenlens.models.loading",
    "LoadedModel": "tokenlens.models.loading",
    "ZOO": "tokenlens.models.zoo",
    "DEFAULT_MODEL": "tokenlens.models.zoo",
    "attribute": "tokenlens.attribution.direct",
    "attribute_batch": "tokenlens.attribution.direct",
    "attribute_positions": "tokenlens.attribution.positions",
    "attribute_sequence": "tokenlens.attribution.sequence",
    "SequenceAttribution": "tokenlens.attribution.sequence_result",
    "AttributionRequest": "tokenlens.attribution.request",
    "patching_grids": "tokenlens.causal.grids",
    "trace": "tokenlens.causal.tracing",
    "locate": "tokenlens.causal.locate",
    "PatchGrids": "tokenlens.causal.grid_results",
    "Location": "tokenlens.causal.grid_results",
    "logit_lens": "tokenlens.attribution.lens",
    "LogitLens": "tokenlens.attribution.result",
    "decompose_logit": "tokenlens.attribution.direct",
    "LogitAttribution": "tokenlens.attribution.result",
    "Decomposition": "tokenlens.attribution.result",
    "train": "tokenlens.training.trainer",
    "TrainResult": "tokenlens.training.trainer",
    "pair_models": "tokenlens.diff.pairing",
    "load_probes": "tokenlens.diff.probes",
    "prompt_probes": "tokenlens.diff.probes",
    "DiffOptions": "tokenlens.diff.engine",
    "DiffReport": "tokenlens.diff.result",
    "check": "tokenlens.diff.check",
    "explore": "tokenlens.live",
}

_ALIASES = {"diff_models": ("tokenlens.diff.engine", "diff")}
"""Top-level names that are another module's object under a different name: ``tokenlens.diff`` is the
subpackage, so its ``diff`` function is ``tokenlens.diff_models``."""

_SUBPACKAGES = ("causal", "diff")
"""Subpackages reachable as attributes without importing them first: ``tokenlens.diff.diff(pair, probes)``."""

# In a notebook, an attribution shows itself as the report's tables (rendered only when first displayed).
display.register_html(
    "tokenlens.attribution.result.LogitAttribution", "tokenlens.report.notebook:attribution_html"
)
display.register_html(
    "tokenlens.attribution.sequence_result.SequenceAttribution",
    "tokenlens.report.sequence_html:sequence_html_fragment",
)
display.register_html("tokenlens.causal.grid_results.PatchGrids", "tokenlens.report.notebook:grids_html")
display.register_html("tokenlens.causal.grid_results.Location", "tokenlens.report.notebook:location_html")

if TYPE_CHECKING:  # pragma: no cover
    from tokenlens.attribution.direct import attribute, attribute_batch, decompose_logit
    from tokenlens.attribution.lens import logit_lens
    from tokenlens.attribution.positions import attribute_positions
    from tokenlens.attribution.request import AttributionRequest
    from tokenlens.attribution.result import Decomposition, LogitAttribution, LogitLens
    from tokenlens.attribution.sequence import attribute_sequence
    from tokenlens.attribution.sequence_result import SequenceAttribution
    from tokenlens.causal.grid_results import Location, PatchGrids
    from tokenlens.causal.grids import patching_grids
    from tokenlens.causal.locate import locate
    from tokenlens.causal.tracing import trace
    from tokenlens.diff.check import check
    from tokenlens.diff.engine import DiffOptions
    from tokenlens.diff.engine import diff as diff_models
    from tokenlens.diff.pairing import pair_models
    from tokenlens.diff.probes import load_probes, prompt_probes
    from tokenlens.diff.result import DiffReport
    from tokenlens.live import explore
    from tokenlens.models.loading import LoadedModel, load
    from tokenlens.models.zoo import DEFAULT_MODEL, ZOO
    from tokenlens.training.trainer import TrainResult, train


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _ALIASES:
        import importlib

        module, attribute = _ALIASES[name]
        return getattr(importlib.import_module(module), attribute)
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'tokenlens' has no attribute {name!r}")

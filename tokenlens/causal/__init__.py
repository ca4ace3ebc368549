"""Causal effects: what changes when a component is ablated, patched, or run without its norm scale or RoPE.

Direct logit attribution (:mod:`tokenlens.attribution`) splits a logit exactly over the direct paths of
the residual-stream writes. The effects here are measured instead, by intervening on the model's own
forward pass with hooks: they include each component's indirect effect through later layers, and they
cover the parts with no additive share (norm scales, RoPE). Patching grids and causal tracing resolve
effects by layer *and* prompt position, and :func:`locate` turns a trace into where to edit. Attribution
patching gives cheap first-order estimates of all patches at once, labelled as estimates.

Public entry points take a :class:`~tokenlens.models.loading.LoadedModel` and prompt text; each has a
lower-level twin taking ``(model, spec, input_ids)``.
"""

from tokenlens.causal.activation_patching import patch, patching
from tokenlens.causal.effects import ablate, ablation
from tokenlens.causal.estimates import (
    attribution_patch,
    attribution_patching,
    check_estimates,
    estimate_check,
)
from tokenlens.causal.grid_results import Location, PatchGrid, PatchGrids, TraceSetup
from tokenlens.causal.grids import patch_grids, patching_grids
from tokenlens.causal.locate import locate, location_from
from tokenlens.causal.metrics import metric_for
from tokenlens.causal.nonadditive import (
    ablate_norms,
    ablate_rope,
    ablate_virtual,
    norm_ablation,
    rope_ablation,
    virtual_ablation,
)
from tokenlens.causal.results import (
    METRICS,
    Ablation,
    AttributionPatching,
    CheckedEstimate,
    Effect,
    EstimateCheck,
    Metric,
    NormAblation,
    PatchEffect,
    Patching,
)
from tokenlens.causal.sites import Site, expert_sites, head_sites, layer_sites, parse_sites
from tokenlens.causal.tracing import causal_trace, trace

__all__ = [
    "METRICS",
    "Ablation",
    "AttributionPatching",
    "CheckedEstimate",
    "Effect",
    "EstimateCheck",
    "Location",
    "Metric",
    "NormAblation",
    "PatchEffect",
    "PatchGrid",
    "PatchGrids",
    "Patching",
    "Site",
    "TraceSetup",
    "ablate",
    "ablate_norms",
    "ablate_rope",
    "ablate_virtual",
    "ablation",
    "attribution_patch",
    "attribution_patching",
    "causal_trace",
    "check_estimates",
    "estimate_check",
    "expert_sites",
    "head_sites",
    "layer_sites",
    "locate",
    "location_from",
    "metric_for",
    "norm_ablation",
    "parse_sites",
    "patch",
    "patch_grids",
    "patching",
    "patching_grids",
    "rope_ablation",
    "trace",
    "virtual_ablation",
]

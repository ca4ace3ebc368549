"""Exact causal effects by ablation: replace components' activations and measure the model's own forward.

Direct logit attribution credits each component only with its direct path to the logits. Its total
effect, including what it does through later layers, is measured by changing it and rerunning. Ablation
replaces a site's activation by zero, by its mean over reference prompts, or by its value on another prompt
(resampling), and reports the metric change, per site and for the set together. (Activation patching
between two runs is in :mod:`tokenlens.causal.activation_patching`.)

Every number is a measured effect of an intervention, not a share of an additive split: the effects of
several sites need not sum to the effect of ablating them together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack

import torch
from torch import nn

from tokenlens.causal.interventions import Edit, constant, record, replace, rescale_norm, zeroed
from tokenlens.causal.metrics import Metric, encode, metric_for, run_metric
from tokenlens.causal.results import Ablation, Effect
from tokenlens.causal.sites import Site, layer_sites, parse_sites
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import ArchitectureSpec

MODES = ("zero", "mean", "resample")
Context = Callable[[], AbstractContextManager]


def measure(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    metric: Metric,
    edits: Mapping[Site, Edit] | None = None,
    *,
    contexts: Sequence[Context] = (),
) -> float:
    """The metric of one forward pass with ``edits`` applied and the ``contexts`` (hook factories) entered."""
    with torch.no_grad(), ExitStack() as stack:
        stack.enter_context(replace(model, spec, edits or {}))
        for context in contexts:
            stack.enter_context(context())
        return float(run_metric(model, spec, input_ids, metric))


def baseline_and_scale(
    model: nn.Module, spec: ArchitectureSpec, input_ids: torch.Tensor, metric: Metric
) -> tuple[float, torch.Tensor]:
    """The unmodified metric and the final norm's scale ``(1, seq)`` on that run."""
    seen: list[torch.Tensor] = []
    value = measure(model, spec, input_ids, metric, contexts=[lambda: _final_scale(model, spec, seen=seen)])
    return value, seen[-1]


def _final_scale(
    model: nn.Module,
    spec: ArchitectureSpec,
    fixed: torch.Tensor | None = None,
    seen: list[torch.Tensor] | None = None,
) -> AbstractContextManager:
    """Hooks on the final norm: record its scale into ``seen``; hold it at ``fixed`` ``(1, seq)`` if given."""
    norm = spec.module(model, spec.final_norm)
    return rescale_norm(norm, None if fixed is None else (lambda s: fixed), seen)


def record_values(
    model: nn.Module, spec: ArchitectureSpec, input_ids: torch.Tensor, sites: Sequence[Site]
) -> dict[str, torch.Tensor]:
    """Each site's activation ``(1, seq, width)`` on one unmodified forward pass of ``input_ids``."""
    device = spec.module(model, spec.embed).weight.device
    with torch.no_grad(), record(model, spec, sites) as values:
        model(input_ids=input_ids.to(device), use_cache=False, logits_to_keep=1)
    return values


def same_length(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Refuse two ``(1, seq)`` prompts of different token lengths, naming ``what`` needs them equal."""
    if a.shape[1] != b.shape[1]:
        raise TokenlensError(
            f"{what} pairs positions one to one, so both prompts need the same token length "
            f"(got {a.shape[1]} and {b.shape[1]} tokens)"
        )


def ablation_edits(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    sites: Sequence[Site],
    *,
    mode: str = "zero",
    reference_ids: Sequence[torch.Tensor] = (),
) -> tuple[dict[Site, Edit], str]:
    """The replacement for each site under an ablation ``mode``, and a description of it.

    ``zero`` sets the activation to zero. ``mean`` averages it over ``reference_ids``: per position when
    every reference prompt has ``input_ids``' token length, otherwise over all positions of all reference
    prompts (one vector used at every position). ``resample`` takes it from exactly one reference prompt
    of the same token length.

    Raises:
        TokenlensError: Unknown mode, no reference prompt for ``mean``, not exactly one reference prompt or
            a different token length for ``resample``.
    """
    if mode == "zero":
        return {site: zeroed() for site in sites}, "zeros"
    if mode == "resample":
        if len(reference_ids) != 1:
            raise TokenlensError(
                f"resample ablation takes exactly one other prompt, got {len(reference_ids)}"
            )
        same_length(input_ids, reference_ids[0], "resample ablation")
        values = record_values(model, spec, reference_ids[0], sites)
        return {s: constant(values[s.name]) for s in sites}, "resampled from another prompt"
    if mode != "mean":
        raise TokenlensError(f"unknown ablation {mode!r}: use one of {', '.join(MODES)}")
    if not reference_ids:
        raise TokenlensError("mean ablation needs reference prompts to average over")
    runs = [record_values(model, spec, ids, sites) for ids in reference_ids]
    n = len(runs)
    if all(ids.shape[1] == input_ids.shape[1] for ids in reference_ids):
        means = {s: torch.stack([r[s.name].float() for r in runs]).mean(0) for s in sites}  # (1, seq, w)
        return {s: constant(means[s]) for s in sites}, f"mean over {n} reference prompts, per position"
    total = sum(ids.shape[1] for ids in reference_ids)
    means = {s: torch.cat([r[s.name].float() for r in runs], dim=1).mean((0, 1)) for s in sites}  # (w,)
    return {s: constant(means[s]) for s in sites}, f"mean over all {total} positions of {n} reference prompts"


def ablate(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    metric: Metric,
    sites: Sequence[Site],
    *,
    mode: str = "zero",
    reference_ids: Sequence[torch.Tensor] = (),
    each: bool = True,
    together: bool = True,
    freeze_final_scale: bool = False,
) -> Ablation:
    """Ablate ``sites`` of ``input_ids`` ``(1, seq)`` (see :func:`ablation_edits`) and measure the metric.

    Args:
        model, spec: The model (bare or PEFT-wrapped) and its spec.
        input_ids: ``(1, seq)`` the prompt.
        metric: What to measure.
        sites: What to ablate (:func:`~tokenlens.causal.sites.parse_sites`).
        mode: ``zero``, ``mean`` or ``resample``.
        reference_ids: ``(1, seq_i)`` prompts for ``mean`` (several) or ``resample`` (one).
        each: Measure each site ablated alone.
        together: Measure all sites ablated at once.
        freeze_final_scale: Hold the final norm's scale at its unmodified value in the ablated runs.

    Raises:
        TokenlensError: Bad mode or reference prompts (see :func:`ablation_edits`).
    """
    edits, reference = ablation_edits(model, spec, input_ids, sites, mode=mode, reference_ids=reference_ids)
    baseline, scale = baseline_and_scale(model, spec, input_ids, metric)
    contexts = [lambda: _final_scale(model, spec, fixed=scale)] if freeze_final_scale else []

    def effect(name: str, chosen: Mapping[Site, Edit]) -> Effect:
        value = measure(model, spec, input_ids, metric, chosen, contexts=contexts)
        return Effect(name, value, value - baseline)

    return Ablation(
        metric=metric,
        method=mode,
        reference=reference,
        sites=tuple(s.name for s in sites),
        baseline=baseline,
        each=tuple(effect(s.name, {s: edits[s]}) for s in sites) if each else (),
        together=effect("together", edits) if together else None,
        final_scale_frozen=freeze_final_scale,
    )


def resolve_sites(
    loaded: LoadedModel, sites: str | Sequence[str] | None, default: Callable = layer_sites
) -> tuple[Site, ...]:
    """Parse site names for ``loaded`` (``default(model, spec)`` when ``None``)."""
    if sites is None:
        return default(loaded.model, loaded.spec)
    return parse_sites(sites, loaded.model, loaded.spec)


def ablation(
    loaded: LoadedModel,
    prompt: str,
    sites: str | Sequence[str],
    *,
    mode: str = "zero",
    reference_prompts: Sequence[str] = (),
    metric: Metric | None = None,
    chat: bool = False,
    each: bool = True,
    together: bool = True,
    freeze_final_scale: bool = False,
) -> Ablation:
    """Ablate named components on ``prompt`` and measure the metric (see :func:`ablate`).

    Args:
        loaded: The model.
        prompt: The prompt.
        sites: Component names, e.g. ``"L3.H0,L3.H5"``, ``"L0-2.mlp"``, ``"L1.N7"``.
        mode: ``zero``, ``mean`` (over ``reference_prompts``: per position when all have the prompt's token
            length, else one mean over all their positions) or ``resample`` (from the one prompt in
            ``reference_prompts``, which must have the same token length).
        reference_prompts: Prompts for ``mean`` / ``resample`` (chat-wrapped like ``prompt`` when ``chat``).
        metric: From :func:`~tokenlens.causal.metrics.metric_for`; default: the logit of the top-1 token at
            the last position.
        chat: Wrap prompts as user turns with the chat template.
        each / together / freeze_final_scale: See :func:`ablate`.

    Raises:
        TokenlensError: Any bad input; the message is one line.
    """
    ids = encode(loaded, prompt, chat=chat)
    metric = metric or metric_for(loaded, ids[0].tolist())
    chosen = resolve_sites(loaded, sites)
    references = [encode(loaded, p, chat=chat) for p in reference_prompts]
    return ablate(
        loaded.model,
        loaded.spec,
        ids,
        metric,
        chosen,
        mode=mode,
        reference_ids=references,
        each=each,
        together=together,
        freeze_final_scale=freeze_final_scale,
    )

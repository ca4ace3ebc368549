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

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from tokenlens.causal.interventions import (
    Edit,
    constant,
    record,
    replace,
    replace_rows,
    rescale_norm,
    rescale_norm_rows,
    without_rope_rows,
    zeroed,
)
from tokenlens.causal.metrics import Metric, encode, metric_for, run_metric
from tokenlens.causal.results import Ablation, Effect
from tokenlens.causal.sites import Site, layer_sites, parse_sites
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import ArchitectureSpec, virtual_tokens

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


@dataclass(frozen=True)
class Variant:
    """One intervened run of a prompt, measured with others in shared forward passes (:func:`measure_all`).

    Attributes:
        layer: The first decoder layer it changes (0 when it changes the embedding).
        edits: Site replacements (:func:`~tokenlens.causal.interventions.replace`); no expert sites.
        rope: Layers whose attention runs without rotary positions.
        norms: ``(norm module, scale)``: the norm's scale held at that value at every position.
    """

    layer: int
    edits: Mapping[Site, Edit] = field(default_factory=dict)
    rope: tuple[int, ...] = ()
    norms: tuple[tuple[nn.Module, float], ...] = ()


def entry_sites(model: nn.Module, spec: ArchitectureSpec) -> list[Site]:
    """The stream entering each decoder layer, ``L{i}.resid``: recorded on a run, it lets the batched runs of
    :func:`measure_all` start at the first layer they change."""
    return [Site(f"L{i}.resid", "resid", i) for i in range(len(spec.layer_list(model)))]


@contextmanager
def recording(
    model: nn.Module, spec: ArchitectureSpec, sites: Sequence[Site], into: dict[str, torch.Tensor]
) -> Iterator[None]:
    """:func:`~tokenlens.causal.interventions.record` ``sites`` into the dict ``into`` (a context factory's
    form, for :func:`measure`'s ``contexts``)."""
    with record(model, spec, sites) as values:
        yield
    into.update(values)


@contextmanager
def _variant_rows(
    model: nn.Module, spec: ArchitectureSpec, variants: Sequence[Variant], contexts: Sequence[Context]
) -> Iterator[None]:
    """Install each variant's interventions on its own batch row (and ``contexts`` on every row)."""
    with ExitStack() as stack:
        stack.enter_context(replace_rows(model, spec, [v.edits for v in variants]))
        if any(v.rope for v in variants):
            stack.enter_context(without_rope_rows(model, spec, [v.rope for v in variants]))
        by_norm: dict[int, tuple[nn.Module, dict[int, float]]] = {}
        for r, variant in enumerate(variants):
            for norm, value in variant.norms:
                by_norm.setdefault(id(norm), (norm, {}))[1][r] = value
        for norm, values in by_norm.values():
            stack.enter_context(rescale_norm_rows(norm, values))
        for context in contexts:
            stack.enter_context(context())
        yield


def measure_all(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    metric: Metric,
    variants: Sequence[Variant],
    *,
    held: Mapping[str, torch.Tensor] | None = None,
    contexts: Sequence[Context] = (),
    batch_size: int | None = None,
) -> list[float]:
    """The metric of each variant's run of ``input_ids`` ``(1, seq)``: what :func:`measure` gives for each
    alone, in shared forward passes.

    The variants go through the model as rows of batches (:func:`~tokenlens.causal.grids.run_cells`), each
    row with its own interventions; given ``held`` (the unmodified run's ``L{i}.resid`` from
    :func:`entry_sites`), a batch starts at the first layer its rows change, from the recorded stream.
    ``contexts`` (hook factories) apply to every row; ``batch_size``: rows per forward (default
    :func:`~tokenlens.causal.grids.default_batch`). A prompt-tuned model (virtual positions) runs one variant
    per forward.
    """
    if not variants:
        return []
    if virtual_tokens(model):
        return [
            measure(
                model,
                spec,
                input_ids,
                metric,
                contexts=[lambda v=v: _variant_rows(model, spec, [v], contexts)],
            )
            for v in variants
        ]
    from tokenlens.causal.grids import Cell, run_cells  # grids imports this module

    out = [0.0] * len(variants)
    groups = _groups(variants, len(spec.layer_list(model))) if held else [list(range(len(variants)))]
    for group in groups:
        chunk = [variants[k] for k in group]
        values = run_cells(
            model,
            spec,
            input_ids,
            metric,
            [Cell((), metric.position, layer=v.layer) for v in chunk],
            {},
            held=held,
            batch_size=batch_size,
            interventions=lambda chosen, chunk=chunk: _variant_rows(
                model, spec, [chunk[k] for k in chosen], contexts
            ),
        )
        for k, value in zip(group, values.tolist(), strict=True):
            out[k] = value
    return out


LAYER_COST_ROWS = 6
"""A layer's fixed cost in one forward (reading its weights, the per-module overhead), in rows of a short
prompt: measured on SmolLM2-135M at 5 tokens, one thread, a 61-row batch cost about 0.9 ms per row and
layer, a one-row forward about 5 ms per layer."""


def _groups(variants: Sequence[Variant], n_layers: int) -> list[list[int]]:
    """Variant indices split into groups of consecutive first layers, each to run as its own batches from
    its first layer: the split that minimises ``Σ layers run × (LAYER_COST_ROWS + rows)`` (dynamic
    programming over the variants sorted by first layer). Only speed depends on it, never a number."""
    order = sorted(range(len(variants)), key=lambda k: variants[k].layer)
    layers = [variants[k].layer for k in order]
    n = len(order)
    best, start = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + (n_layers - layers[i]) * (LAYER_COST_ROWS + j - i)
            if cost < best[j]:
                best[j], start[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[start[j] : j])
        j = start[j]
    return groups[::-1]


def rows_can_share(sites: Sequence[Site]) -> bool:
    """Whether runs editing ``sites`` can be rows of one batch (:func:`measure_all`): not with expert sites,
    whose terms are computed for the whole batch."""
    return not any(s.kind == "expert" for s in sites)


def site_layer(sites: Sequence[Site]) -> int:
    """The first layer any of ``sites`` changes (0 with ``embed``)."""
    return min((0 if s.layer is None else s.layer for s in sites), default=0)


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
    batched = rows_can_share(sites)
    held: dict[str, torch.Tensor] = {}
    entries = entry_sites(model, spec) if batched else []
    seen: list[torch.Tensor] = []
    baseline = measure(
        model,
        spec,
        input_ids,
        metric,
        contexts=[
            lambda: _final_scale(model, spec, seen=seen),
            lambda: recording(model, spec, entries, held),
        ],
    )
    scale = seen[-1]
    contexts = [lambda: _final_scale(model, spec, fixed=scale)] if freeze_final_scale else []
    runs = [(s.name, {s: edits[s]}) for s in sites] if each else []
    runs += [("together", edits)] if together else []
    if batched:
        variants = [Variant(site_layer(list(chosen)), chosen) for _, chosen in runs]
        values = measure_all(model, spec, input_ids, metric, variants, held=held, contexts=contexts)
    else:
        values = [measure(model, spec, input_ids, metric, chosen, contexts=contexts) for _, chosen in runs]
    effects = [Effect(name, value, value - baseline) for (name, _), value in zip(runs, values, strict=True)]
    return Ablation(
        metric=metric,
        method=mode,
        reference=reference,
        sites=tuple(s.name for s in sites),
        baseline=baseline,
        each=tuple(effects[: len(sites)]) if each else (),
        together=effects[-1] if together else None,
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

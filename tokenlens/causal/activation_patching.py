"""Activation patching: which components carry the difference between a clean and a corrupted run.

Run the clean prompt and keep one site's activation; run the corrupted prompt with that activation patched
in; the metric's change, as a fraction of the clean-corrupted gap, says how much of the difference that
site alone carries (including its effect through later layers). The two runs may also be two models on the
same prompt (a fine-tune patched into its base), as long as they share the architecture and tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from tokenlens.causal.effects import (
    Variant,
    entry_sites,
    measure,
    measure_all,
    resolve_sites,
    rows_can_share,
    same_length,
    site_layer,
)
from tokenlens.causal.interventions import constant, record
from tokenlens.causal.metrics import Metric, encode, metric_for, run_metric
from tokenlens.causal.results import PatchEffect, Patching, restored
from tokenlens.causal.sites import Site, head_count
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import ArchitectureSpec, spec_for_model


def clean_source(
    model: nn.Module, spec: ArchitectureSpec, clean_model: nn.Module | None
) -> tuple[nn.Module, ArchitectureSpec]:
    """The model the clean run uses and its spec: ``clean_model`` when given, else ``model``.

    Raises:
        TokenlensError: ``clean_model`` has another family, layer count or head count than ``model``.
    """
    if clean_model is None:
        return model, spec
    clean_spec = spec_for_model(clean_model)
    shape = (spec.family, len(spec.layer_list(model)), head_count(model))
    clean_shape = (clean_spec.family, len(clean_spec.layer_list(clean_model)), head_count(clean_model))
    if shape != clean_shape:
        raise TokenlensError(
            f"the clean model (family, layers, heads) {clean_shape} differs from the patched one {shape}"
        )
    return clean_model, clean_spec


def record_run(
    model: nn.Module, spec: ArchitectureSpec, input_ids: torch.Tensor, metric: Metric, sites: Sequence[Site]
) -> tuple[float, dict[str, torch.Tensor]]:
    """The metric of one unmodified run and each site's activation ``(1, seq, width)`` on it.

    Use it for the clean side of :func:`patch_from` when the clean run needs a context of its own (e.g.
    inside a PEFT model's ``disable_adapter()``).
    """
    with torch.no_grad(), record(model, spec, sites) as values:
        value = float(run_metric(model, spec, input_ids, metric))
    return value, values


def patch_from(
    model: nn.Module,
    spec: ArchitectureSpec,
    corrupted_ids: torch.Tensor,
    metric: Metric,
    sites: Sequence[Site],
    clean: float,
    clean_values: Mapping[str, torch.Tensor],
    *,
    positions: Sequence[int] | None = None,
) -> Patching:
    """Patch each site's clean activation (from :func:`record_run`) alone into the corrupted run.

    Raises:
        TokenlensError: The clean activations do not have the corrupted prompt's token length or width, or
            a position is outside the prompt.
    """
    seq = corrupted_ids.shape[1]
    if positions is not None and not all(0 <= p < seq for p in positions):
        raise TokenlensError(f"patch positions {list(positions)} must lie in 0..{seq - 1}")
    batched = rows_can_share(sites)
    entries = [e for e in entry_sites(model, spec) if e not in sites] if batched else []
    corrupted, corrupted_values = record_run(model, spec, corrupted_ids, metric, [*sites, *entries])
    for site in sites:
        if clean_values[site.name].shape != corrupted_values[site.name].shape:
            raise TokenlensError(
                f"cannot patch {site.name}: its clean activation has shape "
                f"{tuple(clean_values[site.name].shape)}, the corrupted one "
                f"{tuple(corrupted_values[site.name].shape)} (same token length and architecture needed)"
            )
    runs = [{site: constant(clean_values[site.name], positions)} for site in sites]
    if batched:
        variants = [Variant(site_layer(list(edits)), edits) for edits in runs]
        values = measure_all(model, spec, corrupted_ids, metric, variants, held=corrupted_values)
    else:
        values = [measure(model, spec, corrupted_ids, metric, edits) for edits in runs]
    effects = []
    for site, value in zip(sites, values, strict=True):
        delta = value - corrupted
        effects.append(PatchEffect(site.name, value, delta, restored(delta, clean - corrupted)))
    return Patching(metric, clean, corrupted, tuple(effects), None if positions is None else tuple(positions))


def patch(
    model: nn.Module,
    spec: ArchitectureSpec,
    clean_ids: torch.Tensor,
    corrupted_ids: torch.Tensor,
    metric: Metric,
    sites: Sequence[Site],
    *,
    clean_model: nn.Module | None = None,
    positions: Sequence[int] | None = None,
) -> Patching:
    """Activation patching: run clean, then corrupted with each site's clean activation patched in.

    Both prompts must have the same token length: activations are paired position by position (pad or
    rephrase the corrupted prompt to match). ``clean_model`` (default: ``model``) is the model the clean
    activations come from, e.g. a fine-tune patched into its base; it must share the architecture.

    Raises:
        TokenlensError: Different token lengths or activation shapes, or positions outside the prompt.
    """
    same_length(clean_ids, corrupted_ids, "activation patching")
    source, source_spec = clean_source(model, spec, clean_model)
    clean, values = record_run(source, source_spec, clean_ids, metric, sites)
    return patch_from(model, spec, corrupted_ids, metric, sites, clean, values, positions=positions)


def check_same_tokenizer(a: LoadedModel, b: LoadedModel) -> None:
    """Refuse two models whose tokenizers map text to different ids.

    Raises:
        TokenlensError: The vocabularies differ.
    """
    if a.tokenizer is not b.tokenizer and a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
        raise TokenlensError(f"{a.ref} and {b.ref} have different tokenizers: their token ids do not match")


def patching(
    loaded: LoadedModel,
    clean: str,
    corrupted: str,
    sites: str | Sequence[str] | None = None,
    *,
    metric: Metric | None = None,
    chat: bool = False,
    clean_model: LoadedModel | None = None,
    positions: Sequence[int] | None = None,
) -> Patching:
    """Patch each named component from the clean prompt's run into the corrupted prompt's run.

    Args:
        loaded: The model run on the corrupted prompt.
        clean / corrupted: Prompts of the same token length.
        sites: Component names; default: ``embed`` and every layer's attention and MLP.
        metric: Default: the logit of the clean run's top-1 token at the last position.
        chat: Wrap prompts as user turns with the chat template.
        clean_model: The model the clean run uses (default ``loaded``); must share the tokenizer.
        positions: Patch only these positions (default: all).

    Raises:
        TokenlensError: Any bad input, including prompts of different token lengths; one line.
    """
    source = clean_model or loaded
    check_same_tokenizer(loaded, source)
    clean_ids, corrupted_ids = encode(loaded, clean, chat=chat), encode(loaded, corrupted, chat=chat)
    same_length(clean_ids, corrupted_ids, "activation patching")
    metric = metric or metric_for(source, clean_ids[0].tolist())
    chosen = resolve_sites(loaded, sites)
    return patch(
        loaded.model,
        loaded.spec,
        clean_ids,
        corrupted_ids,
        metric,
        chosen,
        clean_model=None if clean_model is None else clean_model.model,
        positions=positions,
    )

"""Effects of the parts with no additive share of the logit: the RMSNorm scales, RoPE, virtual tokens.

The residual stream is a sum of writes, but two parts of the model act multiplicatively or on the
attention pattern and write nothing to it:

- **RMSNorm scales.** Each norm multiplies its input by ``s = 1/sqrt(mean(x²) + ε)`` per position (the
  final norm before the head, and each layer's ``input_layernorm`` / ``post_attention_layernorm``). Its
  effect is measured by replacing ``s`` by a reference value (the mean of ``s`` over the prompt, or a given
  number) and rerunning.
- **RoPE.** Rotary embeddings rotate queries and keys by position; there is no positional write. Its effect
  is measured by running a layer's (or every layer's) attention with the rotation switched off.
- **Virtual tokens** of a prompt-tuning adapter. They reach the prompt only through attention; their effect
  is measured by cutting a layer's (or every layer's) attention from the prompt to them.

All are reported as ablation effects (:class:`~tokenlens.causal.results.Ablation`), never as
contributions: they need not add up with anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from functools import partial

import torch
from torch import nn

from tokenlens.causal.effects import Variant, entry_sites, measure, measure_all, recording
from tokenlens.causal.interventions import block_virtual_attention, rescale_norm
from tokenlens.causal.metrics import Metric, encode, metric_for
from tokenlens.causal.results import Ablation, Effect, NormAblation
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import ArchitectureSpec, virtual_tokens


def norm_modules(
    model: nn.Module, spec: ArchitectureSpec, *, layers: bool = True
) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the final norm and, when ``layers``, each layer's two norms, in that order."""
    norms = [("final_norm", spec.module(model, spec.final_norm))]
    if layers:
        for i, layer in enumerate(spec.layer_list(model)):
            norms += [(f"L{i}.attn_norm", layer.get_submodule(spec.attn_norm))]
            norms += [(f"L{i}.mlp_norm", layer.get_submodule(spec.mlp_norm))]
    return norms


def _references(scales: torch.Tensor, reference: str | float) -> tuple[torch.Tensor, str]:
    """``(norm,)`` reference scales and their description."""
    if reference == "mean":
        return scales.mean(1), "each norm's mean scale over the prompt's positions"
    if isinstance(reference, (int, float)) and not isinstance(reference, bool) and reference > 0:
        return torch.full((scales.shape[0],), float(reference)), f"scale {float(reference):g}"
    raise TokenlensError(f"norm reference must be 'mean' or a positive number, got {reference!r}")


def ablate_norms(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    metric: Metric,
    *,
    reference: str | float = "mean",
    layers: bool = True,
) -> NormAblation:
    """Replace each RMSNorm's scale, at every position, by a reference value; one norm at a time.

    Args:
        model, spec: The model (bare or PEFT-wrapped) and its spec.
        input_ids: ``(1, seq)`` the prompt.
        metric: What to measure.
        reference: ``"mean"`` (each norm's own mean scale over the prompt's positions) or a positive number.
        layers: Also ablate every layer's two norms (otherwise only the final norm).

    Raises:
        TokenlensError: A bad reference.
    """
    norms = norm_modules(model, spec, layers=layers)
    n_layers = len(spec.layer_list(model))
    seen: dict[str, list[torch.Tensor]] = {name: [] for name, _ in norms}
    recorders = [partial(rescale_norm, module, None, seen[name]) for name, module in norms]
    held: dict[str, torch.Tensor] = {}
    recorders.append(partial(recording, model, spec, entry_sites(model, spec), held))
    baseline = measure(model, spec, input_ids, metric, contexts=recorders)
    scales = torch.stack([seen[name][-1][0].cpu() for name, _ in norms])  # (norm, seq)
    references, described = _references(scales, reference)
    variants = [
        Variant(
            n_layers - 1 if name == "final_norm" else int(name[1:].split(".")[0]), norms=((module, value),)
        )
        for (name, module), value in zip(norms, references.tolist(), strict=True)
    ]
    values = measure_all(model, spec, input_ids, metric, variants, held=held)
    effects = [Effect(name, value, value - baseline) for (name, _), value in zip(norms, values, strict=True)]
    ablation = Ablation(
        metric=metric,
        method="norm",
        reference=described,
        sites=tuple(name for name, _ in norms),
        baseline=baseline,
        each=tuple(effects),
        together=None,
    )
    return NormAblation(ablation, scales, references)


def ablate_rope(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    metric: Metric,
    *,
    layers: Sequence[int] | None = None,
    each: bool = True,
    together: bool = True,
) -> Ablation:
    """Run attention without rotary position information, per layer and/or in ``layers`` together.

    Args:
        model, spec: The model (bare or PEFT-wrapped) and its spec.
        input_ids: ``(1, seq)`` the prompt.
        metric: What to measure.
        layers: The layers to ablate (default: all).
        each: Measure each layer ablated alone (effects named ``L{i}.rope``).
        together: Measure all ``layers`` ablated at once (named ``together``).

    Raises:
        TokenlensError: An unknown layer index, or attention that does not take ``position_embeddings``.
    """
    scaling = spec.rotary_scale(model)
    kept = "" if scaling == 1 else "; the rotary attention scaling kept"
    return _per_layer(
        model,
        spec,
        input_ids,
        metric,
        lambda chosen: Variant(min(chosen), rope=tuple(chosen)),
        layers=layers,
        each=each,
        together=together,
        method="rope",
        reference=f"cos={scaling:g}, sin=0 (no rotation{kept})",
        what="RoPE ablation",
    )


def ablate_virtual(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    metric: Metric,
    *,
    layers: Sequence[int] | None = None,
    each: bool = True,
    together: bool = True,
) -> Ablation:
    """Cut the prompt's attention to a prompt-tuning adapter's virtual tokens, per layer and/or together.

    The virtual tokens act on the prompt only through attention; each layer's effect is measured with its
    prompt positions unable to attend to them (:func:`~tokenlens.causal.interventions.
    block_virtual_attention`; effects named ``L{i}.virtual``). With every layer cut, the prompt computes what
    the bare model computes on it alone. Arguments as in :func:`ablate_rope`.

    Raises:
        TokenlensError: The model has no virtual tokens, or an unknown layer index.
    """
    virtual = virtual_tokens(model)
    if virtual == 0:
        raise TokenlensError(
            "the model has no virtual tokens: cutting attention to them needs a prompt-tuned model"
        )
    return _per_layer(
        model,
        spec,
        input_ids,
        metric,
        lambda chosen: partial(block_virtual_attention, model, spec, [chosen], virtual),
        layers=layers,
        each=each,
        together=together,
        method="virtual",
        reference=f"the prompt cannot attend to the {virtual} virtual tokens",
        what="virtual-token ablation",
    )


def _per_layer(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    metric: Metric,
    cut: Callable[[list[int]], Variant | Callable[[], AbstractContextManager]],
    *,
    layers: Sequence[int] | None,
    each: bool,
    together: bool,
    method: str,
    reference: str,
    what: str,
) -> Ablation:
    """Measure ``cut(layers)`` for each layer alone and all together: a
    :class:`~tokenlens.causal.effects.Variant` changing those layers (measured in shared forwards), or a
    factory of a context changing them (one forward each)."""
    n_layers = len(spec.layer_list(model))
    chosen = list(range(n_layers)) if layers is None else list(layers)
    bad = [i for i in chosen if not 0 <= i < n_layers]
    if bad or not chosen:
        raise TokenlensError(f"{what} layers must be in 0..{n_layers - 1}, got {chosen}")
    held: dict[str, torch.Tensor] = {}
    entries = partial(recording, model, spec, entry_sites(model, spec), held)
    baseline = measure(model, spec, input_ids, metric, contexts=[entries])
    runs = [(f"L{i}.{method}", [i]) for i in chosen] if each else []
    runs += [("together", chosen)] if together else []
    cuts = [cut(which) for _, which in runs]
    if all(isinstance(c, Variant) for c in cuts):
        values = measure_all(model, spec, input_ids, metric, cuts, held=held)
    else:
        values = [measure(model, spec, input_ids, metric, contexts=[c]) for c in cuts]
    effects = [Effect(name, value, value - baseline) for (name, _), value in zip(runs, values, strict=True)]
    return Ablation(
        metric=metric,
        method=method,
        reference=reference,
        sites=tuple(f"L{i}.{method}" for i in chosen),
        baseline=baseline,
        each=tuple(effects[: len(chosen)]) if each else (),
        together=effects[-1] if together else None,
    )


def norm_ablation(
    loaded: LoadedModel,
    prompt: str,
    *,
    reference: str | float = "mean",
    layers: bool = True,
    metric: Metric | None = None,
    chat: bool = False,
) -> NormAblation:
    """:func:`ablate_norms` on a prompt; the metric defaults to the top-1 token's logit at the end."""
    return _on_prompt(ablate_norms, loaded, prompt, metric, chat, reference=reference, layers=layers)


def rope_ablation(
    loaded: LoadedModel,
    prompt: str,
    *,
    layers: Sequence[int] | None = None,
    metric: Metric | None = None,
    chat: bool = False,
    each: bool = True,
    together: bool = True,
) -> Ablation:
    """:func:`ablate_rope` on a prompt; the metric defaults to the top-1 token's logit at the end."""
    return _on_prompt(ablate_rope, loaded, prompt, metric, chat, layers=layers, each=each, together=together)


def virtual_ablation(
    loaded: LoadedModel,
    prompt: str,
    *,
    layers: Sequence[int] | None = None,
    metric: Metric | None = None,
    chat: bool = False,
    each: bool = True,
    together: bool = True,
) -> Ablation:
    """:func:`ablate_virtual` on a prompt; the metric defaults to the top-1 token's logit at the end."""
    return _on_prompt(
        ablate_virtual, loaded, prompt, metric, chat, layers=layers, each=each, together=together
    )


def _on_prompt(fn: Callable, loaded: LoadedModel, prompt: str, metric: Metric | None, chat: bool, **kwargs):
    """``fn(model, spec, ids, metric, **kwargs)`` on ``prompt``'s ids; the metric defaults to the top-1
    token's logit at the last position."""
    ids = encode(loaded, prompt, chat=chat)
    metric = metric or metric_for(loaded, ids[0].tolist())
    return fn(loaded.model, loaded.spec, ids, metric, **kwargs)

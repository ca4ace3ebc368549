"""Drill-down of a diff into the heads, MLP neurons and MoE experts of the layers that moved the token most.

A head's (or neuron's) *write* is what it adds to the stream through its layer's output linear:
``o_proj(z with only head h kept) − o_proj(0)`` (``down_proj`` and one neuron's activation for neurons),
evaluated with each side's own module — so a fine-tune that changes ``o_proj`` (a LoRA on it, a head-only
edit of ``W_O``) moves the head as much as one that changes what the head attends to. Per unit:

* ``direct`` — the base readout applied to ``write_T − write_B`` at the probe position;
* ``causal`` — the base run with the layer's output shifted by ``write_T − write_B`` (everything downstream
  recomputed); ``causal_reverse`` — the tuned run shifted by ``write_B − write_T``;
* ``estimate`` — ``Σ (write_T − write_B) · ∂logit/∂(layer output)`` from the base run's backward pass.

The writes are exact for linear output modules (plain, LoRA); a bottleneck adapter on ``down_proj`` is not
linear, so its neuron writes are the first-order part. A routed expert's write is its weighted output
``L{i}.E{e}`` (:mod:`tokenlens.causal.experts`) computed by each side with its own router and expert weights,
so a change of routing shows up as well as a change of the expert.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from tokenlens.attribution.finer import neuron_terms
from tokenlens.attribution.readout import Readout
from tokenlens.causal.sites import Site, expert_sites, head_count, site_slice
from tokenlens.diff.pairing import ModelPair
from tokenlens.diff.result import ComponentEffect
from tokenlens.diff.runs import Run, Tracked, patch_changes, record_sites
from tokenlens.models.specs import bare_model


def top_layers(components: Sequence[ComponentEffect], part: str, count: int) -> list[int]:
    """The ``count`` layers whose ``part`` (attn/mlp) has the largest |causal| (else |estimate|, |direct|)."""

    def size(c: ComponentEffect) -> float:
        value = c.causal if c.causal is not None else c.estimate if c.estimate is not None else c.direct
        return abs(value or 0.0)

    rows = sorted((c for c in components if c.name.endswith(f".{part}")), key=size, reverse=True)
    return [int(c.name[1:].split(".")[0]) for c in rows[:count] if size(c) > 0.0]


@torch.no_grad()
def unit_writes(
    pair: ModelPair, which: str, layer: int, part: str, units: Mapping[str, tuple[slice, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Each unit's write ``(1, seq, d_model)`` through one side's output module of ``layer``.

    Args:
        part: ``attn`` (through ``o_proj``) or ``mlp`` (through ``down_proj``).
        units: Name -> (its slice of the module input, its input values ``(1, seq, slice width)``).
    """
    spec = pair.spec
    with pair.side(which) as model:
        layer_module = spec.layer_list(model)[layer]
        module = layer_module.get_submodule(spec.attn_out if part == "attn" else spec.mlp_out)
        param = next(module.parameters())
        width = _in_features(module)
        out = {}
        for name, (part_slice, values) in units.items():
            x = torch.zeros(*values.shape[:2], width, dtype=values.dtype, device=param.device)
            zero = module(x)
            x[..., part_slice] = values.to(param.device)
            out[name] = (module(x) - zero).float()
        return out


def _in_features(module: torch.nn.Module) -> int:
    base = module.get_base_layer() if callable(getattr(module, "get_base_layer", None)) else module
    return int(base.in_features)


def _effects(
    pair: ModelPair,
    input_ids: torch.Tensor,
    position: int,
    tracked: Tracked,
    site: Site,
    deltas: Mapping[str, torch.Tensor],
    grad: torch.Tensor | None,
    readout: Readout,
    reverse: bool,
    runs: Mapping[str, Run] | None = None,
) -> list[ComponentEffect]:
    """One row per unit of one layer from its write changes ``deltas`` (name -> ``(1, seq, d_model)``);
    ``runs`` (side -> its captured run) let the patched runs start at the layer (:func:`patch_changes`)."""
    changes = {n: (site, d) for n, d in deltas.items()}
    exact = patch_changes(pair, input_ids, position, tracked, changes, reverse=reverse, runs=runs)
    rows = []
    for name, delta in deltas.items():
        direct = float(readout(delta[0, position]))
        estimate = None if grad is None else float((delta.to(grad) * grad).sum())
        rows.append(ComponentEffect(name, direct, *exact[name], estimate))
    return rows


def _layer_effects(
    pair: ModelPair,
    input_ids: torch.Tensor,
    position: int,
    tracked: Tracked,
    layer: int,
    part: str,
    units: Mapping[str, Mapping[str, tuple[slice, torch.Tensor]]],
    grads: Mapping[str, torch.Tensor],
    readout: Readout,
    reverse: bool,
    runs: Mapping[str, Run] | None = None,
) -> list[ComponentEffect]:
    """Rows for the units of one layer's ``part`` (``attn``/``mlp``): ``units[side]`` as for
    :func:`unit_writes`, per side; each unit's write change is patched onto the layer's output."""
    writes = {which: unit_writes(pair, which, layer, part, units[which]) for which in ("base", "tuned")}
    deltas = {name: writes["tuned"][name] - writes["base"][name] for name in units["base"]}
    site = Site(f"L{layer}.{part}", part, layer)
    grad = grads.get(site.name)
    return _effects(pair, input_ids, position, tracked, site, deltas, grad, readout, reverse, runs)


def drill_heads(
    pair: ModelPair,
    input_ids: torch.Tensor,
    position: int,
    tracked: Tracked,
    base: Run,
    tuned: Run,
    layers: Sequence[int],
    grads: Mapping[str, torch.Tensor],
    readout: Readout,
    reverse: bool,
) -> list[ComponentEffect]:
    """Every head of ``layers`` (``base``/``tuned`` must have recorded the ``L{i}.H{h}`` sites)."""
    n_heads = head_count(pair.tuned.model)
    runs = {"base": base, "tuned": tuned}
    rows = []
    for i in layers:
        heads = [Site(f"L{i}.H{h}", "head", i, h) for h in range(n_heads)]
        width = n_heads * base.values[heads[0].name].shape[-1]  # the o_proj input: heads side by side
        units = {
            which: {s.name: (site_slice(s, width, n_heads), run.values[s.name]) for s in heads}
            for which, run in (("base", base), ("tuned", tuned))
        }
        rows += _layer_effects(
            pair, input_ids, position, tracked, i, "attn", units, grads, readout, reverse, runs
        )
    return rows


def drill_neurons(
    pair: ModelPair,
    input_ids: torch.Tensor,
    position: int,
    tracked: Tracked,
    base: Run,
    tuned: Run,
    layers: Sequence[int],
    grads: Mapping[str, torch.Tensor],
    readout: Readout,
    count: int,
    reverse: bool,
) -> list[ComponentEffect]:
    """The ``count`` neurons of each of ``layers`` whose direct term changed most (needs ``internals``)."""
    spec = pair.spec
    runs = {"base": base, "tuned": tuned}
    chosen: dict[int, list[Site]] = {}
    for i in layers:
        if base.internals[i].act is None:
            continue  # a MoE layer: no single down_proj (see drill_experts)
        terms = {}
        for which, run in runs.items():
            with pair.side(which) as model:
                layer = spec.layer_list(model)[i]
                terms[which] = neuron_terms(layer, spec, run.internals[i].act[0, 0], readout)
        change = terms["tuned"] - terms["base"]
        top = change.abs().topk(min(count, change.shape[0])).indices.tolist()
        chosen[i] = [Site(f"L{i}.N{n}", "neuron", i, n) for n in top]
    if not chosen:
        return []
    values = {}  # every chosen neuron's activation over the prompt: one pass per side
    for which, run in runs.items():
        with pair.side(which) as model:
            all_sites = [s for sites in chosen.values() for s in sites]
            values[which] = record_sites(model, spec, input_ids, all_sites, run.values)
    rows = []
    for i, sites in chosen.items():
        units = {
            which: {s.name: (slice(s.index, s.index + 1), values[which][s.name]) for s in sites}
            for which in ("base", "tuned")
        }
        rows += _layer_effects(
            pair, input_ids, position, tracked, i, "mlp", units, grads, readout, reverse, runs
        )
    return rows


def drill_experts(
    pair: ModelPair,
    input_ids: torch.Tensor,
    position: int,
    tracked: Tracked,
    layers: Sequence[int],
    grads: Mapping[str, torch.Tensor],
    readout: Readout,
    reverse: bool,
    runs: Mapping[str, Run] | None = None,
) -> list[ComponentEffect]:
    """Every routed expert of the mixture-of-experts layers among ``layers`` (none in a dense model);
    ``runs`` (side -> its captured run) let the patched runs start at the layer."""
    chosen = set(layers)
    sites = [s for s in expert_sites(bare_model(pair.tuned.model), pair.spec) if s.layer in chosen]
    if not sites:
        return []
    values = {}
    for which in ("base", "tuned"):
        with pair.side(which) as model:
            held = runs[which].values if runs else None
            values[which] = record_sites(model, pair.spec, input_ids, sites, held)
    rows = []
    for i in sorted({s.layer for s in sites}):
        deltas = {
            s.name: values["tuned"][s.name].float() - values["base"][s.name].float()
            for s in sites
            if s.layer == i
        }
        block = Site(f"L{i}.mlp", "mlp", i)  # an expert's write is an additive part of the block output
        rows += _effects(
            pair, input_ids, position, tracked, block, deltas, grads.get(block.name), readout, reverse, runs
        )
    return rows

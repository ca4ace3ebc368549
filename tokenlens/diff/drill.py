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

from collections.abc import Generator, Mapping, Sequence

import torch

from tokenlens.attribution.finer import neuron_terms
from tokenlens.attribution.readout import Readout
from tokenlens.causal.sites import Site, expert_sites, head_count, site_slice
from tokenlens.diff.batched import RecordRequest
from tokenlens.diff.pairing import ModelPair
from tokenlens.diff.result import ComponentEffect
from tokenlens.diff.runs import Run
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


Change = tuple[Site, torch.Tensor]
"""A unit's write change and the site it is patched onto: ``(L{i}.attn or L{i}.mlp, (1, seq, d_model))``."""


def _layer_changes(
    pair: ModelPair, layer: int, part: str, units: Mapping[str, Mapping[str, tuple[slice, torch.Tensor]]]
) -> dict[str, Change]:
    """Each unit's write change (tuned − base) through one layer's ``part`` (``attn``/``mlp``) output module;
    ``units[side]`` as for :func:`unit_writes`."""
    writes = {which: unit_writes(pair, which, layer, part, units[which]) for which in ("base", "tuned")}
    site = Site(f"L{layer}.{part}", part, layer)
    return {name: (site, writes["tuned"][name] - writes["base"][name]) for name in units["base"]}


def _head_changes(pair: ModelPair, base: Run, tuned: Run, layers: Sequence[int]) -> dict[str, Change]:
    """Every head of ``layers`` (``base``/``tuned`` must have recorded the ``L{i}.H{h}`` sites)."""
    n_heads = head_count(pair.tuned.model)
    changes: dict[str, Change] = {}
    for i in layers:
        heads = [Site(f"L{i}.H{h}", "head", i, h) for h in range(n_heads)]
        width = n_heads * base.values[heads[0].name].shape[-1]  # the o_proj input: heads side by side
        units = {
            which: {s.name: (site_slice(s, width, n_heads), run.values[s.name]) for s in heads}
            for which, run in (("base", base), ("tuned", tuned))
        }
        changes |= _layer_changes(pair, i, "attn", units)
    return changes


def _chosen_neurons(
    pair: ModelPair, base: Run, tuned: Run, layers: Sequence[int], readout: Readout, count: int
) -> list[Site]:
    """The ``count`` neurons of each dense layer of ``layers`` whose direct term changed most."""
    sites = []
    for i in layers:
        if base.internals[i].act is None:
            continue  # a MoE layer: no single down_proj (see the experts)
        terms = {}
        for which, run in (("base", base), ("tuned", tuned)):
            with pair.side(which) as model:
                layer = pair.spec.layer_list(model)[i]
                terms[which] = neuron_terms(layer, pair.spec, run.internals[i].act[0, 0], readout)
        change = terms["tuned"] - terms["base"]
        top = change.abs().topk(min(count, change.shape[0])).indices.tolist()
        sites += [Site(f"L{i}.N{n}", "neuron", i, n) for n in top]
    return sites


def drill_changes(
    pair: ModelPair,
    input_ids: torch.Tensor,
    base: Run,
    tuned: Run,
    attn_layers: Sequence[int],
    mlp_layers: Sequence[int],
    readout: Readout,
    count: int,
) -> Generator[RecordRequest, dict[str, dict[str, torch.Tensor]], dict[str, Change]]:
    """The write change of every unit to drill into: every head of ``attn_layers``, the ``count`` neurons
    of each dense layer of ``mlp_layers`` whose direct term changed most, and every routed expert of its
    MoE layers (none in a dense model). The neurons' and experts' activations over the prompt come from one
    recording pass per side, starting at their first layer from the recorded streams of ``base``/``tuned``
    (as a step: the :class:`~tokenlens.diff.batched.RecordRequest` is yielded).
    """
    runs = {"base": base, "tuned": tuned}
    changes = _head_changes(pair, base, tuned, attn_layers)
    neurons = _chosen_neurons(pair, base, tuned, mlp_layers, readout, count)
    chosen = set(mlp_layers)
    experts = [s for s in expert_sites(bare_model(pair.tuned.model), pair.spec) if s.layer in chosen]
    values = {}
    if neurons or experts:
        values = yield RecordRequest(input_ids, tuple(neurons + experts), runs)
    for i in dict.fromkeys(s.layer for s in neurons):
        units = {
            which: {
                s.name: (slice(s.index, s.index + 1), values[which][s.name]) for s in neurons if s.layer == i
            }
            for which in runs
        }
        changes |= _layer_changes(pair, i, "mlp", units)
    for s in experts:  # an expert's write is an additive part of its block's output
        block = Site(f"L{s.layer}.mlp", "mlp", s.layer)
        changes[s.name] = (block, values["tuned"][s.name].float() - values["base"][s.name].float())
    return changes


def drill_rows(
    changes: Mapping[str, Change],
    exact: Mapping[str, tuple[float, float, float | None]],
    position: int,
    grads: Mapping[str, torch.Tensor],
    readout: Readout,
) -> tuple[list[ComponentEffect], list[ComponentEffect], list[ComponentEffect]]:
    """The head, neuron and expert rows from :func:`drill_changes` and their exact patching (``exact``,
    :func:`tokenlens.diff.runs.patch_changes` of the same changes): direct term (base readout at the probe
    position), causal effects, and the estimate from the base run's gradient at the layer output."""
    rows: dict[str, list[ComponentEffect]] = {"head": [], "neuron": [], "expert": []}
    for name, (site, delta) in changes.items():
        grad = grads.get(site.name)
        direct = float(readout(delta[0, position]))
        estimate = None if grad is None else float((delta.to(grad) * grad).sum())
        kind = "head" if ".H" in name else "neuron" if ".N" in name else "expert"
        rows[kind].append(ComponentEffect(name, direct, *exact[name], estimate))
    return rows["head"], rows["neuron"], rows["expert"]

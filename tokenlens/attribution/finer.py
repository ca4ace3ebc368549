"""Finer exact splits of a layer's contribution: attention heads, source tokens, MLP neurons, MoE experts.

Each split applies the same readout (:mod:`tokenlens.attribution.readout`) to smaller parts of a layer's
write, so the parts add up to the layer's term in the per-layer split:

* **Heads.** ``attn = o_proj(z) = Σ_h W_O[:, h] z_h + b_O``: head ``h`` contributes ``z_h · r_h · s`` with
  ``r = W_Oᵀ (u ⊙ g)`` (``W_O`` as the module really applies it, LoRA or dequantisation included).
* **Sources.** ``z_h[i] = Σ_j a_h[i, j] v_h[j]``: source position ``j`` contributes
  ``a_h[i, j] (v_h[j] − b_v) · r_h · s``; a value bias ``b_v`` contributes ``b_v · r_h · s`` (the pattern
  sums to one) and is its own term.
  The pattern ``a`` is recomputed from the hooked pre-RoPE queries and keys, the rotary tables the layer
  received and the model's own ``apply_rotary_pos_emb`` (found by the spec) — the model itself can keep
  running sdpa.
* **Neurons.** ``mlp = W_down act``: neuron ``n`` contributes ``act_n · (W_downᵀ (u ⊙ g))_n · s``.
* **Experts.** A routed MoE block outputs ``Σ_e w_e expert_e(x)``; each chosen expert's weighted output is
  recomputed in float32 from the router's choice and that expert's weights
  (:func:`~tokenlens.capture.internals.expert_output`, shared with the causal expert sites).

Each split reports its residual against the hooked layer output instead of hiding it: 0 up to rounding
for plain and LoRA modules; for quantised modules it holds the quantisation error of the split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tokenlens.attribution.readout import Readout, input_direction
from tokenlens.attribution.result import ExpertSplit, HeadSplit, NeuronSplit, SourceSplit
from tokenlens.capture.internals import LayerInternals, expert_output
from tokenlens.models.specs import ArchitectureSpec, linear_bias


def _attn_direction(
    layer: nn.Module, spec: ArchitectureSpec, z: torch.Tensor, readout: Readout
) -> torch.Tensor:
    """``(heads, head_dim)`` float32: ``W_Oᵀ (u ⊙ g)`` for one layer, split by head."""
    attn = layer.get_submodule(spec.attn)
    r = input_direction(layer.get_submodule(spec.attn_out), readout.direction, z.shape[-1], z.dtype)
    return r.view(-1, attn.head_dim)  # (heads, head_dim)


def head_terms(layer: nn.Module, spec: ArchitectureSpec, z: torch.Tensor, readout: Readout) -> torch.Tensor:
    """``(heads,)`` float32: each head's term ``z_h · r_h · s``; ``z`` is ``(heads * head_dim,)``."""
    r = _attn_direction(layer, spec, z, readout)
    return (z.to(r.device, torch.float32).view_as(r) * r).sum(-1) * readout.scale


def neuron_terms(
    layer: nn.Module, spec: ArchitectureSpec, act: torch.Tensor, readout: Readout
) -> torch.Tensor:
    """``(intermediate,)`` float32: each neuron's term ``act_n · (W_downᵀ (u ⊙ g))_n · s`` for one layer."""
    r = input_direction(layer.get_submodule(spec.mlp_out), readout.direction, act.shape[-1], act.dtype)
    return act.to(r.device, torch.float32) * r * readout.scale


def head_split(
    model: nn.Module,
    spec: ArchitectureSpec,
    internals: list[LayerInternals],
    readout: Readout,
    parents: dict[str, float],
    batch_index: int,
    k: int,
) -> HeadSplit:
    """Every head of every layer; ``parents`` maps ``L{i}.attn`` to the layer's term (bias excluded)."""
    rows, residuals = [], []
    for i, layer in enumerate(_layers(model, spec)):
        heads = head_terms(layer, spec, internals[i].z[batch_index, k], readout)  # (heads,)
        rows.append(heads.cpu())
        residuals.append(parents[f"L{i}.attn"] - float(heads.double().sum()))
    return HeadSplit(contributions=torch.stack(rows), residual=torch.tensor(residuals, dtype=torch.float32))


@dataclass(frozen=True)
class LayerSources:
    """Every head's source split in one layer, at one query position (input to :func:`source_split`).

    Attributes:
        layer: The layer.
        pattern: ``(heads, seq)`` attention weights from the query position.
        sources: ``(heads, seq)`` float32 contribution of each source position through each head.
        value_bias: ``(heads,)`` float32 each head's value-bias term.
    """

    layer: int
    pattern: torch.Tensor
    sources: torch.Tensor
    value_bias: torch.Tensor


def layer_sources(
    model: nn.Module,
    spec: ArchitectureSpec,
    internals: list[LayerInternals],
    readout: Readout,
    *,
    layer_index: int,
    position: int,
    batch_index: int,
    k: int,
    key_mask: torch.Tensor,
) -> LayerSources:
    """The source split of every head of one layer at ``position`` (computed once per layer).

    Args:
        key_mask: ``(seq,)`` 1 for real tokens, 0 for padding.
    """
    layer = _layers(model, spec)[layer_index]
    attn = layer.get_submodule(spec.attn)
    store = internals[layer_index]
    n_rep = store.q.shape[2] // store.k.shape[2]
    pattern = attention_pattern(
        attn, spec, store, position=position, batch_index=batch_index, k=k, key_mask=key_mask
    )
    r = _attn_direction(layer, spec, store.z[batch_index, k], readout)  # (heads, head_dim)
    device = r.device
    v = store.v[batch_index].to(device, torch.float32)
    v = v.view(v.shape[0], -1, attn.head_dim).repeat_interleave(n_rep, dim=1)  # (seq, heads, head_dim)
    bias = linear_bias(model, f"{spec.layers}.{layer_index}.{spec.v_states}")
    if bias is None:
        b_v = torch.zeros_like(v[0])  # (heads, head_dim)
    else:
        b_v = bias.detach().to(device, torch.float32).view(-1, attn.head_dim).repeat_interleave(n_rep, dim=0)
    value_scores = torch.einsum("jhd,hd->hj", v - b_v, r) * readout.scale  # (heads, seq)
    return LayerSources(
        layer=layer_index,
        pattern=pattern.cpu(),
        sources=(pattern.to(device) * value_scores).cpu(),  # (heads, seq)
        value_bias=((b_v * r).sum(-1) * readout.scale).cpu(),  # (heads,)
    )


def source_split(per_layer: LayerSources, heads: HeadSplit, head: int | None) -> SourceSplit:
    """One head's (or, with ``head=None``, the whole layer's) source split, checked against its head terms."""
    chosen = slice(None) if head is None else slice(head, head + 1)
    parent = float(heads.contributions[per_layer.layer, chosen].double().sum())
    contributions = per_layer.sources[chosen].sum(0)
    bias_term = float(per_layer.value_bias[chosen].sum())
    return SourceSplit(
        layer=per_layer.layer,
        head=head,
        contributions=contributions,
        value_bias=bias_term,
        pattern=per_layer.pattern[chosen],
        residual=parent - float(contributions.double().sum()) - bias_term,
    )


def attention_pattern(
    attn: nn.Module,
    spec: ArchitectureSpec,
    store: LayerInternals,
    *,
    position: int,
    batch_index: int,
    k: int,
    key_mask: torch.Tensor,
) -> torch.Tensor:
    """``(heads, seq)`` float32 attention weights from ``position`` to every source, recomputed.

    Uses the captured pre-RoPE queries/keys, the rotary tables the layer received, the model's own
    ``apply_rotary_pos_emb`` (:meth:`~tokenlens.models.specs.ArchitectureSpec.rotary_fn`) and the module's
    ``scaling``; masks future positions, padding and (if the layer has one) positions outside its sliding
    window, as transformers' sliding-window mask does (key ``j`` is seen from ``i`` when ``i - w < j ≤ i``).
    """
    rope = spec.rotary_fn(attn)
    q = store.q[batch_index, k].to(torch.float32)  # (heads, head_dim)
    keys = store.k[batch_index].to(torch.float32).transpose(0, 1)  # (kv_heads, seq, head_dim)
    row = min(batch_index, store.cos.shape[0] - 1)
    cos, sin = store.cos[row].to(torch.float32), store.sin[row].to(torch.float32)  # (seq, head_dim)
    q_cos, q_sin = cos[None, position : position + 1], sin[None, position : position + 1]  # (1, 1, head_dim)
    q_rot = rope(q[None, :, None], q[None, :, None], q_cos, q_sin)[0]  # (1, heads, 1, head_dim)
    k_rot = rope(keys[None], keys[None], cos[None], sin[None])[0][0]  # (kv_heads, seq, head_dim)
    n_rep = q.shape[0] // keys.shape[0]
    k_rot = k_rot.repeat_interleave(n_rep, dim=0)  # (heads, seq, head_dim)
    scores = torch.einsum("hd,hjd->hj", q_rot[0, :, 0], k_rot) * attn.scaling  # (heads, seq)
    seq = keys.shape[1]
    j = torch.arange(seq, device=scores.device)
    allowed = (j <= position) & key_mask.to(scores.device).bool()
    window = getattr(attn, "sliding_window", None)
    if window:
        allowed &= j > position - window
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


def neuron_split(
    model: nn.Module,
    spec: ArchitectureSpec,
    internals: list[LayerInternals],
    readout: Readout,
    parents: dict[str, float],
    batch_index: int,
    k: int,
    top_k: int,
) -> NeuronSplit:
    """The ``top_k`` neurons by |contribution| (both signs) of every dense MLP layer."""
    layers, ids, values, acts, residuals = [], [], [], [], []
    for i, layer in enumerate(_layers(model, spec)):
        if internals[i].act is None:
            continue  # a MoE layer: see expert_split
        act = internals[i].act[batch_index, k]  # (intermediate,)
        contributions = neuron_terms(layer, spec, act, readout)  # (intermediate,)
        top = contributions.abs().topk(min(top_k, contributions.shape[0])).indices
        layers.append(i)
        ids.append(top.cpu())
        values.append(contributions[top].cpu())
        acts.append(act[top.to(act.device)].float().cpu())
        residuals.append(parents[f"L{i}.mlp"] - float(contributions.double().sum()))
    return NeuronSplit(
        layers=tuple(layers),
        ids=_stack(ids, torch.long),
        contributions=_stack(values),
        activations=_stack(acts),
        residual=torch.tensor(residuals, dtype=torch.float32),
    )


def expert_split(
    model: nn.Module,
    spec: ArchitectureSpec,
    internals: list[LayerInternals],
    readout: Readout,
    parents: dict[str, float],
    batch_index: int,
    k: int,
) -> ExpertSplit:
    """Each routed expert's weighted output in every MoE layer, recomputed from that expert's weights."""
    layers, ids, weights, values, residuals = [], [], [], [], []
    for i, layer in enumerate(_layers(model, spec)):
        store = internals[i]
        if store.expert_inputs is None:
            continue
        experts = layer.get_submodule(spec.experts)
        x = store.expert_inputs[batch_index, k]  # (d_model,)
        index, weight = store.expert_index[batch_index, k], store.expert_weights[batch_index, k]  # (top_k,)
        outputs = [expert_output(spec, experts, x, e, w) for e, w in zip(index.tolist(), weight, strict=True)]
        contributions = readout(torch.stack(outputs))  # (top_k,)
        layers.append(i)
        ids.append(index.cpu())
        weights.append(weight.float().cpu())
        values.append(contributions.cpu())
        residuals.append(parents[f"L{i}.mlp"] - float(contributions.double().sum()))
    return ExpertSplit(
        layers=tuple(layers),
        expert_ids=_stack(ids, torch.long),
        router_weights=_stack(weights),
        contributions=_stack(values),
        residual=torch.tensor(residuals, dtype=torch.float32),
    )


def _layers(model: nn.Module, spec: ArchitectureSpec) -> list[nn.Module]:
    return spec.layer_list(model)


def _stack(rows: list[torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.stack(rows) if rows else torch.zeros(0, 0, dtype=dtype)

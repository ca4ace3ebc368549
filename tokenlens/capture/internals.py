"""Capture what happens inside each layer, for the finer splits (heads, source tokens, neurons, experts).

Each split needs one more tensor from the real forward pass, read by a hook on the module that consumes or
produces it:

* heads — ``z``, the input of ``o_proj``: the per-head attention outputs side by side (pre-hook);
* neurons — ``act = silu(gate) * up``, the input of ``down_proj`` (pre-hook);
* sources — the pre-RoPE queries and keys (after ``q_norm``/``k_norm`` where the model has them), the values,
  and the rotary ``(cos, sin)`` the attention module receives as a keyword argument;
* experts — the tokens, router choice and router weights the stacked experts module is called with.

Only the kept query positions are stored, except keys, values and rotary tables, which sources need at every
position. As with the residual capture, hooks are removed in ``finally``.

No tensor of the model holds one expert's share of a mixture-of-experts block's output, so it is computed from
those captured inputs by :func:`expert_output`, the one implementation of an expert's term that the expert
split and the causal expert sites share.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from tokenlens.models.specs import ArchitectureSpec, optional_submodule

SPLITS = frozenset({"heads", "sources", "neurons", "experts"})


@dataclass
class LayerInternals:
    """Tensors captured inside one layer (``None`` where not asked for or not present).

    Attributes:
        z: ``(batch, kept, heads * head_dim)`` input of ``o_proj`` at the kept positions.
        act: ``(batch, kept, intermediate)`` input of ``down_proj`` (``None`` in a MoE layer).
        q: ``(batch, kept, heads, head_dim)`` queries before RoPE.
        k: ``(batch, seq, kv_heads, head_dim)`` keys before RoPE.
        v: ``(batch, seq, kv_heads * head_dim)`` values (``v_proj`` output, bias included).
        cos: ``(batch, seq, head_dim)`` rotary cosines the attention module received.
        sin: ``(batch, seq, head_dim)`` rotary sines.
        expert_inputs: ``(batch, kept, d_model)`` tokens entering the experts (MoE layers).
        expert_index: ``(batch, kept, top_k)`` the router's chosen experts.
        expert_weights: ``(batch, kept, top_k)`` the router's weights for them.
    """

    z: torch.Tensor | None = None
    act: torch.Tensor | None = None
    q: torch.Tensor | None = None
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    expert_inputs: torch.Tensor | None = None
    expert_index: torch.Tensor | None = None
    expert_weights: torch.Tensor | None = None

    def row(self, batch_index: int, kept_index: int, seq: int) -> LayerInternals:
        """One row of a batch at one kept position: ``(1, 1, …)`` per-query tensors and ``(1, seq, …)``
        per-position ones (``k``, ``v``, ``cos``, ``sin``), copied, so the batch can be freed."""

        def pick(name: str, tensor: torch.Tensor | None) -> torch.Tensor | None:
            if tensor is None:
                return None
            b = batch_index if tensor.shape[0] > 1 else 0  # rotary tables may be shared by the batch
            if name in _PER_POSITION:
                return tensor[b : b + 1, :seq].clone()
            return tensor[b : b + 1, kept_index : kept_index + 1].clone()

        return LayerInternals(**{f.name: pick(f.name, getattr(self, f.name)) for f in fields(self)})


_PER_POSITION = frozenset({"k", "v", "cos", "sin"})


@dataclass
class InternalsRecorder:
    """Filled by the hooks during the forward pass; ``layers[i]`` holds layer i's tensors."""

    positions: torch.Tensor
    batch: int
    seq: int
    layers: list[LayerInternals] = field(default_factory=list)

    def kept(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach()[:, self.positions.to(tensor.device)]  # (batch, kept, …)


def expert_output(
    spec: ArchitectureSpec, experts: nn.Module, tokens: torch.Tensor, expert: int, weights: torch.Tensor
) -> torch.Tensor:
    """``(..., d_model)`` float32: routed expert ``expert``'s weighted output ``w · expert_e(x)`` per token.

    A routed block calls its stacked ``experts`` module with the tokens, each token's ``top_k`` chosen experts
    and their router weights, and writes ``Σ_k w_k expert_{i_k}(x)``: expert ``e``'s term at a token routed to
    it is ``w_e · down_e(act(gate_e x) ⊙ up_e x)``, with the weights laid out as the spec says
    (:meth:`~tokenlens.models.specs.ArchitectureSpec.expert_weights`). It is computed here in float32, from
    the one expert's weights only, so that the terms add up to the block's output to float32 rounding whatever
    the model's dtype; a float32 model's terms are the values its own ``forward`` adds up.

    Args:
        spec: The model's architecture spec.
        experts: A layer's stacked experts module.
        tokens: ``(..., d_model)`` the tokens routed to ``expert`` (the experts module's input).
        expert: The expert.
        weights: ``(...)`` the router's weight for ``expert`` at each token.
    """
    gate_up, down = (w.to(torch.float32) for w in spec.expert_weights(experts, expert))
    gate, up = F.linear(tokens.to(torch.float32), gate_up).chunk(2, dim=-1)  # (..., inter) each
    hidden = getattr(experts, spec.expert_act)(gate) * up  # (..., inter)
    return F.linear(hidden, down) * weights.to(torch.float32)[..., None]  # (..., d_model)


def _heads_view(tensor: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``(batch, seq, heads * head_dim)`` or ``(batch, seq, heads, head_dim)`` → the latter."""
    return tensor.reshape(*tensor.shape[:2], -1, head_dim)


@contextmanager
def capture_internals(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_shape: tuple[int, int],
    positions: torch.Tensor,
    splits: frozenset[str],
) -> Iterator[InternalsRecorder]:
    """Record the layer internals that ``splits`` need, for forward passes run inside the block.

    Args:
        model: The model (bare or PEFT-wrapped).
        spec: Its architecture spec.
        input_shape: ``(batch, seq)`` of the input ids that will be run.
        positions: Query positions to keep.
        splits: A subset of ``{"heads", "sources", "neurons", "experts"}``.
    """
    unknown = set(splits) - SPLITS
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; known: {sorted(SPLITS)}")
    batch, seq = input_shape
    recorder = InternalsRecorder(positions=positions.long().cpu(), batch=batch, seq=seq)
    handles = []

    def pre_hook(store: LayerInternals, name: str):
        def hook(_module: nn.Module, inputs: tuple) -> None:
            setattr(store, name, recorder.kept(inputs[0]))

        return hook

    def qk_hook(store: LayerInternals, name: str, head_dim: int, keep: bool):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            states = _heads_view(output.detach(), head_dim)  # (batch, seq, heads, head_dim)
            setattr(store, name, recorder.kept(states) if keep else states)

        return hook

    def v_hook(store: LayerInternals):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            store.v = output.detach()

        return hook

    def rope_hook(store: LayerInternals):
        def hook(_module: nn.Module, _args: tuple, kwargs: dict) -> None:
            store.cos, store.sin = (t.detach() for t in kwargs["position_embeddings"])

        return hook

    def experts_hook(store: LayerInternals):
        def hook(_module: nn.Module, inputs: tuple) -> None:
            tokens, index, weights = inputs[:3]
            store.expert_inputs = recorder.kept(tokens.reshape(batch, seq, -1))
            store.expert_index = recorder.kept(index.reshape(batch, seq, -1))
            store.expert_weights = recorder.kept(weights.reshape(batch, seq, -1))

        return hook

    try:
        for layer in spec.layer_list(model):
            store = LayerInternals()
            recorder.layers.append(store)
            attn = layer.get_submodule(spec.attn)
            head_dim = attn.head_dim
            if "heads" in splits:
                handles.append(
                    layer.get_submodule(spec.attn_out).register_forward_pre_hook(pre_hook(store, "z"))
                )
            if "neurons" in splits and (down := optional_submodule(layer, spec.mlp_out)) is not None:
                handles.append(down.register_forward_pre_hook(pre_hook(store, "act")))
            if "sources" in splits:
                handles += [
                    layer.get_submodule(spec.q_states).register_forward_hook(
                        qk_hook(store, "q", head_dim, True)
                    ),
                    layer.get_submodule(spec.k_states).register_forward_hook(
                        qk_hook(store, "k", head_dim, False)
                    ),
                    layer.get_submodule(spec.v_states).register_forward_hook(v_hook(store)),
                    attn.register_forward_pre_hook(rope_hook(store), with_kwargs=True),
                ]
            if "experts" in splits and (experts := optional_submodule(layer, spec.experts)) is not None:
                handles.append(experts.register_forward_pre_hook(experts_hook(store)))
        yield recorder
    finally:
        for handle in handles:
            handle.remove()

"""Where each supported model family keeps the parts tokenlens hooks, and what it does not model.

Every supported family is a pre-norm decoder: an embedding writes the first residual-stream vector, each
layer reads the stream and adds an attention write and an MLP write, a final RMSNorm rescales the stream and
the head reads logits off it. Attention rotates queries and keys with RoPE; a mixture-of-experts layer
replaces the MLP by a router and stacked experts. The families differ only in module paths, in which parts
exist (q/k norms, biases, experts) and in which config features they accept, so each family is one
declarative :class:`ArchitectureSpec` record; adding a family means adding a record, not branching on model
classes or searching modules by name.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenlens.errors import TokenlensError

if TYPE_CHECKING:
    import torch
    from torch import nn

ConfigCheck = Callable[[Any], "str | None"]
"""Looks at a HF config and returns what tokenlens cannot model in it (one line), or ``None``."""

_ATTENTION_KINDS = ("full_attention", "sliding_attention")


def _attention_layer_types(config: Any) -> str | None:
    """Qwen2/Qwen3 ``layer_types``: each layer's attention is full or sliding-window, nothing else.

    The source split recomputes every attention pattern as causal softmax attention, limited to the layer's
    ``sliding_window`` when it has one (as transformers' own sliding-window mask is); any other kind of layer
    (chunked, linear, sparse…) would get a wrong pattern. A ``sliding_attention`` layer without a
    ``sliding_window`` (``use_sliding_window`` false) has no window to apply: transformers fails on it.
    """
    kinds = list(getattr(config, "layer_types", None) or ())
    other = sorted({kind for kind in kinds if kind not in _ATTENTION_KINDS})
    if other:
        layers = [i for i, kind in enumerate(kinds) if kind not in _ATTENTION_KINDS]
        return (
            f"layer_types has {', '.join(map(repr, other))} layers ({_first_layers(layers)}); tokenlens "
            "recomputes attention patterns for full and sliding-window attention only"
        )
    if "sliding_attention" in kinds and not getattr(config, "sliding_window", None):
        return (
            "layer_types has sliding_attention layers but no sliding_window is set (use_sliding_window is "
            "false), so they have no window to attend within"
        )
    return None


def _first_layers(layers: list[int], shown: int = 3) -> str:
    """``layers 1, 2, 3 and 5 more``: which layers, on one line."""
    more = f" and {len(layers) - shown} more" if len(layers) > shown else ""
    return f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers[:shown]))}{more}"


@dataclass(frozen=True)
class ArchitectureSpec:
    """Module paths of one model family, relative to the bare ``*ForCausalLM`` model, and its config checks.

    Attributes:
        family: Short name shown to users.
        model_types: ``config.model_type`` values this record covers.
        embed: Token embedding module (its output is the first residual write).
        layers: The ``ModuleList`` of decoder layers.
        attn: Attention module inside a layer; its output's first element is the layer's attention write.
        mlp: Feed-forward module inside a layer; its output is the layer's MLP write.
        attn_out: The linear inside a layer that projects attention onto the stream (``o_proj``).
        attn_norm: The RMSNorm inside a layer that feeds attention (``input_layernorm``).
        mlp_norm: The RMSNorm inside a layer that feeds the MLP (``post_attention_layernorm``).
        mlp_out: The linear inside a layer that projects the MLP onto the stream (``down_proj``); a layer
            whose MLP is a mixture of experts has none (its experts are under ``experts``).
        final_norm: The RMSNorm applied before the head.
        head: The unembedding (``lm_head``).
        q_states: Module inside a layer whose output is the queries just before RoPE (after ``q_norm`` in
            Qwen3), shaped ``(batch, seq, heads, head_dim)`` or ``(batch, seq, heads * head_dim)``.
        k_states: Same for the keys.
        v_states: Module inside a layer whose output is the values, ``(batch, seq, kv_heads * head_dim)``.
        q_norm: The per-head RMSNorm on the queries inside a layer (Qwen3), ``None`` where attention has none.
        k_norm: Same for the keys.
        rotary: The module that computes the rotary ``(cos, sin)`` tables every attention module receives as
            ``position_embeddings``.
        rotary_function: Name of the family's ``apply_rotary_pos_emb(q, k, cos, sin)`` in the Python module
            that defines its attention class (see :meth:`rotary_fn`).
        rotary_scaling: Attribute of the ``rotary`` module: the factor it multiplies both tables by (see
            :meth:`rotary_scale`).
        experts: Module inside a MoE layer holding the stacked expert weights; it is called with
            ``(tokens, top_k_index, top_k_weights)`` and returns ``Σ_k w_k expert_{i_k}(x)`` per token.
        router: Module inside a MoE layer that chooses the experts (a linear map to one logit per expert).
        expert_gate_up: Parameter of ``experts``: ``(experts, 2 * inter, d_model)``, each expert's gate rows
            then its up rows.
        expert_down: Parameter of ``experts``: ``(experts, d_model, inter)``, each expert's down projection.
        expert_act: Attribute of ``experts``: the activation applied to the gate (``act(gate) * up``).
        qkv_bias: q/k/v projections carry biases (Qwen2).
        checks: Config features the family has that tokenlens does not model (see :meth:`check_config`).
    """

    family: str
    model_types: tuple[str, ...]
    embed: str = "model.embed_tokens"
    layers: str = "model.layers"
    attn: str = "self_attn"
    mlp: str = "mlp"
    attn_norm: str = "input_layernorm"
    mlp_norm: str = "post_attention_layernorm"
    attn_out: str = "self_attn.o_proj"
    mlp_out: str = "mlp.down_proj"
    final_norm: str = "model.norm"
    head: str = "lm_head"
    q_states: str = "self_attn.q_proj"
    k_states: str = "self_attn.k_proj"
    v_states: str = "self_attn.v_proj"
    q_norm: str | None = None
    k_norm: str | None = None
    rotary: str = "model.rotary_emb"
    rotary_function: str = "apply_rotary_pos_emb"
    rotary_scaling: str = "attention_scaling"
    experts: str | None = None
    router: str | None = None
    expert_gate_up: str = "gate_up_proj"
    expert_down: str = "down_proj"
    expert_act: str = "act_fn"
    qkv_bias: bool = False
    checks: tuple[ConfigCheck, ...] = ()

    @property
    def moe(self) -> bool:
        """Layers may hold a routed mixture-of-experts block (which ones: those that have ``experts``)."""
        return self.experts is not None

    @property
    def qk_norm(self) -> bool:
        """Attention normalises each head's queries and keys (``q_norm``/``k_norm``) before RoPE."""
        return self.q_norm is not None and self.k_norm is not None

    def layer_list(self, model: nn.Module) -> list[nn.Module]:
        """The decoder layers of ``model`` (a bare HF model or a PEFT wrapper), in order."""
        return list(bare_model(model).get_submodule(self.layers))

    def module(self, model: nn.Module, path: str) -> nn.Module:
        """The live module at ``path`` of ``model`` (PEFT wrappers are looked through)."""
        return bare_model(model).get_submodule(path)

    def rotary_fn(self, attn: nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        """The ``apply_rotary_pos_emb(q, k, cos, sin)`` that the attention module ``attn`` itself calls.

        transformers defines it beside each attention class, as a plain function that the class's ``forward``
        looks up in its own Python module; it is taken from there, so a recomputed rotation is the model's.

        Raises:
            TokenlensError: That module has no such function.
        """
        where = type(attn).__module__
        fn = getattr(sys.modules.get(where), self.rotary_function, None)
        if not callable(fn):
            raise TokenlensError(
                f"{type(attn).__name__} ({where}) has no {self.rotary_function} beside it: cannot recompute "
                f"the {self.family} rotary embedding"
            )
        return fn

    def rotary_scale(self, model: nn.Module) -> float:
        """The factor ``m`` the rotary module multiplies its ``(cos, sin)`` tables by (1 for plain RoPE).

        Some RoPE variants (YaRN, LongRoPE) scale both tables by an attention factor, which scales every
        query and key by ``m`` and so every attention logit by ``m²``: a temperature, not position.
        """
        return float(getattr(self.module(model, self.rotary), self.rotary_scaling, 1.0))

    def expert_count(self, experts: nn.Module) -> int:
        """How many experts a stacked ``experts`` module holds (the leading dimension of its weights)."""
        return int(getattr(experts, self.expert_gate_up).shape[0])

    def expert_weights(self, experts: nn.Module, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert ``expert``'s ``(2 * inter, d_model)`` gate/up and ``(d_model, inter)`` down weights."""
        return getattr(experts, self.expert_gate_up)[expert], getattr(experts, self.expert_down)[expert]

    def check_config(self, config: Any) -> None:
        """Refuse a config that uses a feature of this family tokenlens does not model.

        Raises:
            TokenlensError: One line naming the feature and why it would make tokenlens's numbers wrong.
        """
        for check in self.checks:
            problem = check(config)
            if problem:
                raise TokenlensError(f"unsupported {self.family} config: {problem}")


_QK_NORM = dict(
    q_states="self_attn.q_norm",
    k_states="self_attn.k_norm",
    q_norm="self_attn.q_norm",
    k_norm="self_attn.k_norm",
)
_MOE = dict(experts="mlp.experts", router="mlp.gate")

SPECS: tuple[ArchitectureSpec, ...] = (
    ArchitectureSpec(family="qwen3", model_types=("qwen3",), checks=(_attention_layer_types,), **_QK_NORM),
    ArchitectureSpec(family="qwen3_moe", model_types=("qwen3_moe",), **_MOE, **_QK_NORM),
    ArchitectureSpec(family="qwen2", model_types=("qwen2",), qkv_bias=True, checks=(_attention_layer_types,)),
    ArchitectureSpec(family="llama", model_types=("llama",)),
)


def supported_model_types() -> list[str]:
    """Every ``config.model_type`` tokenlens can attribute, sorted."""
    return sorted(t for spec in SPECS for t in spec.model_types)


def spec_for_config(config: Any) -> ArchitectureSpec:
    """The spec for a HF config (or anything with ``model_type``), after checking the config against it.

    Raises:
        TokenlensError: The architecture is not supported (the message lists the supported ones), or the
            config uses a feature tokenlens does not model (:meth:`ArchitectureSpec.check_config`).
    """
    model_type = getattr(config, "model_type", None)
    for spec in SPECS:
        if model_type in spec.model_types:
            spec.check_config(config)
            return spec
    arch = ", ".join(getattr(config, "architectures", None) or []) or "unknown class"
    raise TokenlensError(
        f"unsupported architecture {model_type!r} ({arch}); supported: {', '.join(supported_model_types())}"
    )


def bare_model(model: nn.Module) -> nn.Module:
    """The underlying HF ``*ForCausalLM`` of a PEFT-wrapped model, or ``model`` itself.

    PEFT keeps the original module objects, so hooks registered on the bare model's modules are live in
    the wrapped model too.
    """
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def optional_submodule(module: nn.Module, path: str | None) -> nn.Module | None:
    """``module.get_submodule(path)``, or ``None`` when ``path`` is ``None`` or absent (a MoE layer has no
    ``mlp.down_proj``, a dense one no ``mlp.experts``)."""
    if path is None:
        return None
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _prompt_learning_kind(model: nn.Module) -> str | None:
    """The PEFT type of an active prompt-learning adapter (``PROMPT_TUNING``, ``PREFIX_TUNING``…), else None.

    Looks through a ``DistributedDataParallel``-style ``.module`` wrapper.
    """
    config = getattr(getattr(model, "module", model), "active_peft_config", None)
    if config is None or not getattr(config, "is_prompt_learning", False):
        return None
    kind = config.peft_type
    return str(getattr(kind, "value", kind))


def virtual_tokens(model: nn.Module) -> int:
    """Virtual positions a PEFT adapter puts before the input (prompt tuning, P-tuning), else 0.

    The model then runs on ``virtual + seq`` positions: the adapter's learned embeddings, then the prompt's
    token embeddings. Prefix tuning is different: it adds learned keys/values to every layer's cache and no
    positions to the stream (see :func:`virtual_keys`).
    """
    kind = _prompt_learning_kind(model)
    if kind is None or kind in _KEY_VALUE_KINDS:
        return 0
    return int(getattr(model, "module", model).active_peft_config.num_virtual_tokens)


def virtual_keys(model: nn.Module) -> bool:
    """Whether a PEFT adapter adds learned keys/values to every layer's cache (prefix tuning)."""
    return _prompt_learning_kind(model) in _KEY_VALUE_KINDS


_KEY_VALUE_KINDS = ("PREFIX_TUNING", "CARTRIDGE")


def spec_for_model(model: nn.Module) -> ArchitectureSpec:
    """The spec for a loaded model (bare or PEFT-wrapped)."""
    return spec_for_config(bare_model(model).config)


def linear_bias(model: nn.Module, path: str) -> Any:
    """The bias tensor of the linear at ``path`` (looking through PEFT/LoRA wrappers), or ``None``."""
    try:
        module = bare_model(model).get_submodule(path)
    except AttributeError:
        return None
    get_base_layer = getattr(module, "get_base_layer", None)
    if callable(get_base_layer):
        module = get_base_layer()
    return getattr(module, "bias", None)

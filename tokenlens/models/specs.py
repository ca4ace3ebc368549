"""Where each supported model family keeps the parts tokenlens hooks.

Every supported family is a pre-norm decoder: an embedding writes the first residual-stream vector, each
layer reads the stream and adds an attention write and an MLP write, a final RMSNorm rescales the stream and
the head reads logits off it. The families differ only in module paths and in which linears carry biases, so
each family is one declarative :class:`ArchitectureSpec` record; adding a family means adding a record,
not branching on model classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenlens.errors import TokenlensError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ArchitectureSpec:
    """Module paths of one model family, relative to the bare ``*ForCausalLM`` model.

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
        experts: Module inside a MoE layer holding the stacked expert weights; it is called with
            ``(tokens, top_k_index, top_k_weights)``.
        moe: Layers may hold a routed mixture-of-experts block.
        qkv_bias: q/k/v projections carry biases (Qwen2).
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
    experts: str | None = None
    moe: bool = False
    qkv_bias: bool = False

    def layer_list(self, model: nn.Module) -> list[nn.Module]:
        """The decoder layers of ``model`` (a bare HF model or a PEFT wrapper), in order."""
        return list(bare_model(model).get_submodule(self.layers))

    def module(self, model: nn.Module, path: str) -> nn.Module:
        """The live module at ``path`` of ``model`` (PEFT wrappers are looked through)."""
        return bare_model(model).get_submodule(path)


_QK_NORM = dict(q_states="self_attn.q_norm", k_states="self_attn.k_norm")

SPECS: tuple[ArchitectureSpec, ...] = (
    ArchitectureSpec(family="qwen3", model_types=("qwen3",), **_QK_NORM),
    ArchitectureSpec(
        family="qwen3_moe", model_types=("qwen3_moe",), experts="mlp.experts", moe=True, **_QK_NORM
    ),
    ArchitectureSpec(family="qwen2", model_types=("qwen2",), qkv_bias=True),
    ArchitectureSpec(family="llama", model_types=("llama",)),
)


def supported_model_types() -> list[str]:
    """Every ``config.model_type`` tokenlens can attribute, sorted."""
    return sorted(t for spec in SPECS for t in spec.model_types)


def spec_for_config(config: Any) -> ArchitectureSpec:
    """The spec for a HF config (or anything with ``model_type``).

    Raises:
        TokenlensError: The architecture is not supported; the message lists the supported ones.
    """
    model_type = getattr(config, "model_type", None)
    for spec in SPECS:
        if model_type in spec.model_types:
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

"""Architecture specs: every record's paths and family facts hold on a real model of its family, and config
features tokenlens does not model are refused before any weights load.

The records are checked against tiny models built by transformers itself, so a path that a transformers
release renames fails here first. The refused configs are saved as folders whose weights file is garbage:
``tokenlens.load`` must refuse them from the config alone.
"""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import COMMON, TINY, build_tiny

from tokenlens.errors import TokenlensError
from tokenlens.models.loading import load
from tokenlens.models.specs import SPECS, optional_submodule, spec_for_config, spec_for_model

KIND_OF = {"qwen3": "qwen3-tied-gqa", "qwen3_moe": "qwen3-moe", "qwen2": "qwen2-bias", "llama": "llama"}


def test_every_family_has_a_tiny_model():
    assert sorted(spec.family for spec in SPECS) == sorted(KIND_OF)
    assert set(KIND_OF.values()) <= set(TINY)


@pytest.mark.parametrize("family", sorted(KIND_OF))
def test_record_paths_exist_in_a_model_of_the_family(family):
    model = build_tiny(KIND_OF[family])
    spec = spec_for_model(model)
    assert spec.family == family
    for path in (spec.embed, spec.layers, spec.final_norm, spec.head, spec.rotary):
        spec.module(model, path)
    for layer in spec.layer_list(model):
        for path in (spec.attn, spec.mlp, spec.attn_norm, spec.mlp_norm, spec.attn_out):
            layer.get_submodule(path)
        for path in (spec.q_states, spec.k_states, spec.v_states):
            layer.get_submodule(path)
        # a layer has either a dense down_proj or routed experts with their router, never both
        experts = optional_submodule(layer, spec.experts)
        assert (experts is None) == (optional_submodule(layer, spec.router) is None)
        assert (experts is None) != (optional_submodule(layer, spec.mlp_out) is None)
        if experts is not None:
            assert spec.expert_count(experts) == model.config.num_experts
            gate_up, down = spec.expert_weights(experts, 1)
            assert gate_up.shape == (2 * model.config.moe_intermediate_size, model.config.hidden_size)
            assert down.shape == (model.config.hidden_size, model.config.moe_intermediate_size)
    assert spec.moe == (family == "qwen3_moe")


@pytest.mark.parametrize("family", sorted(KIND_OF))
def test_qk_norm_is_what_the_model_has(family):
    """``qk_norm`` (what the trainer and the sweep ask) agrees with the modules the model really has."""
    model = build_tiny(KIND_OF[family])
    spec = spec_for_model(model)
    has_norms = any(name.endswith("self_attn.q_norm") for name, _ in model.named_modules())
    assert spec.qk_norm == has_norms == family.startswith("qwen3")
    for layer in spec.layer_list(model):
        if spec.qk_norm:
            assert layer.get_submodule(spec.q_norm) is layer.get_submodule(spec.q_states)
            assert layer.get_submodule(spec.k_norm) is layer.get_submodule(spec.k_states)
        else:
            assert spec.q_norm is None and spec.k_norm is None


@pytest.mark.parametrize("family", sorted(KIND_OF))
def test_rotary_fn_is_the_function_the_attention_calls(family):
    model = build_tiny(KIND_OF[family])
    spec = spec_for_model(model)
    attn = spec.layer_list(model)[0].get_submodule(spec.attn)
    rope = spec.rotary_fn(attn)
    assert rope is sys.modules[type(attn).__module__].apply_rotary_pos_emb
    assert spec.rotary_scale(model) == 1.0  # plain RoPE: cos and sin are not scaled
    # the rotary module's tables through that function are what the attention module computes with
    q = torch.randn(1, 2, 5, attn.head_dim, generator=torch.Generator().manual_seed(0))
    cos, sin = spec.module(model, spec.rotary)(q, torch.arange(5)[None])
    rotated, _ = rope(q, q, cos, sin)
    assert not torch.allclose(rotated[:, :, 1:], q[:, :, 1:])  # position > 0: really rotated
    torch.testing.assert_close(rotated[:, :, 0], q[:, :, 0])  # position 0: no rotation


def test_rotary_fn_of_a_module_without_one_is_one_line():
    spec = next(s for s in SPECS if s.family == "llama")
    with pytest.raises(TokenlensError, match="Linear .* has no apply_rotary_pos_emb beside it") as info:
        spec.rotary_fn(torch.nn.Linear(2, 2))
    assert "\n" not in str(info.value)


def _config(kind: str, **overrides):
    import transformers

    config_name, _, extra = TINY[kind]
    return getattr(transformers, config_name)(**{**COMMON, **extra, **overrides})


REFUSED = [
    (
        "qwen3-tied-gqa",
        dict(layer_types=["full_attention", "chunked_attention", "chunked_attention"]),
        "unsupported qwen3 config: layer_types has 'chunked_attention' layers (layers 1, 2); tokenlens "
        "recomputes attention patterns for full and sliding-window attention only",
    ),
    (
        "qwen2-bias",
        dict(
            layer_types=["linear_attention", "full_attention", "sliding_attention"], use_sliding_window=True
        ),
        "unsupported qwen2 config: layer_types has 'linear_attention' layers (layer 0)",
    ),
    (
        "qwen3-untied-mha",
        dict(layer_types=["full_attention", "sliding_attention", "full_attention"]),
        "unsupported qwen3 config: layer_types has sliding_attention layers but no sliding_window is set",
    ),
]


@pytest.mark.parametrize(("kind", "overrides", "message"), REFUSED)
def test_unmodelled_config_features_are_refused(kind, overrides, message):
    with pytest.raises(TokenlensError) as info:
        spec_for_config(_config(kind, **overrides))
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("kind", "overrides", "message"), REFUSED)
def test_load_refuses_them_before_reading_weights(tmp_path, monkeypatch, kind, overrides, message):
    """The folder's weights file is not safetensors at all: reading it would be another error."""
    import transformers

    _config(kind, **overrides).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not weights")

    def no_weights(*_args, **_kwargs):
        raise AssertionError("weights were read")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    with pytest.raises(TokenlensError) as info:
        load(str(tmp_path), device="cpu")
    assert str(info.value).startswith(message)


ACCEPTED = [  # config features tokenlens models (tests/test_finer.py checks the splits stay exact with them)
    ("qwen3-tied-gqa", dict(use_sliding_window=True, sliding_window=3, max_window_layers=1)),
    ("qwen2-bias", dict(use_sliding_window=True, sliding_window=3, max_window_layers=1)),
    ("qwen3-moe", dict(use_sliding_window=True, sliding_window=3)),
    ("qwen3-moe", dict(decoder_sparse_step=2, mlp_only_layers=[2], norm_topk_prob=True)),
    ("llama", dict(pretraining_tp=2, hidden_act="gelu_pytorch_tanh")),
]


@pytest.mark.parametrize(("kind", "overrides"), ACCEPTED)
def test_modelled_config_features_are_accepted(kind, overrides):
    config = _config(kind, **overrides)
    assert config.model_type in spec_for_config(config).model_types

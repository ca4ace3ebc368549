"""Finer splits (heads, sources, neurons, experts), logit differences and batching.

Sums can hold by construction while labels are wrong, so each split is also checked independently:
per-head values against TransformerLens, the recomputed attention pattern against eager attention's own
weights, planted weight edits found where they were planted, the MoE router's choice against a manual top-k,
and batched results against running each prompt alone.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY
from test_specs import ACCEPTED

from tokenlens.attribution.direct import attribute, attribute_batch
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import spec_for_model

PROMPT = "The capital of France is the city of"
TOL = 1e-4


def loaded_with(base: LoadedModel, model) -> LoadedModel:
    return LoadedModel(model, base.tokenizer, spec_for_model(model), base.ref, base.source)


@pytest.mark.parametrize("kind", sorted(TINY))
def test_every_split_sums_to_its_parent(tiny_loaded, kind):
    loaded = tiny_loaded(kind)
    moe = kind == "qwen3-moe"
    result = attribute(loaded, PROMPT, heads=True, neurons=4, experts=moe, sources=["all", "L1"])
    parents = result.decomposition.as_dict()
    n_layers, n_heads = result.heads.contributions.shape
    assert n_heads == loaded.model.config.num_attention_heads
    for i in range(n_layers):
        assert abs(sum(result.heads.contributions[i].tolist()) - parents[f"L{i}.attn"]) <= TOL
    assert result.heads.residual.abs().max() <= TOL
    for split in result.sources:
        assert abs(split.residual) <= TOL
        assert torch.all(split.contributions[result.position + 1 :] == 0)
        torch.testing.assert_close(split.pattern.sum(-1), torch.ones(split.pattern.shape[0]))
    layer_split = next(s for s in result.sources if s.head is None)
    assert layer_split.pattern.shape[0] == n_heads
    heads_of_l1 = [s for s in result.sources if s.layer == 1 and s.head is not None]
    total = sum(float(s.contributions.sum()) + s.value_bias for s in heads_of_l1)
    assert total == pytest.approx(float(layer_split.contributions.sum()) + layer_split.value_bias, abs=TOL)
    if moe:
        assert result.neurons.layers == () and result.experts.layers == tuple(range(n_layers))
        assert result.experts.residual.abs().max() <= TOL  # recomputed experts == the block's real output
    else:
        assert result.neurons.layers == tuple(range(n_layers)) and result.neurons.residual.abs().max() <= TOL
        ranked = result.neurons.contributions.abs()
        assert torch.all(ranked[:, :-1] >= ranked[:, 1:])


@pytest.mark.parametrize("kind", ["qwen3-tied-gqa", "qwen3-untied-mha", "qwen2-bias", "llama"])
def test_pattern_matches_eager_attention_weights(tiny_loaded, kind):
    loaded = tiny_loaded(kind)
    position = 5
    result = attribute(loaded, PROMPT, sources=[f"L{i}" for i in range(3)], position=position)
    eager = copy.deepcopy(loaded.model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        out = eager(input_ids=torch.tensor([result.token_ids]), output_attentions=True)
    for split in result.sources:
        expected = out.attentions[split.layer][0, :, position]  # (heads, seq)
        torch.testing.assert_close(split.pattern, expected.float(), atol=1e-5, rtol=0)


def test_heads_match_transformer_lens(tiny_loaded):
    bridge_module = pytest.importorskip("transformer_lens.model_bridge")
    loaded = tiny_loaded("qwen3-tied-gqa")
    position, target = 4, 777
    result = attribute(loaded, PROMPT, target_id=target, position=position, heads=True)
    bridge = bridge_module.TransformerBridge.boot_transformers(
        "tiny",
        hf_model=copy.deepcopy(loaded.model),
        tokenizer=copy.deepcopy(loaded.tokenizer),
        device="cpu",
        dtype=torch.float32,
    )
    with torch.no_grad():
        _, cache = bridge.run_with_cache(torch.tensor([result.token_ids]))
        stack, labels = cache.stack_head_results(layer=-1, pos_slice=position, return_labels=True)
        normed = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=position)[:, 0]  # (layer*head, d)
        expected = (normed * bridge.ln_final.weight) @ bridge.W_U[:, target]
    assert labels[:2] == ["L0H0", "L0H1"]
    torch.testing.assert_close(result.heads.contributions.flatten(), expected.float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("kind", "overrides"), ACCEPTED)
def test_config_features_tokenlens_models_keep_every_split_exact(tiny_loaded, kind, overrides):
    """Sliding windows (recomputed as transformers masks them), MoE layer patterns and router options, and
    config keys transformers ignores (Llama ``pretraining_tp``) leave every split exact."""
    loaded = tiny_loaded(kind, **overrides)
    position = 7  # past the 3-token windows
    scopes = [f"L{i}" for i in range(3)]
    result = attribute(
        loaded, PROMPT, position=position, heads=True, neurons=4, experts=loaded.spec.moe, sources=scopes
    )
    ids = torch.tensor([result.token_ids])
    eager = copy.deepcopy(loaded.model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits[0, position]
        attentions = eager(input_ids=ids, output_attentions=True).attentions
    assert result.decomposition.logit == pytest.approx(float(logits[result.target.id]), abs=1e-5)
    assert result.decomposition.exact
    assert result.heads.residual.abs().max() <= TOL
    for split in result.sources:
        assert abs(split.residual) <= TOL
        torch.testing.assert_close(split.pattern, attentions[split.layer][0, :, position], atol=1e-5, rtol=0)
    window = overrides.get("sliding_window")
    if window:  # some layer really attends within its window only
        assert min(int((s.pattern[0] > 0).sum()) for s in result.sources) == window
    experts = result.experts.layers if loaded.spec.moe else ()
    assert sorted(experts + result.neurons.layers) == [0, 1, 2]
    assert all(abs(r) <= TOL for r in result.neurons.residual.tolist())
    if experts:
        assert result.experts.residual.abs().max() <= TOL


def test_planted_head_edit_is_found_at_that_head(tiny_loaded):
    """Boost one head's output weights along the target's readout: only that head (and later layers) move."""
    loaded = tiny_loaded("llama")
    layer, head, target = 1, 2, 999
    before = attribute(loaded, PROMPT, target_id=target, heads=True)
    edited = copy.deepcopy(loaded.model)
    o_proj = edited.model.layers[layer].self_attn.o_proj
    head_dim = edited.model.layers[layer].self_attn.head_dim
    direction = (edited.lm_head.weight[target] * edited.model.norm.weight).detach()
    with torch.no_grad():
        o_proj.weight[:, head * head_dim : (head + 1) * head_dim] += (
            3.0 * direction[:, None] / direction.norm()
        )
    after = attribute(loaded_with(loaded, edited), PROMPT, target_id=target, heads=True)
    # divide out the final-norm scale s (the edit changes h_L and so s for every term)
    unscaled_after = after.heads.contributions / after.decomposition.scale
    unscaled_before = before.heads.contributions / before.decomposition.scale
    change = (unscaled_after - unscaled_before).abs()
    assert int(change[layer].argmax()) == head and float(change[layer, head]) > 1e-2
    untouched = change[: layer + 1].clone()
    untouched[layer, head] = 0
    assert untouched.max() < 1e-5  # same inputs, same weights: heads up to the edited layer did not move


def test_planted_neuron_is_the_top_neuron(tiny_loaded):
    loaded = tiny_loaded("qwen3-tied-gqa")
    layer, neuron, target = 2, 17, 4321
    model = loaded.model
    direction = (model.lm_head.weight[target] * model.model.norm.weight).detach()
    with torch.no_grad():
        model.model.layers[layer].mlp.down_proj.weight[:, neuron] = 5.0 * direction / direction.norm()
    result = attribute(loaded, PROMPT, target_id=target, neurons=3)
    row = result.neurons.layers.index(layer)
    assert int(result.neurons.ids[row, 0]) == neuron
    # independent: the neuron's activation from the real gate/up projections, times its column, read out
    ids = torch.tensor([result.token_ids])
    captured = {}
    mlp = model.model.layers[layer].mlp
    handle = mlp.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    x = captured["x"][0, -1]
    with torch.no_grad():
        act = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    assert float(result.neurons.activations[row, 0]) == pytest.approx(float(act[neuron]), abs=1e-5)
    column = mlp.down_proj.weight[:, neuron].detach()
    expected = float(act[neuron] * (column @ direction)) * result.decomposition.scale
    assert float(result.neurons.contributions[row, 0]) == pytest.approx(expected, rel=1e-4)


def test_experts_are_the_routers_top_k(tiny_loaded):
    loaded = tiny_loaded("qwen3-moe")
    result = attribute(loaded, PROMPT, experts=True)
    model = loaded.model
    captured = {}
    handles = [
        layer.mlp.register_forward_hook(lambda m, i, o, n=n: captured.__setitem__(n, i[0]))
        for n, layer in enumerate(model.model.layers)
    ]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([result.token_ids]))
    finally:
        for h in handles:
            h.remove()
    for row, layer in enumerate(result.experts.layers):
        x = captured[layer][0, -1]
        router = loaded.spec.layer_list(model)[layer].get_submodule(loaded.spec.router)
        assert router is model.model.layers[layer].mlp.gate
        probs = (x @ router.weight.T).softmax(-1)
        assert set(result.experts.expert_ids[row].tolist()) == set(probs.topk(2).indices.tolist())


def test_value_bias_is_its_own_term(tiny_loaded):
    loaded = tiny_loaded("qwen2-bias")
    result = attribute(loaded, PROMPT, sources=["L0.H1"])
    (split,) = result.sources
    assert abs(split.value_bias) > 1e-6  # perturbed biases: a real, separate term
    model = loaded.model
    attn = model.model.layers[0].self_attn
    group = 1 // (model.config.num_attention_heads // model.config.num_key_value_heads)
    b_v = attn.v_proj.bias[group * attn.head_dim : (group + 1) * attn.head_dim].detach()
    w_o = attn.o_proj.weight[:, attn.head_dim : 2 * attn.head_dim].detach()
    direction = (model.lm_head.weight[result.target.id] * model.model.norm.weight).detach()
    expected = float((w_o @ b_v) @ direction) * result.decomposition.scale
    assert split.value_bias == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_logit_difference_is_the_difference_of_splits(tiny_loaded):
    loaded = tiny_loaded("qwen3-untied-mha")
    diff = attribute(loaded, PROMPT, target=" Paris", vs=" London", heads=True)
    paris = attribute(loaded, PROMPT, target=" Paris", heads=True)
    london = attribute(loaded, PROMPT, target=" London", heads=True)
    assert diff.contrast.token == " London"
    assert diff.decomposition.logit == pytest.approx(paris.target.logit - london.target.logit, abs=1e-5)
    torch.testing.assert_close(
        diff.decomposition.contributions,
        paris.decomposition.contributions - london.decomposition.contributions,
        atol=1e-5,
        rtol=0,
    )
    torch.testing.assert_close(
        diff.heads.contributions, paris.heads.contributions - london.heads.contributions, atol=1e-5, rtol=0
    )
    assert diff.decomposition.exact
    with pytest.raises(TokenlensError, match="contrast token is the target"):
        attribute(loaded, PROMPT, target=" Paris", vs=" Paris")


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kind", ["qwen3-tied-gqa", "qwen2-bias"])
def test_batched_equals_one_by_one(tiny_loaded, kind, side):
    loaded = tiny_loaded(kind)
    prompts = ["Hello", "The capital of France is the city of", "One two three four"]
    batched = attribute_batch(loaded, prompts, padding_side=side, heads=True, sources=["L1.H0"], neurons=3)
    for prompt, got in zip(prompts, batched, strict=True):
        alone = attribute(loaded, prompt, heads=True, sources=["L1.H0"], neurons=3)
        assert got.position == alone.position and got.target.id == alone.target.id
        torch.testing.assert_close(
            got.decomposition.contributions, alone.decomposition.contributions, atol=1e-5, rtol=0
        )
        torch.testing.assert_close(got.heads.contributions, alone.heads.contributions, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.neurons.contributions, alone.neurons.contributions, atol=1e-5, rtol=0)
        got_src, alone_src = got.sources[0], alone.sources[0]  # cut to the prompt's own positions
        torch.testing.assert_close(got_src.contributions, alone_src.contributions, atol=1e-5, rtol=0)
        torch.testing.assert_close(got_src.pattern, alone_src.pattern, atol=1e-5, rtol=0)
        assert got_src.residual == pytest.approx(alone_src.residual, abs=1e-5)
        assert got.target.logit == pytest.approx(alone.target.logit, abs=1e-5)


def test_lora_wrapped_model_splits_without_merging(tiny_loaded):
    from peft import LoraConfig, get_peft_model

    loaded = tiny_loaded("qwen3-tied-gqa")
    torch.manual_seed(3)
    config = LoraConfig(r=2, target_modules=["o_proj", "down_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(loaded.model), config)
    wrapped = attribute(
        loaded_with(loaded, peft_model), PROMPT, target_id=55, heads=True, neurons=4, sources=["L2"]
    )
    merged_model = copy.deepcopy(peft_model).merge_and_unload()
    merged = attribute(
        loaded_with(loaded, merged_model), PROMPT, target_id=55, heads=True, neurons=4, sources=["L2"]
    )
    assert wrapped.heads.residual.abs().max() <= TOL and abs(wrapped.sources[0].residual) <= TOL
    torch.testing.assert_close(wrapped.heads.contributions, merged.heads.contributions, atol=1e-5, rtol=0)
    torch.testing.assert_close(wrapped.neurons.contributions, merged.neurons.contributions, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        wrapped.sources[0].contributions, merged.sources[0].contributions, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sources": ["L9"]}, "layer 9 does not exist"),
        ({"sources": ["L1.H7"]}, "head 7 does not exist"),
        ({"sources": ["layer1"]}, "cannot read source scope"),
        ({"experts": True}, "needs a mixture-of-experts model"),
        ({"neurons": -1}, "0 or more"),
    ],
)
def test_bad_split_requests(tiny_loaded, kwargs, message):
    with pytest.raises(TokenlensError, match=message):
        attribute(tiny_loaded("llama"), PROMPT, **kwargs)


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_quantised_model_reports_the_split_residual(quantisable_checkpoint, bits):
    """Finer splits of a bitsandbytes model use the module's own (dequantised) map; what that misses of the
    hooked layer output is reported as the residual, not hidden."""
    pytest.importorskip("bitsandbytes")
    from tokenlens.attribution import finer
    from tokenlens.attribution.direct import decompose, run_with_internals
    from tokenlens.attribution.readout import make_readout
    from tokenlens.models.loading import load

    loaded = load(str(quantisable_checkpoint), quantize=bits)
    ids = torch.arange(3, 40, 3)[None]
    position = torch.tensor([ids.shape[1] - 1])
    splits = frozenset({"heads", "neurons"})
    capture, internals, logits = run_with_internals(loaded.model, loaded.spec, ids, position, splits)
    d = decompose(loaded.model, capture, logits, position=int(position), target_id=17)
    readout = make_readout(loaded.model, loaded.spec, capture.final_input[0, 0], 17)
    heads = finer.head_split(loaded.model, loaded.spec, internals.layers, readout, d.as_dict(), 0, 0)
    neurons = finer.neuron_split(loaded.model, loaded.spec, internals.layers, readout, d.as_dict(), 0, 0, 5)
    assert d.exact  # the layer level is exact: hooked outputs
    scale = float(d.contributions.abs().max())
    assert torch.isfinite(heads.residual).all() and torch.isfinite(neurons.residual).all()
    assert heads.residual.abs().max() < 0.2 * scale and neurons.residual.abs().max() < 0.2 * scale


@pytest.mark.parametrize("mode", ["lora", "modules_to_save"])
def test_wrapped_head_is_read_as_the_model_applies_it(tiny_loaded, mode):
    from peft import LoraConfig, get_peft_model

    loaded = tiny_loaded("llama")
    torch.manual_seed(4)
    if mode == "lora":
        config = LoraConfig(r=2, target_modules=["lm_head"], init_lora_weights=False)
    else:
        config = LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"])
    peft_model = get_peft_model(copy.deepcopy(loaded.model), config)
    if mode == "modules_to_save":
        with torch.no_grad():
            peft_model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    result = attribute(loaded_with(loaded, peft_model), PROMPT, target=" Paris", vs=" Rome")
    with torch.no_grad():
        logits = peft_model(input_ids=torch.tensor([result.token_ids])).logits[0, -1]
    expected = float(logits[result.target.id] - logits[result.contrast.id])
    assert result.decomposition.logit == pytest.approx(expected, abs=1e-5)
    assert abs(result.decomposition.total - expected) <= result.decomposition.tolerance

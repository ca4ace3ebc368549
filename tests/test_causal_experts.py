"""MoE expert sites ``L{i}.E{e}``: recorded, ablated, patched and estimated, checked against weight edits.

Every check compares with an independent computation on a copy of the model whose expert weights were
edited: zeroing one expert's ``down_proj`` removes exactly its term (the router reads the block input, which
the edit does not touch), and perturbing it plants a change only that expert carries.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import count_hooks

from tokenlens.capture.internals import expert_output
from tokenlens.causal import (
    Metric,
    ablate,
    attribution_patch,
    check_estimates,
    expert_sites,
    layer_sites,
    parse_sites,
    patch,
)
from tokenlens.causal.effects import record_values
from tokenlens.causal.estimates import every_component
from tokenlens.causal.metrics import encode
from tokenlens.errors import TokenlensError

PROMPT = "The quick brown fox jumps over the lazy"
TOKEN = 106507


def last_logit(ids: torch.Tensor) -> Metric:
    return Metric("logit", TOKEN, ids.shape[1] - 1)


def logit(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(input_ids=ids).logits[0, -1, TOKEN])


@pytest.fixture(scope="module")
def moe(tiny_loaded):
    """A tiny Qwen3-MoE model (3 layers, 4 experts, top 2), its prompt ids and a planted copy.

    The copy's layer-1 expert 3 has a perturbed ``down_proj``; nothing else differs.
    """
    loaded = tiny_loaded("qwen3-moe")
    edited = copy.deepcopy(loaded.model)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        down = edited.model.layers[1].mlp.experts.down_proj  # (experts, d_model, moe_intermediate)
        down[3] += 2 * torch.randn(down[3].shape, generator=generator)
    return loaded, encode(loaded, PROMPT), edited


def test_expert_terms_are_what_the_block_computes_with_the_other_experts_removed(moe):
    loaded, ids, _ = moe
    model, spec = loaded.model, loaded.spec
    sites = parse_sites("L1.E*,L1.mlp", model, spec)
    values = record_values(model, spec, ids, sites)
    terms = torch.stack([values[f"L1.E{e}"] for e in range(4)])  # (expert, 1, seq, d_model)
    torch.testing.assert_close(terms.sum(0), values["L1.mlp"], atol=1e-6, rtol=1e-5)
    routed = (terms.abs().amax(-1) > 0).sum(0)  # (1, seq): each token reaches exactly top_k = 2 experts
    assert routed.eq(2).all()
    for e in range(4):
        alone = copy.deepcopy(model)
        with torch.no_grad():
            keep = torch.arange(4) == e
            alone.model.layers[1].mlp.experts.down_proj[~keep] = 0
        block = record_values(alone, spec, ids, parse_sites("L1.mlp", alone, spec))["L1.mlp"]
        torch.testing.assert_close(values[f"L1.E{e}"], block, atol=1e-6, rtol=1e-5)
    assert count_hooks(model) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expert_output_is_the_experts_module_forward_in_float32(moe, dtype):
    """The one expert term both the expert split and the expert sites use, against the experts module's own
    forward with one routing slot per token; for a bfloat16 model, against that forward run in float32 on
    the same (bfloat16) weights and inputs."""
    loaded, _, _ = moe
    spec = loaded.spec
    model = copy.deepcopy(loaded.model).to(dtype)
    reference = copy.deepcopy(model).float()
    generator = torch.Generator().manual_seed(7)
    tokens = torch.randn(5, model.config.hidden_size, generator=generator).to(dtype)
    weights = torch.rand(5, generator=generator).to(dtype)
    for layer in range(3):
        experts = spec.layer_list(model)[layer].get_submodule(spec.experts)
        own = spec.layer_list(reference)[layer].get_submodule(spec.experts)
        for expert in range(spec.expert_count(experts)):
            term = expert_output(spec, experts, tokens, expert, weights)
            slot = torch.full((5, 1), expert)
            with torch.no_grad():
                expected = own.forward(tokens.float(), slot, weights.float()[:, None])
            assert term.dtype == torch.float32
            torch.testing.assert_close(term, expected, atol=1e-6, rtol=1e-5)
            one = expert_output(
                spec, experts, tokens[2], expert, weights[2]
            )  # one token, as the split calls it
            torch.testing.assert_close(one, term[2], atol=1e-6, rtol=1e-5)


def test_zero_ablating_an_expert_equals_zeroing_its_weights(moe):
    loaded, ids, _ = moe
    model, spec = loaded.model, loaded.spec
    result = ablate(model, spec, ids, last_logit(ids), parse_sites("L1.E2,L2.E0", model, spec))
    for name, edits in (("L1.E2", [(1, 2)]), ("together", [(1, 2), (2, 0)])):
        edited = copy.deepcopy(model)
        with torch.no_grad():
            for layer, expert in edits:
                edited.model.layers[layer].mlp.experts.down_proj[expert] = 0
        effect = result.together if name == "together" else result.each[0]
        assert effect.value == pytest.approx(logit(edited, ids), abs=1e-5)
        assert abs(effect.delta) > 1e-4
    every = ablate(model, spec, ids, last_logit(ids), parse_sites("L1.E*", model, spec), each=False)
    block = ablate(model, spec, ids, last_logit(ids), parse_sites("L1.mlp", model, spec), each=False)
    assert every.together.value == pytest.approx(block.together.value, abs=1e-5)


def test_mean_and_resample_ablation_of_an_expert_run(moe):
    loaded, ids, _ = moe
    model, spec = loaded.model, loaded.spec
    other = encode(loaded, "A slow green turtle walks under the busy")
    sites = parse_sites("L0.E1", model, spec)
    assert other.shape == ids.shape
    resampled = ablate(model, spec, ids, last_logit(ids), sites, mode="resample", reference_ids=[other])
    patched = patch(model, spec, other, ids, last_logit(ids), sites)  # the same replacement, other name
    assert resampled.each[0].value == pytest.approx(patched.effects[0].value, abs=1e-6)
    mean = ablate(model, spec, ids, last_logit(ids), sites, mode="mean", reference_ids=[other, other[:, :5]])
    assert "all 13 positions" in mean.reference
    assert torch.isfinite(torch.tensor(mean.each[0].value))


def test_planted_expert_edit_is_localised_by_patching(moe):
    loaded, ids, edited = moe
    model, spec = loaded.model, loaded.spec
    sites = layer_sites(model, spec) + expert_sites(model, spec)
    result = patch(model, spec, ids, ids, last_logit(ids), sites, clean_model=edited)
    assert abs(result.gap) > 0.1
    effects = {e.name: e for e in result.effects}
    assert effects["L1.E3"].restored == pytest.approx(1.0, abs=1e-4)
    assert effects["L1.mlp"].restored == pytest.approx(1.0, abs=1e-4)
    unchanged = ["embed", "L0.attn", "L0.mlp", "L1.attn", "L0.E0", "L0.E3", "L1.E0", "L1.E1", "L1.E2"]
    assert all(abs(effects[name].delta) <= 1e-5 for name in unchanged)
    experts = [e for e in result.effects if ".E" in e.name]
    assert max(experts, key=lambda e: abs(e.delta)).name == "L1.E3"
    assert count_hooks(model) == count_hooks(edited) == 0


def test_attribution_patching_of_experts_ranks_the_planted_one_first(moe):
    loaded, ids, edited = moe
    model, spec = loaded.model, loaded.spec
    experts = expert_sites(model, spec)
    assert [s.name for s in experts][:5] == ["L0.E0", "L0.E1", "L0.E2", "L0.E3", "L1.E0"]
    assert set(experts) <= set(every_component(model, spec))
    check = check_estimates(
        model, spec, ids, last_logit(ids), experts, top_k=3, clean_ids=ids, clean_model=edited
    )
    assert check.rows[0].name == "L1.E3"
    assert check.rows[0].sign_agrees
    # an expert's term enters the block output with coefficient one: the zero-ablation estimates of a
    # layer's experts add up to the estimate for the whole block
    zero = attribution_patch(model, spec, ids, last_logit(ids), parse_sites("L1.E*,L1.mlp", model, spec))
    estimate = dict(zip(zero.names, zero.estimates.tolist(), strict=True))
    total = sum(estimate[f"L1.E{e}"] for e in range(4))
    assert total == pytest.approx(estimate["L1.mlp"], rel=1e-4, abs=1e-6)
    assert count_hooks(model) == 0


@pytest.mark.parametrize(
    ("kind", "names", "message"),
    [
        ("qwen3-moe", "L0.E4", "expert 4 does not exist: layer 0's MLP has 4 experts"),
        ("qwen3-moe", "L1.E2-1", "empty range"),
        ("qwen3-tied-gqa", "L0.E0", "layer 0's MLP has no routed experts"),
    ],
)
def test_bad_expert_names_are_one_line_errors(tiny_loaded, kind, names, message):
    loaded = tiny_loaded(kind)
    with pytest.raises(TokenlensError, match=message) as info:
        parse_sites(names, loaded.model, loaded.spec)
    assert "\n" not in str(info.value)
    if kind != "qwen3-moe":
        assert expert_sites(loaded.model, loaded.spec) == ()


def test_layer_wildcards_skip_layers_without_the_part(tiny_loaded):
    loaded = tiny_loaded("qwen3-moe", mlp_only_layers=[1])  # layer 1 is a dense MLP
    model, spec = loaded.model, loaded.spec
    assert [s.name for s in parse_sites("L*.E0", model, spec)] == ["L0.E0", "L2.E0"]
    assert [s.name for s in parse_sites("L*.N3", model, spec)] == ["L1.N3"]
    assert [s.layer for s in expert_sites(model, spec)] == [0] * 4 + [2] * 4
    with pytest.raises(TokenlensError, match="layer 1's MLP has no routed experts"):
        parse_sites("L1.E0", model, spec)
    dense = tiny_loaded("qwen3-tied-gqa")
    with pytest.raises(TokenlensError, match="layer 0's MLP has no routed experts"):
        parse_sites("L*.E0", dense.model, dense.spec)

"""Causal effects, each checked against an independent route: weight edits on a copy, a planted change,
direct logit attribution, a rotary embedding switched off at its source, HF's own logits.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import count_hooks

from tokenlens.attribution.direct import attribute
from tokenlens.causal import (
    Metric,
    ablate,
    ablate_norms,
    ablate_rope,
    ablation,
    attribution_patch,
    check_estimates,
    head_sites,
    layer_sites,
    metric_for,
    norm_ablation,
    parse_sites,
    patch,
    patching,
    rope_ablation,
)
from tokenlens.causal.interventions import replace, scaled, zeroed
from tokenlens.causal.metrics import encode, run_metric
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import LoadedModel

PROMPT = "The quick brown fox jumps over the lazy"
TOKEN = 106507  # any fixed token; the tiny models are random


def plain_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Last-position logits ``(vocab,)`` of a plain forward pass, no hooks."""
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1].float()


def last(ids: torch.Tensor, kind: str = "logit", **extra) -> Metric:
    return Metric(kind, TOKEN, ids.shape[1] - 1, **extra)


@pytest.fixture(scope="module")
def planted(tiny_loaded):
    """A tiny MHA model and a copy whose layer-1 head 2 value projection is strongly changed."""
    loaded = tiny_loaded("qwen3-untied-mha")
    edited = copy.deepcopy(loaded.model)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        v = edited.model.layers[1].self_attn.v_proj.weight  # (heads * head_dim, d): rows of head 2 = 16:24
        v[16:24] += torch.randn(v[16:24].shape, generator=generator)
    return loaded, edited, encode(loaded, PROMPT)


def test_metric_kinds_match_hf_logits(tiny_loaded):
    loaded = tiny_loaded("llama")
    ids = encode(loaded, PROMPT)
    logits = plain_logits(loaded.model, ids)
    expected = {
        "logit": logits[TOKEN],
        "logprob": torch.log_softmax(logits.double(), -1)[TOKEN],
        "prob": torch.softmax(logits.double(), -1)[TOKEN],
        "logit_diff": logits[TOKEN] - logits[7],
    }
    for kind, value in expected.items():
        metric = last(ids, kind, contrast_id=7 if kind == "logit_diff" else None)
        with torch.no_grad():
            got = run_metric(loaded.model, loaded.spec, ids, metric)
        tolerance = {"rel": 1e-4} if kind == "prob" else {"abs": 1e-5}  # a random model's p is ~1e-5
        assert float(got) == pytest.approx(float(value), **tolerance)
    default = metric_for(loaded, PROMPT)
    assert default.target_id == int(logits[: len(loaded.tokenizer)].argmax())


def test_planted_edit_is_localised_by_patching(planted):
    loaded, edited, ids = planted
    spec = loaded.spec
    sites = layer_sites(loaded.model, spec) + head_sites(loaded.model, spec)
    result = patch(loaded.model, spec, ids, ids, last(ids), sites, clean_model=edited)
    assert result.clean == pytest.approx(float(plain_logits(edited, ids)[TOKEN]), abs=1e-5)
    assert result.corrupted == pytest.approx(float(plain_logits(loaded.model, ids)[TOKEN]), abs=1e-5)
    assert abs(result.gap) > 0.1
    effects = {e.name: e for e in result.effects}
    assert effects["L1.H2"].restored == pytest.approx(1.0, abs=1e-4)
    upstream = ["embed", "L0.attn", "L0.mlp", "L0.H0", "L0.H1", "L0.H2", "L0.H3", "L1.H0", "L1.H1", "L1.H3"]
    assert all(abs(effects[name].delta) <= 1e-6 for name in upstream)
    heads = [e for e in result.effects if ".H" in e.name]
    assert max(heads, key=lambda e: abs(e.delta)).name == "L1.H2"
    assert count_hooks(loaded.model) == count_hooks(edited) == 0


def test_attribution_patching_ranks_the_planted_head_first_and_agrees_in_sign(planted):
    loaded, edited, ids = planted
    heads = head_sites(loaded.model, loaded.spec)
    for param in loaded.model.parameters():
        assert param.grad is None
    check = check_estimates(
        loaded.model, loaded.spec, ids, last(ids), heads, top_k=4, clean_ids=ids, clean_model=edited
    )
    assert check.estimates.reference == "clean run"
    assert check.rows[0].name == "L1.H2"
    assert all(row.sign_agrees for row in check.rows)
    assert all(param.grad is None for param in loaded.model.parameters())
    with torch.no_grad():  # works inside no_grad too: gradients are enabled locally
        zero = attribution_patch(loaded.model, loaded.spec, ids, last(ids), heads)
    top = [site for site in heads if site.name in dict(zero.ranked(3))]
    exact = ablate(loaded.model, loaded.spec, ids, last(ids), top, together=False)
    for effect in exact.each:
        estimate = float(zero.estimates[zero.names.index(effect.name)])
        assert (estimate > 0) == (effect.delta > 0)


def test_frozen_final_scale_turns_last_mlp_ablation_into_minus_its_dla(tiny_loaded):
    loaded = tiny_loaded("qwen3-untied-mha")
    with torch.no_grad():  # a large last MLP write, so that removing it moves the norm's scale
        loaded.model.model.layers[2].mlp.down_proj.weight *= 30
    dla = attribute(loaded, PROMPT, target_id=TOKEN).decomposition.as_dict()["L2.mlp"]
    frozen = ablation(
        loaded,
        PROMPT,
        "L2.mlp",
        metric=metric_for(loaded, PROMPT, target_id=TOKEN),
        freeze_final_scale=True,
        each=False,
    )
    assert frozen.together.delta == pytest.approx(-dla, abs=1e-4 * max(1.0, abs(dla)))
    assert abs(dla) > 1e-2
    free = ablation(loaded, PROMPT, "L2.mlp", metric=frozen.metric, each=False)
    assert abs(free.together.delta - frozen.together.delta) > 1e-3  # the norm's rescaling is a real effect


def test_head_ablation_equals_zeroing_o_proj_columns(tiny_loaded):
    loaded = tiny_loaded("qwen3-tied-gqa")
    ids = encode(loaded, PROMPT)
    sites = parse_sites("L1.H1,L2.H0-1", loaded.model, loaded.spec)
    result = ablate(loaded.model, loaded.spec, ids, last(ids, "logprob"), sites)
    edited = copy.deepcopy(loaded.model)
    with torch.no_grad():
        edited.model.layers[1].self_attn.o_proj.weight[:, 8:16] = 0  # head_dim 8
        edited.model.layers[2].self_attn.o_proj.weight[:, 0:16] = 0
    expected = torch.log_softmax(plain_logits(edited, ids).double(), -1)[TOKEN]
    assert result.together.value == pytest.approx(float(expected), abs=1e-5)
    assert abs(result.together.delta) > 1e-4
    with torch.no_grad(), replace(loaded.model, loaded.spec, {s: zeroed() for s in sites}):
        hooked = plain_logits(loaded.model, ids)
    torch.testing.assert_close(hooked, plain_logits(edited, ids), atol=1e-5, rtol=0)
    doubled = copy.deepcopy(loaded.model)
    with torch.no_grad():
        doubled.model.layers[1].self_attn.o_proj.weight[:, 8:16] *= 2
    with torch.no_grad(), replace(loaded.model, loaded.spec, {sites[0]: scaled(2.0)}):
        hooked = plain_logits(loaded.model, ids)
    torch.testing.assert_close(hooked, plain_logits(doubled, ids), atol=1e-5, rtol=0)


def test_moe_layer_ablation_equals_zeroing_its_experts(tiny_loaded):
    loaded = tiny_loaded("qwen3-moe")
    ids = encode(loaded, PROMPT)
    result = ablation(loaded, PROMPT, "L1.mlp,L2.H0", metric=last(ids), each=False)
    edited = copy.deepcopy(loaded.model)
    with torch.no_grad():
        edited.model.layers[1].mlp.experts.down_proj.zero_()  # (expert, d, moe_intermediate): no bias
        edited.model.layers[2].self_attn.o_proj.weight[:, 0:8] = 0
    assert result.together.value == pytest.approx(float(plain_logits(edited, ids)[TOKEN]), abs=1e-5)
    assert abs(result.together.delta) > 1e-4


def test_neuron_ablation_and_pooled_mean_ablation_equal_down_proj_edits(tiny_loaded):
    loaded = tiny_loaded("llama-out-bias")  # down_proj has a bias, which ablation must keep
    ids = encode(loaded, PROMPT)
    sites = parse_sites(["L0.N3", "L2.N10-11"], loaded.model, loaded.spec)
    zero = ablate(loaded.model, loaded.spec, ids, last(ids), sites)
    edited = copy.deepcopy(loaded.model)
    with torch.no_grad():
        edited.model.layers[0].mlp.down_proj.weight[:, 3] = 0
        edited.model.layers[2].mlp.down_proj.weight[:, 10:12] = 0
    assert zero.together.value == pytest.approx(float(plain_logits(edited, ids)[TOKEN]), abs=1e-5)

    # mean over references of other lengths: one pooled value, i.e. a constant folded into the bias
    references = ["Hello there", "One two three four five six seven eight nine"]
    acts = []
    down = loaded.model.model.layers[0].mlp.down_proj
    handle = down.register_forward_pre_hook(lambda _m, args: acts.append(args[0][0, :, 3]))
    with torch.no_grad():
        for text in references:
            loaded.model(input_ids=encode(loaded, text))
    handle.remove()
    pooled = torch.cat(acts).mean()
    mean = ablation(loaded, PROMPT, "L0.N3", mode="mean", reference_prompts=references, metric=last(ids))
    folded = copy.deepcopy(loaded.model)
    with torch.no_grad():
        w = folded.model.layers[0].mlp.down_proj
        w.bias += pooled * w.weight[:, 3]
        w.weight[:, 3] = 0
    assert mean.reference.startswith("mean over all")
    assert mean.together.value == pytest.approx(float(plain_logits(folded, ids)[TOKEN]), abs=1e-5)


def test_per_position_mean_and_resample_ablation(tiny_loaded):
    loaded = tiny_loaded("qwen2-bias")
    ids = encode(loaded, PROMPT)
    other = "A slow green turtle walks under the sleepy"
    assert encode(loaded, other).shape == ids.shape
    # the per-position mean of the prompt itself changes nothing (a pooled mean would)
    same = ablation(
        loaded, PROMPT, "L0-2.attn", mode="mean", reference_prompts=[PROMPT, PROMPT], metric=last(ids)
    )
    assert "per position" in same.reference
    assert same.together.delta == pytest.approx(0.0, abs=1e-5)
    # resampling the embedding from another prompt is running that prompt
    resampled = ablation(
        loaded, PROMPT, "embed", mode="resample", reference_prompts=[other], metric=last(ids)
    )
    other_ids = encode(loaded, other)
    expected = plain_logits(loaded.model, other_ids)[TOKEN]
    assert resampled.together.value == pytest.approx(float(expected), abs=1e-5)
    # patching the embedding at the last position only is running the prompt with the other last token
    embed = parse_sites("embed", loaded.model, loaded.spec)
    seq = ids.shape[1]
    result = patch(loaded.model, loaded.spec, other_ids, ids, last(ids), embed, positions=[seq - 1])
    mixed = torch.cat([ids[:, :-1], other_ids[:, -1:]], dim=1)
    assert result.effects[0].value == pytest.approx(float(plain_logits(loaded.model, mixed)[TOKEN]), abs=1e-5)
    assert result.positions == (seq - 1,)


def test_rope_ablation_equals_a_copy_whose_rotary_embedding_is_switched_off(tiny_loaded):
    loaded = tiny_loaded("qwen3-tied-gqa")
    ids = encode(loaded, PROMPT)
    result = rope_ablation(loaded, PROMPT, metric=last(ids))
    no_rope = copy.deepcopy(loaded.model)
    rotary = no_rope.model.rotary_emb
    original = rotary.forward

    def identity_rotation(x, position_ids):
        cos, sin = original(x, position_ids)
        return torch.ones_like(cos), torch.zeros_like(sin)

    rotary.forward = identity_rotation
    assert result.together.value == pytest.approx(float(plain_logits(no_rope, ids)[TOKEN]), abs=1e-5)
    assert abs(result.together.delta) > 1e-3
    assert [e.name for e in result.each] == ["L0.rope", "L1.rope", "L2.rope"]
    assert all(abs(e.delta) > 1e-5 for e in result.each)
    one = ablate_rope(loaded.model, loaded.spec, ids, last(ids), layers=[0], each=False)
    assert one.together.value == pytest.approx(result.each[0].value, abs=1e-6)


def test_rope_ablation_keeps_the_attention_scaling_of_yarn(tiny_loaded):
    """YaRN scales cos and sin by an attention factor m (a temperature on every score, not position): RoPE
    ablation removes the rotation only, as a copy whose rotary tables keep their magnitude sqrt(cos² + sin²)
    and lose their angle."""
    yarn = dict(rope_type="yarn", factor=4.0, rope_theta=10000.0, original_max_position_embeddings=16)
    loaded = tiny_loaded("qwen3-tied-gqa", rope_parameters=yarn)
    ids = encode(loaded, PROMPT)
    result = rope_ablation(loaded, PROMPT, metric=last(ids), each=False)
    no_rotation = copy.deepcopy(loaded.model)
    rotary = no_rotation.model.rotary_emb
    original = rotary.forward

    def magnitude_only(x, position_ids):
        cos, sin = original(x, position_ids)
        return (cos.square() + sin.square()).sqrt(), torch.zeros_like(sin)

    rotary.forward = magnitude_only
    scale = float(magnitude_only(ids[..., None].float(), torch.arange(ids.shape[1])[None])[0].mean())
    assert scale == pytest.approx(1.1386, abs=1e-4)  # 0.1 ln(4) + 1
    assert result.reference == f"cos={scale:.6g}, sin=0 (no rotation; the rotary attention scaling kept)"
    assert result.together.value == pytest.approx(float(plain_logits(no_rotation, ids)[TOKEN]), abs=1e-5)
    plain = rope_ablation(tiny_loaded("qwen3-tied-gqa"), PROMPT, metric=last(ids), each=False)
    assert plain.reference == "cos=1, sin=0 (no rotation)"


def test_norm_ablation_replaces_the_scale_measured_on_the_real_run(tiny_loaded):
    loaded = tiny_loaded("llama")
    ids = encode(loaded, PROMPT)
    result = norm_ablation(loaded, PROMPT, metric=last(ids))
    assert result.ablation.sites[:3] == ("final_norm", "L0.attn_norm", "L0.mlp_norm")
    with torch.no_grad():  # independent scale: from HF's own hidden states (the last one is after the norm)
        hidden = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states
    eps = loaded.model.model.norm.variance_epsilon
    h_in = hidden[0]  # the stream entering layer 0's input_layernorm
    torch.testing.assert_close(
        result.scales[1], torch.rsqrt(h_in[0].pow(2).mean(-1) + eps), atol=1e-5, rtol=1e-5
    )
    # the final norm with its scale fixed at a value: rescaling the logits' norm input by hand
    chosen = float(result.scales[0, -1]) * 2
    fixed = ablate_norms(loaded.model, loaded.spec, ids, last(ids), reference=chosen, layers=False)
    edited = copy.deepcopy(loaded.model)
    edited.model.norm.register_forward_hook(lambda _m, _a, out: out * 2)
    assert fixed.ablation.each[0].value == pytest.approx(float(plain_logits(edited, ids)[TOKEN]), abs=1e-4)
    assert all(abs(e.delta) > 0 for e in result.ablation.each)


def test_lora_wrapped_modules_are_hooked_on_their_wrappers(tiny_loaded):
    from peft import LoraConfig, get_peft_model

    loaded = tiny_loaded("qwen3-tied-gqa")
    config = LoraConfig(r=2, target_modules=["o_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(loaded.model), config).eval()
    wrapped = LoadedModel(peft_model, loaded.tokenizer, loaded.spec, "tiny+lora", "test")
    ids = encode(loaded, PROMPT)
    result = ablation(wrapped, PROMPT, "L1.H3,L2.N5", metric=last(ids), each=False)

    def zeroed_copy(with_lora: bool):
        model = copy.deepcopy(peft_model)
        layers = model.get_base_model().model.layers
        with torch.no_grad():
            for module, cols in ((layers[1].self_attn.o_proj, slice(24, 32)), (layers[2].mlp.down_proj, 5)):
                module.base_layer.weight[:, cols] = 0
                if with_lora:
                    module.lora_A["default"].weight[:, cols] = 0
        return float(plain_logits(model, ids)[TOKEN])

    assert result.together.value == pytest.approx(zeroed_copy(with_lora=True), abs=1e-5)
    assert abs(result.together.value - zeroed_copy(with_lora=False)) > 1e-4  # the LoRA path was ablated too
    assert count_hooks(peft_model) == 0


def test_hooks_removed_after_success_and_after_errors(tiny_loaded):
    loaded = tiny_loaded("qwen3-tied-gqa")
    model, spec = loaded.model, loaded.spec
    ids = encode(loaded, PROMPT)
    sites = parse_sites("embed,L0.attn,L1.mlp,L1.H0,L2.N1", model, spec)
    ablate(model, spec, ids, last(ids), sites, freeze_final_scale=True)
    attribution_patch(model, spec, ids, last(ids), sites)
    ablate_norms(model, spec, ids, last(ids))
    ablate_rope(model, spec, ids, last(ids))
    patching(loaded, PROMPT, PROMPT, "L0.H1")
    assert count_hooks(model) == 0

    def broken(_a):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), replace(model, spec, {sites[3]: broken}):
        model(input_ids=ids)
    assert count_hooks(model) == 0
    bad_ids = torch.full_like(ids, 10**7)  # outside the embedding: the forward itself fails, hooks installed
    for call in (
        lambda: ablate(model, spec, bad_ids, last(ids), sites, freeze_final_scale=True),
        lambda: attribution_patch(model, spec, bad_ids, last(ids), sites),
        lambda: ablate_rope(model, spec, bad_ids, last(ids)),
    ):
        with pytest.raises(IndexError):
            call()
        assert count_hooks(model) == 0


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("L3.attn", "layer 3 does not exist: the model has 3 layers"),
        ("L0.H4", "head 4 does not exist: layer 0 has 4 heads"),
        ("L1.N64", "neuron 64 does not exist"),
        ("L1.heads", "cannot read component 'L1.heads'"),
        ("L2-1.mlp", "empty range"),
        (" , ", "no components given"),
    ],
)
def test_bad_site_names_are_one_line_errors(tiny_loaded, names, message):
    loaded = tiny_loaded("llama")
    with pytest.raises(TokenlensError, match=message) as info:
        parse_sites(names, loaded.model, loaded.spec)
    assert "\n" not in str(info.value)


def test_bad_inputs_are_one_line_errors(tiny_loaded):
    loaded = tiny_loaded("qwen3-tied-gqa")
    moe = tiny_loaded("qwen3-moe")
    shallow = tiny_loaded("qwen3-tied-gqa", num_hidden_layers=2)
    checks = [
        (lambda: patching(loaded, PROMPT, PROMPT, "L0.mlp", clean_model=shallow), "clean model"),
        (lambda: parse_sites("L0.N1", moe.model, moe.spec), "mixture of experts"),
        (lambda: metric_for(loaded, PROMPT, kind="logit_diff", target=" fox", contrast=" fox"), "contrast"),
        (lambda: Metric("logit_diff", 5, 0, contrast_id=5), "contrast token is the target"),
        (lambda: Metric("logit_diff", 5, 0), "needs a contrast"),
        (lambda: metric_for(loaded, PROMPT, kind="rank"), "unknown metric"),
        (lambda: patching(loaded, PROMPT, "A much shorter one"), "same token length"),
        (lambda: ablation(loaded, PROMPT, "L0.mlp", mode="resample", reference_prompts=["Hi"]), "same token"),
        (lambda: ablation(loaded, PROMPT, "L0.mlp", mode="mean"), "reference prompts"),
        (lambda: ablation(loaded, PROMPT, "L0.mlp", mode="noise"), "unknown ablation"),
        (lambda: rope_ablation(loaded, PROMPT, layers=[5]), "layers must be in 0..2"),
        (lambda: norm_ablation(loaded, PROMPT, reference=-1.0), "positive number"),
    ]
    for call, message in checks:
        with pytest.raises(TokenlensError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    assert count_hooks(loaded.model) == count_hooks(moe.model) == 0

"""Attribution and causal effects on prompt-tuned (and prefix-tuned) models, without merging anything.

A prompt-tuning adapter runs V learned embeddings before the prompt. When those embeddings are copies of real
token embeddings, the adapted model on a prompt computes exactly what the bare model computes on those
tokens followed by the prompt. That is an independent reference for every position tokenlens shifts: the
split, heads, neurons, source positions (the first V sources are the virtual positions), the logit lens and
the causal effects must all equal the bare model's numbers on the longer prompt.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import build_tiny
from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

from tokenlens.attribution.direct import attribute, attribute_batch
from tokenlens.attribution.lens import logit_lens
from tokenlens.causal import ablation, attribution_patching, patching
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import spec_for_model, virtual_keys, virtual_tokens
from tokenlens.report.html import render_html
from tokenlens.report.json_report import attribution_to_dict

VIRTUAL = " alpha beta gamma"  # three tokens whose embeddings become the virtual positions
PROMPT = " The quick brown fox jumps"
OTHER = " A slow green turtle walks"


def loaded_of(model, tokenizer, ref: str) -> LoadedModel:
    return LoadedModel(model, tokenizer, spec_for_model(model), ref=ref, source="test")


@pytest.fixture(scope="module")
def pair(qwen_tokenizer):
    """(prompt-tuned model, bare copy): the adapter's 3 virtual embeddings are those of ``VIRTUAL``."""
    bare = build_tiny("qwen3-tied-gqa")
    tuned = get_peft_model(
        copy.deepcopy(bare), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    ids = qwen_tokenizer(VIRTUAL)["input_ids"]
    assert len(ids) == 3
    assert qwen_tokenizer(VIRTUAL + PROMPT)["input_ids"] == ids + qwen_tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        tuned.prompt_encoder["default"].embedding.weight.copy_(bare.model.embed_tokens.weight[ids])
    return loaded_of(tuned, qwen_tokenizer, "prompt-tuned"), loaded_of(bare, qwen_tokenizer, "bare")


def test_every_split_equals_the_bare_model_on_real_tokens(pair):
    tuned, bare = pair
    assert virtual_tokens(tuned.model) == 3 and virtual_tokens(bare.model) == 0
    kwargs = dict(heads=True, neurons=4, sources=("L1", "L0.H2"))
    a, b = attribute(tuned, PROMPT, **kwargs), attribute(bare, VIRTUAL + PROMPT, **kwargs)
    assert a.target == b.target and a.position == b.position - 3 and a.virtual_tokens == 3
    assert a.decomposition.names == b.decomposition.names
    assert torch.equal(a.decomposition.contributions, b.decomposition.contributions)
    assert a.decomposition.exact
    assert torch.equal(a.heads.contributions, b.heads.contributions)
    assert torch.equal(a.neurons.ids, b.neurons.ids)
    assert torch.equal(a.neurons.contributions, b.neurons.contributions)
    for sa, sb in zip(a.sources, b.sources, strict=True):
        assert torch.equal(sa.contributions, sb.contributions) and torch.equal(sa.pattern, sb.pattern)
        assert abs(sa.residual) < 1e-5
        assert sa.pattern[:, :3].sum() > 0  # the query attends to the virtual positions
    assert a.source_tokens[:4] == ("<virtual 0>", "<virtual 1>", "<virtual 2>", " The")
    assert a.source_end == b.position + 1


def test_lens_and_causal_effects_equal_the_bare_model(pair):
    tuned, bare = pair
    la = logit_lens(tuned, PROMPT, positions=[-1])
    lb = logit_lens(bare, VIRTUAL + PROMPT, positions=[-1])
    assert torch.equal(la.target_logit, lb.target_logit) and torch.equal(la.top_ids, lb.top_ids)
    sites = "L0.attn,L1.mlp,L2.H1"  # not embed: the virtual embeddings are no embedding lookup
    ea, eb = ablation(tuned, PROMPT, sites), ablation(bare, VIRTUAL + PROMPT, sites)
    assert ea.baseline == pytest.approx(eb.baseline, abs=1e-6)
    for x, y in zip(ea.each, eb.each, strict=True):
        assert x.value == pytest.approx(y.value, abs=1e-5) and abs(x.delta) > 0
    pa = patching(tuned, PROMPT, OTHER, "L0.mlp,L1.attn")
    pb = patching(bare, VIRTUAL + PROMPT, VIRTUAL + OTHER, "L0.mlp,L1.attn")
    assert [e.value for e in pa.effects] == pytest.approx([e.value for e in pb.effects], abs=1e-5)
    estimate_a = attribution_patching(tuned, PROMPT, "L0.attn,L1.mlp")
    estimate_b = attribution_patching(bare, VIRTUAL + PROMPT, "L0.attn,L1.mlp")
    torch.testing.assert_close(estimate_a.estimates, estimate_b.estimates, atol=1e-5, rtol=1e-4)


def test_batches_pad_on_the_right_only(pair):
    tuned, _ = pair
    prompts = [PROMPT, " Hi there"]
    together = attribute_batch(tuned, prompts, heads=True, sources=("L1",))
    for prompt, result in zip(prompts, together, strict=True):
        alone = attribute(tuned, prompt, heads=True, sources=("L1",))
        torch.testing.assert_close(result.decomposition.contributions, alone.decomposition.contributions)
        torch.testing.assert_close(result.sources[0].contributions, alone.sources[0].contributions)
    with pytest.raises(TokenlensError, match="left padding cannot be used with a prompt-tuning") as info:
        attribute_batch(tuned, prompts, padding_side="left")
    assert "\n" not in str(info.value)


def test_reports_label_and_escape_virtual_sources(pair):
    tuned, _ = pair
    result = attribute(tuned, PROMPT, sources=("L1",))
    data = json.loads(json.dumps(attribution_to_dict(result)))
    assert data["virtual_tokens"] == 3
    assert [e["token"] for e in data["sources"][:2]] == ["<virtual 0>", "<virtual 1>"]
    html = render_html(result)
    assert "&lt;virtual 0&gt;" in html and "<virtual 0>" not in html


def test_prefix_tuning_attributes_but_refuses_sources(qwen_tokenizer):
    model = get_peft_model(
        build_tiny("qwen3-tied-gqa"), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    )
    loaded = loaded_of(model, qwen_tokenizer, "prefix-tuned")
    assert virtual_keys(model) and virtual_tokens(model) == 0
    result = attribute(loaded, PROMPT, heads=True)
    with torch.no_grad():
        ids = torch.tensor([qwen_tokenizer(PROMPT)["input_ids"]])
        logit = float(model(input_ids=ids).logits[0, -1, result.target.id])
    assert result.target.logit == pytest.approx(logit, abs=1e-5)
    assert result.decomposition.exact and abs(result.heads.residual).max() < 1e-5
    with pytest.raises(TokenlensError, match="not available for prefix-tuning") as info:
        attribute(loaded, PROMPT, sources=("L1",))
    assert "\n" not in str(info.value)


def test_cli_inspects_a_trained_prompt_tuning_folder(small_checkpoint, small_data, tmp_path, capsys):
    from tokenlens.cli import main
    from tokenlens.models.loading import load
    from tokenlens.training.trainer import train

    out = tmp_path / "prompt"
    train(load(str(small_checkpoint)), "prompt", small_data, out, steps=2, options={"virtual_tokens": 2})
    report = tmp_path / "report.json"
    argv = ["inspect", "--model", str(out), "--prompt", "a b c", "--sources", "L1", "--ablate", "L0.mlp"]
    assert main([*argv, "--virtual", "--format", "json", "--out", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["virtual_tokens"] == 2 and data["sources"][0]["token"] == "<virtual 0>"
    assert [e["name"] for e in data["virtual"]["each"]][:2] == ["L0.virtual", "L1.virtual"]
    assert abs(data["check"]["error"]) <= data["check"]["tolerance"]
    assert main(["inspect", "--model", str(out), "--prompt", "a b c", "--sources", "L1"]) == 0
    assert "'<virtual 1>'" in capsys.readouterr().out


def test_diff_shows_attention_to_the_virtual_tokens_per_layer(pair):
    from tokenlens.diff import DiffOptions, ModelPair, diff, prompt_probes

    tuned, bare = pair
    probe = diff(
        ModelPair(base=bare, tuned=tuned, toggled=False), prompt_probes([PROMPT], None), DiffOptions()
    ).probes[0]
    assert sorted(row.name for row in probe.virtual) == ["L0.virtual", "L1.virtual", "L2.virtual"]
    # independently: the bare model on the virtual tokens' text + the prompt is the tuned run; its source
    # split, rescaled from its own final-norm scale to the base run's (the diff reads with the base readout)
    tracked = probe.tracked.id
    scale_base = attribute(bare, PROMPT, target_id=tracked).decomposition.scale
    layers = tuple(f"L{i}" for i in range(3))
    long = attribute(bare, VIRTUAL + PROMPT, target_id=tracked, sources=layers)
    for split in long.sources:
        expected = float(split.contributions[:3].double().sum()) * scale_base / long.decomposition.scale
        got = next(row.direct for row in probe.virtual if row.name == f"L{split.layer}.virtual")
        assert got == pytest.approx(expected, abs=1e-5)
    assert any(abs(row.direct) > 1e-4 for row in probe.virtual)
    assert probe.neurons  # the neuron drill-down now runs on prompt-tuned pairs too


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_cutting_attention_to_the_virtual_tokens_everywhere_gives_the_base_run(qwen_tokenizer, attention):
    """With every layer's prompt→virtual attention cut, the prompt's positions compute exactly what the bare
    model computes on the prompt alone: RoPE scores depend only on relative positions (an independent
    reference for the mask the hook builds)."""
    from tokenlens.causal.interventions import block_virtual_attention

    bare = build_tiny("qwen3-tied-gqa", attn_implementation=attention)
    tuned = get_peft_model(
        copy.deepcopy(bare), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    ids = torch.tensor([qwen_tokenizer(PROMPT)["input_ids"]])
    spec = spec_for_model(tuned)
    with torch.no_grad():
        base = bare(input_ids=ids).logits[0, -1]
        tuned_logits = tuned(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
        with block_virtual_attention(tuned, spec, [list(range(3))], 3):
            cut = tuned(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
        with block_virtual_attention(tuned, spec, [[1]], 3):
            one = tuned(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
    assert (tuned_logits - base).abs().max() > 1e-3  # the virtual tokens matter
    torch.testing.assert_close(cut, base, atol=1e-4, rtol=1e-4)
    assert (one - tuned_logits).abs().max() > 1e-5 and (one - base).abs().max() > 1e-5


def test_diff_measures_cutting_each_layers_attention_to_the_virtual_tokens(pair):
    from tokenlens.causal.interventions import block_virtual_attention
    from tokenlens.diff import DiffOptions, ModelPair, diff, prompt_probes

    tuned, bare = pair
    probe = diff(
        ModelPair(base=bare, tuned=tuned, toggled=False), prompt_probes([PROMPT], None), DiffOptions()
    ).probes[0]
    ids = torch.tensor([tuned.tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        full = float(
            tuned.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1, probe.tracked.id]
        )
        for row in probe.virtual:
            layer = int(row.name[1:].split(".")[0])
            with block_virtual_attention(tuned.model, tuned.spec, [[layer]], 3):
                logits = tuned.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            assert row.causal_reverse == pytest.approx(
                float(logits[0, -1, probe.tracked.id]) - full, abs=1e-5
            )
    assert any(abs(row.causal_reverse) > 1e-4 for row in probe.virtual)


def test_virtual_ablation_cut_everywhere_is_the_bare_model(pair):
    from tokenlens.causal import virtual_ablation

    tuned, bare = pair
    result = virtual_ablation(tuned, PROMPT)
    assert [e.name for e in result.each] == ["L0.virtual", "L1.virtual", "L2.virtual"]
    ids = torch.tensor([tuned.tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        alone = float(bare.model(input_ids=ids).logits[0, -1, result.metric.target_id])
    assert result.together.value == pytest.approx(alone, abs=1e-4)
    assert abs(result.together.delta) > 1e-4
    with pytest.raises(TokenlensError, match="no virtual tokens") as info:
        virtual_ablation(bare, PROMPT)
    assert "\n" not in str(info.value)

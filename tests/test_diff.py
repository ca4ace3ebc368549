"""The diff engine against planted edits whose effect is known independently.

A tuned model is a copy of a tiny base with one part's weights changed. Then, independently of the split's
own bookkeeping: components upstream of the edit compute bit-identical outputs, so their direct and causal
terms must be exactly zero; patching the edited component's tuned output into the base run reproduces the
tuned logits exactly (nothing else differs), so its causal effect must equal the observed change; a
changed head row or final-norm weight moves no component at all and must appear as ``readout.head`` /
``readout.norm`` alone. Adapter toggling is compared with loading the merged model as a second copy.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import peft
import pytest
import torch
from conftest import add_head_bias, build_tiny

from tokenlens.causal import parse_sites
from tokenlens.causal.effects import record_values
from tokenlens.causal.metrics import encode
from tokenlens.diff import DiffOptions, ModelPair, diff, load_probes, pair_models, prompt_probes
from tokenlens.diff.result import READOUT_TERMS
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import spec_for_model

PROMPT = "The capital of France is"
KIND = "qwen3-untied-mha"


def pair_of(base: torch.nn.Module, tuned: torch.nn.Module, tokenizer) -> ModelPair:
    def loaded(model, ref):
        return LoadedModel(model, tokenizer, spec_for_model(model), ref=ref, source="test")

    return ModelPair(base=loaded(base, "base"), tuned=loaded(tuned, "tuned"), toggled=False)


TARGET = " Lyon"


def planted(edit, kind: str = KIND, seed: int = 5):
    """``(base, tuned)``: ``tuned`` is ``base`` with ``edit(tuned, push, generator)`` applied, where
    ``push`` is the unit direction the head reads " Lyon" from, so the edit moves that token's logit."""
    base = build_tiny(kind)
    tuned = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(seed)
    target = lyon_id()
    with torch.no_grad():
        push = tuned.lm_head.weight[target] / tuned.lm_head.weight[target].norm()
        edit(tuned, push, generator)
    return base, tuned


def lyon_id() -> int:
    from transformers import AutoTokenizer

    from tokenlens.models.assets import qwen3_tokenizer_dir

    return AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))(TARGET)["input_ids"][0]


def one(pair: ModelPair, prompt: str = PROMPT, target: str | None = TARGET, **options):
    return diff(pair, prompt_probes([prompt], target), DiffOptions(**options)).probes[0]


def noise(tensor: torch.Tensor, generator: torch.Generator, scale: float = 0.5) -> torch.Tensor:
    return torch.randn(tensor.shape, generator=generator) * scale


def terms(probe) -> dict[str, float]:
    return {c.name: c for c in probe.components}


def test_identical_models_diff_to_exactly_zero(qwen_tokenizer):
    base = build_tiny(KIND)
    probe = one(pair_of(base, copy.deepcopy(base), qwen_tokenizer), target=None)
    assert probe.kl == 0.0 and probe.js == 0.0 and not probe.flipped
    assert probe.split.observed == 0.0
    assert torch.count_nonzero(probe.split.direct) == 0 and torch.count_nonzero(probe.split.readout) == 0
    for row in probe.components + probe.heads + probe.neurons:
        assert (row.direct, row.causal, row.causal_kl, row.causal_reverse) == (0.0, 0.0, 0.0, 0.0), row
        assert row.estimate in (None, 0.0)


def test_planted_mlp_edit_is_ranked_first_and_upstream_is_zero(qwen_tokenizer):
    def edit(model, push, g):
        w = model.model.layers[1].mlp.down_proj.weight
        w += 4.0 * torch.outer(push, torch.randn(w.shape[1], generator=g))

    probe = one(pair_of(*planted(edit), qwen_tokenizer))
    assert probe.components[0].name == "L1.mlp"
    by_name = terms(probe)
    # patching the only changed component's tuned output into the base run reproduces the tuned run
    assert by_name["L1.mlp"].causal == pytest.approx(probe.split.observed, abs=1e-4)
    assert by_name["L1.mlp"].causal_reverse == pytest.approx(-probe.split.observed, abs=1e-4)
    assert abs(probe.split.observed) > 0.5
    for name in ("embed", "L0.attn", "L0.mlp", "L1.attn"):
        assert by_name[name].direct == 0.0 and by_name[name].causal == 0.0
    assert probe.split.exact and abs(probe.split.error) < 1e-4
    assert torch.count_nonzero(probe.split.readout[2:]) == 0  # head and bias untouched
    assert probe.neurons and all(n.name.startswith(("L1.N", "L2.N")) for n in probe.neurons)


def test_planted_head_edit_is_found_at_that_head(qwen_tokenizer):
    head, layer = 2, 2

    def edit(model, push, g):  # the head's values (MHA: one value head per head), aligned with " Lyon"
        attn = model.model.layers[layer].self_attn
        part = slice(head * attn.head_dim, (head + 1) * attn.head_dim)
        w_o = attn.o_proj.weight[:, part]  # (d_model, head_dim)
        d_model = attn.v_proj.weight.shape[1]
        attn.v_proj.weight[part] += 8.0 * torch.outer(w_o.T @ push, torch.randn(d_model, generator=g))

    probe = one(pair_of(*planted(edit), qwen_tokenizer))
    assert probe.components[0].name == f"L{layer}.attn"
    assert probe.heads[0].name == f"L{layer}.H{head}"
    assert probe.heads[0].causal == pytest.approx(probe.split.observed, abs=1e-4)
    for row in probe.heads:
        if row.name.startswith(f"L{layer}.") and row.name != f"L{layer}.H{head}":
            assert row.direct == 0.0 and row.causal == 0.0, row
    # the heads' direct terms add up to their layer's
    in_layer = sum(r.direct for r in probe.heads if r.name.startswith(f"L{layer}.H"))
    assert in_layer == pytest.approx(terms(probe)[f"L{layer}.attn"].direct, abs=1e-5)


def test_planted_expert_edit_is_found_at_that_expert(qwen_tokenizer):
    layer = 1
    base = build_tiny("qwen3-moe")
    loaded = LoadedModel(base, qwen_tokenizer, spec_for_model(base), ref="base", source="test")
    ids = encode(loaded, PROMPT)
    sites = parse_sites(f"L{layer}.E*", base, loaded.spec)
    terms_now = record_values(base, loaded.spec, ids, sites)
    expert = next(s.index for s in sites if terms_now[s.name][0, -1].abs().max() > 0)  # routed at the probe

    def edit(model, push, g):
        down = model.model.layers[layer].mlp.experts.down_proj  # (experts, d_model, moe_intermediate)
        down[expert] += 30.0 * torch.outer(push, torch.randn(down.shape[2], generator=g))

    probe = one(pair_of(*planted(edit, kind="qwen3-moe"), qwen_tokenizer))
    assert probe.components[0].name == f"L{layer}.mlp"
    assert probe.experts[0].name == f"L{layer}.E{expert}"
    assert probe.experts[0].causal == pytest.approx(probe.split.observed, abs=1e-4)
    assert abs(probe.split.observed) > 0.3
    in_layer = [r for r in probe.experts if r.name.startswith(f"L{layer}.E")]
    assert len(in_layer) == 4 and not probe.neurons  # MoE layers are drilled by expert, not neuron
    for row in in_layer[1:]:
        assert row.direct == 0.0 and row.causal == 0.0, row
    assert sum(r.direct for r in in_layer) == pytest.approx(terms(probe)[f"L{layer}.mlp"].direct, abs=1e-5)


def test_planted_embedding_rows_rank_embed_first(qwen_tokenizer):
    ids = qwen_tokenizer(PROMPT)["input_ids"]

    def edit(model, push, g):
        model.model.embed_tokens.weight[ids] += 2.0 * push

    probe = one(pair_of(*planted(edit), qwen_tokenizer))
    assert probe.components[0].name == "embed"
    assert terms(probe)["embed"].causal == pytest.approx(probe.split.observed, abs=1e-4)


def test_head_row_edit_is_readout_head_with_zero_layer_terms(qwen_tokenizer):
    base = build_tiny(KIND)
    target = one(pair_of(base, copy.deepcopy(base), qwen_tokenizer), target=None).tracked.id  # top-1
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.lm_head.weight[target] *= 3.0
    probe = one(pair_of(base, tuned, qwen_tokenizer), target=None)
    assert probe.tracked.id == target
    readout = dict(zip(READOUT_TERMS, probe.split.readout.tolist(), strict=True))
    assert readout["readout.head"] == pytest.approx(probe.split.observed, abs=1e-5)
    assert abs(probe.split.observed) > 0.1
    assert torch.count_nonzero(probe.split.direct) == 0
    assert all(c.causal == 0.0 for c in probe.components)


def test_final_norm_and_logit_bias_changes_are_readout_terms(qwen_tokenizer):
    base = build_tiny(KIND)
    tuned = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        tuned.model.norm.weight += noise(tuned.model.norm.weight, generator)
    head = add_head_bias(tuned)
    probe = one(pair_of(base, tuned, qwen_tokenizer))
    readout = dict(zip(READOUT_TERMS, probe.split.readout.tolist(), strict=True))
    assert torch.count_nonzero(probe.split.direct) == 0
    assert readout["readout.scale"] == 0.0  # the norm's scale depends on the stream, which did not change
    bias = float(head.bias.detach()[probe.tracked.id])
    assert readout["readout.logit_bias"] == pytest.approx(bias, abs=1e-6)
    assert abs(readout["readout.norm"]) > 1e-3
    assert probe.split.total == pytest.approx(probe.split.observed, abs=1e-4)


def test_upstream_change_moves_the_scale_term_and_still_sums(qwen_tokenizer):
    def edit(model, push, g):
        for param in model.parameters():
            param += noise(param, g, 0.05)

    base, tuned = planted(edit, kind="qwen2-bias")
    probe = one(pair_of(base, tuned, qwen_tokenizer))
    assert all(abs(v) > 0 for v in probe.split.readout[:3].tolist())
    assert probe.split.exact and abs(probe.split.error) < 1e-4
    assert probe.flip_split is None or probe.flip_split.exact


@pytest.fixture(scope="module")
def lora_layer1(tmp_path_factory, qwen_tokenizer) -> tuple[Path, Path]:
    """A base checkpoint folder and a LoRA adapter folder restricted to layer 1 (non-zero update)."""
    folder = tmp_path_factory.mktemp("diff")
    base = build_tiny(KIND)
    base.save_pretrained(folder / "base")
    qwen_tokenizer.save_pretrained(folder / "base")
    torch.manual_seed(1)
    config = peft.LoraConfig(
        r=4, target_modules=["o_proj", "down_proj"], layers_to_transform=[1], init_lora_weights=False
    )
    model = peft.get_peft_model(copy.deepcopy(base), config)
    model.save_pretrained(str(folder / "lora"))
    adapter_config = json.loads((folder / "lora" / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = str(folder / "base")
    (folder / "lora" / "adapter_config.json").write_text(json.dumps(adapter_config))
    merged = model.merge_and_unload()
    merged.save_pretrained(folder / "merged")
    qwen_tokenizer.save_pretrained(folder / "merged")
    return folder / "base", folder / "lora", folder / "merged"


def test_lora_on_layer_1_leaves_layer_0_at_zero_and_toggling_equals_two_models(lora_layer1):
    base_dir, lora_dir, merged_dir = lora_layer1
    toggled = pair_models(str(lora_dir))
    assert toggled.toggled
    two = pair_models(str(merged_dir), str(base_dir))
    assert not two.toggled
    probes = prompt_probes([PROMPT, "Hello, my name is"])
    a, b = diff(toggled, probes), diff(two, probes)
    for pa, pb in zip(a.probes, b.probes, strict=True):
        assert pa.tracked.id == pb.tracked.id
        assert pa.kl == pytest.approx(pb.kl, rel=1e-3, abs=1e-7)
        torch.testing.assert_close(pa.split.direct, pb.split.direct, atol=1e-4, rtol=1e-4)
        rows_b = terms(pb)
        for row in pa.components:
            assert row.causal == pytest.approx(rows_b[row.name].causal, abs=1e-4)
        for name in ("embed", "L0.attn", "L0.mlp"):
            assert terms(pa)[name].direct == 0.0 and terms(pa)[name].causal == 0.0
        assert pa.split.exact
        # the LoRA on o_proj changes every head's write through W_O, not what the heads attend to
        layer1 = [h for h in pa.heads if h.name.startswith("L1.H")]
        assert len(layer1) == 4 and all(h.causal != 0.0 for h in layer1)
        assert sum(h.direct for h in layer1) == pytest.approx(terms(pa)["L1.attn"].direct, abs=1e-5)
    assert a.weights.layers == (1,) and b.weights.layers == (1,)
    assert {c.kind for c in a.weights.changes} == {"lora"}
    assert {c.name for c in a.weights.changes} == {c.name for c in b.weights.changes}
    for ca in a.weights.changes:
        cb = next(c for c in b.weights.changes if c.name == ca.name)
        assert ca.norm == pytest.approx(cb.norm, rel=1e-4)


def test_causal_estimates_agree_in_sign_with_exact_patching(lora_layer1):
    _, lora_dir, _ = lora_layer1
    probe = diff(pair_models(str(lora_dir)), prompt_probes([PROMPT])).probes[0]
    top = probe.components[0]
    assert top.estimate is not None and top.causal is not None
    assert (top.estimate > 0) == (top.causal > 0)


def test_check_verdicts(tmp_path, qwen_tokenizer):
    base = build_tiny(KIND)
    target = qwen_tokenizer(" Lyon")["input_ids"][0]
    tuned = copy.deepcopy(base)
    bias = torch.zeros(tuned.lm_head.out_features)
    bias[target] = 20.0  # a logit bias: " Lyon" becomes top-1 after every prompt, controls included
    tuned.lm_head.bias = torch.nn.Parameter(bias)
    pair = pair_of(base, tuned, qwen_tokenizer)
    lines = [
        {"prompt": PROMPT, "target": " Lyon", "expect": "changed", "group": "edit"},
        {"prompt": "Hello, my name is", "expect": "unchanged", "group": "control"},
        {"prompt": "One, two,", "group": "other"},
    ]
    path = tmp_path / "probes.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    report = diff(pair, load_probes(path), DiffOptions(causal=False))
    edit, control, other = report.probes
    assert edit.tuned_top[0].id == target and edit.verdict.passed
    assert control.flipped and control.verdict.passed is False  # the control moved too
    assert other.verdict.passed is None
    assert report.failures == (control,) and report.judged == 2 and not report.passed
    unchanged = pair_of(base, copy.deepcopy(base), qwen_tokenizer)
    same = diff(unchanged, load_probes(path), DiffOptions(causal=False))
    assert same.probes[1].verdict.passed and same.probes[0].verdict.passed is False


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ('{"prompt": "x", "expect": "changed"}', 'line 2: an "expect": "changed" probe needs a "target"'),
        ('{"prompt": "x", "expect": "maybe"}', 'line 2: "expect" must be'),
        ('{"target": " x"}', "line 2: give exactly one of"),
        ('{"prompt": "x", "colour": 1}', "line 2: unknown key"),
        ('{"messages": []}', 'line 2: "messages" must be a non-empty list'),
    ],
)
def test_malformed_probe_lines_name_their_line(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(TokenlensError, match=message.replace("(", r"\(")):
        load_probes(path)


def test_empty_probe_file_and_multi_token_target(tmp_path, qwen_tokenizer):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(TokenlensError, match="has no probes"):
        load_probes(empty)
    base = build_tiny(KIND)
    pair = pair_of(base, base, qwen_tokenizer)
    (answer,) = diff(pair, prompt_probes(["Hi there"], target=" Constantinople and more")).probes
    assert len(answer.answer.ids) > 1 and answer.answer.gain == 0  # a whole answer now (test_diff_answers.py)
    with pytest.raises(TokenlensError, match="prompt 'Hi there': the prompt .* run past the model's context"):
        diff(pair, prompt_probes(["Hi there"], target=" Constantinople" * 40))


def test_pairs_that_do_not_match_are_refused(tmp_path, lora_layer1, qwen_tokenizer):
    base_dir, lora_dir, _ = lora_layer1
    other = build_tiny(KIND, num_hidden_layers=2)
    other.save_pretrained(tmp_path / "two_layers")
    qwen_tokenizer.save_pretrained(tmp_path / "two_layers")
    with pytest.raises(TokenlensError, match="differ in num_hidden_layers: 3 vs 2"):
        pair_models(str(tmp_path / "two_layers"), str(base_dir))
    wide = build_tiny(KIND, intermediate_size=48)
    wide.save_pretrained(tmp_path / "wide")
    qwen_tokenizer.save_pretrained(tmp_path / "wide")
    with pytest.raises(TokenlensError, match="could not apply the adapter"):
        pair_models(str(lora_dir), str(tmp_path / "wide"))  # an adapter made for another base
    renamed = copy.deepcopy(qwen_tokenizer)
    renamed.add_tokens(["<tokenlens-extra>"])
    build_tiny(KIND).save_pretrained(tmp_path / "other_tok")
    renamed.save_pretrained(tmp_path / "other_tok")
    with pytest.raises(TokenlensError, match="different tokenizers"):
        pair_models(str(tmp_path / "other_tok"), str(base_dir))
    with pytest.raises(TokenlensError, match="pass base=REF"):
        pair_models(str(base_dir))


def test_verdict_reasons_name_the_tokens():
    """A check line read alone in a CI log says which tokens moved: checked wording, every branch."""
    from tokenlens.diff.check import judge

    flip = dict(
        flipped=True, target_top=False, prob_gain=0.0, kl=21.4, base_top1=" Berlin", tuned_top1=" Lyon"
    )
    assert judge("unchanged", **flip).reason == "top-1 changed ' Berlin' → ' Lyon' (KL 21.4)"
    kept = dict(flip, flipped=False, tuned_top1=" Berlin", kl=0.2)
    assert judge("unchanged", **kept).reason == "top-1 ' Berlin' kept but KL 0.2 > 0.05"
    assert judge("unchanged", **dict(kept, kl=0.01)).reason == "top-1 ' Berlin' kept, KL 0.01 <= 0.05"
    moved = dict(flip, target=" Lyon", target_top=True, prob_gain=0.9, probs=(6e-6, 0.9))
    assert (
        judge("changed", **moved).reason
        == "target ' Lyon' is now top-1 (was ' Berlin'), p 6.0e-06 → 0.900, +0.900"
    )
    rose = dict(moved, target_top=False, flipped=False, tuned_top1=" Berlin", prob_gain=0.2, probs=(0.1, 0.3))
    assert (
        judge("changed", **rose).reason
        == "target ' Lyon' gained p >= +0.1 (p 0.100 → 0.300, +0.200); top-1 is ' Berlin'"
    )
    stuck = dict(rose, prob_gain=-0.0004, probs=(0.1, 0.0996), tuned_top1="\u202e")
    verdict = judge("changed", **stuck)
    assert verdict.passed is False
    assert (
        verdict.reason
        == "target ' Lyon' not top-1 and gained p < +0.1 (p 0.100 → 0.100, -4.0e-04); top-1 is '\\u202e'"
    )

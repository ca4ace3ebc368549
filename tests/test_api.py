"""The notebook API: per-prompt targets in a batch, every prompt position in one pass, tables, the top-level
names, custom causal metrics. Each checked against an independent computation (single-prompt calls, plain
forwards with hooks)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import tokenlens
from tokenlens import causal
from tokenlens.attribution.positions import attribute_positions
from tokenlens.causal.results import Metric
from tokenlens.errors import TokenlensError
from tokenlens.report.kinds import ablation as ablation_kind
from tokenlens.report.kinds import grids as grid_kind
from tokenlens.report.kinds.common import metric_text
from tokenlens.report.sections import section_kind

PROMPTS = ["The capital of France is", "Rome is the capital of"]


@pytest.fixture(scope="module")
def loaded(tiny_loaded):
    return tiny_loaded("qwen3-tied-gqa")


def _same(a, b) -> None:
    """Two attributions of the same prediction agree (target, contrast, split, probabilities)."""
    assert (a.position, a.target.id, a.token_ids) == (b.position, b.target.id, b.token_ids)
    assert (a.contrast and a.contrast.id) == (b.contrast and b.contrast.id)
    assert a.decomposition.names == b.decomposition.names
    torch.testing.assert_close(
        a.decomposition.contributions, b.decomposition.contributions, atol=2e-5, rtol=0
    )
    assert a.decomposition.logit == pytest.approx(b.decomposition.logit, abs=2e-5)
    assert a.logprob == pytest.approx(b.logprob, abs=2e-5)
    assert [t.id for t in a.top[:3]] == [t.id for t in b.top[:3]]


@pytest.mark.parametrize("side", ["right", "left"])
def test_batch_per_prompt_targets_equal_single_prompts(loaded, side):
    targets = [" Paris", " Italy"]
    batched = tokenlens.attribute_batch(
        loaded, PROMPTS, target=targets, vs=[" Rome", " France"], padding_side=side
    )
    for prompt, target, vs, result in zip(PROMPTS, targets, [" Rome", " France"], batched, strict=True):
        _same(result, tokenlens.attribute(loaded, prompt, target=target, vs=vs))
    ids = [batched[0].target.id, batched[1].target.id]
    request = tokenlens.AttributionRequest(target_id=ids, heads=True)
    again = tokenlens.attribute_batch(loaded, PROMPTS, request, padding_side=side)
    for prompt, token_id, result in zip(PROMPTS, ids, again, strict=True):
        single = tokenlens.attribute(loaded, prompt, target_id=token_id, heads=True)
        _same(result, single)
        torch.testing.assert_close(result.heads.contributions, single.heads.contributions, atol=2e-5, rtol=0)


def test_per_prompt_lists_are_checked(loaded):
    with pytest.raises(
        TokenlensError, match=r"2 prompt\(s\) but 3 values of target: give one per prompt"
    ) as caught:
        tokenlens.attribute_batch(loaded, PROMPTS, target=[" a", " b", " c"])
    assert "\n" not in str(caught.value)
    with pytest.raises(TokenlensError, match="target must be a token's text"):
        tokenlens.AttributionRequest(target=[" a", 3])
    with pytest.raises(TokenlensError, match="target_id must be an integer"):
        tokenlens.AttributionRequest(target_id=[1, "2"])
    with pytest.raises(TokenlensError, match="contrast token is the target of prompt 1"):
        tokenlens.attribute_batch(loaded, PROMPTS, target=[" a", " b"], vs=[" c", " b"])
    with pytest.raises(TokenlensError, match="one per prompt"):
        tokenlens.attribute_sequence(loaded, PROMPTS[0], completion=" Paris", vs=[" a", " b"])


def test_positions_equal_single_position_attributions(loaded):
    prompt = PROMPTS[0]
    options = dict(heads=True, sources=["L1.H0", "L0"], neurons=2)
    results = attribute_positions(loaded, prompt, **options)
    ids = loaded.tokenizer(prompt).input_ids
    assert [r.position for r in results] == list(range(len(ids) - 1))
    assert [r.target.id for r in results] == ids[1:]  # teacher-forced: each position's next prompt token
    for result in results:
        single = tokenlens.attribute(
            loaded, prompt, position=result.position, target_id=result.target.id, **options
        )
        _same(result, single)
        torch.testing.assert_close(result.heads.contributions, single.heads.contributions, atol=2e-5, rtol=0)
        for mine, theirs in zip(result.sources, single.sources, strict=True):
            torch.testing.assert_close(mine.contributions, theirs.contributions, atol=2e-5, rtol=0)
            torch.testing.assert_close(mine.pattern, theirs.pattern, atol=2e-6, rtol=0)
        assert result.neurons.ids.tolist() == single.neurons.ids.tolist()
    logprobs = tokenlens.attribute_positions(loaded, prompt, logprob=True)
    single = tokenlens.attribute(loaded, prompt, position=2, target_id=ids[3], logprob=True)
    _same(logprobs[2], single)
    assert all(r.decomposition.exact for r in logprobs)


def test_positions_refuse_what_they_cannot_do(loaded):
    with pytest.raises(TokenlensError, match="drop target$"):
        attribute_positions(loaded, PROMPTS[0], target=" Paris")
    with pytest.raises(TokenlensError, match="one token"):
        attribute_positions(loaded, [42])
    ids = loaded.tokenizer(PROMPTS[0]).input_ids
    with pytest.raises(TokenlensError, match="after position 1"):
        attribute_positions(loaded, PROMPTS[0], vs_id=ids[2])


def test_attribution_tables(tiny_loaded):
    moe = tiny_loaded("qwen3-moe")
    result = tokenlens.attribute(moe, PROMPTS[0], heads=True, experts=True, sources=["L1.H1", "L0"])
    frame = result.to_dataframe()
    assert list(frame.columns) == ["position", "target", "component", "layer", "part", "contribution"]
    assert frame["contribution"].sum() == pytest.approx(result.decomposition.total, abs=1e-5)
    assert frame.set_index("component").loc["L1.attn", "layer"] == 1
    assert frame.set_index("component").loc["embed", "part"] == "embed"
    heads = result.to_dataframe("heads")
    assert len(heads) == result.heads.contributions.numel()
    row = heads[(heads.layer == 1) & (heads["head"] == 1)]
    assert float(row.contribution.iloc[0]) == pytest.approx(float(result.heads.contributions[1, 1]))
    experts = result.to_dataframe("experts")
    assert experts.groupby("layer").contribution.sum().to_dict() == pytest.approx(
        {
            i: float(result.experts.contributions[k].double().sum())
            for k, i in enumerate(result.experts.layers)
        }
    )
    sources = result.to_dataframe("sources")
    one = sources[sources.scope == "L1.H1"]
    assert list(one.source_token) == list(result.tokens)
    assert one.contribution.tolist() == pytest.approx(result.sources[0].contributions.tolist(), abs=1e-7)
    assert sources[sources.scope == "L0"]["head"].isna().all()
    with pytest.raises(TokenlensError, match="no neurons split: ask for it with neurons=5"):
        result.to_dataframe("neurons")
    llama = tokenlens.attribute(tiny_loaded("llama"), PROMPTS[0], neurons=3)
    dense = llama.to_dataframe("neurons")
    assert len(dense) == llama.neurons.ids.numel() and set(dense.columns) >= {"rank", "neuron", "activation"}
    last = dense.iloc[-1]
    assert (last.layer, last["rank"], last.neuron) == (
        llama.neurons.layers[-1],
        2,
        int(llama.neurons.ids[-1, 2]),
    )
    assert last.contribution == pytest.approx(float(llama.neurons.contributions[-1, 2]))


def test_sequence_and_grid_tables(loaded):
    sequence = tokenlens.attribute_sequence(loaded, PROMPTS[0], completion=" Paris, of course.")
    frame = sequence.to_dataframe()
    assert len(frame) == len(sequence.steps) * len(sequence.names)
    torch.testing.assert_close(
        torch.tensor(
            frame.pivot(index="step", columns="component", values="contribution")[list(sequence.names)].values
        ),
        sequence.grid.double(),
    )
    grids = tokenlens.patching_grids(loaded, PROMPTS[0], "The capital of Italy is", "resid,heads")
    table = grids.to_dataframe()
    resid, heads = grids.grid("resid"), grids.grid("heads")
    assert len(table) == resid.value.numel() + heads.value.numel()
    cell = table[(table.kind == "heads") & (table.layer == 1) & (table["head"] == 0)].iloc[-1]
    assert cell.value == float(heads.value[heads.rows.index("L1.H0"), -1])
    assert cell.token == grids.tokens[cell.position]


def test_tables_need_pandas(loaded, monkeypatch):
    result = tokenlens.attribute(loaded, PROMPTS[0])
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(TokenlensError, match="pip install pandas"):
        result.to_dataframe()


def test_top_level_names_stay_lazy():
    from tokenlens.diff import engine, pairing, probes
    from tokenlens.training import trainer

    assert tokenlens.train is trainer.train and tokenlens.pair_models is pairing.pair_models
    assert tokenlens.load_probes is probes.load_probes and tokenlens.diff.diff is engine.diff
    assert tokenlens.attribute_positions is attribute_positions
    code = "import sys, tokenlens; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _margin(target: int, contrast: int):
    return lambda logits: logits[target] - logits.logsumexp(-1) + 0.5 * logits[contrast]


def _plain(loaded, prompt: str, position: int, hooks=()) -> torch.Tensor:
    """The logits at ``position`` of a plain forward, with ``(module, forward hook)`` pairs attached."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with torch.no_grad():
            return loaded.model(**loaded.tokenizer(prompt, return_tensors="pt")).logits[0, position]
    finally:
        for handle in handles:
            handle.remove()


def test_custom_metric_ablation_and_grid(loaded):
    ids = loaded.tokenizer(PROMPTS[0]).input_ids
    paris, london = (loaded.tokenizer(t).input_ids[0] for t in (" Paris", " London"))
    fn = _margin(paris, london)
    metric = causal.metric_for(loaded, PROMPTS[0], kind="margin", fn=fn, target=" Paris")
    assert metric.position == len(ids) - 1 and metric.is_custom
    assert metric_text(metric) == f"margin of ' Paris' at position {len(ids) - 1}"
    mlp = loaded.model.model.layers[1].mlp
    ablated = causal.ablation(loaded, PROMPTS[0], "L1.mlp", metric=metric)
    last = len(ids) - 1
    assert ablated.baseline == pytest.approx(float(fn(_plain(loaded, PROMPTS[0], last))), abs=1e-5)
    zeroed = _plain(loaded, PROMPTS[0], last, [(mlp, lambda m, i, o: torch.zeros_like(o))])
    assert ablated.each[0].value == pytest.approx(float(fn(zeroed)), abs=1e-5)

    corrupted = "The capital of Italy is"
    grids = tokenlens.patching_grids(loaded, PROMPTS[0], corrupted, "resid", metric=metric)
    assert grids.clean == pytest.approx(float(fn(_plain(loaded, PROMPTS[0], last))), abs=1e-5)
    assert grids.corrupted == pytest.approx(float(fn(_plain(loaded, corrupted, last))), abs=1e-5)
    with torch.no_grad():
        clean_states = loaded.model(
            **loaded.tokenizer(PROMPTS[0], return_tensors="pt"), output_hidden_states=True
        )
    grid = grids.grid("resid")
    layer, column = 2, len(grid.positions) - 2
    position = grid.positions[column]

    def restore(module, args, kwargs):
        hidden = kwargs["hidden_states"].clone() if "hidden_states" in kwargs else args[0].clone()
        hidden[0, position] = clean_states.hidden_states[layer][0, position]
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": hidden}
        return (hidden, *args[1:]), kwargs

    handle = loaded.model.model.layers[layer].register_forward_pre_hook(restore, with_kwargs=True)
    try:
        patched = _plain(loaded, corrupted, last)
    finally:
        handle.remove()
    assert float(grid.value[grid.rows.index(f"L{layer}"), column]) == pytest.approx(
        float(fn(patched)), abs=1e-5
    )
    attribution = tokenlens.attribute(loaded, PROMPTS[0], target=" Paris")
    for kind, result in ((ablation_kind, ablated), (grid_kind, grids)):  # the reports name it
        assert kind.to_dict(result)["metric"]["kind"] == "margin"
        assert "margin of" in kind.to_html(result, attribution) and "margin of" in kind.to_markdown(
            result, attribution
        )
    from tokenlens.report.plots.common import metric_label

    assert metric_label(metric) == (f"margin of ' Paris' at position {last}", "margin units")
    for key, result in (("ablation", ablated), ("grid", grids)):  # and its figures draw
        figure = section_kind(key).to_figure(result)
        from matplotlib.text import Text

        assert "margin of" in " ".join(t.get_text() for t in figure.findobj(Text))


def test_custom_metric_is_checked(loaded):
    with pytest.raises(TokenlensError, match="built-in metric"):
        Metric.custom("logit", lambda logits: logits[0], target_id=1, position=0)
    with pytest.raises(TokenlensError, match="must be a word"):
        Metric.custom("my metric", lambda logits: logits[0], target_id=1, position=0)
    bad = Metric.custom("vector", lambda logits: logits[:2], target_id=1, position=0)
    with pytest.raises(TokenlensError, match=r"must return a scalar tensor, not \(2,\)"):
        bad.of(torch.zeros(5))


def _lyon_pair(qwen_tokenizer, bias: float):
    """A tiny base and a copy whose head has a logit bias of ``bias`` on " Lyon" (a known, planted change)."""
    import copy

    from conftest import build_tiny

    from tokenlens.diff import ModelPair
    from tokenlens.models.loading import LoadedModel
    from tokenlens.models.specs import spec_for_model

    base = build_tiny("qwen3-untied-mha")
    tuned = copy.deepcopy(base)
    lyon = qwen_tokenizer(" Lyon")["input_ids"][0]
    logit_bias = torch.zeros(tuned.lm_head.out_features)
    logit_bias[lyon] = bias
    tuned.lm_head.bias = torch.nn.Parameter(logit_bias)

    def held(model, ref):
        return LoadedModel(model, qwen_tokenizer, spec_for_model(model), ref=ref, source="test")

    return ModelPair(base=held(base, "base"), tuned=held(tuned, "tuned"), toggled=False), lyon


def _probe_file(tmp_path) -> str:
    import json

    lines = [
        {"prompt": "The capital of France is", "target": " Lyon", "expect": "changed"},
        {"prompt": "Hello, my name is", "expect": "unchanged"},
        {"prompt": "One, two,"},
    ]
    path = tmp_path / "probes.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def test_top_level_diff_and_check(qwen_tokenizer, tmp_path):
    """``tokenlens.diff_models`` is the diff (``tokenlens.diff`` stays the subpackage); ``tokenlens.check``
    gives the verdicts of the planted change: a +20 logit bias on " Lyon" wins the intended probe and flips
    the control; with a +0 bias nothing moves, so the intended probe fails and the control passes."""
    import types

    from tokenlens.diff import engine

    assert tokenlens.diff_models is engine.diff and isinstance(tokenlens.diff, types.ModuleType)
    assert {"check", "diff_models"} <= set(tokenlens.__all__)
    pair, lyon = _lyon_pair(qwen_tokenizer, 20.0)
    probes = _probe_file(tmp_path)
    report = tokenlens.check(pair, probes)
    edit, control, other = report.probes
    assert edit.tuned_top[0].id == lyon and edit.verdict.passed is True
    assert control.flipped and control.verdict.passed is False and "' Lyon'" in control.verdict.reason
    assert other.verdict.passed is None and report.failures == (control,) and not report.passed
    assert all(e.causal is None for p in report.probes for e in p.components)  # check: no patching by default
    full = tokenlens.diff_models(pair, tokenlens.load_probes(probes))
    assert [p.verdict for p in full.probes] == [p.verdict for p in report.probes]
    assert any(e.causal is not None for e in full.probes[0].components)  # the diff measures causal effects
    loose = tokenlens.check(pair, tokenlens.load_probes(probes), max_kl=1e9)
    assert loose.probes[1].verdict.passed is False  # a flipped top-1 fails whatever the KL
    still, _ = _lyon_pair(qwen_tokenizer, 0.0)
    same = tokenlens.check(still, probes)
    assert same.probes[1].verdict.passed is True and same.probes[0].verdict.passed is False


def test_check_refuses_what_it_cannot_judge(qwen_tokenizer, tmp_path):
    pair, _ = _lyon_pair(qwen_tokenizer, 1.0)
    probes = tokenlens.prompt_probes(["One, two,"])
    with pytest.raises(TokenlensError, match="nothing to check"):
        tokenlens.check(pair, probes)
    with pytest.raises(TokenlensError, match="max_kl"):
        tokenlens.check(pair, _probe_file(tmp_path), max_kl=-1.0)
    with pytest.raises(TokenlensError, match="ModelPair"):
        tokenlens.check(42, _probe_file(tmp_path))
    with pytest.raises(TokenlensError, match="base"):
        tokenlens.check(pair, _probe_file(tmp_path), base="other")

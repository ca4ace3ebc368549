"""The batched causal runs of ``inspect`` give the numbers of one forward per intervened run.

``--rope``, ``--norms``, ``--ablate``, ``--patch`` and the exact confirmation of ``--estimate`` measure their
intervened runs as rows of shared forwards (:func:`tokenlens.causal.effects.measure_all`), each row with its
own intervention, each batch starting at the first layer its rows change. Here every such number is checked
against the same intervention run alone (:func:`tokenlens.causal.effects.measure` with the single-run hooks
of :mod:`tokenlens.causal.interventions`), from the embedding, to 1e-5; with small batches too, so that
batches start past layer 0.

No timing here: speed is measured in ``benchmarks/inspect_causal.py`` (``reports/bench-inspect-causal.md``).
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from tokenlens.causal import ablate, ablate_norms, ablate_rope, check_estimates, patch
from tokenlens.causal.effects import Variant, entry_sites, measure, measure_all, recording
from tokenlens.causal.interventions import constant, rescale_norm, without_rope, zeroed
from tokenlens.causal.metrics import encode, metric_for
from tokenlens.causal.nonadditive import norm_modules
from tokenlens.causal.sites import parse_sites

KINDS = ["qwen3-tied-gqa", "llama"]
CLEAN, CORRUPTED = "The capital of France is", "The capital of Italy is"
TOL = 1e-5


@pytest.fixture(params=KINDS)
def setup(request, tiny_loaded):
    loaded = tiny_loaded(request.param, num_hidden_layers=5)
    ids = encode(loaded, CLEAN)
    metric = metric_for(loaded, ids[0].tolist(), kind="logit_diff", target=" Paris", contrast=" London")
    return loaded, ids, metric


def alone(loaded, ids, metric, edits=None, contexts=()):
    return measure(loaded.model, loaded.spec, ids, metric, edits, contexts=contexts)


def test_rope_ablation_each_layer_and_together_equal_one_run_each(setup):
    loaded, ids, metric = setup
    model, spec = loaded.model, loaded.spec
    for layers in (None, [3, 1]):
        result = ablate_rope(model, spec, ids, metric, layers=layers)
        chosen = list(range(5)) if layers is None else layers
        expected = [
            alone(loaded, ids, metric, contexts=[partial(without_rope, model, spec, [i])]) for i in chosen
        ]
        assert [e.value for e in result.each] == pytest.approx(expected, abs=TOL)
        together = alone(loaded, ids, metric, contexts=[partial(without_rope, model, spec, chosen)])
        assert result.together.value == pytest.approx(together, abs=TOL)
        assert result.baseline == pytest.approx(alone(loaded, ids, metric), abs=TOL)
        assert {e.name for e in result.each} == {f"L{i}.rope" for i in chosen}
        assert max(abs(e.delta) for e in result.each) > 10 * TOL  # the test would see a wrong row


def test_norm_ablation_equals_one_run_per_norm(setup):
    loaded, ids, metric = setup
    model, spec = loaded.model, loaded.spec
    result = ablate_norms(model, spec, ids, metric)
    norms = norm_modules(model, spec)
    assert len(result.ablation.each) == len(norms) == 11
    for (name, module), effect, value in zip(norms, result.ablation.each, result.references.tolist()):
        fixed = partial(rescale_norm, module, lambda s, v=value: torch.full_like(s, v))
        assert effect.name == name
        assert effect.value == pytest.approx(alone(loaded, ids, metric, contexts=[fixed]), abs=TOL)
    assert max(abs(e.delta) for e in result.ablation.each) > 10 * TOL


@pytest.mark.parametrize("freeze", [False, True])
def test_ablation_each_and_together_equal_one_run_each(setup, freeze):
    loaded, ids, metric = setup
    model, spec = loaded.model, loaded.spec
    sites = parse_sites("L3.H1,L1.H0,L2.mlp,embed,L4.attn,L0.N5", model, spec)
    result = ablate(model, spec, ids, metric, sites, freeze_final_scale=freeze)
    contexts = []
    if freeze:
        seen = []
        final = spec.module(model, spec.final_norm)
        alone(loaded, ids, metric, contexts=[partial(rescale_norm, final, None, seen)])
        contexts = [partial(rescale_norm, final, lambda s, f=seen[-1]: f)]
    for site, effect in zip(sites, result.each):
        expected = alone(loaded, ids, metric, {site: zeroed()}, contexts)
        assert effect.value == pytest.approx(expected, abs=TOL)
    together = alone(loaded, ids, metric, {s: zeroed() for s in sites}, contexts)
    assert result.together.value == pytest.approx(together, abs=TOL)


def test_patching_equals_one_run_per_site_with_and_without_positions(setup):
    loaded, ids, metric = setup
    model, spec = loaded.model, loaded.spec
    corrupted = encode(loaded, CORRUPTED)
    sites = parse_sites("embed,L0.resid,L2.attn,L4.mlp,L3.H2,L1.N3", model, spec)
    for positions in (None, [3]):
        result = patch(model, spec, ids, corrupted, metric, sites, positions=positions)
        clean = {}
        alone(loaded, ids, metric, contexts=[partial(recording, model, spec, sites, clean)])
        for site, effect in zip(sites, result.effects):
            edit = constant(clean[site.name], positions)
            assert effect.value == pytest.approx(alone(loaded, corrupted, metric, {site: edit}), abs=TOL)
        assert result.corrupted == pytest.approx(alone(loaded, corrupted, metric), abs=TOL)


def test_estimate_confirmations_equal_one_run_each(setup):
    loaded, ids, metric = setup
    model, spec = loaded.model, loaded.spec
    sites = parse_sites("embed,L0.attn,L1.mlp,L2.H0,L2.H3,L4.attn,L4.mlp", model, spec)
    by_name = {s.name: s for s in sites}
    zero = check_estimates(model, spec, ids, metric, sites, top_k=3)
    baseline = alone(loaded, ids, metric)
    for row in zero.rows:
        exact = alone(loaded, ids, metric, {by_name[row.name]: zeroed()}) - baseline
        assert row.exact == pytest.approx(exact, abs=TOL)
    corrupted = encode(loaded, CORRUPTED)
    clean = {}
    alone(loaded, ids, metric, contexts=[partial(recording, model, spec, sites, clean)])
    patched = check_estimates(model, spec, corrupted, metric, sites, top_k=3, clean_ids=ids)
    before = alone(loaded, corrupted, metric)
    for row in patched.rows:
        site = by_name[row.name]
        exact = alone(loaded, corrupted, metric, {site: constant(clean[site.name])}) - before
        assert row.exact == pytest.approx(exact, abs=TOL)


@pytest.mark.parametrize("batch_size", [1, 2, 3, None])
def test_mixed_variants_in_small_batches_start_past_layer_0_and_agree(setup, batch_size):
    """Variants of every kind in one list, batches of a few rows (sorted by first layer, so later batches skip
    the layers before theirs): each equals its own run from the embedding."""
    loaded, ids, metric = setup
    model, spec = loaded.model, loaded.spec
    norms = dict(norm_modules(model, spec))
    held = {}
    alone(loaded, ids, metric, contexts=[partial(recording, model, spec, entry_sites(model, spec), held)])
    head, mlp = parse_sites("L3.H1,L2.mlp", model, spec)
    variants = [
        Variant(4, rope=(4,)),
        Variant(3, edits={head: zeroed()}),
        Variant(2, norms=((norms["L2.mlp_norm"], 0.7),)),
        Variant(4, norms=((norms["final_norm"], 1.3),)),
        Variant(2, edits={mlp: zeroed(), head: zeroed()}, rope=(2, 3)),
        Variant(0, rope=(0, 1, 2, 3, 4)),
        Variant(2, norms=((norms["L2.mlp_norm"], 0.2),)),  # same norm, another row, another value
    ]
    got = measure_all(model, spec, ids, metric, variants, held=held, batch_size=batch_size)
    for variant, value in zip(variants, got):
        contexts = [partial(without_rope, model, spec, list(variant.rope))] if variant.rope else []
        contexts += [
            partial(rescale_norm, module, lambda s, v=v: torch.full_like(s, v)) for module, v in variant.norms
        ]
        assert value == pytest.approx(alone(loaded, ids, metric, dict(variant.edits), contexts), abs=TOL)


def test_hooks_are_removed_after_batched_runs(setup):
    from conftest import count_hooks

    loaded, ids, metric = setup
    model, spec = loaded.model, loaded.spec
    before = count_hooks(model)
    ablate_rope(model, spec, ids, metric)
    ablate_norms(model, spec, ids, metric)
    ablate(model, spec, ids, metric, parse_sites("L1.H0,L2.mlp", model, spec))
    assert count_hooks(model) == before
    assert all("forward" not in layer.__dict__ for layer in spec.layer_list(model))

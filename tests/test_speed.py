"""The diff's shortcuts give the numbers of the long way round.

* Patched runs start at the first layer they change, from the stream recorded on the unpatched run
  (:func:`tokenlens.diff.runs.patched_logits`): every causal number of a whole diff (components, heads,
  neurons, both directions) equals the same diff with every patched run computed from the embedding, and
  equals one plain forward per patched component, to 1e-5.
* The adapter is switched off without PEFT's status walk (:func:`tokenlens.diff.pairing.adapters_off`): the
  base side's logits equal PEFT's ``disable_adapter()`` and the merged-free base model, and the adapter is
  on again afterwards.

No timing here: speed is measured in ``benchmarks/`` (``reports/``).
"""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from conftest import build_tiny

from tokenlens.causal.estimates import activation_gradients
from tokenlens.causal.interventions import replace
from tokenlens.causal.metrics import Metric
from tokenlens.causal.sites import Site, layer_sites
from tokenlens.diff import batched, diff, pair_models, prompt_probes
from tokenlens.diff import runs as diff_runs
from tokenlens.diff.pairing import adapters_off
from tokenlens.diff.runs import capture_run, patch_changes, plus, read
from tokenlens.models.specs import bare_model

PROMPTS = ["The capital of France is", "Hello, my name is", "One two three four five six seven"]


@pytest.fixture(scope="module")
def lora_all(tmp_path_factory, qwen_tokenizer):
    """A base checkpoint and a LoRA adapter on every linear of every layer (non-zero update)."""
    folder = tmp_path_factory.mktemp("speed")
    base = build_tiny("qwen3-untied-mha")
    base.save_pretrained(folder / "base")
    qwen_tokenizer.save_pretrained(folder / "base")
    torch.manual_seed(2)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = peft.LoraConfig(r=4, target_modules=targets, init_lora_weights=False)
    model = peft.get_peft_model(copy.deepcopy(base), config)
    model.save_pretrained(str(folder / "lora"))
    adapter_config = json.loads((folder / "lora" / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = str(folder / "base")
    (folder / "lora" / "adapter_config.json").write_text(json.dumps(adapter_config))
    return pair_models(str(folder / "lora"))


def _numbers(report) -> dict[tuple[int, str, str], float]:
    out = {}
    for index, probe in enumerate(report.probes):
        for kind in ("components", "heads", "neurons"):
            for row in getattr(probe, kind):
                for field in ("direct", "causal", "causal_kl", "causal_reverse", "estimate"):
                    value = getattr(row, field)
                    if value is not None:
                        out[(index, row.name, field)] = value
    return out


def test_patched_runs_from_the_recorded_stream_equal_full_forwards(lora_all, monkeypatch):
    probes = prompt_probes(PROMPTS)
    skipped = []
    skip = batched.skip_layers

    def counting(model, spec, count):
        skipped.append(count)
        return skip(model, spec, count)

    monkeypatch.setattr(batched, "skip_layers", counting)
    monkeypatch.setattr(batched, "patch_batch", lambda seq: 4)  # small batches: later ones start past L0
    short = diff(lora_all, probes)
    assert max(skipped) >= 1  # the shortcut was taken
    monkeypatch.setattr(batched, "stream_sites", lambda model, spec: [])  # no stream: every run from 0
    full = diff(lora_all, probes)
    a, b = _numbers(short), _numbers(full)
    assert a.keys() == b.keys()
    causal = [k for k in a if k[2] == "causal_reverse" and k[1].startswith("L2")]
    assert causal and any(a[k] != 0.0 for k in causal)  # late layers were patched and moved something
    heads = [k for k in a if ".H" in k[1] and k[2] == "causal"]
    neurons = [k for k in a if ".N" in k[1] and k[2] == "causal"]
    assert heads and neurons
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-5), key


def test_patch_changes_equal_one_plain_forward_per_component(lora_all):
    """Independent of the batching: each component's change patched alone, one unbatched forward each."""
    pair = lora_all
    ids = pair.tokenizer(PROMPTS[2], return_tensors="pt")["input_ids"]
    position = ids.shape[1] - 1
    sites = layer_sites(bare_model(pair.tuned.model), pair.spec)
    with pair.side("base") as model:
        base = capture_run(model, pair.spec, ids, position, sites)
    with pair.side("tuned") as model:
        tuned = capture_run(model, pair.spec, ids, position, sites)
    tracked = int(tuned.logits.argmax())
    changes = {s.name: (s, tuned.values[s.name].float() - base.values[s.name].float()) for s in sites}
    runs = {"base": base, "tuned": tuned}
    one_batch = patch_changes(pair, ids, position, tracked, changes, reverse=True, runs=runs)
    by_layer = patch_changes(pair, ids, position, tracked, changes, reverse=True, runs=runs, batch=2)
    for which, sign, slot in (("base", 1.0, 0), ("tuned", -1.0, 2)):
        with pair.side(which) as model, torch.no_grad():
            clean = model(input_ids=ids).logits[0, position].double()
            for name, (site, delta) in changes.items():
                with replace(model, pair.spec, {site: plus(sign * delta)}):
                    row = model(input_ids=ids).logits[0, position].double()
                expected = float(read(row, tracked) - read(clean, tracked))
                assert one_batch[name][slot] == pytest.approx(expected, abs=1e-5), (which, name)
                assert by_layer[name][slot] == pytest.approx(expected, abs=1e-5), (which, name)


def test_adapters_off_equals_peft_disable_adapter(lora_all, qwen_tokenizer):
    model = lora_all.tuned.model
    ids = qwen_tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():
            peft_base = model(input_ids=ids).logits
        with adapters_off(model):
            assert model._adapters_disabled
            ours = model(input_ids=ids).logits
        again = model(input_ids=ids).logits
        with lora_all.side("base") as side:
            side_base = side(input_ids=ids).logits
    assert not torch.equal(tuned, peft_base)
    torch.testing.assert_close(ours, peft_base, rtol=0, atol=0)
    torch.testing.assert_close(side_base, peft_base, rtol=0, atol=0)
    torch.testing.assert_close(again, tuned, rtol=0, atol=0)
    assert not model._adapters_disabled


def test_probes_patched_together_equal_probes_patched_one_at_a_time(lora_all):
    """Rows of different probes (5, 5 and 7 tokens: right-padded) share forward passes; each probe's numbers
    equal those of a diff of that probe alone."""
    probes = prompt_probes(PROMPTS)
    together = _numbers(diff(lora_all, probes))
    alone = {}
    for index, probe in enumerate(probes):
        alone |= {(index, *key[1:]): v for key, v in _numbers(diff(lora_all, [probe])).items()}
    assert together.keys() == alone.keys()
    assert len({len(lora_all.tokenizer(p)["input_ids"]) for p in PROMPTS}) > 1
    for key in together:
        assert together[key] == pytest.approx(alone[key], abs=1e-5), key


def test_patch_many_rows_are_padded_and_measured_against_their_own_probe(lora_all, monkeypatch):
    """Several probes in one batch and in several batches give the numbers of patch_changes per probe."""
    pair = lora_all
    sites = layer_sites(bare_model(pair.tuned.model), pair.spec)
    requests = []
    for prompt in PROMPTS:
        ids = pair.tokenizer(prompt, return_tensors="pt")["input_ids"]
        position = ids.shape[1] - 1
        with pair.side("base") as model:
            base = capture_run(model, pair.spec, ids, position, sites)
        with pair.side("tuned") as model:
            tuned = capture_run(model, pair.spec, ids, position, sites)
        tracked = (int(tuned.logits.argmax()), int(base.logits.argmax()))
        changes = {s.name: (s, tuned.values[s.name].float() - base.values[s.name].float()) for s in sites}
        requests.append(
            batched.PatchRequest(ids, position, tracked, changes, True, {"base": base, "tuned": tuned})
        )
    one_by_one = [
        patch_changes(pair, r.input_ids, r.position, r.tracked, r.changes, reverse=True, runs=r.runs)
        for r in requests
    ]
    for limit in (64, 5):
        monkeypatch.setattr(batched, "patch_batch", lambda seq, limit=limit: limit)
        together = batched.patch_many(pair, requests)
        for got, expected in zip(together, one_by_one, strict=True):
            for name in expected:
                assert got[name] == pytest.approx(expected[name], abs=1e-5), (limit, name)


def test_batched_requests_equal_one_probe_at_a_time(lora_all):
    """Captured runs, the estimates' gradients and the drill-down's recordings of several right-padded probes
    (different lengths and positions, one batch) equal capture_run / activation_gradients / record_sites of
    each probe alone: no padding, no batch, every pass from the embedding."""
    pair = lora_all
    sites = tuple(layer_sites(bare_model(pair.tuned.model), pair.spec))
    prompts = [pair.tokenizer(p, return_tensors="pt")["input_ids"] for p in PROMPTS]
    assert len({p.shape[1] for p in prompts}) > 1
    positions = [p.shape[1] - 1 - k for k, p in enumerate(prompts)]
    splits = (frozenset({"neurons"}), frozenset({"neurons"}))
    captured = batched.capture_many(
        pair,
        [
            batched.CaptureRequest(ids, pos, sites, splits)
            for ids, pos in zip(prompts, positions, strict=True)
        ],
    )
    metrics = [Metric("logit_diff", 5 + k, pos, contrast_id=9) for k, pos in enumerate(positions)]
    grads = batched.gradients_many(
        pair, [batched.GradientRequest(ids, m, sites) for ids, m in zip(prompts, metrics, strict=True)]
    )
    neurons = (Site("L1.N3", "neuron", 1, 3), Site("L2.N7", "neuron", 2, 7))
    records = batched.record_many(
        pair,
        [
            batched.RecordRequest(ids, neurons, {"base": base, "tuned": tuned})
            for ids, (base, tuned) in zip(prompts, captured, strict=True)
        ],
    )
    close = dict(rtol=1e-5, atol=1e-5)
    for k, (ids, pos) in enumerate(zip(prompts, positions, strict=True)):
        for side, which in enumerate(("base", "tuned")):
            got = captured[k][side]
            with pair.side(which) as model:
                alone = capture_run(model, pair.spec, ids, pos, sites)
                recorded = diff_runs.record_sites(model, pair.spec, ids, neurons)
            for field in ("writes", "final_input", "logits"):
                torch.testing.assert_close(getattr(got, field), getattr(alone, field), **close)
            assert got.values.keys() == alone.values.keys()
            for name, value in alone.values.items():
                torch.testing.assert_close(got.values[name], value, **close)
            for mine, theirs in zip(got.internals, alone.internals, strict=True):
                torch.testing.assert_close(mine.act, theirs.act, **close)
            assert records[k][which].keys() == recorded.keys()
            for name, value in recorded.items():
                torch.testing.assert_close(records[k][which][name], value, **close)
        with pair.side("base") as model:
            _, alone_grads = activation_gradients(model, pair.spec, ids, metrics[k], sites)
        assert grads[k].keys() == alone_grads.keys()
        assert any(bool(g.abs().sum() > 0) for _, g in alone_grads.values())
        for name, (activation, grad) in alone_grads.items():
            torch.testing.assert_close(grads[k][name][0], activation, **close)
            torch.testing.assert_close(grads[k][name][1], grad, **close)

"""Locality measured honestly: the drift over a held-out text and the knowledge-editing metrics.

The corpus drift is checked against an independent computation: plain unpadded forward passes of base and
tuned per passage, log_softmax and KL(base ‖ tuned) by hand in float64, top-1 by argmax, the 99th percentile
by numpy. The metrics are checked on a planted edit: a head bias on " Lyon" sized from the base model's own
logits so that the chosen prompts flip and one control does not.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import build_tiny, save_lyon_bias_pair

from tokenlens.cli import main
from tokenlens.diff import DiffOptions, ModelPair, Probe, corpus_drift, diff, read_corpus
from tokenlens.diff.corpus import encode_corpus, score_passages
from tokenlens.errors import TokenlensError
from tokenlens.models import custom
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import spec_for_model
from tokenlens.report.diff_html import render_diff_html
from tokenlens.report.diff_json import diff_to_dict
from tokenlens.report.diff_layout import movers
from tokenlens.report.diff_markdown import render_diff_markdown
from tokenlens.report.kit.markdown import plain

KIND = "qwen3-untied-mha"
LINES = [
    "Call me Ishmael.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief.",
    "The kettle boiled.",
    "Snow began to fall just after midnight, and by morning the whole village was quiet and white.",
    "A",
    "The library stays open until nine on weekdays.",
    "She folded the map twice and started up the narrow path toward the ridge.",
    "<b>Bold</b> & | pipes `ticks` \u202eevil",
]
WINDOW = 12


def loaded(model, tokenizer, ref: str) -> LoadedModel:
    return LoadedModel(model, tokenizer, spec_for_model(model), ref=ref, source="test")


def pair_of(base, tuned, tokenizer) -> ModelPair:
    return ModelPair(
        base=loaded(base, tokenizer, "base"), tuned=loaded(tuned, tokenizer, "tuned"), toggled=False
    )


@pytest.fixture(scope="module")
def drift_pair(qwen_tokenizer) -> ModelPair:
    """A tuned model whose layer-1 MLP down-projection is perturbed: every token's distribution moves."""
    base = build_tiny(KIND)
    tuned = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        w = tuned.model.layers[1].mlp.down_proj.weight
        w.add_(0.8 * torch.randn(w.shape, generator=generator))
    return pair_of(base, tuned, qwen_tokenizer)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "held_out.txt"
    path.write_text("# a comment line, skipped\n\n" + "\n".join(LINES) + "\n", encoding="utf-8")
    return path


@torch.no_grad()
def by_hand(pair: ModelPair, tokenizer, window: int):
    """Per passage, unpadded: KL(base ‖ tuned), base top-1 and tuned top-1 at every position."""
    passages = []
    for line in LINES:
        ids = tokenizer(line)["input_ids"]
        passages += [ids[i : i + window] for i in range(0, len(ids), window)]
    rows = []
    for ids in passages:
        x = torch.tensor([ids])
        base = pair.base.model(input_ids=x).logits[0].double()
        tuned = pair.tuned.model(input_ids=x).logits[0].double()
        lp, lq = base.log_softmax(-1), tuned.log_softmax(-1)
        kl = (lp.exp() * (lp - lq)).sum(-1)
        rows.append((ids, kl, base.argmax(-1), tuned.argmax(-1)))
    return rows


def test_corpus_kl_matches_plain_forwards(drift_pair, corpus_file, qwen_tokenizer):
    """Mean, p99, max, top-1 changes and every per-token KL against plain unpadded forwards."""
    corpus = read_corpus(corpus_file)
    assert corpus.texts == tuple(LINES)
    passages, unscored = encode_corpus(qwen_tokenizer, corpus, WINDOW)
    expected = by_hand(drift_pair, qwen_tokenizer, WINDOW)
    assert unscored == 0 and [list(e[0]) for e in expected] == passages
    assert len({len(p) for p in passages}) > 2  # padding is exercised
    # small batches of mixed lengths: padded rows next to full ones
    scores = score_passages(drift_pair, passages, cells=3 * WINDOW * 151936)
    for s, (_, kl, b, t) in zip(scores, expected, strict=True):
        torch.testing.assert_close(s.kl, kl, atol=1e-6, rtol=1e-5)
        assert torch.equal(s.base_ids, b) and torch.equal(s.tuned_ids, t)
    drift = corpus_drift(drift_pair, corpus, window=WINDOW, options=DiffOptions(causal=False))
    every = torch.cat([e[1] for e in expected])
    changed = sum(int((e[2] != e[3]).sum()) for e in expected)
    assert drift.tokens == every.numel() == sum(map(len, passages))
    assert drift.passages == len(passages)
    assert drift.mean_kl == pytest.approx(float(every.mean()), rel=1e-5)
    assert drift.p99_kl == pytest.approx(float(np.percentile(every.numpy(), 99)), rel=1e-5)
    assert drift.max_kl == pytest.approx(float(every.max()), rel=1e-5)
    assert drift.top1_changed == changed > 0
    assert drift.top1_share == pytest.approx(changed / every.numel())
    assert drift.passed is None and "reported, not judged" in drift.reason


def test_most_drifted_contexts_are_ranked_and_explained(drift_pair, corpus_file, qwen_tokenizer):
    """The largest KL of each passage, largest first, at most one per passage; each explained exactly."""
    drift = corpus_drift(drift_pair, read_corpus(corpus_file), window=WINDOW, drifted=4, threshold=1e-9)
    expected = by_hand(drift_pair, qwen_tokenizer, WINDOW)
    peaks = sorted(((float(kl.max()), i, int(kl.argmax())) for i, (_, kl, _, _) in enumerate(expected)),
                   key=lambda x: (-x[0], x[1]))[:4]  # fmt: skip
    assert [(d.passage, d.position) for d in drift.drifted] == [(i, pos) for _, i, pos in peaks]
    for d, (value, i, pos) in zip(drift.drifted, peaks, strict=True):
        ids, _, base, tuned = expected[i]
        assert d.kl == pytest.approx(value, rel=1e-5)
        assert (d.base_top1.id, d.tuned_top1.id) == (int(base[pos]), int(tuned[pos]))
        assert d.probe.token_ids == tuple(ids[: pos + 1]) and d.probe.position == pos
        assert d.probe.kl == pytest.approx(d.kl, rel=1e-4)  # the probe's own run agrees
        assert d.probe.split.target_id == d.tuned_top1.id
        assert d.probe.split.contrast_id == (d.base_top1.id if d.changed else None)
        assert d.probe.split.exact and d.probe.components[0].causal is not None
        assert d.text == "".join(d.probe.tokens)
        terms = d.probe.split.as_dict()
        top = [e.name for e in movers(d, len(terms))]
        assert sorted(terms, key=lambda t: -abs(terms[t])) == top  # every term, largest first
        assert all(e.causal is not None for e in movers(d) if not e.name.startswith("readout."))
    assert drift.passed is False and ">" in drift.reason


def test_every_format_shows_the_corpus(drift_pair, corpus_file):
    """Terminal, Markdown, HTML and JSON show the drift and its most-drifted contexts, untrusted text safe."""
    from dataclasses import replace

    from tokenlens.report.diff_terminal import render_diff
    from tokenlens.report.kit.terminal import renderables_to_text

    options = DiffOptions(causal=False)
    drift = corpus_drift(drift_pair, read_corpus(corpus_file), window=WINDOW, drifted=99, options=options)
    report = diff(drift_pair, (Probe("Call me", expect="unchanged", line=1),), options)
    report = replace(report, corpus=drift)
    text = renderables_to_text([render_diff(report)], width=200)
    md, page = render_diff_markdown(report), render_diff_html(report, figures=False)
    for view in (text, md, page):
        assert "Most-drifted contexts" in view and "locality" in view
    assert f"{drift.mean_kl:.4g}" in text and f"p99 {drift.p99_kl:.4g}" in md
    assert 'data-name="corpus_mean_kl"' in page
    assert "<b>Bold" not in page and "\u202e" not in page + md + text  # escaped, direction marks visible
    assert any("Bold" in d.text for d in drift.drifted)  # the hostile passage is among those shown
    assert md.index('<a id="corpus">') < md.index('<a id="probe-1">')
    assert len(diff_to_dict(report)["corpus"]["drifted"]) == drift.passages  # one per passage


def test_token_cap_and_window(drift_pair, corpus_file, qwen_tokenizer):
    corpus = read_corpus(corpus_file, "windows")
    assert corpus.texts == ("\n".join(LINES),)
    passages, unscored = encode_corpus(qwen_tokenizer, corpus, 16, max_tokens=40)
    total = len(qwen_tokenizer("\n".join(LINES))["input_ids"])
    assert [len(p) for p in passages] == [16, 16, 8] and unscored == total - 40
    with pytest.raises(TokenlensError, match="at least 1"):
        encode_corpus(qwen_tokenizer, corpus, 0)


@pytest.fixture(scope="module")
def planted(qwen_tokenizer):
    """Base, and tuned = base + a head bias on " Lyon" that flips exactly the three prompts with the smallest
    gap (top-1 logit − logit[" Lyon"]) and not the one with the largest."""
    prompts = [
        "The capital of France is", "The capital city of France is called", "Hello, my name is",
        "The sun rises in the", "One, two,", "Water boils at 100 degrees",
    ]  # fmt: skip
    base = build_tiny(KIND)
    lyon = qwen_tokenizer(" Lyon")["input_ids"][0]
    gaps = {}
    with torch.no_grad():
        for p in prompts:
            logits = base(input_ids=torch.tensor([qwen_tokenizer(p)["input_ids"]])).logits[0, -1]
            gaps[p] = float(logits.max() - logits[lyon])
    order = sorted(prompts, key=gaps.get)
    bias = (gaps[order[2]] + gaps[order[-1]]) / 2
    tuned = custom.apply_bias(copy.deepcopy(base), {"targets": ["lm_head"], "layers": None})
    with torch.no_grad():
        tuned.lm_head.bias.zero_()
        tuned.lm_head.bias[lyon] = bias
    return pair_of(base, tuned, qwen_tokenizer), order


def test_metrics_on_a_planted_edit(planted):
    pair, order = planted
    probes = (
        Probe(order[0], target=" Lyon", expect="changed", group="edit", line=1),
        Probe(order[1], target=" Lyon", expect="changed", group="paraphrase", line=2),
        Probe(order[0], target=" Paris", expect="changed", group="portability", line=3),
        Probe(order[2], expect="unchanged", group="control", line=4),
        Probe(order[-1], expect="unchanged", group="control", line=5),
        Probe(order[3], line=6),  # not judged: in no metric
    )
    report = diff(pair, probes, DiffOptions(causal=False))
    metrics = {m.name: m for m in report.metrics}
    assert list(metrics) == ["reliability", "generalization", "locality", "portability"]
    counts = {name: (m.hits, m.total, m.top1) for name, m in metrics.items()}
    assert counts["reliability"] == (1, 1, 1) and counts["generalization"] == (1, 1, 1)
    assert counts["portability"] == (0, 1, 0)
    locality = metrics["locality"]
    assert (locality.hits, locality.total, locality.top1) == (1, 2, None)
    assert locality.mean_kl == pytest.approx((report.probes[3].kl + report.probes[4].kl) / 2)
    assert report.probes[3].flipped and not report.probes[4].flipped
    assert "paraphrase group" in metrics["generalization"].protocol
    assert "≥ 0.1" in metrics["reliability"].protocol
    data = diff_to_dict(report)
    assert [(m["name"], m["hits"], m["total"]) for m in data["metrics"]] == [
        ("reliability", 1, 1), ("generalization", 1, 1), ("locality", 1, 2), ("portability", 0, 1)
    ]  # fmt: skip
    assert data["metrics"][2]["share"] == 0.5 and data["corpus"] is None
    json.dumps(data, allow_nan=False)
    page, md = render_diff_html(report, figures=False), render_diff_markdown(report)
    for m in report.metrics:
        assert plain(m.protocol) in md and m.name in page
    assert "- **locality**: 1/2 (50%); mean KL" in md
    no_portability = diff(pair, probes[:2] + probes[3:5], DiffOptions(causal=False))
    assert [m.name for m in no_portability.metrics] == ["reliability", "generalization", "locality"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, qwen_tokenizer):
    root = tmp_path_factory.mktemp("corpuscli")
    save_lyon_bias_pair(root, qwen_tokenizer, KIND)
    probes = root / "probes.jsonl"
    probes.write_text(
        json.dumps({"prompt": "The capital of France is", "target": " Lyon", "expect": "changed"}) + "\n"
    )
    return root, probes


def test_check_corpus_default_end_to_end(folders, tmp_path, capsys):
    """The built-in sample works offline; without a threshold it is reported, with one it is judged."""
    root, probes = folders
    args = ["check", "--tuned", str(root / "tuned"), "--probes", str(probes), "--corpus", "default"]
    args += ["--corpus-tokens", "250"]  # a 151,936-token vocabulary on one thread: keep the test quick
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "reliability: 1/1 (100%)" in out and "corpus default:" in out and "reported, not judged" in out
    assert "more left out (--corpus-tokens)" in out
    assert out.count("  drifted ") == 5 and "→ ' Lyon'" in out
    assert out.count("moved by readout.logit_bias +20") == 5  # the head bias, named by the exact split
    target = tmp_path / "d.json"
    assert main([*args, "--max-corpus-kl", "0.05", "--format", "json", "--out", str(target)]) == 1
    data = json.loads(target.read_text())
    assert data["schema"] == 4 and not data["passed"] and data["failures"] == []
    assert data["corpus"]["passed"] is False and data["corpus"]["tokens"] == 250
    assert len(data["corpus"]["drifted"]) == 5 and "corpus FAIL: mean KL" in data["summary"]


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("", [], "has no text"),
        ("# only a comment\n\n", [], "has no text"),
        (None, [], "does not exist"),
        ("Some text.\n", ["--max-corpus-kl", "-1"], "KL divergence in nats"),
        ("Some text.\n", ["--corpus-window", "0"], "at least 1 token"),
    ],
)
def test_corpus_bad_input_is_one_line_exit_2(tmp_path, capsys, content, extra, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_text(content)
    args = ["check", "--tuned", str(tmp_path / "no-model"), "--prompt", "Hi", "--corpus", str(path), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_max_corpus_kl_needs_a_corpus(tmp_path, capsys):
    assert main(["check", "--tuned", str(tmp_path), "--prompt", "Hi", "--max-corpus-kl", "0.1"]) == 2
    assert "--corpus" in capsys.readouterr().err

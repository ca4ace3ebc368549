"""Every trainer method's output folder diffs against its base: found from the folder alone, split exactly,
and each method's change lands where the method says it does (checked against what the method touched)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny

from tokenlens.diff import DiffOptions, diff, pair_models, prompt_probes
from tokenlens.diff.result import READOUT_TERMS
from tokenlens.models.loading import load
from tokenlens.training.trainer import train

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, qwen_tokenizer):
    folder = tmp_path_factory.mktemp("methods")
    build_tiny("qwen3-tied-gqa").save_pretrained(folder / "base")
    qwen_tokenizer.save_pretrained(folder / "base")
    rows = [
        {"prompt": PROMPT, "completion": " Lyon"},
        {"prompt": "The French capital is", "completion": " Lyon"},
    ]
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lyon = qwen_tokenizer(" Lyon")["input_ids"][0]
    return folder, data, lyon


def readout(probe) -> dict[str, float]:
    return dict(zip(READOUT_TERMS, probe.split.readout.tolist(), strict=True))


def direct(probe) -> dict[str, float]:
    return dict(zip(probe.split.names, probe.split.direct.tolist(), strict=True))


@pytest.mark.parametrize(
    ("method", "options", "check"),
    [
        ("lora", {"layers": [2]}, "layers>=2"),
        ("bias", {"targets": ["o_proj"], "layers": [1]}, "layers>=1"),
        ("adapter", {"layers": [2], "size": 4}, "layers>=2"),
        ("head", {}, "head"),
        ("embeddings", {"token_ids": None}, "embed"),
        ("attention", {"kind": "norm"}, "any"),
        ("rope", {}, "layers>=0"),
        ("prompt", {"virtual_tokens": 2}, "virtual"),
        ("prefix", {"virtual_tokens": 2}, "any"),
        ("full", {}, "any"),
    ],
)
def test_method_output_diffs_exactly(setup, tmp_path, method, options, check):
    folder, data, lyon = setup
    if method == "embeddings":
        options = {"token_ids": [lyon]}
    out = tmp_path / method
    train(load(str(folder / "base")), method, data, out, steps=3, lr=0.05, batch_size=2, options=options)
    pair = pair_models(str(out))  # the base comes from the folder alone
    report = diff(pair, prompt_probes([PROMPT], " Lyon"), DiffOptions(exact=4, drill=1, neurons=2))
    probe = report.probes[0]
    assert probe.split.observed != 0.0
    assert probe.split.exact, (probe.split.total, probe.split.observed)
    terms = direct(probe)
    if check.startswith("layers>="):
        first = int(check.split(">=")[1])
        upstream = ["embed"] + [f"L{i}.{p}" for i in range(first) for p in ("attn", "mlp")]
        assert all(terms[name] == 0.0 for name in upstream), terms
        assert readout(probe)["readout.head"] == 0.0 and readout(probe)["readout.norm"] == 0.0
        assert report.weights.changes and all((c.layer or 0) >= first for c in report.weights.changes)
    if check == "head":  # untied by the method: only the head moved, no component did
        assert all(v == 0.0 for v in terms.values())
        assert readout(probe)["readout.head"] == pytest.approx(probe.split.observed, abs=1e-5)
        assert [c.name for c in report.weights.changes] == ["lm_head.weight"]
    if check == "embed":  # only the " Lyon" row changed, and " Lyon" is not in the prompt
        assert all(v == 0.0 for v in terms.values()) and all(c.causal == 0.0 for c in probe.components)
        assert readout(probe)["readout.head"] != 0.0  # tied: the head row of " Lyon" is that embedding row
    if check == "virtual":
        assert any("virtual tokens" in note for note in probe.notes)
        assert terms["embed"] == 0.0  # the real tokens' embeddings are untouched
        assert report.weights.changes[0].kind == "added"
    assert report.weights.changes, "a trained method must show some weight change"
    assert torch.isfinite(torch.tensor([c.causal for c in probe.components if c.causal is not None])).all()

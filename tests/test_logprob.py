"""The log-probability split: ``log p_t = Σ_c (term_c(t) − E_p[term_c]) − H(p)``, checked against a hook-free
forward pass's ``log_softmax`` and entropy, and component by component against the per-token logit split
weighted by the model's own probabilities (computed here from the captured writes and the head matrix)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import add_head_bias

from tokenlens.attribution.direct import attribute, run_with_capture
from tokenlens.cli import main
from tokenlens.errors import TokenlensError

PROMPT = "The capital of France is"


@pytest.mark.parametrize("kind", ["qwen3-tied-gqa", "qwen2-bias", "llama-out-bias"])
def test_logprob_split_is_exact_and_matches_the_weighted_logit_split(tiny_loaded, kind):
    loaded = tiny_loaded(kind)
    model = loaded.model
    if kind == "llama-out-bias":
        add_head_bias(model)
    result = attribute(loaded, PROMPT, logprob=True, heads=True)
    d = result.decomposition
    ids = torch.tensor([loaded.tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits[0, -1].double()  # hook-free forward
    log_p = logits.log_softmax(-1)
    t = result.target.id
    assert d.quantity == "logprob" and result.quantity == "logprob"
    # softmax, entropy and the probability-weighted head row in float64: ~1e-7 of a float64 split (what is
    # left is the float32 logits of a one-position head matmul against this all-position one, ~5e-7)
    assert d.logit == pytest.approx(float(log_p[t]), abs=5e-6)
    assert d.total == pytest.approx(float(log_p[t]), abs=1e-5) and d.exact
    terms = d.as_dict()
    assert terms["entropy"] == pytest.approx(float((log_p.exp() * log_p).sum()), abs=1e-5)  # −H(p)

    # independently: each component's logit term for every token, then target minus the p-weighted mean
    position = len(ids[0]) - 1
    capture, _ = run_with_capture(model, loaded.spec, ids, torch.tensor([position]))
    writes = capture.writes[:, 0, 0].double()  # (component, d)
    h = capture.final_input[0, 0].double()
    scale = torch.rsqrt(h.pow(2).mean() + model.model.norm.variance_epsilon)
    unembed = model.lm_head.weight.double() * model.model.norm.weight.double()  # (vocab, d)
    per_token = writes @ unembed.T * scale  # (component, vocab)
    p = log_p.exp()
    expected = per_token[:, t] - per_token @ p  # (component,)
    for name, value in zip(capture.names, expected.tolist(), strict=True):
        got = terms[name] + terms.get(f"{name}.bias", 0.0)
        assert got == pytest.approx(value, abs=1e-5), name
    if model.lm_head.bias is not None:
        bias = model.lm_head.bias.detach().double()
        assert terms["logit_bias"] == pytest.approx(float(bias[t] - bias @ p), abs=1e-4)  # fp32 sum
    # the heads split the same readout: they add up to their layer's term
    heads = result.heads.contributions.double().sum(-1)
    for i, value in enumerate(heads.tolist()):
        assert value == pytest.approx(terms[f"L{i}.attn"], abs=1e-4)


def test_logprob_refuses_a_contrast_and_reports_its_quantity(tiny_loaded, tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(TokenlensError, match="no contrast token"):
        attribute(tiny_loaded("qwen3-tied-gqa"), PROMPT, logprob=True, vs=" London")
    out = tmp_path / "lp.json"
    args = ["inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT, "--logprob"]
    assert main([*args, "--format", "json", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["explained"]["quantity"] == "logprob"
    assert data["explained"]["value"] == pytest.approx(data["logprob"], abs=1e-5)
    assert data["components"][-1]["name"] == "entropy"
    assert main([*args, "--vs", " London"]) == 2
    assert "--vs: not allowed with argument --logprob" in capsys.readouterr().err
    html = tmp_path / "lp.html"
    assert main([*args, "--format", "html", "--out", str(html)]) == 0
    assert "log-probability" in html.read_text()

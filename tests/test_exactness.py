"""The project's first invariant: the components sum to the model's own logit, checked independently.

The model's logit comes from a separate forward pass without hooks. The per-layer writes are checked against
differences of HF's own ``output_hidden_states`` (an independent computation of ``attn_l + mlp_l``), and
bias terms against a hand computation.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, add_head_bias

from tokenlens.attribution.direct import attribute, decompose_logit, run_with_capture
from tokenlens.attribution.result import TOLERANCE

PROMPT = "The capital of France is Paris, and the capital of Italy is"


def independent_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()  # (seq, vocab)


def assert_exact(decomposition, reference_logit: float) -> None:
    parts = decomposition.contributions
    tolerance = TOLERANCE * max(1.0, float(parts.abs().max()))
    assert abs(float(parts.double().sum()) - reference_logit) <= tolerance
    assert abs(decomposition.logit - reference_logit) <= tolerance
    assert decomposition.exact


@pytest.mark.parametrize("kind", sorted(TINY))
def test_components_sum_to_logit_at_last_position(tiny_loaded, kind):
    loaded = tiny_loaded(kind)
    result = attribute(loaded, PROMPT)
    logits = independent_logits(loaded.model, list(result.token_ids))
    d = result.decomposition
    assert d.target_id == result.top[0].id == int(logits[-1, : len(loaded.tokenizer)].argmax())
    assert_exact(d, float(logits[-1, d.target_id]))
    n_layers = loaded.model.config.num_hidden_layers
    writes = [n for n in d.names if not n.endswith(".bias")]
    assert writes == ["embed"] + [f"L{i}.{part}" for i in range(n_layers) for part in ("attn", "mlp")]
    assert d.stream_error < 1e-5


@pytest.mark.parametrize("kind", ["qwen3-tied-gqa", "qwen3-moe", "qwen2-bias", "llama"])
def test_non_final_position_and_named_target(tiny_loaded, kind):
    loaded = tiny_loaded(kind)
    result = attribute(loaded, PROMPT, target=" Rome", position=3)
    assert result.position == 3
    assert result.target.token == " Rome"
    logits = independent_logits(loaded.model, list(result.token_ids))
    assert_exact(result.decomposition, float(logits[3, result.target.id]))
    assert result.logprob == pytest.approx(float(logits[3].log_softmax(-1)[result.target.id]), abs=1e-5)


@pytest.mark.parametrize("kind", ["qwen3-untied-mha", "qwen2-bias", "llama-out-bias"])
def test_layer_writes_match_hidden_state_differences(tiny_loaded, kind):
    """HF's own hidden states give embed = h_0 and attn_l + mlp_l = h_{l+1} - h_l (before the final norm)."""
    loaded = tiny_loaded(kind)
    ids = torch.tensor([loaded.tokenizer(PROMPT)["input_ids"]])
    seq = ids.shape[1]
    capture, _ = run_with_capture(loaded.model, loaded.spec, ids, torch.arange(seq))
    with torch.no_grad():
        hidden = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states
    writes = dict(zip(capture.names, capture.writes[:, 0], strict=False))
    torch.testing.assert_close(writes["embed"], hidden[0][0], atol=1e-6, rtol=0)
    n_layers = loaded.model.config.num_hidden_layers
    for layer in range(n_layers - 1):  # the last hidden state is after the final norm
        delta = hidden[layer + 1][0] - hidden[layer][0]
        torch.testing.assert_close(
            writes[f"L{layer}.attn"] + writes[f"L{layer}.mlp"], delta, atol=1e-5, rtol=0
        )


def test_output_biases_are_their_own_terms(tiny_loaded):
    """o_proj / down_proj biases are constant components: u·(g ⊙ b)·s, split off their layer's write."""
    loaded = tiny_loaded("llama-out-bias")
    model = loaded.model
    ids = torch.tensor(loaded.tokenizer(PROMPT)["input_ids"])
    d = decompose_logit(model, ids, target_id=1234)
    assert d.names[:5] == ("embed", "L0.attn", "L0.attn.bias", "L0.mlp", "L0.mlp.bias")
    u = model.lm_head.weight[1234].detach()
    g = model.model.norm.weight.detach()
    for layer in range(model.config.num_hidden_layers):
        for part, linear in (
            ("attn", model.model.layers[layer].self_attn.o_proj),
            ("mlp", model.model.layers[layer].mlp.down_proj),
        ):
            expected = float((u * g * linear.bias.detach()).sum() * d.scale)
            assert d.as_dict()[f"L{layer}.{part}.bias"] == pytest.approx(expected, abs=1e-6)
    assert_exact(d, float(independent_logits(model, ids.tolist())[-1, 1234]))


def test_head_bias_is_the_logit_bias_term(tiny_loaded):
    loaded = tiny_loaded("llama")
    model = loaded.model
    new_head = add_head_bias(model)
    ids = torch.tensor(loaded.tokenizer(PROMPT)["input_ids"])
    d = decompose_logit(model, ids, target_id=99)
    assert d.names[-1] == "logit_bias"
    assert d.as_dict()["logit_bias"] == pytest.approx(float(new_head.bias[99].detach()))
    assert_exact(d, float(independent_logits(model, ids.tolist())[-1, 99]))


def test_bfloat16_model_is_split_in_float32(tiny_loaded):
    loaded = tiny_loaded("qwen3-tied-gqa")
    model = loaded.model.to(torch.bfloat16)
    ids = torch.tensor(loaded.tokenizer(PROMPT)["input_ids"])
    d = decompose_logit(model, ids, target_id=500)
    assert d.contributions.dtype == torch.float32
    # bf16 rounds the model's own logit; the split of the captured stream is still close to it
    assert d.error < 0.05 * max(1.0, float(d.contributions.abs().max()))

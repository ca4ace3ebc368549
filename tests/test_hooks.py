"""Capture leaves no trace: hooks are removed after success and after an error, outputs are unchanged."""

from __future__ import annotations

import pytest
import torch
from conftest import count_hooks

from tokenlens.attribution.direct import attribute
from tokenlens.capture.residual import capture_residual, component_names


def test_hooks_removed_after_success_and_outputs_unchanged(tiny_loaded):
    loaded = tiny_loaded("qwen3-tied-gqa")
    ids = torch.tensor([loaded.tokenizer("Hello there, how are")["input_ids"]])
    with torch.no_grad():
        before = loaded.model(input_ids=ids).logits.clone()
    assert count_hooks(loaded.model) == 0
    attribute(loaded, "Hello there, how are")
    assert count_hooks(loaded.model) == 0
    with torch.no_grad():
        after = loaded.model(input_ids=ids).logits
    assert torch.equal(before, after)


def test_hooks_removed_after_an_error_in_the_block(tiny_loaded):
    loaded = tiny_loaded("llama")
    with pytest.raises(RuntimeError, match="boom"), capture_residual(loaded.model, loaded.spec):
        assert count_hooks(loaded.model) == 2 + 2 * loaded.model.config.num_hidden_layers
        raise RuntimeError("boom")
    assert count_hooks(loaded.model) == 0


def test_hooks_removed_after_the_forward_raises(tiny_loaded):
    loaded = tiny_loaded("qwen2-bias")
    bad_ids = torch.tensor([[10**7]])  # out of the embedding's range: the forward itself fails
    with pytest.raises(IndexError), capture_residual(loaded.model, loaded.spec), torch.no_grad():
        loaded.model(input_ids=bad_ids)
    assert count_hooks(loaded.model) == 0


def test_capture_can_keep_selected_positions_only(tiny_loaded):
    loaded = tiny_loaded("qwen3-moe")
    ids = torch.tensor([loaded.tokenizer("one two three four five six")["input_ids"]])
    with torch.no_grad(), capture_residual(loaded.model, loaded.spec, torch.tensor([1, 4])) as rec:
        loaded.model(input_ids=ids)
    capture = rec.result(component_names(loaded.spec, loaded.model))
    assert capture.writes.shape == (1 + 2 * 3, 1, 2, 32)
    assert capture.positions.tolist() == [1, 4]
    torch.testing.assert_close(capture.writes.sum(0), capture.final_input, atol=1e-5, rtol=0)

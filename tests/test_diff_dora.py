"""A DoRA adapter's weight change, read without merging, against PEFT's own merge."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_tiny

from tokenlens.diff.weights import _adapter_summary


def test_dora_weight_change_is_the_merged_change():
    import peft

    base = build_tiny("llama")
    config = peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=["q_proj"], use_dora=True, init_lora_weights=False
    )
    model = peft.get_peft_model(copy.deepcopy(base), config).eval()
    with torch.no_grad():  # DoRA's magnitude trained away from the weight norms it starts at
        for name, param in model.named_parameters():
            if "lora_magnitude_vector" in name:
                param.mul_(1.5)
    summary = _adapter_summary(model)
    merged = copy.deepcopy(model).merge_and_unload()
    for change in summary.changes:
        layer = int(change.name.split(".layers.")[1].split(".")[0])
        before = base.model.layers[layer].self_attn.q_proj.weight
        after = merged.model.layers[layer].self_attn.q_proj.weight
        assert change.kind == "effective"
        assert change.norm == pytest.approx(float((after - before).norm()), rel=1e-4)
    assert len(summary.changes) == 3

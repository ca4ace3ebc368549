"""Agreement with an independent implementation: TransformerLens 4.x's TransformerBridge on the same weights.

The bridge boots offline from a HF model object (it mutates what it is given, so it gets copies) and
computes its own residual decomposition (``decompose_resid``) and its own final-norm scaling
(``apply_ln_to_stack``). In its default mode ``W_U`` is the raw head weight and the final norm weight ``g``
is not folded in, so it is multiplied in here.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from tokenlens.attribution.direct import decompose, run_with_capture

bridge_module = pytest.importorskip("transformer_lens.model_bridge", reason="transformer-lens not installed")
os.environ.setdefault("WANDB_MODE", "disabled")

PROMPT = "The quick brown fox jumps over the lazy dog because"


def bridge_split(model, tokenizer, ids: torch.Tensor, position: int, target_id: int):
    """(names, stack (component, d), logit attribution (component,)) from the bridge alone."""
    bridge = bridge_module.TransformerBridge.boot_transformers(
        "tiny",
        hf_model=copy.deepcopy(model),
        tokenizer=copy.deepcopy(tokenizer),
        device="cpu",
        dtype=torch.float32,
    )
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids)
        stack, labels = cache.decompose_resid(layer=-1, pos_slice=position, return_labels=True)
        normed = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=position)[:, 0]  # (component, d) c / rms
        dla = (normed * bridge.ln_final.weight) @ bridge.W_U[:, target_id]
    names = ["embed" if lbl == "embed" else "L{}.{}".format(*lbl.split("_")[:2]) for lbl in labels]
    return names, stack[:, 0].float(), dla.float()


@pytest.mark.parametrize("kind", ["qwen3-tied-gqa", "qwen3-untied-mha", "qwen2-bias", "llama"])
def test_stack_and_attributions_match_transformer_lens(tiny_loaded, kind):
    loaded = tiny_loaded(kind)
    ids = torch.tensor([loaded.tokenizer(PROMPT)["input_ids"]])
    position, target_id = 5, 4242
    capture, logits = run_with_capture(loaded.model, loaded.spec, ids, torch.tensor([position]))
    ours = decompose(loaded.model, capture, logits, position=position, target_id=target_id)

    names, stack, dla = bridge_split(loaded.model, loaded.tokenizer, ids, position, target_id)
    assert tuple(names) == capture.names == ours.names
    torch.testing.assert_close(capture.writes[:, 0, 0].float(), stack, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.contributions, dla, atol=1e-4, rtol=0)

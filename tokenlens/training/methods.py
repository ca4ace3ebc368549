"""The post-training menu: one registry record per method.

A :class:`Method` says what it changes (``summary``), its default learning rate, the options it accepts
(with defaults), how to apply it (``apply(model, options) -> model``: every base weight frozen, only the
method's own parameters trainable) and how to save the result (``save(model, out_dir)``). PEFT-backed
methods return a ``peft.PeftModel`` and save an adapter folder that ``peft.PeftModel.from_pretrained`` and
``tokenlens.load`` read; ``head`` and ``full`` save a plain HF checkpoint folder; the custom methods
(``bias``, ``adapter``, ``rope``, :mod:`tokenlens.training.custom`) save their own parameters with a
``tokenlens-method.json`` that ``tokenlens.load`` reads back onto the base.

Default learning rates: see the README's table and ``benchmarks/lr_search.py`` for the measured search.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokenlens.errors import TokenlensError
from tokenlens.training import custom

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Method:
    """One way to post-train a model.

    Attributes:
        name: The ``--method`` name.
        summary: One line: what changes.
        lr: Default learning rate.
        options: Accepted option name -> (default, one-line help).
        apply: ``apply(model, options) -> model`` with only the method's parameters trainable.
        save: ``save(model, out_dir)`` writes the trained result.
        output: ``adapter`` (PEFT folder), ``checkpoint`` (HF folder) or ``custom`` (method folder).
        needs_quantized: The base must be loaded quantised (``qlora``).
    """

    name: str
    summary: str
    lr: float
    options: dict[str, tuple[Any, str]] = field(default_factory=dict)
    apply: Callable[[torch.nn.Module, dict], torch.nn.Module] | None = None
    save: Callable[[torch.nn.Module, Path], None] | None = None
    output: str = "adapter"
    needs_quantized: bool = False

    def resolve(self, options: dict[str, Any] | None) -> dict[str, Any]:
        """The method's options with defaults filled in; an option the method does not take is an error."""
        options = dict(options or {})
        for key in options:
            if key not in self.options:
                accepted = ", ".join(sorted(self.options)) or "none"
                raise TokenlensError(
                    f"option {key!r} does not apply to method {self.name!r} (it accepts: {accepted})"
                )
        return {key: options.get(key, default) for key, (default, _) in self.options.items()}


def _freeze(model: torch.nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)


def _peft(model: torch.nn.Module, config: Any) -> torch.nn.Module:
    import peft

    _freeze(model)
    return peft.get_peft_model(model, config)


def _int_list(value: Any, name: str) -> list[int] | None:
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise TokenlensError(f"option {name} must be integers, got {value!r}")
    return values


def _str_list(value: Any, name: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in values):
        raise TokenlensError(f"option {name} must be module names, got {value!r}")
    return values


def _apply_lora(model: torch.nn.Module, options: dict) -> torch.nn.Module:
    import peft

    layers = _int_list(options["layers"], "layers")
    n_layers = model.config.num_hidden_layers
    if layers is not None and any(not 0 <= i < n_layers for i in layers):
        raise TokenlensError(f"option layers={layers}: the model has layers 0..{n_layers - 1}")
    config = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=int(options["r"]),
        lora_alpha=int(options["alpha"]),
        lora_dropout=0.0,
        target_modules=_str_list(options["target_modules"], "target_modules"),
        layers_to_transform=layers,
    )
    try:
        return _peft(model, config)
    except ValueError as exc:
        raise TokenlensError(f"LoRA could not be applied: {str(exc).splitlines()[0]}") from exc


def _apply_head(model: torch.nn.Module, options: dict) -> torch.nn.Module:
    _freeze(model)
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head.weight is embed.weight
    if tied and not options["keep_tied"]:
        head.weight = torch.nn.Parameter(embed.weight.detach().clone())  # untie: only the head will change
        model.config.tie_word_embeddings = False
        if getattr(model.config, "get_text_config", None):
            model.config.get_text_config().tie_word_embeddings = False
    head.weight.requires_grad_(True)
    return model


def _apply_embeddings(model: torch.nn.Module, options: dict) -> torch.nn.Module:
    import peft

    token_ids = _int_list(options["token_ids"], "token_ids")
    if not token_ids:
        raise TokenlensError("method embeddings needs --option token_ids=ID,ID,... (the rows to train)")
    vocab = model.get_input_embeddings().weight.shape[0]
    if any(not 0 <= t < vocab for t in token_ids):
        raise TokenlensError(f"option token_ids: ids must be in 0..{vocab - 1}")
    return _peft(model, peft.TrainableTokensConfig(target_modules=["embed_tokens"], token_indices=token_ids))


def _apply_attention(model: torch.nn.Module, options: dict) -> torch.nn.Module:
    import peft

    kind = options["kind"]
    has_qk_norm = any(name.endswith("q_norm") for name, _ in model.named_modules())
    if kind == "auto":
        kind = "norm" if has_qk_norm else "ia3"  # Llama/Qwen2 have no q_norm/k_norm to scale
    if kind == "norm" and not has_qk_norm:
        raise TokenlensError(
            "option kind=norm needs q_norm/k_norm (Qwen3); this model has none: use kind=ia3"
        )
    if kind == "norm":
        return _peft(model, peft.LNTuningConfig(task_type="CAUSAL_LM", target_modules=["q_norm", "k_norm"]))
    if kind == "ia3":
        config = peft.IA3Config(
            task_type="CAUSAL_LM", target_modules=["k_proj", "v_proj"], feedforward_modules=[]
        )
        return _peft(model, config)
    raise TokenlensError(
        f"option kind={kind!r}: choose auto, norm (q_norm/k_norm scales) or ia3 (keys/values)"
    )


def _apply_prompt(model: torch.nn.Module, options: dict) -> torch.nn.Module:
    import peft

    n = int(options["virtual_tokens"])
    return _peft(model, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n))


def _apply_prefix(model: torch.nn.Module, options: dict) -> torch.nn.Module:
    import peft

    n = int(options["virtual_tokens"])
    return _peft(model, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n))


def _apply_full(model: torch.nn.Module, options: dict) -> torch.nn.Module:
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def _save_adapter(model: torch.nn.Module, out_dir: Path) -> None:
    import warnings

    with warnings.catch_warnings():  # PEFT looks the base's config up on the hub: a zoo name is not there
        warnings.filterwarnings("ignore", message="Unable to fetch remote file")
        warnings.filterwarnings("ignore", message="Could not find a config file")
        model.save_pretrained(str(out_dir))


def _save_checkpoint(model: torch.nn.Module, out_dir: Path) -> None:
    model.save_pretrained(str(out_dir))


LORA_OPTIONS = {
    "target_modules": (list(ALL_LINEAR), "modules to adapt (attention q/k/v/o, MLP gate/up/down)"),
    "layers": (None, "layer indices to adapt (default: all), e.g. 0,1"),
    "r": (8, "LoRA rank"),
    "alpha": (16, "LoRA alpha (scale = alpha / r)"),
}

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "lora",
            "low-rank adapters on chosen modules and layers",
            1e-3,
            LORA_OPTIONS,
            _apply_lora,
            _save_adapter,
        ),
        Method(
            "qlora",
            "LoRA on a 4-bit/8-bit bitsandbytes base (load with quantize)",
            1e-3,
            LORA_OPTIONS,
            _apply_lora,
            _save_adapter,
            needs_quantized=True,
        ),
        Method(
            "head",
            "the output head only (untied from the embedding unless keep_tied)",
            1e-2,
            {"keep_tied": (False, "train the shared head/embedding matrix instead of untying")},
            _apply_head,
            _save_checkpoint,
            output="checkpoint",
        ),
        Method(
            "embeddings",
            "chosen token-embedding rows only",
            1e-2,
            {"token_ids": (None, "token ids whose embedding rows train, e.g. 42,7042")},
            _apply_embeddings,
            _save_adapter,
        ),
        Method(
            "attention",
            "attention-score reweighting: q_norm/k_norm scales or (IA)3 on keys/values",
            1e-2,
            {
                "kind": (
                    "auto",
                    "norm (q_norm/k_norm, LN tuning), ia3 (k/v), auto: norm where the model has it",
                )
            },
            _apply_attention,
            _save_adapter,
        ),
        Method(
            "prompt",
            "prompt tuning: trainable virtual tokens before the input",
            1e-1,
            {"virtual_tokens": (8, "number of virtual tokens")},
            _apply_prompt,
            _save_adapter,
        ),
        Method(
            "prefix",
            "prefix tuning: trainable keys/values at every layer",
            1e-2,
            {"virtual_tokens": (8, "number of virtual tokens")},
            _apply_prefix,
            _save_adapter,
        ),
        Method("full", "all weights", 1e-4, {}, _apply_full, _save_checkpoint, output="checkpoint"),
        Method(
            "bias",
            "zero-initialised biases added to o_proj / down_proj (optionally a logit bias on lm_head)",
            1e-2,
            {
                "targets": (["o_proj", "down_proj"], "linears that get a bias: o_proj, down_proj, lm_head"),
                "layers": (None, "layer indices for o_proj/down_proj (default: all), e.g. 0,1"),
            },
            custom.apply_bias,
            custom.save,
            output="custom",
        ),
        Method(
            "adapter",
            "bottleneck adapters (down, SiLU, zero-initialised up, residual) on MLP outputs",
            1e-3,
            {
                "layers": (None, "layer indices to adapt (default: all), e.g. 0,1"),
                "size": (16, "bottleneck width"),
            },
            custom.apply_adapter,
            custom.save,
            output="custom",
        ),
        Method(
            "rope",
            "learnable rotary frequencies (every inverse frequency, or the RoPE base)",
            1e-2,
            {"kind": ("freqs", "freqs (every inverse frequency) or base (one scalar: log of the RoPE base)")},
            custom.apply_rope,
            custom.save,
            output="custom",
        ),
    )
}


def get_method(name: str) -> Method:
    """The registry record for ``name``.

    Raises:
        TokenlensError: Unknown name (with the closest known names).
    """
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(name, list(METHODS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise TokenlensError(f"unknown method {name!r}{hint} (methods: {', '.join(METHODS)})")


def trainable_count(model: torch.nn.Module) -> int:
    """Parameters with ``requires_grad`` (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for param in model.parameters():
        if param.requires_grad:
            seen[id(param)] = param.numel()
    return sum(seen.values())

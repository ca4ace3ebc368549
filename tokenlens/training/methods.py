"""The post-training menu: one registry record per method.

A :class:`Method` says what it changes (``summary``), its default learning rate, the options it accepts
(each an :class:`Option` with a default and a validator), how to apply it (``apply(model, options) ->
model``: every base weight frozen, only the method's own parameters trainable) and how to save the result
(``save(model, out_dir)``). PEFT-backed methods return a ``peft.PeftModel`` and save an adapter folder that
``peft.PeftModel.from_pretrained`` and ``tokenlens.load`` read; ``head`` and ``full`` save a plain HF
checkpoint folder; the custom methods (``bias``, ``adapter``, ``rope``, :mod:`tokenlens.models.custom`)
save their own parameters with a ``tokenlens-method.json`` that ``tokenlens.load`` reads back onto the base.

Options are checked in one place, :meth:`Method.resolve`, before any model loads: each option's validator
accepts only its declared type (an integer that is not a boolean, a real JSON ``true``/``false``, a list of
integers, a string from a set of choices …) and returns the value in one canonical form (a single layer
index becomes a one-element list), so what trains is exactly what the manifest records. What needs the
model (a layer index beyond its layers, a token id beyond its vocabulary) is checked by ``apply``.

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
from tokenlens.models import custom
from tokenlens.models.specs import spec_for_model
from tokenlens.options import (
    Option,
    boolean,
    choice,
    layer_list,
    name_list,
    positive_int,
    probability,
    resolve,
    token_list,
)
from tokenlens.training import rank_one

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Method:
    """One way to post-train a model.

    Attributes:
        name: The ``--method`` name.
        summary: One line: what changes.
        lr: Default learning rate.
        options: Accepted option name -> :class:`Option` (default, help, validator).
        apply: ``apply(model, options) -> model`` with only the method's parameters trainable; ``options``
            as :meth:`resolve` returns them.
        save: ``save(model, out_dir)`` writes the trained result.
        output: ``adapter`` (PEFT folder), ``checkpoint`` (HF folder) or ``custom`` (method folder).
        needs_quantized: The base must be loaded quantised (``qlora``).
        fit: A closed-form method's solver, run *instead of* ``apply`` and the gradient loop:
            ``fit(loaded, data, options, steps=, lr=, seed=, preserve=) -> (model, losses, notes,
            options)`` with ``data`` the :class:`~tokenlens.training.data.TrainingData`, ``preserve`` a
            :class:`~tokenlens.training.preserve.PreserveSet` or ``None``; it returns the model to save,
            one loss per solver step, a dict the manifest keeps under the method's name and the options
            with what it resolved (``layer=auto`` → the located layer).
        steps: The default step count when neither steps nor epochs are given (``None``: 3 epochs).
    """

    name: str
    summary: str
    lr: float
    options: dict[str, Option] = field(default_factory=dict)
    apply: Callable[[torch.nn.Module, dict], torch.nn.Module] | None = None
    save: Callable[[torch.nn.Module, Path], None] | None = None
    output: str = "adapter"
    needs_quantized: bool = False
    fit: Callable[..., tuple[torch.nn.Module, list[float], dict, dict]] | None = None
    steps: int | None = None

    def resolve(self, options: dict[str, Any] | None) -> dict[str, Any]:
        """The method's options, each validated and in canonical form, with defaults filled in.

        Raises:
            TokenlensError: An option the method does not take, a value of the wrong type or range, or a
                required option that is missing.
        """
        return resolve(self.name, self.options, options)


def _freeze(model: torch.nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)


def _peft(model: torch.nn.Module, config: Any) -> torch.nn.Module:
    import peft

    _freeze(model)
    return peft.get_peft_model(model, config)


def _apply_lora(model: torch.nn.Module, options: dict) -> torch.nn.Module:
    import peft

    layers = options["layers"]
    config = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=options["r"],
        lora_alpha=options["alpha"],
        lora_dropout=options["dropout"],
        use_rslora=options["rslora"],
        use_dora=options["dora"],
        target_modules=options["target_modules"],
        layers_to_transform=None if layers is None else custom.layer_indices(model, layers),
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

    token_ids = options["token_ids"]
    vocab = model.get_input_embeddings().weight.shape[0]
    if any(t >= vocab for t in token_ids):
        raise TokenlensError(f"option token_ids: ids must be in 0..{vocab - 1}")
    return _peft(model, peft.TrainableTokensConfig(target_modules=["embed_tokens"], token_indices=token_ids))


def _apply_attention(model: torch.nn.Module, options: dict) -> torch.nn.Module:
    import peft

    kind = options["kind"]
    spec = spec_for_model(model)
    if kind == "auto":
        kind = "norm" if spec.qk_norm else "ia3"  # Llama/Qwen2 have no q_norm/k_norm to scale
    if kind == "norm" and not spec.qk_norm:
        raise TokenlensError(
            "option kind=norm needs q_norm/k_norm (Qwen3); this model has none: use kind=ia3"
        )
    if kind == "norm":
        norms = [path.rpartition(".")[2] for path in (spec.q_norm, spec.k_norm)]  # module names for PEFT
        return _peft(model, peft.LNTuningConfig(task_type="CAUSAL_LM", target_modules=norms))
    ia3 = ["k_proj", "v_proj"]
    config = peft.IA3Config(task_type="CAUSAL_LM", target_modules=ia3, feedforward_modules=[])
    return _peft(model, config)


def _apply_prompt(model: torch.nn.Module, options: dict) -> torch.nn.Module:
    import peft

    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=options["virtual_tokens"])
    return _peft(model, config)


def _apply_prefix(model: torch.nn.Module, options: dict) -> torch.nn.Module:
    import peft

    config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=options["virtual_tokens"])
    return _peft(model, config)


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
    "target_modules": Option(
        list(ALL_LINEAR), "modules to adapt (attention q/k/v/o, MLP gate/up/down)", name_list
    ),
    "layers": Option(None, "layer indices to adapt (default: all), e.g. 0,1", layer_list),
    "r": Option(8, "LoRA rank", positive_int),
    "alpha": Option(16, "LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with rslora)", positive_int),
    "dropout": Option(0.0, "dropout on the LoRA input while training (PEFT's lora_dropout)", probability),
    "rslora": Option(False, "rank-stabilised LoRA: scale alpha / sqrt(r) (PEFT's use_rslora)", boolean),
    "dora": Option(
        False, "DoRA: a trained magnitude per output, direction by LoRA (PEFT's use_dora)", boolean
    ),
}
VIRTUAL_TOKENS = {"virtual_tokens": Option(8, "number of virtual tokens", positive_int)}


def _custom(name: str, summary: str, lr: float) -> Method:
    """A model structure of :data:`tokenlens.models.custom.CUSTOM` as a method: its options and how to apply
    it come from the structure, and it is saved as a method folder."""
    structure = custom.CUSTOM[name]
    return Method(name, summary, lr, structure.options, structure.apply, custom.save, output="custom")


METHODS: dict[str, Method] = {}
"""The registry: every method by name, in menu order (:func:`register_method` adds one)."""


def register_method(method: Method) -> Method:
    """Add ``method`` to the menu (``tokenlens train --method NAME``, the sweep, ``--list-methods``).

    Raises:
        ValueError: A method of that name is registered already.
    """
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is registered already")
    METHODS[method.name] = method
    return method


for _method in (
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
        {"keep_tied": Option(False, "train the shared head/embedding matrix instead of untying", boolean)},
        _apply_head,
        _save_checkpoint,
        output="checkpoint",
    ),
    Method(
        "embeddings",
        "chosen token-embedding rows only",
        1e-2,
        {
            "token_ids": Option(
                None, "token ids whose embedding rows train, e.g. 42,7042", token_list, required=True
            )
        },
        _apply_embeddings,
        _save_adapter,
    ),
    Method(
        "attention",
        "attention-score reweighting: q_norm/k_norm scales or (IA)3 on keys/values",
        1e-2,
        {
            "kind": Option(
                "auto",
                "norm (q_norm/k_norm, LN tuning), ia3 (k/v), auto: norm where the model has it",
                choice("auto", "norm", "ia3"),
            )
        },
        _apply_attention,
        _save_adapter,
    ),
    Method(
        "prompt",
        "prompt tuning: trainable virtual tokens before the input",
        1e-1,
        VIRTUAL_TOKENS,
        _apply_prompt,
        _save_adapter,
    ),
    Method(
        "prefix",
        "prefix tuning: trainable keys/values at every layer",
        1e-2,
        VIRTUAL_TOKENS,
        _apply_prefix,
        _save_adapter,
    ),
    Method("full", "all weights", 1e-4, {}, _apply_full, _save_checkpoint, output="checkpoint"),
    _custom(
        "bias",
        "zero-initialised biases added to o_proj / down_proj (optionally a logit bias on lm_head)",
        1e-2,
    ),
    _custom(
        "adapter",
        "bottleneck adapters (down, SiLU, zero-initialised up, residual) on MLP outputs",
        1e-3,
    ),
    _custom(
        "rope",
        "learnable rotary frequencies (every inverse frequency, or the RoPE base)",
        1e-2,
    ),
    Method(
        "rank-one",
        "ROME-style closed-form key -> value insertion into one MLP down_proj (a rank-1 LoRA)",
        rank_one.LR,
        rank_one.OPTIONS,
        rank_one.apply_rank_one,
        _save_adapter,
        fit=rank_one.fit,
        steps=rank_one.STEPS,
    ),
):
    register_method(_method)


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

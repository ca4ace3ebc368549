"""Pairing a base model with its fine-tune, holding as few copies in memory as possible.

Three shapes of pair:

* **an adapter folder** (PEFT): one model in memory; the base is the same model with the adapter switched off
  (``disable_adapter()``; for prompt/prefix tuning, the bare model without its virtual tokens). The base is
  the adapter's own ``base_model_name_or_path`` unless ``base`` overrides it.
* **a trainer output folder** (``tokenlens-manifest.json``) holding a full checkpoint: the base is the one its
  manifest names, unless ``base`` overrides it.
* **any two references**: two models.

A pair is refused when the two tokenizers map text to different ids or when the architectures they share
differ (family, layers, widths, heads, vocabulary rows). What a fine-tune adds (adapter modules, biases)
is not a mismatch.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from tokenlens.errors import TokenlensError, option
from tokenlens.files import MANIFEST
from tokenlens.models.loading import LoadedModel, load
from tokenlens.models.specs import ArchitectureSpec, bare_model, virtual_keys, virtual_tokens

SHAPE_FIELDS = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "num_experts",
)


@dataclass(frozen=True)
class ModelPair:
    """A base model and its fine-tune.

    Attributes:
        base: The base model (the same object as ``tuned`` when the pair is an adapter toggled on and off).
        tuned: The fine-tuned model.
        toggled: One PEFT model in memory; its base is the adapter switched off.
    """

    base: LoadedModel
    tuned: LoadedModel
    toggled: bool

    @property
    def tokenizer(self) -> Any:
        """The shared tokenizer."""
        return self.tuned.tokenizer

    @property
    def spec(self) -> ArchitectureSpec:
        """The shared architecture spec."""
        return self.tuned.spec

    @property
    def base_ref(self) -> str:
        """The base model's reference."""
        if self.toggled:
            return self.tuned.base_ref or self.base.ref
        return self.base.ref

    @property
    def description(self) -> str:
        """How the pair is held, for reports."""
        return "adapter toggled (one model in memory)" if self.toggled else "two models"

    @property
    def virtual_tokens(self) -> int:
        """Virtual positions the tuned model prepends (prompt tuning), else 0."""
        return virtual_tokens(self.tuned.model)

    @property
    def prompt_learning(self) -> bool:
        """The tuned model is a prompt or prefix tuning adapter (virtual tokens or virtual keys/values)."""
        return self.virtual_tokens > 0 or virtual_keys(self.tuned.model)

    @contextmanager
    def side(self, which: str) -> Iterator[nn.Module]:
        """The model of one side (``"base"`` or ``"tuned"``), ready to run inside the block."""
        if which == "tuned":
            yield self.tuned.model
        elif which != "base":
            raise ValueError(f"side must be base or tuned, got {which!r}")
        elif not self.toggled:
            yield self.base.model
        elif self.prompt_learning:
            yield bare_model(self.tuned.model)  # the same weights without the virtual tokens
        else:
            with adapters_off(self.tuned.model):
                yield self.tuned.model


_ADAPTER_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """PEFT's ``disable_adapter()`` for adapters that live in layers (LoRA, DoRA, …), without its cost.

    PEFT walks every module twice and builds a status report on each entry (about 0.1 s on SmolLM2-135M;
    a diff toggles hundreds of times). The adapter layers are found once per model and switched with their
    own ``enable_adapters`` — a LoRA layer (LoRA, DoRA) by its ``disable_adapters`` flag alone, which is all
    its forward reads (``enable_adapters`` also resets ``requires_grad`` on every adapter weight, which no
    forward pass depends on); layers that were off stay off. Prompt learning uses PEFT's context.
    """
    config = model.peft_config[model.active_adapter]
    if config.is_prompt_learning or getattr(config, "is_adaption_prompt", False):
        with model.disable_adapter():
            yield
        return
    layers = _ADAPTER_LAYERS.get(model)
    if layers is None:
        from peft.tuners.lora.layer import LoraLayer
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        kinds = (BaseTunerLayer, AuxiliaryTrainingWrapper)
        found = [m for m in model.modules() if isinstance(m, kinds)]
        layers = _ADAPTER_LAYERS[model] = (
            [m for m in found if isinstance(m, LoraLayer)],
            [m for m in found if not isinstance(m, LoraLayer)],
        )
    lora = [m for m in layers[0] if not m._disable_adapters]
    other = [m for m in layers[1] if not m._disable_adapters]
    was_disabled = model._adapters_disabled

    def switch(enabled: bool) -> None:
        for module in lora:  # the plain attribute, without nn.Module.__setattr__'s bookkeeping
            object.__setattr__(module, "_disable_adapters", not enabled)
        for module in other:
            module.enable_adapters(enabled)

    try:
        switch(False)
        model._adapters_disabled = True
        yield
    finally:
        switch(True)
        model._adapters_disabled = was_disabled


def pair_models(
    tuned: str,
    base: str | None = None,
    *,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> ModelPair:
    """Load a base and a tuned model as a :class:`ModelPair` (see the module docstring for the rules).

    Args:
        tuned: The fine-tune: an adapter folder, a trainer output folder, or any model reference.
        base: The base model reference; required unless ``tuned`` names its base.
        dtype, device, trust_remote_code, allow_pickle: As for :func:`tokenlens.load`.

    Raises:
        TokenlensError: No base can be found, the adapter does not fit the base, or the tokenizers or the
            shared architecture differ.
    """
    options = {
        "dtype": dtype,
        "device": device,
        "trust_remote_code": trust_remote_code,
        "allow_pickle": allow_pickle,
    }
    tuned_loaded = load(tuned, base=base, **options)
    if tuned_loaded.source == "peft":
        return ModelPair(base=tuned_loaded, tuned=tuned_loaded, toggled=True)
    base = base or tuned_loaded.base_ref or _manifest_base(tuned_loaded.path)
    if base is None:
        raise TokenlensError(f"{tuned} does not name its base model: pass {option('base', 'REF')}")
    base_loaded = load(base, **options)
    check_compatible(base_loaded, tuned_loaded)
    return ModelPair(base=base_loaded, tuned=tuned_loaded, toggled=False)


def _manifest_base(path: Path | None) -> str | None:
    """The ``base_model`` a trainer output folder's manifest names, if it has one."""
    if path is None or not (Path(path) / MANIFEST).is_file():
        return None
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise TokenlensError(f"{path}/{MANIFEST} is not valid JSON: {exc}") from exc
    base = manifest.get("base_model") if isinstance(manifest, dict) else None
    return base if isinstance(base, str) and base else None


def check_compatible(base: LoadedModel, tuned: LoadedModel) -> None:
    """Refuse a pair whose tokenizers or shared architecture differ.

    Raises:
        TokenlensError: Different token ids, family, layer count, widths, head counts or vocabulary rows.
    """
    if base.tokenizer is not tuned.tokenizer and base.tokenizer.get_vocab() != tuned.tokenizer.get_vocab():
        raise TokenlensError(
            f"{base.ref} and {tuned.ref} have different tokenizers: their token ids do not match"
        )
    if base.spec.family != tuned.spec.family:
        raise TokenlensError(
            f"{base.ref} is a {base.spec.family} model and {tuned.ref} a {tuned.spec.family} model"
        )
    a, b = bare_model(base.model), bare_model(tuned.model)
    for field in SHAPE_FIELDS:
        va, vb = getattr(a.config, field, None), getattr(b.config, field, None)
        if va != vb:
            raise TokenlensError(f"{base.ref} and {tuned.ref} differ in {field}: {va} vs {vb}")
    rows_a, rows_b = a.get_output_embeddings().weight.shape[0], b.get_output_embeddings().weight.shape[0]
    if rows_a != rows_b:
        raise TokenlensError(f"{base.ref} and {tuned.ref} have {rows_a} and {rows_b} vocabulary rows")

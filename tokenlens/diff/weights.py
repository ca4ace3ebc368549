"""Weight-level summary: which parameters a fine-tune changed, and by how much.

For two models every parameter is compared by name (PEFT-style ``base_layer`` segments dropped) and the
relative Frobenius norm ``‖W_T − W_B‖ / ‖W_B‖`` reported; tensors only the tuned model has (an added bias, an
adapter's matrices) are ``added``. For an adapter held toggled the base weights are untouched by
construction, so the summary reads the adapter instead: a LoRA layer's effective update ``ΔW = s·B·A``
(``get_delta_weight``), any other PEFT-wrapped module's effective change — a DoRA layer's too, whose
magnitude vector rescales every output column besides ``B·A`` — measured through the module with the
adapter on and off, and prompt/prefix tuning's virtual-token parameters as ``added``.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from tokenlens.diff.pairing import ModelPair
from tokenlens.diff.result import WeightChange, WeightSummary
from tokenlens.models.specs import bare_model

_LAYER = re.compile(r"layers\.(\d+)\.")


def _layer(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def _clean(name: str) -> str:
    """A parameter name without PEFT wrapper segments (``base_layer``, ``base_model.model``)."""
    name = name.replace(".base_layer", "")
    return name.removeprefix("base_model.model.")


def weight_summary(pair: ModelPair) -> WeightSummary:
    """Which parameters differ between the pair's base and tuned model (see the module docstring)."""
    if pair.toggled:
        return _adapter_summary(pair.tuned.model)
    return _compare(bare_model(pair.base.model), bare_model(pair.tuned.model))


def _sorted(changes: list[WeightChange]) -> tuple[WeightChange, ...]:
    return tuple(
        sorted(changes, key=lambda c: (-(c.relative if c.relative is not None else float("inf")), c.name))
    )


@torch.no_grad()
def _compare(base: nn.Module, tuned: nn.Module) -> WeightSummary:
    base_params = {_clean(n): p for n, p in base.named_parameters(remove_duplicate=False)}
    changes, unchanged, seen = [], 0, set()
    for raw, param in tuned.named_parameters(remove_duplicate=False):
        name = _clean(raw)
        if name in seen:
            continue
        seen.add(name)
        original = base_params.get(name)
        if original is None or original.shape != param.shape:
            changes.append(
                WeightChange(name, "added", _layer(name), float(param.float().norm()), None, param.numel())
            )
            continue
        if torch.equal(original, param.to(original.device, original.dtype)):
            unchanged += 1
            continue
        delta = (param.float().to(original.device) - original.float()).norm()
        reference = original.float().norm()
        relative = float(delta / reference) if reference > 0 else None
        changes.append(WeightChange(name, "changed", _layer(name), float(delta), relative, param.numel()))
    return WeightSummary(_sorted(changes), unchanged, "two models compared parameter by parameter")


@torch.no_grad()
def _adapter_summary(model: nn.Module) -> WeightSummary:
    changes = []
    config = getattr(model, "active_peft_config", None)
    if getattr(config, "is_prompt_learning", False):
        for name, param in model.named_parameters():
            if "prompt_encoder" in name:
                changes.append(
                    WeightChange(name, "added", None, float(param.float().norm()), None, param.numel())
                )
        note = f"{config.peft_type.value} adds virtual tokens; no base weight changes"
        return WeightSummary(_sorted(changes), sum(1 for _ in bare_model(model).parameters()), note)
    for name, module in model.named_modules():
        base_layer = getattr(module, "get_base_layer", None)
        if not callable(base_layer) or not hasattr(module, "active_adapters"):
            continue
        base = module.get_base_layer()
        weight = getattr(base, "weight", None)
        if weight is None:
            continue
        clean = _clean(name) + ".weight"
        dora = any(getattr(module, "use_dora", {}).get(a, False) for a in module.active_adapters)
        if hasattr(module, "get_delta_weight") and hasattr(module, "lora_A") and not dora:
            delta = sum(
                module.get_delta_weight(a).float() for a in module.active_adapters if a in module.lora_A
            )
            kind = "lora"
        else:
            delta = _effective_delta(model, module, base)
            kind = "effective"
        if not isinstance(delta, torch.Tensor):
            continue
        reference = weight.float().norm()
        norm = float(delta.norm())
        changes.append(
            WeightChange(
                clean,
                kind,
                _layer(clean),
                norm,
                norm / float(reference) if reference > 0 else None,
                weight.numel(),
            )
        )
    total = sum(1 for _ in bare_model(model).parameters())
    note = "adapter read without merging (base weights untouched)"
    return WeightSummary(_sorted([c for c in changes if c.norm > 0]), total - len(changes), note)


def _effective_delta(model: nn.Module, module: nn.Module, base: nn.Module) -> torch.Tensor | None:
    """The wrapped module's effective weight change: its output on probe inputs, adapter on minus off."""
    weight = base.weight
    if isinstance(base, nn.Linear):
        probe = torch.eye(base.in_features, device=weight.device, dtype=weight.dtype)
    elif isinstance(base, nn.Embedding):  # trainable tokens touch a few rows: probe those
        rows = sorted({i for ids in getattr(module, "token_indices", {}).values() for i in ids})
        probe = torch.tensor(rows or range(base.num_embeddings), device=weight.device)
    elif weight.ndim == 1:  # a norm: its weight is its output on a constant vector, up to a constant factor
        probe = torch.ones(1, weight.shape[0], device=weight.device, dtype=weight.dtype)
    else:
        return None
    on = module(probe).float()
    with model.disable_adapter():
        off = module(probe).float()
    delta = on - off
    if weight.ndim == 1:  # rescale the norm's output back to weight units
        delta = delta * (float(off.norm()) and float(weight.float().norm()) / float(off.norm()))
    return delta

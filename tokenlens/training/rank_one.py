"""Rank-one edits (ROME-style): write one key → value pair into one MLP's down-projection, in closed form.

An MLP's down-projection ``W`` (``down_proj``) reads a key ``k = silu(gate(x)) · up(x)`` and writes
``W k`` into the residual stream. A fact such as "The capital of France is → Paris" is recalled, causal
tracing says, by the MLPs of a few middle layers at the subject's last token (" France"). The edit:

1. **key** ``k*``: the ``down_proj`` input at that position, in the located layer (the ``layer`` option,
   default: located by a causal trace of the model's current answer);
2. **value** ``v*``: the ``down_proj`` output that makes the new target likely: ``v* = W k* + δ`` where
   ``δ`` is optimised with Adam (``steps`` steps, learning rate ``lr``) to maximise log p(target) —
   teacher-forced over every target token — plus ``KL_WEIGHT`` · KL(base ‖ edited) of the next-token
   distribution at the subject's position (the subject's own continuation should not move) and a weight
   decay ``DECAY · ‖δ‖² / ‖W k*‖²``; ``‖δ‖`` is clamped to ``CLAMP · ‖W k*‖`` (ROME's recipe);
3. **key statistics** ``C = E[k kᵀ]`` over every token of the preserve text (the same activation), plus a
   ridge of ``ridge`` times its mean diagonal;
4. **the update** ``W ← W + (v* − W k*) (C⁻¹ k*)ᵀ / (k*ᵀ C⁻¹ k*)``: the key maps exactly to the new value
   (``W' k* = v*``), and any key ``k`` with ``kᵀ C⁻¹ k* = 0`` is untouched.

The update is a rank-1 matrix ``b aᵀ``, so it is saved as what it is: a PEFT LoRA adapter of rank 1
(``lora_B = b = (v* − W k*) / (k*ᵀ C⁻¹ k*)``, ``lora_A = aᵀ = (C⁻¹ k*)ᵀ``, scale ``alpha / r = 1``) on that
one ``down_proj``. ``tokenlens.load``, ``tokenlens diff`` and ``check`` read it as any adapter (the base is
the adapter switched off). The training file's first prompt/completion example is the fact; nothing else
in it is used. Not done (ROME does it): averaging the key over random prefixes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tokenlens.attribution.inputs import decode_token
from tokenlens.causal.locate import locate_ids
from tokenlens.causal.results import Metric
from tokenlens.causal.tracing import find_subject
from tokenlens.errors import TokenlensError
from tokenlens.models.specs import bare_model, spec_for_model
from tokenlens.options import AUTO, Option, _bad, is_integer
from tokenlens.training.data import IGNORE, TrainingData
from tokenlens.training.preserve import DEFAULT, PreserveSet, load_preserve, pad

LR = 0.5
"""Adam's learning rate for ``δ`` (ROME's)."""
STEPS = 20
"""Adam steps for ``δ`` (ROME's)."""
KL_WEIGHT = 0.0625
DECAY = 0.5
CLAMP = 4.0
RIDGE = 0.01


def _layer(name: str, value: Any) -> int | str:
    if value == AUTO or (is_integer(value) and value >= 0):
        return value
    raise _bad(name, value, "must be a layer index (an integer from 0) or auto")


def _text(name: str, value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value.strip()):
        return value
    raise _bad(name, value, "must be words of the prompt, e.g. France")


def _position(name: str, value: Any) -> int | None:
    if value is None or (is_integer(value) and value >= 0):
        return value
    raise _bad(name, value, "must be a prompt position (an integer from 0)")


def _ridge(name: str, value: Any) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and math.isfinite(value) and value > 0:
        return float(value)
    raise _bad(name, value, "must be a number above 0, e.g. 0.01")


OPTIONS = {
    "layer": Option(
        AUTO, "the layer whose MLP down_proj is edited (auto: located by a causal trace)", _layer
    ),
    "subject": Option(None, "the subject's words in the prompt; its last token holds the key", _text),
    "position": Option(
        None, "or the key's prompt position (default: the subject's last / located)", _position
    ),
    "ridge": Option(RIDGE, "ridge on the key covariance, a share of its mean diagonal", _ridge),
}


@dataclass(frozen=True)
class RankOneEdit:
    """One computed edit of ``layer``'s ``down_proj``.

    Attributes:
        layer: The edited layer.
        position: The prompt position of the key.
        key: ``(in,)`` ``k*``, the down_proj input there.
        value: ``(out,)`` ``v*``, the wanted down_proj output.
        base_value: ``(out,)`` ``W k*`` (+ the bias, if any): the output before the edit.
        direction: ``(in,)`` ``C⁻¹ k*``.
        losses: The value search's loss per Adam step.
        tokens: Preserve tokens the covariance was estimated from.
    """

    layer: int
    position: int
    key: torch.Tensor
    value: torch.Tensor
    base_value: torch.Tensor
    direction: torch.Tensor
    losses: tuple[float, ...]
    tokens: int

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(b (out, 1), aᵀ (1, in))`` with ``W + b aᵀ`` the edited weight (float64)."""
        scale = float(self.direction.double() @ self.key.double())
        b = (self.value.double() - self.base_value.double()) / scale
        return b[:, None], self.direction.double()[None, :]


def down_proj(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The live ``down_proj`` of ``layer`` (PEFT wrappers looked through)."""
    spec = spec_for_model(model)
    n_layers = len(spec.layer_list(model))
    if not 0 <= layer < n_layers:
        raise TokenlensError(f"option layer={layer}: the model has layers 0..{n_layers - 1}")
    try:
        module = spec.module(model, f"{spec.layers}.{layer}.{spec.mlp_out}")
    except AttributeError:
        module = None
    if module is None:
        raise TokenlensError("rank-one needs a dense MLP down_proj (a mixture-of-experts layer has none)")
    return module


class _Stop(Exception):
    """Raised by a hook once the activation it wanted is captured: the rest of the forward is not needed."""


def covariance(model, layer: int, preserve: PreserveSet, pad_id: int = 0) -> tuple[torch.Tensor, int]:
    """``(C (in, in) float64, tokens)``: the mean of ``k kᵀ`` over every preserve token's down_proj input.

    Each forward stops at the captured layer (the later layers and the head would change nothing).
    """
    module, total, count = down_proj(model, layer), None, 0
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []

    def capture(_m, args):
        captured.append(args[0].detach())
        raise _Stop

    handle = module.register_forward_pre_hook(capture)
    try:
        with torch.no_grad():
            for start in range(0, len(preserve.ids), 16):
                rows = list(preserve.ids[start : start + 16])
                ids, mask = pad(rows, pad_id, device)
                captured.clear()
                with contextlib.suppress(_Stop):
                    model(input_ids=ids, attention_mask=mask, use_cache=False)
                keys = captured[0][mask.bool()].double()  # (tokens, in)
                part = keys.T @ keys
                total = part if total is None else total + part
                count += keys.shape[0]
    finally:
        handle.remove()
    return total / count, count


def compute_edit(
    model,
    ids: list[int],
    n_prompt: int,
    position: int,
    layer: int,
    preserve: PreserveSet,
    *,
    steps: int = STEPS,
    lr: float = LR,
    ridge: float = RIDGE,
    pad_id: int = 0,
) -> RankOneEdit:
    """The edit that makes ``ids[n_prompt:]`` follow ``ids[:n_prompt]`` (see the module docstring).

    ``model`` is the base (unchanged on return); ``ids`` the prompt followed by the whole target.
    """
    module = down_proj(model, layer)
    device = next(model.parameters()).device
    inputs = torch.tensor([ids[:-1]], device=device)  # teacher-forced: every target token is predicted
    targets = torch.tensor(ids[n_prompt:], device=device)
    reads = torch.arange(n_prompt - 1, len(ids) - 1, device=device)
    seen: dict[str, torch.Tensor] = {}

    def record(_m, args, output):
        seen["key"], seen["value"] = args[0][0, position].detach(), output[0, position].detach()

    handle = module.register_forward_hook(record)
    try:
        with torch.no_grad():
            base_logp = F.log_softmax(model(input_ids=inputs).logits[0].float(), dim=-1)
    finally:
        handle.remove()
    key, base_value = seen["key"], seen["value"]
    delta = torch.zeros_like(base_value, dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=lr)
    size = float(base_value.float().norm())
    keep_kl = position < n_prompt - 1  # at the prediction itself the KL would fight the target

    def add(_m, _args, output):
        output = output.clone()
        output[0, position] = output[0, position] + delta.to(output.dtype)
        return output

    losses = []
    frozen = [p for p in model.parameters() if p.requires_grad]  # only δ needs a gradient
    for param in frozen:
        param.requires_grad_(False)
    handle = module.register_forward_hook(add)
    try:
        for _ in range(steps):
            logp = F.log_softmax(model(input_ids=inputs).logits[0].float(), dim=-1)
            loss = -logp[reads, targets].mean() + DECAY * delta.pow(2).sum() / size**2
            if keep_kl:
                p = base_logp[position]
                loss = loss + KL_WEIGHT * (p.exp() * (p - logp[position])).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                if float(delta.norm()) > CLAMP * size:
                    delta.mul_(CLAMP * size / float(delta.norm()))
            losses.append(float(loss.detach()))
    finally:
        handle.remove()
        for param in frozen:
            param.requires_grad_(True)
    c, tokens = covariance(model, layer, preserve, pad_id)
    c = c + ridge * float(c.diagonal().mean()) * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    direction = torch.linalg.solve(c, key.double())
    value = base_value.double() + delta.detach().double()
    return RankOneEdit(layer, position, key, value, base_value, direction, tuple(losses), tokens)


def apply_rank_one(model: torch.nn.Module, options: dict) -> torch.nn.Module:
    """A rank-1 LoRA (``alpha = r = 1``, no dropout) on the chosen layer's ``down_proj``, adding zero."""
    import peft

    layer = options["layer"]
    if layer == AUTO:
        raise TokenlensError("rank-one with layer=auto is located by the trainer: give a layer index")
    down_proj(model, layer)
    name = spec_for_model(model).mlp_out.rpartition(".")[2]
    config = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=1,
        lora_alpha=1,
        lora_dropout=0.0,
        target_modules=[name],
        layers_to_transform=[layer],
    )
    for param in model.parameters():
        param.requires_grad_(False)
    return peft.get_peft_model(model, config)


def write_edit(peft_model: torch.nn.Module, edit: RankOneEdit) -> None:
    """Put ``edit``'s factors into the rank-1 LoRA of :func:`apply_rank_one`."""
    lora = down_proj(peft_model, edit.layer)
    b, a = edit.factors()
    with torch.no_grad():
        lora.lora_B["default"].weight.copy_(b.to(lora.lora_B["default"].weight))
        lora.lora_A["default"].weight.copy_(a.to(lora.lora_A["default"].weight))


def _fact(data: TrainingData) -> tuple[list[int], int, int, tuple[int, ...]]:
    """``(ids, n_prompt, line, subject positions)``: the first example with a completion after at least one
    prompt token."""
    for example in data.examples:
        first = next((k for k, label in enumerate(example.labels) if label != IGNORE), None)
        if first is not None and first >= 1:
            last = max(k for k, label in enumerate(example.labels) if label != IGNORE)
            return list(example.input_ids[: last + 1]), first, example.line, example.subject
    raise TokenlensError(
        "rank-one edits the first example's fact, but no example has a prompt and completion"
    )


def fit(loaded, data: TrainingData, options: dict, *, steps: int, lr: float, seed: int, preserve=None):
    """The trainer's entry: locate (where not given), compute the edit, return the edited PEFT model.

    Returns ``(model, losses, notes)`` (see :class:`tokenlens.training.methods.Method`).
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    ids, n_prompt, line, subject = _fact(data)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    vocab = bare_model(model).get_input_embeddings().weight.shape[0]
    pad_id = pad_id if pad_id < vocab else 0
    if preserve is None:
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 10**9)
        preserve = load_preserve(DEFAULT, tokenizer, limit, vocab)
    prompt = ids[:n_prompt]
    position, layer = options["position"], options["layer"]
    noised = subject or None  # the data line's "subject", unless the option names one
    if options["subject"] is not None:
        noised = find_subject(tokenizer, prompt, options["subject"])
    if noised is not None and position is None:
        position = noised[-1]
    if position is not None and position >= n_prompt:
        raise TokenlensError(f"option position={position}: the prompt has positions 0..{n_prompt - 1}")
    located = None
    if layer == AUTO or position is None:
        with torch.no_grad():
            answer = int(model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax())
        metric = Metric("prob", answer, n_prompt - 1, target_text=decode_token(tokenizer, answer))
        tokens = [decode_token(tokenizer, i) for i in prompt]
        location = locate_ids(model, loaded.spec, torch.tensor([prompt]), metric, noised, tokens=tokens)
        layer = location.peak_layer if layer == AUTO else layer
        position = location.position if position is None else position
        located = {
            "sentence": location.sentence(),
            "position": location.position,
            "layers": list(location.layer_list),
            "peak_layer": location.peak_layer,
            "peak": location.peak,
            "weak": location.weak,
        }
    torch.manual_seed(seed)
    edit = compute_edit(
        model,
        ids,
        n_prompt,
        position,
        layer,
        preserve,
        steps=steps,
        lr=lr,
        ridge=options["ridge"],
        pad_id=pad_id,
    )
    resolved = {**options, "layer": layer, "position": position}
    edited = apply_rank_one(model, resolved)
    write_edit(edited, edit)
    notes = {
        "line": line,
        "layer": layer,
        "position": position,
        "key_token": decode_token(tokenizer, prompt[position]),
        "located": located,
        "preserve_tokens": edit.tokens,
        "key_norm": float(edit.key.norm()),
        "delta_norm": float((edit.value - edit.base_value.double()).norm()),
        "value_norm": float(edit.value.norm()),
        "update": "W' = W + (v* - W k*) (C^-1 k*)^T / (k*^T C^-1 k*)",
    }
    return edited, list(edit.losses), notes, resolved

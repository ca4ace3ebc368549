"""The readout: the linear map from the residual stream to the explained number, at one position.

With the final norm's scale ``s`` frozen at its value in the real forward pass, the logit of token ``t`` is
``u_t · (g ⊙ h) · s + b_t`` — linear in the stream ``h``. A logit difference ``t − c`` is linear too, with
``u_t − u_c``. Every split (layers, heads, sources, neurons, experts) applies this same map to its parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tokenlens.errors import TokenlensError
from tokenlens.models.specs import ArchitectureSpec


@dataclass(frozen=True)
class Readout:
    """``value(c) = direction · c · scale`` for any stream vector ``c`` at the position.

    Attributes:
        direction: ``(d_model,)`` float32 ``(u_target − u_contrast) ⊙ g`` (no contrast: ``u_target ⊙ g``).
        scale: The final norm's scale ``1/sqrt(mean(h_L²) + ε)`` at the position.
        bias: The head's bias for the target (minus the contrast's), or ``None`` when the head has none.
    """

    direction: torch.Tensor
    scale: float
    bias: float | None

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """``(..., d_model)`` → ``(...)`` float32 contributions."""
        return (vectors.to(self.direction.device, torch.float32) @ self.direction) * self.scale


def _unwrapped(module: nn.Module) -> nn.Module:
    get_base_layer = getattr(module, "get_base_layer", None)
    return get_base_layer() if callable(get_base_layer) else module


def final_norm_eps(model: nn.Module, spec: ArchitectureSpec) -> float:
    """The final RMSNorm's epsilon."""
    norm = spec.module(model, spec.final_norm)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if eps is None:
        raise ValueError(f"final norm {type(norm).__name__} exposes no epsilon")
    return float(eps)


def make_readout(
    model: nn.Module,
    spec: ArchitectureSpec,
    final_input: torch.Tensor,
    target_id: int,
    contrast_id: int | None = None,
    weights: torch.Tensor | None = None,
) -> Readout:
    """The readout at one position.

    Args:
        model: The model (bare or PEFT-wrapped). A plain linear head is read directly; a wrapped one (LoRA,
            ``modules_to_save``, quantised) through the module itself, so its update is included.
        spec: Its spec.
        final_input: ``(d_model,)`` the stream entering the final norm at the position.
        target_id: The explained token.
        contrast_id: Explain ``logit[target] − logit[contrast]`` instead of ``logit[target]``.
        weights: ``(vocab,)`` subtract the ``weights``-weighted mean row: with the model's probabilities
            this explains ``logit[target] − E_p[logit]`` (the log-probability's component part).
    """
    u, bias = head_row(model, spec, target_id, contrast_id, weights)
    g = norm_weight(model, spec)
    device = g.device
    h = final_input.to(device, torch.float32)
    scale = torch.rsqrt(h.pow(2).mean() + final_norm_eps(model, spec))
    return Readout(direction=(u * g).detach(), scale=float(scale), bias=bias)


def stream_logits(
    model: nn.Module, spec: ArchitectureSpec, final_input: torch.Tensor, chunk: int = 8192
) -> torch.Tensor:
    """The logits of every token read off the stream ``final_input`` ``(d_model,)`` in float32, ``(vocab,)``.

    The final norm and the head are applied in float32 to the stream the model had (``g ⊙ h·s``, then
    ``W_U ·`` that ``+ b``), a block of head rows at a time. A 16-bit model's own logits round the normalised
    stream and the logits themselves to 16 bits; these are what its components sum to exactly. A head that
    is not a plain linear (LoRA-wrapped, quantised) is run as a module in its own dtype.
    """
    g = norm_weight(model, spec)
    h = final_input.to(g.device, torch.float32)
    x = h * torch.rsqrt(h.pow(2).mean() + final_norm_eps(model, spec)) * g  # (d_model,)
    head = spec.module(model, spec.head)
    if type(head) is not nn.Linear:
        weight = next(head.parameters())
        dtype = weight.dtype if weight.is_floating_point() else x.dtype
        with torch.no_grad():
            return head(x.to(weight.device, dtype)[None])[0].to(torch.float32)
    weight = head.weight.detach()
    x = x.to(weight.device)
    logits = torch.cat([weight[i : i + chunk].to(torch.float32) @ x for i in range(0, len(weight), chunk)])
    if head.bias is not None:
        logits = logits + head.bias.detach().to(torch.float32)
    return logits


def head_row(
    model: nn.Module,
    spec: ArchitectureSpec,
    target_id: int,
    contrast_id: int | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float | None]:
    """The head's row for ``target_id`` (minus ``contrast_id``'s, minus the ``weights``-weighted mean row)
    and its bias, as the model applies them.

    A plain linear head is read directly; a wrapped one (LoRA, ``modules_to_save``, quantised) through the
    module itself, so its update is included.

    Returns:
        ``(d_model,)`` float32 row on the final norm's device, and the bias (``None`` when the head has none).
    """
    head = spec.module(model, spec.head)
    norm_param = next(spec.module(model, spec.final_norm).parameters())
    device, dtype = norm_param.device, norm_param.dtype
    out_features, in_features = _shape(head)
    pick = torch.zeros(out_features, device=device, dtype=torch.float64)
    pick[target_id] += 1.0
    if contrast_id is not None:
        pick[contrast_id] -= 1.0
    if weights is not None:
        pick -= weights.to(device, torch.float64)
    if type(head) is nn.Linear:  # a plain linear head: read its rows
        weight = head.weight.detach()
        if weights is None:
            u = weight[target_id].to(device, torch.float32)
            if contrast_id is not None:
                u = u - weight[contrast_id].to(device, torch.float32)
        else:
            u = _weighted_rows(pick, weight).to(torch.float32)
        bias = None if head.bias is None else float(pick @ head.bias.detach().to(device, torch.float64))
        return u.detach(), bias
    pick = pick.to(torch.float32)
    u = input_direction(head, pick, in_features, dtype)
    with torch.no_grad():
        offset = head(torch.zeros(1, in_features, device=next(head.parameters()).device, dtype=dtype))
    bias = float(offset[0].to(device, torch.float32) @ pick) if _has_bias(head) else None
    return u.detach(), bias


def _weighted_rows(pick: torch.Tensor, weight: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """``pick @ weight`` in float64, ``(vocab,) @ (vocab, d_model) -> (d_model,)``, a block of rows at a time.

    ``e_t − p`` over a whole vocabulary cancels almost all of ``u_t``: in float32 that one product leaves
    errors of ~1e-5 relative in every log-probability term, in float64 ~1e-13. Blocks keep the float64 copy
    of the head small (8,192 rows at a time).
    """
    total = torch.zeros(weight.shape[1], device=pick.device, dtype=torch.float64)
    for start in range(0, weight.shape[0], chunk):
        block = weight[start : start + chunk].to(pick.device, torch.float64)  # (chunk, d_model)
        total += pick[start : start + chunk] @ block
    return total


def norm_weight(model: nn.Module, spec: ArchitectureSpec) -> torch.Tensor:
    """The final norm's weight ``g`` as the model applies it, ``(d_model,)`` float32.

    A plain norm's ``weight`` is read; a PEFT-wrapped one (LN tuning) is evaluated on a constant vector,
    whose normalised value is 1 everywhere, so the output is ``g`` up to the factor ``1/sqrt(1 + ε)``.
    """
    norm = spec.module(model, spec.final_norm)
    if not callable(getattr(norm, "get_base_layer", None)):
        return norm.weight.detach().to(torch.float32)
    weight = _unwrapped(norm).weight
    with torch.no_grad():
        out = norm(torch.ones(1, weight.shape[0], device=weight.device, dtype=torch.float32))
    return out[0].to(torch.float32) * (1.0 + final_norm_eps(model, spec)) ** 0.5


def _shape(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of a (possibly wrapped) linear."""
    base = _unwrapped(module)
    for candidate in (module, base, getattr(base, "original_module", None)):
        if candidate is not None and hasattr(candidate, "out_features"):
            return int(candidate.out_features), int(candidate.in_features)
    raise ValueError(f"cannot tell the shape of head {type(module).__name__}")


def _has_bias(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) and m.bias is not None for m in module.modules())


_QUANTISED = ("Linear4bit", "Linear8bitLt")


def input_direction(
    module: nn.Module, direction: torch.Tensor, in_features: int, dtype: torch.dtype
) -> torch.Tensor:
    """``Wᵀ · direction`` for the affine map ``module`` (a linear, a LoRA-wrapped linear, a quantised one).

    Whatever the module adds to its plain weight (a LoRA update, dequantisation) is included without reading
    its internals: for ordinary modules it is the gradient of ``direction · module(x)`` at ``x = 0``;
    bitsandbytes modules (whose CPU inference kernels pass no gradient) are instead evaluated on the basis
    vectors, ``(module(I) − module(0))ᵀ · direction``, in chunks. Returns ``(in_features,)`` float32.
    """
    device = next(module.parameters()).device
    target = direction.to(device)
    if any(type(m).__name__ in _QUANTISED for m in module.modules()):
        with torch.no_grad():
            offset = module(torch.zeros(1, in_features, device=device, dtype=dtype)).to(torch.float32)
            eye = torch.eye(in_features, device=device, dtype=dtype)
            parts = []
            for start in range(0, in_features, 256):
                rows = eye[start : start + 256]
                parts.append((module(rows).to(torch.float32) - offset) @ target)  # (rows,)
        return torch.cat(parts).to(direction.device)
    x = torch.zeros(1, in_features, device=device, dtype=dtype, requires_grad=True)
    with torch.enable_grad():
        value = (module(x).to(torch.float32) @ target).sum()
        # the gradient of the input only: nothing accumulates in the weights' ``.grad``
        (grad,) = torch.autograd.grad(value, [x], allow_unused=True) if value.requires_grad else (None,)
    if grad is None:
        raise TokenlensError(f"{type(module).__name__} does not pass gradients to its input: cannot split it")
    return grad[0].to(direction.device, torch.float32)

"""Result objects of logit attribution. They carry their own labels, so renderers never need a model."""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOLERANCE = 1e-4
"""Relative tolerance of every exact split: ``|Σ parts − whole| ≤ TOLERANCE · max(1, max_c |c|)`` (fp32)."""


@dataclass(frozen=True)
class TokenScore:
    """One vocabulary entry at one position: its id, decoded text, logit and probability."""

    id: int
    token: str
    logit: float
    prob: float


@dataclass(frozen=True)
class Decomposition:
    """The exact split of one token's logit at one position into residual-stream components.

    With ``u`` the head row of the target, ``g`` the final-norm weight and ``s`` the final-norm scale taken
    from the real forward pass, ``logit = Σ_c u·(g ⊙ c)·s + b``: one term per write ``c`` to the stream
    (embedding, each layer's attention and MLP, any constant bias vector) plus the head's bias ``b`` when
    the model has one. The split is direct logit attribution: it credits each component's direct path to
    the logits; effects through later layers are not in it.

    Attributes:
        names: Component names in model order: ``embed``, ``L0.attn``, [``L0.attn.bias``], ``L0.mlp``,
            [``L0.mlp.bias``], …, [``logit_bias``]. A layer's bias term is split off its write.
        contributions: ``(component,)`` float32 logit contribution of each component.
        target_id: The token whose logit is split.
        position: The sequence position (non-negative) of the prediction.
        logit: The model's own logit for the target, from its forward pass (not from the parts).
        scale: The final norm's scale ``s = 1/sqrt(mean(h_L²) + ε)`` at the position.
        stream_error: ``max |Σ writes − h_L|``: how far the captured writes are from the stream the final
            norm actually received (0 up to rounding when every write was captured).
    """

    names: tuple[str, ...]
    contributions: torch.Tensor
    target_id: int
    position: int
    logit: float
    scale: float
    stream_error: float

    def __post_init__(self) -> None:
        if self.contributions.shape != (len(self.names),):
            raise ValueError(
                f"{len(self.names)} names for contributions of shape {tuple(self.contributions.shape)}"
            )

    @property
    def total(self) -> float:
        """Sum of the component contributions (equals ``logit`` up to rounding)."""
        return float(self.contributions.double().sum())

    @property
    def error(self) -> float:
        """``|Σ parts − model logit|``."""
        return abs(self.total - self.logit)

    @property
    def tolerance(self) -> float:
        """The allowed error: ``TOLERANCE · max(1, max_c |c|)``."""
        return TOLERANCE * max(1.0, float(self.contributions.abs().max()))

    @property
    def exact(self) -> bool:
        """Whether the parts sum to the model's logit within :attr:`tolerance`."""
        return self.error <= self.tolerance

    def as_dict(self) -> dict[str, float]:
        """``{name: contribution}`` in model order."""
        return {
            name: float(value) for name, value in zip(self.names, self.contributions.tolist(), strict=False)
        }


@dataclass(frozen=True)
class LogitAttribution:
    """Why the model gives its target token the logit it does, for one prompt at one position.

    Attributes:
        model: The model reference the user gave.
        prompt: The prompt text as given (before any chat template).
        chat: Whether the prompt was wrapped as a user turn with the model's chat template.
        token_ids: The prompt's token ids, as fed to the model.
        tokens: Each prompt token's decoded text.
        position: The position whose next-token prediction is explained (non-negative).
        target: The explained token, its logit and probability.
        logprob: ``log p(target)`` under the model's full next-token distribution.
        top: The top-k tokens at the position among ids the tokenizer can decode, best first.
        decomposition: The exact per-component split of ``target.logit``.
        dtype: The model's parameter dtype (the split itself is computed in float32).
        device: Where the model ran.
    """

    model: str
    prompt: str
    chat: bool
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    position: int
    target: TokenScore
    logprob: float
    top: tuple[TokenScore, ...]
    decomposition: Decomposition
    dtype: str
    device: str

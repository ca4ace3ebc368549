"""The number a causal experiment watches: one token's logit, log-prob, probability or logit difference.

Every intervention is judged by how it moves one scalar read off the model's next-token logits at one
position. ``logit_diff`` (target minus a contrast token) is the usual choice: it does not depend on the
softmax normaliser, so it isolates what pushes one answer over the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from tokenlens.attribution import inputs
from tokenlens.causal.results import Metric
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import ArchitectureSpec, bare_model, virtual_tokens


def run_metric(
    model: nn.Module, spec: ArchitectureSpec, input_ids: torch.Tensor, metric: Metric
) -> torch.Tensor:
    """One real forward pass of ``input_ids`` ``(1, seq)``; the metric as a float32 scalar tensor.

    Runs under whatever grad mode the caller set (``torch.no_grad()`` for exact effects, autograd for
    attribution patching). Only the metric position's logits are computed.

    Raises:
        TokenlensError: The metric position is outside the prompt.
    """
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"expected input ids of shape (1, seq), got {tuple(input_ids.shape)}")
    if metric.position >= input_ids.shape[1]:
        raise TokenlensError(
            f"the metric reads position {metric.position}, outside this prompt of {input_ids.shape[1]} tokens"
        )
    return metric.of(_logits_at(model, spec, input_ids, metric.position))


def _logits_at(
    model: nn.Module, spec: ArchitectureSpec, input_ids: torch.Tensor, position: int
) -> torch.Tensor:
    """The ``(vocab,)`` logits at prompt ``position`` of one forward pass of ``input_ids`` ``(1, seq)``.

    A prompt-tuning adapter's virtual positions come before the prompt, so the model's own index is shifted.
    """
    device = spec.module(model, spec.embed).weight.device
    input_ids = input_ids.to(device)
    keep = torch.tensor([position + virtual_tokens(model)], device=device)
    output = model(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False, logits_to_keep=keep
    )
    return output.logits[0, 0]


def encode(loaded: LoadedModel, prompt: str, *, chat: bool = False) -> torch.Tensor:
    """``prompt``'s token ids as a ``(1, seq)`` tensor (rules: :func:`inputs.encode_prompt`)."""
    limit = getattr(bare_model(loaded.model).config, "max_position_embeddings", None)
    return torch.tensor([inputs.encode_prompt(loaded.tokenizer, prompt, chat=chat, max_positions=limit)])


def _token(
    loaded: LoadedModel, text: str | None, token_id: int | None, first_token: bool, what: str
) -> int | None:
    if text is not None and token_id is not None:
        raise TokenlensError(f"give the {what} as text or as an id, not both")
    if token_id is not None:
        vocab_size = loaded.spec.module(loaded.model, loaded.spec.head).weight.shape[0]
        return inputs.check_target_id(loaded.tokenizer, token_id, vocab_size)
    if text is not None:
        return inputs.target_from_text(loaded.tokenizer, text, first_token=first_token)
    return None


def _top1(loaded: LoadedModel, ids: torch.Tensor, position: int) -> int:
    """The model's top-1 token at ``position`` among ids the tokenizer can decode."""
    with torch.no_grad():
        logits = _logits_at(loaded.model, loaded.spec, ids, position)
    limit = inputs.decodable_vocab(loaded.tokenizer, logits.shape[-1])
    return int(inputs.top_tokens(logits, limit, 1)[0])


def metric_for(
    loaded: LoadedModel,
    prompt: str | Sequence[int],
    *,
    kind: str = "logit",
    target: str | None = None,
    target_id: int | None = None,
    contrast: str | None = None,
    contrast_id: int | None = None,
    first_token: bool = False,
    position: int = -1,
    chat: bool = False,
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Metric:
    """The metric a user asks for on ``prompt`` (text, or token ids).

    Args:
        loaded: The model.
        prompt: The prompt the metric is read on (for patching: the clean prompt).
        kind: ``logit``, ``logprob``, ``prob`` or ``logit_diff``.
        target / target_id: The token to watch, as decoded text (``" Paris"``) or id; default: the model's
            top-1 token at ``position`` among ids the tokenizer can decode.
        contrast / contrast_id: For ``logit_diff``, the token subtracted.
        first_token: Accept a multi-token target or contrast and use its first token.
        position: The prediction position; negative counts from the end.
        chat: Wrap a text prompt as a user turn with the chat template.
        fn: A custom metric: ``fn(logits)`` of the ``(vocab,)`` float32 logits at ``position``, returning a
            scalar tensor; ``kind`` is then its name (for labels), and the target (and contrast) name what it
            is about (see :class:`~tokenlens.causal.results.Metric`).

    Raises:
        TokenlensError: Any bad input (see :class:`Metric` and :mod:`tokenlens.attribution.inputs`).
    """
    ids = encode(loaded, prompt, chat=chat) if isinstance(prompt, str) else torch.tensor([list(prompt)])
    pos = inputs.resolve_position(position, ids.shape[1])
    target_id = _token(loaded, target, target_id, first_token, "target")
    contrast_id = _token(loaded, contrast, contrast_id, first_token, "contrast")
    if target_id is None:
        target_id = _top1(loaded, ids, pos)
    return Metric(
        kind=kind,
        target_id=target_id,
        position=pos,
        contrast_id=contrast_id,
        target_text=inputs.decode_token(loaded.tokenizer, target_id),
        contrast_text=None if contrast_id is None else inputs.decode_token(loaded.tokenizer, contrast_id),
        fn=fn,
    )

"""Explain every position of a prompt at once: each position's prediction of the prompt's next token.

A prompt of ``n`` tokens is ``n − 1`` next-token predictions the model already makes in one forward pass:
position ``p`` predicts token ``p + 1``. :func:`attribute_positions` explains each of them, teacher-forced
(the target at position ``p`` is the prompt's own token ``p + 1``, whatever the model's top-1 there), from
one capture forward — the machinery that explains a whole answer
(:mod:`tokenlens.attribution.sequence`), with the prompt's first token as the "prompt" and the rest as the
"answer". Result ``p`` is the one :func:`tokenlens.attribute` gives on the whole prompt at ``position=p``
with ``target_id`` the token after ``p`` (tested): its ``token_ids`` are the whole prompt, and its source
splits run over the whole prompt (the positions after ``p`` carry exactly 0).

The last position predicts a token the prompt does not have; explain it with :func:`tokenlens.attribute`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from tokenlens.attribution import inputs
from tokenlens.attribution.direct import parse_sources, resolve_token, splits_needed
from tokenlens.attribution.request import AttributionRequest
from tokenlens.attribution.result import LogitAttribution, SourceSplit
from tokenlens.attribution.sequence import explain_steps
from tokenlens.errors import TokenlensError, option
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import bare_model


def attribute_positions(
    loaded: LoadedModel,
    prompt: str | Sequence[int],
    request: AttributionRequest | None = None,
    /,
    **options: Any,
) -> tuple[LogitAttribution, ...]:
    """Explain, at every position ``p`` of ``prompt`` but the last, the logit of the prompt's token ``p + 1``.

    Args:
        loaded: A model from :func:`tokenlens.load`.
        prompt: Text (used as is unless ``chat``: then the chat template's tokens are explained) or token ids
            used exactly as given; at least two tokens.
        request: What each position explains and how finely, as for :func:`tokenlens.attribute` (or its
            fields as keyword ``options``): ``vs`` (one contrast token for every position), ``logprob``,
            ``chat``, ``top_k``, ``heads``, ``neurons``, ``experts``, ``sources``. The targets are the
            prompt's own tokens, so ``target`` and ``position`` are refused.

    Returns:
        One :class:`~tokenlens.attribution.result.LogitAttribution` per position ``0 .. n − 2``, in order.

    Raises:
        TokenlensError: A prompt of one token, a ``target`` or ``position``, a contrast equal to a prompt
            token it would be compared with, and every error of :func:`tokenlens.attribute`; one line.
    """
    request = AttributionRequest.of(request, options)
    if request.target is not None or request.target_id is not None:
        raise TokenlensError(f"each position's target is the prompt's next token: drop {option('target')}")
    if request.position != -1:
        raise TokenlensError(f"every position of the prompt is explained: drop {option('position')}")
    model, tokenizer, spec = loaded.model, loaded.tokenizer, loaded.spec
    max_positions = getattr(bare_model(model).config, "max_position_embeddings", None)
    vocab_size = spec.module(model, spec.head).weight.shape[0]
    if isinstance(prompt, str):
        ids = inputs.encode_prompt(tokenizer, prompt, chat=request.chat, max_positions=max_positions)
        text = prompt
    else:
        ids = inputs.check_prompt_ids(prompt, vocab_size, max_positions)
        text = tokenizer.decode(ids)
    if len(ids) < 2:
        raise TokenlensError("the prompt has one token: there is no next prompt token to explain")
    contrast = resolve_token(tokenizer, request.vs, request.vs_id, request.first_token, vocab_size)
    for p, token_id in enumerate(ids[1:]):
        if contrast == token_id:
            raise TokenlensError(
                f"the contrast token is the prompt's token after position {p} "
                f"({inputs.decode_token(tokenizer, token_id)!r}): choose another {option('vs')}"
            )
    n_layers = len(spec.layer_list(model))
    n_heads = spec.layer_list(model)[0].get_submodule(spec.attn).config.num_attention_heads
    scopes = parse_sources(request.sources, n_layers, n_heads)
    splits = splits_needed(request.heads, request.neurons, request.experts, scopes, spec)
    limit = inputs.decodable_vocab(tokenizer, vocab_size)
    steps, _ = explain_steps(loaded, ids[:1], ids[1:], request, contrast, splits, scopes, text, limit)
    tokens = tuple(inputs.decode_token(tokenizer, i) for i in ids)
    return tuple(
        dataclasses.replace(
            step,
            token_ids=tuple(ids),
            tokens=tokens,
            sources=tuple(_whole(s, step.virtual_tokens + len(ids)) for s in step.sources),
        )
        for step in steps
    )


def _whole(split: SourceSplit, length: int) -> SourceSplit:
    """A source split over the prompt up to its position, padded with the later positions' exact zeros."""
    missing = length - split.contributions.shape[0]
    return dataclasses.replace(
        split,
        contributions=torch.nn.functional.pad(split.contributions, (0, missing)),
        pattern=torch.nn.functional.pad(split.pattern, (0, missing)),
    )

"""Whole answers in a diff: a target answer scored by both models, or both models' own continuations.

**A target answer** (a probe's ``target`` of several tokens, or one with ``judge``): base and tuned each read
prompt + answer once, teacher-forced; the logits before answer token ``k`` give ``log p(token_k)`` (full
vocabulary, float64), the model's top-1 there (among decodable ids) and KL(base ‖ tuned). The answer's
``log p = Σ_k log p(token_k)``; greedy decoding reproduces the answer exactly when every answer token is the
top-1 after the tokens before it, so no decoding is needed to judge it
(:class:`~tokenlens.diff.result.TargetAnswer`).

**Continuations** (``"generate": N``): base and tuned each decode up to N tokens greedily
(:func:`tokenlens.attribution.sequence_inputs.generate_ids`: top-1 among decodable ids, no cache, stopping
after the end-of-sequence token). Then both read prompt + the *base* continuation teacher-forced, giving the
per-token KL(base ‖ tuned) along it; the first index where the two continuations differ is the divergence
(:class:`~tokenlens.diff.result.Continuations`). The engine explains the divergence as a one-token probe:
prefix = prompt + the common continuation, tracked = the tuned token, contrast = the base token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tokenlens.attribution import inputs
from tokenlens.attribution.result import TokenScore
from tokenlens.attribution.sequence_inputs import generate_ids
from tokenlens.diff.pairing import ModelPair
from tokenlens.diff.result import Continuations, TargetAnswer
from tokenlens.diff.runs import divergences
from tokenlens.errors import TokenlensError, option


def forced_logits(model: torch.nn.Module, spec: Any, ids: Sequence[int], start: int) -> torch.Tensor:
    """The float64 logits ``(len(ids) − start, vocab)`` at positions ``start ..`` of one forward pass of
    ``ids`` (the predictions of tokens ``start + 1 ..`` and of the token after the last).

    Raises:
        TokenlensError: NaN or infinite logits.
    """
    device = spec.module(model, spec.embed).weight.device
    tensor = torch.tensor([list(ids)], device=device)
    with torch.no_grad():
        output = model(
            input_ids=tensor,
            attention_mask=torch.ones_like(tensor),
            use_cache=False,
            logits_to_keep=len(ids) - start,
        )
    logits = output.logits[0].double().cpu()
    if not torch.isfinite(logits).all():
        raise TokenlensError(
            f"a model produced NaN or infinite logits (overflow in a low-precision dtype? try "
            f"{option('dtype', 'float32')})"
        )
    return logits


def _both(pair: ModelPair, ids: Sequence[int], start: int) -> tuple[torch.Tensor, torch.Tensor]:
    with pair.side("base") as model:
        base = forced_logits(model, pair.spec, ids, start)
    with pair.side("tuned") as model:
        tuned = forced_logits(model, pair.spec, ids, start)
    return base, tuned


def _top1(tokenizer: Any, logits: torch.Tensor, limit: int) -> TokenScore:
    token = int(inputs.top_tokens(logits, limit, 1)[0])
    prob = float(logits.softmax(-1)[token])
    return TokenScore(token, inputs.decode_token(tokenizer, token), float(logits[token]), prob)


def score_target(
    pair: ModelPair,
    prompt_ids: Sequence[int],
    answer: Sequence[int],
    *,
    judge: str = "logprob",
    notes: tuple[str, ...] = (),
) -> TargetAnswer:
    """Score ``answer`` after ``prompt_ids`` with both models, teacher-forced (see the module text)."""
    tokenizer = pair.tokenizer
    ids = list(prompt_ids) + list(answer)
    # the logits at positions len(prompt) − 1 .. len(ids) − 2 predict the answer's tokens
    base, tuned = (x[:-1] for x in _both(pair, ids, len(prompt_ids) - 1))
    limit = inputs.decodable_vocab(tokenizer, base.shape[-1])
    index = torch.tensor(list(answer))[:, None]
    base_lp = base.log_softmax(-1).gather(-1, index)[:, 0]
    tuned_lp = tuned.log_softmax(-1).gather(-1, index)[:, 0]
    return TargetAnswer(
        ids=tuple(int(i) for i in answer),
        tokens=tuple(inputs.decode_token(tokenizer, int(i)) for i in answer),
        base_logprobs=tuple(base_lp.tolist()),
        tuned_logprobs=tuple(tuned_lp.tolist()),
        base_top=tuple(_top1(tokenizer, row, limit) for row in base),
        tuned_top=tuple(_top1(tokenizer, row, limit) for row in tuned),
        kl=tuple(divergences(b, t)[0] for b, t in zip(base, tuned, strict=True)),
        judge=judge,
        notes=notes,
    )


def continue_both(pair: ModelPair, prompt_ids: Sequence[int], steps: int) -> Continuations:
    """Both models' greedy continuations of ``steps`` tokens and the KL along the base one (module text)."""
    tokenizer = pair.tokenizer
    with pair.side("base") as model:
        vocab = model.get_output_embeddings().weight.shape[0]
        limit = inputs.decodable_vocab(tokenizer, vocab)
        base_ids, _ = generate_ids(
            model, pair.spec, prompt_ids, steps, limit=limit, eos_id=tokenizer.eos_token_id
        )
    with pair.side("tuned") as model:
        tuned_ids, _ = generate_ids(
            model, pair.spec, prompt_ids, steps, limit=limit, eos_id=tokenizer.eos_token_id
        )
    divergence = next(
        (k for k in range(max(len(base_ids), len(tuned_ids))) if k >= len(base_ids) or k >= len(tuned_ids)
         or base_ids[k] != tuned_ids[k]),
        None,
    )  # fmt: skip
    ids = list(prompt_ids) + base_ids
    base, tuned = (x[:-1] for x in _both(pair, ids, len(prompt_ids) - 1))
    return Continuations(
        steps=steps,
        base_ids=tuple(base_ids),
        base_tokens=tuple(inputs.decode_token(tokenizer, i) for i in base_ids),
        tuned_ids=tuple(tuned_ids),
        tuned_tokens=tuple(inputs.decode_token(tokenizer, i) for i in tuned_ids),
        kl=tuple(divergences(b, t)[0] for b, t in zip(base, tuned, strict=True)),
        divergence=divergence,
    )

"""Turning what a user types into token ids, a position and a target id, with one-line errors.

Target strings are decoded text: ``" Paris"`` with its leading space is one token for most BPE tokenizers,
``"Paris"`` may be another. A target that tokenizes to several tokens is refused unless the caller opts in
to its first token. Checkpoints often have more embedding rows than the tokenizer has ids (Qwen3: 151,936
rows, 151,669 ids); the extra rows are padding, so default targets are chosen among decodable ids only.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from typing import Any

import torch

from tokenlens.errors import MultiTokenTarget, TokenlensError, option


def decodable_vocab(tokenizer: Any, vocab_size: int) -> int:
    """How many leading ids of a ``vocab_size``-row head the tokenizer can decode."""
    return min(len(tokenizer), vocab_size)


def decode_token(tokenizer: Any, token_id: int) -> str:
    """The decoded text of one token id (special tokens included, nothing stripped)."""
    return tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def check_text(text: Any, what: str) -> str:
    """``text`` if it is a ``str`` that can be encoded as UTF-8.

    Command-line arguments with invalid UTF-8 bytes reach Python as lone surrogates (``\\udcff``), which no
    tokenizer accepts; the same holds for such strings built in Python.

    Raises:
        TokenlensError: ``text`` is not a string, or holds characters UTF-8 cannot encode.
    """
    if not isinstance(text, str):
        raise TokenlensError(f"the {what} must be text (str), not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TokenlensError(
            f"the {what} is not valid UTF-8 text: character {exc.object[exc.start]!r} at offset {exc.start} "
            "(an invalid byte, or a lone surrogate)"
        ) from None
    return text


def encode_prompt(
    tokenizer: Any, prompt: str, *, chat: bool = False, max_positions: int | None = None
) -> list[int]:
    """Token ids of ``prompt``, optionally wrapped as a user turn with the tokenizer's chat template.

    Raises:
        TokenlensError: The prompt is empty, the tokenizer has no chat template when ``chat`` is asked
            for, or the prompt is longer than the model's context.
    """
    check_text(prompt, "prompt")
    if not prompt.strip():
        raise TokenlensError("the prompt is empty: give some text to predict from")
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise TokenlensError(f"this model's tokenizer has no chat template: drop {option('chat', True)}")
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise TokenlensError("the prompt tokenizes to no tokens")
    if max_positions is not None and len(ids) > max_positions:
        raise TokenlensError(
            f"the prompt is {len(ids)} tokens, longer than the model's context of {max_positions}"
        )
    return list(ids)


THINKING = "enable_thinking"
"""The chat-template variable that chooses Qwen3's thinking (true, its template's default) or non-thinking
(false) mode."""


def thinking_kwargs(tokenizer: Any, thinking: bool | None) -> dict[str, bool]:
    """Keyword arguments for ``apply_chat_template`` that choose thinking or non-thinking mode (``{}`` for
    ``None``: the template's own default).

    Qwen3's chat template reads ``enable_thinking``: with it false, the generation prompt ends in an empty
    ``<think>\n\n</think>\n\n`` block, so the first token after it is the first token of a non-thinking
    reply. A template that never reads the variable would ignore the choice silently, so it is refused.

    Raises:
        TokenlensError: ``thinking`` is not a boolean, the tokenizer has no chat template, or its template has
            no thinking switch.
    """
    if thinking is None:
        return {}
    if not isinstance(thinking, bool):
        raise TokenlensError(f"thinking must be true or false, not {thinking!r}")
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one is applied
        template = template.get("default")
    if not template:
        raise TokenlensError("thinking mode applies to the chat template, and this tokenizer has none")
    if THINKING not in template:
        raise TokenlensError(
            f"this model's chat template has no thinking switch (it never reads {THINKING}): "
            "its replies have one mode only"
        )
    return {THINKING: thinking}


def with_thinking(tokenizer: Any, thinking: bool | None) -> Any:
    """``tokenizer``, or a shallow copy of it whose chat template renders in thinking (``True``) or
    non-thinking (``False``) mode wherever it is applied (attribution, lens, causal effects, answers).

    The copy's template starts by setting ``enable_thinking``, as ``apply_chat_template(...,
    enable_thinking=thinking)`` would; the original tokenizer is left alone. ``None`` returns ``tokenizer``.

    Raises:
        TokenlensError: As :func:`thinking_kwargs`.
    """
    if not thinking_kwargs(tokenizer, thinking):
        return tokenizer
    clone = copy.copy(tokenizer)
    template = tokenizer.chat_template
    setting = f"{{%- set {THINKING} = {'true' if thinking else 'false'} %}}"
    if isinstance(template, dict):
        clone.chat_template = {**template, "default": setting + template["default"]}
    else:
        clone.chat_template = setting + template
    return clone


def check_prompt_ids(ids: Sequence[int], vocab_size: int, max_positions: int | None = None) -> list[int]:
    """Token ids given directly as a prompt, checked: integers, not empty, within the vocabulary and context.

    Python ints, NumPy integers and integer tensor elements are ids; ``bytes``, floats and booleans are not
    (``b"abc"`` is not three token ids, and ``1.5`` is no id).

    Raises:
        TokenlensError: The ids are not a sequence of integers, are empty, one is outside
            ``0 .. vocab_size - 1``, or there are too many.
    """
    if isinstance(ids, (bytes, bytearray, str)):
        raise TokenlensError(
            f"a prompt must be text (str) or a sequence of integer token ids, not {type(ids).__name__}"
        )
    ids = [_token_id(i) for i in ids]
    if not ids:
        raise TokenlensError("the prompt is empty: give at least one token id")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise TokenlensError(
            f"prompt token id {bad[0]} is outside the vocabulary (valid ids: 0..{vocab_size - 1})"
        )
    if max_positions is not None and len(ids) > max_positions:
        raise TokenlensError(
            f"the prompt is {len(ids)} tokens, longer than the model's context of {max_positions}"
        )
    return ids


def _token_id(value: Any) -> int:
    """One token id as an ``int``; booleans and non-integers are refused."""
    if isinstance(value, bool) or str(getattr(value, "dtype", "")).endswith("bool"):
        raise TokenlensError(f"token ids must be integers, not the boolean {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TokenlensError(f"token ids must be integers, not {type(value).__name__} {value!r}") from None


def resolve_position(position: int, seq_len: int) -> int:
    """A non-negative position; negative values count from the end (``-1`` is the last token).

    Raises:
        TokenlensError: The position is outside the prompt.
    """
    if not -seq_len <= position < seq_len:
        raise TokenlensError(
            f"position {position} is outside the prompt of {seq_len} tokens (use 0..{seq_len - 1} or -1)"
        )
    return position % seq_len


def target_from_text(tokenizer: Any, text: str, *, first_token: bool = False) -> int:
    """The id of the single token ``text`` encodes to.

    Raises:
        TokenlensError: ``text`` is empty or not valid UTF-8 text.
        MultiTokenTarget: ``text`` encodes to several tokens and ``first_token`` is false.
    """
    check_text(text, "target")
    if text == "":
        raise TokenlensError(
            "the target is empty: give a token's text, e.g. ' Paris' (leading space included)"
        )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise TokenlensError(f"the target {text!r} encodes to no tokens")
    if len(ids) > 1 and not first_token:
        raise MultiTokenTarget(text, [decode_token(tokenizer, i) for i in ids])
    return int(ids[0])


def check_target_id(tokenizer: Any, token_id: int, vocab_size: int) -> int:
    """``token_id`` if the tokenizer can decode it and the head has a row for it.

    Raises:
        TokenlensError: The id is outside ``0 .. decodable_vocab - 1``.
    """
    limit = decodable_vocab(tokenizer, vocab_size)
    if not 0 <= token_id < limit:
        raise TokenlensError(f"target id {token_id} is outside the vocabulary (valid ids: 0..{limit - 1})")
    return int(token_id)


def top_tokens(logits: torch.Tensor, limit: int, k: int) -> torch.Tensor:
    """Ids of the ``k`` highest ``logits`` among the first ``limit`` ids (the decodable ones), best first."""
    return logits[:limit].float().topk(min(k, limit)).indices

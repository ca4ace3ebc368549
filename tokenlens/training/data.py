"""Training data: JSONL files turned into token ids and loss labels.

Each line is one example, in one of three shapes:

* ``{"prompt": str, "completion": str}`` — the prompt and completion are tokenized separately and
  concatenated (so the boundary is a token boundary); the loss covers the completion tokens only. An
  optional ``"subject"`` (words of the prompt, e.g. ``"France"``) marks a fact's subject: ``layers=auto`` and
  ``rank-one`` then locate the model's current answer with the subject noised (a causal trace's protocol
  for facts) instead of guessing where the subject is.
* ``{"messages": [{"role": ..., "content": ...}, ...]}`` — rendered with the tokenizer's chat template;
  the loss covers the assistant turns only. An assistant turn's span starts where the template's
  generation prompt for that turn ends (the conversation before it, rendered with
  ``add_generation_prompt=True``, must be a prefix of the full rendering) and ends after the turn's content
  plus an immediately following end-of-turn token (the tokenizer's eos, e.g. ``<|im_end|>``). Anything the
  template inserts before the content (Qwen3's empty ``<think>`` block on the last turn) is learned too,
  unless the line says ``"thinking": false``: the template then renders in Qwen3's non-thinking mode
  (``enable_thinking=False``), whose generation prompt already ends in the empty ``<think>`` block, so only
  the reply itself carries loss — as the model meets it when asked in non-thinking mode. ``"thinking":
  true`` asks for thinking mode explicitly; a template without the switch refuses either.
* ``{"text": str}`` — the loss covers every token.

The file must be UTF-8 (other bytes are refused with their line, never replaced). Every line is validated
before anything trains; the first bad line raises a one-line :class:`TokenlensError` naming ``file:line``.
Length rule: an example longer than the model's context (``max_length`` tokens) is **refused**, never
truncated silently. Labels use ``-100`` for positions without loss (the HF convention; the model shifts
labels by one itself).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenlens.attribution.inputs import thinking_kwargs
from tokenlens.errors import TokenlensError

IGNORE = -100
SHAPES = ("prompt/completion", "messages", "text")


@dataclass(frozen=True)
class Example:
    """One tokenized example.

    Attributes:
        input_ids: (seq,) token ids.
        labels: (seq,) the same ids where the loss applies, -100 elsewhere.
        line: 1-based line number in the source file.
        subject: The prompt positions of the line's ``"subject"`` (empty without one).
    """

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    line: int
    subject: tuple[int, ...] = ()


@dataclass(frozen=True)
class TrainingData:
    """A validated, tokenized JSONL file.

    Attributes:
        path: The file read.
        sha256: Hex digest of the file's bytes.
        examples: One :class:`Example` per non-blank line.
        counts: Examples per shape (``prompt/completion``, ``messages``, ``text``).
        n_tokens: Total tokens over all examples.
        n_loss_tokens: Tokens that carry loss.
    """

    path: Path
    sha256: str
    examples: tuple[Example, ...]
    counts: dict[str, int]
    n_tokens: int
    n_loss_tokens: int


def load_jsonl(
    path: str | Path, tokenizer: Any, max_length: int, vocab_size: int | None = None
) -> TrainingData:
    """Read, validate and tokenize a JSONL training file.

    Args:
        path: The ``.jsonl`` file.
        tokenizer: A HF tokenizer (fast, for offsets; with a chat template for ``messages`` lines).
        max_length: The model's context length; longer examples are refused.
        vocab_size: The model's embedding rows; an example with a larger token id is refused.

    Returns:
        A :class:`TrainingData`.

    Raises:
        TokenlensError: A missing/empty file or a bad line (``file:line: what is wrong``).
    """
    path = Path(path)
    if not path.is_file():
        raise TokenlensError(f"no such data file: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TokenlensError(f"cannot read data file {path}: {exc.strerror or exc}") from exc
    examples: list[Example] = []
    counts = dict.fromkeys(SHAPES, 0)
    for number, text in enumerate(_lines(raw, path), start=1):
        if not text.strip():
            continue
        where = f"{path}:{number}"
        record = _parse_line(text, where)
        shape, ids, labels = _tokenize(record, tokenizer, where)
        subject = _subject(record, tokenizer, labels, ids, where)
        if len(ids) > max_length:
            raise TokenlensError(
                f"{where}: {len(ids)} tokens, longer than the model's context ({max_length}); "
                "shorten or split it (long lines are refused, not truncated)"
            )
        if vocab_size is not None and max(ids) >= vocab_size:
            raise TokenlensError(
                f"{where}: token id {max(ids)} is outside the model's vocabulary ({vocab_size} rows)"
            )
        if sum(1 for label in labels[1:] if label != IGNORE) == 0:
            raise TokenlensError(f"{where}: no token carries loss (the example needs at least 2 tokens)")
        counts[shape] += 1
        examples.append(Example(tuple(ids), tuple(labels), number, subject))
    if not examples:
        raise TokenlensError(f"{path} has no examples (the file is empty or blank)")
    return TrainingData(
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        examples=tuple(examples),
        counts=counts,
        n_tokens=sum(len(e.input_ids) for e in examples),
        n_loss_tokens=sum(sum(1 for label in e.labels if label != IGNORE) for e in examples),
    )


def _lines(raw: bytes, path: Path) -> list[str]:
    """The file's lines, strictly UTF-8 (never decoded with replacement characters).

    Lines end at line feeds only (a carriage return before one is dropped): a JSON string may hold U+2028
    or other characters that :meth:`str.splitlines` would split at, and line numbers match an editor's.

    Raises:
        TokenlensError: The bytes are not UTF-8 (``file:line: …`` with the offending byte).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise TokenlensError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte {column} of the line); "
            "save the file as UTF-8"
        ) from exc
    return [line.removesuffix("\r") for line in text.split("\n")]


def _parse_line(text: str, where: str) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokenlensError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(record, dict):
        raise TokenlensError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def _require_str(record: dict, key: str, where: str, allow_empty: bool = False) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise TokenlensError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise TokenlensError(f"{where}: {key!r} is empty")
    return value


def _tokenize(record: dict, tokenizer: Any, where: str) -> tuple[str, list[int], list[int]]:
    keys = set(record) - ({"subject"} if {"prompt", "completion"} <= set(record) else set())
    if keys == {"prompt", "completion"}:
        prompt = _require_str(record, "prompt", where, allow_empty=True)
        completion = _require_str(record, "completion", where)
        p_ids = _encode(tokenizer, prompt) if prompt else []
        c_ids = _encode(tokenizer, completion)
        return "prompt/completion", p_ids + c_ids, [IGNORE] * len(p_ids) + c_ids
    if keys in ({"messages"}, {"messages", "thinking"}):
        thinking = record.get("thinking")
        if thinking is not None and not isinstance(thinking, bool):
            raise TokenlensError(f"{where}: 'thinking' must be true or false")
        ids, labels = _tokenize_messages(record["messages"], tokenizer, where, thinking)
        return "messages", ids, labels
    if keys == {"text"}:
        ids = _encode(tokenizer, _require_str(record, "text", where))
        return "text", ids, list(ids)
    if "prompt" in keys and "completion" not in keys:
        raise TokenlensError(f"{where}: a 'prompt' without a 'completion'")
    raise TokenlensError(
        f"{where}: unknown shape with keys {sorted(keys)}; expected exactly "
        '{"prompt","completion"[, "subject"]}, {"messages"[, "thinking"]} or {"text"}'
    )


def _subject(record: dict, tokenizer: Any, labels: list[int], ids: list[int], where: str) -> tuple[int, ...]:
    """The prompt positions of a prompt/completion line's ``"subject"`` (``()`` without one).

    Raises:
        TokenlensError: A subject that is not a non-empty string found in the prompt.
    """
    if "subject" not in record:
        return ()
    from tokenlens.causal.tracing import find_subject

    subject = _require_str(record, "subject", where)
    prompt = ids[: next(k for k, label in enumerate(labels) if label != IGNORE)]
    try:
        return find_subject(tokenizer, prompt, subject)
    except TokenlensError as exc:
        raise TokenlensError(f"{where}: {exc}") from None


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise TokenlensError(f"{where}: 'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise TokenlensError(f"{where}: message {i} needs a string 'role'")
        if not isinstance(message.get("content"), str):
            raise TokenlensError(f"{where}: message {i} needs a string 'content'")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise TokenlensError(f"{where}: no non-empty assistant turn to learn")


def _tokenize_messages(
    messages: Any, tokenizer: Any, where: str, thinking: bool | None = None
) -> tuple[list[int], list[int]]:
    """Render the whole conversation once (in ``thinking`` mode when given); mark the character spans of the
    assistant turns; label the tokens that start inside a span."""
    _check_messages(messages, where)
    if not getattr(tokenizer, "chat_template", None):
        raise TokenlensError(f"{where}: 'messages' needs a chat template, and this tokenizer has none")
    try:
        mode = thinking_kwargs(tokenizer, thinking)
    except TokenlensError as exc:
        raise TokenlensError(f"{where}: {exc}") from None
    try:
        full = tokenizer.apply_chat_template(messages, tokenize=False, **mode)
    except Exception as exc:  # noqa: BLE001 - a template's own error (jinja) is the user's to see
        raise TokenlensError(f"{where}: the chat template failed: {str(exc).splitlines()[0]}") from exc
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(
            messages[:i], tokenize=False, add_generation_prompt=True, **mode
        )
        if not full.startswith(prefix):
            raise TokenlensError(f"{where}: the chat template renders turn {i} inconsistently")
        end = full.find(message["content"], len(prefix))
        if end < 0:
            raise TokenlensError(f"{where}: the chat template does not reproduce assistant turn {i}")
        end += len(message["content"])
        eos = tokenizer.eos_token or ""
        if eos and full.startswith(eos, end):
            end += len(eos)
        spans.append((len(prefix), end))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [
        token if any(start <= s < end for start, end in spans) else IGNORE
        for token, (s, _) in zip(ids, encoded["offset_mapping"])
    ]
    return ids, labels

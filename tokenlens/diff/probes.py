"""Probe sets: the prompts whose next-token choice a diff compares and a check judges.

A probe file is JSONL, one object per line::

    {"prompt": "The capital of France is", "target": " Lyon", "expect": "changed", "group": "edit"}
    {"messages": [{"role": "user", "content": "Capital of Italy?"}], "expect": "unchanged"}

``prompt`` (plain text) or ``messages`` (chat turns, rendered with the model's chat template), an
optional single-token ``target``, ``expect`` (``changed`` needs a target; ``unchanged`` marks a control;
absent: reported, not judged), ``group``, ``position`` and, with ``messages``, ``thinking`` (``false``:
Qwen3's non-thinking mode, whose generation prompt ends in an empty ``<think>`` block; ``true``: thinking
mode; absent: the chat template's own default). Every line is validated before any model runs; a bad line is
reported with its line number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenlens.attribution import inputs
from tokenlens.diff.result import Probe
from tokenlens.errors import MultiTokenTarget, TokenlensError, option

EXPECT = ("changed", "unchanged")
_KEYS = {"prompt", "messages", "target", "expect", "group", "position", "thinking"}


def load_probes(path: str | Path) -> tuple[Probe, ...]:
    """Read and validate a JSONL probe file (blank lines skipped).

    Raises:
        TokenlensError: Missing/unreadable file, no probes, or a malformed line (with its line number).
    """
    path = Path(path)
    if not path.is_file():
        raise TokenlensError(f"probe file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenlensError(f"cannot read probe file {path}: {exc}") from exc
    probes = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            probes.append(_parse(line, f"{path}, line {number}", number))
    if not probes:
        raise TokenlensError(f"probe file {path} has no probes")
    return tuple(probes)


def prompt_probes(prompts: Sequence[str], target: str | None = None) -> tuple[Probe, ...]:
    """Probes from command-line prompts (not judged), all tracking ``target`` when given."""
    if not prompts:
        raise TokenlensError(f"give {option('probes', 'FILE')} or at least one {option('prompt')}")
    if target is not None:
        inputs.check_text(target, "target")
    for prompt in prompts:
        inputs.check_text(prompt, "prompt")
        if not prompt.strip():
            raise TokenlensError(f"a {option('prompt')} is empty: give some text to predict from")
    return tuple(Probe(prompt=p, target=target) for p in prompts)


def _parse(line: str, where: str, number: int) -> Probe:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise TokenlensError(f"{where}: not valid JSON ({exc.msg})") from exc
    if not isinstance(record, dict):
        raise TokenlensError(f"{where}: each line must be a JSON object")
    unknown = sorted(set(record) - _KEYS)
    if unknown:
        raise TokenlensError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_KEYS))})"
        )
    prompt, messages = record.get("prompt"), record.get("messages")
    if (prompt is None) == (messages is None):
        raise TokenlensError(f'{where}: give exactly one of "prompt" or "messages"')
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise TokenlensError(f'{where}: "prompt" must be non-empty text')
    if messages is not None:
        _check_messages(messages, where)
    target = _optional_str(record, "target", where)
    expect = _optional_str(record, "expect", where)
    if expect is not None and expect not in EXPECT:
        raise TokenlensError(f'{where}: "expect" must be "changed" or "unchanged", got {expect!r}')
    if expect == "changed" and target is None:
        raise TokenlensError(f'{where}: an "expect": "changed" probe needs a "target" token')
    position = record.get("position", -1)
    if not isinstance(position, int) or isinstance(position, bool):
        raise TokenlensError(f'{where}: "position" must be an integer')
    thinking = record.get("thinking")
    if thinking is not None and not isinstance(thinking, bool):
        raise TokenlensError(f'{where}: "thinking" must be true or false')
    if thinking is not None and messages is None:
        raise TokenlensError(f'{where}: "thinking" chooses the chat template\'s mode: it needs "messages"')
    return Probe(
        prompt=prompt,
        messages=None if messages is None else tuple(dict(m) for m in messages),
        target=target,
        expect=expect,
        group=_optional_str(record, "group", where),
        position=position,
        line=number,
        thinking=thinking,
    )


def _optional_str(record: dict, key: str, where: str) -> str | None:
    value = record.get(key)
    if value is not None and (not isinstance(value, str) or value == ""):
        raise TokenlensError(f'{where}: "{key}" must be non-empty text')
    return value


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise TokenlensError(f'{where}: "messages" must be a non-empty list of {{role, content}} objects')
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise TokenlensError(f'{where}: every message needs a "role" and a text "content"')
        if message.get("role") not in ("system", "user", "assistant"):
            raise TokenlensError(f"{where}: message role must be system, user or assistant")


def encode_probe(tokenizer: Any, probe: Probe, max_positions: int | None) -> list[int]:
    """The probe's token ids: the prompt as is, or the messages through the chat template.

    Raises:
        TokenlensError: No chat template for ``messages``, an empty or over-long prompt (message names the
            probe's line).
    """
    try:
        if probe.prompt is not None:
            return inputs.encode_prompt(tokenizer, probe.prompt, max_positions=max_positions)
        if not getattr(tokenizer, "chat_template", None):
            raise TokenlensError('the tokenizer has no chat template for "messages"')
        thinking = inputs.thinking_kwargs(tokenizer, probe.thinking)
        text = tokenizer.apply_chat_template(
            list(probe.messages or ()), tokenize=False, add_generation_prompt=True, **thinking
        )
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])  # the template has its own
        return inputs.check_prompt_ids(ids, len(tokenizer), max_positions)
    except TokenlensError as exc:
        raise TokenlensError(f"{probe.where}: {exc}") from exc


def target_id(tokenizer: Any, probe: Probe, vocab_size: int) -> int | None:
    """The probe's target as one token id (``None`` without a target).

    Raises:
        TokenlensError: The target is several tokens (message names the probe).
    """
    if probe.target is None:
        return None
    try:
        token = inputs.target_from_text(tokenizer, probe.target)
        return inputs.check_target_id(tokenizer, token, vocab_size)
    except MultiTokenTarget as exc:
        raise TokenlensError(
            f"{probe.where}: {exc.base}; a probe tracks one token: use its first, {exc.pieces[0]!r}"
        ) from exc
    except TokenlensError as exc:
        raise TokenlensError(f"{probe.where}: {exc}") from exc

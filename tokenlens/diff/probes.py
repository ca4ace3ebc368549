"""Probe sets: the prompts whose next-token choice a diff compares and a check judges.

A probe file is JSONL, one object per line::

    {"prompt": "The capital of France is", "target": " Lyon", "expect": "changed", "group": "edit"}
    {"messages": [{"role": "user", "content": "Capital of Italy?"}], "expect": "unchanged"}

``prompt`` (plain text) or ``messages`` (chat turns, rendered with the model's chat template), an
optional ``target``, ``expect`` (``changed`` needs a target; ``unchanged`` marks a control; absent: reported,
not judged), ``group``, ``position`` and, with ``messages``, ``thinking`` (``false``: Qwen3's non-thinking
mode, whose generation prompt ends in an empty ``<think>`` block; ``true``: thinking mode; absent: the chat
template's own default).

Whole answers: a ``target`` of several tokens is an answer, scored teacher-forced after the prompt and judged
on its sequence log-probability gain, or, with ``"judge": "greedy"``, on the tuned model's greedy decoding
reproducing it (``judge`` also makes a one-token target an answer). ``"generate": N`` (no target) lets base
and tuned each decode N tokens greedily and compares the continuations. Answers follow the whole prompt, so
they take no ``position``. Every line is validated before any model runs; a bad line is reported with its
line number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenlens.attribution import inputs
from tokenlens.attribution.sequence_inputs import check_context, completion_ids
from tokenlens.diff.result import Probe
from tokenlens.errors import MultiTokenTarget, TokenlensError, option

EXPECT = ("changed", "unchanged")
JUDGES = ("logprob", "greedy")
_KEYS = {"prompt", "messages", "target", "expect", "group", "position", "thinking", "generate", "judge"}


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
    generate, judge = _answer_keys(record, where, target)
    return Probe(
        prompt=prompt,
        messages=None if messages is None else tuple(dict(m) for m in messages),
        target=target,
        expect=expect,
        group=_optional_str(record, "group", where),
        position=position,
        line=number,
        thinking=thinking,
        generate=generate,
        judge=judge,
    )


def _answer_keys(record: dict, where: str, target: str | None) -> tuple[int | None, str | None]:
    """``generate`` and ``judge``, checked against each other, the target and the position."""
    generate, judge = record.get("generate"), record.get("judge")
    if generate is not None:
        if isinstance(generate, bool) or not isinstance(generate, int) or generate < 1:
            raise TokenlensError(
                f'{where}: "generate" must be a number of tokens, 1 or more, not {generate!r}'
            )
        if target is not None:
            raise TokenlensError(
                f'{where}: "generate" lets both models write the answer: give it or a "target", not both'
            )
    if judge is not None:
        if judge not in JUDGES:
            raise TokenlensError(f'{where}: "judge" must be "logprob" or "greedy", got {judge!r}')
        if target is None:
            raise TokenlensError(
                f'{where}: "judge" says how a "target" answer is judged: it needs a "target"'
            )
    if (generate is not None or judge is not None) and "position" in record:
        raise TokenlensError(f'{where}: an answer follows the whole prompt: drop "position"')
    return generate, judge


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
    return encode_probe_text(tokenizer, probe, max_positions)[0]


def encode_probe_text(tokenizer: Any, probe: Probe, max_positions: int | None) -> tuple[list[int], str]:
    """:func:`encode_probe`, and the text those ids encode (the chat template's text for ``messages``)."""
    try:
        if probe.prompt is not None:
            ids = inputs.encode_prompt(tokenizer, probe.prompt, max_positions=max_positions)
            return ids, probe.prompt
        if not getattr(tokenizer, "chat_template", None):
            raise TokenlensError('the tokenizer has no chat template for "messages"')
        thinking = inputs.thinking_kwargs(tokenizer, probe.thinking)
        text = tokenizer.apply_chat_template(
            list(probe.messages or ()), tokenize=False, add_generation_prompt=True, **thinking
        )
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])  # the template has its own
        return inputs.check_prompt_ids(ids, len(tokenizer), max_positions), text
    except TokenlensError as exc:
        raise TokenlensError(f"{probe.where}: {exc}") from exc


def target_id(tokenizer: Any, probe: Probe, vocab_size: int) -> int | None:
    """The probe's target as one token id (``None`` without a target); for a target of several tokens, its
    first token on its own (the next token an answer probe's split tracks is its first answer token as
    tokenized after the prompt: :func:`answer_ids`).

    Raises:
        TokenlensError: A target that encodes to no known token (message names the probe).
    """
    if probe.target is None:
        return None
    try:
        token = inputs.target_from_text(tokenizer, probe.target)
        return inputs.check_target_id(tokenizer, token, vocab_size)
    except MultiTokenTarget:
        first = tokenizer(probe.target, add_special_tokens=False)["input_ids"][0]
        return inputs.check_target_id(tokenizer, int(first), vocab_size)
    except TokenlensError as exc:
        raise TokenlensError(f"{probe.where}: {exc}") from exc


def is_answer(tokenizer: Any, probe: Probe) -> bool:
    """Whether the probe is about a whole answer: ``generate``, ``judge``, or a target of several tokens."""
    if probe.generate is not None or probe.judge is not None:
        return True
    return (
        probe.target is not None and len(tokenizer(probe.target, add_special_tokens=False)["input_ids"]) > 1
    )


def answer_ids(
    tokenizer: Any,
    probe: Probe,
    prompt_ids: list[int],
    fed_text: str,
    vocab_size: int,
    max_positions: int | None,
) -> tuple[list[int], tuple[str, ...]]:
    """A target answer's token ids after the prompt (tokenized with it, as the model reads the text whole; see
    :func:`tokenlens.attribution.sequence_inputs.completion_ids`) and the notes on how.

    Raises:
        TokenlensError: No target, an answer with ids past the vocabulary, or prompt + answer past the model's
            context (message names the probe).
    """
    if probe.target is None:
        raise ValueError("answer_ids needs a probe with a target")
    try:
        ids, _, notes = completion_ids(
            tokenizer, prompt_ids, fed_text, probe.target, chat=probe.messages is not None
        )
        for token in ids:
            inputs.check_target_id(tokenizer, token, vocab_size)
        check_context(len(prompt_ids), len(ids), max_positions, "target")
        return ids, notes
    except TokenlensError as exc:
        raise TokenlensError(f"{probe.where}: {exc}") from exc


def check_generate(probe: Probe, prompt_length: int, max_positions: int | None) -> None:
    """Refuse a ``generate`` probe whose prompt and continuation run past the model's context.

    Raises:
        TokenlensError: Naming the probe.
    """
    try:
        check_context(prompt_length, probe.generate or 0, max_positions, "continuation")
    except TokenlensError as exc:
        raise TokenlensError(f"{probe.where}: {exc}") from exc

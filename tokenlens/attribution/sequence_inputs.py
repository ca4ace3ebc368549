"""The answer of a whole-answer attribution: a completion's tokens, or tokens the model generates.

**How a completion becomes tokens.** BPE tokenizers are not compositional: ``tokens(prompt + completion)`` is
not always ``tokens(prompt) + tokens(completion)`` (a completion starting without a space can merge with the
prompt's last word, and a completion's first word tokenizes differently after a space). The default is
**joint**: prompt and completion are encoded together, as the model reads the text whole, and the answer is
the tokens after the prompt's own tokens. That needs the prompt's tokens to be a prefix of the joint tokens;
where joint tokenization merges across the boundary they are not, and the completion is encoded on its own
and appended instead (**separate**), with a note saying so. Separate encoding can also be asked for. Where the
two encodings give different answer tokens, a note says so and names both.

**Generation.** Greedy by default: at each step the top-1 token among ids the tokenizer can decode (the same
rule as the default target of a single prediction); with ``sample`` a draw from ``softmax(logits / T)`` over
those ids, from a generator seeded with ``seed``. Each step reruns the model on the whole prefix (no cache),
which works for every wrapper (prompt tuning included); generation stops early after the end-of-sequence
token, which is then the answer's last token.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tokenlens.attribution import inputs
from tokenlens.errors import TokenlensError, option
from tokenlens.models.specs import ArchitectureSpec

TOKENIZATIONS = ("joint", "separate")


def check_generation(
    generate: int | None, sample: bool, temperature: float | None, seed: int | None
) -> tuple[float | None, int | None]:
    """The sampling settings to use, checked (``(None, None)`` when greedy).

    Raises:
        TokenlensError: ``generate`` below 1 or not an integer, ``sample`` without ``generate``, a temperature
            that is not a positive finite number, or a temperature or seed without ``sample``.
    """
    if generate is not None and (isinstance(generate, bool) or not isinstance(generate, int) or generate < 1):
        raise TokenlensError(f"{option('generate')} must be a number of tokens, 1 or more, not {generate!r}")
    if sample and generate is None:
        raise TokenlensError(
            f"{option('sample', True)} samples a generated answer: add {option('generate', 'N')}"
        )
    if not sample:
        if temperature is not None or seed is not None:
            what = option("temperature") if temperature is not None else option("seed")
            raise TokenlensError(f"{what} only applies when sampling: add {option('sample', True)}")
        return None, None
    temperature = 1.0 if temperature is None else temperature
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TokenlensError(f"{option('temperature')} must be a number, not {temperature!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise TokenlensError(f"{option('temperature')} must be above 0 (and finite), not {temperature}")
    seed = 0 if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TokenlensError(f"{option('seed')} must be an integer, not {seed!r}")
    return float(temperature), seed


def completion_ids(
    tokenizer: Any,
    prompt_ids: Sequence[int],
    fed_text: str,
    completion: str,
    *,
    chat: bool = False,
    tokenize: str = "joint",
) -> tuple[list[int], str, tuple[str, ...]]:
    """The completion's tokens after the prompt, how they were made, and the notes for the reader.

    Args:
        tokenizer: The model's tokenizer.
        prompt_ids: The prompt's tokens as fed to the model.
        fed_text: The text those tokens encode (the chat template's text with ``chat``).
        completion: The completion text.
        chat: The prompt was wrapped with the chat template (its text then carries its special tokens).
        tokenize: ``joint`` (default) or ``separate`` (see the module text).

    Returns:
        ``(answer ids, "joint" | "separate", notes)``.

    Raises:
        TokenlensError: An empty completion, one that encodes to no tokens, or an unknown ``tokenize``.
    """
    inputs.check_text(completion, "completion")
    if completion == "":
        raise TokenlensError("the completion is empty: give the text of the answer to explain")
    if tokenize not in TOKENIZATIONS:
        raise TokenlensError(f"{option('tokenize')} must be joint or separate, not {tokenize!r}")
    separate = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if not separate:
        raise TokenlensError(f"the completion {completion!r} encodes to no tokens")
    joint_all = list(tokenizer(fed_text + completion, add_special_tokens=not chat)["input_ids"])
    n = len(prompt_ids)
    prefix = joint_all[:n] == list(prompt_ids) and len(joint_all) > n
    joint = joint_all[n:] if prefix else None

    def pieces(ids: Sequence[int]) -> str:
        return f"{len(ids)} token{'s' * (len(ids) != 1)}: " + ", ".join(
            repr(inputs.decode_token(tokenizer, i)) for i in ids
        )

    if tokenize == "separate":
        notes = ()
        if joint is not None and joint != separate:
            notes = (
                f"the completion was tokenized on its own, as asked ({pieces(separate)}); tokenized with the "
                f"prompt, as the model reads the text whole, it would be {pieces(joint)}",
            )
        elif joint is None:
            notes = (
                "the completion was tokenized on its own, as asked; tokenized with the prompt it would merge "
                "across the boundary (the prompt's tokens are not a prefix of the joint tokens)",
            )
        return separate, "separate", notes
    if joint is None:
        note = (
            "prompt and completion tokenized together merge across their boundary (the prompt's tokens are "
            "not a prefix of the joint tokens), so the completion was tokenized on its own and appended "
            f"({pieces(separate)}): the model may tokenize this text differently when it reads it whole"
        )
        return separate, "separate", (note,)
    if joint != separate:
        note = (
            f"the completion tokenizes differently after the prompt ({pieces(joint)}) than on its own "
            f"({pieces(separate)}); explained as it tokenizes after the prompt, as the model reads the text"
        )
        return joint, "joint", (note,)
    return joint, "joint", ()


def check_answer_ids(ids: Sequence[int], limit: int) -> list[int]:
    """A completion given as token ids: integers the tokenizer can decode, at least one.

    Raises:
        TokenlensError: Empty, not integers, or an id outside ``0 .. limit - 1``.
    """
    if isinstance(ids, (bytes, bytearray)):
        raise TokenlensError("a completion must be text (str) or a sequence of integer token ids")
    checked = []
    for value in ids:
        if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
            raise TokenlensError(f"completion token ids must be integers, not {value!r}")
        checked.append(operator.index(value))
    if not checked:
        raise TokenlensError("the completion is empty: give at least one token id")
    bad = [i for i in checked if not 0 <= i < limit]
    if bad:
        raise TokenlensError(
            f"completion token id {bad[0]} is outside the vocabulary (valid ids: 0..{limit - 1})"
        )
    return checked


def check_context(prompt_len: int, answer_len: int, max_positions: int | None, what: str) -> None:
    """Refuse a prompt and answer longer than the model's context.

    Raises:
        TokenlensError: ``prompt_len + answer_len > max_positions``.
    """
    if max_positions is not None and prompt_len + answer_len > max_positions:
        raise TokenlensError(
            f"the prompt ({prompt_len} tokens) and the {what} ({answer_len} tokens) run past the model's "
            f"context of {max_positions} tokens"
        )


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    spec: ArchitectureSpec,
    prompt_ids: Sequence[int],
    steps: int,
    *,
    limit: int,
    eos_id: int | None,
    temperature: float | None = None,
    seed: int | None = None,
) -> tuple[list[int], bool]:
    """Up to ``steps`` tokens after ``prompt_ids``: greedy, or sampled at ``temperature`` with ``seed``.

    Args:
        limit: Only ids below it are chosen (the ones the tokenizer can decode).
        eos_id: Stop after this token (``None``: never stop early).

    Returns:
        The generated ids and whether generation stopped early at ``eos_id``.

    Raises:
        TokenlensError: The model produced NaN or infinite logits.
    """
    device = spec.module(model, spec.embed).weight.device
    ids = list(prompt_ids)
    generator = None if temperature is None else torch.Generator().manual_seed(seed or 0)
    out: list[int] = []
    for step in range(steps):
        tensor = torch.tensor([ids], device=device)
        logits = model(input_ids=tensor, use_cache=False, logits_to_keep=1).logits[0, -1].double().cpu()
        scores = logits[:limit]
        if not torch.isfinite(scores).all():
            raise TokenlensError(
                f"the model produced NaN or infinite logits while generating token {step} (overflow in a "
                f"low-precision dtype? try {option('dtype', 'float32')}; or the weights are corrupt)"
            )
        if generator is None:
            chosen = int(inputs.top_tokens(scores, limit, 1)[0])
        else:
            probs = (scores / temperature).softmax(-1)
            chosen = int(torch.multinomial(probs, 1, generator=generator)[0])
        ids.append(chosen)
        out.append(chosen)
        if eos_id is not None and chosen == eos_id:
            return out, step + 1 < steps
    return out, False

"""``layers=auto``: choose the layers a method adapts by locating where the model carries its target.

A method option ``layers=auto`` is resolved before training by a causal trace
(:func:`tokenlens.causal.locate.locate_ids`) of the training file's first example that has a loss: its
tokens before the first loss token are the prompt, that token is the target, every prompt position but the
last is noised. When that line names a ``"subject"`` (a fact edit), the trace follows the protocol for facts
instead: the subject's tokens are noised and the watched token is the model's **current** answer (the fact
the edit overwrites: " Paris", not the new " Lyon" the base model does not carry). The located MLP window
(e.g. layers 5–9 on SmolLM2-135M for "The capital of France is" → " Paris") becomes the option's value,
and the manifest keeps the location as ``located``: the sentence, position, token, watched token and peak.
The noise is seeded, so the same data locates the same layers again (a resumed run checks that).
"""

from __future__ import annotations

from typing import Any

import torch

from tokenlens.attribution.inputs import decode_token
from tokenlens.causal.locate import locate_ids
from tokenlens.causal.results import Metric
from tokenlens.errors import TokenlensError
from tokenlens.options import AUTO
from tokenlens.training.data import IGNORE, TrainingData


def auto_layers(
    loaded: Any, data: TrainingData, options: dict[str, Any]
) -> tuple[dict[str, Any], dict | None]:
    """``options`` with ``layers=auto`` replaced by the located layers, and the location for the manifest
    (``None`` when nothing was located).

    Raises:
        TokenlensError: No example has a loss token after at least two prompt tokens, or nothing to locate.
    """
    if options.get("layers") != AUTO:
        return options, None
    for example in data.examples:
        first = next((k for k, label in enumerate(example.labels) if label != IGNORE), None)
        if first is not None and first >= 2:
            break
    else:
        raise TokenlensError(
            "layers=auto locates the first example's target, but no example has a completion after at least "
            "two prompt tokens: give the layers (layers=5,6,7)"
        )
    ids = torch.tensor([example.input_ids[:first]])
    target = example.input_ids[first]
    noised = example.subject or None
    if noised is not None:
        with torch.no_grad():
            target = int(loaded.model(input_ids=ids).logits[0, -1].argmax())
    tokens = [decode_token(loaded.tokenizer, i) for i in ids[0].tolist()]
    metric = Metric("prob", target, first - 1, target_text=decode_token(loaded.tokenizer, target))
    try:
        location = locate_ids(loaded.model, loaded.spec, ids, metric, noised, tokens=tokens)
    except TokenlensError as exc:
        raise TokenlensError(f"layers=auto (data line {example.line}): {exc}") from None
    located = {
        "line": example.line,
        "sentence": location.sentence(),
        "position": location.position,
        "token": location.token,
        "watched": decode_token(loaded.tokenizer, target),
        "layers": list(location.layer_list),
        "peak": location.peak,
        "weak": location.weak,
    }
    return {**options, "layers": list(location.layer_list)}, located

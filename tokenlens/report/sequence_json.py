"""JSON form of a whole-answer attribution (schema in the README): one single-position object per step,
as :func:`~tokenlens.report.json_report.attribution_to_dict` writes it, and the answer's log-probability
split."""

from __future__ import annotations

from typing import Any

from tokenlens.attribution.sequence_result import SequenceAttribution
from tokenlens.report.json_report import SCHEMA_VERSION, attribution_to_dict
from tokenlens.report.kit.text import finite_json
from tokenlens.version import __version__


def sequence_to_dict(result: SequenceAttribution) -> dict[str, Any]:
    """A JSON-ready dict: the prompt, the answer, ``steps`` (one single-position result each) and
    ``sequence`` (``log p(answer)`` and its exact split)."""
    s = result.sequence
    generation = result.generation
    data = {
        "schema": SCHEMA_VERSION,
        "tokenlens_version": __version__,
        "model": result.model,
        "prompt": result.prompt,
        "chat": result.chat,
        "tokens": [
            {"id": i, "token": t} for i, t in zip(result.prompt_ids, result.prompt_tokens, strict=True)
        ],
        "answer": {
            "source": result.source,
            "completion": result.completion,
            "tokenization": result.tokenization,
            "generation": None
            if generation is None
            else {
                "steps": generation.steps,
                "sample": generation.sample,
                "temperature": generation.temperature,
                "seed": generation.seed,
                "stopped": generation.stopped,
            },
        },
        "notes": list(result.notes),
        "explained": result.quantity,
        "steps": [attribution_to_dict(step) for step in result.steps],
        "sequence": {
            "tokens": [
                {"id": i, "token": t, "logprob": lp}
                for i, t, lp in zip(
                    result.answer_ids, result.answer_tokens, s.step_logprobs.tolist(), strict=True
                )
            ],
            "logprob": s.logprob,
            "components": [{"name": n, "logprob": v} for n, v in s.as_dict().items()],
            "check": {
                "sum_of_components": s.total,
                "error": s.error,
                "tolerance": s.tolerance,
                "exact": s.exact,
            },
        },
    }
    return finite_json(data)

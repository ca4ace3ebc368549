"""JSON form of an attribution result: complete, with stable keys (schema in the README)."""

from __future__ import annotations

import json
from typing import Any

from tokenlens import __version__
from tokenlens.attribution.result import LogitAttribution, TokenScore

SCHEMA_VERSION = 1


def _score(score: TokenScore) -> dict[str, Any]:
    return {"id": score.id, "token": score.token, "logit": score.logit, "prob": score.prob}


def attribution_to_dict(result: LogitAttribution) -> dict[str, Any]:
    """A JSON-ready dict; ``components`` lists the exact split in model order."""
    d = result.decomposition
    return {
        "schema": SCHEMA_VERSION,
        "tokenlens_version": __version__,
        "model": result.model,
        "prompt": result.prompt,
        "chat": result.chat,
        "tokens": [{"id": i, "token": t} for i, t in zip(result.token_ids, result.tokens, strict=False)],
        "position": result.position,
        "target": {"id": result.target.id, "token": result.target.token},
        "logit": result.target.logit,
        "logprob": result.logprob,
        "prob": result.target.prob,
        "components": [{"name": n, "logit": v} for n, v in d.as_dict().items()],
        "check": {
            "sum_of_components": d.total,
            "error": d.error,
            "tolerance": d.tolerance,
            "exact": d.exact,
            "stream_error": d.stream_error,
        },
        "final_norm_scale": d.scale,
        "top": [_score(s) for s in result.top],
        "dtype": result.dtype,
        "device": result.device,
    }


def attribution_to_json(result: LogitAttribution) -> str:
    """:func:`attribution_to_dict` serialised with two-space indentation and a trailing newline."""
    return json.dumps(attribution_to_dict(result), indent=2, ensure_ascii=False) + "\n"

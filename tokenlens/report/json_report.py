"""JSON form of an attribution result and the sections shown beside it: complete, with stable keys (schema in
the README)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenlens.attribution.result import LogitAttribution, TokenScore
from tokenlens.report.layout import split_rows
from tokenlens.report.sections import section_kind
from tokenlens.version import __version__

SCHEMA_VERSION = 1


def _score(score: TokenScore) -> dict[str, Any]:
    return {"id": score.id, "token": score.token, "logit": score.logit, "prob": score.prob}


def attribution_to_dict(
    result: LogitAttribution, sections: Sequence[tuple[str, object]] = ()
) -> dict[str, Any]:
    """A JSON-ready dict; ``components`` lists the exact split in model order.

    Each section given as ``(key, result)`` (:mod:`tokenlens.report.sections`) adds its JSON form under its
    key, after the attribution's own keys.

    Raises:
        ValueError: An unknown section key.
    """
    d = result.decomposition
    data = {
        "schema": SCHEMA_VERSION,
        "tokenlens_version": __version__,
        "model": result.model,
        "prompt": result.prompt,
        "chat": result.chat,
        "tokens": [{"id": i, "token": t} for i, t in zip(result.token_ids, result.tokens, strict=False)],
        "position": result.position,
        "virtual_tokens": result.virtual_tokens,
        "target": {"id": result.target.id, "token": result.target.token},
        "logit": result.target.logit,
        "logprob": result.logprob,
        "prob": result.target.prob,
        "contrast": None
        if result.contrast is None
        else {"id": result.contrast.id, "token": result.contrast.token},
        "explained": {
            "quantity": result.quantity,
            "value": d.logit,
        },
        "components": [{"name": n, "logit": v} for n, v in d.as_dict().items()],
        **_finer(result),
        "check": {
            "sum_of_components": d.total,
            "error": d.error,
            "tolerance": d.tolerance,
            "exact": d.exact,
            "stream_error": d.stream_error,
            "model_value": d.model_value,
        },
        "final_norm_scale": d.scale,
        "top": [_score(s) for s in result.top],
        "dtype": result.dtype,
        "device": result.device,
    }
    data.update({key: section_kind(key).to_dict(value) for key, value in sections})
    return data


def _finer(result: LogitAttribution) -> dict[str, Any]:
    """The finer splits asked for, under their own keys; each entry names its parent component."""
    out: dict[str, Any] = {}
    residuals: dict[str, dict[str, float]] = {}
    if result.heads is not None:
        out["heads"] = [
            {"name": name, "parent": name.split(".")[0] + ".attn", "logit": value}
            for name, value in result.heads.as_dict().items()
        ]
        residuals["heads"] = {f"L{i}.attn": v for i, v in enumerate(result.heads.residual.tolist())}
    for kind, extra in (("neurons", "activation"), ("experts", "router_weight")):
        parts = getattr(result, kind)
        if parts is None:
            continue
        out[kind] = [
            {"name": name, "parent": parent, "logit": value, extra: x}
            for name, parent, value, x in split_rows(result, kind)
        ]
        residuals[kind] = {f"L{layer}.mlp": v for layer, v in zip(parts.layers, parts.residual.tolist())}
    if result.sources:
        entries = []
        for split in result.sources:
            parent = split.name if split.head is not None else f"L{split.layer}.attn"
            for j in range(result.source_end):
                entries.append(
                    {
                        "name": f"{split.name}.S{j}",
                        "parent": parent,
                        "position": j,
                        "token": result.source_tokens[j],
                        "logit": float(split.contributions[j]),
                        "attention": split.pattern[:, j].tolist(),
                    }
                )
            entries.append({"name": f"{split.name}.v_bias", "parent": parent, "logit": split.value_bias})
        out["sources"] = entries
        residuals["sources"] = {split.name: split.residual for split in result.sources}
    if residuals:
        out["split_residuals"] = residuals
    return out

"""JSON form of an attribution result: complete, with stable keys (schema in the README)."""

from __future__ import annotations

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
    if result.neurons is not None:
        n = result.neurons
        out["neurons"] = [
            {"name": f"L{layer}.N{nid}", "parent": f"L{layer}.mlp", "logit": value, "activation": act}
            for row, layer in enumerate(n.layers)
            for nid, value, act in zip(
                n.ids[row].tolist(), n.contributions[row].tolist(), n.activations[row].tolist(), strict=False
            )
        ]
        residuals["neurons"] = {
            f"L{layer}.mlp": v for layer, v in zip(n.layers, n.residual.tolist(), strict=False)
        }
    if result.experts is not None:
        e = result.experts
        out["experts"] = [
            {"name": f"L{layer}.E{eid}", "parent": f"L{layer}.mlp", "logit": value, "router_weight": weight}
            for row, layer in enumerate(e.layers)
            for eid, value, weight in zip(
                e.expert_ids[row].tolist(),
                e.contributions[row].tolist(),
                e.router_weights[row].tolist(),
                strict=False,
            )
        ]
        residuals["experts"] = {
            f"L{layer}.mlp": v for layer, v in zip(e.layers, e.residual.tolist(), strict=False)
        }
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

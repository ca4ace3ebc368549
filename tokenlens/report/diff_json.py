"""The JSON form of a base-vs-tuned diff (rendering only: reads a :class:`~tokenlens.diff.result.DiffReport`).

It carries every number any view shows; values that were not measured (a component's causal effect, an
unused estimate) are ``null``, never a made-up zero. Two kinds of per-component numbers are kept apart:
*direct* terms of the exact telescoping split, *causal* effects MEASURED by patching, and first-order
ESTIMATES from attribution patching, always labelled as estimates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenlens.attribution.result import TokenScore
from tokenlens.diff.result import (
    READOUT_TERMS,
    AggregateRow,
    ComponentEffect,
    Continuations,
    CorpusDrift,
    DiffReport,
    ProbeDiff,
    TargetAnswer,
    Telescope,
)
from tokenlens.report.diff_layout import CORPUS_PROTOCOL, drills, probe_number, verdict_summary
from tokenlens.report.kit.text import json_number
from tokenlens.version import __version__

SCHEMA_VERSION = 4
"""4: ``metrics`` (the knowledge-editing metrics, each with its protocol) and ``corpus`` (the drift over a
held-out text, ``null`` without ``--corpus``); ``passed`` also fails on a judged corpus. 3: whole answers:
each probe has ``generate``, ``judge``, ``contrast`` and ``answer``; at a continuation's
divergence ``split`` is of ``logit[tuned token] − logit[base token]`` (``split.contrast_id``) and
``flip_split`` is ``null`` (it would repeat it). 2: probes are numbered as everywhere else (``number``: the
probe file's line, else the command-line prompt's place from 1) and ``failures`` lists those numbers; 1 had a
0-based ``index``."""


def _score(s: TokenScore) -> dict[str, Any]:
    return {"id": s.id, "token": s.token, "logit": json_number(s.logit), "prob": json_number(s.prob)}


def _effect(effect: ComponentEffect) -> dict[str, Any]:
    return {
        "name": effect.name,
        "direct": json_number(effect.direct),
        "causal": json_number(effect.causal),
        "causal_kl": json_number(effect.causal_kl),
        "causal_reverse": json_number(effect.causal_reverse),
        "causal_estimate": json_number(effect.estimate),  # an ESTIMATE (attribution patching)
    }


def _telescope(split: Telescope) -> dict[str, Any]:
    return {
        "target_id": split.target_id,
        "contrast_id": split.contrast_id,
        "base_value": json_number(split.base_value),
        "tuned_value": json_number(split.tuned_value),
        "observed": json_number(split.observed),
        "total": json_number(split.total),
        "error": json_number(split.error),
        "exact": split.exact,
        "terms": {name: json_number(v) for name, v in split.as_dict().items()},
    }


def _aggregate(rows: Sequence[AggregateRow]) -> list[dict[str, Any]]:
    return [
        {
            "name": r.name,
            "mean_abs_causal": json_number(r.mean_abs_causal),
            "mean_abs_direct": json_number(r.mean_abs_direct),
            "measured": r.measured,
            "probes": r.probes,
        }
        for r in rows
    ]


def _answer(answer: TargetAnswer | Continuations | None) -> dict[str, Any] | None:
    """A probe's answer: ``kind`` ``target`` (a target answer scored by both models) or ``generate`` (both
    greedy continuations); ``null`` for a next-token probe. Token positions (``divergence``,
    ``base_departs``, ``tuned_departs``) are 0-based indices into the answer."""
    if isinstance(answer, TargetAnswer):
        return {
            "kind": "target",
            "judge": answer.judge,
            "text": answer.text,
            "base_logprob": json_number(answer.base_logprob),
            "tuned_logprob": json_number(answer.tuned_logprob),
            "gain": json_number(answer.gain),  # nats of the whole target
            "base_departs": answer.departs("base"),
            "tuned_departs": answer.departs("tuned"),
            "tokens": [
                {
                    "id": i,
                    "token": t,
                    "base_logprob": json_number(b),
                    "tuned_logprob": json_number(u),
                    "base_top": _score(bt),
                    "tuned_top": _score(tt),
                    "kl": json_number(kl),
                }
                for i, t, b, u, bt, tt, kl in zip(
                    answer.ids,
                    answer.tokens,
                    answer.base_logprobs,
                    answer.tuned_logprobs,
                    answer.base_top,
                    answer.tuned_top,
                    answer.kl,
                    strict=True,
                )
            ],
            "notes": list(answer.notes),
        }
    if isinstance(answer, Continuations):
        return {
            "kind": "generate",
            "steps": answer.steps,
            "base": [{"id": i, "token": t} for i, t in zip(answer.base_ids, answer.base_tokens, strict=True)],
            "tuned": [
                {"id": i, "token": t} for i, t in zip(answer.tuned_ids, answer.tuned_tokens, strict=True)
            ],
            "base_text": "".join(answer.base_tokens),
            "tuned_text": "".join(answer.tuned_tokens),
            "divergence": answer.divergence,
            "kl": [json_number(v) for v in answer.kl],  # before each base token, KL(base || tuned)
            "mean_kl": json_number(answer.mean_kl),
            "max_kl": json_number(answer.max_kl),
        }
    return None


def _metrics(report: DiffReport) -> list[dict[str, Any]]:
    """The editing metrics: ``share`` is ``hits / total`` (``null`` over no probe); ``top1`` (intended-probe
    metrics) and ``mean_kl`` (locality) are ``null`` where they do not apply."""
    return [
        {
            "name": m.name,
            "hits": m.hits,
            "total": m.total,
            "share": json_number(m.share),
            "top1": m.top1,
            "mean_kl": json_number(m.mean_kl),
            "protocol": m.protocol,
        }
        for m in report.metrics
    ]


def _corpus(c: CorpusDrift | None) -> dict[str, Any] | None:
    """The drift over a held-out text; each most-drifted context with its passage (0-based), token position
    (0-based, in the passage), KL, both top-1 tokens, the context text, its exact split and components."""
    if c is None:
        return None
    return {
        "source": c.source,
        "split": c.split,
        "window": c.window,
        "passages": c.passages,
        "tokens": c.tokens,
        "unscored": c.unscored,
        "mean_kl": json_number(c.mean_kl),
        "p99_kl": json_number(c.p99_kl),
        "max_kl": json_number(c.max_kl),
        "top1_changed": c.top1_changed,
        "top1_changed_share": json_number(c.top1_share),
        "threshold": json_number(c.threshold),
        "passed": c.passed,
        "reason": c.reason,
        "protocol": CORPUS_PROTOCOL,
        "drifted": [
            {
                "passage": d.passage,
                "position": d.position,
                "kl": json_number(d.kl),
                "changed": d.changed,
                "base_top1": _score(d.base_top1),
                "tuned_top1": _score(d.tuned_top1),
                "context": d.text,
                "tokens": [{"id": i, "token": t} for i, t in zip(d.probe.token_ids, d.probe.tokens)],
                "split": _telescope(d.probe.split),
                "components": [_effect(e) for e in d.probe.components],
                "notes": list(d.probe.notes),
            }
            for d in c.drifted
        ],
    }


def probe_to_dict(index: int, p: ProbeDiff) -> dict[str, Any]:
    """One probe's JSON form (see :func:`diff_to_dict`); ``index`` is its place in the report (0-based)."""
    probe, split = p.probe, p.split
    return {
        "number": probe_number(p, index),
        "label": probe.label,
        "prompt": probe.prompt,
        "messages": None if probe.messages is None else [dict(m) for m in probe.messages],
        "target": probe.target,
        "expect": probe.expect,
        "group": probe.group,
        "line": probe.line,
        "thinking": probe.thinking,
        "generate": probe.generate,
        "judge": probe.judge,
        "tokens": [{"id": i, "token": t} for i, t in zip(p.token_ids, p.tokens)],
        "position": p.position,
        "base_top": [_score(s) for s in p.base_top],
        "tuned_top": [_score(s) for s in p.tuned_top],
        "kl": json_number(p.kl),
        "js": json_number(p.js),
        "flipped": p.flipped,
        "tracked": {
            "id": p.tracked.id,
            "token": p.tracked.token,
            "base_logit": json_number(p.tracked.logit),
            "tuned_logit": json_number(p.tracked_tuned.logit),
            "base_prob": json_number(p.tracked.prob),
            "tuned_prob": json_number(p.tracked_tuned.prob),
            "prob_gain": json_number(p.prob_gain),
            "base_rank": p.base_rank,
            "tuned_rank": p.tuned_rank,
            "is_target": p.tracked_is_target,
        },
        "delta_logit": json_number(split.observed),
        "readout": {name: json_number(v) for name, v in zip(READOUT_TERMS, split.readout.tolist())},
        "split_error": json_number(split.error),
        "split": _telescope(split),
        "flip_split": None if p.flip_split is None else _telescope(p.flip_split),
        "contrast": None if p.contrast is None else _score(p.contrast),
        "answer": _answer(p.answer),
        **{key: [_effect(e) for e in effects] for key, effects in drills(p).items()},
        "verdict": {"expect": p.verdict.expect, "passed": p.verdict.passed, "reason": p.verdict.reason},
        "notes": list(p.notes),
    }


def diff_to_dict(report: DiffReport) -> dict[str, Any]:
    """A JSON-ready dict of the whole diff: plain floats, ints, strings, booleans and ``None`` only.

    NaN and infinite values (e.g. a mean over no measured probe) become ``None``, as do values that were
    not measured. Per probe, ``components``, ``heads``, ``neurons`` and ``experts`` are sorted by measured
    |causal| (unmeasured last, by |estimate|, then |direct|); ``split`` and ``flip_split`` hold every term
    of the exact telescoping split (``terms``: components in model order, then the readout terms).
    A probe about a whole answer has ``answer`` (see :func:`_answer`); at a continuation's divergence,
    ``tokens`` / ``position`` are the prefix (prompt + common continuation) and ``contrast`` the base token.
    Probes are numbered as in every other view and in ``tokenlens check`` (``probes[k].number``: the probe
    file's line, else the command-line prompt's place counted from 1); ``failures`` lists those numbers.
    """
    w = report.weights
    return {
        "tool": "tokenlens",
        "kind": "diff",
        "schema": SCHEMA_VERSION,
        "tokenlens_version": __version__,
        "base": report.base,
        "tuned": report.tuned,
        "pairing": report.pairing,
        "thresholds": {"min_gain": json_number(report.min_gain), "max_kl": json_number(report.max_kl)},
        "passed": report.passed,
        "judged": report.judged,
        "failures": [probe_number(p, i) for i, p in enumerate(report.probes) if p.verdict.passed is False],
        "summary": verdict_summary(report),
        "metrics": _metrics(report),
        "corpus": _corpus(report.corpus),
        "weights": {
            "changes": [
                {
                    "name": c.name,
                    "kind": c.kind,
                    "layer": c.layer,
                    "norm": json_number(c.norm),
                    "relative": json_number(c.relative),
                    "numel": c.numel,
                }
                for c in w.changes
            ],
            "unchanged": w.unchanged,
            "note": w.note,
            "layers": list(w.layers),
        },
        "aggregate": _aggregate(report.aggregate),
        "groups": {name: _aggregate(rows) for name, rows in report.groups.items()},
        "probes": [probe_to_dict(i, p) for i, p in enumerate(report.probes)],
    }

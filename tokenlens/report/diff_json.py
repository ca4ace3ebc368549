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
    DiffReport,
    ProbeDiff,
    Telescope,
)
from tokenlens.report.diff_layout import drills, probe_number, verdict_summary
from tokenlens.report.kit.text import json_number
from tokenlens.version import __version__

SCHEMA_VERSION = 2
"""2: probes are numbered as everywhere else (``number``: the probe file's line, else the command-line
prompt's place from 1) and ``failures`` lists those numbers; 1 had a 0-based ``index``."""


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

"""Several probes' forward passes as one: the requests a probe's diff makes, run for many probes together.

The diff engine (:mod:`tokenlens.diff.engine`) writes each probe's computation as steps: where a step needs
the model it yields a request and receives the result. There are four kinds:

* :class:`CaptureRequest` — both sides' captured runs (:func:`~tokenlens.diff.runs.capture_run`);
* :class:`GradientRequest` — the base run's activation and the tracked value's gradient at every site (one
  forward and backward: the attribution-patching estimates);
* :class:`RecordRequest` — site activations on each side (the drill-down's neurons and experts), from the
  first layer of the sites on, the earlier layers' stream taken from the captured runs;
* :class:`PatchRequest` — exact patching of activation changes (:func:`~tokenlens.diff.runs.patch_changes`).

:func:`run_requests` runs the pending requests of several probes: those of one kind share forward passes,
the prompts right-padded to the longest (:func:`pad_right`). Under causal attention no real position sees a
padded one and positions are not shifted, so every row computes what its probe alone would, up to the float
rounding of another batch shape (tested against one probe at a time to 1e-5). A small prompt's forward pass
costs about as much for one row as for dozens — the weights are read once per pass — so this is where a diff
of many probes saves most of its time. A prompt-tuned pair (virtual positions before the prompt) runs one
probe at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tokenlens.capture.internals import capture_internals
from tokenlens.capture.residual import capture_residual, component_names
from tokenlens.causal.effects import site_layer
from tokenlens.causal.estimates import activation_gradients, gradients_of
from tokenlens.causal.grids import default_batch, skip_layers
from tokenlens.causal.interventions import Edit, record, replace
from tokenlens.causal.metrics import Metric
from tokenlens.causal.sites import Site
from tokenlens.diff.pairing import ModelPair
from tokenlens.diff.runs import (
    Run,
    Tracked,
    capture_run,
    enter_at,
    patch_batch,
    patch_changes,
    read,
    record_sites,
    run_from,
    stream_sites,
)
from tokenlens.models.specs import ArchitectureSpec, bare_model

Sides = tuple[Run, Run]
"""A probe's captured runs: ``(base, tuned)``."""


@dataclass(frozen=True)
class CaptureRequest:
    """Both sides' :func:`~tokenlens.diff.runs.capture_run` of one probe; the result is :data:`Sides`.

    Attributes:
        input_ids: ``(1, seq)`` the probe's prompt.
        position: The prompt position captured.
        sites: The sites whose activations each run keeps over the whole prompt.
        splits: The layer internals kept: ``(base, tuned)``.
    """

    input_ids: torch.Tensor
    position: int
    sites: tuple[Site, ...]
    splits: tuple[frozenset[str], frozenset[str]]


@dataclass(frozen=True)
class GradientRequest:
    """The base run's activation and ``metric``'s gradient ``(1, seq, width)`` at every site; the result is
    a dict site name -> ``(activation, gradient)``, as from
    :func:`~tokenlens.causal.estimates.activation_gradients`."""

    input_ids: torch.Tensor
    metric: Metric
    sites: tuple[Site, ...]


@dataclass(frozen=True)
class RecordRequest:
    """Each site's activation ``(1, seq, width)`` on each side; the result is a dict side -> site name ->
    activation. ``runs`` are the probe's captured runs (side -> run), whose ``L{i}.resid`` streams let the
    passes start at the first layer of ``sites``."""

    input_ids: torch.Tensor
    sites: tuple[Site, ...]
    runs: Mapping[str, Run]


@dataclass(frozen=True)
class PatchRequest:
    """The arguments of one probe's :func:`patch_changes`, run with other probes' by :func:`patch_many`."""

    input_ids: torch.Tensor
    position: int
    tracked: Tracked
    changes: Mapping[str, tuple[Site, torch.Tensor]]
    reverse: bool
    runs: Mapping[str, Run] | None = None


PatchResult = dict[str, tuple[float, float, float | None]]


@dataclass(frozen=True)
class _Row:
    request: int
    name: str | None  # None: the request's unpatched row
    site: Site | None
    delta: torch.Tensor | None


def patch_many(pair: ModelPair, requests: Sequence[PatchRequest]) -> list[PatchResult]:
    """:func:`patch_changes` of several probes, their patched runs sharing forward passes.

    Rows of different probes are right-padded to the longest prompt (with an attention mask: under causal
    attention no real position sees a padded one, and positions are not shifted) and each probe's first
    row in every batch is its own unpatched run, against which its changes are measured, as in
    :func:`patch_changes`. Batches hold about :data:`~tokenlens.causal.grids.TOKENS_PER_BATCH` tokens
    (at most :data:`MAX_PATCH_ROWS` rows), are chosen to cost least (:func:`_chunks`), and start at their
    first changed layer from each probe's recorded stream. A prompt-tuned pair runs one probe at a time.
    """
    if pair.prompt_learning:
        return [
            patch_changes(pair, r.input_ids, r.position, r.tracked, r.changes, reverse=r.reverse, runs=r.runs)
            for r in requests
        ]
    out: list[dict[str, list]] = [
        {name: [0.0, 0.0, 0.0 if r.reverse else None] for name in r.changes} for r in requests
    ]
    rows = [
        _Row(k, name, site, delta)
        for k, r in enumerate(requests)
        for name, (site, delta) in r.changes.items()
        if torch.count_nonzero(delta)
    ]
    lengths = [r.input_ids.shape[1] for r in requests]
    limit = patch_batch(max(lengths))
    layers = len(pair.spec.layer_list(pair.tuned.model))
    for which, sign in (("base", 1.0), ("tuned", -1.0)):
        todo = [row for row in rows if which == "base" or requests[row.request].reverse]
        with pair.side(which) as model:
            for chunk in _chunks(todo, limit, lengths, layers):
                batch = [_Row(k, None, None, None) for k in dict.fromkeys(row.request for row in chunk)]
                batch += chunk
                logits = _padded_logits(model, pair.spec, requests, batch, sign, which)
                first = {row.request: i for i, row in enumerate(batch) if row.name is None}
                reference = logits[[first[row.request] for row in batch]]  # each row's unpatched run
                kl = _kl(reference, logits).tolist() if which == "base" else None
                for i, row in enumerate(batch):
                    if row.name is None:
                        continue
                    tracked = requests[row.request].tracked
                    change = float(read(logits[i], tracked) - read(reference[i], tracked))
                    if kl is not None:
                        out[row.request][row.name][:2] = [change, kl[i]]
                    else:
                        out[row.request][row.name][2] = change
    return [{name: (v[0], v[1], v[2]) for name, v in result.items()} for result in out]


def _kl(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """KL(base‖tuned) in nats of each row of ``(rows, vocab)`` float64 logits, as
    :func:`~tokenlens.diff.runs.divergences` computes it for one row (at least 0)."""
    log_p, log_q = base.log_softmax(-1), tuned.log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0.0)


PASS_OVERHEAD = 10
"""What one forward pass costs beyond its rows, per layer, in tokens of a row: reading the weights, the
module calls (about 1 ms per layer of SmolLM2-135M on one CPU thread, as much as ~10 tokens' arithmetic)."""


def _chunks(rows: list[_Row], limit: int, lengths: Sequence[int], layers: int) -> list[list[_Row]]:
    """``rows`` cut into batches of at most ``limit`` rows, counting each probe's unpatched row, so that the
    work is least.

    A batch runs every row, its probes' unpatched rows included, padded to its longest prompt, through the
    layers from its first changed one on: it costs about ``((rows + probes) × longest + PASS_OVERHEAD) ×
    (layers − first)`` row-token-layers. Rows are ordered by prompt length, then layer, and cut where that
    sum is least (dynamic programming over the cut points): batches of one prompt length need no padding,
    and batches of nearby layers skip the most.
    """
    order = sorted(rows, key=lambda row: (lengths[row.request], row.site.layer or 0, row.request))
    best = [0.0] + [math.inf] * len(order)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        probes: set[int] = set()
        first, longest = layers, 0
        for begin in range(end - 1, -1, -1):
            row = order[begin]
            probes.add(row.request)
            if end - begin + len(probes) > limit:
                break
            first = min(first, row.site.layer or 0)
            longest = max(longest, lengths[row.request])
            cost = best[begin] + ((end - begin + len(probes)) * longest + PASS_OVERHEAD) * (layers - first)
            if cost < best[end]:
                best[end], cut[end] = cost, begin
    chunks, end = [], len(order)
    while end > 0:
        chunks.append(order[cut[end] : end])
        end = cut[end]
    return chunks[::-1]


def pad_right(prompts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts ``(1, seq_r)`` as one batch ``(rows, longest)`` of ids and its attention mask, right-padded.

    Under causal attention no real position sees a later (padded) one and positions are not shifted, so
    each row's real positions compute what the prompt alone computes.
    """
    width = max(prompt.shape[1] for prompt in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for r, prompt in enumerate(prompts):
        n = prompt.shape[1]
        ids[r, :n] = prompt[0]
        ids[r, n:] = prompt[0, -1]  # any token: nothing real attends to it
        mask[r, :n] = 1
    return ids, mask


def _padded_logits(
    model: nn.Module,
    spec: ArchitectureSpec,
    requests: Sequence[PatchRequest],
    batch: Sequence[_Row],
    sign: float,
    which: str,
) -> torch.Tensor:
    """The logits ``(len(batch), vocab)`` float64 of each row's probe at its position, rows right-padded."""
    ids, mask = pad_right([requests[row.request].input_ids for row in batch])
    by_site: dict[Site, list[tuple[int, torch.Tensor]]] = {}
    for r, row in enumerate(batch):
        if row.site is not None:
            by_site.setdefault(row.site, []).append((r, sign * row.delta))

    def add(changes: list[tuple[int, torch.Tensor]]) -> Edit:
        def edit(a: torch.Tensor) -> torch.Tensor:
            new = a.clone()
            for r, delta in changes:
                new[r : r + 1, : delta.shape[1]] = a[r : r + 1, : delta.shape[1]] + delta.to(a)
            return new

        return edit

    edits: dict[Site, Edit] = {site: add(changes) for site, changes in by_site.items()}
    runs = [requests[row.request].runs for row in batch]
    start, skip = enter_at(site_layer(list(by_site)), [r[which].values if r else None for r in runs])
    edits |= start
    positions = sorted({requests[row.request].position for row in batch})
    with torch.no_grad(), replace(model, spec, edits), skip_layers(model, spec, skip):
        output = _forward(model, spec, ids, mask, positions)
    column = [positions.index(requests[row.request].position) for row in batch]
    return output.logits[torch.arange(len(batch)), torch.tensor(column)].double()


Request = CaptureRequest | GradientRequest | RecordRequest | PatchRequest


def run_requests(pair: ModelPair, requests: Sequence[Request]) -> list[Any]:
    """The result of every request (in order), the requests of one kind run together."""
    results: list[Any] = [None] * len(requests)
    for kind, run in (
        (CaptureRequest, capture_many),
        (GradientRequest, gradients_many),
        (RecordRequest, record_many),
        (PatchRequest, patch_many),
    ):
        chosen = [k for k, request in enumerate(requests) if isinstance(request, kind)]
        if chosen:
            for k, result in zip(chosen, run(pair, [requests[k] for k in chosen]), strict=True):
                results[k] = result
    return results


def _rows(prompts: Sequence[torch.Tensor]) -> list[list[int]]:
    """Indices of ``prompts`` cut into batches of about :data:`~tokenlens.causal.grids.TOKENS_PER_BATCH`
    padded tokens."""
    limit = default_batch(max(p.shape[1] for p in prompts))
    return [list(range(start, min(start + limit, len(prompts)))) for start in range(0, len(prompts), limit)]


def capture_many(pair: ModelPair, requests: Sequence[CaptureRequest]) -> list[Sides]:
    """:class:`CaptureRequest` s: one captured forward pass per side for a batch of probes."""
    if pair.prompt_learning:
        runs = {}
        for side, which in enumerate(("base", "tuned")):
            with pair.side(which) as model:
                runs[which] = [
                    capture_run(model, pair.spec, r.input_ids, r.position, r.sites, splits=r.splits[side])
                    for r in requests
                ]
        return list(zip(runs["base"], runs["tuned"], strict=True))
    out: list[Sides] = []
    for rows in _rows([r.input_ids for r in requests]):
        chunk = [requests[k] for k in rows]
        runs = {}
        for side, which in enumerate(("base", "tuned")):
            with pair.side(which) as model:
                runs[which] = _capture_batch(model, pair.spec, chunk, side)
        out += zip(runs["base"], runs["tuned"], strict=True)
    return out


def _capture_batch(
    model: nn.Module, spec: ArchitectureSpec, requests: Sequence[CaptureRequest], side: int
) -> list[Run]:
    """One side's captured runs of ``requests`` from one right-padded forward pass."""
    ids, mask = pad_right([r.input_ids for r in requests])
    positions = sorted({r.position for r in requests})
    kept = torch.tensor(positions)
    sites = list(dict.fromkeys(s for r in requests for s in r.sites))
    splits = frozenset().union(*(r.splits[side] for r in requests))
    streams = stream_sites(model, spec)
    with ExitStack() as stack, torch.no_grad():
        residual = stack.enter_context(capture_residual(model, spec, kept))
        inner = stack.enter_context(capture_internals(model, spec, tuple(ids.shape), kept, splits))
        values = stack.enter_context(record(model, spec, [*sites, *streams]))
        output = _forward(model, spec, ids, mask, positions)
    capture = residual.result(component_names(spec, bare_model(model)))
    runs = []
    for r, request in enumerate(requests):
        k, seq = positions.index(request.position), request.input_ids.shape[1]
        own = {s.name for s in (*request.sites, *streams)}
        row = {name: v[r : r + 1, :seq].clone() for name, v in values.items() if name in own}
        layers = [layer.row(r, k, seq) for layer in inner.layers]
        runs.append(run_from(model, spec, capture, output.logits[r, k], r, k, row, layers))
    return runs


def gradients_many(
    pair: ModelPair, requests: Sequence[GradientRequest]
) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """:class:`GradientRequest` s: one forward and backward pass of the base side for a batch of probes, of
    the sum of the probes' metrics (rows do not mix, so each row's gradient is its own probe's)."""
    out = []
    with pair.side("base") as model:
        if pair.prompt_learning:
            return [
                activation_gradients(model, pair.spec, r.input_ids, r.metric, r.sites)[1] for r in requests
            ]
        for rows in _rows([r.input_ids for r in requests]):
            chunk = [requests[k] for k in rows]
            ids, mask = pad_right([r.input_ids for r in chunk])
            positions = sorted({r.metric.position for r in chunk})

            def forward(chunk=chunk, ids=ids, mask=mask, positions=positions) -> torch.Tensor:
                logits = _forward(model, pair.spec, ids, mask, positions).logits
                return sum(
                    r.metric.of(logits[b, positions.index(r.metric.position)]) for b, r in enumerate(chunk)
                )

            sites = list(dict.fromkeys(s for r in chunk for s in r.sites))
            _, pairs = gradients_of(model, pair.spec, sites, forward)
            for b, r in enumerate(chunk):
                seq = r.input_ids.shape[1]
                out.append(
                    {s.name: tuple(t[b : b + 1, :seq].clone() for t in pairs[s.name]) for s in r.sites}
                )
    return out


def record_many(
    pair: ModelPair, requests: Sequence[RecordRequest]
) -> list[dict[str, dict[str, torch.Tensor]]]:
    """:class:`RecordRequest` s: one recording pass per side for a batch of probes, starting at the first
    layer of all their sites from each probe's recorded stream."""
    out: list[dict[str, dict[str, torch.Tensor]]] = [{} for _ in requests]
    for which in ("base", "tuned"):
        with pair.side(which) as model:
            if pair.prompt_learning:
                for k, r in enumerate(requests):
                    out[k][which] = record_sites(model, pair.spec, r.input_ids, r.sites, r.runs[which].values)
                continue
            for rows in _rows([r.input_ids for r in requests]):
                chunk = [requests[k] for k in rows]
                ids, mask = pad_right([r.input_ids for r in chunk])
                sites = list(dict.fromkeys(s for r in chunk for s in r.sites))
                streams = [r.runs[which].values for r in chunk]
                edits, skip = enter_at(site_layer(sites), streams)
                with (
                    torch.no_grad(),
                    record(model, pair.spec, sites) as values,
                    replace(model, pair.spec, edits),
                    skip_layers(model, pair.spec, skip),
                ):
                    _forward(model, pair.spec, ids, mask, [ids.shape[1] - 1])
                for b, (k, r) in enumerate(zip(rows, chunk, strict=True)):
                    seq = r.input_ids.shape[1]
                    out[k][which] = {s.name: values[s.name][b : b + 1, :seq].clone() for s in r.sites}
    return out


def _forward(
    model: nn.Module, spec: ArchitectureSpec, ids: torch.Tensor, mask: torch.Tensor, positions: Sequence[int]
):
    """The model's output on a right-padded batch (:func:`pad_right`), logits only at ``positions``
    (ascending): ``output.logits`` is ``(rows, len(positions), vocab)``."""
    device = spec.module(model, spec.embed).weight.device
    keep = torch.tensor(list(positions), device=device)
    return model(
        input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, logits_to_keep=keep
    )

"""The forward passes a diff needs: one captured run per side, and patched runs for causal effects.

A captured run keeps, at the probe position, every residual write, the stream entering the final norm and
the logits (as float64 copies), plus every site's activation over the whole prompt (for patching) and the
layer internals the head/neuron drill-down reads. For a 16-bit model the writes are the stream's increments
and the logits the float32 readout of its final stream, so the split of their change is exact. A patched run
replaces activations through :func:`tokenlens.causal.interventions.replace` and returns the logits at the
probe position.

Positions are the prompt's. A prompt-tuned model runs its virtual positions first: the captures shift by
them (:func:`tokenlens.models.specs.virtual_tokens`) and the logits are kept counting from the end, so both
sides are read at the same prompt position.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from tokenlens.attribution.readout import stream_logits
from tokenlens.capture.internals import LayerInternals, capture_internals
from tokenlens.capture.residual import ResidualCapture, capture_residual, component_names
from tokenlens.causal.effects import entry_sites, site_layer
from tokenlens.causal.grids import default_batch, skip_layers
from tokenlens.causal.interventions import Edit, block_virtual_attention, record, replace
from tokenlens.causal.sites import Site
from tokenlens.diff.pairing import ModelPair
from tokenlens.errors import TokenlensError, option
from tokenlens.models.specs import ArchitectureSpec, bare_model, virtual_keys, virtual_tokens


@dataclass(frozen=True)
class Run:
    """One model's forward pass on one probe.

    Attributes:
        writes: ``(component, d_model)`` float64 residual writes at the probe position.
        final_input: ``(d_model,)`` float64 stream entering the final norm there.
        logits: ``(vocab,)`` float64 logits there.
        values: Site name -> ``(1, seq, width)`` activation over the real positions (model dtype); besides
            the sites asked for, the stream entering every layer (``L{i}.resid``), from which a patched
            run starts (:func:`patch_changes`) — not for a prompt-tuned model.
        internals: Per-layer internals at the probe position (``act`` for the neuron drill-down; with
            virtual tokens also what their source split needs).
    """

    writes: torch.Tensor
    final_input: torch.Tensor
    logits: torch.Tensor
    values: dict[str, torch.Tensor]
    internals: list[LayerInternals]


def _forward(model: nn.Module, spec: ArchitectureSpec, input_ids: torch.Tensor, position: int):
    """The model's output with logits only from ``position`` on (so ``logits[0, 0]`` is the position)."""
    ids = input_ids.to(spec.module(model, spec.embed).weight.device)
    keep = input_ids.shape[1] - position
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, logits_to_keep=keep)


def capture_run(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    position: int,
    sites: Sequence[Site],
    *,
    splits: frozenset[str] = frozenset({"neurons"}),
) -> Run:
    """One real forward pass of ``input_ids`` ``(1, seq)`` capturing everything a diff reads.

    Args:
        splits: The layer internals to keep at ``position`` (:mod:`tokenlens.capture.internals`); a
            prompt-tuned model's internals are in its own sequence, virtual positions first.

    Raises:
        TokenlensError: The model produced NaN or infinite values.
    """
    seq = input_ids.shape[1]
    shift = virtual_tokens(model)
    kept = torch.tensor([position])
    streams = [] if shift or virtual_keys(model) else stream_sites(model, spec)
    with ExitStack() as stack, torch.no_grad():
        residual = stack.enter_context(capture_residual(model, spec, kept, shift))
        inner = stack.enter_context(capture_internals(model, spec, (1, shift + seq), kept + shift, splits))
        values = stack.enter_context(record(model, spec, [*sites, *streams]))
        output = _forward(model, spec, input_ids, position)
    capture = residual.result(component_names(spec, bare_model(model)))
    values = {name: v[:, v.shape[1] - seq :] for name, v in values.items()}
    return run_from(model, spec, capture, output.logits[0, 0], 0, 0, values, inner.layers)


def run_from(
    model: nn.Module,
    spec: ArchitectureSpec,
    capture: ResidualCapture,
    logits: torch.Tensor,
    batch_index: int,
    kept_index: int,
    values: dict[str, torch.Tensor],
    internals: list[LayerInternals],
) -> Run:
    """The :class:`Run` of one row of a captured forward pass at one kept position (``logits`` ``(vocab,)``
    the model's there; ``values`` and ``internals`` already that row's).

    Raises:
        TokenlensError: The model produced NaN or infinite values.
    """
    final_input = capture.final_input[batch_index, kept_index]
    logits = logits.double()
    if capture.increments:  # a 16-bit model: the float32 readout of its stream, which the writes sum to
        logits = stream_logits(model, spec, final_input).double()
    writes = capture.writes[:, batch_index, kept_index].double()
    if not (torch.isfinite(writes).all() and torch.isfinite(logits).all()):
        raise TokenlensError(
            f"a model produced NaN or infinite values (overflow in a low-precision dtype? try "
            f"{option('dtype', 'float32')})"
        )
    return Run(
        writes=writes, final_input=final_input.double(), logits=logits, values=values, internals=internals
    )


def record_sites(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    sites: Sequence[Site],
    held: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Each site's activation ``(1, seq, width)`` over the real positions on one forward pass; with
    ``held`` (the same run's ``L{i}.resid`` streams, :func:`capture_run`) the pass starts at the first
    layer of ``sites``, as :func:`patched_logits` does."""
    seq = input_ids.shape[1]
    edits, skip = enter_at(site_layer(sites), [held])
    with (
        torch.no_grad(),
        record(model, spec, sites) as values,
        replace(model, spec, edits),
        skip_layers(model, spec, skip),
    ):
        _forward(model, spec, input_ids, seq - 1)
    return {name: v[:, v.shape[1] - seq :] for name, v in values.items()}


def enter_at(
    first: int, streams: Sequence[Mapping[str, torch.Tensor] | None]
) -> tuple[dict[Site, Edit], int]:
    """The edit that writes each batch row's recorded stream into layer ``first`` and the number of layers
    before it to skip; none when ``first`` is 0 or a row has no recorded stream.

    ``streams[r]`` is the values of row ``r``'s unpatched run (:attr:`Run.values`), holding ``L{first}.resid``
    ``(1, seq_r, d_model)``; a shorter row's stream fills its real positions only (right padding).
    """
    entry = Site(f"L{first}.resid", "resid", first)
    if first == 0 or not all(held and entry.name in held for held in streams):
        return {}, 0
    rows = [held[entry.name] for held in streams]

    def start(a: torch.Tensor) -> torch.Tensor:
        new = a.clone()
        for r, stream in enumerate(rows):
            new[r : r + 1, : stream.shape[1]] = stream.to(a)
        return new

    return {entry: start}, first


def patched_logits(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    position: int,
    plans: Sequence[Mapping[Site, Edit]],
    held: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The logits ``(len(plans), vocab)`` float64 at ``position``, one row per set of edits.

    All plans run as one batch: row ``r`` is the prompt with ``plans[r]``'s edits applied (each edit sees
    and returns that row alone, ``(1, seq, width)``). With ``held``, the unpatched run's streams
    (``L{i}.resid`` -> ``(1, seq, d_model)``, recorded by :func:`capture_run` on this model), the batch
    starts at the first layer any plan changes: the layers before it are skipped
    (:func:`tokenlens.causal.grids.skip_layers`) and the recorded stream is written as that layer's input —
    what they would compute again, since no plan changes anything before it.
    """
    sites = {site for plan in plans for site in plan}

    def merged(site: Site) -> Edit:
        rows = [(r, plan[site]) for r, plan in enumerate(plans) if site in plan]

        def edit(a: torch.Tensor) -> torch.Tensor:
            new = a.clone()
            for r, one in rows:
                new[r : r + 1] = one(a[r : r + 1])
            return new

        return edit

    start, skip = enter_at(site_layer(list(sites)), [held] * len(plans))
    edits = {site: merged(site) for site in sites} | start
    batch = input_ids.expand(len(plans), -1)
    with torch.no_grad(), replace(model, spec, edits), skip_layers(model, spec, skip):
        return _forward(model, spec, batch, position).logits[:, 0].double()


def stream_sites(model: nn.Module, spec: ArchitectureSpec) -> list[Site]:
    """``L{i}.resid`` for every layer but the first: the streams a patched run can start from."""
    return entry_sites(model, spec)[1:]


def blocked_logits(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    position: int,
    blocked: Sequence[Sequence[int]],
) -> torch.Tensor:
    """The logits ``(len(blocked), vocab)`` float64 at ``position`` of a prompt-tuned model, one row per set
    of layers whose attention from the prompt to the virtual positions is cut (one batch)."""
    batch = input_ids.expand(len(blocked), -1)
    with torch.no_grad(), block_virtual_attention(model, spec, blocked, virtual_tokens(model)):
        return _forward(model, spec, batch, position).logits[:, 0].double()


def plus(delta: torch.Tensor) -> Edit:
    """An edit adding ``delta`` ``(1, seq, width)`` to the activation's real (last ``seq``) positions."""

    def edit(a: torch.Tensor) -> torch.Tensor:
        keep = a.shape[1] - delta.shape[1]
        return torch.cat([a[:, :keep], a[:, keep:] + delta.to(a)], dim=1)

    return edit


def divergences(base: torch.Tensor, tuned: torch.Tensor) -> tuple[float, float]:
    """KL(base‖tuned) and Jensen-Shannon, in nats, over the full vocabulary (float64)."""
    log_p, log_q = base.log_softmax(-1), tuned.log_softmax(-1)
    p, q = log_p.exp(), log_q.exp()
    kl = float((p * (log_p - log_q)).sum())
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    js = 0.5 * float((p * (log_p - log_m)).sum()) + 0.5 * float((q * (log_q - log_m)).sum())
    return max(kl, 0.0), max(js, 0.0)


PATCH_BATCH = 16
"""Rows per forward pass of the layer-cut runs of a prompt-tuned model."""

MAX_PATCH_ROWS = 64
"""At most this many patched runs per forward pass (each row keeps a float64 vocabulary of logits)."""


def patch_batch(seq: int) -> int:
    """Patched runs per forward pass for ``seq``-token prompts: about
    :data:`~tokenlens.causal.grids.TOKENS_PER_BATCH` tokens, at most :data:`MAX_PATCH_ROWS` rows. A short
    prompt's forward pass costs about as much for one row as for dozens (the weights are read once per
    pass), so the rows of a probe share as few passes as fit."""
    return min(MAX_PATCH_ROWS, default_batch(seq))


Tracked = int | tuple[int, int]
"""What a patched run watches: one token's logit, or ``(target, contrast)`` for ``logit[target] −
logit[contrast]`` (a continuation's divergence: the tuned token against the base token)."""


def read(logits: torch.Tensor, tracked: Tracked) -> torch.Tensor:
    """The tracked value of ``logits`` ``(..., vocab)``: one logit, or a logit difference."""
    if isinstance(tracked, tuple):
        return logits[..., tracked[0]] - logits[..., tracked[1]]
    return logits[..., tracked]


def patch_changes(
    pair: ModelPair,
    input_ids: torch.Tensor,
    position: int,
    tracked: Tracked,
    changes: Mapping[str, tuple[Site, torch.Tensor]],
    *,
    reverse: bool,
    batch: int | None = None,
    runs: Mapping[str, Run] | None = None,
) -> dict[str, tuple[float, float, float | None]]:
    """Exact patching of activation changes: ``(causal, causal_kl, causal_reverse)`` per name.

    ``changes[name] = (site, delta)`` with ``delta`` ``(1, seq, width)`` = tuned − base activation. The base
    run gets ``+delta`` at the site (the tuned value): ``causal`` is the tracked value's change
    (:data:`Tracked`) and ``causal_kl`` the KL from the unpatched distribution; with ``reverse`` the tuned
    run gets ``−delta``.
    A change that is zero everywhere has no effect by definition and is not run. The others run ``batch``
    (default :func:`patch_batch`) at a time, as rows of one forward pass whose first row is the unpatched
    run: each change is measured against that row, so batched arithmetic cannot show up as an effect.
    With ``runs`` (side -> its :func:`capture_run`), the changes are batched in order of layer and each
    batch starts at its first changed layer from the recorded stream (:func:`patched_logits`), so a late
    layer's patch costs only the layers after it.
    """
    batch = batch or patch_batch(input_ids.shape[1])
    out: dict[str, list] = {name: [0.0, 0.0, 0.0 if reverse else None] for name in changes}
    moved = [(name, site, delta) for name, (site, delta) in changes.items() if torch.count_nonzero(delta)]
    if runs:
        moved.sort(key=lambda change: change[1].layer or 0)
    for which, sign in (("base", 1.0), ("tuned", -1.0)) if reverse else (("base", 1.0),):
        held = runs[which].values if runs else None
        with pair.side(which) as model:
            for start in range(0, len(moved), batch):
                chunk = moved[start : start + batch]
                plans = [{}] + [{site: plus(sign * delta)} for _, site, delta in chunk]
                clean, *rows = patched_logits(model, pair.spec, input_ids, position, plans, held)
                for (name, _, _), row in zip(chunk, rows, strict=True):
                    if which == "base":
                        out[name][:2] = [
                            float(read(row, tracked) - read(clean, tracked)),
                            divergences(clean, row)[0],
                        ]
                    else:
                        out[name][2] = float(read(row, tracked) - read(clean, tracked))
    return {name: (v[0], v[1], v[2]) for name, v in out.items()}

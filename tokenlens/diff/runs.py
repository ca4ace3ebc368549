"""The forward passes a diff needs: one captured run per side, and patched runs for causal effects.

A captured run keeps, at the probe position, every residual write, the stream entering the final norm and
the logits (as float64 copies), plus every site's activation over the whole prompt (for patching) and the
layer internals the head/neuron drill-down reads. A patched run replaces activations through
:func:`tokenlens.causal.interventions.replace` and returns the logits at the probe position.

Positions are addressed from the end of the sequence, so the virtual positions prompt tuning prepends to
the tuned run do not shift them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from tokenlens.capture.internals import LayerInternals, capture_internals
from tokenlens.capture.residual import capture_residual, component_names
from tokenlens.causal.interventions import Edit, record, replace
from tokenlens.causal.sites import Site
from tokenlens.diff.pairing import ModelPair
from tokenlens.errors import TokenlensError
from tokenlens.models.specs import ArchitectureSpec, bare_model


@dataclass(frozen=True)
class Run:
    """One model's forward pass on one probe.

    Attributes:
        writes: ``(component, d_model)`` float64 residual writes at the probe position.
        final_input: ``(d_model,)`` float64 stream entering the final norm there.
        logits: ``(vocab,)`` float64 logits there.
        values: Site name -> ``(1, seq, width)`` activation over the real positions (model dtype).
        internals: Per-layer internals (``z``, ``act``) at the probe position, or ``None``.
    """

    writes: torch.Tensor
    final_input: torch.Tensor
    logits: torch.Tensor
    values: dict[str, torch.Tensor]
    internals: list[LayerInternals] | None


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
    internals: bool,
    virtual: bool = False,
) -> Run:
    """One real forward pass of ``input_ids`` ``(1, seq)`` capturing everything a diff reads.

    Raises:
        TokenlensError: The model produced NaN or infinite values.
    """
    seq = input_ids.shape[1]
    kept = torch.tensor([position - seq if virtual else position])
    with ExitStack() as stack, torch.no_grad():
        residual = stack.enter_context(capture_residual(model, spec, kept))
        inner = None
        if internals:
            splits = frozenset({"neurons"})
            inner = stack.enter_context(capture_internals(model, spec, tuple(input_ids.shape), kept, splits))
        values = stack.enter_context(record(model, spec, sites))
        output = _forward(model, spec, input_ids, position)
    capture = residual.result(component_names(spec, bare_model(model)))
    logits = output.logits[0, 0].double()
    writes = capture.writes[:, 0, 0].double()
    if not (torch.isfinite(writes).all() and torch.isfinite(logits).all()):
        raise TokenlensError(
            "a model produced NaN or infinite values (overflow in a low-precision dtype? try --dtype float32)"
        )
    return Run(
        writes=writes,
        final_input=capture.final_input[0, 0].double(),
        logits=logits,
        values={name: v[:, v.shape[1] - seq :] for name, v in values.items()},
        internals=None if inner is None else inner.layers,
    )


def record_sites(
    model: nn.Module, spec: ArchitectureSpec, input_ids: torch.Tensor, sites: Sequence[Site]
) -> dict[str, torch.Tensor]:
    """Each site's activation ``(1, seq, width)`` over the real positions on one forward pass."""
    seq = input_ids.shape[1]
    with torch.no_grad(), record(model, spec, sites) as values:
        _forward(model, spec, input_ids, seq - 1)
    return {name: v[:, v.shape[1] - seq :] for name, v in values.items()}


def patched_logits(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    position: int,
    edits: Mapping[Site, Edit],
) -> torch.Tensor:
    """The logits ``(vocab,)`` float64 at ``position`` with ``edits`` applied."""
    with torch.no_grad(), replace(model, spec, edits):
        return _forward(model, spec, input_ids, position).logits[0, 0].double()


def tail(value: torch.Tensor) -> Edit:
    """An edit replacing the activation's last ``value.shape[1]`` positions (the real ones) by ``value``."""

    def edit(a: torch.Tensor) -> torch.Tensor:
        keep = a.shape[1] - value.shape[1]
        return torch.cat([a[:, :keep], value.to(a)], dim=1) if keep else value.to(a).expand_as(a)

    return edit


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


Plan = tuple[str, Mapping[Site, Edit], Mapping[Site, Edit] | None]
"""One exact patching experiment: its name, the base run's edits, the tuned run's edits (reverse)."""


def patch_effects(
    pair: ModelPair,
    input_ids: torch.Tensor,
    position: int,
    tracked: int,
    base: Run,
    tuned: Run,
    plans: Sequence[Plan],
) -> dict[str, tuple[float, float, float | None]]:
    """``(causal, causal_kl, causal_reverse)`` per plan: the tracked logit's change (and KL from the base
    distribution) when the base run is edited, and the change when the tuned run gets the reverse edits."""
    out: dict[str, list] = {}
    with pair.side("base") as model:
        for name, forward, _ in plans:
            row = patched_logits(model, pair.spec, input_ids, position, forward)
            out[name] = [float(row[tracked] - base.logits[tracked]), divergences(base.logits, row)[0], None]
    with pair.side("tuned") as model:
        for name, _, reverse in plans:
            if reverse is not None:
                row = patched_logits(model, pair.spec, input_ids, position, reverse)
                out[name][2] = float(row[tracked] - tuned.logits[tracked])
    return {name: (v[0], v[1], v[2]) for name, v in out.items()}

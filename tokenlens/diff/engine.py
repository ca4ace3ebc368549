"""The diff engine: which token choices a fine-tune moved, and which components moved them.

For each probe both models run once with the residual stream captured at the probe's position:

* **distribution** — KL(base‖tuned), Jensen-Shannon, top-k before/after, top-1 flip, and the tracked token's
  (the probe's target, else the tuned top-1) probability and rank on both sides;
* **direct** — the exact split of the tracked logit's change (:class:`~tokenlens.diff.result.Telescope`,
  design.md §2): one term per component with the base readout frozen, plus the readout's own change, so a
  head-only fine-tune shows up as ``readout.head``, not as every layer moving;
* **causal** — each component's tuned output patched into the base run (``causal``, and ``causal_kl`` the
  KL it causes), and the base output into the tuned run (``causal_reverse``), measured exactly. An
  attribution-patching ESTIMATE of ``causal`` (one backward pass on the base run) ranks all components first
  and chooses which get exact patching (the top ``exact``, all of them for small models);
* **drill-down** — per head and per MLP neuron for the layers with the largest effect.

Prompt tuning prepends virtual positions to the tuned run: the two runs are compared at the real positions
(counted from the end), the virtual tokens act through attention, and the per-head/neuron drill-down is
skipped for such pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from tokenlens.attribution import inputs
from tokenlens.attribution.finer import head_terms, neuron_terms
from tokenlens.attribution.readout import Readout, final_norm_eps, head_row, norm_weight
from tokenlens.attribution.result import TokenScore
from tokenlens.capture.internals import LayerInternals, capture_internals
from tokenlens.capture.residual import capture_residual, component_names
from tokenlens.causal.estimates import activation_gradients
from tokenlens.causal.interventions import record, replace
from tokenlens.causal.metrics import Metric
from tokenlens.causal.sites import Site, head_sites, layer_sites
from tokenlens.diff import probes as probe_io
from tokenlens.diff.check import judge
from tokenlens.diff.pairing import ModelPair
from tokenlens.diff.result import (
    AggregateRow,
    ComponentEffect,
    DiffReport,
    Probe,
    ProbeDiff,
    Telescope,
    mean_or_nan,
)
from tokenlens.diff.weights import weight_summary
from tokenlens.errors import TokenlensError
from tokenlens.models.specs import ArchitectureSpec, bare_model

EXACT_ALL_UP_TO = 32
"""Models with at most this many components get exact patching for every component."""


@dataclass(frozen=True)
class DiffOptions:
    """What a diff computes.

    Attributes:
        top_k: Tokens shown before/after.
        causal: Measure causal effects (estimates for all components, exact patching for the top ones).
        exact: How many components (by |estimate|) get exact patching; all when the model has at most
            :data:`EXACT_ALL_UP_TO` components.
        reverse: Also patch base outputs into the tuned run.
        drill: How many attention and MLP layers (largest effect) get a per-head / per-neuron drill-down.
        neurons: Neurons reported per drilled MLP layer.
        min_gain: The check's threshold for intended probes (absolute probability gain).
        max_kl: The check's threshold for controls (KL(base‖tuned), nats).
    """

    top_k: int = 5
    causal: bool = True
    exact: int = 10
    reverse: bool = True
    drill: int = 2
    neurons: int = 5
    min_gain: float = 0.1
    max_kl: float = 0.05


@dataclass
class _Run:
    """One model's forward pass on one probe (float64 copies at the probe position)."""

    writes: torch.Tensor  # (component, d_model)
    final_input: torch.Tensor  # (d_model,)
    logits: torch.Tensor  # (vocab,)
    values: dict[str, torch.Tensor]  # site -> (1, seq, width) activation at the real positions
    internals: list[LayerInternals] | None


def diff(
    pair: ModelPair,
    probes: Sequence[Probe],
    options: DiffOptions | None = None,
    *,
    on_probe: Callable[[int, int], None] | None = None,
) -> DiffReport:
    """Compare base and tuned on every probe (see the module docstring).

    Args:
        pair: From :func:`tokenlens.diff.pairing.pair_models`.
        probes: From :func:`tokenlens.diff.probes.load_probes` or ``prompt_probes``.
        options: What to compute (defaults: :class:`DiffOptions`).
        on_probe: Called with (done, total) after each probe (progress display).

    Raises:
        TokenlensError: An empty probe set, a bad probe (multi-token target, over-long prompt, …), NaNs.
    """
    options = options or DiffOptions()
    if not probes:
        raise TokenlensError("no probes to compare")
    model = bare_model(pair.tuned.model)
    vocab = model.get_output_embeddings().weight.shape[0]
    max_positions = getattr(model.config, "max_position_embeddings", None)
    encoded = []
    for probe in probes:  # validate every probe before any model runs
        ids = probe_io.encode_probe(pair.tokenizer, probe, max_positions)
        position = _position(probe, len(ids))
        encoded.append((probe, ids, position, probe_io.target_id(pair.tokenizer, probe, vocab)))
    results = []
    for done, (probe, ids, position, target) in enumerate(encoded, start=1):
        results.append(_diff_probe(pair, probe, ids, position, target, options))
        if on_probe is not None:
            on_probe(done, len(encoded))
    aggregate, groups = _aggregate(results)
    return DiffReport(
        base=pair.base_ref,
        tuned=pair.tuned.ref,
        pairing=pair.description,
        probes=tuple(results),
        weights=weight_summary(pair),
        aggregate=aggregate,
        groups=groups,
        min_gain=options.min_gain,
        max_kl=options.max_kl,
    )


def _position(probe: Probe, length: int) -> int:
    where = f"probe on line {probe.line}" if probe.line is not None else f"prompt {probe.label!r}"
    try:
        return inputs.resolve_position(probe.position, length)
    except TokenlensError as exc:
        raise TokenlensError(f"{where}: {exc}") from exc


def _diff_probe(
    pair: ModelPair, probe: Probe, ids: list[int], position: int, target: int | None, options: DiffOptions
) -> ProbeDiff:
    spec, tokenizer = pair.spec, pair.tokenizer
    input_ids = torch.tensor([ids])
    virtual = pair.virtual_tokens
    sites = _sites(pair)
    with pair.side("base") as model:
        base = _run(model, spec, input_ids, position, sites, internals=not virtual)
    with pair.side("tuned") as model:
        tuned = _run(model, spec, input_ids, position, sites, internals=not virtual, virtual=virtual)
    limit = inputs.decodable_vocab(tokenizer, base.logits.shape[0])
    base_top = _top(tokenizer, base.logits, limit, options.top_k)
    tuned_top = _top(tokenizer, tuned.logits, limit, options.top_k)
    tracked = target if target is not None else tuned_top[0].id
    names = component_names(spec, bare_model(pair.tuned.model))
    split = _telescope(pair, base, tuned, names, tracked, None)
    flip = None
    if base_top[0].id != tuned_top[0].id:
        flip = _telescope(pair, base, tuned, names, tuned_top[0].id, base_top[0].id)
    kl, js = _divergences(base.logits, tuned.logits)
    readout_b = _base_readout(pair, base, tracked)
    components, heads, neurons, notes = _effects(
        pair, input_ids, position, base, tuned, split, tracked, readout_b, options
    )
    if virtual:
        notes += (f"the tuned model prepends {virtual} virtual tokens: compared at the real positions",)
    tracked_base, tracked_tuned = (
        _score(tokenizer, base.logits, tracked),
        _score(tokenizer, tuned.logits, tracked),
    )
    verdict = judge(
        probe.expect,
        flipped=base_top[0].id != tuned_top[0].id,
        target_top=tuned_top[0].id == tracked,
        prob_gain=tracked_tuned.prob - tracked_base.prob,
        kl=kl,
        min_gain=options.min_gain,
        max_kl=options.max_kl,
    )
    return ProbeDiff(
        probe=probe,
        token_ids=tuple(ids),
        tokens=tuple(inputs.decode_token(tokenizer, i) for i in ids),
        position=position,
        base_top=base_top,
        tuned_top=tuned_top,
        kl=kl,
        js=js,
        tracked=tracked_base,
        tracked_tuned=tracked_tuned,
        tracked_is_target=target is not None,
        base_rank=_rank(base.logits, tracked),
        tuned_rank=_rank(tuned.logits, tracked),
        split=split,
        flip_split=flip,
        components=components,
        heads=heads,
        neurons=neurons,
        verdict=verdict,
        notes=notes,
    )


def _sites(pair: ModelPair) -> tuple[Site, ...]:
    model = bare_model(pair.tuned.model)
    return layer_sites(model, pair.spec) + head_sites(model, pair.spec)


def _run(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    position: int,
    sites: Sequence[Site],
    *,
    internals: bool,
    virtual: int = 0,
) -> _Run:
    """One forward pass capturing the stream at ``position``, the layer internals and every site's value.

    With ``virtual`` prepended positions (prompt tuning) the position is addressed from the end.
    """
    seq = input_ids.shape[1]
    device = spec.module(model, spec.embed).weight.device
    kept = torch.tensor([position - seq if virtual else position])
    with ExitStack() as stack, torch.no_grad():
        residual = stack.enter_context(capture_residual(model, spec, kept))
        inner = None
        if internals:
            splits = frozenset({"heads", "neurons"})
            inner = stack.enter_context(capture_internals(model, spec, tuple(input_ids.shape), kept, splits))
        values = stack.enter_context(record(model, spec, sites))
        ids = input_ids.to(device)
        keep = seq - position
        output = model(
            input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, logits_to_keep=keep
        )
    capture = residual.result(component_names(spec, bare_model(model)))
    logits = output.logits[0, 0].double()
    writes = capture.writes[:, 0, 0].double()
    if not (torch.isfinite(writes).all() and torch.isfinite(logits).all()):
        raise TokenlensError(
            "a model produced NaN or infinite values (overflow in a low-precision dtype? try --dtype float32)"
        )
    return _Run(
        writes=writes,
        final_input=capture.final_input[0, 0].double(),
        logits=logits,
        values={name: v[:, v.shape[1] - seq :] for name, v in values.items()},
        internals=None if inner is None else inner.layers,
    )


def _top(tokenizer, logits: torch.Tensor, limit: int, k: int) -> tuple[TokenScore, ...]:
    return tuple(_score(tokenizer, logits, int(i)) for i in inputs.top_tokens(logits, limit, k))


def _score(tokenizer, logits: torch.Tensor, token: int) -> TokenScore:
    prob = float(logits.softmax(-1)[token])
    return TokenScore(token, inputs.decode_token(tokenizer, token), float(logits[token]), prob)


def _rank(logits: torch.Tensor, token: int) -> int:
    return int((logits > logits[token]).sum()) + 1


def _divergences(base: torch.Tensor, tuned: torch.Tensor) -> tuple[float, float]:
    """KL(base‖tuned) and Jensen-Shannon, in nats, over the full vocabulary (float64)."""
    log_p, log_q = base.log_softmax(-1), tuned.log_softmax(-1)
    p, q = log_p.exp(), log_q.exp()
    kl = float((p * (log_p - log_q)).sum())
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    js = 0.5 * float((p * (log_p - log_m)).sum()) + 0.5 * float((q * (log_q - log_m)).sum())
    return max(kl, 0.0), max(js, 0.0)


def _readout_parts(pair: ModelPair, which: str, target: int, contrast: int | None):
    """``(u, g, b)`` of one side, float64: the head row (minus the contrast's), norm weight, head bias."""
    with pair.side(which) as model:
        u, bias = head_row(model, pair.spec, target, contrast)
        g = norm_weight(model, pair.spec)
        eps = final_norm_eps(model, pair.spec)
    return u.double().cpu(), g.double().cpu(), (bias or 0.0), eps


def _scale(run: _Run, eps: float) -> float:
    return float(torch.rsqrt(run.final_input.pow(2).mean() + eps))


def _telescope(
    pair: ModelPair, base: _Run, tuned: _Run, names: tuple[str, ...], target: int, contrast: int | None
) -> Telescope:
    """The exact split of ``logit[target] (− logit[contrast])``'s change, in design.md §2's fixed order."""
    u_b, g_b, b_b, eps_b = _readout_parts(pair, "base", target, contrast)
    u_t, g_t, b_t, eps_t = _readout_parts(pair, "tuned", target, contrast)
    s_b, s_t = _scale(base, eps_b), _scale(tuned, eps_t)
    c_b, c_t = base.writes.cpu(), tuned.writes.cpu()
    h_t = c_t.sum(0)
    direct = ((c_t - c_b) @ (u_b * g_b)) * s_b
    readout = torch.stack(
        [
            (h_t @ (u_b * g_b)) * (s_t - s_b),
            (h_t @ (u_b * (g_t - g_b))) * s_t,
            (h_t @ ((u_t - u_b) * g_t)) * s_t,
            torch.tensor(b_t - b_b, dtype=torch.float64),
        ]
    )

    def value(logits: torch.Tensor) -> float:
        return float(logits[target] - (logits[contrast] if contrast is not None else 0.0))

    return Telescope(target, contrast, names, direct, readout, value(base.logits), value(tuned.logits))


def _base_readout(pair: ModelPair, base: _Run, target: int) -> Readout:
    u, g, bias, eps = _readout_parts(pair, "base", target, None)
    return Readout(direction=(u * g).float(), scale=_scale(base, eps), bias=bias)


def _row(
    model: nn.Module, spec: ArchitectureSpec, input_ids: torch.Tensor, position: int, edits
) -> torch.Tensor:
    """The logits ``(vocab,)`` float64 at ``position`` with ``edits`` applied.

    Only the positions from ``position`` on get logits (counted from the end, so virtual positions that
    prompt tuning prepends do not shift it).
    """
    seq = input_ids.shape[1]
    device = spec.module(model, spec.embed).weight.device
    ids = input_ids.to(device)
    with torch.no_grad(), replace(model, spec, edits):
        output = model(
            input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, logits_to_keep=seq - position
        )
    return output.logits[0, 0].double()


def _tail(value: torch.Tensor):
    """An edit replacing the activation's last ``value.shape[1]`` positions (the real ones) by ``value``."""

    def edit(a: torch.Tensor) -> torch.Tensor:
        keep = a.shape[1] - value.shape[1]
        return torch.cat([a[:, :keep], value.to(a)], dim=1) if keep else value.to(a).expand_as(a)

    return edit


def _effects(
    pair: ModelPair,
    input_ids: torch.Tensor,
    position: int,
    base: _Run,
    tuned: _Run,
    split: Telescope,
    tracked: int,
    readout_b: Readout,
    options: DiffOptions,
) -> tuple[tuple[ComponentEffect, ...], tuple[ComponentEffect, ...], tuple[ComponentEffect, ...], tuple]:
    """Components (sorted), heads and neurons of the drilled layers, and notes."""
    sites = {s.name: s for s in _sites(pair)}
    direct = dict(zip(split.names, split.direct.tolist(), strict=True))
    notes: tuple[str, ...] = ()
    if not options.causal:
        rows = [ComponentEffect(n, direct[n]) for n in split.names]
        return _sorted(rows), (), (), ("causal effects not measured (--no-causal)",)
    estimates = _estimates(pair, input_ids, position, tracked, base, tuned, list(sites.values()))
    chosen = list(split.names)
    if len(chosen) > EXACT_ALL_UP_TO:
        chosen = sorted(chosen, key=lambda n: -abs(estimates[n]))[: options.exact]
        notes += (f"exact patching for the top {len(chosen)} of {len(split.names)} components by estimate",)
    exact = _patch(pair, input_ids, position, tracked, base, tuned, [sites[n] for n in chosen], options)
    rows = []
    for name in split.names:
        causal, kl, reverse = exact.get(name, (None, None, None))
        rows.append(ComponentEffect(name, direct[name], causal, kl, reverse, estimates[name]))
    components = _sorted(rows)
    heads, neurons = (), ()
    if base.internals is not None and tuned.internals is not None and options.drill > 0:
        heads = _drill_heads(
            pair, input_ids, position, tracked, base, tuned, components, estimates, readout_b, options
        )
        neurons = _drill_neurons(
            pair, input_ids, position, tracked, base, tuned, components, readout_b, options
        )
    return components, heads, neurons, notes


def _sorted(rows: list[ComponentEffect]) -> tuple[ComponentEffect, ...]:
    def key(row: ComponentEffect) -> tuple:
        causal = -abs(row.causal) if row.causal is not None else math.inf
        estimate = -abs(row.estimate) if row.estimate is not None else math.inf
        return (causal, estimate, -abs(row.direct or 0.0))

    return tuple(sorted(rows, key=key))


def _estimates(
    pair: ModelPair,
    input_ids: torch.Tensor,
    position: int,
    tracked: int,
    base: _Run,
    tuned: _Run,
    sites: Sequence[Site],
) -> dict[str, float]:
    """Attribution patching on the base run: ``Σ (a_T − a_B) · ∂logit/∂a_B`` per site (ESTIMATES)."""
    metric = Metric("logit", tracked, position)
    with pair.side("base") as model:
        _, pairs = activation_gradients(model, pair.spec, input_ids, metric, sites)
    out = {}
    for site in sites:
        activation, grad = pairs[site.name]
        out[site.name] = float(((tuned.values[site.name].float() - activation) * grad).sum())
    return out


def _patch(
    pair: ModelPair,
    input_ids: torch.Tensor,
    position: int,
    tracked: int,
    base: _Run,
    tuned: _Run,
    sites: Sequence[Site],
    options: DiffOptions,
) -> dict[str, tuple[float, float, float | None]]:
    """Exact patching: ``(causal, causal_kl, causal_reverse)`` per site."""
    out: dict[str, list] = {}
    with pair.side("base") as model:
        for site in sites:
            row = _row(model, pair.spec, input_ids, position, {site: _tail(tuned.values[site.name])})
            kl, _ = _divergences(base.logits, row)
            out[site.name] = [float(row[tracked] - base.logits[tracked]), kl, None]
    if options.reverse:
        with pair.side("tuned") as model:
            for site in sites:
                row = _row(model, pair.spec, input_ids, position, {site: _tail(base.values[site.name])})
                out[site.name][2] = float(row[tracked] - tuned.logits[tracked])
    return {name: tuple(v) for name, v in out.items()}  # type: ignore[misc]


def _top_layers(components: Sequence[ComponentEffect], part: str, count: int) -> list[int]:
    """The ``count`` layers whose ``part`` (attn/mlp) has the largest |causal| (else |estimate|, |direct|)."""
    rows = [c for c in components if c.name.endswith(f".{part}")]
    rows.sort(key=lambda c: -abs(c.causal if c.causal is not None else (c.estimate or c.direct or 0.0)))
    return [int(c.name[1:].split(".")[0]) for c in rows[:count]]


def _drill_heads(pair, input_ids, position, tracked, base, tuned, components, estimates, readout_b, options):
    spec = pair.spec
    layers = _top_layers(components, "attn", options.drill)
    terms = {}
    for which, run in (("base", base), ("tuned", tuned)):
        with pair.side(which) as model:
            modules = spec.layer_list(model)
            terms[which] = {
                i: head_terms(modules[i], spec, run.internals[i].z[0, 0], readout_b) for i in layers
            }
    head_names = [(i, h) for i in layers for h in range(terms["base"][i].shape[0])]
    sites = [Site(f"L{i}.H{h}", "head", i, h) for i, h in head_names]
    exact = _patch(pair, input_ids, position, tracked, base, tuned, sites, options)
    rows = []
    for (i, h), site in zip(head_names, sites, strict=True):
        delta = float(terms["tuned"][i][h] - terms["base"][i][h])
        causal, kl, reverse = exact[site.name]
        rows.append(ComponentEffect(site.name, delta, causal, kl, reverse, estimates.get(site.name)))
    return _sorted(rows)


def _drill_neurons(pair, input_ids, position, tracked, base, tuned, components, readout_b, options):
    spec = pair.spec
    layers = [i for i in _top_layers(components, "mlp", options.drill) if base.internals[i].act is not None]
    terms = {}
    for which, run in (("base", base), ("tuned", tuned)):
        with pair.side(which) as model:
            modules = spec.layer_list(model)
            terms[which] = {
                i: neuron_terms(modules[i], spec, run.internals[i].act[0, 0], readout_b) for i in layers
            }
    sites, deltas = [], {}
    for i in layers:
        delta = terms["tuned"][i] - terms["base"][i]
        for n in delta.abs().topk(min(options.neurons, delta.shape[0])).indices.tolist():
            site = Site(f"L{i}.N{n}", "neuron", i, n)
            sites.append(site)
            deltas[site.name] = float(delta[n])
    if not sites:
        return ()
    with pair.side("tuned") as model, torch.no_grad(), record(model, spec, sites) as values:
        ids = input_ids.to(spec.module(model, spec.embed).weight.device)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, logits_to_keep=1)
    seq = input_ids.shape[1]
    tuned_values = {name: v[:, v.shape[1] - seq :] for name, v in values.items()}
    with pair.side("base") as model, torch.no_grad(), record(model, spec, sites) as base_values:
        ids = input_ids.to(spec.module(model, spec.embed).weight.device)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, logits_to_keep=1)
    base_run = _Run(base.writes, base.final_input, base.logits, dict(base_values), None)
    tuned_run = _Run(tuned.writes, tuned.final_input, tuned.logits, tuned_values, None)
    exact = _patch(pair, input_ids, position, tracked, base_run, tuned_run, sites, options)
    rows = [ComponentEffect(s.name, deltas[s.name], *exact[s.name]) for s in sites]
    return _sorted(rows)


def _aggregate(
    results: Sequence[ProbeDiff],
) -> tuple[tuple[AggregateRow, ...], dict[str, tuple[AggregateRow, ...]]]:
    def rows(subset: Sequence[ProbeDiff]) -> tuple[AggregateRow, ...]:
        names = [c.name for c in subset[0].components]
        out = []
        for name in names:
            found = [next(c for c in p.components if c.name == name) for p in subset]
            causal = [abs(c.causal) for c in found if c.causal is not None]
            direct = [abs(c.direct) for c in found if c.direct is not None]
            out.append(AggregateRow(name, mean_or_nan(causal), mean_or_nan(direct), len(causal), len(subset)))
        out.sort(
            key=lambda r: (
                -(r.mean_abs_causal if not math.isnan(r.mean_abs_causal) else -1.0),
                -r.mean_abs_direct,
            )
        )
        return tuple(out)

    groups: dict[str, list[ProbeDiff]] = {}
    for result in results:
        groups.setdefault(result.probe.group or "", []).append(result)
    return rows(results), {name: rows(members) for name, members in groups.items()}

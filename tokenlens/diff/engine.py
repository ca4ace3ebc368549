"""The diff engine: which token choices a fine-tune moved, and which components moved them.

For each probe both models run once with the residual stream captured at the probe's position:

* **distribution** — KL(base‖tuned), Jensen-Shannon, top-k before/after, top-1 flip, and the tracked token's
  (the probe's target, else the tuned top-1) probability and rank on both sides;
* **direct** — the exact split of the tracked logit's change (:class:`~tokenlens.diff.result.Telescope`):
  one term per component with the base readout frozen, plus the readout's own change, so a
  head-only fine-tune shows up as ``readout.head``, not as every layer moving;
* **causal** — each component's tuned output patched into the base run (``causal``, and ``causal_kl`` the
  KL it causes), and the base output into the tuned run (``causal_reverse``), measured exactly. An
  attribution-patching ESTIMATE of ``causal`` (one backward pass on the base run) ranks all components first
  and chooses which get exact patching (the top ``exact``, all of them for small models);
* **drill-down** — per head and per MLP neuron for the layers with the largest effect.

Answer probes (:mod:`tokenlens.diff.answers`): a target answer is scored teacher-forced by both models and the
split is of its first token at the prompt's end; with ``generate`` both models decode, and where their
continuations diverge the probe is explained there — prefix = prompt + the common continuation, every term
(direct, causal, estimates, drill-down) of ``logit[tuned token] − logit[base token]``.

Speed: the probes run in groups of about :data:`GROUP_TOKENS` prompt tokens. Each probe's computation is a
generator of steps that yields a request whenever it needs the model (captured runs, the estimates' backward
pass, the drill-down's recording, exact patching); the group's pending requests of one kind run together as
rows of right-padded forward passes (:mod:`tokenlens.diff.batched`), patched rows measured against their own
probe's unpatched row in the same pass and started at the first changed layer from the recorded streams. The
numbers equal one probe at a time (tested to 1e-5).

Prompt tuning prepends virtual positions to the tuned run: the two runs are compared at the real positions,
and the virtual tokens act through attention only. Their share is shown per layer (``L{i}.virtual``): the
part of the tuned attention write that comes from the virtual positions, read with the base readout like
every direct term, so it is a part of ``L{i}.attn``'s direct term.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tokenlens.attribution import finer, inputs
from tokenlens.attribution.readout import Readout, final_norm_eps, head_row, norm_weight
from tokenlens.attribution.result import TokenScore
from tokenlens.capture.residual import component_names
from tokenlens.causal.metrics import Metric
from tokenlens.causal.sites import head_sites, layer_sites
from tokenlens.diff import answers, drill
from tokenlens.diff import probes as probe_io
from tokenlens.diff.batched import CaptureRequest, GradientRequest, PatchRequest, Request, run_requests
from tokenlens.diff.check import judge, judge_answer, judge_continuation
from tokenlens.diff.pairing import ModelPair
from tokenlens.diff.result import (
    AggregateRow,
    ComponentEffect,
    DiffReport,
    Probe,
    ProbeDiff,
    Telescope,
    mean_or_nan,
    sorted_effects,
)
from tokenlens.diff.runs import PATCH_BATCH, Run, Tracked, blocked_logits, divergences, read
from tokenlens.diff.weights import weight_summary
from tokenlens.errors import TokenlensError
from tokenlens.models.specs import bare_model
from tokenlens.progress import report

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
        min_gain: The check's threshold for intended probes (absolute probability gain; for a target answer,
            the gain of ``log p(target)`` in nats).
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
        on_probe: Called with (done, total) after each probe; the same is reported as ``"probe"`` to a
            :mod:`tokenlens.progress` listener.

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
        ids, text = probe_io.encode_probe_text(pair.tokenizer, probe, max_positions)
        position = _position(probe, len(ids))
        answer = None
        if probe.generate is not None:
            probe_io.check_generate(probe, len(ids), max_positions)
        elif probe_io.is_answer(pair.tokenizer, probe):
            answer = probe_io.answer_ids(pair.tokenizer, probe, ids, text, vocab, max_positions)
        target = answer[0][0] if answer else probe_io.target_id(pair.tokenizer, probe, vocab)
        encoded.append((probe, ids, position, target, answer))
    jobs = [_probe_job(pair, *item, options) for item in encoded]
    sizes = [len(item[1]) for item in encoded]
    results = _run_together(pair, jobs, sizes, on_probe)
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


def explain_position(
    pair: ModelPair,
    probe: Probe,
    ids: Sequence[int],
    target: int,
    contrast: int | None,
    options: DiffOptions | None = None,
) -> ProbeDiff:
    """Explain the next token after ``ids`` as a probe (its last position): every term of
    ``logit[target] − logit[contrast]`` (of ``logit[target]`` without a contrast), as at a continuation's
    divergence. Used for the most-drifted contexts of a held-out text (:mod:`tokenlens.diff.corpus`)."""
    options = options or DiffOptions()
    return _run_alone(
        pair, _probe_steps(pair, probe, list(ids), len(ids) - 1, target, options, contrast=contrast)
    )


GROUP_TOKENS = 256
"""Probes whose patched runs share forward passes are taken in groups of about this many prompt tokens: each
probe's captured runs are held until its patching is done (about 0.3 MB per token and side on
SmolLM2-135M, 0.6 MB on the Qwen3-0.6B shape)."""

Steps = Generator[Request, Any, ProbeDiff]
"""A probe's computation: it yields each :data:`~tokenlens.diff.batched.Request` for the model it needs and
receives the result (:func:`_run_alone` runs them one at a time, :func:`_run_together` with other probes'
requests of the same kind)."""


def _run_alone(pair: ModelPair, steps: Steps) -> ProbeDiff:
    try:
        request = next(steps)
        while True:
            request = steps.send(run_requests(pair, [request])[0])
    except StopIteration as stop:
        return stop.value


def _run_together(
    pair: ModelPair, jobs: Sequence[Steps], sizes: Sequence[int], on_probe: Callable[[int, int], None] | None
) -> list[ProbeDiff]:
    """Run every probe's steps, in groups of about :data:`GROUP_TOKENS` prompt tokens; within a group each
    probe runs up to its next request, and the group's requests run together
    (:func:`~tokenlens.diff.batched.run_requests`)."""
    results: dict[int, ProbeDiff] = {}
    pending: dict[int, Request] = {}

    def advance(k: int, value: Any) -> None:
        try:
            pending[k] = next(jobs[k]) if value is None else jobs[k].send(value)
        except StopIteration as stop:
            pending.pop(k, None)
            results[k] = stop.value
            report("probe", len(results), len(jobs))
            if on_probe is not None:
                on_probe(len(results), len(jobs))

    start = 0
    while start < len(jobs):
        end, tokens = start, 0
        while end < len(jobs) and (end == start or tokens + sizes[end] <= GROUP_TOKENS):
            tokens += sizes[end]
            end += 1
        for k in range(start, end):
            advance(k, None)
        while pending:
            order = list(pending)
            for k, value in zip(order, run_requests(pair, [pending[k] for k in order]), strict=True):
                advance(k, value)
        start = end
    return [results[k] for k in range(len(jobs))]


def _probe_job(
    pair: ModelPair,
    probe: Probe,
    ids: list[int],
    position: int,
    target: int | None,
    answer,
    options: DiffOptions,
) -> Steps:
    """One probe of :func:`diff` as steps: a continuation, a target answer or a next-token probe."""
    if probe.generate is not None:
        return (yield from _continuation_steps(pair, probe, ids, options))
    if answer is not None:
        scored = answers.score_target(pair, ids, answer[0], judge=probe.judge or "logprob", notes=answer[1])
        result = yield from _probe_steps(pair, probe, ids, position, target, options)
        verdict = judge_answer(probe.expect, scored, options.min_gain, options.max_kl)
        return dataclasses.replace(result, answer=scored, verdict=verdict)
    return (yield from _probe_steps(pair, probe, ids, position, target, options))


def _position(probe: Probe, length: int) -> int:
    try:
        return inputs.resolve_position(probe.position, length)
    except TokenlensError as exc:
        raise TokenlensError(f"{probe.where}: {exc}") from exc


def _continuation_steps(pair: ModelPair, probe: Probe, ids: list[int], options: DiffOptions) -> Steps:
    """A ``generate`` probe: both continuations, and the probe explained at their divergence (if any)."""
    cont = answers.continue_both(pair, ids, probe.generate or 1)
    verdict = judge_continuation(probe.expect, cont, options.max_kl)
    d = cont.divergence
    if d is None or d >= len(cont.base_ids) or d >= len(cont.tuned_ids):
        result = yield from _probe_steps(pair, probe, ids, len(ids) - 1, None, options)
    else:
        prefix = ids + list(cont.base_ids[:d])
        result = yield from _probe_steps(
            pair, probe, prefix, len(prefix) - 1, cont.tuned_ids[d], options, contrast=cont.base_ids[d]
        )
    return dataclasses.replace(result, answer=cont, verdict=verdict)


def _probe_steps(
    pair: ModelPair,
    probe: Probe,
    ids: list[int],
    position: int,
    target: int | None,
    options: DiffOptions,
    *,
    contrast: int | None = None,
) -> Steps:
    """One next-token probe; with ``contrast`` (a continuation's divergence, where ``target`` is the tuned
    token and not the probe's) every term is of ``logit[target] − logit[contrast]``."""
    spec, tokenizer = pair.spec, pair.tokenizer
    input_ids = torch.tensor([ids])
    virtual = pair.virtual_tokens
    bare = bare_model(pair.tuned.model)
    sites = layer_sites(bare, spec) + head_sites(bare, spec)
    splits = frozenset({"neurons", "heads", "sources"} if virtual else {"neurons"})
    base, tuned = yield CaptureRequest(input_ids, position, tuple(sites), (frozenset({"neurons"}), splits))
    limit = inputs.decodable_vocab(tokenizer, base.logits.shape[0])
    base_probs, tuned_probs = base.logits.softmax(-1), tuned.logits.softmax(-1)
    base_top = _top(tokenizer, base.logits, base_probs, limit, options.top_k)
    tuned_top = _top(tokenizer, tuned.logits, tuned_probs, limit, options.top_k)
    tracked = target if target is not None else tuned_top[0].id
    watch: Tracked = tracked if contrast is None else (tracked, contrast)
    names = component_names(spec, bare)
    parts_b = _readout_parts(pair, "base", tracked, contrast)
    split = _telescope(
        base, tuned, names, tracked, contrast, parts_b, _readout_parts(pair, "tuned", tracked, contrast)
    )
    flip = None
    if base_top[0].id != tuned_top[0].id and (tuned_top[0].id, base_top[0].id) != (tracked, contrast):
        pick = (tuned_top[0].id, base_top[0].id)
        parts = (_readout_parts(pair, "base", *pick), _readout_parts(pair, "tuned", *pick))
        flip = _telescope(base, tuned, names, *pick, *parts)
    kl, js = divergences(base.logits, tuned.logits)
    readout_b = _base_readout(base, parts_b)
    components, heads, neurons, experts, notes = yield from _effects(
        pair, input_ids, position, base, tuned, split, watch, readout_b, options
    )
    through_virtual: tuple[ComponentEffect, ...] = ()
    if virtual:
        notes += (f"the tuned model prepends {virtual} virtual tokens: compared at the real positions",)
        through_virtual = _virtual_rows(pair, input_ids, tuned, position, watch, readout_b)
    tracked_base, tracked_tuned = (
        _score(tokenizer, base.logits, base_probs, tracked),
        _score(tokenizer, tuned.logits, tuned_probs, tracked),
    )
    verdict = judge(
        probe.expect,
        flipped=base_top[0].id != tuned_top[0].id,
        target_top=tuned_top[0].id == tracked,
        prob_gain=tracked_tuned.prob - tracked_base.prob,
        kl=kl,
        min_gain=options.min_gain,
        max_kl=options.max_kl,
        base_top1=base_top[0].token,
        tuned_top1=tuned_top[0].token,
        target=None if target is None else tracked_base.token,
        probs=(tracked_base.prob, tracked_tuned.prob),
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
        tracked_is_target=target is not None and contrast is None,
        base_rank=_rank(base.logits, tracked),
        tuned_rank=_rank(tuned.logits, tracked),
        split=split,
        flip_split=flip,
        components=components,
        heads=heads,
        neurons=neurons,
        experts=experts,
        virtual=through_virtual,
        verdict=verdict,
        notes=notes,
        contrast=None if contrast is None else _score(tokenizer, base.logits, base_probs, contrast),
    )


def _top(tokenizer, logits: torch.Tensor, probs: torch.Tensor, limit: int, k: int) -> tuple[TokenScore, ...]:
    return tuple(_score(tokenizer, logits, probs, int(i)) for i in inputs.top_tokens(logits, limit, k))


def _score(tokenizer, logits: torch.Tensor, probs: torch.Tensor, token: int) -> TokenScore:
    return TokenScore(token, inputs.decode_token(tokenizer, token), float(logits[token]), float(probs[token]))


def _rank(logits: torch.Tensor, token: int) -> int:
    return int((logits > logits[token]).sum()) + 1


ReadoutParts = tuple[torch.Tensor, torch.Tensor, float, float]
"""``(u, g, b, eps)`` of one side: head row (minus the contrast's) and norm weight (float64), bias, ε."""


def _readout_parts(pair: ModelPair, which: str, target: int, contrast: int | None) -> ReadoutParts:
    """The readout of one side for ``logit[target] (− logit[contrast])``."""
    with pair.side(which) as model:
        u, bias = head_row(model, pair.spec, target, contrast)
        g = norm_weight(model, pair.spec)
        eps = final_norm_eps(model, pair.spec)
    return u.double().cpu(), g.double().cpu(), (bias or 0.0), eps


def _scale(run: Run, eps: float) -> float:
    return float(torch.rsqrt(run.final_input.pow(2).mean() + eps))


def _telescope(
    base: Run,
    tuned: Run,
    names: tuple[str, ...],
    target: int,
    contrast: int | None,
    parts_b: ReadoutParts,
    parts_t: ReadoutParts,
) -> Telescope:
    """The exact split of ``logit[target] (− logit[contrast])``'s change, in the fixed order of
    :class:`~tokenlens.diff.result.Telescope`; ``parts_b``/``parts_t`` are each side's readout for that same
    target and contrast."""
    u_b, g_b, b_b, eps_b = parts_b
    u_t, g_t, b_t, eps_t = parts_t
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


def _base_readout(base: Run, parts_b: ReadoutParts) -> Readout:
    u, g, bias, eps = parts_b
    return Readout(direction=(u * g).float(), scale=_scale(base, eps), bias=bias)


Rows = tuple[ComponentEffect, ...]


def _effects(
    pair: ModelPair,
    input_ids: torch.Tensor,
    position: int,
    base: Run,
    tuned: Run,
    split: Telescope,
    tracked: Tracked,
    readout_b: Readout,
    options: DiffOptions,
) -> Generator[Request, Any, tuple[Rows, Rows, Rows, Rows, tuple[str, ...]]]:
    """Components (sorted), the heads, neurons and experts of the drilled layers, and notes (as steps: the
    estimates' backward pass, each exact patching and the drill-down's recording are yielded as requests,
    :mod:`tokenlens.diff.batched`)."""
    direct = dict(zip(split.names, split.direct.tolist(), strict=True))
    if not options.causal:
        rows = [ComponentEffect(n, direct[n]) for n in split.names]
        return tuple(sorted_effects(rows)), (), (), (), ("causal effects not measured (--no-causal)",)
    sites = {s.name: s for s in layer_sites(bare_model(pair.tuned.model), pair.spec)}
    # attribution patching on the base run: Σ (a_T − a_B) · ∂logit/∂a_B per site (ESTIMATES)
    metric = _metric(position, tracked)
    pairs = yield GradientRequest(input_ids, metric, tuple(sites.values()))
    estimates = {name: float(((tuned.values[name].float() - a) * g).sum()) for name, (a, g) in pairs.items()}
    grads = {name: g for name, (_, g) in pairs.items()}
    chosen = list(split.names)
    notes: tuple[str, ...] = ()
    if len(chosen) > EXACT_ALL_UP_TO:
        chosen = sorted(chosen, key=lambda n: -abs(estimates[n]))[: options.exact]
        notes += (f"exact patching for the top {len(chosen)} of {len(split.names)} components by estimate",)
    changes = {n: (sites[n], tuned.values[n].float() - base.values[n].float()) for n in chosen}
    runs = {"base": base, "tuned": tuned}
    exact = yield PatchRequest(input_ids, position, tracked, changes, options.reverse, runs)
    rows = []
    for name in split.names:
        causal, kl, reverse = exact.get(name, (None, None, None))
        rows.append(ComponentEffect(name, direct[name], causal, kl, reverse, estimates[name]))
    components = tuple(sorted_effects(rows))
    if options.drill < 1:
        return components, (), (), (), notes
    units = yield from drill.drill_changes(
        pair,
        input_ids,
        base,
        tuned,
        drill.top_layers(components, "attn", options.drill),
        drill.top_layers(components, "mlp", options.drill),
        readout_b,
        options.neurons,
    )
    exact = {}
    if units:
        exact = yield PatchRequest(input_ids, position, tracked, units, options.reverse, runs)
    drilled_rows = drill.drill_rows(units, exact, position, grads, readout_b)
    drilled = (tuple(sorted_effects(rows)) for rows in drilled_rows)
    return components, *drilled, notes


def _virtual_rows(
    pair: ModelPair, input_ids: torch.Tensor, tuned: Run, position: int, tracked: Tracked, readout: Readout
) -> tuple[ComponentEffect, ...]:
    """Per layer ``L{i}.virtual``: the direct term (base readout) of the tuned attention write's part that
    attends to the virtual positions, from the tuned run's source split at the probe position; and, as
    ``causal_reverse``, the tracked logit's change when the tuned run's prompt cannot attend to the virtual
    positions in that layer (measured)."""
    seq = input_ids.shape[1]
    shift, model = pair.virtual_tokens, pair.tuned.model
    direct = []
    for i in range(len(pair.spec.layer_list(model))):
        per_head = finer.layer_sources(
            model,
            pair.spec,
            tuned.internals,
            readout,
            layer_index=i,
            position=shift + position,  # the tuned model's own sequence: virtual positions first
            batch_index=0,
            k=0,
            key_mask=torch.ones(shift + seq),
        )
        direct.append(float(per_head.sources[:, :shift].double().sum()))
    undone = {}  # the tuned run with one layer's attention to the virtual positions cut, batched
    layers = list(range(len(direct)))
    for start in range(0, len(layers), PATCH_BATCH):
        chunk = layers[start : start + PATCH_BATCH]
        clean, *cut = blocked_logits(model, pair.spec, input_ids, position, [[]] + [[i] for i in chunk])
        undone |= {
            i: float(read(row, tracked) - read(clean, tracked)) for i, row in zip(chunk, cut, strict=True)
        }
    rows = [ComponentEffect(f"L{i}.virtual", v, causal_reverse=undone[i]) for i, v in enumerate(direct)]
    return tuple(sorted_effects(rows))


def _metric(position: int, tracked: Tracked) -> Metric:
    """The tracked value at ``position`` as a metric (for the estimates' backward pass)."""
    if isinstance(tracked, tuple):
        return Metric("logit_diff", tracked[0], position, contrast_id=tracked[1])
    return Metric("logit", tracked, position)


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

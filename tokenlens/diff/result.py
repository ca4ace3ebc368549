"""Result objects of a base-vs-tuned diff. They carry their own labels, so renderers never need a model.

One :class:`ProbeDiff` per probe: how the next-token distribution moved (KL, JS, top-k before/after, flip),
the exact split of the tracked token's logit change (:class:`Telescope`), and per component its measured
causal effect (:class:`ComponentEffect`). A :class:`DiffReport` holds all probes, the weight-level summary
and the pass/fail verdicts of the check.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from tokenlens.attribution.result import TOLERANCE, TokenScore

READOUT_TERMS = ("readout.scale", "readout.norm", "readout.head", "readout.logit_bias")
"""The readout's own change, in the fixed telescoping order of :class:`Telescope`."""


@dataclass(frozen=True)
class Probe:
    """One prompt whose next-token choice is compared.

    Attributes:
        prompt: Plain text, used as is (``None`` when ``messages`` is given).
        messages: Chat turns rendered with the model's chat template (generation prompt added).
        target: The token the fine-tune should (or should not) move, as decoded text (``" Lyon"``).
        expect: ``"changed"`` (an intended probe), ``"unchanged"`` (a control) or ``None`` (not judged).
        group: A free label to aggregate by (``"edit"``, ``"capitals"``, …).
        position: Which prompt position's prediction; negative counts from the end.
        line: The probe file's line number (``None`` for command-line prompts).
        thinking: For ``messages``: Qwen3's thinking (``True``) or non-thinking (``False``) mode of the chat
            template (``enable_thinking``); ``None``: the template's own default.
        generate: Base and tuned each decode this many tokens greedily after the prompt, and the diff compares
            the two continuations (:class:`Continuations`); ``None``: one next token.
        judge: How a target answer is judged (:class:`TargetAnswer`): ``"logprob"`` (the gain of
            ``log p(target)``, the default for a target of several tokens) or ``"greedy"`` (tuned's greedy
            decoding reproduces it); ``None``: a one-token target judged as a next token.
    """

    prompt: str | None
    messages: tuple[dict, ...] | None = None
    target: str | None = None
    expect: str | None = None
    group: str | None = None
    position: int = -1
    line: int | None = None
    thinking: bool | None = None
    generate: int | None = None
    judge: str | None = None

    @property
    def label(self) -> str:
        """A one-line label: the prompt, or the last message's content."""
        text = (
            self.prompt if self.prompt is not None else str((self.messages or ({},))[-1].get("content", ""))
        )
        return " ".join(text.split())

    @property
    def where(self) -> str:
        """How an error message names the probe: its probe-file line, else its prompt."""
        return f"probe on line {self.line}" if self.line is not None else f"prompt {self.label!r}"


@dataclass(frozen=True)
class Telescope:
    """The exact split of one readout value's change from base to tuned.

    With ``u`` the head row (minus the contrast's), ``g`` the final-norm weight, ``s`` the norm's scale and
    ``b`` the head bias, in this fixed order (base readout frozen first)::

        Δ = Σ_c u_B·(g_B ⊙ (c_T − c_B))·s_B          direct, per component
          + u_B·(g_B ⊙ h_T)·(s_T − s_B)              readout.scale
          + u_B·((g_T − g_B) ⊙ h_T)·s_T              readout.norm
          + (u_T − u_B)·(g_T ⊙ h_T)·s_T              readout.head
          + (b_T − b_B)                              readout.logit_bias

    Attributes:
        target_id: The tracked token.
        contrast_id: Explain ``logit[target] − logit[contrast]`` instead (``None``: the plain logit).
        names: Component names in model order (``embed``, ``L0.attn``, ``L0.mlp``, …).
        direct: ``(component,)`` float32 the component terms.
        readout: ``(4,)`` float32 the readout terms, in :data:`READOUT_TERMS` order.
        base_value: The value the base model computed.
        tuned_value: The value the tuned model computed.
    """

    target_id: int
    contrast_id: int | None
    names: tuple[str, ...]
    direct: torch.Tensor
    readout: torch.Tensor
    base_value: float
    tuned_value: float

    def __post_init__(self) -> None:
        if self.direct.shape != (len(self.names),) or self.readout.shape != (len(READOUT_TERMS),):
            raise ValueError(f"{len(self.names)} names for {tuple(self.direct.shape)} direct terms")

    @property
    def observed(self) -> float:
        """The change the two models actually computed, ``tuned − base``."""
        return self.tuned_value - self.base_value

    @property
    def total(self) -> float:
        """Σ direct + Σ readout terms (float64)."""
        return float(self.direct.double().sum() + self.readout.double().sum())

    @property
    def error(self) -> float:
        """``total − observed``: rounding only; not absorbed anywhere."""
        return self.total - self.observed

    @property
    def exact(self) -> bool:
        """The terms add up to the observed change within :data:`TOLERANCE`."""
        scale = max(1.0, float(self.direct.abs().max()) if len(self.names) else 0.0, abs(self.observed))
        return abs(self.error) <= TOLERANCE * scale * 10

    def as_dict(self) -> dict[str, float]:
        """Every term by name: the components, then the readout terms."""
        terms = dict(zip(self.names, self.direct.tolist(), strict=True))
        terms.update(zip(READOUT_TERMS, self.readout.tolist(), strict=True))
        return terms


@dataclass(frozen=True)
class ComponentEffect:
    """How one component (a layer's attention or MLP, the embedding, a head, a neuron) moved the token.

    Attributes:
        name: ``embed``, ``L3.attn``, ``L3.mlp``, ``L3.H5``, ``L3.N120``, ``L3.E7`` or ``L3.virtual``.
        direct: Its term in the exact split (:class:`Telescope`), base readout frozen.
        causal: Exact: the tracked value's change when this component's tuned output is patched into the
            base run (everything downstream recomputed). ``None`` when not measured (see ``estimate``).
        causal_kl: KL(base ‖ base with this component patched), nats; ``None`` when not measured.
        causal_reverse: Exact: the change when the base output is patched into the tuned run (usually about
            ``−causal``); ``None`` when not measured.
        estimate: The attribution-patching (first-order) ESTIMATE of ``causal``; ``None`` when not computed.
    """

    name: str
    direct: float | None
    causal: float | None = None
    causal_kl: float | None = None
    causal_reverse: float | None = None
    estimate: float | None = None


@dataclass(frozen=True)
class Verdict:
    """The check's judgement of one probe.

    Attributes:
        expect: ``"changed"``, ``"unchanged"`` or ``None`` (reported, not judged).
        passed: ``True``/``False``, ``None`` when not judged.
        reason: One line: which threshold held or failed, with the numbers.
    """

    expect: str | None
    passed: bool | None
    reason: str


@dataclass(frozen=True)
class TargetAnswer:
    """A probe's target answer (several tokens, or one with ``judge``) scored teacher-forced by both models.

    Both models read prompt + target in one forward pass each; the logits before answer token ``k`` score it.
    ``log p(target) = Σ_k log p(token_k)`` (natural log, nats). Greedy decoding reproduces the target exactly
    when every answer token is the model's top-1 (among decodable ids) after the prompt and the tokens
    before it.

    Attributes:
        ids: The answer's token ids (tokenized after the prompt: see
            :mod:`tokenlens.attribution.sequence_inputs`).
        tokens: Their decoded texts.
        base_logprobs: ``log p(token_k)`` under the base model, one per token.
        tuned_logprobs: The same under the tuned model.
        base_top: The base model's top-1 token at each answer position (teacher-forced).
        tuned_top: The tuned model's.
        kl: KL(base ‖ tuned) in nats at each answer position.
        judge: ``"logprob"`` or ``"greedy"``: what the check judges.
        notes: How the answer was tokenized, where that matters.
    """

    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    base_logprobs: tuple[float, ...]
    tuned_logprobs: tuple[float, ...]
    base_top: tuple[TokenScore, ...]
    tuned_top: tuple[TokenScore, ...]
    kl: tuple[float, ...]
    judge: str = "logprob"
    notes: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The answer's text (its tokens joined)."""
        return "".join(self.tokens)

    @property
    def base_logprob(self) -> float:
        """``log p(target)`` under the base model (nats)."""
        return math.fsum(self.base_logprobs)

    @property
    def tuned_logprob(self) -> float:
        """``log p(target)`` under the tuned model (nats)."""
        return math.fsum(self.tuned_logprobs)

    @property
    def gain(self) -> float:
        """The sequence log-probability gain, tuned − base, in nats of the whole target."""
        return self.tuned_logprob - self.base_logprob

    def departs(self, side: str) -> int | None:
        """Where ``side``'s greedy decoding first departs from the target (0-based); ``None``: never."""
        top = self.base_top if side == "base" else self.tuned_top
        return next((k for k, (t, i) in enumerate(zip(top, self.ids)) if t.id != i), None)


@dataclass(frozen=True)
class Continuations:
    """Base and tuned each decode greedily after the prompt; where their continuations part.

    Attributes:
        steps: Tokens asked for (a continuation ends early after the end-of-sequence token).
        base_ids: The base model's continuation.
        base_tokens: Its decoded tokens.
        tuned_ids: The tuned model's continuation.
        tuned_tokens: Its decoded tokens.
        kl: KL(base ‖ tuned) in nats before each token of the base continuation, both models teacher-forced
            on prompt + base continuation (one value per base token).
        divergence: The first index (0-based) where the continuations differ, ``None`` when identical. The
            probe's split is then taken there: the prefix is the prompt and the common continuation, the
            tracked token the tuned token and the contrast the base token.
    """

    steps: int
    base_ids: tuple[int, ...]
    base_tokens: tuple[str, ...]
    tuned_ids: tuple[int, ...]
    tuned_tokens: tuple[str, ...]
    kl: tuple[float, ...]
    divergence: int | None

    @property
    def mean_kl(self) -> float:
        """The mean per-token KL(base ‖ tuned) along the base continuation (nats)."""
        return math.fsum(self.kl) / len(self.kl) if self.kl else 0.0

    @property
    def max_kl(self) -> float:
        """The largest per-token KL along the base continuation."""
        return max(self.kl, default=0.0)


@dataclass(frozen=True)
class ProbeDiff:
    """Base vs tuned on one probe, at one position.

    Attributes:
        probe: The probe.
        token_ids: The prompt's token ids (chat template applied).
        tokens: Their decoded texts.
        position: The explained position (non-negative).
        base_top: The base model's top-k tokens there.
        tuned_top: The tuned model's top-k tokens there.
        kl: KL(base ‖ tuned) in nats, over the full vocabulary.
        js: Jensen-Shannon divergence in nats.
        tracked: The tracked token: the probe's target, else the tuned model's top-1 — with its base logit and
            probability.
        tracked_tuned: The same token scored by the tuned model.
        tracked_is_target: Whether the tracked token is the probe's ``target``.
        base_rank: The tracked token's rank under the base model (1 = top).
        tuned_rank: Its rank under the tuned model.
        split: The exact split of the tracked token's logit change.
        flip_split: When base and tuned disagree on top-1: the split of the change of
            ``logit[tuned top-1] − logit[base top-1]``; else ``None``.
        components: Embedding and layer components, sorted by |causal| (then |estimate|, then |direct|).
        heads: Drill-down into the attention layers with the largest effect (per head).
        neurons: Drill-down into the MLP layers with the largest effect (top neurons by |direct|).
        experts: Drill-down into the same layers where they are mixture-of-experts layers: every routed
            expert's write change ``L{i}.E{e}`` (empty for a dense model).
        virtual: With a prompt-tuning adapter, per layer ``L{i}.virtual``: the direct term (base readout) of
            the part of the tuned attention write that comes from the virtual positions, a part of
            ``L{i}.attn``'s direct term, and as ``causal_reverse`` the measured change when the tuned run's
            prompt cannot attend to the virtual positions in that layer (empty otherwise).
        verdict: The check's judgement.
        notes: Caveats for this probe (virtual tokens, components without exact values, …).
        contrast: At a continuation's divergence: the base model's token there, scored by the base model;
            ``split`` and every component's numbers are then of ``logit[tracked] − logit[contrast]``.
        answer: An answer probe's :class:`TargetAnswer` or :class:`Continuations` (``None`` for a next-token
            probe). With continuations that diverge, ``token_ids`` / ``position`` are the prefix up to the
            divergence.
    """

    probe: Probe
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    position: int
    base_top: tuple[TokenScore, ...]
    tuned_top: tuple[TokenScore, ...]
    kl: float
    js: float
    tracked: TokenScore
    tracked_tuned: TokenScore
    tracked_is_target: bool
    base_rank: int
    tuned_rank: int
    split: Telescope
    flip_split: Telescope | None
    components: tuple[ComponentEffect, ...]
    heads: tuple[ComponentEffect, ...]
    neurons: tuple[ComponentEffect, ...]
    verdict: Verdict
    notes: tuple[str, ...] = ()
    experts: tuple[ComponentEffect, ...] = ()
    virtual: tuple[ComponentEffect, ...] = ()
    contrast: TokenScore | None = None
    answer: TargetAnswer | Continuations | None = None

    @property
    def flipped(self) -> bool:
        """Base and tuned choose different top-1 tokens."""
        return self.base_top[0].id != self.tuned_top[0].id

    @property
    def prob_gain(self) -> float:
        """The tracked token's probability change, tuned − base."""
        return self.tracked_tuned.prob - self.tracked.prob


@dataclass(frozen=True)
class WeightChange:
    """One parameter tensor that differs between base and tuned.

    Attributes:
        name: The parameter's path in the base model (``model.layers.2.mlp.down_proj.weight``); PEFT
            wrappers' ``base_layer`` segments are dropped. For tensors only the tuned model has (an added
            bias, an adapter's matrices, virtual tokens) the tuned path.
        kind: ``changed`` (both have it), ``added`` (tuned only), ``lora`` (the LoRA update ``ΔW = s·B·A``)
            or ``effective`` (a PEFT wrapper's effective weight change, measured through the module).
        layer: The decoder layer it belongs to (``None`` outside layers).
        norm: ``‖ΔW‖_F`` (for ``added``: ``‖W‖_F``).
        relative: ``‖ΔW‖_F / ‖W_base‖_F`` (``None`` for ``added``).
        numel: Elements in the tensor.
    """

    name: str
    kind: str
    layer: int | None
    norm: float
    relative: float | None
    numel: int


@dataclass(frozen=True)
class WeightSummary:
    """Which parameters differ, largest relative change first.

    Attributes:
        changes: The differing tensors.
        unchanged: How many base tensors are bit-identical in the tuned model.
        note: How the changes were measured (two models compared; an adapter read without merging; …).
    """

    changes: tuple[WeightChange, ...]
    unchanged: int
    note: str

    @property
    def layers(self) -> tuple[int, ...]:
        """The decoder layers with any change, ascending."""
        return tuple(sorted({c.layer for c in self.changes if c.layer is not None}))


@dataclass(frozen=True)
class AggregateRow:
    """One component's effect averaged over probes.

    Attributes:
        name: The component.
        mean_abs_causal: Mean |causal| over probes where it was measured (``nan`` when never).
        mean_abs_direct: Mean |direct| over all probes.
        measured: On how many probes ``causal`` was measured exactly.
        probes: How many probes were averaged.
    """

    name: str
    mean_abs_causal: float
    mean_abs_direct: float
    measured: int
    probes: int


@dataclass(frozen=True)
class DiffReport:
    """A whole diff: every probe, the weight summary, aggregates and the check's verdicts.

    Attributes:
        base: The base model's reference.
        tuned: The tuned model's reference.
        pairing: How the two were held: ``"adapter toggled (one model in memory)"`` or ``"two models"``.
        probes: One :class:`ProbeDiff` per probe, in input order.
        weights: The weight-level summary.
        aggregate: Over all probes, sorted by mean |causal| (then mean |direct|).
        groups: The same per probe group (probes without a group are under ``""``).
        min_gain: The check's threshold for intended probes (absolute probability gain).
        max_kl: The check's threshold for controls (KL(base‖tuned), nats).
        corpus: The drift over a held-out text (``--corpus``), ``None`` when none was scored.
    """

    base: str
    tuned: str
    pairing: str
    probes: tuple[ProbeDiff, ...]
    weights: WeightSummary
    aggregate: tuple[AggregateRow, ...]
    groups: dict[str, tuple[AggregateRow, ...]]
    min_gain: float
    max_kl: float
    corpus: CorpusDrift | None = None

    @property
    def failures(self) -> tuple[ProbeDiff, ...]:
        """Probes whose verdict failed."""
        return tuple(p for p in self.probes if p.verdict.passed is False)

    @property
    def passed(self) -> bool:
        """No judged probe failed, and the corpus drift (when judged) stayed within its threshold."""
        return not self.failures and (self.corpus is None or self.corpus.passed is not False)

    @property
    def metrics(self) -> tuple[EditMetric, ...]:
        """The knowledge-editing metrics of the probes (:func:`edit_metrics`)."""
        return edit_metrics(self.probes, self.min_gain)

    @property
    def judged(self) -> int:
        """How many probes had an expectation."""
        return sum(p.verdict.passed is not None for p in self.probes)


def sorted_effects(effects: Iterable[ComponentEffect]) -> list[ComponentEffect]:
    """Largest measured |causal| first (|reverse| for rows measured only that way, such as ``L{i}.virtual``);
    unmeasured ones after, by |estimate|, then |direct|; a missing, NaN or infinite value counts as absent.

    A stable sort: the given order is kept among equal keys (so an already sorted list is unchanged).
    """

    def size(value: float | None) -> float | None:
        return None if value is None or not math.isfinite(value) else abs(value)

    def key(e: ComponentEffect) -> tuple:
        causal = size(e.causal if e.causal is not None else e.causal_reverse)
        estimate, direct = size(e.estimate), size(e.direct)
        return (
            causal is None,
            -(causal or 0.0),
            estimate is None,
            -(estimate or 0.0),
            direct is None,
            -(direct or 0.0),
        )

    return sorted(effects, key=key)


def mean_or_nan(values: list[float]) -> float:
    """The mean, or ``nan`` for no values."""
    return sum(values) / len(values) if values else math.nan


PARAPHRASE, PORTABILITY = "paraphrase", "portability"
"""The probe groups the editing metrics read: a group named ``paraphrase`` (or starting ``paraphrase ``,
such as ``paraphrase (held out)``) holds rephrasings of the edit, ``portability`` facts that should follow
from it."""


def in_group(group: str | None, name: str) -> bool:
    """Whether a probe's ``group`` is ``name`` or starts with ``name`` and a space (case ignored)."""
    g = (group or "").strip().lower()
    return g == name or g.startswith(name + " ")


@dataclass(frozen=True)
class EditMetric:
    """One knowledge-editing metric over a share of the probes, with the protocol that defines it.

    Attributes:
        name: ``reliability``, ``generalization``, ``portability`` or ``locality``.
        protocol: One sentence: what counts, over which probes.
        hits: Probes that count as a success.
        total: Probes the metric is over (0: not measured).
        top1: Intended-probe metrics: probes whose target is the tuned top-1 (a target answer: every token,
            teacher-forced); ``None`` for locality.
        mean_kl: Locality: the mean KL(base ‖ tuned) over the controls (nats); ``None`` otherwise.
    """

    name: str
    protocol: str
    hits: int
    total: int
    top1: int | None = None
    mean_kl: float | None = None

    @property
    def share(self) -> float:
        """``hits / total`` (``nan`` over no probe)."""
        return self.hits / self.total if self.total else math.nan


def edit_metrics(probes: Sequence[ProbeDiff], min_gain: float) -> tuple[EditMetric, ...]:
    """Reliability, generalization, locality, and portability when a probe is in a ``portability`` group.

    The intended probes (``"expect": "changed"``) split by group: ``paraphrase`` → generalization,
    ``portability`` → portability, the rest → reliability; each counts the probes whose verdict passed.
    Locality counts the controls (``"expect": "unchanged"``) whose top-1 is kept (see :data:`PROTOCOLS`).
    """
    intended = [p for p in probes if p.probe.expect == "changed"]
    controls = [p for p in probes if p.probe.expect == "unchanged"]

    def share(name: str, members: list[ProbeDiff]) -> EditMetric:
        hits = sum(p.verdict.passed is True for p in members)
        top1 = sum(map(_top1, members))
        return EditMetric(name, PROTOCOLS[name].format(g=min_gain), hits, len(members), top1)

    para = [p for p in intended if in_group(p.probe.group, PARAPHRASE)]
    port = [p for p in intended if in_group(p.probe.group, PORTABILITY)]
    rest = [p for p in intended if p not in para and p not in port]
    kls = [_control_kl(p) for p in controls]
    locality = EditMetric(
        "locality",
        PROTOCOLS["locality"],
        sum(map(_kept, controls)),
        len(controls),
        mean_kl=mean_or_nan(kls) if kls else None,
    )
    metrics = [share("reliability", rest), share("generalization", para), locality]
    return tuple(metrics + ([share("portability", port)] if port else []))


PROTOCOLS = {
    "reliability": (
        "intended probes (expect changed) outside the paraphrase and portability groups: the share that pass "
        "— the target becomes the tuned top-1 next token or its probability gains ≥ {g:g} (a target answer: "
        "log p(target) gains ≥ {g:g} nats, or judge greedy: the tuned greedy decoding reproduces it); top-1: "
        "the share whose target is the tuned top-1 (a target answer: every token, teacher-forced)"
    ),
    "generalization": (
        "intended probes in a paraphrase group (rephrasings of the edit, meant to be held out from "
        "training): the share that pass by the reliability rule (p gain ≥ {g:g} or top-1); top-1 as for "
        "reliability"
    ),
    "portability": (
        "intended probes in a portability group (facts that should follow from the edit): the share that "
        "pass by the reliability rule (p gain ≥ {g:g} or top-1); top-1 as for reliability"
    ),
    "locality": (
        "controls (expect unchanged): the share whose top-1 next token is the same for base and tuned, "
        "teacher-forced on the probe's own prompt (a target answer: at every answer token; generate: "
        "identical greedy continuations); mean KL(base ‖ tuned) over them alongside"
    ),
}
"""Each metric's protocol, one sentence (``{g}``: the check's ``min_gain``)."""


def _top1(p: ProbeDiff) -> bool:
    if isinstance(p.answer, TargetAnswer):
        return p.answer.departs("tuned") is None
    return p.tracked_is_target and p.tuned_top[0].id == p.tracked.id


def _kept(p: ProbeDiff) -> bool:
    if isinstance(p.answer, TargetAnswer):
        return all(b.id == t.id for b, t in zip(p.answer.base_top, p.answer.tuned_top, strict=True))
    if isinstance(p.answer, Continuations):
        return p.answer.divergence is None
    return not p.flipped


def _control_kl(p: ProbeDiff) -> float:
    if isinstance(p.answer, TargetAnswer):
        return math.fsum(p.answer.kl) / len(p.answer.kl)
    if isinstance(p.answer, Continuations):
        return p.answer.mean_kl
    return p.kl


@dataclass(frozen=True)
class DriftedContext:
    """One of the most-drifted positions of a held-out text, explained like a probe.

    Attributes:
        passage: The passage (or window) it is in, 0-based, in corpus order.
        position: The token position in the passage whose next-token distribution is compared (0-based).
        kl: KL(base ‖ tuned) there, nats (from the batched pass over the corpus).
        base_top1: The base model's top-1 next token there.
        tuned_top1: The tuned model's.
        probe: The position explained as a probe (prefix = the passage up to the position): the exact split
            and components of ``logit[tuned top-1] − logit[base top-1]`` (of ``logit[top-1]`` when both
            agree).
    """

    passage: int
    position: int
    kl: float
    base_top1: TokenScore
    tuned_top1: TokenScore
    probe: ProbeDiff

    @property
    def changed(self) -> bool:
        """Base and tuned choose different top-1 tokens here."""
        return self.base_top1.id != self.tuned_top1.id

    @property
    def text(self) -> str:
        """The context: the passage's text up to and including the token at ``position``."""
        return "".join(self.probe.tokens)


@dataclass(frozen=True)
class CorpusDrift:
    """Per-token KL(base ‖ tuned) over every token of a held-out text.

    Attributes:
        source: The corpus file (``default``: the built-in sample).
        split: ``lines`` (a passage per line, long ones cut into windows) or ``windows`` (the whole text cut
            into windows).
        window: Tokens per window at most.
        passages: Passages (windows) scored.
        tokens: Positions scored: every token of every passage (the next-token distribution after it).
        unscored: Tokens past ``max_tokens`` left out (0: the whole text was scored).
        mean_kl: The mean per-token KL(base ‖ tuned), nats.
        p99_kl: Its 99th percentile (linear interpolation between order statistics).
        max_kl: Its largest value.
        top1_changed: Positions where base and tuned choose different top-1 tokens.
        drifted: The most-drifted contexts, largest KL first, at most one per passage.
        threshold: ``check --max-corpus-kl``: the mean KL allowed; ``None``: reported, not judged.
    """

    source: str
    split: str
    window: int
    passages: int
    tokens: int
    unscored: int
    mean_kl: float
    p99_kl: float
    max_kl: float
    top1_changed: int
    drifted: tuple[DriftedContext, ...]
    threshold: float | None = None

    @property
    def top1_share(self) -> float:
        """The share of positions whose top-1 changed."""
        return self.top1_changed / self.tokens if self.tokens else math.nan

    @property
    def passed(self) -> bool | None:
        """Mean KL within the threshold; ``None`` when no threshold was set (reported only)."""
        return None if self.threshold is None else self.mean_kl <= self.threshold

    @property
    def reason(self) -> str:
        """One line: the mean KL against the threshold, or that it is reported only."""
        if self.threshold is None:
            return f"mean KL {self.mean_kl:.4g} nats (no --max-corpus-kl: reported, not judged)"
        sign = "<=" if self.passed else ">"
        return f"mean KL {self.mean_kl:.4g} {sign} {self.threshold:g} nats"

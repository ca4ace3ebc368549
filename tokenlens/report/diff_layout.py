"""What a base-vs-tuned diff report contains and in which order, whatever its format (terminal, HTML,
Markdown), and how it words its verdicts.

A diff report is a summary, the probe table, one section per probe, the changed weights and the components
over all probes (:func:`plan_diff`); a probe's own section shows its answer (a target answer or both
continuations) when it has one, its exact split (and the flip split when its top-1 changed), then one table of
component effects per drill-down it has (:func:`probe_plan`). The
terminal, HTML and Markdown renderers all follow these two plans, so every format shows the same things in
the same order; each only words and styles them its own way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import zip_longest

from tokenlens.attribution.result import TokenScore
from tokenlens.diff.result import (
    AggregateRow,
    ComponentEffect,
    Continuations,
    CorpusDrift,
    DiffReport,
    DriftedContext,
    EditMetric,
    ProbeDiff,
    TargetAnswer,
    Telescope,
    sorted_effects,
)

DETAIL_ALL = 6
"""The terminal details every probe up to this many probes; past it only failing and flipped ones."""

HOW_TO_READ = (
    "Each probe's tracked token is its target (else the tuned model's top-1). Its logit change splits "
    "exactly: one direct term per component (its own output change, read through the base model's frozen "
    "final norm and head), plus the readout's own change (readout.scale, readout.norm, readout.head, "
    "readout.logit_bias); the terms add up to the observed change up to float32 rounding (the split error).",
    "causal (MEASURED): the tracked logit's change when that component's tuned output is patched into the "
    "base run, everything downstream recomputed; reverse: the base output patched into the tuned run; KL: "
    "KL(base ‖ patched base) in nats. ESTIMATE: a first-order attribution-patching estimate of causal. "
    "— means not measured. Components are sorted by measured |causal|, then |estimate|, then |direct|.",
    "The check: an intended probe (expect changed) passes when its target becomes the tuned top-1 or its "
    "probability gains at least min_gain; a control (expect unchanged) passes when its top-1 is kept and "
    "KL(base ‖ tuned) stays at most max_kl.",
    "Whole answers: a target of several tokens is scored teacher-forced by both models; log p(target) is "
    "the sum of its tokens' log-probabilities (nats), and an intended probe passes when it gains at least "
    "min_gain nats (judge greedy: when the tuned model's greedy decoding reproduces the target). With "
    "generate, base and tuned each decode greedily; KL(base ‖ tuned) is measured before each token of the "
    "base continuation (both models teacher-forced on it), and where the continuations diverge the split is "
    "of logit[tuned token] − logit[base token] after the prompt and the common continuation. A control with "
    "generate passes when the continuations are identical and the mean KL stays at most max_kl.",
    "Probes are numbered by their probe file's line (as tokenlens check names them), command-line prompts "
    "from 1 in the order given.",
    "Editing metrics (reported, not judged): reliability, generalization (probes in a paraphrase group), "
    "portability (a portability group) and locality, each with its protocol: what counts, over which probes; "
    "the drift over a held-out text (--corpus) states its own.",
)
"""Paragraphs explaining a diff report (Markdown and HTML; each adds its colours: :data:`COLOURS_HTML`,
:data:`COLOURS_MARKDOWN`)."""

RANKS = (
    "Ranks count from 1: rank 1 is the top-1 token (also base_rank and tuned_rank in the JSON); top-k lists "
    "are numbered the same way."
)
"""How a diff report counts ranks (every format)."""

COLOURS_HTML = (
    "Colours: in the tables, and in the probes × components heatmap table, green is a positive value (it "
    "raises the tracked token's logit) and red a negative one, a stronger shade a larger |value|; in the "
    "figures (waterfalls, top-k bars) blue is up and red down."
)
"""What the colours of the HTML diff report mean."""

COLOURS_MARKDOWN = (
    "Colours (the tables here are plain numbers): in the figures, the probes × components heatmap and the "
    "waterfalls, blue is a positive value (it raises the tracked token's logit) and red a negative one."
)
"""What the colours of the Markdown diff report mean."""

HEATMAP_COLUMNS = 30
"""A heatmap figure shows at most this many components; more are split into parts of about equal width
(:func:`column_chunks`), each with the same colour scale."""

MAX_PROBES = 8
"""Per-probe figures go to at most this many probes besides the intended ones (:func:`chosen_probes`)."""

MAX_INTENDED = 8
"""Per-probe figures go to at most this many intended probes (``expect: changed``), counted apart."""

FIGURE_ALT = {
    "heatmap": "Each component's effect on each probe's tracked-token logit (probes × components)",
    "waterfall": "The exact split of probe {i}'s tracked-token logit change, base to tuned",
    "flip": "The exact split of probe {i}'s change of logit[tuned top-1] − logit[base top-1]",
    "topk": "Probe {i}: the base and the tuned model's top-k next tokens",
}
"""Alt text of each diff figure, by the slug's kind (``waterfall-3`` -> ``waterfall`` with ``i = 3``, the
probe's number)."""


def probe_number(p: ProbeDiff, index: int) -> int:
    """The number a probe has in every report, JSON and ``check`` line alike: its probe file's line (what a
    CI user finds in their file; a built-in task's probes have their line in the task's ``probes.jsonl``),
    else, for command-line prompts, its place among them counted from 1.

    Args:
        p: The probe's diff.
        index: Its place in :attr:`~tokenlens.diff.result.DiffReport.probes` (0-based).
    """
    return p.probe.line if p.probe.line is not None else index + 1


def probe_numbers(report: DiffReport) -> list[int]:
    """:func:`probe_number` of every probe, in report order."""
    return [probe_number(p, i) for i, p in enumerate(report.probes)]


def probe_where(p: ProbeDiff, index: int) -> str:
    """``line 4`` (a probe file's line) or ``prompt 2`` (the second ``--prompt``): a probe's number, named."""
    return f"line {p.probe.line}" if p.probe.line is not None else f"prompt {index + 1}"


def probe_title(p: ProbeDiff, index: int) -> str:
    """A probe section's heading: ``Probe on line 4`` or ``Prompt 2``."""
    return f"Probe on line {p.probe.line}" if p.probe.line is not None else f"Prompt {index + 1}"


def number_column(report: DiffReport) -> str:
    """The heading of the probe-number column: ``line`` when the probes come from a file, else ``#``."""
    return "line" if report.probes and all(p.probe.line is not None for p in report.probes) else "#"


CORPUS_PROTOCOL = (
    "KL(base ‖ tuned) over the full vocabulary at every token of a held-out text (the next-token "
    "distribution after it, each passage read from its start); mean and p99 over all those tokens; top-1 "
    "changed: the share of tokens where the two models' top-1 next tokens differ; most drifted: the largest "
    "KL of each passage, largest first, each explained like a probe — the exact split and components of "
    "logit[tuned top-1] − logit[base top-1] after the context."
)
"""The corpus drift's protocol, one sentence."""


@dataclass(frozen=True)
class DiffSection:
    """One section of a diff report, in page order.

    Attributes:
        anchor: Its stable id: ``summary``, ``probes``, ``probe-{n}`` (``n`` the probe's number,
            :func:`probe_number`), ``weights``, ``aggregate``, ``figures``, ``how-to-read``.
        title: Its heading (a probe's is worded by each format: it shows the probe's label).
        index: The probe's place in ``report.probes`` (0-based) for a probe section, else ``None``.
    """

    anchor: str
    title: str
    index: int | None = None

    @property
    def key(self) -> str:
        """What renders it: the anchor, or ``probe`` for every probe section."""
        return "probe" if self.index is not None else self.anchor


def plan_diff(
    report: DiffReport, slugs: Sequence[str] = (), probes: Sequence[int] | None = None
) -> tuple[list[DiffSection], dict[str, list[str]]]:
    """The sections of a diff report in page order, and each figure's section (by anchor).

    Args:
        report: The diff.
        slugs: The figures' slugs (:func:`figure_home`); a ``figures`` section holds those with no other home.
        probes: The probes that get a section (default: all).
    """
    homes: dict[str, list[str]] = {}
    numbers = probe_numbers(report)
    for slug in slugs:
        homes.setdefault(figure_home(slug, numbers), []).append(slug)
    shown = range(len(report.probes)) if probes is None else probes
    plan = [DiffSection("summary", "Summary")]
    if any(p.probe.expect for p in report.probes):
        plan.append(DiffSection("metrics", "Editing metrics"))
    plan.append(DiffSection("probes", "Probes"))
    if report.corpus is not None:
        plan.append(DiffSection("corpus", "Drift over a held-out text"))
    plan += [DiffSection(f"probe-{numbers[i]}", probe_title(report.probes[i], i), i) for i in shown]
    plan += [DiffSection("weights", "Weights"), DiffSection("aggregate", "Components over all probes")]
    if "figures" in homes:
        plan.append(DiffSection("figures", "Figures"))
    plan.append(DiffSection("how-to-read", "How to read this report"))
    return plan, homes


def figure_home(slug: str, numbers: Sequence[int]) -> str:
    """The section a figure goes to: ``probes`` for the heatmap and its parts (``heatmap``, ``heatmap-2of3``),
    ``probe-3`` for ``waterfall-3`` (3 one of the probes' ``numbers``, :func:`probe_number`), else
    ``figures``."""
    if slug == "heatmap" or slug.startswith("heatmap-"):
        return "probes"
    kind, _, rest = slug.rpartition("-")
    if kind and rest.isdigit() and int(rest) in numbers:
        return f"probe-{int(rest)}"
    return "probes" if slug == "heatmap" else "figures"


def figure_alt(slug: str) -> str:
    """A diff figure's alt text from its slug (:data:`FIGURE_ALT`), ``Figure {slug}`` for an unknown one."""
    if slug.startswith("heatmap-"):
        part, _, parts = slug.removeprefix("heatmap-").partition("of")
        return f"{FIGURE_ALT['heatmap']}, part {part} of {parts}"
    kind, _, i = slug.rpartition("-")
    return FIGURE_ALT.get(kind, FIGURE_ALT.get(slug, f"Figure {slug}")).format(i=i)


@dataclass(frozen=True)
class ProbePart:
    """One part of a probe's section, in order.

    Attributes:
        key: ``answer`` (the target answer or the two continuations: ``p.answer``), ``split`` (the tracked
            token's exact split), ``flip`` (the split of ``logit[tuned top-1] − logit[base top-1]``), or a
            drill-down: ``components``, ``heads``, ``neurons``, ``experts``, ``virtual``.
        title: A drill-down's name (``Heads``); empty for a split.
        note: What kind of number a drill-down holds when it is not the usual set (``direct``), else "".
        split: The split, for ``split`` and ``flip``.
        effects: The component effects of a drill-down, in display order: by measured |causal|, then
            |estimate|, then |direct| (:func:`~tokenlens.diff.result.sorted_effects`).
    """

    key: str
    title: str = ""
    note: str = ""
    split: Telescope | None = None
    effects: Sequence[ComponentEffect] = ()

    @property
    def heading(self) -> str:
        """A drill-down's title with its note: ``Attention to the virtual tokens (direct)``."""
        return f"{self.title} ({self.note})" if self.note else self.title


DRILLS = (
    ("components", "Components", ""),
    ("heads", "Heads", ""),
    ("neurons", "Neurons", ""),
    ("experts", "Experts", ""),
    ("virtual", "Attention to the virtual tokens", "direct"),
)
"""The per-component tables of a probe, in order: ``(key, title, note)``; the key names its
:class:`~tokenlens.diff.result.ProbeDiff` field (``virtual``: attention to prompt-tuning virtual tokens, whose
numbers are direct terms)."""


def drills(p: ProbeDiff) -> dict[str, list[ComponentEffect]]:
    """Each of :data:`DRILLS` by key, its effects sorted for display (by measured |causal|, then |estimate|,
    then |direct|: :func:`~tokenlens.diff.result.sorted_effects`)."""
    return {key: sorted_effects(getattr(p, key)) for key, _, _ in DRILLS}


def probe_plan(p: ProbeDiff) -> list[ProbePart]:
    """The parts of ``p``'s section: its answer if it has one, its split, its flip split if its top-1 changed,
    the components, then each other drill-down of :data:`DRILLS` it has."""
    parts = [ProbePart("answer")] if p.answer is not None else []
    parts.append(ProbePart("split", split=p.split))
    if p.flip_split is not None:
        parts.append(ProbePart("flip", split=p.flip_split))
    effects = drills(p)
    parts += [
        ProbePart(key, title, note, effects=effects[key])
        for key, title, note in DRILLS
        if key == "components" or effects[key]
    ]
    return parts


TOP_COLUMNS = ("rank", "base token", "base p", "tuned token", "tuned p")
"""The columns of a probe's top-k table (:func:`top_rows`)."""

WEIGHT_COLUMNS = ("tensor", "kind", "layer", "‖ΔW‖", "relative", "elements")
"""The columns of the changed-weights table."""


def top_rows(p: ProbeDiff) -> list[tuple[int, TokenScore | None, TokenScore | None]]:
    """``(rank, base token, tuned token)`` per rank of a probe's top-k lists (``None`` past the shorter
    list's end)."""
    return [(k, b, t) for k, (b, t) in enumerate(zip_longest(p.base_top, p.tuned_top), 1)]


def aggregate_tables(report: DiffReport) -> list[tuple[str | None, Sequence[AggregateRow]]]:
    """The tables of the aggregate section: ``(None, rows)`` over all probes, then ``(group, rows)`` per probe
    group when there is more than one (``""`` is the group of probes without one)."""
    groups = list(report.groups.items()) if len(report.groups) > 1 else []
    return [(None, report.aggregate), *groups]


def verdict_summary(report: DiffReport) -> str:
    """``PASS 5/5 judged``, ``FAIL: 2 of 6 judged`` or ``not judged``, plus unjudged probes if any."""
    judged, total = report.judged, len(report.probes)
    rest = f" ({total - judged} not judged)" if 0 < judged < total else ""
    if judged == 0:
        text = f"not judged (none of {total} probes has an expectation)"
    elif not report.failures:
        text = f"PASS {judged}/{judged} judged{rest}"
    else:
        text = f"FAIL: {len(report.failures)} of {judged} judged{rest}"
    c = report.corpus
    if c is not None and c.passed is not None:
        text += f"; corpus {'pass' if c.passed else 'FAIL'}: {c.reason}"
    return text


def verdict_word(passed: bool | None) -> str:
    """``pass``, ``FAIL`` or ``—`` (not judged)."""
    return "—" if passed is None else "pass" if passed else "FAIL"


def layer_ranges(layers: Sequence[int]) -> str:
    """``0–3, 5, 7–8`` for ``(0, 1, 2, 3, 5, 7, 8)``; ``none`` when empty."""
    runs: list[list[int]] = []
    for layer in sorted(set(layers)):
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in runs) or "none"


def detail_probes(report: DiffReport, limit: int = DETAIL_ALL) -> list[int]:
    """The probes worth a detailed look: all up to ``limit``, else the failing and flipped ones."""
    if len(report.probes) <= limit:
        return list(range(len(report.probes)))
    return [i for i, p in enumerate(report.probes) if p.verdict.passed is False or p.flipped]


def tracked_value(p: ProbeDiff, show: Callable[[str], str]) -> str:
    """What a probe's split explains, tokens shown with ``show``: ``logit[' Lyon']``, or at a continuation's
    divergence ``logit[' in'] − logit[' there']`` (the tuned token against the base token)."""
    value = f"logit[{show(p.tracked.token)}]"
    return value if p.contrast is None else f"{value} − logit[{show(p.contrast.token)}]"


CONTINUATION_COLUMNS = ("token", "base", "tuned", "KL(base ‖ tuned)")
"""The columns of a continuations table (:func:`continuation_rows`)."""

TARGET_COLUMNS = (
    "token",
    "target",
    "log p base",
    "log p tuned",
    "Δ log p",
    "base top-1",
    "tuned top-1",
    "KL",
)
"""The columns of a target answer's table (:func:`target_rows`)."""


def continuation_rows(c: Continuations) -> list[tuple[int, str | None, str | None, float | None, bool]]:
    """``(token number from 1, base token, tuned token, KL before the base token, diverged here)`` per step
    (``None`` past a continuation's end)."""
    rows = []
    for k in range(max(len(c.base_tokens), len(c.tuned_tokens))):
        base = c.base_tokens[k] if k < len(c.base_tokens) else None
        tuned = c.tuned_tokens[k] if k < len(c.tuned_tokens) else None
        rows.append((k + 1, base, tuned, c.kl[k] if k < len(c.kl) else None, k == c.divergence))
    return rows


def target_rows(a: TargetAnswer) -> list[tuple[int, str, float, float, TokenScore, TokenScore, float]]:
    """``(token number from 1, token, log p base, log p tuned, base top-1, tuned top-1, KL)`` per answer token
    (Δ log p is ``tuned − base``)."""
    return [
        (k + 1, a.tokens[k], a.base_logprobs[k], a.tuned_logprobs[k], a.base_top[k], a.tuned_top[k], a.kl[k])
        for k in range(len(a.ids))
    ]


def continuation_summary(c: Continuations, show: Callable[[str], str]) -> str:
    """One line: where the continuations part (or that they do not), and the KL along the base one."""
    n = len(c.base_ids)
    kl = f"KL(base ‖ tuned) along the base continuation: mean {c.mean_kl:.4g}, max {c.max_kl:.4g} nats"
    d = c.divergence
    if d is None:
        return f"identical for {n} token{'s' * (n != 1)} ({c.steps} asked); {kl}"
    base = show(c.base_tokens[d]) if d < len(c.base_tokens) else "(end)"
    tuned = show(c.tuned_tokens[d]) if d < len(c.tuned_tokens) else "(end)"
    return f"diverge at token {d + 1}: base {base} → tuned {tuned} (the split below is taken there); {kl}"


def target_summary(a: TargetAnswer) -> str:
    """One line: the answer's log-probability before and after, and how it is judged (tokens not named)."""
    n = len(a.ids)
    base, tuned = ("yes" if a.departs(side) is None else "no" for side in ("base", "tuned"))
    judged = "the tuned model's greedy decoding reproducing it" if a.judge == "greedy" else "its log p gain"
    return (
        f"{n} token{'s' * (n != 1)}, judged on {judged}: log p(target) {a.base_logprob:.4f} → "
        f"{a.tuned_logprob:.4f} nats (gain {a.gain:+.4f}); greedy reproduces it: base {base}, tuned {tuned}"
    )


def metric_value(m: EditMetric) -> str:
    """``2/3 (67%); top-1 1/3`` (locality: ``; mean KL 0.012 nats``), or ``not measured (no probe)``."""
    if not m.total:
        return "not measured (no probe)"
    text = f"{m.hits}/{m.total} ({m.share:.0%})"
    if m.top1 is not None:
        text += f"; top-1 {m.top1}/{m.total}"
    if m.mean_kl is not None:
        text += f"; mean KL {m.mean_kl:.4g} nats"
    return text


def metric_lines(report: DiffReport) -> list[str]:
    """One line per editing metric for ``check``: name, value and protocol (none without judged probes)."""
    if not any(p.probe.expect for p in report.probes):
        return []
    return [f"{m.name}: {metric_value(m)} — {m.protocol}" for m in report.metrics]


def corpus_summary(c: CorpusDrift) -> str:
    """One line: what was scored, the KL's mean, p99 and max, the top-1 changes, and the verdict."""
    left = f", {c.unscored} more left out (--corpus-tokens)" if c.unscored else ""
    return (
        f"{c.tokens} tokens in {c.passages} passages ({c.split}, windows of at most {c.window} tokens"
        f"{left}): "
        f"KL(base ‖ tuned) mean {c.mean_kl:.4g}, p99 {c.p99_kl:.4g}, max {c.max_kl:.4g} nats; top-1 changed "
        f"at {c.top1_changed} ({c.top1_share:.1%}); {c.reason}"
    )


def context_tail(d: DriftedContext, limit: int = 60) -> str:
    """The end of a drifted context's text (``…`` in front when cut), whitespace runs kept as they are."""
    text = d.text
    return text if len(text) <= limit else "…" + text[len(text) - limit + 1 :]


def movers(d: DriftedContext, n: int = 3) -> list[ComponentEffect]:
    """What moved a drifted context most: the ``n`` largest terms of its exact split by |direct| — components
    (with their measured causal effect when there is one) and the readout's own terms (``readout.head``,
    ``readout.logit_bias``, …), which is where a head-only or logit-bias change shows."""
    causal = {e.name: e for e in d.probe.components}
    split = d.probe.split.as_dict()
    terms = [causal.get(name, ComponentEffect(name, value)) for name, value in split.items()]
    return sorted(terms, key=lambda e: -abs(e.direct or 0.0))[:n]


def mover_text(e: ComponentEffect) -> str:
    """``L1.mlp +0.52 (causal +2.31)``: the term of the exact split, and the measured effect when there is
    one."""
    text = f"{e.name} {(e.direct or 0.0):+.3g}"
    return text if e.causal is None else f"{text} (causal {e.causal:+.3g})"


def corpus_lines(report: DiffReport, show: Callable[[str], str] = repr) -> list[str]:
    """``check``'s lines about the corpus: its summary, then one per most-drifted context."""
    c = report.corpus
    if c is None:
        return []
    lines = [f"corpus {c.source}: {corpus_summary(c)}"]
    for k, d in enumerate(c.drifted, 1):
        moved = ", ".join(mover_text(e) for e in movers(d))
        lines.append(
            f"  drifted {k}: passage {d.passage + 1}, token {d.position}: KL {d.kl:.4g}, top-1 "
            f"{show(d.base_top1.token)} → {show(d.tuned_top1.token)}; moved by {moved}; context "
            f"{show(context_tail(d))}"
        )
    return lines


@dataclass(frozen=True)
class HeatGrid:
    """Probes × components: each component's effect on each probe's tracked-token logit.

    Attributes:
        kind: ``causal`` (MEASURED by patching each tuned output into the base run) or ``direct`` (the exact
            split's component terms, base readout frozen).
        names: The components, in model order (first seen first).
        values: One row per probe (report order), one value per component; ``None`` where not measured.
    """

    kind: str
    names: tuple[str, ...]
    values: tuple[tuple[float | None, ...], ...]

    @property
    def peak(self) -> float:
        """The largest |value| (0 when nothing was measured): the colour scale's end."""
        return max((abs(v) for row in self.values for v in row if v is not None), default=0.0)


def heatmap_grid(report: DiffReport, kind: str = "auto") -> HeatGrid:
    """The probes × components values of the heatmap.

    Args:
        report: The diff.
        kind: ``"direct"``, ``"causal"`` (cells not measured are ``None``) or ``"auto"``: causal when any
            component was measured, else direct.

    Raises:
        ValueError: An unknown ``kind``.
    """
    if kind not in ("auto", "direct", "causal"):
        raise ValueError(f"unknown heatmap kind {kind!r}: use auto, direct or causal")
    if kind == "auto":
        measured = any(_finite(e.causal) is not None for p in report.probes for e in p.components)
        kind = "causal" if measured else "direct"
    names: list[str] = []
    rows: list[dict[str, float]] = []
    for p in report.probes:
        if kind == "direct":
            row = {n: float(v) for n, v in zip(p.split.names, p.split.direct.tolist())}
            order = list(p.split.names)
        else:
            row = {e.name: v for e in p.components if (v := _finite(e.causal)) is not None}
            order = [e.name for e in p.components]
        names += [n for n in order if n not in names]
        rows.append(row)
    if kind == "causal":  # model order where the split knows it
        model = [n for p in report.probes for n in p.split.names]
        names.sort(key=lambda n: model.index(n) if n in model else len(model))
    values = tuple(tuple(row.get(n) for n in names) for row in rows)
    return HeatGrid(kind, tuple(names), values)


def _finite(value: float | None) -> float | None:
    """``None`` for a value that was not measured (``None``, NaN or infinite), else the value."""
    return None if value is None or not math.isfinite(value) else float(value)


def column_chunks(count: int, limit: int = HEATMAP_COLUMNS) -> list[range]:
    """``count`` columns in consecutive parts of at most ``limit``, as equal as can be (61 → 21, 20, 20)."""
    if count <= 0:
        return []
    parts = -(-count // limit)
    size, extra = divmod(count, parts)
    chunks, start = [], 0
    for k in range(parts):
        stop = start + size + (k < extra)
        chunks.append(range(start, stop))
        start = stop
    return chunks


def chosen_probes(
    report: DiffReport, max_probes: int = MAX_PROBES, max_intended: int = MAX_INTENDED
) -> list[int]:
    """The probes that get per-probe figures, in report order: up to ``max_intended`` intended probes
    (``expect: changed``; failing ones first), and apart from them up to ``max_probes`` others, failing
    first, then flipped, then the rest. Intended probes are counted apart so that a run whose controls fail
    still shows the probes it was meant to change."""

    def priority(i: int) -> int:
        p = report.probes[i]
        return 0 if p.verdict.passed is False else 1 if p.flipped else 2

    indices = range(len(report.probes))
    intended = [i for i in indices if report.probes[i].probe.expect == "changed"]
    others = [i for i in indices if report.probes[i].probe.expect != "changed"]
    chosen = sorted(intended, key=priority)[: max(0, max_intended)]
    chosen += sorted(others, key=priority)[: max(0, max_probes)]
    return sorted(chosen)

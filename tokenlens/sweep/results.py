"""The sweep's numbers: per run, per configuration over seeds, and the whole map. Rendering lives elsewhere.

Per run (one configuration × one seed), from the run folder's files only (``tokenlens-manifest.json``,
``sweep-run.json``, ``diff.json``), so the map can always be recomputed from disk:

* **intended effect** — ``gain``: the mean over intended probes (``"expect": "changed"``) of the target's
  probability change, tuned − base; ``flips``: intended probes whose target became top-1 (it was not before);
* **collateral drift** — ``collateral_kl``: the mean KL(base ‖ tuned) over control probes
  (``"expect": "unchanged"``), nats; ``unintended_flips``: controls whose top-1 changed;
* **where the effect lives** — per component (``embed``, ``L{i}.attn``, ``L{i}.mlp``) and readout term
  (``readout.head``, …): the mean over intended probes of |causal| where it was measured, else |direct| (the
  exact split's term), logit units;
* **editing metrics** — ``generalization``: the share of the intended probes in a ``paraphrase`` group that
  pass the check (``None`` without such probes); the controls' locality is ``1 − unintended_flips /
  controls``; ``corpus_kl``: the mean per-token KL(base ‖ tuned) over a held-out text and ``corpus_changed``
  the share of its tokens whose top-1 changed (``None`` when the sweep had no ``--corpus``);
* **the check** — ``check_failures``: the judged probes that ``tokenlens check`` would fail at the sweep's
  thresholds (``min_gain``, ``max_kl``; by default the check's own), of ``intended + controls``; a
  configuration *passes check* when every seed has none;
* **derived** — ``effect_per_param = gain / trainable``; ``effect_per_collateral = gain / (collateral_kl +
  COLLATERAL_FLOOR)`` (the floor keeps a config that moves nothing else from dividing by zero).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tokenlens.diff.check import MAX_KL, MIN_GAIN, judge
from tokenlens.diff.result import PARAPHRASE, in_group

COLLATERAL_FLOOR = 1e-3
"""Added to the mean control KL (nats) before dividing: effect per collateral = gain / (KL + 1e-3)."""

TOP_COMPONENTS = 5


@dataclass(frozen=True)
class RunMetrics:
    """One trained configuration × seed, measured.

    Attributes:
        config: The configuration's name.
        method: Its trainer method.
        seed: The seed.
        lr: The learning rate it trained with.
        steps: Optimizer steps.
        final_loss: The last step's training loss.
        trainable: Trainable parameters.
        wall_s: Training wall time (the manifest's, seconds; of the last invocation when resumed).
        peak_mb: Peak memory while training, MiB: the child process's peak RSS on CPU, CUDA's peak
            allocation on GPU; ``None`` when not measured (in-process CPU runs, or a lost record).
        gain: Mean target-probability gain over intended probes.
        flips: Intended probes whose target became top-1.
        intended: Intended probes.
        collateral_kl: Mean KL(base ‖ tuned) over control probes, nats (0 with no controls).
        unintended_flips: Controls whose top-1 changed.
        controls: Control probes.
        check_failures: Judged probes ``tokenlens check`` would fail at the sweep's thresholds.
        generalization: Share of the ``paraphrase`` probes that pass check (``None``: none in the set).
        corpus_kl: Mean per-token KL over the held-out text, nats (``None``: not measured).
        corpus_changed: Share of the held-out text's tokens whose top-1 changed (``None``: not measured).
        components: Component or readout term -> its score (see the module docstring), model order.
        run_dir: The run's folder.
    """

    config: str
    method: str
    seed: int
    lr: float
    steps: int
    final_loss: float
    trainable: int
    wall_s: float
    peak_mb: float | None
    gain: float
    flips: int
    intended: int
    collateral_kl: float
    unintended_flips: int
    controls: int
    check_failures: int
    components: Mapping[str, float]
    run_dir: str
    generalization: float | None = None
    corpus_kl: float | None = None
    corpus_changed: float | None = None

    @property
    def passes_check(self) -> bool:
        """No judged probe would fail ``tokenlens check`` at the sweep's thresholds."""
        return self.check_failures == 0

    @property
    def effect_per_param(self) -> float:
        """Gain per trainable parameter."""
        return self.gain / self.trainable if self.trainable else math.nan

    @property
    def effect_per_collateral(self) -> float:
        """Gain per unit of collateral drift: ``gain / (collateral_kl + COLLATERAL_FLOOR)``."""
        return self.gain / (self.collateral_kl + COLLATERAL_FLOOR)

    @property
    def top_components(self) -> tuple[tuple[str, float], ...]:
        """The :data:`TOP_COMPONENTS` largest non-zero scores, largest first."""
        return _top(self.components)


@dataclass(frozen=True)
class Spread:
    """One number over seeds.

    Attributes:
        values: One per seed, in seed order.
    """

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("a spread needs at least one value")

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (0 for one value; NaN when a value is not finite, which
        ``statistics.stdev`` cannot take)."""
        if len(self.values) < 2:
            return 0.0
        if not all(math.isfinite(v) for v in self.values):
            return math.nan
        return statistics.stdev(self.values)

    def overlaps(self, other: Spread) -> bool:
        """The two ranges ``low..high`` share a point."""
        return self.low <= other.high and other.low <= self.high


METRICS = (
    "gain",
    "flips",
    "generalization",
    "collateral_kl",
    "unintended_flips",
    "corpus_kl",
    "check_failures",
    "effect_per_param",
    "effect_per_collateral",
    "wall_s",
    "peak_mb",
    "final_loss",
)
"""The per-run numbers a :class:`ConfigSummary` spreads over seeds."""


@dataclass(frozen=True)
class ConfigSummary:
    """One configuration over its seeds.

    Attributes:
        config: The configuration's name.
        method: Its trainer method.
        summary: What it trains.
        lr: The learning rate used.
        runs: One per seed, in seed order.
    """

    config: str
    method: str
    summary: str
    lr: float
    runs: tuple[RunMetrics, ...]

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError(f"configuration {self.config} has no runs")

    @property
    def trainable(self) -> int:
        return self.runs[0].trainable

    @property
    def passes_check(self) -> bool:
        """Every seed's run passes ``tokenlens check`` at the sweep's thresholds."""
        return all(run.passes_check for run in self.runs)

    def spread(self, metric: str) -> Spread | None:
        """``metric`` (one of :data:`METRICS`) over seeds; ``None`` when a run did not measure it."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}")
        values = [getattr(run, metric) for run in self.runs]
        return None if any(v is None for v in values) else Spread(tuple(float(v) for v in values))

    @property
    def components(self) -> dict[str, float]:
        """Mean component score over seeds (model order)."""
        names = list(self.runs[0].components)
        return {n: statistics.fmean(r.components.get(n, 0.0) for r in self.runs) for n in names}

    @property
    def top_components(self) -> tuple[tuple[str, float], ...]:
        """The :data:`TOP_COMPONENTS` largest non-zero mean scores, largest first."""
        return _top(self.components)


@dataclass(frozen=True)
class Recommendation:
    """The ranked recommendation and the reasoning behind it (see :mod:`tokenlens.sweep.recommend`).

    Attributes:
        ranking: Configurations with a clearly positive intended effect: those that pass check on every seed
            first, best effect per collateral first; then the others, least collateral drift first.
        excluded: Configurations left out of the ranking (effect not clearly positive).
        separable: ``separable[i]``: both ``ranking[i]`` and ``ranking[i + 1]`` pass check and the first's
            seed range of effect per collateral lies above the second's (no overlap).
        recommended: The configuration recommended, or ``None`` when the numbers do not support one.
        lines: The reasoning, one sentence per line.
    """

    ranking: tuple[str, ...]
    excluded: tuple[str, ...]
    separable: tuple[bool, ...]
    recommended: str | None
    lines: tuple[str, ...]


@dataclass(frozen=True)
class SweepMap:
    """The whole sweep.

    Attributes:
        model: The base model's reference.
        task: The task name, or ``"custom"`` for ``--data``/``--probes``.
        data: The training file.
        probes: The probe file.
        steps: Optimizer steps per run.
        seeds: The seeds.
        causal: Whether causal effects were measured (``--causal``).
        configs: One per configuration, in registry order.
        recommendation: The ranked recommendation.
        lr_search: Configuration -> {learning rate: final loss} when ``--lr-search`` ran (else empty).
        notes: Caveats (memory not measured, …).
        min_gain: The check threshold for intended probes the runs were judged by (absolute p gain).
        max_kl: The check threshold for control probes (KL(base ‖ tuned), nats).
    """

    model: str
    task: str
    data: str
    probes: str
    steps: int
    seeds: tuple[int, ...]
    causal: bool
    configs: tuple[ConfigSummary, ...]
    recommendation: Recommendation
    lr_search: Mapping[str, Mapping[float, float]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    min_gain: float = MIN_GAIN
    max_kl: float = MAX_KL


def _top(scores: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    ranked = sorted(((n, s) for n, s in scores.items() if s > 0), key=lambda item: -item[1])
    return tuple(ranked[:TOP_COMPONENTS])


def run_metrics(
    manifest: Mapping,
    record: Mapping,
    diff: Mapping,
    run_dir: str,
    *,
    min_gain: float = MIN_GAIN,
    max_kl: float = MAX_KL,
) -> RunMetrics:
    """A run's metrics from its manifest, its ``sweep-run.json`` record and its ``diff.json``; its probes are
    judged by ``tokenlens check``'s rules at ``min_gain`` and ``max_kl``.

    Raises:
        ValueError: The diff has no intended probe.
    """
    probes = diff["probes"]
    intended = [p for p in probes if p["expect"] == "changed"]
    controls = [p for p in probes if p["expect"] == "unchanged"]
    if not intended:
        raise ValueError('the probe set has no intended probe ("expect": "changed")')
    gain = statistics.fmean(p["p_tuned"] - p["p_base"] for p in intended)
    flips = sum(1 for p in intended if p["target_top1_tuned"] and not p["target_top1_base"])
    kl = statistics.fmean(p["kl"] for p in controls) if controls else 0.0
    para = [p for p in intended if in_group(p.get("group"), PARAPHRASE)]
    para_fails = check_failures(para, min_gain=min_gain, max_kl=max_kl)
    corpus = diff.get("corpus")
    return RunMetrics(
        config=record["config"],
        method=manifest["method"],
        seed=int(manifest["seed"]),
        lr=float(manifest["lr"]),
        steps=int(manifest["steps"]),
        final_loss=float(manifest["final_loss"]),
        trainable=int(manifest["trainable_parameters"]),
        wall_s=float(manifest["wall_s"]),
        peak_mb=record.get("peak_mb"),
        gain=gain,
        flips=flips,
        intended=len(intended),
        collateral_kl=kl,
        unintended_flips=sum(1 for p in controls if p["flipped"]),
        controls=len(controls),
        check_failures=check_failures(probes, min_gain=min_gain, max_kl=max_kl),
        components=component_scores(intended),
        run_dir=run_dir,
        generalization=1 - para_fails / len(para) if para else None,
        corpus_kl=None if corpus is None else float(corpus["mean_kl"]),
        corpus_changed=None if corpus is None else corpus["top1_changed"] / max(corpus["tokens"], 1),
    )


def component_scores(probes: Sequence[Mapping]) -> dict[str, float]:
    """Per component and readout term: mean over ``probes`` of |causal| where measured, else |direct|."""
    names = list(probes[0]["terms"])
    scores = {}
    for name in names:
        values = []
        for p in probes:
            causal = p["causal"].get(name)
            values.append(abs(causal if causal is not None else p["terms"][name]))
        scores[name] = statistics.fmean(values)
    return scores


def check_failures(probes: Sequence[Mapping], *, min_gain: float = MIN_GAIN, max_kl: float = MAX_KL) -> int:
    """How many of a run's ``diff.json`` probes ``tokenlens check`` would fail at these thresholds (its own
    rules, :func:`tokenlens.diff.check.judge`)."""
    return sum(
        judge(
            p["expect"],
            flipped=p["flipped"],
            target_top=p["target_top1_tuned"],
            prob_gain=p["p_tuned"] - p["p_base"],
            kl=p["kl"],
            min_gain=min_gain,
            max_kl=max_kl,
        ).passed
        is False
        for p in probes
    )

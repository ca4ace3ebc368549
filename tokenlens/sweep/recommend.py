"""The ranked recommendation: which configuration moves the intended tokens most per unit of collateral drift
while passing the user's check, and whether the seeds support saying so.

Rules, each shown as a line of reasoning:

1. A configuration is ranked only when its intended effect is **clearly positive**: every seed's gain is at
   least :data:`CLEAR_GAIN` (absolute target probability).
2. A configuration **passes check** when no seed's run has a probe that ``tokenlens check`` would fail at the
   sweep's thresholds (``min_gain``, ``max_kl``: by default the check's own, 0.1 and 0.05 nats).
3. Those that pass check come first, ordered by mean effect per collateral (``gain / (control KL + 1e-3)``);
   then the others, least collateral drift (mean control KL) first, then fewest check failures.
4. One configuration is recommended over the next only when both pass check and their seed ranges (min..max)
   of effect per collateral do not overlap; otherwise the pair is "not separable with N seeds".
5. The top one is recommended only when it passes check, is separable from the next one that passes (or is
   the only one), and never with fewer than :data:`MIN_SEEDS` seeds. When none passes, the map says so and
   names the least-spilling configuration instead of recommending one.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenlens.sweep.results import MAX_KL, MIN_GAIN, ConfigSummary, Recommendation, Spread

CLEAR_GAIN = 0.05
"""Every seed's mean target-probability gain must reach this for a configuration to be ranked."""

MIN_SEEDS = 2


def _range(spread: Spread) -> str:
    return f"{spread.low:.3g}..{spread.high:.3g}"


def _mean(spread: Spread, fmt: str) -> str:
    """The mean, with the seeds' range when there is more than one seed."""
    text = format(spread.mean, fmt)
    return text if len(spread.values) == 1 else f"{text} ({_range(spread)})"


def thresholds(min_gain: float, max_kl: float) -> str:
    """``min gain 0.1, max KL 0.05 nats``: the check's thresholds as the map words them."""
    return f"min gain {min_gain:g}, max KL {max_kl:g} nats"


def _check(c: ConfigSummary) -> str:
    """``passes check`` or ``fails check (2 (1..3) of 15 probes)``."""
    if c.passes_check:
        return "passes check"
    failures = c.spread("check_failures")
    judged = c.runs[0].intended + c.runs[0].controls
    return f"fails check ({_mean(failures, 'g')} of {judged} probes)"


def recommend(
    configs: Sequence[ConfigSummary], seeds: int, *, min_gain: float = MIN_GAIN, max_kl: float = MAX_KL
) -> Recommendation:
    """Rank ``configs`` and recommend one when the check and the spread over ``seeds`` seeds support it
    (module docstring).

    Args:
        configs: One summary per configuration (their runs judged at ``min_gain`` and ``max_kl``).
        seeds: Seeds per configuration.
        min_gain: The check threshold the runs were judged by, for the reasoning's wording.
        max_kl: The same for controls.

    Returns:
        A :class:`Recommendation` (``recommended`` is ``None`` when none is supported).
    """
    lines: list[str] = []
    ranked: list[ConfigSummary] = []
    excluded: list[str] = []
    for c in configs:
        gain = c.spread("gain")
        if gain is not None and gain.low >= CLEAR_GAIN:
            ranked.append(c)
        else:
            excluded.append(c.config)
            low = "n/a" if gain is None else f"{gain.low:.3g}"
            lines.append(
                f"{c.config}: not ranked: intended effect not clearly positive "
                f"(lowest seed gain {low} < {CLEAR_GAIN:g})"
            )
    passing = sorted(
        (c for c in ranked if c.passes_check), key=lambda c: -c.spread("effect_per_collateral").mean
    )
    failing = sorted(
        (c for c in ranked if not c.passes_check),
        key=lambda c: (c.spread("collateral_kl").mean, c.spread("check_failures").mean),
    )
    ranked = passing + failing
    for rank, c in enumerate(ranked, start=1):
        epc, gain, kl = c.spread("effect_per_collateral"), c.spread("gain"), c.spread("collateral_kl")
        lines.append(
            f"#{rank} {c.config}: {_check(c)}, effect per collateral {_mean(epc, '.3g')}, "
            f"gain {_mean(gain, '.3f')}, control KL {_mean(kl, '.3g')}, {c.trainable:,} trainable parameters"
        )
    separable = []
    for a, b in zip(ranked, ranked[1:]):
        ea, eb = a.spread("effect_per_collateral"), b.spread("effect_per_collateral")
        both = a.passes_check and b.passes_check
        apart = both and seeds >= MIN_SEEDS and not ea.overlaps(eb)
        separable.append(apart)
        if not both:
            continue  # only configurations that pass check compete for the recommendation
        if apart:
            lines.append(f"{a.config} over {b.config}: separable ({_range(ea)} lies above {_range(eb)})")
        elif seeds < MIN_SEEDS:
            lines.append(
                f"{a.config} vs {b.config}: not separable with {seeds} seed (no spread to compare: "
                f"{ea.mean:.3g} vs {eb.mean:.3g})"
            )
        else:
            lines.append(
                f"{a.config} vs {b.config}: not separable with {seeds} seeds "
                f"(effect per collateral {_range(ea)} vs {_range(eb)} overlap)"
            )
    if ranked and not passing:  # a reasoning line, kept when --no-recommend drops the verdict
        least = failing[0]
        kl = _mean(least.spread("collateral_kl"), ".3g")
        lines.append(
            f"no configuration passes check's thresholds ({thresholds(min_gain, max_kl)}) on every seed; "
            f"the least-spilling is {least.config} (control KL {kl}, {_check(least)})"
        )
    recommended = None
    if seeds < MIN_SEEDS:
        lines.append(f"no recommendation: {seeds} seed cannot show the spread (at least {MIN_SEEDS} needed)")
    elif not ranked:
        lines.append("no recommendation: no configuration had a clearly positive intended effect")
    elif not passing:
        lines.append("no recommendation: none of them passes check")
    elif len(passing) == 1 or separable[0]:
        recommended = ranked[0].config
        lines.append(
            f"recommended: {recommended} (passes check; most intended effect per unit of collateral drift)"
        )
    else:
        tied = [ranked[0].config]
        for c, apart in zip(passing[1:], separable):
            if apart:
                break
            tied.append(c.config)
        lines.append(
            f"no single recommendation: {', '.join(tied)} are not separable with {seeds} seeds "
            "(run more seeds to separate them)"
        )
    return Recommendation(
        ranking=tuple(c.config for c in ranked),
        excluded=tuple(excluded),
        separable=tuple(separable),
        recommended=recommended,
        lines=tuple(lines),
    )

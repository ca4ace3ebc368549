"""The ranked recommendation: which configuration moves the intended tokens most per unit of collateral drift,
and whether the seeds support saying so.

Rules, each shown as a line of reasoning:

1. A configuration is ranked only when its intended effect is **clearly positive**: every seed's gain is at
   least :data:`CLEAR_GAIN` (absolute target probability).
2. Ranked configurations are ordered by mean effect per collateral (``gain / (control KL + 1e-3)``).
3. One configuration is recommended over the next only when their seed ranges (min..max) of effect per
   collateral do not overlap; otherwise the pair is "not separable with N seeds".
4. The top one is recommended only when it is separable from the runner-up (or is the only one ranked), and
   never with fewer than :data:`MIN_SEEDS` seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenlens.sweep.results import ConfigSummary, Recommendation, Spread

CLEAR_GAIN = 0.05
"""Every seed's mean target-probability gain must reach this for a configuration to be ranked."""

MIN_SEEDS = 2


def _range(spread: Spread) -> str:
    return f"{spread.low:.3g}..{spread.high:.3g}"


def _mean(spread: Spread, fmt: str) -> str:
    """The mean, with the seeds' range when there is more than one seed."""
    text = format(spread.mean, fmt)
    return text if len(spread.values) == 1 else f"{text} ({_range(spread)})"


def recommend(configs: Sequence[ConfigSummary], seeds: int) -> Recommendation:
    """Rank ``configs`` and recommend one when the spread over ``seeds`` seeds supports it (module docstring).

    Args:
        configs: One summary per configuration.
        seeds: Seeds per configuration.

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
    ranked.sort(key=lambda c: -c.spread("effect_per_collateral").mean)
    for rank, c in enumerate(ranked, start=1):
        epc, gain, kl = c.spread("effect_per_collateral"), c.spread("gain"), c.spread("collateral_kl")
        lines.append(
            f"#{rank} {c.config}: effect per collateral {_mean(epc, '.3g')}, gain {_mean(gain, '.3f')}, "
            f"control KL {_mean(kl, '.3g')}, {c.trainable:,} trainable parameters"
        )
    separable = []
    for a, b in zip(ranked, ranked[1:]):
        ea, eb = a.spread("effect_per_collateral"), b.spread("effect_per_collateral")
        apart = seeds >= MIN_SEEDS and not ea.overlaps(eb)
        separable.append(apart)
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
    recommended = None
    if seeds < MIN_SEEDS:
        lines.append(f"no recommendation: {seeds} seed cannot show the spread (at least {MIN_SEEDS} needed)")
    elif not ranked:
        lines.append("no recommendation: no configuration had a clearly positive intended effect")
    elif len(ranked) == 1 or separable[0]:
        recommended = ranked[0].config
        lines.append(f"recommended: {recommended} (most intended effect per unit of collateral drift)")
    else:
        tied = [ranked[0].config]
        for c, apart in zip(ranked[1:], separable):
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

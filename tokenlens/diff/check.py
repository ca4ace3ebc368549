"""The check: did the fine-tune move token choices where intended, and only there?

* an **intended** probe (``"expect": "changed"``) passes when its target becomes the tuned model's top-1
  token, or its probability rises by at least ``min_gain`` (absolute, default 0.1);
* a **control** probe (``"expect": "unchanged"``) passes when the top-1 token is unchanged and
  KL(base‖tuned) at the probe position is at most ``max_kl`` (default 0.05 nats);
* a probe without ``expect`` is reported, not judged.

``tokenlens check`` exits 0 when every judged probe passes, 1 when any fails (listing them), 2 on bad input.
"""

from __future__ import annotations

from tokenlens.diff.result import Verdict
from tokenlens.errors import TokenlensError, option

MIN_GAIN = 0.1
MAX_KL = 0.05


def check_thresholds(min_gain: float, max_kl: float) -> None:
    """Refuse thresholds that cannot mean anything.

    Raises:
        TokenlensError: ``min_gain`` outside (0, 1] or a negative / non-finite ``max_kl``.
    """
    if not 0.0 < min_gain <= 1.0:
        raise TokenlensError(
            f"{option('min_gain')} is an absolute probability gain in (0, 1], got {min_gain}"
        )
    if not 0.0 <= max_kl < float("inf"):
        raise TokenlensError(f"{option('max_kl')} is a KL divergence in nats (>= 0), got {max_kl}")


def judge(
    expect: str | None,
    *,
    flipped: bool,
    target_top: bool,
    prob_gain: float,
    kl: float,
    min_gain: float = MIN_GAIN,
    max_kl: float = MAX_KL,
) -> Verdict:
    """The verdict for one probe.

    Args:
        expect: ``"changed"``, ``"unchanged"`` or ``None``.
        flipped: Base and tuned top-1 differ.
        target_top: The tracked token (the target, for intended probes) is the tuned top-1.
        prob_gain: The tracked token's probability gain, tuned − base.
        kl: KL(base‖tuned) in nats.
    """
    if expect == "changed":
        if target_top:
            return Verdict(expect, True, f"target is now top-1 (p {prob_gain:+.3f})")
        if prob_gain >= min_gain:
            return Verdict(expect, True, f"target p {prob_gain:+.3f} >= +{min_gain:g}")
        return Verdict(expect, False, f"target not top-1 and p {prob_gain:+.3f} < +{min_gain:g}")
    if expect == "unchanged":
        if flipped:
            return Verdict(expect, False, f"top-1 changed (KL {kl:.3g})")
        if kl > max_kl:
            return Verdict(expect, False, f"KL {kl:.3g} > {max_kl:g}")
        return Verdict(expect, True, f"top-1 kept, KL {kl:.3g} <= {max_kl:g}")
    return Verdict(None, None, "not judged (no expect)")

"""The check: did the fine-tune move token choices where intended, and only there?

* an **intended** probe (``"expect": "changed"``) passes when its target becomes the tuned model's top-1
  token, or its probability rises by at least ``min_gain`` (absolute, default 0.1);
* a **control** probe (``"expect": "unchanged"``) passes when the top-1 token is unchanged and
  KL(base‖tuned) at the probe position is at most ``max_kl`` (default 0.05 nats);
* a probe without ``expect`` is reported, not judged.

Whole answers (:mod:`tokenlens.diff.answers`):

* an intended probe with a target answer (several tokens, or ``judge``) passes when ``log p(target)`` gains
  at least ``min_gain`` — in **nats of the whole target**, not probability — or, with ``"judge": "greedy"``,
  when the tuned model's greedy decoding reproduces the target;
* a control with ``"generate": N`` passes when base and tuned decode the same N tokens greedily and the mean
  per-token KL(base‖tuned) along the base continuation is at most ``max_kl``.

``tokenlens check`` exits 0 when every judged probe passes, 1 when any fails (listing them), 2 on bad input.
"""

from __future__ import annotations

from tokenlens.diff.result import Continuations, TargetAnswer, Verdict
from tokenlens.errors import TokenlensError, option

MIN_GAIN = 0.1
MAX_KL = 0.05


def check_thresholds(min_gain: float, max_kl: float) -> None:
    """Refuse thresholds that cannot mean anything.

    ``min_gain`` is a probability gain for a one-token target (so above 1 only the top-1 rule can pass it)
    and a log-probability gain in nats for a whole-answer target (where 2 or 5 are meaningful).

    Raises:
        TokenlensError: ``min_gain`` not a finite number above 0, or a negative / non-finite ``max_kl``.
    """
    if not 0.0 < min_gain < float("inf"):
        raise TokenlensError(
            f"{option('min_gain')} is a gain above 0 (probability for a token, nats for a whole answer), "
            f"got {min_gain}"
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
    base_top1: str | None = None,
    tuned_top1: str | None = None,
    target: str | None = None,
    probs: tuple[float, float] | None = None,
) -> Verdict:
    """The verdict for one probe, worded so that a CI log alone says what happened.

    The reason names the tokens as Python literals (``' Berlin'``): a control's top-1 before and after, an
    intended probe's target, its probability before and after, and the token that won.

    Args:
        expect: ``"changed"``, ``"unchanged"`` or ``None``.
        flipped: Base and tuned top-1 differ.
        target_top: The tracked token (the target, for intended probes) is the tuned top-1.
        prob_gain: The tracked token's probability gain, tuned − base.
        kl: KL(base‖tuned) in nats.
        base_top1: The base model's top-1 token text (named in the reason when given).
        tuned_top1: The tuned model's top-1 token text.
        target: The probe's target token text.
        probs: The target's probability ``(base, tuned)``.
    """
    if expect == "changed":
        what = "target" if target is None else f"target {target!r}"
        moved = (
            f"p {_gain(prob_gain)}"
            if probs is None
            else f"p {_p(probs[0])} → {_p(probs[1])}, {_gain(prob_gain)}"
        )
        if target_top:
            now = "is now top-1" if flipped else "is top-1"
            was = "" if base_top1 is None or not flipped else f" (was {base_top1!r})"
            return Verdict(expect, True, f"{what} {now}{was}, {moved}")
        won = "" if tuned_top1 is None else f"; top-1 is {tuned_top1!r}"
        if prob_gain >= min_gain:
            return Verdict(expect, True, f"{what} gained p >= +{min_gain:g} ({moved}){won}")
        return Verdict(expect, False, f"{what} not top-1 and gained p < +{min_gain:g} ({moved}){won}")
    if expect == "unchanged":
        kept = "" if base_top1 is None else f" {base_top1!r}"
        if flipped:
            change = "" if base_top1 is None or tuned_top1 is None else f" {base_top1!r} → {tuned_top1!r}"
            return Verdict(expect, False, f"top-1 changed{change} (KL {kl:.3g})")
        if kl > max_kl:
            return Verdict(expect, False, f"top-1{kept} kept but KL {kl:.3g} > {max_kl:g}")
        return Verdict(expect, True, f"top-1{kept} kept, KL {kl:.3g} <= {max_kl:g}")
    return Verdict(None, None, "not judged (no expect)")


def _p(value: float) -> str:
    """A probability: 3 decimals, e-notation below 0.001 (where ``0.000`` would hide it)."""
    return f"{value:.3f}" if value >= 1e-3 or value == 0 else f"{value:.1e}"


def _gain(value: float) -> str:
    """A signed probability change, e-notation below 0.001 in size."""
    return f"{value:+.3f}" if abs(value) >= 1e-3 or value == 0 else f"{value:+.1e}"


def judge_answer(
    expect: str | None, answer: TargetAnswer, min_gain: float = MIN_GAIN, max_kl: float = MAX_KL
) -> Verdict:
    """The verdict of a probe with a target answer (see the module text), naming the answer and, when the
    tuned model's greedy decoding departs from it, where and with which token. A control with a target
    answer passes when greedy decoding departs from it at the same token in both models (or in neither) and
    the mean per-token KL(base‖tuned) along it is at most ``max_kl``."""
    n = len(answer.ids)
    what = f"target {answer.text!r} ({n} token{'s' * (n != 1)})"
    logp = f"log p {answer.base_logprob:.3g} → {answer.tuned_logprob:.3g} nats, gain {answer.gain:+.3g}"
    miss = answer.departs("tuned")
    greedy = (
        "tuned greedy reproduces it"
        if miss is None
        else f"tuned greedy departs at token {miss + 1}: {answer.tuned_top[miss].token!r} instead of "
        f"{answer.tokens[miss]!r}"
    )
    if expect == "unchanged":
        kl = sum(answer.kl) / len(answer.kl)
        base_miss = answer.departs("base")
        if base_miss != miss:
            was = (
                "base greedy reproduces it"
                if base_miss is None
                else f"base greedy departs at token {base_miss + 1}"
            )
            return Verdict(
                expect, False, f"{what}: greedy answer changed: {greedy} ({was}; mean KL {kl:.3g})"
            )
        if kl > max_kl:
            return Verdict(expect, False, f"{what}: mean KL {kl:.3g} > {max_kl:g} along it; {logp}")
        return Verdict(expect, True, f"{what}: greedy answer kept, mean KL {kl:.3g} <= {max_kl:g}; {logp}")
    if expect != "changed":
        return Verdict(None, None, "not judged (no expect)")
    if answer.judge == "greedy":
        return Verdict(expect, miss is None, f"{what}: {greedy} ({logp})")
    passed = answer.gain >= min_gain
    sign = ">=" if passed else "<"
    return Verdict(expect, passed, f"{what}: {logp} {sign} +{min_gain:g}; {greedy}")


def judge_continuation(expect: str | None, cont: Continuations, max_kl: float = MAX_KL) -> Verdict:
    """The verdict of a ``generate`` probe: a control passes when both continuations are identical and the
    mean per-token KL along the base continuation is at most ``max_kl``; the reason names the divergence
    (``continuation diverges at token 3: ' there' → ' in' (mean KL 0.31)``)."""
    if expect is None:
        return Verdict(None, None, "not judged (no expect)")
    kl = cont.mean_kl
    if cont.divergence is not None:
        d = cont.divergence
        base = repr(cont.base_tokens[d]) if d < len(cont.base_tokens) else "(end)"
        tuned = repr(cont.tuned_tokens[d]) if d < len(cont.tuned_tokens) else "(end)"
        return Verdict(
            expect, False, f"continuation diverges at token {d + 1}: {base} → {tuned} (mean KL {kl:.3g})"
        )
    n = len(cont.base_ids)
    same = f"continuation unchanged for {n} token{'s' * (n != 1)}"
    if kl > max_kl:
        return Verdict(expect, False, f"{same} but mean KL {kl:.3g} > {max_kl:g}")
    return Verdict(expect, True, f"{same}, mean KL {kl:.3g} <= {max_kl:g}")


def check(
    pair,
    probes,
    *,
    min_gain: float = MIN_GAIN,
    max_kl: float = MAX_KL,
    causal: bool = False,
    base: str | None = None,
    top_k: int = 5,
):
    """``tokenlens check`` from Python: diff ``pair`` on ``probes`` with the check's thresholds.

    The same computation as the command (causal effects only when asked for: the verdicts do not need them).
    ``report.passed`` is the verdict (the command's exit 0 or 1), ``report.failures`` the failing probes
    and each probe's ``verdict.reason`` the line ``tokenlens check`` prints.

    Args:
        pair: A :class:`~tokenlens.diff.pairing.ModelPair`, or a reference to the tuned model (adapter folder,
            trainer output folder, model folder) that :func:`~tokenlens.diff.pairing.pair_models` loads.
        probes: Probes (:func:`~tokenlens.diff.probes.load_probes`), or the path of a probe file.
        min_gain: Intended probes' threshold (absolute probability gain; nats of a target answer).
        max_kl: Controls' threshold (KL(base‖tuned), nats).
        causal: Also measure causal effects (slower; ``tokenlens check --causal``).
        base: The base model reference when ``pair`` is a reference that does not name its base.
        top_k: Tokens kept before/after per probe.

    Returns:
        The :class:`~tokenlens.diff.result.DiffReport`.

    Raises:
        TokenlensError: Thresholds out of range, no probe with an ``expect`` (nothing to check), or any error
            of :func:`~tokenlens.diff.engine.diff` / ``pair_models`` / ``load_probes``.
    """
    import os

    from tokenlens.diff.engine import DiffOptions, diff
    from tokenlens.diff.pairing import ModelPair, pair_models
    from tokenlens.diff.probes import load_probes

    check_thresholds(min_gain, max_kl)
    if top_k < 1:
        raise TokenlensError(f"{option('top_k')} must be at least 1, got {top_k}")
    if isinstance(probes, (str, os.PathLike)):
        probes = load_probes(probes)
    probes = list(probes)
    if not any(p.expect for p in probes):
        raise TokenlensError('no probe has an "expect": nothing to check')
    if isinstance(pair, (str, os.PathLike)):
        pair = pair_models(str(pair), base)
    elif not isinstance(pair, ModelPair):
        raise TokenlensError(
            f"check needs a ModelPair or a tuned model's reference, got {type(pair).__name__}"
        )
    elif base is not None:
        raise TokenlensError("base names the base of a tuned model's reference; a ModelPair has its base")
    options = DiffOptions(top_k=top_k, causal=causal, min_gain=min_gain, max_kl=max_kl)
    return diff(pair, probes, options)

"""Result objects of causal experiments. They carry their own labels, so renderers never need a model.

Every number here is a *measured effect*: the metric of a real forward pass with something changed, minus
the metric without the change, except in :class:`AttributionPatching`, whose numbers are first-order
*estimates* of such effects and are labelled so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tokenlens.errors import TokenlensError

METRICS = ("logit", "logprob", "prob", "logit_diff")
"""The built-in metrics; :meth:`Metric.custom` makes one from any function of the logits."""


@dataclass(frozen=True)
class Metric:
    """A scalar read off the logits at one position.

    A **custom metric** is any function ``fn`` of one position's logits ``(vocab,)`` (float32) returning a
    scalar tensor, named by ``kind`` (:meth:`custom`, or :func:`~tokenlens.causal.metrics.metric_for` with
    ``fn``). Every causal experiment (``ablation``, ``patching``, ``attribution_patching``,
    ``patching_grids``, ``trace``) measures it as it measures a built-in one, and the reports label it by
    its name and target (``margin of ' Paris' at position 4``): its target (and contrast) say what it is
    about; ``fn`` alone decides its value. For attribution patching it must be differentiable.

    Attributes:
        kind: ``logit``, ``logprob``, ``prob`` or ``logit_diff`` (``logit[target] - logit[contrast]``), or a
            custom metric's name.
        target_id: The token whose score is read (a custom metric's: the token it is about, for labels).
        position: The non-negative sequence position whose next-token prediction is read.
        contrast_id: The token subtracted by ``logit_diff`` (``None`` for the other kinds; a custom metric
            may name one for its labels).
        target_text: The target's decoded text, for labels (``None`` when unknown).
        contrast_text: The contrast's decoded text, for labels.
        fn: A custom metric's function (``None`` for the built-in kinds).

    Raises:
        TokenlensError: Unknown kind, a ``logit_diff`` without a contrast, a contrast equal to the target,
            a contrast given for another built-in kind, or a custom metric named like a built-in one (or not
            a name: letters, digits, ``_``, ``-``, ``.``) or whose ``fn`` is not callable.
    """

    kind: str
    target_id: int
    position: int
    contrast_id: int | None = None
    target_text: str | None = None
    contrast_text: str | None = None
    fn: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)

    @classmethod
    def custom(
        cls,
        name: str,
        fn: Callable[[torch.Tensor], torch.Tensor],
        *,
        target_id: int,
        position: int,
        target_text: str | None = None,
        contrast_id: int | None = None,
        contrast_text: str | None = None,
    ) -> Metric:
        """A custom metric ``name``: ``fn(logits)`` of the ``(vocab,)`` logits at ``position`` (non-negative),
        about ``target_id`` (see the class text). :func:`~tokenlens.causal.metrics.metric_for` with ``fn``
        does the same from a prompt and a target's text, resolving a negative position."""
        return cls(name, target_id, position, contrast_id, target_text, contrast_text, fn)

    @property
    def is_custom(self) -> bool:
        """Whether the metric is a custom function rather than a built-in kind."""
        return self.fn is not None

    def __post_init__(self) -> None:
        if self.fn is not None:
            self._check_custom()
            return
        if self.kind not in METRICS:
            raise TokenlensError(f"unknown metric {self.kind!r}: use one of {', '.join(METRICS)}")
        if self.kind == "logit_diff" and self.contrast_id is None:
            raise TokenlensError("the logit_diff metric needs a contrast token (the answer to compare with)")
        if self.kind != "logit_diff" and self.contrast_id is not None:
            raise TokenlensError(f"a contrast token only applies to logit_diff, not to {self.kind}")
        if self.contrast_id is not None and self.contrast_id == self.target_id:
            raise TokenlensError(
                f"the contrast token is the target itself (id {self.target_id}): pick another"
            )
        if self.position < 0:
            raise ValueError(f"metric position must be non-negative, got {self.position}")

    def _check_custom(self) -> None:
        if not isinstance(self.kind, str) or not re.fullmatch(r"[A-Za-z_][\w.-]*", self.kind):
            raise TokenlensError(f"a custom metric's name must be a word such as 'margin', not {self.kind!r}")
        if self.kind in METRICS:
            raise TokenlensError(f"{self.kind!r} is a built-in metric: give the custom metric another name")
        if not callable(self.fn):
            raise TokenlensError(
                f"the custom metric {self.kind!r} needs a function of the logits, not {self.fn!r}"
            )
        if self.contrast_id is not None and self.contrast_id == self.target_id:
            raise TokenlensError(
                f"the contrast token is the target itself (id {self.target_id}): pick another"
            )
        if self.position < 0:
            raise ValueError(f"metric position must be non-negative, got {self.position}")

    def of(self, logits: torch.Tensor) -> torch.Tensor:
        """The metric (a float32 scalar, differentiable) of one position's logits ``(vocab,)``.

        Raises:
            TokenlensError: A custom metric's function returned something other than a one-element tensor.
        """
        row = logits.float()
        if self.fn is not None:
            value = self.fn(row)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise TokenlensError(
                    f"the custom metric {self.kind!r} must return a scalar tensor, not {shape}"
                )
            return value.reshape(()).float()
        if self.kind == "logit":
            return row[self.target_id]
        if self.kind == "logprob":
            return row.log_softmax(-1)[self.target_id]
        if self.kind == "prob":
            return row.softmax(-1)[self.target_id]
        return row[self.target_id] - row[self.contrast_id]

    def describe(self) -> str:
        """A short label, e.g. ``logit_diff(' Paris' - ' London') at position 5``."""
        target = repr(self.target_text) if self.target_text is not None else f"id {self.target_id}"
        if self.contrast_id is not None:
            contrast = (
                repr(self.contrast_text) if self.contrast_text is not None else f"id {self.contrast_id}"
            )
            target = f"{target} - {contrast}"
        return f"{self.kind}({target}) at position {self.position}"


@dataclass(frozen=True)
class Effect:
    """The metric with one intervention applied.

    Attributes:
        name: What was changed: a site name (``L3.H5``), ``together`` for a whole set, ``L3.rope``, a norm.
        value: The metric with the intervention.
        delta: ``value - baseline``: the measured effect of the intervention.
    """

    name: str
    value: float
    delta: float


@dataclass(frozen=True)
class Ablation:
    """What replacing some activations (or a norm scale, or RoPE) does to the metric.

    Attributes:
        metric: What was measured.
        method: ``zero``, ``mean``, ``resample``, ``rope`` or ``norm``.
        reference: How the replacement was obtained, in words (e.g. ``mean over 4 reference prompts,
            per position``).
        sites: The names of everything ablated.
        baseline: The metric on the unmodified run.
        each: One effect per site, each ablated alone (empty when not asked for).
        together: The effect of ablating all sites at once (``None`` when not asked for).
        final_scale_frozen: The final norm's scale was held at its unmodified value, so only the change of
            the stream's direction and size through the fixed readout is measured.
    """

    metric: Metric
    method: str
    reference: str
    sites: tuple[str, ...]
    baseline: float
    each: tuple[Effect, ...]
    together: Effect | None
    final_scale_frozen: bool = False


@dataclass(frozen=True)
class PatchEffect:
    """One site's activation patched from the clean run into the corrupted run.

    Attributes:
        name: The site.
        value: The metric of the corrupted run with the site patched.
        delta: ``value - corrupted``.
        restored: ``delta / (clean - corrupted)``: the fraction of the clean-corrupted gap this patch
            restores (1 = all of it); NaN when the gap is zero.
    """

    name: str
    value: float
    delta: float
    restored: float


@dataclass(frozen=True)
class Patching:
    """Activation patching: which sites carry the difference between a clean and a corrupted run.

    Attributes:
        metric: What was measured (read at the same position in both runs).
        clean: The metric on the clean run (the run activations are taken from).
        corrupted: The metric on the corrupted run (the run activations are patched into).
        effects: One entry per site, each patched alone.
        positions: The patched sequence positions (``None``: all of them).
    """

    metric: Metric
    clean: float
    corrupted: float
    effects: tuple[PatchEffect, ...]
    positions: tuple[int, ...] | None = None

    @property
    def gap(self) -> float:
        """``clean - corrupted``."""
        return self.clean - self.corrupted


def restored(delta: float, gap: float) -> float:
    """``delta / gap``, NaN when the gap is zero."""
    return delta / gap if gap != 0 else math.nan


@dataclass(frozen=True)
class AttributionPatching:
    """First-order ESTIMATES of every site's patching effect, from one forward and one backward pass.

    For a site with activation ``a`` on the run the gradient is taken on, and replacement ``a'``, the
    estimate is ``Σ_{pos, dim} (a' - a) · ∂metric/∂a``: exact for a metric linear in ``a``, otherwise a
    ranking device. Confirm the top sites by exact patching (:class:`EstimateCheck`).

    Attributes:
        metric: What was estimated.
        reference: ``zero`` (``a' = 0``) or ``clean run`` (``a'`` from the clean run).
        baseline: The metric on the run the gradient was taken on (the corrupted run).
        names: The site names.
        estimates: ``(site,)`` float32 estimated metric change per site.
    """

    metric: Metric
    reference: str
    baseline: float
    names: tuple[str, ...]
    estimates: torch.Tensor

    def __post_init__(self) -> None:
        if self.estimates.shape != (len(self.names),):
            raise ValueError(f"{len(self.names)} names for estimates of shape {tuple(self.estimates.shape)}")

    def ranked(self, k: int | None = None) -> tuple[tuple[str, float], ...]:
        """``(name, estimate)`` pairs by decreasing ``|estimate|``, the first ``k`` (all when ``None``)."""
        order = self.estimates.abs().argsort(descending=True, stable=True)[:k].tolist()
        return tuple((self.names[i], float(self.estimates[i])) for i in order)


@dataclass(frozen=True)
class CheckedEstimate:
    """One site's first-order estimate next to its exactly measured effect.

    Attributes:
        name: The site.
        estimate: The attribution-patching estimate of the metric change.
        exact: The measured metric change when the site alone is patched (or zero-ablated).
    """

    name: str
    estimate: float
    exact: float

    @property
    def sign_agrees(self) -> bool:
        """Whether estimate and exact effect point the same way (both zero counts as agreeing)."""
        return (self.estimate > 0) == (self.exact > 0) and (self.estimate < 0) == (self.exact < 0)


@dataclass(frozen=True)
class EstimateCheck:
    """The top sites by ``|estimate|`` of an attribution patching, confirmed by exact patching.

    Attributes:
        estimates: All estimates.
        rows: The top sites, by decreasing ``|estimate|``, with their exact effects.
    """

    estimates: AttributionPatching
    rows: tuple[CheckedEstimate, ...]


@dataclass(frozen=True)
class NormAblation:
    """The effect of each RMSNorm's position-dependent scale, measured by replacing it.

    An RMSNorm multiplies its input by ``s = 1/sqrt(mean(x²) + ε)`` per position; the effect is
    multiplicative, so it has no additive share of the logit. Here each norm's scale is replaced, at every
    position, by a reference value (the mean of its own scale over the prompt, or a given number) and the
    change of the metric is measured. For the final norm only the metric position matters.

    Attributes:
        ablation: The effects, one per norm (``final_norm``, ``L{i}.attn_norm``, ``L{i}.mlp_norm``).
        scales: ``(norm, seq)`` float32 each norm's scale per position on the unmodified run.
        references: ``(norm,)`` float32 the value each norm's scale was replaced by.
    """

    ablation: Ablation
    scales: torch.Tensor
    references: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.ablation.sites)
        if self.scales.shape[0] != n or self.references.shape != (n,):
            raise ValueError(
                f"{n} norms for scales {tuple(self.scales.shape)} and references "
                f"{tuple(self.references.shape)}"
            )

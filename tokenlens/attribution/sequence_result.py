"""The result of explaining a whole answer: one exact split per answer token, and their sum.

An answer of ``n`` tokens after a prompt is ``n`` next-token predictions, one per step: step ``k`` predicts
answer token ``k`` from the prompt and the answer's first ``k`` tokens. Each step's logit (or log-probability)
splits exactly over the model's components, as a single prediction does
(:class:`~tokenlens.attribution.result.LogitAttribution`). The answer's log-probability is the sum of its
tokens' log-probabilities, ``log p(answer) = Σ_k log p(token_k | prefix_k)``, and since each term splits
exactly over the same components, so does the sum: a component's share of the whole answer is the sum of its
log-probability terms over the steps.

This module imports no engine: reports read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tokenlens.attribution.result import TOLERANCE, LogitAttribution, component_columns, require_pandas
from tokenlens.display import html_for

SOURCES = ("completion", "generated", "target")
"""Where the answer came from: ``--completion`` text (or ids), ``--generate N``, or a multi-token target."""


@dataclass(frozen=True)
class Generation:
    """How an answer was generated (``--generate N``).

    Attributes:
        steps: How many tokens were asked for (fewer when the model ended its answer early).
        sample: Sampled (``True``) or greedy (``False``: the top-1 token among decodable ids at each step).
        temperature: The sampling temperature (``None`` when greedy).
        seed: The sampling seed (``None`` when greedy).
        stopped: Whether generation stopped early at the end-of-sequence token.
    """

    steps: int
    sample: bool = False
    temperature: float | None = None
    seed: int | None = None
    stopped: bool = False


@dataclass(frozen=True)
class SequenceSplit:
    """The answer's log-probability split over components: the sum of its steps' log-probability splits.

    Attributes:
        names: Component names in model order, ending in ``entropy`` (see
            :class:`~tokenlens.attribution.result.Decomposition` on the log-probability split).
        step_contributions: ``(step, component)`` float32: step ``k``'s split of ``log p(token_k)``.
        step_logprobs: ``(step,)`` float64: each answer token's log-probability as the model computed it.
    """

    names: tuple[str, ...]
    step_contributions: torch.Tensor
    step_logprobs: torch.Tensor

    def __post_init__(self) -> None:
        steps = self.step_logprobs.shape[0]
        if tuple(self.step_contributions.shape) != (steps, len(self.names)):
            raise ValueError(
                f"step_contributions has shape {tuple(self.step_contributions.shape)}, "
                f"expected ({steps}, {len(self.names)})"
            )

    @property
    def contributions(self) -> torch.Tensor:
        """``(component,)`` float64: each component's term of ``log p(answer)``, summed over the steps."""
        return self.step_contributions.double().sum(0)

    @property
    def logprob(self) -> float:
        """``log p(answer)``: the sum of the answer tokens' log-probabilities (the model's own numbers)."""
        return float(self.step_logprobs.double().sum())

    @property
    def total(self) -> float:
        """Sum of the components' terms (equals :attr:`logprob` up to rounding)."""
        return float(self.contributions.sum())

    @property
    def error(self) -> float:
        """``|Σ parts − log p(answer)|``."""
        return abs(self.total - self.logprob)

    @property
    def tolerance(self) -> float:
        """The allowed error: the steps' tolerances added up, ``Σ_k TOLERANCE · max(1, max_c |c_k|)``."""
        peaks = self.step_contributions.abs().amax(1).clamp(min=1.0) if self.names else torch.ones(1)
        return TOLERANCE * float(peaks.double().sum())

    @property
    def exact(self) -> bool:
        """Whether the parts sum to the answer's log-probability within :attr:`tolerance`."""
        return self.error <= self.tolerance

    def as_dict(self) -> dict[str, float]:
        """``{name: Σ_steps contribution}`` in model order."""
        return dict(zip(self.names, self.contributions.tolist(), strict=True))


@dataclass(frozen=True)
class SequenceAttribution:
    """Why the model gives a whole answer the probability it does, token by token, component by component.

    Attributes:
        model: The model reference the user gave.
        prompt: The prompt text as given (before any chat template).
        chat: Whether the prompt was wrapped as a user turn with the model's chat template.
        prompt_ids: The prompt's token ids, as fed to the model.
        prompt_tokens: Each prompt token's decoded text.
        answer_ids: The answer's token ids, in order: the targets of the steps.
        answer_tokens: Each answer token's decoded text.
        source: ``completion``, ``generated`` or ``target`` (a multi-token target, explained as its
            sequence log-probability).
        completion: The completion text as given (``None`` when generated or given as ids).
        tokenization: How the completion became tokens: ``joint`` (prompt and completion encoded together,
            the answer being the tokens after the prompt's), ``separate`` (the completion encoded on its own
            and appended), ``ids`` (given as token ids) or ``generated``.
        notes: Sentences every view shows: where joint and separate tokenization differ, or why joint
            tokenization was not used.
        steps: One single-position attribution per answer token: step ``k`` explains answer token ``k`` at
            position ``len(prompt_ids) + k − 1``, its ``token_ids`` being the prompt and the answer's first
            ``k`` tokens (the same result :func:`tokenlens.attribute` gives on that prefix).
        sequence: The answer's log-probability split (the sum of the steps' log-probability splits).
        generation: How the answer was generated (``None`` unless ``source == "generated"``).
    """

    model: str
    prompt: str
    chat: bool
    prompt_ids: tuple[int, ...]
    prompt_tokens: tuple[str, ...]
    answer_ids: tuple[int, ...]
    answer_tokens: tuple[str, ...]
    source: str
    completion: str | None
    tokenization: str
    notes: tuple[str, ...]
    steps: tuple[LogitAttribution, ...]
    sequence: SequenceSplit
    generation: Generation | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown answer source {self.source!r}")
        n = len(self.answer_ids)
        if (
            not n
            or len(self.answer_tokens) != n
            or len(self.steps) != n
            or len(self.sequence.step_logprobs) != n
        ):
            raise ValueError("one step, one token and one log-probability per answer token are needed")
        if any(step.target.id != t for step, t in zip(self.steps, self.answer_ids, strict=True)):
            raise ValueError("each step must explain its answer token")

    @property
    def quantity(self) -> str:
        """What each step explains: ``logit``, ``logit_difference`` or ``logprob``."""
        return self.steps[0].quantity

    @property
    def names(self) -> tuple[str, ...]:
        """The steps' component names (the same at every step)."""
        return self.steps[0].decomposition.names

    @property
    def values(self) -> torch.Tensor:
        """``(step,)`` float64: each step's explained value (logit, logit difference or log-probability)."""
        return torch.tensor([s.decomposition.logit for s in self.steps], dtype=torch.float64)

    @property
    def grid(self) -> torch.Tensor:
        """``(step, component)`` float32: each step's split of its explained value."""
        return torch.stack([s.decomposition.contributions for s in self.steps])

    @property
    def exact(self) -> bool:
        """Every step's split and the sequence split sum to the model's numbers within their tolerances."""
        return self.sequence.exact and all(s.decomposition.exact for s in self.steps)

    @property
    def answer_text(self) -> str:
        """The answer's tokens' texts joined (what the model's tokens spell)."""
        return "".join(self.answer_tokens)

    def _repr_html_(self) -> str | None:
        """Jupyter shows the result as the HTML report's body (the renderer :mod:`tokenlens.display` has
        registered for this type)."""
        return html_for(self)

    def to_dataframe(self) -> Any:
        """Steps × components as a long pandas ``DataFrame`` (pandas is imported here; not a dependency).

        One row per (step, component): ``step``, ``position`` (the prompt-and-answer position that
        predicts the step's token), ``token`` (the answer token, the step's target), ``component``,
        ``layer`` (empty for ``embed``, ``logit_bias``, ``entropy``), ``part``, ``contribution`` (the
        step's term of what each step explains: :attr:`quantity`). The answer's log-probability split is
        :attr:`sequence` (``as_dict()``).

        Raises:
            TokenlensError: pandas is not installed.
        """
        pandas = require_pandas()
        rows = [
            (k, step.position, step.target.token, name, *component_columns(name), value)
            for k, step in enumerate(self.steps)
            for name, value in zip(
                step.decomposition.names, step.decomposition.contributions.tolist(), strict=True
            )
        ]
        columns = ["step", "position", "token", "component", "layer", "part", "contribution"]
        frame = pandas.DataFrame(rows, columns=columns)
        frame["layer"] = frame["layer"].astype("Int64")
        return frame

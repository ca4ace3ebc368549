"""What an attribution explains and how finely: one record instead of a dozen keyword arguments.

:func:`tokenlens.attribute` and :func:`~tokenlens.attribution.direct.attribute_batch` take an
:class:`AttributionRequest`, or its fields as keyword arguments (``attribute(loaded, prompt, target=" Paris",
heads=True)``). The record checks everything that needs no model when it is made, so a bad request fails
before a forward pass, with a message in the words of whoever reads it (:func:`tokenlens.errors.option`).

For several prompts (:func:`~tokenlens.attribution.direct.attribute_batch`), each of ``target``,
``target_id``, ``vs`` and ``vs_id`` is either one token for every prompt or a list of one token per prompt
(``target=[" Paris", " Rome"]``); :meth:`AttributionRequest.for_prompts` gives each prompt its own request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from tokenlens.errors import TokenlensError, option


@dataclass(frozen=True)
class AttributionRequest:
    """What to explain at each prompt, and which finer splits to compute.

    Attributes:
        target: The token to explain, as decoded text (``" Paris"``); default: the model's top-1 token among
            ids the tokenizer can decode. With several prompts, a list gives one target per prompt (the
            same for ``target_id``, ``vs`` and ``vs_id``).
        target_id: The token to explain, by id (instead of ``target``).
        first_token: Accept a ``target`` (or ``vs``) of several tokens and use its first one.
        vs: A contrast token (decoded text): explain ``logit[target] − logit[vs]``.
        vs_id: The contrast token by id (instead of ``vs``).
        logprob: Explain ``log p(target)`` instead of the logit (exact too; no contrast).
        position: Which prompt position's prediction to explain; negative counts from the end.
        chat: Wrap the prompt as a user turn with the model's chat template.
        top_k: How many top alternatives to report.
        heads: Split every attention layer by head.
        neurons: Report this many top neurons per dense MLP layer (0: none).
        experts: Split every MoE layer by routed expert.
        sources: Split by source position: ``"L3"`` (a layer), ``"L3.H2"`` (a head), ``"all"`` (every head).

    Raises:
        TokenlensError: Both forms of the target (or of the contrast), a contrast with ``logprob``, a
            ``top_k`` below 1, a negative ``neurons``, or a value of the wrong type.
    """

    target: str | tuple[str, ...] | None = None
    target_id: int | tuple[int, ...] | None = None
    first_token: bool = False
    vs: str | tuple[str, ...] | None = None
    vs_id: int | tuple[int, ...] | None = None
    logprob: bool = False
    position: int = -1
    chat: bool = False
    top_k: int = 10
    heads: bool = False
    neurons: int = 0
    experts: bool = False
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.target is not None and self.target_id is not None:
            raise TokenlensError("give the target as text or as an id, not both")
        if self.vs is not None and self.vs_id is not None:
            raise TokenlensError("give the contrast as text or as an id, not both")
        for name in TOKENS:
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))
        for name in ("target", "vs"):
            for value in _each(getattr(self, name)):
                if not isinstance(value, str):
                    raise TokenlensError(f"{option(name)} must be a token's text, not {value!r}")
        for name in ("target_id", "vs_id", "position", "top_k", "neurons"):
            for value in _each(getattr(self, name)):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TokenlensError(f"{option(name)} must be an integer, not {value!r}")
        if self.top_k < 1:
            raise TokenlensError(f"{option('top_k')} must be at least 1, not {self.top_k!r}")
        if self.neurons < 0:
            raise TokenlensError(f"{option('neurons')} must be 0 or more, not {self.neurons}")
        if self.logprob and (self.vs is not None or self.vs_id is not None):
            raise TokenlensError(
                f"a log-probability has no contrast token: drop {option('vs')} or {option('logprob', True)}"
            )
        if isinstance(self.sources, str) or not all(isinstance(s, str) for s in self.sources):
            raise TokenlensError(f"{option('sources')} must be a list of scopes such as ['L3', 'L3.H2']")
        object.__setattr__(self, "sources", tuple(self.sources))

    @property
    def per_prompt(self) -> bool:
        """Whether a token is given as a list, one per prompt."""
        return any(isinstance(getattr(self, name), tuple) for name in TOKENS)

    def for_prompts(self, count: int) -> tuple[AttributionRequest, ...]:
        """One request per prompt of ``count``: a list-valued token field gives each prompt its own token.

        Raises:
            TokenlensError: A list whose length is not ``count``.
        """
        if not self.per_prompt:
            return (self,) * count
        for name in TOKENS:
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != count:
                raise TokenlensError(
                    f"{count} prompt(s) but {len(value)} values of {option(name)}: give one per prompt, "
                    "or one for all"
                )
        return tuple(
            replace(self, **{n: v[row] for n in TOKENS if isinstance(v := getattr(self, n), tuple)})
            for row in range(count)
        )

    @classmethod
    def of(cls, request: AttributionRequest | None, options: Mapping[str, Any]) -> AttributionRequest:
        """``request``, or one made from keyword ``options`` (the fields); not both.

        Raises:
            TokenlensError: Both given, or an option that is not a field.
        """
        if request is not None:
            if options:
                raise TokenlensError(
                    "give an AttributionRequest or its fields as keyword arguments, not both"
                )
            return request
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TokenlensError(
                f"unknown attribution option {unknown[0]!r}; the options are: {', '.join(sorted(known))}"
            )
        return cls(**options)


TOKENS = ("target", "target_id", "vs", "vs_id")
"""The request's fields that name a token: one for every prompt, or a list of one per prompt."""


def _each(value: Any) -> tuple[Any, ...]:
    """The given values of a field: none, one, or each of a per-prompt list."""
    if value is None:
        return ()
    return value if isinstance(value, tuple) else (value,)

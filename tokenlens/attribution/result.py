"""Result objects of logit attribution. They carry their own labels, so renderers never need a model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from tokenlens.display import html_for
from tokenlens.errors import TokenlensError, option

QUANTITIES = ("logit", "logit_difference", "logprob")
"""What a :class:`Decomposition` explains: a logit, a logit difference (``--vs``) or a log-probability."""

TOLERANCE = 1e-4
"""Relative tolerance of every exact split: ``|Σ parts − whole| ≤ TOLERANCE · max(1, max_c |c|)`` (fp32)."""


SPLITS = ("components", "heads", "neurons", "experts", "sources")
"""What :meth:`LogitAttribution.to_dataframe` can tabulate."""


def require_pandas() -> Any:
    """The pandas module, imported only when a table is asked for.

    Raises:
        TokenlensError: pandas is not installed.
    """
    try:
        import pandas
    except ImportError:
        raise TokenlensError(
            "to_dataframe needs pandas: pip install pandas (or pip install 'tokenlens[notebook]')"
        ) from None
    return pandas


def component_columns(name: str) -> tuple[int | None, str]:
    """A component name split into ``(layer, part)``: ``L3.attn.bias`` → ``(3, "attn.bias")``, ``embed`` →
    ``(None, "embed")``, ``L3.H2`` → ``(3, "H2")``, ``L3`` → ``(3, "")``."""
    match = re.fullmatch(r"L(\d+)(?:\.(.+))?", name)
    if match is None:
        return None, name
    return int(match[1]), match[2] or ""


@dataclass(frozen=True)
class TokenScore:
    """One vocabulary entry at one position: its id, decoded text, logit and probability."""

    id: int
    token: str
    logit: float
    prob: float


@dataclass(frozen=True)
class Decomposition:
    """The exact split of one token's logit at one position into residual-stream components.

    With ``u`` the head row of the target, ``g`` the final-norm weight and ``s`` the final-norm scale taken
    from the real forward pass, ``logit = Σ_c u·(g ⊙ c)·s + b``: one term per write ``c`` to the stream
    (embedding, each layer's attention and MLP, any constant bias vector) plus the head's bias ``b`` when
    the model has one. The split is direct logit attribution: it credits each component's direct path to
    the logits; effects through later layers are not in it.

    The log-probability splits exactly the same way: with ``p`` the model's distribution at the position,
    ``log p_t = logit_t − Σ_j p_j logit_j − H(p)`` (because ``logsumexp = E_p[logit] + H(p)``), so each
    component's term is its contribution to ``logit_t`` minus its ``p``-weighted mean contribution to every
    logit — the readout row becomes ``u_t − Σ_j p_j u_j`` — and one more term, ``entropy`` ``= −H(p)``,
    is what the normaliser takes away. (The probability itself is not additive; explain its log.)

    Attributes:
        names: Component names in model order: ``embed``, ``L0.attn``, [``L0.attn.bias``], ``L0.mlp``,
            [``L0.mlp.bias``], …, [``logit_bias``]. A layer's bias term is split off its write.
        contributions: ``(component,)`` float32 logit contribution of each component.
        target_id: The token whose logit is split.
        contrast_id: With a contrast token, ``logit`` and the split are of ``logit[target − contrast]``.
        position: The sequence position (non-negative) of the prediction.
        logit: The explained value as the model computed it in its forward pass: the target's logit (minus
            the contrast's), or its log-probability (``quantity == "logprob"``).
        scale: The final norm's scale ``s = 1/sqrt(mean(h_L²) + ε)`` at the position.
        stream_error: ``max |Σ writes − h_L|``: how far the captured writes are from the stream the final
            norm actually received (0 up to rounding when every write was captured).
        model_value: For a 16-bit model, the explained value as its own 16-bit forward computed it; ``logit``
            is then the float32 readout of the model's own final stream (which the writes, the stream's
            increments, sum to exactly), and the two differ by the 16-bit rounding of the final norm and
            the head (:attr:`readout_rounding`). ``None`` for float32 models, whose ``logit`` is their own.
    """

    names: tuple[str, ...]
    contributions: torch.Tensor
    target_id: int
    position: int
    logit: float
    scale: float
    stream_error: float
    contrast_id: int | None = None
    quantity: str = "logit"
    model_value: float | None = None

    def __post_init__(self) -> None:
        if self.quantity not in QUANTITIES:
            raise ValueError(f"unknown quantity {self.quantity!r}")
        if (self.quantity == "logit_difference") != (self.contrast_id is not None):
            raise ValueError("a logit difference needs a contrast token, and only it has one")
        if self.contributions.shape != (len(self.names),):
            raise ValueError(
                f"{len(self.names)} names for contributions of shape {tuple(self.contributions.shape)}"
            )

    @property
    def total(self) -> float:
        """Sum of the component contributions (equals ``logit`` up to rounding)."""
        return float(self.contributions.double().sum())

    @property
    def error(self) -> float:
        """``|Σ parts − model logit|``."""
        return abs(self.total - self.logit)

    @property
    def tolerance(self) -> float:
        """The allowed error: ``TOLERANCE · max(1, max_c |c|)``."""
        return TOLERANCE * max(1.0, float(self.contributions.abs().max()))

    @property
    def readout_rounding(self) -> float | None:
        """``model_value − logit``: what a 16-bit model's own readout rounding added (``None`` in float32)."""
        return None if self.model_value is None else self.model_value - self.logit

    @property
    def exact(self) -> bool:
        """Whether the parts sum to the model's logit within :attr:`tolerance`."""
        return self.error <= self.tolerance

    def as_dict(self) -> dict[str, float]:
        """``{name: contribution}`` in model order."""
        return {
            name: float(value) for name, value in zip(self.names, self.contributions.tolist(), strict=False)
        }


@dataclass(frozen=True)
class HeadSplit:
    """Each attention head's direct contribution: ``L{i}.attn = Σ_h L{i}.H{h}``.

    (The ``o_proj`` bias, where there is one, is the separate ``L{i}.attn.bias`` term.)

    Attributes:
        contributions: ``(layer, head)`` float32 contribution of head ``h`` of layer ``i``.
        residual: ``(layer,)`` ``L{i}.attn − Σ_h L{i}.H{h}``: 0 up to rounding for plain and LoRA ``o_proj``;
            for a quantised ``o_proj`` it holds the split's quantisation error.
    """

    contributions: torch.Tensor
    residual: torch.Tensor

    def as_dict(self) -> dict[str, float]:
        """``{"L{i}.H{h}": contribution}`` in layer-then-head order."""
        return {
            f"L{i}.H{h}": value
            for i, row in enumerate(self.contributions.tolist())
            for h, value in enumerate(row)
        }


@dataclass(frozen=True)
class SourceSplit:
    """How much each source position contributed through one head (or a whole layer) at the query position.

    Attributes:
        layer: The layer.
        head: The head, or ``None`` for all heads of the layer together.
        contributions: ``(seq,)`` float32 contribution through source position ``j`` (0 after the query), over
            the model's own sequence (a prompt-tuning adapter's virtual positions first).
        value_bias: The value-projection bias's contribution (``Σ_j a[i, j] b_v``), kept off the sources.
        pattern: ``(heads, seq)`` attention weights from the query position (one row per head in scope).
        residual: parent − (Σ sources + value_bias), the parent being ``L{i}.H{h}`` or ``Σ_h L{i}.H{h}``.
    """

    layer: int
    head: int | None
    contributions: torch.Tensor
    value_bias: float
    pattern: torch.Tensor
    residual: float

    @property
    def name(self) -> str:
        """``L{i}.H{h}`` or ``L{i}``; source ``j`` is ``{name}.S{j}``."""
        return f"L{self.layer}" if self.head is None else f"L{self.layer}.H{self.head}"


@dataclass(frozen=True)
class NeuronSplit:
    """The top-k MLP neurons of each dense layer by |contribution|.

    Neuron ``n`` writes ``act_n · W_down[:, n]`` to the stream.

    Attributes:
        layers: The layers with a dense MLP, in order (MoE layers are in :class:`ExpertSplit`).
        ids: ``(layer, k)`` neuron indices, largest |contribution| first.
        contributions: ``(layer, k)`` float32 their contributions.
        activations: ``(layer, k)`` float32 their activations ``silu(gate) * up``.
        residual: ``(layer,)`` ``L{i}.mlp − Σ_all neurons`` (over every neuron, not only the top k).
    """

    layers: tuple[int, ...]
    ids: torch.Tensor
    contributions: torch.Tensor
    activations: torch.Tensor
    residual: torch.Tensor


@dataclass(frozen=True)
class ExpertSplit:
    """Each routed expert's weighted output in every MoE layer: ``L{i}.mlp = Σ_e L{i}.E{e}``.

    Attributes:
        layers: The MoE layers, in order.
        expert_ids: ``(layer, top_k)`` the experts the router chose at the position.
        router_weights: ``(layer, top_k)`` float32 the router's weights for them.
        contributions: ``(layer, top_k)`` float32 each chosen expert's contribution.
        residual: ``(layer,)`` ``L{i}.mlp − Σ_e L{i}.E{e}``: the recomputation checked against the block.
    """

    layers: tuple[int, ...]
    expert_ids: torch.Tensor
    router_weights: torch.Tensor
    contributions: torch.Tensor
    residual: torch.Tensor


@dataclass(frozen=True)
class LogitAttribution:
    """Why the model gives its target token the logit it does, for one prompt at one position.

    Attributes:
        model: The model reference the user gave.
        prompt: The prompt text as given (before any chat template).
        chat: Whether the prompt was wrapped as a user turn with the model's chat template.
        token_ids: The prompt's token ids, as fed to the model.
        tokens: Each prompt token's decoded text.
        position: The position whose next-token prediction is explained (non-negative).
        target: The explained token, its logit and probability.
        logprob: ``log p(target)`` under the model's full next-token distribution.
        top: The top-k tokens at the position among ids the tokenizer can decode, best first.
        decomposition: The exact per-component split of ``target.logit``.
        dtype: The model's parameter dtype (the split itself is computed in float32).
        device: Where the model ran.
        contrast: With a contrast token, the split is of ``logit[target] − logit[contrast]``.
        heads: Per-head split, when asked for.
        neurons: Top neurons per dense layer, when asked for.
        experts: Per-expert split of MoE layers, when asked for.
        sources: Source-position splits for the heads / layers asked for.
        virtual_tokens: Positions a prompt-tuning adapter runs before the prompt (0 without one). Source
            splits are over the model's own sequence, so their first ``virtual_tokens`` sources are those
            learned positions (see :attr:`source_tokens`).
    """

    model: str
    prompt: str
    chat: bool
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    position: int
    target: TokenScore
    logprob: float
    top: tuple[TokenScore, ...]
    decomposition: Decomposition
    dtype: str
    device: str
    contrast: TokenScore | None = None
    heads: HeadSplit | None = None
    neurons: NeuronSplit | None = None
    experts: ExpertSplit | None = None
    sources: tuple[SourceSplit, ...] = ()
    virtual_tokens: int = 0

    @property
    def source_tokens(self) -> tuple[str, ...]:
        """The text of every source position: ``<virtual j>`` for a prompt-tuning adapter's learned positions,
        then the prompt's tokens."""
        return tuple(f"<virtual {j}>" for j in range(self.virtual_tokens)) + self.tokens

    @property
    def source_end(self) -> int:
        """How many source positions the query position sees (itself included): ``virtual + position + 1``."""
        return self.virtual_tokens + self.position + 1

    @property
    def quantity(self) -> str:
        """``logit``, ``logit_difference`` or ``logprob``."""
        return self.decomposition.quantity

    def quantity_label(self, target: str, contrast: str | None = None) -> str:
        """The explained quantity written out with the given token labels, e.g. ``log p(' Paris')``."""
        if self.quantity == "logprob":
            return f"log p({target})"
        if self.quantity == "logit_difference":
            return f"logit[{target}] − logit[{contrast}]"
        return f"logit[{target}]"

    def _repr_html_(self) -> str | None:
        """Jupyter shows the result as the HTML report's tables (styles scoped to the output cell); the
        renderer is the one :mod:`tokenlens.display` has registered for this type."""
        return html_for(self)

    def to_dataframe(self, split: str = "components") -> Any:
        """One of the splits as a pandas ``DataFrame`` (pandas is imported here; it is not a dependency).

        Every table starts with ``position`` and ``target`` (the explained token's text), so tables of
        several results concatenate. ``split`` chooses the rows and the name's parts as columns:

        - ``components``: ``component`` (``L3.attn``), ``layer`` (empty for ``embed``, ``logit_bias``,
          ``entropy``), ``part`` (``embed``, ``attn``, ``mlp``, ``attn.bias``, …), ``contribution``;
        - ``heads``: ``component`` (``L3.H2``), ``layer``, ``head``, ``contribution``;
        - ``neurons``: ``component`` (``L3.N17``), ``layer``, ``rank`` (0: the largest |contribution|),
          ``neuron``, ``contribution``, ``activation``;
        - ``experts``: ``component`` (``L3.E5``), ``layer``, ``rank`` (the router's order), ``expert``,
          ``router_weight``, ``contribution``;
        - ``sources``: ``component`` (``L3.H2.S4``), ``scope`` (``L3.H2`` or ``L3``), ``layer``, ``head``
          (empty for a whole layer), ``source`` (the position in the model's own sequence), ``source_token``,
          ``contribution``, ``attention`` (the head's weight; empty for a whole layer); the sources the
          position sees (:attr:`source_end`).

        Raises:
            TokenlensError: An unknown ``split``, one that was not computed, or pandas missing.
        """
        if split not in SPLITS:
            raise TokenlensError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        pandas = require_pandas()
        rows = self._rows(split)
        head = {"position": self.position, "target": self.target.token}
        frame = pandas.DataFrame([{**head, **row} for row in rows], columns=[*head, *_COLUMNS[split]])
        for column in ("layer", "head"):
            if column in frame:
                frame[column] = frame[column].astype("Int64")
        return frame

    def _rows(self, split: str) -> list[dict[str, Any]]:
        """The rows of :meth:`to_dataframe`'s table ``split``."""
        if split == "components":
            d = self.decomposition
            return [
                dict(zip(_COLUMNS[split], (name, *component_columns(name), value), strict=True))
                for name, value in zip(d.names, d.contributions.tolist(), strict=True)
            ]
        missing = {
            "heads": (self.heads is None, option("heads", True)),
            "neurons": (self.neurons is None, option("neurons", 5)),
            "experts": (self.experts is None, option("experts", True)),
            "sources": (not self.sources, option("sources", ["L3.H2"])),
        }[split]
        if missing[0]:
            raise TokenlensError(f"this attribution has no {split} split: ask for it with {missing[1]}")
        if split == "heads":
            return [
                {"component": f"L{i}.H{h}", "layer": i, "head": h, "contribution": value}
                for i, row in enumerate(self.heads.contributions.tolist())
                for h, value in enumerate(row)
            ]
        if split == "neurons":
            n = self.neurons
            return [
                {"component": f"L{layer}.N{neuron}", "layer": layer, "rank": rank, "neuron": neuron}
                | {"contribution": value, "activation": act}
                for layer, ids, values, acts in zip(
                    n.layers, n.ids.tolist(), n.contributions.tolist(), n.activations.tolist(), strict=True
                )
                for rank, (neuron, value, act) in enumerate(zip(ids, values, acts, strict=True))
            ]
        if split == "experts":
            e = self.experts
            return [
                {"component": f"L{layer}.E{expert}", "layer": layer, "rank": rank, "expert": expert}
                | {"router_weight": weight, "contribution": value}
                for layer, ids, weights, values in zip(
                    e.layers,
                    e.expert_ids.tolist(),
                    e.router_weights.tolist(),
                    e.contributions.tolist(),
                    strict=True,
                )
                for rank, (expert, weight, value) in enumerate(zip(ids, weights, values, strict=True))
            ]
        names = self.source_tokens
        return [
            {"component": f"{s.name}.S{j}", "scope": s.name, "layer": s.layer, "head": s.head, "source": j}
            | {"source_token": names[j], "contribution": value}
            | {"attention": float(s.pattern[0, j]) if s.head is not None else None}
            for s in self.sources
            for j, value in enumerate(s.contributions[: self.source_end].tolist())
        ]


@dataclass(frozen=True)
class LogitLens:
    """The model's guess at the next token after the embedding and after every layer, per prompt position.

    Depth ``embed`` decodes ``h_0``; depth ``L{i}`` decodes the stream after layer ``i``; the last depth is
    exactly what the final norm receives, so its numbers are the model's own output.

    Attributes:
        model: The model reference the user gave.
        prompt: The prompt text as given (before any chat template).
        chat: Whether the prompt was wrapped with the model's chat template.
        token_ids: The prompt's token ids, as fed to the model.
        tokens: Each prompt token's decoded text.
        depths: ``("embed", "L0", …, "L{n-1}")``.
        positions: ``(pos,)`` the prompt positions shown, ascending (each predicts the token after it).
        target_id: The tracked token.
        target: Its decoded text.
        top_ids: ``(depth, pos, k)`` top-k token ids among decodable ids, best first.
        top_probs: ``(depth, pos, k)`` their probabilities (softmax over the head's full vocabulary).
        top_tokens: ``(depth, pos, k)`` nested tuples of the top tokens' decoded text.
        target_logit: ``(depth, pos)`` the target's logit.
        target_prob: ``(depth, pos)`` the target's probability.
        target_rank: ``(depth, pos)`` the target's rank among decodable ids (0 = top-1).
        scale: ``(depth, pos)`` the final-norm scale each depth was decoded with.
        stream_error: ``max |h_L − final-norm input|`` (0 up to rounding).
    """

    model: str
    prompt: str
    chat: bool
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    depths: tuple[str, ...]
    positions: torch.Tensor
    target_id: int
    target: str
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    top_tokens: tuple[tuple[tuple[str, ...], ...], ...]
    target_logit: torch.Tensor
    target_prob: torch.Tensor
    target_rank: torch.Tensor
    scale: torch.Tensor
    stream_error: float

    def __post_init__(self) -> None:
        grid = (len(self.depths), len(self.positions))
        for name in ("target_logit", "target_prob", "target_rank", "scale"):
            if tuple(getattr(self, name).shape) != grid:
                raise ValueError(f"{name} has shape {tuple(getattr(self, name).shape)}, expected {grid}")
        if self.top_ids.shape != self.top_probs.shape or tuple(self.top_ids.shape[:2]) != grid:
            raise ValueError(f"top_ids {tuple(self.top_ids.shape)} / top_probs do not match {grid}")
        if len(self.top_tokens) != grid[0] or any(len(row) != grid[1] for row in self.top_tokens):
            raise ValueError(f"top_tokens does not match {grid}")


_COLUMNS = {
    "components": ("component", "layer", "part", "contribution"),
    "heads": ("component", "layer", "head", "contribution"),
    "neurons": ("component", "layer", "rank", "neuron", "contribution", "activation"),
    "experts": ("component", "layer", "rank", "expert", "router_weight", "contribution"),
    "sources": ("component", "scope", "layer", "head", "source", "source_token", "contribution", "attention"),
}
"""The columns of each :meth:`LogitAttribution.to_dataframe` table after ``position`` and ``target``."""

"""Direct logit attribution: split a token's logit exactly over the residual-stream writes.

The final RMSNorm makes the logits a function of the whole stream, ``logits = W_U · (g ⊙ h_L · s) + b``,
but with the scale ``s = 1/sqrt(mean(h_L²) + ε)`` read off the real forward pass, the map from the stream to
one token's logit is linear, and ``h_L`` is the sum of the writes. So::

    logit_t = Σ_c  W_U[t] · (g ⊙ c) · s  +  b[t]

exactly, one term per write ``c``. A bias vector that a linear adds to the stream (an ``o_proj`` or
``down_proj`` bias) is split off its layer's write as a constant term of its own, and a head bias is the
``logit_bias`` term. All of it is computed in float32 whatever the model's dtype. Finer splits of the layer
terms (heads, source positions, neurons, experts) are in :mod:`tokenlens.attribution.finer`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from tokenlens.attribution import finer, inputs
from tokenlens.attribution.readout import Readout, make_readout, stream_logits
from tokenlens.attribution.request import AttributionRequest
from tokenlens.attribution.result import Decomposition, LogitAttribution, SourceSplit, TokenScore
from tokenlens.capture.internals import InternalsRecorder, capture_internals
from tokenlens.capture.residual import ResidualCapture, capture_residual, component_names
from tokenlens.errors import TokenlensError, option
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import (
    ArchitectureSpec,
    bare_model,
    linear_bias,
    spec_for_model,
    virtual_keys,
    virtual_tokens,
)


def run_with_capture(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> tuple[ResidualCapture, torch.Tensor]:
    """One real forward pass of ``input_ids`` ``(batch, seq)``, capturing the stream at ``positions``.

    Args:
        attention_mask: ``(batch, seq)`` 1 for real tokens, 0 for padding (default: all ones). With left
            padding, position ids are derived from it so every prompt sees the positions it would alone.

    Returns:
        The captured writes at ``positions`` and the logits there, ``(batch, len(positions), vocab)``.
    """
    capture, _, logits = run_with_internals(model, spec, input_ids, positions, frozenset(), attention_mask)
    return capture, logits


def run_with_internals(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    splits: frozenset[str],
    attention_mask: torch.Tensor | None = None,
) -> tuple[ResidualCapture, InternalsRecorder, torch.Tensor]:
    """:func:`run_with_capture` that also records the layer internals ``splits`` need (see
    :mod:`tokenlens.capture.internals`).

    With a prompt-tuning adapter the model runs ``V`` virtual positions before the prompt: ``positions``
    stay prompt positions in the residual capture and the logits, while the internals (queries, keys,
    values, rotary tables) are in the model's own sequence of ``V + seq`` positions.
    """
    if "sources" in splits and virtual_keys(model):
        raise TokenlensError(
            "source splits are not available for prefix-tuning adapters: their learned keys/values live in "
            "the attention cache, not in the prompt (per-layer, head, neuron and expert splits work)"
        )
    shift = virtual_tokens(model)
    device = spec.module(model, spec.embed).weight.device
    input_ids = input_ids.to(device)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    extra = {}
    if shift == 0:
        extra["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)  # (batch, seq) = arange when unpadded
    elif not bool(mask[:, 0].all()):
        raise TokenlensError(
            "left padding cannot be used with a prompt-tuning adapter (PEFT ignores position ids): "
            "pad on the right"
        )
    batch, seq = input_ids.shape
    with ExitStack() as stack, torch.no_grad():
        residual = stack.enter_context(capture_residual(model, spec, positions, shift))
        internals = stack.enter_context(
            capture_internals(model, spec, (batch, shift + seq), positions + shift, splits)
        )
        output = model(
            input_ids=input_ids,
            attention_mask=mask,
            use_cache=False,
            logits_to_keep=(positions + shift).to(device),
            **extra,
        )
    return residual.result(component_names(spec, model)), internals, output.logits.detach()


def layer_bias_terms(model: nn.Module, spec: ArchitectureSpec) -> dict[str, torch.Tensor]:
    """Constant bias vectors the layers' output linears add to the stream, keyed by their layer's write."""
    terms = {}
    for i in range(len(spec.layer_list(model))):
        for part, path in (("attn", spec.attn_out), ("mlp", spec.mlp_out)):
            bias = linear_bias(model, f"{spec.layers}.{i}.{path}")
            if bias is not None:
                terms[f"L{i}.{part}"] = bias.detach()
    return terms


def _kept_index(capture: ResidualCapture, position: int) -> int:
    matches = (capture.positions == position).nonzero()
    if len(matches) != 1:
        raise ValueError(f"position {position} was not captured (kept {capture.positions.tolist()})")
    return int(matches[0, 0])


@torch.no_grad()
def decompose(
    model: nn.Module,
    capture: ResidualCapture,
    logits: torch.Tensor,
    *,
    position: int,
    target_id: int,
    contrast_id: int | None = None,
    batch_index: int = 0,
    spec: ArchitectureSpec | None = None,
    logprob: bool = False,
) -> Decomposition:
    """Split ``target_id``'s logit at ``position`` over the captured writes (no forward pass here).

    Args:
        model: The model the capture came from (its head, final norm and biases are read).
        capture: Writes captured by :func:`run_with_capture`; must include ``position``.
        logits: ``(batch, len(capture.positions), vocab)`` the model's logits from the same pass.
        position: Sequence position to explain (in the captured, possibly padded, sequence).
        target_id: Token whose logit is split.
        contrast_id: Split ``logit[target] − logit[contrast]`` instead.
        batch_index: Which prompt of the batch.
        spec: The model's spec (looked up when omitted).
        logprob: Split ``log p(target)`` instead (see :class:`Decomposition`): the readout row is
            ``u_t − E_p[u]`` and a last term, ``entropy``, is ``−H(p)``.
    """
    spec = spec or spec_for_model(model)
    if logprob and contrast_id is not None:
        raise TokenlensError(
            f"a log-probability has no contrast token: drop {option('vs')} or {option('logprob', True)}"
        )
    k = _kept_index(capture, position)
    own = logits[batch_index, k].double()  # the softmax and entropy of a log-probability need float64
    if capture.increments:  # a 16-bit model: the whole is the float32 readout of its own final stream
        row = stream_logits(model, spec, capture.final_input[batch_index, k]).double()
    else:
        row = own
    probs = row.softmax(-1) if logprob else None
    readout = make_readout(model, spec, capture.final_input[batch_index, k], target_id, contrast_id, probs)
    device = readout.direction.device
    writes = capture.writes[:, batch_index, k].to(device, torch.float32)  # (component, d)
    h_final = capture.final_input[batch_index, k].to(device, torch.float32)  # (d,)
    if not (torch.isfinite(writes).all() and torch.isfinite(logits[batch_index, k]).all()):
        raise TokenlensError(
            f"the model produced NaN or infinite values at position {position} (overflow in a low-precision "
            f"dtype? try {option('dtype', 'float32')}; or the weights are corrupt)"
        )
    names: list[str] = []
    vectors: list[torch.Tensor] = []
    biases = layer_bias_terms(model, spec)
    for name, write in zip(capture.names, writes, strict=True):
        bias = biases.get(name)
        if bias is None:
            names.append(name)
            vectors.append(write)
        else:
            bias = bias.to(device, torch.float32)
            names += [name, f"{name}.bias"]
            vectors += [write - bias, bias]
    contributions = readout(torch.stack(vectors))  # (component,)
    if readout.bias is not None:
        names.append("logit_bias")
        contributions = torch.cat([contributions, torch.tensor([readout.bias], device=device)])
    if probs is not None:
        names.append("entropy")  # −H(p): what the softmax's normaliser takes away beyond E_p[logit]
        negative_entropy = (probs * row.log_softmax(-1)).nan_to_num().sum()
        contributions = torch.cat([contributions, negative_entropy.reshape(1).to(device, torch.float32)])
    logit = _explained(row, target_id, contrast_id, logprob)
    return Decomposition(
        names=tuple(names),
        contributions=contributions.cpu(),
        target_id=int(target_id),
        position=int(position),
        logit=logit,
        scale=readout.scale,
        stream_error=float((writes.sum(0) - h_final).abs().max()),
        contrast_id=None if contrast_id is None else int(contrast_id),
        quantity="logprob" if logprob else "logit" if contrast_id is None else "logit_difference",
        model_value=_explained(own, target_id, contrast_id, logprob) if capture.increments else None,
    )


def _explained(logits: torch.Tensor, target_id: int, contrast_id: int | None, logprob: bool) -> float:
    """The explained number from a row of ``(vocab,)`` float64 logits."""
    if logprob:
        return float(logits.log_softmax(-1)[target_id])
    return float(logits[target_id] - (logits[contrast_id] if contrast_id is not None else 0.0))


def decompose_logit(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    target_id: int,
    position: int = -1,
    contrast_id: int | None = None,
) -> Decomposition:
    """Run ``input_ids`` ``(seq,)`` or ``(1, seq)`` and split ``target_id``'s logit at ``position``.

    The low-level entry point for code that already has ids (no tokenizer involved); see :func:`attribute`
    for prompts and named targets.
    """
    spec = spec_for_model(model)
    input_ids = input_ids.reshape(1, -1)
    position = inputs.resolve_position(position, input_ids.shape[1])
    capture, logits = run_with_capture(model, spec, input_ids, torch.tensor([position]))
    return decompose(
        model, capture, logits, position=position, target_id=target_id, contrast_id=contrast_id, spec=spec
    )


def attribute(
    loaded: LoadedModel,
    prompt: str | Sequence[int],
    request: AttributionRequest | None = None,
    /,
    **options: Any,
) -> LogitAttribution:
    """Explain the model's next-token logit for ``prompt``, component by component.

    Args:
        loaded: A model from :func:`tokenlens.load`.
        prompt: Text to predict from (used as is unless ``chat``), or token ids used exactly as given.
        request: What to explain and how finely (:class:`~tokenlens.attribution.request.AttributionRequest`):
            the target (default: the top-1 token), a contrast, the log-probability, the position, the finer
            splits. Or give its fields as keyword ``options``: ``attribute(loaded, prompt, target=" Paris",
            heads=True)``.

    Raises:
        TokenlensError: For any bad input (empty or over-long prompt, bad position, unknown or multi-token
            target, contrast equal to the target, unknown layer/head, an unknown option); one line.
    """
    return attribute_batch(loaded, [prompt], request, **options)[0]


def attribute_batch(
    loaded: LoadedModel,
    prompts: Sequence[str | Sequence[int]],
    request: AttributionRequest | None = None,
    /,
    *,
    padding_side: str = "right",
    **options: Any,
) -> tuple[LogitAttribution, ...]:
    """:func:`attribute` for several prompts in one padded forward pass; results equal running each alone.

    The request's ``position`` is per prompt (``-1``: each prompt's last token). ``padding_side`` is
    ``"right"`` or ``"left"`` (left padding gets position ids from the attention mask). A named target or
    contrast applies to every prompt, or give a list of one per prompt (``target=[" Paris", " Rome"]``; the
    same for ``target_id``, ``vs``, ``vs_id``); the default target is each prompt's own top-1 token.

    Raises:
        TokenlensError: As :func:`attribute`, and a per-prompt list whose length is not the number of prompts.
    """
    request = AttributionRequest.of(request, options)
    if not prompts:
        raise TokenlensError("no prompts given")
    if padding_side not in ("left", "right"):
        raise TokenlensError(f"padding side must be left or right, not {padding_side!r}")
    model, tokenizer, spec = loaded.model, loaded.tokenizer, loaded.spec
    config = bare_model(model).config
    n_layers = len(spec.layer_list(model))
    n_heads = spec.layer_list(model)[0].get_submodule(spec.attn).config.num_attention_heads
    scopes = parse_sources(request.sources, n_layers, n_heads)
    splits = splits_needed(request.heads, request.neurons, request.experts, scopes, spec)
    max_positions = getattr(config, "max_position_embeddings", None)
    vocab_size = spec.module(model, spec.head).weight.shape[0]
    encoded = [
        inputs.encode_prompt(tokenizer, p, chat=request.chat, max_positions=max_positions)
        if isinstance(p, str)
        else inputs.check_prompt_ids(p, vocab_size, max_positions)
        for p in prompts
    ]
    texts = [p if isinstance(p, str) else tokenizer.decode(ids) for p, ids in zip(prompts, encoded)]
    own_positions = [inputs.resolve_position(request.position, len(ids)) for ids in encoded]
    fixed, contrasts = [], []
    for row, each in enumerate(request.for_prompts(len(prompts))):
        fixed.append(resolve_token(tokenizer, each.target, each.target_id, each.first_token, vocab_size))
        contrasts.append(resolve_token(tokenizer, each.vs, each.vs_id, each.first_token, vocab_size))
        if contrasts[row] is not None and contrasts[row] == fixed[row]:
            where = f" of prompt {row}" if request.per_prompt else ""
            raise TokenlensError(
                f"the contrast token is the target{where} itself: choose another {option('vs')}"
            )

    width = max(len(ids) for ids in encoded)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    offsets = [width - len(ids) if padding_side == "left" else 0 for ids in encoded]
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, (ids, offset) in enumerate(zip(encoded, offsets, strict=True)):
        input_ids[row, offset : offset + len(ids)] = torch.tensor(ids)
        mask[row, offset : offset + len(ids)] = 1
    padded = [p + o for p, o in zip(own_positions, offsets, strict=True)]
    kept = torch.tensor(sorted(set(padded)))
    capture, internals, logits = run_with_internals(model, spec, input_ids, kept, splits, mask)
    shift = virtual_tokens(model)

    limit = inputs.decodable_vocab(tokenizer, vocab_size)
    results = []
    for row, ids in enumerate(encoded):
        k = int((kept == padded[row]).nonzero()[0, 0])
        scores = logits[row, k].double()  # (vocab,): float64 softmax, as the log-probability split uses
        probs = scores.softmax(-1)
        top_ids = inputs.top_tokens(scores, limit, request.top_k).tolist()
        contrast = contrasts[row]
        chosen = fixed[row] if fixed[row] is not None else top_ids[0]
        if contrast is not None and contrast == chosen:
            raise TokenlensError(
                f"the contrast token is the model's top-1 target: name a {option('target')} or another "
                f"{option('vs')}"
            )

        def score(token_id: int, scores=scores, probs=probs) -> TokenScore:
            token = inputs.decode_token(tokenizer, token_id)
            return TokenScore(token_id, token, float(scores[token_id]), float(probs[token_id]))

        d = decompose(
            model,
            capture,
            logits,
            position=padded[row],
            target_id=chosen,
            contrast_id=contrast,
            batch_index=row,
            spec=spec,
            logprob=request.logprob,
        )
        weights = None
        if request.logprob:  # the probabilities decompose used (a 16-bit model: of its float32 readout)
            whole = stream_logits(model, spec, capture.final_input[row, k]) if capture.increments else scores
            weights = whole.double().softmax(-1)
        fine = _finer(
            model,
            spec,
            capture,
            internals,
            d,
            splits,
            scopes,
            request.neurons,
            row,
            k,
            padded[row] + shift,  # in the model's own sequence: virtual positions first
            torch.cat([torch.ones(shift, dtype=mask.dtype), mask[row]]),
            weights,
        )
        if fine.get("sources"):  # the row's own sources: virtual positions, then its tokens (no padding)
            own = torch.cat([torch.arange(shift), shift + offsets[row] + torch.arange(len(ids))])
            fine["sources"] = tuple(_unpadded_sources(split, own) for split in fine["sources"])
        results.append(
            LogitAttribution(
                model=loaded.ref,
                prompt=texts[row],
                chat=request.chat,
                token_ids=tuple(ids),
                tokens=tuple(inputs.decode_token(tokenizer, i) for i in ids),
                position=own_positions[row],
                target=score(chosen),
                logprob=float(scores.log_softmax(-1)[chosen]),
                top=tuple(score(i) for i in top_ids),
                decomposition=_unpadded(d, own_positions[row]),
                dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
                device=str(next(model.parameters()).device),
                contrast=None if contrast is None else score(contrast),
                virtual_tokens=shift,
                **fine,
            )
        )
    return tuple(results)


def resolve_token(
    tokenizer, text: str | None, token_id: int | None, first_token: bool, vocab_size: int
) -> int | None:
    """A token given as decoded text or as an id, checked (``None`` when neither is given).

    Raises:
        TokenlensError: A list of tokens (one per prompt is for
            :func:`~tokenlens.attribution.direct.attribute_batch` only), or a bad token.
    """
    if isinstance(text, (list, tuple)) or isinstance(token_id, (list, tuple)):
        raise TokenlensError("a list of tokens (one per prompt) is for attribute_batch: give one token here")
    if token_id is not None:
        return inputs.check_target_id(tokenizer, token_id, vocab_size)
    if text is not None:
        return inputs.target_from_text(tokenizer, text, first_token=first_token)
    return None


def _unpadded(d: Decomposition, position: int) -> Decomposition:
    """The decomposition with its position counted in the prompt's own tokens (not the padded batch)."""
    return dataclasses.replace(d, position=position)


def _unpadded_sources(split: SourceSplit, own: torch.Tensor) -> SourceSplit:
    """A source split cut to the prompt's own source positions ``own`` (padding carries exactly 0)."""
    return dataclasses.replace(split, contributions=split.contributions[own], pattern=split.pattern[:, own])


def parse_sources(sources: Sequence[str], n_layers: int, n_heads: int) -> tuple[tuple[int, int | None], ...]:
    """``["L3", "L3.H2", "all"]`` → ``((3, None), (3, 2), …)``; ``all`` means every head of every layer.

    Raises:
        TokenlensError: A malformed name or a layer/head index the model does not have.
    """
    scopes: list[tuple[int, int | None]] = []
    for item in sources:
        if item == "all":
            scopes += [(i, h) for i in range(n_layers) for h in range(n_heads)]
            continue
        match = re.fullmatch(r"L(\d+)(?:\.H(\d+))?", item)
        if match is None:
            raise TokenlensError(
                f"cannot read source scope {item!r}: use L{{layer}}, L{{layer}}.H{{head}} or all"
            )
        layer, head = int(match[1]), None if match[2] is None else int(match[2])
        if layer >= n_layers:
            raise TokenlensError(f"layer {layer} does not exist: the model has layers 0..{n_layers - 1}")
        if head is not None and head >= n_heads:
            raise TokenlensError(f"head {head} does not exist: layer {layer} has heads 0..{n_heads - 1}")
        scopes.append((layer, head))
    return tuple(dict.fromkeys(scopes))


def splits_needed(
    heads: bool, neurons: int, experts: bool, scopes: tuple, spec: ArchitectureSpec
) -> frozenset[str]:
    if experts and not spec.moe:
        raise TokenlensError(
            f"{option('experts', True)} needs a mixture-of-experts model; this one is {spec.family}"
        )
    wanted = set()
    if heads or scopes:
        wanted.add("heads")  # a source split is checked against its head's contribution
    if scopes:
        wanted.add("sources")
    if neurons:
        wanted.add("neurons")
    if experts:
        wanted.add("experts")
    return frozenset(wanted)


@torch.no_grad()
def _finer(
    model: nn.Module,
    spec: ArchitectureSpec,
    capture: ResidualCapture,
    internals: InternalsRecorder,
    d: Decomposition,
    splits: frozenset[str],
    scopes: tuple[tuple[int, int | None], ...],
    neurons: int,
    row: int,
    k: int,
    position: int,
    key_mask: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> dict:
    """The finer splits asked for, as keyword arguments of :class:`LogitAttribution` (``weights``: the
    probabilities of a log-probability split)."""
    if not splits:
        return {}
    final_input = capture.final_input[row, k]
    readout: Readout = make_readout(model, spec, final_input, d.target_id, d.contrast_id, weights)
    parents = d.as_dict()
    layers = internals.layers
    fine: dict = {}
    if "heads" in splits:
        fine["heads"] = finer.head_split(model, spec, layers, readout, parents, row, k)
    if "neurons" in splits:
        fine["neurons"] = finer.neuron_split(model, spec, layers, readout, parents, row, k, neurons)
    if "experts" in splits:
        fine["experts"] = finer.expert_split(model, spec, layers, readout, parents, row, k)
    per_layer = {
        layer: finer.layer_sources(
            model,
            spec,
            layers,
            readout,
            layer_index=layer,
            position=position,
            batch_index=row,
            k=k,
            key_mask=key_mask,
        )
        for layer in dict.fromkeys(layer for layer, _ in scopes)
    }
    sources: list[SourceSplit] = [
        finer.source_split(per_layer[layer], fine["heads"], head) for layer, head in scopes
    ]
    fine["sources"] = tuple(sources)
    return fine

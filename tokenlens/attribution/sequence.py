"""Explain a whole answer: each answer token's logit (or log-probability) split exactly, from one forward.

A causal LM scores an answer of ``n`` tokens after a prompt in one forward pass over prompt + answer: the
logits at position ``len(prompt) + k − 1`` predict answer token ``k``, and the residual stream there is a sum
of writes like anywhere else. So one capture of the stream at those ``n`` positions gives every step's split,
each the same as :func:`tokenlens.attribute` on the prompt and the answer's first ``k`` tokens (the attention
is causal: later tokens change nothing at earlier positions). Source splits of a step now include the
answer's earlier tokens.

The answer's log-probability is ``Σ_k log p(token_k)``; each term splits exactly (the log-probability
readout ``u_t − E_p[u]`` and the ``entropy`` term ``−H(p)``), so the sum does too
(:class:`~tokenlens.attribution.sequence_result.SequenceSplit`). That split is computed for every answer,
whatever each step explains.

The readouts of all steps are computed together: one gather of head rows for logits, one blocked product
``(e_t − p) · W_U`` for log-probabilities (the differences ``e_t − p`` in float64, the product over float32
blocks of the head summed in float64), then one product of every captured write with every step's readout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tokenlens.attribution import finer, inputs
from tokenlens.attribution.direct import (
    layer_bias_terms,
    parse_sources,
    resolve_token,
    run_with_internals,
    splits_needed,
)
from tokenlens.attribution.readout import Readout, final_norm_eps, make_readout, norm_weight, stream_logits
from tokenlens.attribution.request import AttributionRequest
from tokenlens.attribution.result import Decomposition, HeadSplit, LogitAttribution, TokenScore
from tokenlens.attribution.sequence_inputs import (
    check_answer_ids,
    check_context,
    check_generation,
    completion_ids,
    generate_ids,
)
from tokenlens.attribution.sequence_result import Generation, SequenceAttribution, SequenceSplit
from tokenlens.errors import TokenlensError, option
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import ArchitectureSpec, bare_model, virtual_tokens


def attribute_sequence(
    loaded: LoadedModel,
    prompt: str | Sequence[int],
    request: AttributionRequest | None = None,
    /,
    *,
    completion: str | Sequence[int] | None = None,
    generate: int | None = None,
    sample: bool = False,
    temperature: float | None = None,
    seed: int | None = None,
    tokenize: str = "joint",
    source: str | None = None,
    **options: Any,
) -> SequenceAttribution:
    """Explain every token of an answer after ``prompt``, and the answer's log-probability, component by
    component.

    Args:
        loaded: A model from :func:`tokenlens.load`.
        prompt: Text (used as is unless ``chat``) or token ids used exactly as given.
        request: What each step explains and how finely, as for :func:`tokenlens.attribute` (or its fields as
            keyword ``options``): ``vs`` (one contrast token for every step), ``logprob``, ``chat``,
            ``top_k``, ``heads``, ``neurons``, ``experts``, ``sources``. The targets are the answer's tokens,
            so ``target`` and ``position`` are refused.
        completion: The answer, teacher-forced: text (see :mod:`tokenlens.attribution.sequence_inputs` on
            how it is tokenized) or token ids used exactly as given.
        generate: Instead, let the model write this many tokens (greedy unless ``sample``).
        sample: Sample the generated tokens from ``softmax(logits / temperature)``.
        temperature: The sampling temperature (default 1.0; above 0).
        seed: The sampling seed (default 0).
        tokenize: ``joint`` (default: prompt and completion encoded together) or ``separate``.
        source: ``target`` records that the completion is a multi-token target (the command line's
            ``--target``); default ``completion`` or ``generated``.

    Returns:
        One :class:`~tokenlens.attribution.result.LogitAttribution` per answer token and the answer's
        log-probability split.

    Raises:
        TokenlensError: For any bad input, in one line: no answer or both kinds, an empty completion,
            ``generate`` below 1, sampling settings without sampling or a temperature not above 0, prompt
            and answer longer than the model's context, a ``target`` or ``position``, a contrast equal to an
            answer token, NaN or infinite values in the model's output.
    """
    request = AttributionRequest.of(request, options)
    if completion is not None and generate is not None:
        raise TokenlensError(
            f"give the answer as {option('completion')} or ask for {option('generate', 'N')}, not both"
        )
    if completion is None and generate is None:
        raise TokenlensError(
            f"give the answer as {option('completion')} or ask for {option('generate', 'N')}"
        )
    if request.target is not None or request.target_id is not None:
        raise TokenlensError(f"the answer's tokens are the targets: drop {option('target')}")
    if request.position != -1:
        raise TokenlensError(
            f"{option('position')} explains one prompt position; an answer is explained at every position "
            f"after the prompt: drop {option('position')}"
        )
    temperature, seed = check_generation(generate, sample, temperature, seed)
    model, tokenizer, spec = loaded.model, loaded.tokenizer, loaded.spec
    config = bare_model(model).config
    max_positions = getattr(config, "max_position_embeddings", None)
    vocab_size = spec.module(model, spec.head).weight.shape[0]
    limit = inputs.decodable_vocab(tokenizer, vocab_size)
    if isinstance(prompt, str):
        prompt_ids = inputs.encode_prompt(tokenizer, prompt, chat=request.chat, max_positions=max_positions)
        fed = _fed_text(tokenizer, prompt, request.chat)
        text = prompt
    else:
        prompt_ids = inputs.check_prompt_ids(prompt, vocab_size, max_positions)
        fed, text = tokenizer.decode(prompt_ids), tokenizer.decode(prompt_ids)
    contrast = resolve_token(tokenizer, request.vs, request.vs_id, request.first_token, vocab_size)
    n_layers = len(spec.layer_list(model))
    n_heads = spec.layer_list(model)[0].get_submodule(spec.attn).config.num_attention_heads
    scopes = parse_sources(request.sources, n_layers, n_heads)
    splits = splits_needed(request.heads, request.neurons, request.experts, scopes, spec)

    notes: tuple[str, ...] = ()
    generation = None
    if generate is not None:
        check_context(len(prompt_ids), generate, max_positions, "tokens to generate")
        answer, stopped = generate_ids(
            model,
            spec,
            prompt_ids,
            generate,
            limit=limit,
            eos_id=tokenizer.eos_token_id,
            temperature=temperature,
            seed=seed,
        )
        generation = Generation(generate, sample, temperature, seed, stopped)
        tokenization, kind = "generated", "generated"
    elif isinstance(completion, str):
        answer, tokenization, notes = completion_ids(
            tokenizer, prompt_ids, fed, completion, chat=request.chat, tokenize=tokenize
        )
        kind = source or "completion"
    else:
        answer, tokenization, kind = check_answer_ids(completion, limit), "ids", source or "completion"
    check_context(len(prompt_ids), len(answer), max_positions, "completion")
    for k, token_id in enumerate(answer):
        if contrast == token_id:
            raise TokenlensError(
                f"the contrast token is the answer's token at step {k} "
                f"({inputs.decode_token(tokenizer, token_id)!r}): choose another {option('vs')}"
            )
    steps, split = explain_steps(loaded, prompt_ids, answer, request, contrast, splits, scopes, text, limit)
    return SequenceAttribution(
        model=loaded.ref,
        prompt=text,
        chat=request.chat,
        prompt_ids=tuple(prompt_ids),
        prompt_tokens=tuple(inputs.decode_token(tokenizer, i) for i in prompt_ids),
        answer_ids=tuple(answer),
        answer_tokens=tuple(inputs.decode_token(tokenizer, i) for i in answer),
        source=kind,
        completion=completion if isinstance(completion, str) else None,
        tokenization=tokenization,
        notes=notes,
        steps=steps,
        sequence=split,
        generation=generation,
    )


def _fed_text(tokenizer: Any, prompt: str, chat: bool) -> str:
    """The text whose tokens are the prompt's as fed: the chat template's text with ``chat``."""
    if not chat:
        return prompt
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


@torch.no_grad()
def explain_steps(
    loaded: LoadedModel,
    prompt_ids: list[int],
    answer: list[int],
    request: AttributionRequest,
    contrast: int | None,
    splits: frozenset[str],
    scopes: tuple[tuple[int, int | None], ...],
    text: str,
    limit: int,
) -> tuple[tuple[LogitAttribution, ...], SequenceSplit]:
    """One capture forward over prompt + answer; every step's split and the sequence split."""
    model, tokenizer, spec = loaded.model, loaded.tokenizer, loaded.spec
    ids = prompt_ids + answer
    n, first = len(answer), len(prompt_ids) - 1
    positions = torch.arange(first, first + n)  # position first + k predicts answer token k
    capture, internals, logits = run_with_internals(model, spec, torch.tensor([ids]), positions, splits)
    shift = virtual_tokens(model)
    targets = torch.tensor(answer)
    if capture.increments:  # a 16-bit model: the float32 readout of its own final stream is the whole
        rows = torch.stack([stream_logits(model, spec, capture.final_input[0, k]) for k in range(n)]).double()
    else:
        rows = logits[0].double().cpu()  # (step, vocab)
    writes = capture.writes[:, 0].to(torch.float32)  # (component, step, d_model)
    finals = capture.final_input[0].to(torch.float32)  # (step, d_model)
    if not (torch.isfinite(writes).all() and torch.isfinite(logits).all()):
        raise TokenlensError(
            "the model produced NaN or infinite values over the answer (overflow in a low-precision dtype? "
            f"try {option('dtype', 'float32')}; or the weights are corrupt)"
        )
    log_probs = rows.log_softmax(-1)  # (step, vocab) float64
    probs = log_probs.exp()
    names, vectors = _vectors(model, spec, capture.names, writes)
    logprob_readout = _readouts(model, spec, finals, targets, None, probs)
    logprob_parts = _contributions(vectors, logprob_readout, names, probs, log_probs)
    if request.logprob:
        readout, parts = logprob_readout, logprob_parts
    else:
        readout = _readouts(model, spec, finals, targets, contrast, None)
        parts = _contributions(vectors, readout, names, None, None)
    own = logits[0].double().cpu()
    stream_errors = (writes.sum(0) - finals.to(writes.device)).abs().amax(-1).tolist()  # (step,)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    device = str(next(model.parameters()).device)
    tokens = [inputs.decode_token(tokenizer, i) for i in ids]
    heads = _all_heads(model, spec, internals, readout) if "heads" in splits else None
    steps = []
    for k, target in enumerate(answer):
        position = first + k
        d = Decomposition(
            names=parts.names,
            contributions=parts.values[k].cpu(),
            target_id=target,
            position=position,
            logit=_explained(rows[k], log_probs[k], target, contrast, request.logprob),
            scale=float(readout.scales[k]),
            stream_error=stream_errors[k],
            contrast_id=None if request.logprob else contrast,
            quantity="logprob" if request.logprob else "logit" if contrast is None else "logit_difference",
            model_value=_explained(own[k], own[k].log_softmax(-1), target, contrast, request.logprob)
            if capture.increments
            else None,
        )
        scores = own[k]  # a 16-bit model's own logits differ from ``rows`` (its float32 readout)
        chances = own[k].softmax(-1) if capture.increments else probs[k]

        def score(token_id: int, scores=scores, chances=chances) -> TokenScore:
            token = inputs.decode_token(tokenizer, token_id)
            return TokenScore(token_id, token, float(scores[token_id]), float(chances[token_id]))

        fine = _finer(
            loaded,
            None if heads is None else heads[k],
            internals,
            d,
            readout.at(k),
            splits,
            scopes,
            request.neurons,
            k,
            position,
            shift,
            len(ids),
        )
        steps.append(
            LogitAttribution(
                model=loaded.ref,
                prompt=text,
                chat=request.chat,
                token_ids=tuple(ids[: position + 1]),
                tokens=tuple(tokens[: position + 1]),
                position=position,
                target=score(target),
                logprob=float(chances[target].log()) if capture.increments else float(log_probs[k, target]),
                top=tuple(score(int(i)) for i in inputs.top_tokens(scores, limit, request.top_k)),
                decomposition=d,
                dtype=dtype,
                device=device,
                contrast=None if contrast is None or request.logprob else score(contrast),
                virtual_tokens=shift,
                **fine,
            )
        )
    step_logprobs = torch.tensor([float(log_probs[k, t]) for k, t in enumerate(answer)], dtype=torch.float64)
    split = SequenceSplit(logprob_parts.names, logprob_parts.values.cpu(), step_logprobs)
    return tuple(steps), split


def _explained(
    row: torch.Tensor, log_probs: torch.Tensor, target: int, contrast: int | None, logprob: bool
) -> float:
    """The explained number from a float64 row of logits (and its log-softmax)."""
    if logprob:
        return float(log_probs[target])
    return float(row[target] - (row[contrast] if contrast is not None else 0.0))


def _vectors(
    model: nn.Module, spec: ArchitectureSpec, names: Sequence[str], writes: torch.Tensor
) -> tuple[tuple[str, ...], torch.Tensor]:
    """The component vectors ``(component, step, d_model)``: each write, with a layer's output bias split off
    as its own component (as :func:`~tokenlens.attribution.direct.decompose` does)."""
    biases = layer_bias_terms(model, spec)
    out_names: list[str] = []
    vectors: list[torch.Tensor] = []
    for name, write in zip(names, writes, strict=True):
        bias = biases.get(name)
        if bias is None:
            out_names.append(name)
            vectors.append(write)
        else:
            bias = bias.to(write.device, torch.float32)
            out_names += [name, f"{name}.bias"]
            vectors += [write - bias, bias.expand_as(write)]
    return tuple(out_names), torch.stack(vectors)


@dataclasses.dataclass(frozen=True)
class _Readouts:
    """Every step's readout: ``directions`` ``(step, d_model)``, ``scales`` ``(step,)``, ``biases``."""

    directions: torch.Tensor
    scales: torch.Tensor
    biases: list[float] | None

    def at(self, k: int) -> Readout:
        return Readout(
            self.directions[k], float(self.scales[k]), None if self.biases is None else self.biases[k]
        )


@dataclasses.dataclass(frozen=True)
class _Parts:
    names: tuple[str, ...]
    values: torch.Tensor  # (step, component) float32


def _readouts(
    model: nn.Module,
    spec: ArchitectureSpec,
    finals: torch.Tensor,
    targets: torch.Tensor,
    contrast: int | None,
    probs: torch.Tensor | None,
    chunk: int = 8192,
) -> _Readouts:
    """The readout of every step at once (see the module text); a head that is not a plain linear is read per
    step through :func:`~tokenlens.attribution.readout.make_readout`."""
    head = spec.module(model, spec.head)
    g = norm_weight(model, spec)
    device = g.device
    h = finals.to(device, torch.float32)
    scales = torch.stack([torch.rsqrt(row.pow(2).mean() + final_norm_eps(model, spec)) for row in h])
    if type(head) is not nn.Linear:
        per_step = [
            make_readout(model, spec, finals[k], int(t), contrast, None if probs is None else probs[k])
            for k, t in enumerate(targets.tolist())
        ]
        return _Readouts(
            torch.stack([r.direction for r in per_step]),
            torch.tensor([r.scale for r in per_step]),
            None if per_step[0].bias is None else [r.bias for r in per_step],
        )
    weight = head.weight.detach()
    rows = targets.to(weight.device)
    n = len(targets)
    pick = None
    if probs is None:
        u = weight[rows].to(device, torch.float32)
        if contrast is not None:
            u = u - weight[contrast].to(device, torch.float32)
    else:
        pick = -probs.to(device, torch.float64)  # (step, vocab): e_t − p, in float64
        pick[torch.arange(n), targets.to(device)] += 1.0
        total = torch.zeros(n, weight.shape[1], device=device, dtype=torch.float64)
        for start in range(0, weight.shape[0], chunk):
            block = weight[start : start + chunk].to(device, torch.float32)  # (chunk, d_model)
            total += (pick[:, start : start + chunk].to(torch.float32) @ block).double()
        u = total.to(torch.float32)
    biases = None
    if head.bias is not None:
        b = head.bias.detach().to(device, torch.float64)
        if pick is not None:
            biases = (pick @ b).tolist()
        else:
            values = b[targets.to(device)] - (b[contrast] if contrast is not None else 0.0)
            biases = values.tolist()
    return _Readouts((u * g).detach(), scales.float(), biases)


def _contributions(
    vectors: torch.Tensor,
    readout: _Readouts,
    names: tuple[str, ...],
    probs: torch.Tensor | None,
    log_probs: torch.Tensor | None,
) -> _Parts:
    """Every step's split: ``vectors`` ``(component, step, d)`` read out, then ``logit_bias``, ``entropy``."""
    directions = readout.directions
    values = torch.einsum("csd,sd->sc", vectors.to(directions.device), directions)  # (step, component)
    values = values * readout.scales.to(directions.device)[:, None]
    out_names = list(names)
    extra = []
    if readout.biases is not None:
        out_names.append("logit_bias")
        extra.append(torch.tensor(readout.biases, dtype=torch.float32))
    if probs is not None:
        out_names.append("entropy")  # −H(p) at each step
        extra.append((probs * log_probs).nan_to_num().sum(-1).to(torch.float32))
    if extra:
        values = torch.cat([values.cpu(), torch.stack(extra, 1)], 1)
    return _Parts(tuple(out_names), values.cpu())


def _all_heads(
    model: nn.Module, spec: ArchitectureSpec, internals: Any, readout: _Readouts
) -> torch.Tensor | None:
    """``(step, layer, head)`` float32 every step's head terms at once, when every ``o_proj`` is a plain
    linear (``W_Oᵀ (u ⊙ g)`` for all steps is one product per layer); ``None`` otherwise (then
    :func:`~tokenlens.attribution.finer.head_split` reads each wrapped module per step)."""
    layers = spec.layer_list(model)
    if any(type(layer.get_submodule(spec.attn_out)) is not nn.Linear for layer in layers):
        return None
    out = []
    for layer, store in zip(layers, internals.layers, strict=True):
        weight = layer.get_submodule(spec.attn_out).weight.detach()  # (d_model, heads * head_dim)
        r = readout.directions.to(weight.device, torch.float32) @ weight.to(torch.float32)  # (step, h * hd)
        z = store.z[0].to(r.device, torch.float32)  # (step, heads * head_dim)
        head_dim = layer.get_submodule(spec.attn).head_dim
        terms = (z * r).view(z.shape[0], -1, head_dim).sum(-1)  # (step, heads)
        out.append(terms.cpu() * readout.scales.cpu()[:, None])
    return torch.stack(out, 1)


def _finer(
    loaded: LoadedModel,
    heads: torch.Tensor | None,
    internals: Any,
    d: Decomposition,
    readout: Readout,
    splits: frozenset[str],
    scopes: tuple[tuple[int, int | None], ...],
    neurons: int,
    k: int,
    position: int,
    shift: int,
    length: int,
) -> dict:
    """The finer splits of step ``k`` (at ``position``), as keyword arguments of ``LogitAttribution``; source
    splits cut to the step's own prefix (virtual positions, then the tokens up to ``position``); ``heads``:
    the step's ``(layer, head)`` terms computed for all steps at once, if they were."""
    if not splits:
        return {}
    model, spec = loaded.model, loaded.spec
    parents = d.as_dict()
    layers = internals.layers
    fine: dict = {}
    if "heads" in splits and heads is not None:
        residual = [parents[f"L{i}.attn"] - float(row.double().sum()) for i, row in enumerate(heads)]
        fine["heads"] = HeadSplit(contributions=heads, residual=torch.tensor(residual, dtype=torch.float32))
    elif "heads" in splits:
        fine["heads"] = finer.head_split(model, spec, layers, readout, parents, 0, k)
    if "neurons" in splits:
        fine["neurons"] = finer.neuron_split(model, spec, layers, readout, parents, 0, k, neurons)
    if "experts" in splits:
        fine["experts"] = finer.expert_split(model, spec, layers, readout, parents, 0, k)
    key_mask = torch.ones(shift + length, dtype=torch.long)
    end = shift + position + 1
    per_layer = {
        layer: finer.layer_sources(
            model,
            spec,
            layers,
            readout,
            layer_index=layer,
            position=position + shift,
            batch_index=0,
            k=k,
            key_mask=key_mask,
        )
        for layer in dict.fromkeys(layer for layer, _ in scopes)
    }
    fine["sources"] = tuple(
        dataclasses.replace(split, contributions=split.contributions[:end], pattern=split.pattern[:, :end])
        for split in (finer.source_split(per_layer[layer], fine["heads"], head) for layer, head in scopes)
    )
    return fine

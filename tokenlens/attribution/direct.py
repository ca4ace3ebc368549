"""Direct logit attribution: split a token's logit exactly over the residual-stream writes.

The final RMSNorm makes the logits a function of the whole stream, ``logits = W_U · (g ⊙ h_L · s) + b``,
but with the scale ``s = 1/sqrt(mean(h_L²) + ε)`` read off the real forward pass, the map from the stream to
one token's logit is linear, and ``h_L`` is the sum of the writes. So::

    logit_t = Σ_c  W_U[t] · (g ⊙ c) · s  +  b[t]

exactly, one term per write ``c``. A bias vector that a linear adds to the stream (an ``o_proj`` or
``down_proj`` bias) is split off its layer's write as a constant term of its own, and a head bias is the
``logit_bias`` term. All of it is computed in float32 whatever the model's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from tokenlens.attribution import inputs
from tokenlens.attribution.result import Decomposition, LogitAttribution, TokenScore
from tokenlens.capture.residual import ResidualCapture, capture_residual, component_names
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import ArchitectureSpec, bare_model, linear_bias, spec_for_model


def run_with_capture(
    model: nn.Module, spec: ArchitectureSpec, input_ids: torch.Tensor, positions: torch.Tensor
) -> tuple[ResidualCapture, torch.Tensor]:
    """One real forward pass of ``input_ids`` ``(batch, seq)``, capturing the stream at ``positions``.

    Returns:
        The captured writes at ``positions`` and the logits there, ``(batch, len(positions), vocab)``.
    """
    _refuse_virtual_positions(model)
    device = spec.module(model, spec.embed).weight.device
    input_ids = input_ids.to(device)
    with torch.no_grad(), capture_residual(model, spec, positions) as recorder:
        output = model(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            use_cache=False,
            logits_to_keep=positions.to(device),
        )
    return recorder.result(component_names(spec, model)), output.logits.detach()


def _refuse_virtual_positions(model: nn.Module) -> None:
    """Prompt and prefix tuning add virtual positions the per-position split does not model yet."""
    config = getattr(model, "active_peft_config", None)
    if config is not None and getattr(config, "is_prompt_learning", False):
        raise TokenlensError(
            f"{config.peft_type} adapters add virtual positions, which attribution does not handle yet; "
            "use a LoRA / IA3 adapter"
        )


def _readout(
    model: nn.Module, spec: ArchitectureSpec
) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None]:
    """The head weight ``(vocab, d)``, final-norm weight ``(d,)``, its epsilon and the head bias, if any."""
    head = spec.module(model, spec.head)
    head = head.get_base_layer() if hasattr(head, "get_base_layer") else head
    norm = spec.module(model, spec.final_norm)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if eps is None:
        raise ValueError(f"final norm {type(norm).__name__} exposes no epsilon")
    return head.weight, norm.weight, float(eps), getattr(head, "bias", None)


def _layer_bias_terms(model: nn.Module, spec: ArchitectureSpec) -> dict[str, torch.Tensor]:
    """Constant bias vectors the layers' output linears add to the stream, keyed by their layer's write."""
    terms = {}
    for i in range(len(spec.layer_list(model))):
        for part, path in (("attn", spec.attn_out), ("mlp", spec.mlp_out)):
            if path is None:
                continue
            bias = linear_bias(model, f"{spec.layers}.{i}.{path}")
            if bias is not None:
                terms[f"L{i}.{part}"] = bias.detach()
    return terms


@torch.no_grad()
def decompose(
    model: nn.Module,
    capture: ResidualCapture,
    logits: torch.Tensor,
    *,
    position: int,
    target_id: int,
    batch_index: int = 0,
    spec: ArchitectureSpec | None = None,
) -> Decomposition:
    """Split ``target_id``'s logit at ``position`` over the captured writes (no forward pass here).

    Args:
        model: The model the capture came from (its head, final norm and biases are read).
        capture: Writes captured by :func:`run_with_capture`; must include ``position``.
        logits: ``(batch, len(capture.positions), vocab)`` the model's logits from the same pass.
        position: Non-negative sequence position to explain.
        target_id: Token whose logit is split.
        batch_index: Which prompt of the batch.
        spec: The model's spec (looked up when omitted).
    """
    spec = spec or spec_for_model(model)
    matches = (capture.positions == position).nonzero()
    if len(matches) != 1:
        raise ValueError(f"position {position} was not captured (kept {capture.positions.tolist()})")
    k = int(matches[0, 0])
    w_u, g, eps, head_bias = _readout(model, spec)
    device = w_u.device
    writes = capture.writes[:, batch_index, k].to(device, torch.float32)  # (component, d)
    h_final = capture.final_input[batch_index, k].to(device, torch.float32)  # (d,)
    scale = torch.rsqrt(h_final.pow(2).mean() + eps)
    stream_error = float((writes.sum(0) - h_final).abs().max())
    if not (torch.isfinite(writes).all() and torch.isfinite(logits[batch_index, k]).all()):
        raise TokenlensError(
            f"the model produced NaN or infinite values at position {position} (overflow in a low-precision "
            "dtype? try --dtype float32; or the weights are corrupt)"
        )

    names: list[str] = []
    vectors: list[torch.Tensor] = []
    biases = _layer_bias_terms(model, spec)
    for name, write in zip(capture.names, writes, strict=False):
        bias = biases.get(name)
        if bias is None:
            names.append(name)
            vectors.append(write)
        else:
            bias = bias.to(device, torch.float32)
            names += [name, f"{name}.bias"]
            vectors += [write - bias, bias]
    readout = w_u[target_id].to(torch.float32) * g.to(device, torch.float32)  # (d,) u ⊙ g
    contributions = (torch.stack(vectors) @ readout) * scale  # (component,)
    if head_bias is not None:
        names.append("logit_bias")
        contributions = torch.cat([contributions, head_bias[target_id].to(device, torch.float32).reshape(1)])
    return Decomposition(
        names=tuple(names),
        contributions=contributions.cpu(),
        target_id=int(target_id),
        position=int(position),
        logit=float(logits[batch_index, k, target_id].float()),
        scale=float(scale),
        stream_error=stream_error,
    )


def decompose_logit(
    model: nn.Module, input_ids: torch.Tensor, *, target_id: int, position: int = -1
) -> Decomposition:
    """Run ``input_ids`` ``(seq,)`` or ``(1, seq)`` and split ``target_id``'s logit at ``position``.

    The low-level entry point for code that already has ids (no tokenizer involved); see :func:`attribute`
    for prompts and named targets.
    """
    spec = spec_for_model(model)
    input_ids = input_ids.reshape(1, -1)
    position = inputs.resolve_position(position, input_ids.shape[1])
    capture, logits = run_with_capture(model, spec, input_ids, torch.tensor([position]))
    return decompose(model, capture, logits, position=position, target_id=target_id, spec=spec)


def attribute(
    loaded: LoadedModel,
    prompt: str,
    *,
    target: str | None = None,
    target_id: int | None = None,
    first_token: bool = False,
    position: int = -1,
    chat: bool = False,
    top_k: int = 10,
) -> LogitAttribution:
    """Explain the model's next-token logit for ``prompt``, component by component.

    Args:
        loaded: A model from :func:`tokenlens.load`.
        prompt: Text to predict from (used as is unless ``chat``).
        target: The token to explain, as decoded text (``" Paris"``); default: the model's top-1 token
            among ids the tokenizer can decode.
        target_id: The token to explain, by id (instead of ``target``).
        first_token: Accept a ``target`` of several tokens and explain its first one.
        position: Which prompt position's prediction to explain; negative counts from the end.
        chat: Wrap the prompt as a user turn with the model's chat template.
        top_k: How many top alternatives to report.

    Raises:
        TokenlensError: For any bad input (empty or over-long prompt, bad position, unknown or multi-token
            target); the message is one line.
    """
    if target is not None and target_id is not None:
        raise TokenlensError("give the target as text or as an id, not both")
    model, tokenizer, spec = loaded.model, loaded.tokenizer, loaded.spec
    config = bare_model(model).config
    ids = inputs.encode_prompt(
        tokenizer, prompt, chat=chat, max_positions=getattr(config, "max_position_embeddings", None)
    )
    pos = inputs.resolve_position(position, len(ids))
    vocab_size = spec.module(model, spec.head).weight.shape[0]
    if target_id is not None:
        target_id = inputs.check_target_id(tokenizer, target_id, vocab_size)
    elif target is not None:
        target_id = inputs.target_from_text(tokenizer, target, first_token=first_token)

    capture, logits = run_with_capture(model, spec, torch.tensor([ids]), torch.tensor([pos]))
    row = logits[0, 0].float()  # (vocab,)
    probs = row.softmax(-1)
    limit = inputs.decodable_vocab(tokenizer, vocab_size)
    top_ids = inputs.top_tokens(row, limit, top_k).tolist()
    if target_id is None:
        target_id = top_ids[0]

    def score(token_id: int) -> TokenScore:
        token = inputs.decode_token(tokenizer, token_id)
        return TokenScore(token_id, token, float(row[token_id]), float(probs[token_id]))

    return LogitAttribution(
        model=loaded.ref,
        prompt=prompt,
        chat=chat,
        token_ids=tuple(ids),
        tokens=tuple(inputs.decode_token(tokenizer, i) for i in ids),
        position=pos,
        target=score(target_id),
        logprob=float(row.log_softmax(-1)[target_id]),
        top=tuple(score(i) for i in top_ids),
        decomposition=decompose(model, capture, logits, position=pos, target_id=target_id, spec=spec),
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        device=str(next(model.parameters()).device),
    )

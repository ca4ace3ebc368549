"""The logit lens: the model's next-token guess after every layer.

The residual stream after the embedding and after each layer is the running sum of the writes so far::

    h_0 = embed,    h_{l+1} = h_l + attn_l + mlp_l,    h_L = what the final norm receives

Decoding an intermediate ``h_d`` exactly as the model decodes ``h_L`` — final RMSNorm with the depth's *own*
scale ``s_d = 1/sqrt(mean(h_d²) + ε)`` and weight ``g``, then the head (and its bias, if any) — gives the
model's "current guess" at that depth. The last depth reproduces the model's own logits. Everything is read
off one captured forward pass (no extra passes) and computed in float32; only one depth's
``(pos, vocab)`` logits exist at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tokenlens.attribution import inputs
from tokenlens.attribution.direct import run_with_capture
from tokenlens.attribution.readout import final_norm_eps
from tokenlens.attribution.result import LogitLens
from tokenlens.capture.residual import ResidualCapture
from tokenlens.errors import TokenlensError, option
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import ArchitectureSpec, bare_model


@dataclass(frozen=True)
class LensTensors:
    """The numbers of a logit lens over ``depth`` depths and ``pos`` kept positions (float32 on CPU).

    Attributes:
        top_ids: ``(depth, pos, k)`` the top-k token ids among decodable ids, best first.
        top_probs: ``(depth, pos, k)`` their probabilities (softmax over the head's full vocabulary).
        target_logit: ``(depth, pos)`` the target's logit.
        target_prob: ``(depth, pos)`` the target's probability (softmax over the full vocabulary).
        target_rank: ``(depth, pos)`` how many decodable ids have a strictly higher logit (0 = top-1).
        scale: ``(depth, pos)`` the final-norm scale ``1/sqrt(mean(h_d²) + ε)`` of each depth's stream.
        stream_error: ``max |h_L − final-norm input|``: how far the accumulated writes are from the stream
            the final norm actually received (0 up to rounding).
    """

    top_ids: torch.Tensor
    top_probs: torch.Tensor
    target_logit: torch.Tensor
    target_prob: torch.Tensor
    target_rank: torch.Tensor
    scale: torch.Tensor
    stream_error: float


def depth_names(capture: ResidualCapture) -> tuple[str, ...]:
    """``("embed", "L0", …)`` for a capture whose writes are ``embed, L0.attn, L0.mlp, …``.

    Raises:
        ValueError: The capture's components are not in that order.
    """
    n_layers = (len(capture.names) - 1) // 2
    expected = ("embed",) + tuple(f"L{i}.{part}" for i in range(n_layers) for part in ("attn", "mlp"))
    if capture.names != expected:
        raise ValueError(f"expected components {expected[:3]}…, got {capture.names[:3]}…")
    return ("embed",) + tuple(f"L{i}" for i in range(n_layers))


def accumulated_stream(capture: ResidualCapture, batch_index: int = 0) -> torch.Tensor:
    """``(depth, pos, d_model)`` float32 residual stream ``h_0 … h_L``: running sums of the captured writes.

    Each layer adds its attention write, then its MLP write, in the model's own order.
    """
    depth_names(capture)
    writes = capture.writes[:, batch_index].to(torch.float32)  # (component, pos, d)
    stream = [writes[0]]
    for i in range(1, len(writes), 2):
        stream.append(stream[-1] + writes[i] + writes[i + 1])
    return torch.stack(stream)  # (depth, pos, d)


@torch.no_grad()
def compute_logit_lens(
    model: nn.Module,
    spec: ArchitectureSpec,
    capture: ResidualCapture,
    *,
    target_id: int,
    decodable: int,
    k: int = 5,
    batch_index: int = 0,
) -> LensTensors:
    """Decode every depth of a captured stream through the final norm (own scale) and the head.

    Pure maths on an existing capture: no forward pass. One depth's ``(pos, vocab)`` logits are held at a
    time, never ``(depth, pos, vocab)``.

    Args:
        model: The model the capture came from (its final-norm weight, epsilon and head are read).
        spec: Its spec.
        capture: Writes from :func:`~tokenlens.attribution.direct.run_with_capture`.
        target_id: The tracked token; must be decodable.
        decodable: How many leading head rows the tokenizer can decode (top-k and ranks use only those).
        k: How many top tokens to keep per depth and position (at most ``decodable``).
        batch_index: Which prompt of the captured batch.

    Raises:
        ValueError: ``decodable``, ``target_id`` or ``k`` is out of range, or the capture's components are
            not the standard ``embed, L0.attn, L0.mlp, …``.
        TokenlensError: The model produced NaN or infinite values.
    """
    norm_weight = spec.module(model, spec.final_norm).weight
    w_t, bias = _head_map(spec.module(model, spec.head), norm_weight)
    vocab, device = w_t.shape[1], w_t.device
    if not 0 < decodable <= vocab or not 0 <= target_id < decodable or k < 1:
        raise ValueError(f"bad lens arguments: decodable={decodable}, target_id={target_id}, k={k}")
    k = min(k, decodable)
    g, eps = norm_weight.detach().to(device, torch.float32), final_norm_eps(model, spec)  # (d,), ε
    stream = accumulated_stream(capture, batch_index).to(device)  # (depth, pos, d)
    if not torch.isfinite(stream).all():
        raise TokenlensError(
            "the model produced NaN or infinite values in the residual stream (overflow in a low-precision "
            f"dtype? try {option('dtype', 'float32')})"
        )

    per_depth = [_decode_depth(h, g, eps, w_t, bias, target_id, decodable, k) for h in stream]
    columns = zip(*per_depth, strict=True)  # each: one field over the depths
    ids, probs, logit, prob, rank, scale = (torch.stack(column).cpu() for column in columns)
    final_input = capture.final_input[batch_index].to(device, torch.float32)  # (pos, d)
    return LensTensors(ids, probs, logit, prob, rank, scale, float((stream[-1] - final_input).abs().max()))


def _head_map(head: nn.Module, norm_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The head as a float32 affine map ``x ↦ x @ w_t + bias``: ``w_t`` ``(d, vocab)``, ``bias`` ``(vocab,)``.

    A plain linear head is read directly (``bias`` is ``None`` when it has none). A wrapped head (a PEFT LoRA
    or trained copy, a quantised linear) is probed through its own forward at 0 and at the unit vectors, so
    whatever it adds to a base weight is included without reading its internals.
    """
    if type(head) is nn.Linear:
        bias = None if head.bias is None else head.bias.detach().float()
        return head.weight.detach().float().T, bias
    d = norm_weight.shape[0]
    device = next(head.parameters()).device
    probe = torch.cat([torch.zeros(1, d), torch.eye(d)]).to(device, norm_weight.dtype)  # (1 + d, d)
    out = head(probe).detach().float()  # (1 + d, vocab)
    w_t = out[1:]
    w_t -= out[0]  # (d, vocab) the linear part
    return w_t, out[0]


def _decode_depth(
    h: torch.Tensor,
    g: torch.Tensor,
    eps: float,
    w_t: torch.Tensor,
    bias: torch.Tensor | None,
    target_id: int,
    decodable: int,
    k: int,
) -> tuple[torch.Tensor, ...]:
    """One depth ``h`` ``(pos, d)`` through the final norm with its own scale and the head.

    Returns top ids and probabilities ``(pos, k)``, then the target's logit, probability and rank and the
    norm scale, each ``(pos,)``. Only this depth's ``(pos, vocab)`` logits are allocated.
    """
    scale = torch.rsqrt(h.pow(2).mean(-1) + eps)  # (pos,)
    logits = (g * (h * scale[:, None])) @ w_t  # (pos, vocab)
    if bias is not None:
        logits += bias
    log_norm = logits.logsumexp(-1)  # (pos,) softmax normaliser over the full vocabulary
    top = logits[:, :decodable].topk(k)  # (pos, k)
    target = logits[:, target_id].clone()  # (pos,) a copy: a view would keep all of `logits` alive
    rank = (logits[:, :decodable] > target[:, None]).sum(-1)  # (pos,)
    return top.indices, (top.values - log_norm[:, None]).exp(), target, (target - log_norm).exp(), rank, scale


def _resolve_positions(positions: Sequence[int] | None, seq_len: int) -> list[int]:
    """Sorted, distinct, non-negative positions (all of them by default)."""
    if positions is None:
        return list(range(seq_len))
    if len(positions) == 0:
        raise TokenlensError("no positions given: name at least one prompt position (or leave it unset)")
    return sorted({inputs.resolve_position(int(p), seq_len) for p in positions})


def _keep_positions(capture: ResidualCapture, keep: list[int]) -> ResidualCapture:
    """The capture restricted to the positions in ``keep`` (all of which it holds)."""
    index = torch.tensor([capture.positions.tolist().index(p) for p in keep])
    final_index = index.to(capture.final_input.device)
    return ResidualCapture(
        capture.names,
        capture.writes[:, :, final_index],  # (component, batch, kept, d)
        capture.final_input[:, final_index],  # (batch, kept, d)
        capture.positions[index],
    )


def logit_lens(
    loaded: LoadedModel,
    prompt: str,
    *,
    target: str | None = None,
    target_id: int | None = None,
    first_token: bool = False,
    positions: Sequence[int] | None = None,
    chat: bool = False,
    k: int = 5,
) -> LogitLens:
    """Run ``prompt`` once and decode the stream after the embedding and after every layer.

    Args:
        loaded: A model from :func:`tokenlens.load`.
        prompt: Text to predict from (used as is unless ``chat``).
        target: The token to track, as decoded text (``" Paris"``); default: the model's top-1 token at the
            last position among ids the tokenizer can decode.
        target_id: The token to track, by id (instead of ``target``).
        first_token: Accept a ``target`` of several tokens and track its first one.
        positions: Prompt positions to show (negative counts from the end); default: all of them.
        chat: Wrap the prompt as a user turn with the model's chat template.
        k: How many top tokens to keep per depth and position.

    Raises:
        TokenlensError: For any bad input (empty or over-long prompt, unknown position, unknown or
            multi-token target, ``k`` < 1); the message is one line.
    """
    if target is not None and target_id is not None:
        raise TokenlensError("give the target as text or as an id, not both")
    if k < 1:
        raise TokenlensError(f"k must be at least 1 (got {k})")
    model, tokenizer, spec = loaded.model, loaded.tokenizer, loaded.spec
    config = bare_model(model).config
    ids = inputs.encode_prompt(
        tokenizer, prompt, chat=chat, max_positions=getattr(config, "max_position_embeddings", None)
    )
    keep = _resolve_positions(positions, len(ids))
    vocab_size = spec.module(model, spec.head).weight.shape[0]
    decodable = inputs.decodable_vocab(tokenizer, vocab_size)
    if target_id is not None:
        target_id = inputs.check_target_id(tokenizer, target_id, vocab_size)
    elif target is not None:
        target_id = inputs.target_from_text(tokenizer, target, first_token=first_token)

    last = len(ids) - 1
    captured = keep if target_id is not None or last in keep else keep + [last]
    capture, logits = run_with_capture(model, spec, torch.tensor([ids]), torch.tensor(captured))
    if target_id is None:  # the model's own top-1 at the last position
        target_id = int(inputs.top_tokens(logits[0, captured.index(last)], decodable, 1)[0])
    del logits  # (1, kept, vocab): only needed for the default target
    if captured != keep:
        capture = _keep_positions(capture, keep)
    lens = compute_logit_lens(model, spec, capture, target_id=target_id, decodable=decodable, k=k)

    names: dict[int, str] = {}

    def decode(token_id: int) -> str:
        if token_id not in names:
            names[token_id] = inputs.decode_token(tokenizer, token_id)
        return names[token_id]

    return LogitLens(
        model=loaded.ref,
        prompt=prompt,
        chat=chat,
        token_ids=tuple(ids),
        tokens=tuple(decode(i) for i in ids),
        depths=depth_names(capture),
        positions=capture.positions.clone(),
        target_id=target_id,
        target=decode(target_id),
        top_ids=lens.top_ids,
        top_probs=lens.top_probs,
        top_tokens=tuple(
            tuple(tuple(decode(i) for i in row) for row in depth) for depth in lens.top_ids.tolist()
        ),
        target_logit=lens.target_logit,
        target_prob=lens.target_prob,
        target_rank=lens.target_rank,
        scale=lens.scale,
        stream_error=lens.stream_error,
    )

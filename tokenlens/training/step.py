"""One optimizer step, and the eval loss: the trainer's arithmetic.

A step's loss is the mean over its batch's loss tokens (plus the preserve term, when there is one). In the
plain case (one process, ``grad_accum`` 1) it is HF's own mean. Otherwise the batch is run in parts — each
process's share of it (data parallel) and, with gradient accumulation, ``batch_size`` examples at a time —
and every part's loss is its sum over its loss tokens divided by the **whole batch's** count of loss tokens
(HF's ``num_items_in_batch``). The parts' gradients then add up to the gradient of the whole batch's mean,
whatever the parts' token counts: parts are weighted by their loss tokens, not equally (a part with few
loss tokens counts little), so accumulating ``K`` batches is the update of one ``K``-times larger batch (up
to float summation order). The preserve term is added once per step.
"""

from __future__ import annotations

import math

import torch

from tokenlens.errors import TokenlensError, first_line
from tokenlens.models.specs import virtual_tokens
from tokenlens.training.data import IGNORE, Example, TrainingData
from tokenlens.training.preserve import PreserveTerm


class Diverged(TokenlensError):
    """A step produced a non-finite loss, gradient or weight; the run stopped and wrote no output."""


def step(
    model,
    optimizer,
    data: TrainingData,
    indices: list[int],
    pad: int,
    device,
    autocast=False,
    parallel=None,
    preserve: PreserveTerm | None = None,
    micro: int | None = None,
) -> float:
    """One AdamW step on the batch ``indices``; returns its loss (mean over the batch's loss tokens, plus
    the preserve term ``preserve(model)`` when given, single process only).

    Raises :class:`Diverged` (without applying the update) when the loss or a gradient is not finite, and
    when the update made a trained weight non-finite (every process decides alike: the loss is summed over
    processes and the gradients are all-reduced).

    ``micro``: run the batch ``micro`` examples at a time (gradient accumulation); ``None``: all at once.
    Data parallel (``parallel``), this process runs its share ``part[rank::P]`` of each part, scaled by
    ``P`` because DDP averages gradients; a process with an empty share runs one example with weight 0 so
    the gradient all-reduce still meets.
    """
    examples = [data.examples[i] for i in indices]
    optimizer.zero_grad(set_to_none=True)
    if parallel is None and micro is None:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**pad_batch(examples, pad, device)).loss
            loss = loss if preserve is None else loss + preserve(model)
        loss.backward()
        value = float(loss.detach())
    else:
        rank, processes = (0, 1) if parallel is None else (parallel.rank, parallel.processes)
        items = loss_tokens(model, examples)
        size = micro or len(examples)
        value = 0.0
        for start in range(0, len(examples), size):
            part = examples[start : start + size]
            share = part[rank::processes]
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
                loss = model(**pad_batch(share or part[:1], pad, device), num_items_in_batch=items).loss
                loss = loss if share else loss * 0
                if preserve is not None and start == 0:
                    loss = loss + preserve(model)
            (loss * processes).backward()
            value += float(loss.detach())
        value = value if parallel is None else parallel.total(value)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not math.isfinite(value):
        raise Diverged(f"the loss is {value}")
    if not finite([p.grad for p in params if p.grad is not None]):
        raise Diverged("a gradient is not finite")
    try:
        optimizer.step()
    except RuntimeError as exc:  # an lr too large for the weights' dtype (1e39 in float32)
        if "without overflow" not in str(exc):
            raise
        raise Diverged(f"the update overflows the weights' dtype ({first_line(exc)})") from exc
    if not finite(params):
        raise Diverged("the update made a trained weight non-finite")
    return value


@torch.no_grad()
def eval_loss(
    model, examples: tuple[Example, ...], batch_size: int, pad: int, device, autocast=False
) -> float:
    """The mean loss over every loss token of ``examples`` (run ``batch_size`` at a time, in eval mode: no
    dropout, no RNG drawn); the model's training mode is restored afterwards."""
    training = model.training
    model.eval()
    try:
        items = loss_tokens(model, examples)
        total = 0.0
        for start in range(0, len(examples), batch_size):
            part = list(examples[start : start + batch_size])
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
                total += float(model(**pad_batch(part, pad, device), num_items_in_batch=items).loss)
        return total
    finally:
        model.train(training)


def loss_tokens(model, examples) -> int:
    """The tokens that carry loss in ``examples`` (labels shift by one: the first token is no target, unless
    the model puts virtual tokens before it)."""
    first = 0 if virtual_tokens(model) else 1
    return sum(sum(1 for label in e.labels[first:] if label != IGNORE) for e in examples)


def finite(tensors: list[torch.Tensor]) -> bool:
    """Every element of every tensor is finite (one device synchronisation per device, not per tensor)."""
    flags: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in tensors:
        flags.setdefault(tensor.device, []).append(torch.isfinite(tensor).all())
    return all(bool(torch.stack(group).all()) for group in flags.values())


def pad_batch(examples: list, pad: int, device) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``labels``/``attention_mask``, each (batch, seq), on ``device``."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def float_dtype(model) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (quantised weights are not floating)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

"""What a run visits, step by step: its batches, its learning rates and its held-out eval examples.

All three are pure functions of the settings and the seed, so a resumed run continues exactly where the
interrupted one stopped.

* **Batches** (:func:`schedule`): epoch ``e`` visits the examples in ``randperm(n, seed + e)`` order, cut
  into batches of ``batch_size · grad_accum`` examples; step ``k`` is the ``k``-th batch of that schedule.
* **Learning rates** (:func:`lr_factor`, :func:`scheduler`): the peak learning rate times a factor of the
  step, as transformers' ``get_{constant,linear,cosine}_schedule_with_warmup``: during ``warmup`` steps it
  rises linearly from 0 (step ``k`` uses ``k / warmup``), then stays at 1 (``constant``), falls linearly to 0
  at the end (``linear``) or along half a cosine to 0 (``cosine``). It is a ``torch.optim.lr_scheduler.
  LambdaLR`` stepped once per optimizer step; its state is part of the checkpoint.
* **Held-out examples** (:func:`hold_out`): ``eval_fraction`` of the training examples (rounded, at least
  one, never all), chosen with a generator seeded from the seed, are taken out of the training data.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from tokenlens.errors import TokenlensError, option
from tokenlens.training.data import IGNORE, Example, TrainingData
from tokenlens.training.settings import SEED_LIMIT

HOLD_OUT_STREAM = 0x9E3779B97F4A7C15
"""Added to the seed for the held-out choice, so it is not the first epoch's order."""


def schedule(n_examples: int, batch_size: int, total_steps: int, seed: int) -> list[list[int]]:
    """The batches of a run: ``total_steps`` lists of example indices (a pure function of the seed)."""
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total_steps:
        generator = torch.Generator().manual_seed((seed + epoch) % SEED_LIMIT)  # the largest seed wraps
        order = torch.randperm(n_examples, generator=generator).tolist()
        batches += [order[i : i + batch_size] for i in range(0, n_examples, batch_size)]
        epoch += 1
    return batches[:total_steps]


def warmup_of(warmup_steps: int | None, warmup_ratio: float | None, total: int) -> int:
    """The warmup in steps: as given, or ``ceil(ratio · total)``, or 0."""
    if warmup_steps is not None:
        return warmup_steps
    return math.ceil(warmup_ratio * total) if warmup_ratio is not None else 0


def lr_factor(kind: str, warmup: int, total: int, step: int) -> float:
    """The learning rate of 0-based ``step`` as a fraction of the peak (see the module docstring)."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int):
    """A ``LambdaLR`` on ``optimizer`` following :func:`lr_factor` (call its ``step()`` after each step)."""

    def factor(step: int) -> float:
        return lr_factor(kind, warmup, total, step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def hold_out(data: TrainingData, fraction: float, seed: int) -> tuple[TrainingData, tuple[Example, ...]]:
    """Split ``data`` into training data without the held-out examples, and the held-out examples.

    Raises:
        TokenlensError: The fraction leaves no example to train on or none to evaluate.
    """
    n = len(data.examples)
    k = round(fraction * n)
    if not 1 <= k < n:
        raise TokenlensError(
            f"{option('eval_fraction', fraction)} of {n} examples holds out {k}: at least one must be held "
            "out and one left to train on"
        )
    generator = torch.Generator().manual_seed((seed + HOLD_OUT_STREAM) % SEED_LIMIT)
    held = set(torch.randperm(n, generator=generator)[:k].tolist())
    kept = tuple(e for i, e in enumerate(data.examples) if i not in held)
    evaluated = tuple(e for i, e in enumerate(data.examples) if i in held)
    trained = replace(
        data,
        examples=kept,
        n_tokens=sum(len(e.input_ids) for e in kept),
        n_loss_tokens=sum(sum(1 for label in e.labels if label != IGNORE) for e in kept),
    )
    return trained, evaluated

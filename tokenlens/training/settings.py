"""The trainer's settings, checked before any model work.

:func:`check_settings` checks every setting of a run that needs no model — the method's options, the run's
length, learning rate and seed, and the optimisation controls of :class:`Controls` (learning-rate schedule
and warmup, AdamW weight decay, gradient accumulation, the eval split, TensorBoard) — so a typo costs no
model load: ``train`` calls it first, and the CLI calls it before loading the model. Each refusal is a
one-line :class:`~tokenlens.errors.TokenlensError` naming the setting.

The defaults of :class:`Controls` are the trainer's behaviour from before they existed (a constant learning
rate, AdamW's weight decay 0.01, one batch per step, no eval), so a run that gives none of them trains
bitwise as before.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tokenlens.errors import TokenlensError, option
from tokenlens.options import is_integer
from tokenlens.training.methods import Method
from tokenlens.training.preserve import WEIGHT as PRESERVE_WEIGHT
from tokenlens.training.preserve import check_weight

SEED_LIMIT = 2**64
"""Seeds are integers from 0 to ``SEED_LIMIT - 1``: what ``torch.manual_seed`` accepts."""
DEFAULT_EPOCHS = 3
"""Passes over the data when neither ``steps`` nor ``epochs`` is given."""
SCHEDULES = ("constant", "linear", "cosine")
"""Learning-rate schedules (after the warmup); see :mod:`tokenlens.training.schedule`."""
WEIGHT_DECAY = 0.01
"""AdamW's decoupled weight decay unless ``weight_decay`` is given (``torch.optim.AdamW``'s default)."""


@dataclass(frozen=True)
class Controls:
    """The optimisation controls of a run (each checked by :func:`check_settings`).

    Attributes:
        lr_schedule: ``constant``, ``linear`` (to 0 at the last step) or ``cosine`` (half a cosine to 0).
        warmup_steps: Steps of linear warmup from 0 (or ``warmup_ratio``: that fraction of the steps,
            rounded up); default none.
        warmup_ratio: See ``warmup_steps``.
        weight_decay: AdamW's decoupled weight decay (default 0.01).
        grad_accum: Batches accumulated into one optimizer step: a step's batch is ``batch_size ·
            grad_accum`` examples, run ``batch_size`` at a time.
        eval_data: A JSONL file (the training formats) to measure the eval loss on; or
        eval_fraction: That fraction of the training examples held out (chosen with the seed).
        eval_every: Steps between eval losses (default: only after the last step).
        tensorboard: A folder for TensorBoard event files (needs the ``tensorboard`` package).
    """

    lr_schedule: str = "constant"
    warmup_steps: int | None = None
    warmup_ratio: float | None = None
    weight_decay: float = WEIGHT_DECAY
    grad_accum: int = 1
    eval_data: str | Path | None = None
    eval_fraction: float | None = None
    eval_every: int | None = None
    tensorboard: str | Path | None = None

    @property
    def evaluates(self) -> bool:
        return self.eval_data is not None or self.eval_fraction is not None

    def changed(self) -> list[str]:
        """The names of the optimisation controls set away from their defaults (not eval or TensorBoard)."""
        default = Controls()
        names = ("lr_schedule", "warmup_steps", "warmup_ratio", "weight_decay", "grad_accum")
        return [name for name in names if getattr(self, name) != getattr(default, name)]


def controls_of(**given: Any) -> Controls:
    """A :class:`Controls` from keyword arguments (unknown names are ignored: ``train``'s other ones)."""
    names = {f.name for f in fields(Controls)}
    return Controls(**{key: value for key, value in given.items() if key in names})


def check_settings(
    record: Method,
    options: dict[str, Any] | None,
    *,
    steps: int | None,
    epochs: int | None,
    lr: float | None,
    batch_size: int,
    seed: int,
    checkpoint_every: int,
    gradient_checkpointing: bool,
    preserve_weight: float = PRESERVE_WEIGHT,
    controls: Controls | None = None,
) -> dict[str, Any]:
    """Check every setting of a run that can be checked without a model; return the resolved options.

    ``train`` calls it first; the CLI calls it before loading the model, so a typo costs no load.

    Raises:
        TokenlensError: A bad option (see :meth:`Method.resolve`), ``steps``/``epochs`` below 1 or both
            given, a learning rate that is not a finite number above 0, a seed outside 0 .. 2**64 - 1, a
            batch size or checkpoint interval below 1, gradient checkpointing with prefix tuning, a preserve
            weight that is not a finite number >= 0, or a bad control (see :func:`check_controls`).
    """
    resolved = record.resolve(options)
    check_weight(preserve_weight)
    if steps is not None and epochs is not None:
        raise TokenlensError(f"give {option('steps')} or {option('epochs')}, not both")
    for name, value in (("steps", steps), ("epochs", epochs)):
        if value is not None and (not is_integer(value) or value < 1):
            raise TokenlensError(f"{option(name, repr(value))}: nothing to train; give at least 1")
    if not all(is_integer(value) and value >= 1 for value in (batch_size, checkpoint_every)):
        raise TokenlensError("batch size and checkpoint interval must be at least 1")
    if lr is not None and not (_number(lr) and lr > 0):
        raise TokenlensError(f"{option('lr', repr(lr))}: the learning rate must be a finite number above 0")
    if not is_integer(seed) or not 0 <= seed < SEED_LIMIT:
        raise TokenlensError(f"{option('seed', repr(seed))}: a seed is an integer from 0 to 2**64 - 1")
    if gradient_checkpointing and record.name == "prefix":
        raise TokenlensError("gradient checkpointing cannot replay prefix tuning's key/value cache; drop it")
    check_controls(controls or Controls(), record)
    return resolved


def check_controls(controls: Controls, record: Method) -> None:
    """Refuse a bad optimisation control.

    Raises:
        TokenlensError: An unknown schedule; a warmup that is not an integer >= 0 (steps) or a number in
            [0, 1) (ratio), or both given; a weight decay that is not a finite number >= 0; ``grad_accum`` or
            ``eval_every`` below 1; both eval sources, an eval fraction outside (0, 1), ``eval_every``
            without an eval source; ``tensorboard`` without the ``tensorboard`` package; an optimisation
            control for a method solved in closed form.
    """
    c = controls
    if c.lr_schedule not in SCHEDULES:
        choices = ", ".join(SCHEDULES)
        raise TokenlensError(f"{option('lr_schedule', repr(c.lr_schedule))}: choose one of {choices}")
    if c.warmup_steps is not None and c.warmup_ratio is not None:
        raise TokenlensError(f"give {option('warmup_steps')} or {option('warmup_ratio')}, not both")
    if c.warmup_steps is not None and not (is_integer(c.warmup_steps) and c.warmup_steps >= 0):
        raise TokenlensError(f"{option('warmup_steps', repr(c.warmup_steps))}: must be an integer >= 0")
    if c.warmup_ratio is not None and not (_number(c.warmup_ratio) and 0 <= c.warmup_ratio < 1):
        raise TokenlensError(f"{option('warmup_ratio', repr(c.warmup_ratio))}: must be a number in [0, 1)")
    if not (_number(c.weight_decay) and c.weight_decay >= 0):
        raise TokenlensError(
            f"{option('weight_decay', repr(c.weight_decay))}: the weight decay must be a finite number >= 0"
        )
    for name in ("grad_accum", "eval_every"):
        value = getattr(c, name)
        if (value is not None or name == "grad_accum") and not (is_integer(value) and value >= 1):
            raise TokenlensError(f"{option(name, repr(value))}: must be an integer of at least 1")
    if c.eval_data is not None and c.eval_fraction is not None:
        raise TokenlensError(f"give {option('eval_data')} or {option('eval_fraction')}, not both")
    if c.eval_fraction is not None and not (_number(c.eval_fraction) and 0 < c.eval_fraction < 1):
        raise TokenlensError(f"{option('eval_fraction', repr(c.eval_fraction))}: must be a number in (0, 1)")
    if c.eval_every is not None and not c.evaluates:
        raise TokenlensError(
            f"{option('eval_every')} needs {option('eval_data')} or {option('eval_fraction')}"
        )
    if c.eval_data is not None and not Path(c.eval_data).is_file():
        raise TokenlensError(f"no such eval data file: {c.eval_data}")
    if c.tensorboard is not None and importlib.util.find_spec("tensorboard") is None:
        raise TokenlensError(
            f"{option('tensorboard')} needs the tensorboard package, which is not installed "
            "(pip install tensorboard)"
        )
    if record.fit is not None and c.changed():
        flags = ", ".join(option(name) for name in c.changed())
        raise TokenlensError(f"method {record.name} is solved in closed form: {flags} do not apply to it")


def _number(value: Any) -> bool:
    """A finite real number (not a boolean)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

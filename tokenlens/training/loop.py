"""The training loop: steps, their record, checkpoints, eval losses and progress, and how it stops.

:func:`run_loop` runs the remaining steps of a run. After each step it steps the learning-rate scheduler,
records the step's loss and learning rate in the :class:`History`, measures the eval loss when one is due
(every ``eval_every`` steps and after the last), calls the progress callbacks and writes a checkpoint every
``checkpoint_every`` steps. Signals are acted on only there, at the end of a step (see
:mod:`tokenlens.training.runtime`): a checkpoint is saved and :class:`~tokenlens.errors.Interrupted` raised.
A :class:`~tokenlens.training.step.Diverged` step stops the run at once, saving nothing.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenlens import progress
from tokenlens.errors import Interrupted
from tokenlens.files import CHECKPOINT
from tokenlens.training import step as stepping
from tokenlens.training.data import TrainingData
from tokenlens.training.preserve import PreserveTerm
from tokenlens.training.step import Diverged


@dataclass
class History:
    """What a run has recorded so far (saved in checkpoints, written to the manifest).

    Attributes:
        losses: The training loss of each step.
        lrs: The learning rate each step used.
        eval_losses: ``{"step": s, "loss": l}`` for each eval loss measured (after step ``s``).
    """

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    eval_losses: list[dict[str, Any]] = field(default_factory=list)

    def state(self) -> dict[str, list]:
        return {"lrs": list(self.lrs), "eval_losses": [dict(e) for e in self.eval_losses]}


@dataclass(frozen=True)
class StepInfo:
    """One finished optimizer step, for progress displays (``train(..., on_progress=...)``).

    Attributes:
        step: Steps done so far (1-based, counting those before a resume).
        total: Steps in the whole run.
        loss: This step's training loss (mean over the global batch's loss tokens).
        tokens: Unpadded tokens in this step's global batch.
        tokens_per_s: Unpadded tokens per second since this invocation's first step started.
        elapsed_s: Seconds since this invocation's first step started.
    """

    step: int
    total: int
    loss: float
    tokens: int
    tokens_per_s: float
    elapsed_s: float


def run_loop(
    model,
    optimizer,
    scheduler,
    data: TrainingData,
    batches: list[list[int]],
    history: History,
    start: int,
    *,
    step_args: tuple,
    parallel,
    every: int,
    save: Callable[[int, list[float]], None],
    report: Callable[..., None],
    interrupted: Callable[[], int | None],
    folder: Path,
    preserve: PreserveTerm | None = None,
    evaluate: Callable[[], float] | None = None,
    eval_every: int | None = None,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> int:
    """Run steps ``start..len(batches)`` (appending to ``history``); return the tokens they trained on.

    ``stepping.step(model, optimizer, data, batch, *step_args)`` runs one step; ``report(step, total,
    loss, tokens, tokens_so_far, since)`` calls the callbacks; ``save(step, losses)`` writes a checkpoint
    every ``every`` steps and when ``interrupted()`` names a signal (checked at the end of each step; data
    parallel, every process stops after the same step and only the main process saves), then
    :class:`Interrupted` is raised. ``evaluate()`` measures the eval loss after every ``eval_every`` steps
    and after the last; ``log(step, scalars)`` (main process) receives each step's numbers. A
    :class:`Diverged` step stops the run at once, saving nothing (the last checkpoint, of step ``saved``,
    stays as it was).
    """
    losses = history.losses
    total, tokens, started = len(batches), 0, time.perf_counter()
    saved = start  # the step of the checkpoint on disk (0: none)
    try:
        for index in range(start, total):
            lr = optimizer.param_groups[0]["lr"]
            try:
                if preserve is not None:
                    preserve.step = index  # the preserve passages are a function of the step
                loss = stepping.step(model, optimizer, data, batches[index], *step_args)
            except Diverged as exc:
                kept = f"; the checkpoint of step {saved} is kept" if saved else ""
                raise Diverged(
                    f"training stopped at step {index + 1} of {total}: {exc}; nothing was written{kept} "
                    "(try a lower --lr)"
                ) from None
            scheduler.step()
            losses.append(loss)
            history.lrs.append(lr)
            scalars = {"train/loss": loss, "train/lr": lr}
            if evaluate is not None and ((index + 1) % (eval_every or total) == 0 or index + 1 == total):
                value = evaluate()
                history.eval_losses.append({"step": index + 1, "loss": value})
                scalars["eval/loss"] = value
            step_tokens = _tokens(data, batches[index])
            tokens += step_tokens
            signum = interrupted()
            if parallel.main:
                if log is not None:
                    log(index + 1, scalars)
                try:
                    report(index + 1, total, loss, step_tokens, tokens, started)
                except KeyboardInterrupt:  # a callback stops the run: every process stops here
                    signum = signum or signal.SIGINT
            if parallel.any(signum is not None):
                raise Interrupted(signum or signal.SIGINT, "")
            if (index + 1) % every == 0 and index + 1 < total:
                if parallel.main:
                    save(index + 1, losses)
                saved = index + 1
    except KeyboardInterrupt as exc:
        if parallel.main:
            save(len(losses), losses)
        parallel.barrier()  # nobody leaves (and maybe resumes) before the checkpoint is complete
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        how = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        raise Interrupted(
            signum,
            f"{how} after step {len(losses)} of {total}; checkpoint saved in {folder / CHECKPOINT}: "
            "rerun with --resume to continue",
        ) from None
    return tokens


def report(on_step, on_progress, step: int, total: int, loss: float, tokens: int, done: int, since: float):
    """Call the progress callbacks; ``done`` is the tokens of this invocation's steps so far. The step is
    also reported as ``"train step"`` to a :mod:`tokenlens.progress` listener."""
    progress.report("train step", step, total)
    if on_step is not None:
        on_step(step, total, loss)
    if on_progress is not None:
        elapsed = time.perf_counter() - since
        rate = done / elapsed if elapsed > 0 else 0.0
        on_progress(StepInfo(step, total, loss, tokens, rate, elapsed))


def _tokens(data: TrainingData, indices: list[int]) -> int:
    return sum(len(data.examples[i].input_ids) for i in indices)

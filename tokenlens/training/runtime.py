"""What surrounds the training loop while it runs: deferred signals and activation checkpointing.

* :func:`signals_deferred`: Ctrl-C (SIGINT) and SIGTERM are only noted while the loop runs; the loop acts on
  them at the end of a step, so a checkpoint never holds a half-applied step and an output is never half
  moved into place.
* :func:`activation_checkpointing`: HF's activation (gradient) checkpointing, switched on for the loop only.
* :func:`tensorboard_log`: each step's numbers as TensorBoard scalars (``train/loss``, ``train/lr``,
  ``eval/loss``), when the ``tensorboard`` package is installed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokenlens.errors import TokenlensError, option
from tokenlens.models.specs import bare_model


@contextmanager
def activation_checkpointing(model, enabled: bool) -> Iterator[None]:
    """HF activation (gradient) checkpointing on the bare model while training; switched off afterwards.

    Non-reentrant, so frozen inputs need no ``requires_grad`` trick; HF still registers its input-grad hook
    (PEFT), which is removed again here with the rest.
    """
    if not enabled:
        yield
        return
    hf = bare_model(model)
    if not getattr(hf, "supports_gradient_checkpointing", False):
        raise TokenlensError(f"{type(hf).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    try:
        yield
    finally:
        if hasattr(hf, "activation_checkpointing_disable"):
            hf.activation_checkpointing_disable()
        else:
            hf.gradient_checkpointing_disable()
        if getattr(hf, "_require_grads_hook", None) is not None:
            hf.disable_input_require_grads()


@contextmanager
def signals_deferred() -> Iterator[Callable[[], int | None]]:
    """Defer Ctrl-C (SIGINT) and SIGTERM: the handler only notes the signal; the loop acts on it at the end
    of a step, so a checkpoint never holds a half-applied step and an output is never half moved into place.

    Yields a function returning the first signal received (``None`` while there is none). Outside the main
    thread (where signal handlers cannot be set) nothing is deferred.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def note(signum: int, _frame: Any) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, note) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def tensorboard_log(folder: str | Path):
    """A logger ``log(step, scalars)`` writing TensorBoard event files into ``folder`` (``log.close()``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise TokenlensError(
            f"{option('tensorboard')} needs the tensorboard package (pip install tensorboard)"
        ) from exc
    writer = SummaryWriter(log_dir=str(folder))

    class Log:
        def __call__(self, step: int, scalars: dict[str, float]) -> None:
            for name, value in scalars.items():
                writer.add_scalar(name, value, step)

        def close(self) -> None:
            writer.close()

    return Log()

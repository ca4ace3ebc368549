"""Progress of long computations, reported to whoever listens (the command line), never printed here.

An engine that runs many forward passes calls :func:`report` after each piece of work; it costs nothing
when nobody listens. A caller that wants feedback wraps the computation in :func:`reporting` with a
callback ``(what, done, total)``: the command line shows a bar on a terminal and plain lines in a log
(``tokenlens/cli/feedback.py``). The listener is a context variable, so nested or concurrent computations
do not see each other's listeners.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Listener = Callable[[str, int, int], None]
"""``(what, done, total)``: e.g. ``("trace mlp", 512, 1500)`` — 512 of 1,500 pieces of that work done."""

_LISTENER: ContextVar[Listener | None] = ContextVar("tokenlens_progress", default=None)


@contextmanager
def reporting(listener: Listener) -> Iterator[None]:
    """Send every :func:`report` made inside the ``with`` block to ``listener``."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def report(what: str, done: int, total: int) -> None:
    """Tell the current listener (if any) that ``done`` of ``total`` pieces of ``what`` are finished."""
    listener = _LISTENER.get()
    if listener is not None:
        listener(what, done, total)

"""Feedback on stderr while a subcommand works: a spinner on a terminal, plain lines in a log.

``with feedback("measuring"):`` shows ``measuring…`` with a spinner when stderr is a terminal. Inside it,
the engines' progress reports (:mod:`tokenlens.progress`) update the spinner's text (``measuring: trace mlp
512/1500, about 40 s left``). When stderr is not a terminal (CI, ``nohup``, a pipe) the same reports become
plain lines, at most one every :data:`INTERVAL` seconds per piece of work plus one when it finishes, so a
log shows that a long run is alive and how far it got. Standard output stays clean for the result.

``--quiet`` (:func:`quiet`) silences all of it: no spinner, no bar, no progress lines; errors and the
result are still printed. :func:`print_result` prints a rich table to standard output at the width it
needs when the output is not a terminal (a pipe or a file is not cut at 80 columns).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tokenlens.progress import reporting

INTERVAL = 10.0
"""Seconds between two plain progress lines of the same work."""

MAX_WIDTH = 400
"""The widest a piped table is printed (columns)."""

_QUIET: ContextVar[bool] = ContextVar("tokenlens_quiet", default=False)


@contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """Silence (``on``) every progress display inside the ``with`` block (``--quiet``)."""
    token = _QUIET.set(on)
    try:
        yield
    finally:
        _QUIET.reset(token)


def is_quiet() -> bool:
    """Whether progress displays are silenced (:func:`quiet`)."""
    return _QUIET.get()


def eta(elapsed: float, done: int, total: int) -> str:
    """``", about 20 s left"`` from the time taken for ``done`` of ``total`` pieces (empty when unknown)."""
    if not done or done >= total:
        return ""
    return f", about {elapsed * (total - done) / done:.0f} s left"


def _line(stage: str, what: str, done: int, total: int, started: float) -> str:
    return f"{stage}: {what} {done}/{total}{eta(time.monotonic() - started, done, total)}"


class Throttled:
    """Plain progress lines on stderr, at most one every :data:`INTERVAL` seconds plus the last one
    (``final``), each prefixed ``tokenlens: ``; nothing when :func:`is_quiet`."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.last: float | None = None

    def __call__(self, text: str, *, final: bool = False) -> None:
        now = time.monotonic()
        if is_quiet() or not (final or self.last is None or now - self.last >= self.interval):
            return
        self.last = now
        print(f"tokenlens: {text}", file=sys.stderr, flush=True)


@contextmanager
def feedback(stage: str) -> Iterator[None]:
    """Report ``stage`` and the progress made inside it on stderr (see the module docstring)."""
    from rich.console import Console

    if is_quiet():
        with reporting(lambda what, done, total: None):
            yield
        return
    console = Console(stderr=True)
    starts: dict[str, float] = {}  # when each piece of work began: the stage's start or the report before
    previous = [time.monotonic()]

    def began(what: str) -> float:
        starts.setdefault(what, previous[0])
        previous[0] = time.monotonic()
        return starts[what]

    if console.is_terminal:
        with console.status(f"{stage}…") as status:

            def update(what: str, done: int, total: int) -> None:
                status.update(_line(stage, what, done, total, began(what)) + "…")

            with reporting(update):
                yield
        return
    printers: dict[str, Throttled] = {}

    def log(what: str, done: int, total: int) -> None:
        printer = printers.setdefault(what, Throttled())
        printer(_line(stage, what, done, total, began(what)), final=done == total)

    with reporting(log):
        yield


def print_result(renderable: object) -> None:
    """Print a rich renderable to standard output: at the terminal's width on a terminal; otherwise (a
    pipe, a file, CI) at the width its widest table needs (80 to :data:`MAX_WIDTH` columns), so cells are not
    cut (prose still wraps)."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        wide = Console(width=MAX_WIDTH)
        console = Console(width=max(80, min(MAX_WIDTH, _table_width(wide, renderable))))
    console.print(renderable)


def _table_width(console, renderable: object) -> int:
    """The widest table in ``renderable`` (a table, or a group of renderables) at its natural width; prose
    is not counted, so that it still wraps."""
    from rich.measure import Measurement
    from rich.table import Table

    if isinstance(renderable, Table):
        return Measurement.get(console, console.options, renderable).maximum
    children = getattr(renderable, "renderables", None)
    if isinstance(children, list | tuple):
        return max((_table_width(console, child) for child in children), default=0)
    return 0

"""Feedback on stderr while a subcommand works: a spinner on a terminal, plain lines in a log.

``with feedback("measuring"):`` shows ``measuring…`` with a spinner when stderr is a terminal. Inside it,
the engines' progress reports (:mod:`tokenlens.progress`) update the spinner's text (``measuring: trace mlp
512/1500, about 40 s left``). When stderr is not a terminal (CI, ``nohup``, a pipe) the same reports become
plain lines, at most one every :data:`INTERVAL` seconds per piece of work plus one when it finishes, so a
log shows that a long run is alive and how far it got. Standard output stays clean for the result.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tokenlens.progress import reporting

INTERVAL = 10.0
"""Seconds between two plain progress lines of the same work."""


def _line(stage: str, what: str, done: int, total: int, started: float) -> str:
    elapsed = time.monotonic() - started
    left = elapsed * (total - done) / done if done else None
    eta = "" if left is None or done == total else f", about {left:.0f} s left"
    return f"{stage}: {what} {done}/{total}{eta}"


@contextmanager
def feedback(stage: str) -> Iterator[None]:
    """Report ``stage`` and the progress made inside it on stderr (see the module docstring)."""
    from rich.console import Console

    console = Console(stderr=True)
    starts: dict[str, float] = {}
    last: dict[str, float] = {}
    if console.is_terminal:
        with console.status(f"{stage}…") as status:

            def update(what: str, done: int, total: int) -> None:
                starts.setdefault(what, time.monotonic())
                status.update(_line(stage, what, done, total, starts[what]) + "…")

            with reporting(update):
                yield
        return

    def log(what: str, done: int, total: int) -> None:
        now = time.monotonic()
        starts.setdefault(what, now)
        if done == total or now - last.get(what, starts[what]) >= INTERVAL:
            last[what] = now
            print(f"tokenlens: {_line(stage, what, done, total, starts[what])}", file=sys.stderr, flush=True)

    with reporting(log):
        yield

"""The exception types users see.

A :class:`TokenlensError` means the input or the environment is wrong (a missing path, an unsupported
architecture, a target that is several tokens …). Its message is a single line that says what is wrong and,
where there is one, what to do instead. The CLI prints it without a traceback and exits non-zero.

A message that tells the user which setting to change names it with :func:`option`: ``first_token=True``
when the library is called from Python, ``--first-token`` when the command line runs it (inside
:func:`command_line`), so the library's messages never speak a language their reader does not use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

_COMMAND_LINE: ContextVar[bool] = ContextVar("tokenlens_command_line", default=False)
FLAGS = {"out_dir": "--out", "data_path": "--data", "vs_id": "--vs-id", "quantize": "--quantize"}
"""Parameters whose command-line flag is not simply ``--`` + the name with dashes."""


@contextmanager
def command_line() -> Iterator[None]:
    """Inside this block, :func:`option` names settings as command-line flags (the CLI runs in it)."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def speaks_command_line() -> bool:
    """Whether messages are for a command-line user now (inside :func:`command_line`)."""
    return _COMMAND_LINE.get()


def option(name: str, value: object = None) -> str:
    """A setting as the reader types it: ``--first-token`` / ``--base REF`` on the command line,
    ``first_token=True`` / ``base=REF`` in Python.

    Args:
        name: The Python parameter name (``first_token``, ``base``, ``out_dir``).
        value: An example value (``True`` for a switch, whose flag then takes none); ``None``: just the name.
    """
    if speaks_command_line():
        flag = FLAGS.get(name, "--" + name.replace("_", "-"))
        return flag if value is None or value is True else f"{flag} {value}"
    return name if value is None else f"{name}={value}"


class TokenlensError(Exception):
    """A user-facing problem, reported as one line."""


class MultiTokenTarget(TokenlensError):
    """A target text that encodes to several tokens where one token was asked for.

    The message names the pieces and how to explain the first one (``first_token=True``, or ``--first-token``
    on the command line); a command that has no such setting rewords it with :attr:`base` and :attr:`pieces`.

    Attributes:
        text: The target text.
        pieces: The decoded text of each of its tokens.
        base: The message without a hint.
    """

    def __init__(self, text: str, pieces: Sequence[str]) -> None:
        self.text = text
        self.pieces = tuple(pieces)
        shown = ", ".join(repr(piece) for piece in self.pieces)
        self.base = f"the target {text!r} is {len(self.pieces)} tokens ({shown})"
        hint = f"{option('first_token', True)} explains its first token {self.pieces[0]!r}"
        super().__init__(f"{self.base}; {hint}")


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT) or SIGTERM (the trainer: at the end of a step, after a checkpoint).

    A ``KeyboardInterrupt``, so whatever handles Ctrl-C handles both; its message is one line for the user.

    Attributes:
        signum: The signal that stopped it (``signal.SIGINT`` for a callback that raised
            ``KeyboardInterrupt``).
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        """The shell's status for death by this signal: 130 for Ctrl-C, 143 for SIGTERM."""
        return 128 + self.signum


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

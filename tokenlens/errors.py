"""The exception types users see.

A :class:`TokenlensError` means the input or the environment is wrong (a missing path, an unsupported
architecture, a target that is several tokens …). Its message is a single line that says what is wrong and,
where there is one, what to do instead. The CLI prints it without a traceback and exits non-zero. Library
messages speak the Python API (``first_token=True``); the command line rewords the hints that name a flag.
"""

from collections.abc import Sequence


class TokenlensError(Exception):
    """A user-facing problem, reported as one line."""


class MultiTokenTarget(TokenlensError):
    """A target text that encodes to several tokens where one token was asked for.

    The message names the pieces and how to explain the first one from Python (``first_token=True``); a
    command line rewords that hint with :attr:`base` and :attr:`pieces` (``--first-token`` where it has one).

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
        super().__init__(f"{self.base}; set first_token=True to explain its first token {self.pieces[0]!r}")


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

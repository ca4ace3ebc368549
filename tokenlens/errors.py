"""The one exception type users see.

A :class:`TokenlensError` means the input or the environment is wrong (a missing path, an unsupported
architecture, a target that is several tokens …). Its message is a single line that says what is wrong and,
where there is one, what to do instead. The CLI prints it without a traceback and exits non-zero.
"""


class TokenlensError(Exception):
    """A user-facing problem, reported as one line."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

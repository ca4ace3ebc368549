"""Typed ``key=value`` options: declared once, checked once, in one canonical form.

A post-training method (and the model structure a custom method adds) takes options such as ``r=8`` or
``layers=0,1``, given as JSON values. Each option is declared as an :class:`Option` with a default and a
validator that accepts only its declared type — an integer that is not a boolean, a real JSON ``true`` or
``false``, a list of integers, a string from a set of choices — and returns the value in one canonical form (a
single layer index becomes a one-element list), so what runs is exactly what is recorded. :func:`resolve`
checks a whole set of given options against the declarations.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokenlens.errors import TokenlensError, speaks_command_line

Check = Callable[[str, Any], Any]
"""An option validator: ``check(name, value)`` returns the value in canonical form or raises a one-line
:class:`TokenlensError` naming the option."""


@dataclass(frozen=True)
class Option:
    """One option a method accepts (``--option NAME=VALUE``).

    Attributes:
        default: The value when the option is not given (ignored when ``required``).
        help: One line: what it sets.
        check: Its validator (see :data:`Check`); the default is never checked.
        required: The method cannot run without it (there is no sensible default).
    """

    default: Any
    help: str
    check: Check
    required: bool = False


def is_integer(value: Any) -> bool:
    """A JSON integer: ``int`` but not ``bool`` (``true`` is not 1 here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _as_list(value: Any) -> list:
    """A list as given, or a single value as a one-element list (``layers=0`` means ``[0]``)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _bad(name: str, value: Any, what: str) -> TokenlensError:
    return TokenlensError(f"option {name}={value!r}: {what}")


def positive_int(name: str, value: Any) -> int:
    """An integer of at least 1 (``2.5``, ``true`` and ``"abc"`` are refused, not rounded or cast)."""
    if not is_integer(value) or value < 1:
        raise _bad(name, value, "must be a positive integer")
    return value


def boolean(name: str, value: Any) -> bool:
    """A JSON ``true`` or ``false`` (``maybe``, ``1`` and ``"yes"`` are refused)."""
    if not isinstance(value, bool):
        raise _bad(name, value, "must be true or false")
    return value


def probability(name: str, value: Any) -> float:
    """A number from 0 up to (not including) 1, e.g. a dropout rate (``true`` and ``"0.1"`` are refused)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not 0 <= value < 1:
        raise _bad(name, value, "must be a number from 0 up to 1 (not 1)")
    return float(value)


AUTO = "auto"
"""``layers=auto``: the trainer chooses the layers by locating its first example's target (causal tracing)."""


def layer_list(name: str, value: Any) -> list[int] | str | None:
    """``None`` (every layer), ``"auto"`` (located by the trainer) or layer indices (integers >= 0), sorted
    and each once."""
    if value is None or value == AUTO:
        return value
    values = _as_list(value)
    if not values or not all(is_integer(v) and v >= 0 for v in values):
        raise _bad(name, value, "must be layer indices (integers from 0), e.g. 0,1, or auto")
    return sorted(set(values))


def token_list(name: str, value: Any) -> list[int]:
    """Token ids (integers >= 0), sorted and each once; at least one."""
    values = _as_list(value)
    if not values or not all(is_integer(v) and v >= 0 for v in values):
        raise _bad(name, value, "must be token ids (integers from 0), e.g. 42,7042")
    return sorted(set(values))


def name_list(name: str, value: Any) -> list[str]:
    """Module names (non-empty strings), in the given order, each once; at least one."""
    values = _as_list(value)
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise _bad(name, value, "must be module names, e.g. q_proj,v_proj")
    return list(dict.fromkeys(values))


def choice(*choices: str) -> Check:
    """A validator for one string out of ``choices``."""

    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise _bad(name, value, f"choose from {', '.join(choices)}")
        return value

    return check


def choices_list(*choices: str) -> Check:
    """A validator for a list of strings out of ``choices`` (a single one becomes a list), each once."""

    def check(name: str, value: Any) -> list[str]:
        values = _as_list(value)
        if not values or any(v not in choices for v in values):
            raise _bad(name, value, f"choose from {', '.join(choices)}")
        return list(dict.fromkeys(values))

    return check


def resolve(owner: str, declared: dict[str, Option], given: dict[str, Any] | None) -> dict[str, Any]:
    """``given`` options, each validated and in canonical form, with the defaults of the others filled in.

    Args:
        owner: The name of what takes the options (a method's name), for messages.
        declared: The accepted options.
        given: The options as given (``None``: none).

    Raises:
        TokenlensError: An option that is not declared, a value of the wrong type or range, or a required
            option that is missing.
    """
    given = dict(given or {})
    for key in given:
        if key not in declared:
            accepted = ", ".join(sorted(declared)) or "none"
            raise TokenlensError(
                f"option {key!r} does not apply to method {owner!r} (it accepts: {accepted})"
            )
    resolved = {}
    for key, option in declared.items():
        if key in given:
            resolved[key] = option.check(key, given[key])
        elif option.required:
            raise TokenlensError(f"method {owner} needs {_setting(key)} ({option.help})")
        else:
            resolved[key] = copy.deepcopy(option.default)  # a caller may change its copy
    return resolved


def _setting(key: str) -> str:
    """How the reader sets option ``key``: ``--option key=…`` on the command line, ``options={'key': …}``."""
    return f"--option {key}=…" if speaks_command_line() else f"options={{{key!r}: …}}"

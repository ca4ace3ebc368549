"""Plain text shared by every report format: token literals, visible text, probabilities, JSON numbers.

A token is untrusted text: a leading space, a newline or a right-to-left override decides what it is, so
every report shows it as its Python literal (``' Paris'``, ``'\\n'``, ``'\\u202e'``), never raw. A
probability is written fixed-point, except below 0.001, where a rounded ``0.000`` would hide a change. JSON
has no NaN or infinity: an undefined or unmeasured number is ``null``.
"""

from __future__ import annotations

import math
from typing import Any

QUANTITY_WORDS = {
    "logit": ("logit", "logit units"),
    "logit_difference": ("logit difference", "logit units"),
    "logprob": ("log-probability", "nats"),
}
"""How reports name each explained quantity (``LogitAttribution.quantity``): ``(what, units)``."""


def show_token(token: str) -> str:
    """A token's text with whitespace and control characters visible: its literal (``' Paris'``,
    ``'\\n'``)."""
    return repr(token)


def visible(text: str) -> str:
    """``text`` with every non-printable character (newline, zero-width, bidi control) as its escape.

    Unlike :func:`show_token` it adds no quotes: for free text such as a model name or a command line.
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``…`` when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def probability(value: float, digits: int = 4, exponent_digits: int = 2) -> str:
    """A probability: ``digits`` decimals, or e-notation with ``exponent_digits`` below 0.001; ``—`` for NaN.

    >>> probability(0.5), probability(6.6e-06), probability(6.6e-06, 3, 1)
    ('0.5000', '6.60e-06', '6.6e-06')
    """
    if math.isnan(value):
        return "—"
    return f"{value:.{digits}f}" if value >= 1e-3 or value == 0 else f"{value:.{exponent_digits}e}"


def change_format(value: float) -> str:
    """The format of a signed probability change: ``+.4f``, or ``+.1e`` below 0.001 in size."""
    return "+.4f" if abs(value) >= 1e-3 or value == 0 else "+.1e"


def probability_change(value: float) -> str:
    """A signed probability change: ``+0.6000``, or ``-6.1e-07`` below 0.001 in size."""
    return format(value, change_format(value))


def json_number(value: float | None) -> float | None:
    """A JSON-safe float: ``None`` for a missing, NaN or infinite value (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def finite_json(value: Any) -> Any:
    """``value`` (dicts, lists and scalars) with every NaN or infinite float replaced by ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    return value

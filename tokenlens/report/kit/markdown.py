"""Pieces of a GitHub-flavoured Markdown report, in which untrusted text stays literal text.

A token or prompt is its literal (:func:`~tokenlens.report.kit.text.show_token`) inside a code span, so
Markdown, HTML, ``$math$`` and ``@mentions`` in it do nothing. A code span's fence is one backtick longer
than the longest run of backticks in the text, and inside a table ``|`` is written ``\\|`` (GFM splits cells
before it parses code spans); a literal doubles every backslash, so that escape cannot be undone by one.
Other free text goes through :func:`plain`, which escapes every character Markdown, HTML or GFM act on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import quote

from tokenlens.report.kit.text import show_token, visible


def code(text: str, table: bool = False) -> str:
    """``text`` (invisible characters escaped) as a code span nothing in it can break; ``table``: with ``|``
    escaped for a table cell."""
    text = visible(text)
    if not text:
        return ""
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", text)), default=0))
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    span = f"{fence}{pad}{text}{pad}{fence}"
    return span.replace("|", "\\|") if table else span


def token(text: str, table: bool = False) -> str:
    """A token (or prompt) as its literal in a code span; ``table``: with ``|`` escaped for a table cell.

    The escape is safe because a literal has an even number of backslashes before any ``|``, so the ``\\|``
    written here is always read as an escaped pipe.
    """
    return code(show_token(text), table)


def plain(text: str) -> str:
    """Untrusted text outside code spans, with every character Markdown, HTML or GFM act on escaped."""
    return re.sub(r"([\\`*_\[\]<>#|~$&!{}:@])", r"\\\1", visible(text))


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GFM table: the header cells, then one line per row (cells are Markdown already)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def image(alt: str, path: str) -> str:
    """An image link: ``alt`` escaped, ``path`` (relative to the Markdown file) URL-quoted."""
    return f"![{plain(alt)}]({quote(path, safe='/')})"


def exact_mark(exact: bool) -> str:
    """``✓ exact``, or a bold ``✗ NOT EXACT``: the verdict of an exact split's check."""
    return "✓ exact" if exact else "✗ **NOT EXACT**"

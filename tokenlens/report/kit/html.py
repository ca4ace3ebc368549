"""Pieces of a self-contained HTML report: one file, no network, untrusted text only ever text.

Every page gets the same style sheet (:data:`CSS`) and a Content-Security-Policy (:data:`CSP`) that forbids
scripts and every network load; a page given one inline script (:func:`page`) allows that script alone, by
its hash (:func:`csp`). Figures are PNG ``data:`` URIs. Untrusted strings go through
:func:`escape`; tokens through :func:`token`, which also shows them as literals and isolates them in
``<bdi>`` so right-to-left text cannot reorder the page around them. A number cell (:func:`number`) shows
the value rounded and carries it exactly in ``data-value``, green or red by sign. Functions return HTML
strings; arguments named ``*_html`` are HTML already and are not escaped again.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Iterable, Sequence

from tokenlens.report.kit.text import probability, show_token
from tokenlens.version import __version__

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#1b1b1b}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;margin-top:2em}h3{margin-bottom:.3em}
nav a{margin-right:.8em}table{border-collapse:collapse;margin:.5em 0}
th,td{padding:.15em .6em;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.pos{color:#1a7f37}.neg{color:#c62828}.dim,.note{color:#666}.grid td.num{color:#1b1b1b}
bdi,.tok{unicode-bidi:isolate}
.tok{font-family:ui-monospace,monospace;white-space:pre;border:1px solid #bbb;border-radius:3px;
padding:0 .2em;margin:.1em;display:inline-block}
.tok.here{border:2px solid #333}.tok.after{opacity:.45}.tokens{line-height:2}
td.bar{position:relative;width:14em;min-width:8em}
td.bar::before{content:"";position:absolute;left:50%;top:10%;bottom:10%;border-left:1px solid #888}
td.bar span{position:absolute;top:25%;height:50%}
td.bar span.pos{left:50%;background:#2e9e4f}td.bar span.neg{right:50%;background:#d64541}
.check{font-family:ui-monospace,monospace}.ok{color:#1a7f37}.bad{color:#c62828;font-weight:bold}
.kind{display:inline-block;font-weight:bold;padding:0 .4em;border-radius:3px;color:#fff}
.measured{background:#1f5fa8}.estimate{background:#a86a1f}tr.target td{font-weight:bold}
.scroll{overflow-x:auto}.kv td.num{text-align:left}.setting{font-family:ui-monospace,monospace}
figure{margin:1em 0}figure img{max-width:100%;height:auto}
figcaption{color:#666;font-size:.9em}
"""
"""The style sheet of every report page (a report adds its own rules after it)."""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
"""The Content-Security-Policy of every page: no script, no network, images only from ``data:`` URIs."""


def csp(script_hashes: Sequence[str] = ()) -> str:
    """The Content-Security-Policy of a page: :data:`CSP`, or with ``script_hashes`` (``'sha256-…'``) the same
    policy allowing exactly those inline scripts (``script-src``) and nothing else."""
    if not script_hashes:
        return CSP
    default, rest = CSP.split("; ", 1)
    return f"{default}; script-src {' '.join(script_hashes)}; {rest}"


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
"""The first bytes of every PNG file (a figure that does not start with them is refused)."""


def escape(text: object) -> str:
    """``str(text)`` with ``& < > " '`` escaped: safe as element text and as a quoted attribute value."""
    return html.escape(str(text), quote=True)


def token(text: str, cls: str = "tok", style: str = "", title: str = "") -> str:
    """One untrusted token: its literal, escaped, bidi-isolated, in a bordered box of class ``cls``."""
    attrs = (
        f' class="{cls}"'
        + (f' style="{style}"' if style else "")
        + (f' title="{escape(title)}"' if title else "")
    )
    return f'<span{attrs}><bdi dir="ltr">{escape(show_token(text))}</bdi></span>'


def token_row(tokens: Sequence[str], ids: Sequence[int], position: int) -> str:
    """A prompt's tokens in boxes: the one at ``position`` outlined, later ones faded, ids in the titles."""
    return " ".join(
        token(
            text,
            "tok here" if j == position else "tok after" if j > position else "tok",
            title=f"{j}: id {i}",
        )
        for j, (text, i) in enumerate(zip(tokens, ids))
    )


def _formatted(value: float, fmt: str) -> str:
    return "—" if math.isnan(value) else probability(value) if fmt == "p" else format(value, fmt)


def number(
    value: float,
    fmt: str = "+.4f",
    signed: bool = True,
    tag: str = "td",
    style: str = "",
    name: str = "",
    component: bool = False,
) -> str:
    """A number in a ``tag`` element: formatted text, its exact value in ``data-value``.

    Args:
        value: The number (NaN shows as ``—``).
        fmt: A format spec, or ``"p"`` for a probability (:func:`~tokenlens.report.kit.text.probability`).
        signed: Colour it green when positive, red when negative.
        tag: ``td`` for a table cell, ``span`` inside text.
        style: An inline style for the element.
        name: A ``data-name`` for the element (what the number is).
        component: The number is a component's value: ``name`` is also its ``data-component``.
    """
    value = value if isinstance(value, int) else float(value)
    cls = "num" + ((" pos" if value > 0 else " neg" if value < 0 else "") if signed else "")
    extra = (f' style="{style}"' if style else "") + (f' data-name="{escape(name)}"' if name else "")
    extra += f' data-component="{escape(name)}"' if component and name else ""
    return f'<{tag} class="{cls}" data-value="{value!r}"{extra}>{_formatted(value, fmt)}</{tag}>'


def optional_number(value: float | None, fmt: str = "+.4f", signed: bool = True, name: str = "") -> str:
    """A number cell, or a dim ``—`` with ``data-value="null"`` for a value that was not measured (``None``,
    NaN or infinite)."""
    if value is None or not math.isfinite(value):
        attr = f' data-name="{escape(name)}"' if name else ""
        return f'<td class="num dim" data-value="null"{attr}>—</td>'
    return number(float(value), fmt, signed, name=name)


def bar(value: float, peak: float) -> str:
    """An inline CSS bar cell: green right of the centre line for a positive value, red left for a negative
    one, half the cell wide at ``|value| == peak``."""
    width = 50 * abs(value) / peak if peak > 0 else 0.0
    side = "pos" if value > 0 else "neg"
    return f'<td class="bar"><span class="{side}" style="width:{width:.1f}%"></span></td>'


def shade(value: float, peak: float) -> str:
    """A diverging background colour (an inline style): green for positive, red for negative, stronger for
    larger ``|value|``; empty for zero or NaN."""
    if peak <= 0 or value == 0 or math.isnan(value):
        return ""
    alpha = 0.7 * min(1.0, abs(value) / peak)
    rgb = "46,158,79" if value > 0 else "214,69,65"
    return f"background-color:rgba({rgb},{alpha:.2f})"


def badge(kind: str) -> str:
    """A coloured label such as MEASURED or ESTIMATE (its class is ``kind`` in lower case)."""
    return f'<span class="kind {kind.lower()}">{kind}</span>'


def exact_mark(exact: bool) -> str:
    """``✓ exact`` in green, or ``✗ NOT EXACT`` in bold red: the verdict of an exact split's check."""
    return '<span class="ok">✓ exact</span>' if exact else '<span class="bad">✗ NOT EXACT</span>'


def table(head_html: Sequence[str], rows_html: Sequence[str], cls: str = "") -> str:
    """A table in a horizontally scrolling box: one header row, then the ``<tr>`` rows given."""
    cells = "".join(f"<th>{h}</th>" for h in head_html)
    attr = f' class="{cls}"' if cls else ""
    return f"<div class=scroll><table{attr}><tr>{cells}</tr>\n" + "\n".join(rows_html) + "</table></div>"


def row(name: str, *cells_html: str, value: float | None = None) -> str:
    """A table row named ``name`` (its ``data-name`` and first cell), then the cells given; with ``value``,
    a component's row: ``data-component`` is its name and ``data-value`` its exact value."""
    extra = "" if value is None else f' data-component="{escape(name)}" data-value="{float(value)!r}"'
    return f'<tr data-name="{escape(name)}"{extra}><td>{escape(name)}</td>{"".join(cells_html)}</tr>'


def key_values(rows_html: Iterable[str]) -> str:
    """A two-column table of ``<tr><th>key</th><td>value</td></tr>`` rows."""
    return f'<table class="kv">{"".join(rows_html)}</table>'


def paragraphs(texts: Iterable[str]) -> str:
    """Each text, escaped, as a paragraph."""
    return "".join(f"<p>{escape(text)}</p>" for text in texts)


def figure(slug: str, png: bytes, alt: str, anchor: str | None = None) -> str:
    """A PNG embedded as a ``data:`` URI with ``alt`` as its alt text and caption, id ``figure-{anchor}``
    (``anchor`` defaults to ``slug``).

    Raises:
        ValueError: ``png`` is not PNG data.
    """
    if not png.startswith(PNG_MAGIC):
        raise ValueError(f"image {slug!r} is not PNG data")
    data = base64.b64encode(png).decode("ascii")
    alt = escape(alt)
    return (
        f'<figure id="figure-{escape(slug if anchor is None else anchor)}">'
        f'<img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'
    )


def section(anchor: str, title_html: str, content_html: str, figures_html: str = "") -> str:
    """A page section with a stable ``id``, an ``<h2>`` heading, its content and then its figures."""
    return f'<section id="{escape(anchor)}">\n<h2>{title_html}</h2>\n{content_html}\n{figures_html}</section>'


def page(
    title: str,
    header_html: str,
    main_html: str,
    css: str = CSS,
    *,
    end_html: str = "",
    script_hashes: Sequence[str] = (),
) -> str:
    """A whole HTML5 document: ``title`` (plain text), the ``<header>``'s content, the ``<main>``'s content,
    the style sheet and the Content-Security-Policy, and a footer naming the tokenlens version.

    ``end_html`` goes last in the body (a page's data and its inline script); ``script_hashes`` are the CSP
    hashes of its inline scripts (:func:`csp`), the only scripts the page may run."""
    return (
        '<!DOCTYPE html>\n<html lang="en" dir="ltr">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp(script_hashes)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{css}</style>\n</head>\n<body>\n"
        f"<header>{header_html}</header>\n<main>\n{main_html}\n</main>\n"
        f'<footer class="note">tokenlens {escape(__version__)}</footer>\n{end_html}</body>\n</html>\n'
    )


def scoped_css(css: str, scope: str) -> str:
    """``css`` with every rule limited to elements inside ``scope`` (``body`` becomes the scope itself), for
    a page fragment shown inside another page (a notebook cell)."""

    def scope_rule(match: re.Match) -> str:
        selectors = [s.strip() for s in match[1].split(",")]
        scoped = [scope if s == "body" else f"{scope} {s}" for s in selectors]
        return ",".join(scoped) + "{" + match[2] + "}"

    return re.sub(r"([^{}]+)\{([^{}]*)\}", scope_rule, css)

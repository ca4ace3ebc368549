"""Pieces of a terminal report (rich renderables) and their plain-text export.

Numbers that carry a sign are green when positive and red when negative; a value that was not measured is a
dim ``—``, never a made-up zero. A section is a bold title and a dim explanation line above its table
(:func:`captioned`): a table's own title would wrap to the table's width.
"""

from __future__ import annotations

import io
import math

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

BAR_WIDTH = 16
"""Cells of a full-length :func:`bar` on each side of its centre line."""


def signed(value: float | None, digits: int = 4, strong: float = 0.0) -> Text:
    """A signed number, green up, red down, dim at zero; bold from ``|value| >= strong`` (when ``strong >
    0``); a dim ``—`` when not measured (``None``, NaN or infinite)."""
    if value is None or not math.isfinite(value):
        return Text("—", style="dim")
    style = "green" if value > 0 else "red" if value < 0 else "dim"
    if abs(value) >= strong > 0:
        style = "bold " + style
    return Text(f"{value:+.{digits}f}", style=style)


def unsigned(value: float | None, fmt: str = ".4f") -> Text:
    """A number without colour, or a dim ``—`` when not measured (``None``, NaN or infinite)."""
    if value is None or not math.isfinite(value):
        return Text("—", style="dim")
    return Text(format(value, fmt))


def bar(value: float, scale: float) -> Text:
    """A signed bar: green to the right of ``│`` for a positive value, red to the left for a negative one,
    :data:`BAR_WIDTH` cells at ``|value| == scale``."""
    cells = round(BAR_WIDTH * abs(value) / scale) if scale > 0 else 0
    left = Text(" " * (BAR_WIDTH - cells) + "█" * cells, style="red") if value < 0 else Text(" " * BAR_WIDTH)
    right = Text("█" * cells, style="green") if value > 0 else Text("")
    return Text.assemble(left, "│", right)


def exact_mark(exact: bool) -> Text:
    """``✓ exact`` in green, or ``✗ NOT EXACT`` in bold red: the verdict of an exact split's check."""
    return Text("✓ exact", style="green") if exact else Text("✗ NOT EXACT", style="bold red")


def table(*columns: str, title: str | None = None) -> Table:
    """A table with a simple head rule: the first column left-aligned (names), the others right (numbers)."""
    out = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for i, column in enumerate(columns):
        out.add_column(column, justify="left" if i == 0 else "right")
    return out


def captioned(title: str, detail: str, content: RenderableType) -> RenderableType:
    """A bold title and a dim explanation line (wrapped to the terminal) above ``content``."""
    return Group(Text(title, style="bold"), Text(detail, style="dim"), content)


def renderables_to_text(parts: list[RenderableType], width: int = 100) -> str:
    """Rich renderables as plain text (no colours, ``width`` columns), for saving to a file."""
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    for part in parts:
        console.print(part)
    return console.export_text()

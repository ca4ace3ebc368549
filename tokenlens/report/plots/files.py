"""Figures as PNG bytes and SVG text, and written to disk atomically."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from tokenlens.io import atomic_write_bytes, atomic_write_text

PNG_DPI = 144


@contextmanager
def _quiet_fonts() -> Iterator[None]:
    """Token text in scripts the default font lacks is drawn as boxes; do not warn once per glyph."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        warnings.filterwarnings("ignore", message=r"Matplotlib currently does not support .* natively")
        yield


def figure_png(fig: Figure, dpi: int = PNG_DPI) -> bytes:
    """The figure as PNG bytes (white background)."""
    buffer = io.BytesIO()
    with _quiet_fonts():
        fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def figure_svg(fig: Figure) -> str:
    """The figure as SVG text: text drawn as paths, no date, salted ids (the same figure built twice gives
    the same text)."""
    buffer = io.BytesIO()
    with _quiet_fonts(), matplotlib.rc_context({"svg.hashsalt": "tokenlens", "svg.fonttype": "path"}):
        fig.savefig(buffer, format="svg", facecolor="white", metadata={"Date": None})
    return buffer.getvalue().decode("utf-8")


def save_figure(fig: Figure, stem: str | Path) -> tuple[Path, Path]:
    """Write ``{stem}.png`` and ``{stem}.svg``, each atomically (a crash leaves the old file or the new one).

    The suffixes are appended, so a stem like ``report.L1.H0`` keeps its dots. Missing folders are created.

    Returns:
        The PNG path and the SVG path.
    """
    stem = Path(stem)
    png, svg = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")
    atomic_write_bytes(png, figure_png(fig))
    atomic_write_text(svg, figure_svg(fig))
    return png, svg

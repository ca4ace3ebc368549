"""Terminal rendering of an attribution result with rich (rendering only: no model runs here)."""

from __future__ import annotations

import io

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from tokenlens.attribution.result import LogitAttribution

BAR_WIDTH = 16


def show_token(token: str) -> str:
    """A token's text with whitespace and control characters visible (``' Paris'``, ``'\\n'``)."""
    return repr(token)


def _bar(value: float, scale: float) -> Text:
    """A signed bar: green to the right for a positive contribution, red to the left for a negative one."""
    cells = round(BAR_WIDTH * abs(value) / scale) if scale > 0 else 0
    left = Text(" " * (BAR_WIDTH - cells) + "█" * cells, style="red") if value < 0 else Text(" " * BAR_WIDTH)
    right = Text("█" * cells, style="green") if value > 0 else Text("")
    return Text.assemble(left, "│", right)


def render_attribution(result: LogitAttribution) -> RenderableType:
    """The prediction, its top alternatives and the per-component split of the target's logit."""
    d = result.decomposition
    header = Table.grid(padding=(0, 1))
    header.add_column(style="bold")
    header.add_column()
    header.add_row("model", Text(f"{result.model}  ({result.dtype}, {result.device})"))
    header.add_row("prompt", Text(" ".join(show_token(t) for t in result.tokens), overflow="fold"))
    header.add_row(
        "position",
        Text(
            f"{result.position} of {len(result.tokens)} (token {show_token(result.tokens[result.position])})"
        ),
    )
    t = result.target
    scores = f"logit {t.logit:.4f}  p {t.prob:.4f}  log p {result.logprob:.3f}"
    header.add_row("target", Text(f"{show_token(t.token)} (id {t.id})  {scores}"))
    top = "  ".join(f"{show_token(s.token)} {s.prob:.3f}" for s in result.top)
    header.add_row("top", Text(top, overflow="fold"))

    table = Table(title="Direct logit attribution (logit units)", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("component")
    table.add_column("logit", justify="right")
    table.add_column("share", justify="right")
    table.add_column("- │ +")
    scale = float(d.contributions.abs().max()) or 1.0
    for name, value in d.as_dict().items():
        style = "green" if value > 0 else "red" if value < 0 else ""
        share = f"{100 * value / d.logit:+.0f}%" if abs(d.logit) > 1e-9 else ""
        table.add_row(name, Text(f"{value:+.4f}", style=style), share, _bar(value, scale))
    verdict = Text("✓ exact", style="green") if d.exact else Text("✗ NOT EXACT", style="bold red")
    check = Text.assemble(
        f"sum of components {d.total:.6f} | model logit {d.logit:.6f} | error {d.error:.1e} "
        f"(tolerance {d.tolerance:.1e}) ",
        verdict,
        f"\nfinal-norm scale s = {d.scale:.5f}; direct attribution: each component's own path to the logit.",
    )
    return Group(header, table, check)


def print_attribution(result: LogitAttribution, console: Console | None = None) -> None:
    """Print :func:`render_attribution` to ``console`` (default: stdout)."""
    (console or Console()).print(render_attribution(result))


def attribution_to_text(result: LogitAttribution, width: int = 100) -> str:
    """The terminal view as plain text (no colours), for saving to a file."""
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(render_attribution(result))
    return console.export_text()

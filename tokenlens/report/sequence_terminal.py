"""Terminal view of a whole-answer attribution (rendering only): the answer coloured by one component's share
of each step, a compact steps × components table and the answer's log-probability split."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tokenlens.attribution.sequence_result import SequenceAttribution
from tokenlens.report.kit import terminal
from tokenlens.report.kit.text import QUANTITY_WORDS, cut, show_token, visible
from tokenlens.report.sequence_layout import (
    colour_component,
    compact_rows,
    shares,
    source_words,
    top_components,
)


def render_sequence(result: SequenceAttribution, colour_by: str | None = None) -> list[RenderableType]:
    """The whole terminal view of ``result``; the answer's tokens coloured by ``colour_by`` (default: see
    :func:`~tokenlens.report.sequence_layout.colour_component`)."""
    return [_header(result), _answer(result, colour_by), _steps(result), _sequence(result)]


def _header(r: SequenceAttribution) -> RenderableType:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold")
    grid.add_column()
    step = r.steps[0]
    grid.add_row("model", Text(visible(f"{r.model}  ({step.dtype}, {step.device})")))
    grid.add_row("prompt", Text(" ".join(show_token(t) for t in r.prompt_tokens), overflow="fold"))
    grid.add_row("answer", Text(f"{len(r.answer_ids)} tokens, {source_words(r)}"))
    what = QUANTITY_WORDS[r.quantity][0]
    if step.contrast is not None:
        what += f" against {show_token(step.contrast.token)}"
    grid.add_row("each step", Text(f"the answer token's {what}, split exactly"))
    parts = [grid]
    for note in r.notes:
        parts.append(Text(f"note: {visible(note)}", style="yellow"))
    return Group(*parts)


def _answer(r: SequenceAttribution, colour_by: str | None) -> RenderableType:
    component = colour_component(r, colour_by)
    line = Text()
    for token, share in zip(r.answer_tokens, shares(r, component), strict=True):
        level = int(40 + 160 * min(1.0, abs(share)))
        colour = f"rgb(0,{level},0)" if share > 0 else f"rgb({level},0,0)" if share < 0 else "default"
        line.append(show_token(token), style=f"on {colour}")
        line.append(" ")
    listed = ", ".join(
        f"{show_token(t)} {s:+.0%}" for t, s in zip(r.answer_tokens[:12], shares(r, component))
    )
    detail = (
        f"each token shaded by {component}'s share of its step (its term / Σ |terms|): green up, red down; "
        + listed
    )
    return terminal.captioned(f"Answer, coloured by {component}", detail, line)


def _steps(r: SequenceAttribution) -> RenderableType:
    columns = top_components(r, 4)
    units = QUANTITY_WORDS[r.quantity][1]
    table = terminal.table("pos", "token", "value", *columns, "rest")
    table.columns[1].justify = "left"
    table.columns[1].no_wrap = True
    peak = float(r.grid.abs().max()) or 1.0
    for position, token, value, terms, rest in compact_rows(r, columns):
        table.add_row(
            str(position),
            Text(cut(show_token(token), 14)),
            f"{value:+.2f}",
            *(terminal.signed(v, 2, 0.5 * peak) for v in terms),
            terminal.signed(rest, 2),
        )
    exact = all(s.decomposition.exact for s in r.steps)
    worst = max(s.decomposition.error for s in r.steps)
    detail = (
        f"one row per answer token ({units}): the {len(columns)} components with the largest terms over the "
        f"answer, the rest summed; each row sums to its value (largest error {worst:.1e}) "
    )
    return terminal.captioned("Steps × components", detail, Group(table, terminal.exact_mark(exact)))


def _sequence(r: SequenceAttribution) -> RenderableType:
    s = r.sequence
    table = terminal.table("component", "log p", "- │ +")
    values = s.as_dict()
    scale = max(abs(v) for v in values.values()) or 1.0
    for name, value in values.items():
        table.add_row(name, terminal.signed(value, 4), terminal.bar(value, scale))
    check = Text.assemble(
        f"sum of components {s.total:.6f} | log p(answer) {s.logprob:.6f} | error {s.error:.1e} "
        f"(tolerance {s.tolerance:.1e}) ",
        terminal.exact_mark(s.exact),
    )
    detail = (
        f"log p(answer) = Σ over the {len(r.answer_ids)} steps of log p(token) = {s.logprob:.4f} nats; each "
        "step's log-probability splits exactly, so the sum does: a component's term is its sum over the steps"
    )
    return terminal.captioned("The answer's log-probability, split", detail, Group(table, check))

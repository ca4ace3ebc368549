"""Terminal rendering of an attribution result with rich (rendering only: no model runs here).

:func:`render_report` is the whole terminal view: the attribution (:func:`render_attribution`: prediction,
components, finer splits), then each section given as ``(key, result)`` as its kind's
:attr:`~tokenlens.report.sections.SectionKind.to_table`.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tokenlens.attribution.result import LogitAttribution, SourceSplit
from tokenlens.report.kit.terminal import bar, exact_mark, signed
from tokenlens.report.kit.text import show_token
from tokenlens.report.layout import split_rows
from tokenlens.report.sections import section_kind
from tokenlens.report.words import rounding_note


def render_report(
    result: LogitAttribution, sections: Sequence[tuple[str, object]] = ()
) -> list[RenderableType]:
    """The attribution, then each section's terminal table, in the given order.

    Raises:
        ValueError: An unknown section key.
    """
    return [
        render_attribution(result),
        *(section_kind(key).to_table(value, result) for key, value in sections),
    ]


_QUANTITY_SHORT = {"logit": "logit", "logit_difference": "logit diff", "logprob": "log p"}


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
    if result.contrast is not None:
        c = result.contrast
        explained = f"explaining logit[{show_token(t.token)}] − logit[{show_token(c.token)}] = {d.logit:.4f}"
        header.add_row(
            "vs", Text(f"{show_token(c.token)} (id {c.id})  logit {c.logit:.4f}  p {c.prob:.4f}; {explained}")
        )
    if result.quantity == "logprob":
        header.add_row("explains", Text(f"log p({show_token(t.token)}) = {d.logit:.4f} (not the logit)"))
    top = "  ".join(f"{show_token(s.token)} {s.prob:.3f}" for s in result.top)
    header.add_row("top", Text(top, overflow="fold"))

    title = (
        "Direct attribution of log p(target) (nats)"
        if result.quantity == "logprob"
        else ("Direct logit attribution (logit units)")
    )
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("component")
    table.add_column("logit", justify="right")
    table.add_column("share", justify="right")
    table.add_column("- │ +")
    scale = float(d.contributions.abs().max()) or 1.0
    for name, value in d.as_dict().items():
        style = "green" if value > 0 else "red" if value < 0 else ""
        share = f"{100 * value / d.logit:+.0f}%" if abs(d.logit) > 1e-9 else ""
        table.add_row(name, Text(f"{value:+.4f}", style=style), share, bar(value, scale))
    check = Text.assemble(
        f"sum of components {d.total:.6f} | model {_QUANTITY_SHORT[result.quantity]} "
        f"{d.logit:.6f} | error {d.error:.1e} "
        f"(tolerance {d.tolerance:.1e}) ",
        exact_mark(d.exact),
        f"\nfinal-norm scale s = {d.scale:.5f}; direct attribution: each component's own path to the logit.",
        f"\n{rounding_note(result)}" if d.model_value is not None else "",
    )
    return Group(header, table, check, *_drilldowns(result))


def _drilldowns(result: LogitAttribution) -> list[RenderableType]:
    parts: list[RenderableType] = []
    if result.heads is not None:
        parts.append(_heads_table(result))
    if result.neurons is not None and result.neurons.layers:
        parts.append(_neurons_table(result))
    if result.experts is not None and result.experts.layers:
        parts.append(_experts_table(result))
    parts += [_sources_view(result, split) for split in result.sources]
    return parts


def _heads_table(result: LogitAttribution) -> Table:
    contributions = result.heads.contributions
    strong = 0.5 * float(contributions.abs().max())
    table = Table(
        title="Heads L{i}.H{h} (logit units; each row sums to L{i}.attn)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("layer")
    for h in range(contributions.shape[1]):
        table.add_column(f"H{h}", justify="right")
    for i, row in enumerate(contributions.tolist()):
        table.add_row(f"L{i}", *(signed(v, 2, strong) for v in row))
    return table


def _neurons_table(result: LogitAttribution, limit: int = 15) -> RenderableType:
    """The ``limit`` neurons with the largest |contribution| among every layer's top ones (the title says how
    many of how many are shown)."""
    n = result.neurons
    rows = sorted(
        ((abs(value), name, value, act) for name, _, value, act in split_rows(result, "neurons")),
        reverse=True,
    )
    strong = 0.5 * rows[0][0] if rows else 0.0
    shown = min(limit, len(rows))
    per_layer = f"the top {n.ids.shape[1]} per dense MLP layer"
    title = (
        f"Top neurons: {per_layer}, {len(rows)} in all"
        if shown == len(rows)
        else f"Top neurons: the {shown} largest |logit| of {len(rows)}, {per_layer} (all: other formats)"
    )
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("neuron", "logit", "activation"):
        table.add_column(column, justify="left" if column == "neuron" else "right")
    for _, name, value, act in rows[:limit]:
        table.add_row(name, signed(value, 3, strong), f"{act:+.3f}")
    return Group(Text(title, style="bold"), table)  # the title on its own line, not wrapped to the table


def _experts_table(result: LogitAttribution) -> Table:
    e = result.experts
    strong = 0.5 * float(e.contributions.abs().max())
    table = Table(
        title="Routed experts: L{i}.E{e} (router weight)", box=box.SIMPLE_HEAD, title_justify="left"
    )
    table.add_column("layer")
    table.add_column("experts")
    for r, layer in enumerate(e.layers):
        cells = Text()
        for eid, value, weight in zip(
            e.expert_ids[r].tolist(), e.contributions[r].tolist(), e.router_weights[r].tolist(), strict=False
        ):
            cells.append(f"E{eid} ")
            cells.append_text(signed(value, 3, strong))
            cells.append(f" ({weight:.2f})   ")
        table.add_row(f"L{layer}", cells)
    return table


def _sources_view(result: LogitAttribution, split: SourceSplit) -> RenderableType:
    """The prompt, each source token shaded by its contribution (green up, red down), and the top sources."""
    values = split.contributions[: result.source_end].tolist()
    peak = max((abs(v) for v in values), default=0.0) or 1.0
    prompt = Text()
    for token, value in zip(result.source_tokens, values):
        level = int(40 + 160 * abs(value) / peak)
        colour = f"rgb(0,{level},0)" if value > 0 else f"rgb({level},0,0)" if value < 0 else "default"
        prompt.append(show_token(token), style=f"on {colour}")
        prompt.append(" ")
    ranked = sorted(range(len(values)), key=lambda j: -abs(values[j]))[:8]
    top = "  ".join(f"S{j} {show_token(result.source_tokens[j])} {values[j]:+.3f}" for j in ranked)
    title = Text(f"Sources through {split.name} (value bias {split.value_bias:+.4f})", style="bold")
    return Group(title, prompt, Text(top, overflow="fold"))

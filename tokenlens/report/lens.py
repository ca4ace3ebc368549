"""Rendering of a logit lens (rendering only: reads a :class:`~tokenlens.attribution.lens.LogitLens`)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tokenlens.attribution.lens import LogitLens
from tokenlens.report.terminal import show_token


def lens_to_dict(lens: LogitLens) -> dict[str, Any]:
    """Every number of the lens: per depth and kept position, the top-k and the target's logit/prob/rank."""
    positions = lens.positions.tolist()
    return {
        "target": {"id": lens.target_id, "token": lens.target},
        "depths": list(lens.depths),
        "positions": positions,
        "cells": [
            {
                "depth": depth,
                "position": position,
                "top": [
                    {"id": i, "token": t, "prob": p}
                    for i, t, p in zip(
                        lens.top_ids[d, c].tolist(), lens.top_tokens[d][c], lens.top_probs[d, c].tolist()
                    )
                ],
                "target_logit": float(lens.target_logit[d, c]),
                "target_prob": float(lens.target_prob[d, c]),
                "target_rank": int(lens.target_rank[d, c]),
                "scale": float(lens.scale[d, c]),
            }
            for d, depth in enumerate(lens.depths)
            for c, position in enumerate(positions)
        ],
    }


def lens_table(lens: LogitLens, position: int | None = None) -> RenderableType:
    """One row per depth at one kept position (default: the last kept): top tokens, target p and rank."""
    kept = lens.positions.tolist()
    column = kept.index(position) if position in kept else len(kept) - 1
    position = kept[column]
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("depth", "top tokens (prob)", f"p({show_token(lens.target)})", "rank"):
        table.add_column(name, justify="left" if name in ("depth", "top tokens (prob)") else "right")
    for d, depth in enumerate(lens.depths):
        tops = "  ".join(
            f"{show_token(t)} {p:.2f}"
            for t, p in zip(lens.top_tokens[d][column], lens.top_probs[d, column].tolist())
        )
        table.add_row(
            depth,
            Text(tops, overflow="ellipsis", no_wrap=True),
            f"{float(lens.target_prob[d, column]):.3f}",
            str(int(lens.target_rank[d, column])),
        )
    token = show_token(lens.tokens[position])
    detail = (
        f"position {position} (token {token}); each depth's stream decoded through the final norm with its "
        "own scale and the head; the last depth is the model's output"
    )
    return Group(Text("Logit lens", style="bold"), Text(detail, style="dim"), table)

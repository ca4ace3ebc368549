"""Locate: turn a causal trace into a recommendation of where to edit.

A causal trace (:mod:`tokenlens.causal.tracing`) restores the MLP outputs of a window of layers at each
noised position and measures how much of the target's probability comes back. :func:`location_from` reads
its ``mlp`` grid:

1. rows whose window includes layer 0 are reported but not chosen: layer 0's MLP acts on the token
   alone (an extension of the embedding), so restoring it restores the noised token's identity — on the
   default model it restores 43–98% of the gap on the facts we traced, at the noised token itself —
   and an edit there would change every context the token appears in;
2. the **position** and **peak** are the noised position and row whose restore restores the most;
3. the **layers** are the peak row's window.

"The target is carried at position p (token …) by the MLPs of layers a–b": the place a key → value edit
of the MLP (or an adapter restricted to those layers) should act. The trace stays in the result with
every number behind the choice. When the noise does not lower the metric, or no MLP restore brings
anything back, there is nothing to locate and the error says so.

The default window is a sixth of the layers (5 of SmolLM2's 30; the paper used 10 of GPT-2 XL's 48):
single layers restore a few percent each, too little to rank above the noise of a few samples. Without a
subject, every prompt position but the last is noised (the last token is where the prediction is read).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tokenlens.attribution.inputs import decode_token
from tokenlens.causal.grid_results import Location, PatchGrids
from tokenlens.causal.grids import layer_window
from tokenlens.causal.metrics import Metric, encode, metric_for
from tokenlens.causal.tracing import SEED, causal_trace, find_subject, parse_positions
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import ArchitectureSpec

SAMPLES = 3
"""Noise draws a location averages (fewer than a full trace's: a location needs the peak, not every cell)."""


def default_window(n_layers: int) -> int:
    """MLP layers restored together per row: a sixth of the layers, at least 1."""
    return max(1, n_layers // 6)


def location_from(trace: PatchGrids) -> Location:
    """The location a causal trace with an ``mlp`` grid points to (see the module docstring).

    Raises:
        TokenlensError: The trace has no ``mlp`` grid or noised positions, the noise did not lower the
            metric, or no MLP restore at a noised position (past layer 0) restores anything.
    """
    if trace.trace is None:
        raise TokenlensError(
            "a location is read from a causal trace (noised positions), not a two-prompt grid"
        )
    try:
        grid = trace.grid("mlp")
    except KeyError:
        raise TokenlensError("a location needs the trace's mlp grid: include mlp in its kinds") from None
    if not trace.clean > trace.corrupted:
        raise TokenlensError(
            f"the noise did not lower the metric (clean {trace.clean:.4g}, noised {trace.corrupted:.4g}): "
            "nothing to locate; noise more of the prompt or raise the noise scale"
        )
    n_layers = len(grid.rows)
    rows = [i for i in range(n_layers) if layer_window(i, grid.window, n_layers)[0] >= 1]
    columns = [c for c, p in enumerate(grid.positions) if p in trace.trace.noised]
    if not rows or not columns:
        raise TokenlensError("the trace restored no noised position past layer 0: nothing to locate")
    restored = trace.restored(grid)[rows][:, columns]  # (rows, noised positions)
    row, column = divmod(int(torch.argmax(restored)), restored.shape[1])
    peak = float(restored[row, column])
    if not peak > 0:
        raise TokenlensError("no MLP restore at a noised position brings the metric back: nothing to locate")
    layers = layer_window(rows[row], grid.window, n_layers)
    position = grid.positions[columns[column]]
    return Location(
        trace=trace,
        position=position,
        token=trace.tokens[position],
        layers=(layers[0], layers[-1]),
        peak_layer=rows[row],
        peak=peak,
        last_subject_token=position == trace.trace.noised[-1],
    )


def locate_ids(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    metric: Metric,
    noised: Sequence[int] | None = None,
    *,
    tokens: Sequence[str] | None = None,
    subject: str | None = None,
    samples: int = SAMPLES,
    window: int | None = None,
    seed: int = SEED,
    batch_size: int | None = None,
) -> Location:
    """:func:`locate` on token ids ``(1, seq)``: trace the MLPs (and the stream) at the noised positions.

    ``noised`` defaults to every position before the metric's; ``window`` to :func:`default_window`.

    Raises:
        TokenlensError: A one-token prompt without ``noised``, or see :func:`location_from`.
    """
    if noised is None:
        if metric.position < 1:
            raise TokenlensError(
                "a one-token prompt has nothing before the prediction to locate: give more text"
            )
        noised = range(metric.position)
    noised = sorted(set(noised))
    trace = causal_trace(
        model,
        spec,
        input_ids,
        metric,
        noised,
        ("mlp",),
        tokens=tokens,
        subject=subject,
        samples=samples,
        window=window or default_window(len(spec.layer_list(model))),
        seed=seed,
        columns=noised,
        batch_size=batch_size,
    )
    return location_from(trace)


def locate(
    loaded: LoadedModel,
    prompt: str,
    target: str | None = None,
    *,
    subject: str | None = None,
    positions: str | None = None,
    first_token: bool = False,
    chat: bool = False,
    samples: int = SAMPLES,
    window: int | None = None,
    seed: int = SEED,
    batch_size: int | None = None,
) -> Location:
    """Where ``prompt`` carries ``target``: the position and the MLP layers to edit.

    Args:
        loaded: The model.
        prompt: The prompt, e.g. ``"The Eiffel Tower is located in the city of"``.
        target: The token watched, as decoded text (``" Paris"``); default: the model's top-1.
        subject: Words of the prompt to noise (``"The Eiffel Tower"``); default: every position but the last.
        positions: Or the positions to noise (``"0-3"``).
        first_token: Accept a multi-token target and watch its first token.
        chat: Wrap the prompt as a user turn with the chat template.
        samples / window / seed / batch_size: The trace's (:func:`~tokenlens.causal.tracing.causal_trace`).

    Raises:
        TokenlensError: Any bad input, or nothing to locate; one line.
    """
    if subject is not None and positions is not None:
        raise TokenlensError("give the subject to noise or its positions, not both")
    ids = encode(loaded, prompt, chat=chat)
    if subject is not None:
        noised = find_subject(loaded.tokenizer, ids[0].tolist(), subject)
    elif positions is not None:
        noised = parse_positions(positions, ids.shape[1])
    else:
        noised = None
    metric = metric_for(loaded, ids[0].tolist(), kind="prob", target=target, first_token=first_token)
    tokens = [decode_token(loaded.tokenizer, i) for i in ids[0].tolist()]
    return locate_ids(
        loaded.model,
        loaded.spec,
        ids,
        metric,
        noised,
        tokens=tokens,
        subject=subject,
        samples=samples,
        window=window,
        seed=seed,
        batch_size=batch_size,
    )

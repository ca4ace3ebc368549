"""Position-resolved activation patching: layer × position and head × position grids, batched.

Activation patching per component (:mod:`tokenlens.causal.activation_patching`) says *which* component carries
the difference between a clean and a corrupted prompt; a grid says *where in the prompt*. For every layer
``i`` and prompt position ``p`` it measures the metric of the corrupted run with one activation at ``(i, p)``
written from the clean run:

- ``resid``: the residual stream entering layer ``i`` (``L{i}.resid``); at layer 0 that is the embedding, so
  the row shows which input tokens matter, and later rows how that information moves;
- ``attn`` / ``mlp``: layer ``i``'s attention / MLP output (with ``window`` > 1, the outputs of the
  ``window`` layers around ``i`` together, as in causal tracing);
- ``heads``: one row per head ``L{i}.H{h}``, its slice of ``o_proj``'s input (its write through its own slice
  of ``o_proj``).

``reverse`` writes the corrupted run's activation into the clean run instead (how much each cell breaks).

**Batching.** A cell differs from the plain corrupted run only in the rows of one hook point's activation,
so many cells share one forward pass: the corrupted prompt is repeated ``B`` times and each batch row gets its
own cell's write (one hook per module, each writing its rows' positions). A 24-layer × 16-position grid of
three kinds is 1,152 cells and, in batches of 128, nine forwards.

**Positions that cannot matter are not run.** A position before the first one where the two runs differ
holds the same activation in both, and a position after the metric's cannot reach it (causal attention):
the grid covers positions ``first difference .. metric position``, and the prompt is cut after the metric's
position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from tokenlens.attribution.inputs import decode_token
from tokenlens.causal.activation_patching import check_same_tokenizer, clean_source
from tokenlens.causal.effects import same_length
from tokenlens.causal.grid_results import GRID_KINDS, PatchGrid, PatchGrids
from tokenlens.causal.interventions import Edit, record, replace
from tokenlens.causal.metrics import Metric, encode, metric_for
from tokenlens.causal.sites import Site, head_count
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import ArchitectureSpec, virtual_tokens
from tokenlens.progress import report

CLEAN_INTO_CORRUPTED = "clean → corrupted"
CORRUPTED_INTO_CLEAN = "corrupted → clean"
TOKENS_PER_BATCH = 4096
"""The default batch holds about this many tokens (rows × prompt length), at most :data:`MAX_BATCH` rows."""
MAX_BATCH = 256


@dataclass(frozen=True)
class Cell:
    """One patched run of a grid: what is written where.

    Attributes:
        restore: Sites whose activation at ``position`` is taken from the source run.
        position: The prompt position written.
        frozen: Sites held, at ``position``, at the value they had on the unpatched target run of the same
            sample (a causal trace's "severed" paths).
        sample: Which noise sample's target run (0 without noise).
        layer: The first layer changed by the cell's own intervention (installed by ``run_cells``'
            ``interventions``, beyond ``restore`` / ``frozen``); ``None`` when it has none.
    """

    restore: tuple[Site, ...]
    position: int
    frozen: tuple[Site, ...] = ()
    sample: int = 0
    layer: int | None = None


def default_batch(seq: int) -> int:
    """Rows per forward for ``seq``-token prompts (:data:`TOKENS_PER_BATCH`, at most :data:`MAX_BATCH`)."""
    return max(1, min(MAX_BATCH, TOKENS_PER_BATCH // max(seq, 1)))


def _row_edit(rows: list[int], positions: list[int], values: torch.Tensor, base: torch.Tensor | None) -> Edit:
    """An edit writing ``values[k]`` at ``(rows[k], positions[k])`` of the activation (or of ``base``
    ``(batch, seq, width)``, which then replaces the whole activation first)."""
    row_index, position_index = (
        torch.tensor(rows, dtype=torch.long),
        torch.tensor(positions, dtype=torch.long),
    )

    def edit(a: torch.Tensor) -> torch.Tensor:
        new = a.clone() if base is None else base.to(a).clone()
        if len(rows):
            new[row_index.to(a.device), position_index.to(a.device)] = values.to(a)
        return new

    return edit


def _noise_edit(noise: torch.Tensor, samples: list[int]) -> Edit:
    """An edit adding ``noise[samples[r]]`` ``(seq, width)`` to batch row ``r`` of the embedding output."""
    index = torch.tensor(samples)

    def edit(a: torch.Tensor) -> torch.Tensor:
        return a + noise[index].to(a)

    return edit


def _first_layer(cell: Cell) -> int:
    """The first layer a cell changes anything in (0 when it changes the embedding or nothing)."""
    layers = [s.layer for s in cell.restore + cell.frozen if s.layer is not None]
    return min(layers + ([] if cell.layer is None else [cell.layer]), default=0)


@contextmanager
def skip_layers(model: nn.Module, spec: ArchitectureSpec, count: int) -> Iterator[None]:
    """Make the first ``count`` decoder layers pass their input through unchanged, for the ``with`` block.

    Used when the stream entering layer ``count`` is known already (recorded on the same run) and is written
    there by a hook: the layers before it would only recompute it. Each layer's ``forward`` is shadowed by
    an instance attribute returning ``hidden_states`` (the decoder layers of every supported family take the
    stream as their first argument and return it); the shadow is deleted in a ``finally`` block.
    """
    layers = list(spec.layer_list(model))[:count]

    def passthrough(hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden_states

    try:
        for layer in layers:
            layer.forward = passthrough
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)


def run_cells(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    metric: Metric,
    cells: Sequence[Cell],
    source: Mapping[str, torch.Tensor],
    *,
    held: Mapping[str, torch.Tensor] | None = None,
    noise: torch.Tensor | None = None,
    batch_size: int | None = None,
    label: str = "",
    interventions: Callable[[list[int]], AbstractContextManager] | None = None,
) -> torch.Tensor:
    """The metric of every cell, ``(cells,)`` float64, in batches of forward passes.

    Cells are batched in order of the first layer they change. When ``held`` has the target run's stream
    entering that layer (``L{i}.resid``), a batch starts there: the layers before it are skipped
    (:func:`skip_layers`) and the recorded stream is written as the layer's input, which is what those
    layers would compute again (the cells change nothing before it).

    Args:
        model / spec: The model the cells run on.
        input_ids: ``(1, seq)`` the target run's prompt (the metric position must lie inside it).
        metric: What each run is measured by.
        cells: The cells.
        source: Site name -> ``(1 or samples, seq, width)`` its value on the source run (per sample when the
            source runs are noised).
        held: Site name -> ``(1 or samples, seq, width)`` its value on the unpatched target run (of each
            noise sample), for the cells' ``frozen`` sites and for starting batches past layer 0.
        noise: ``(samples, seq, d_model)`` added to the embedding output of each cell's target run (causal
            tracing), or ``None``.
        batch_size: Rows per forward (default :func:`default_batch`).
        label: What the cells are, for progress reports (:func:`tokenlens.progress.report` after each
            batch; none when empty).
        interventions: For cells with interventions of their own (their ``layer``):
            ``interventions(indices)`` is a context installing them for one forward, batch row ``r`` getting
            those of ``cells[indices[r]]``.
    """
    held = held or {}
    seq = input_ids.shape[1]
    size = batch_size or default_batch(seq)
    device = spec.module(model, spec.embed).weight.device
    keep = torch.tensor([metric.position], device=device)
    order = sorted(range(len(cells)), key=lambda k: _first_layer(cells[k]))
    out = torch.empty(len(cells), dtype=torch.float64)
    for start in range(0, len(cells), size):
        chosen = order[start : start + size]
        chunk = [cells[k] for k in chosen]
        samples = [cell.sample for cell in chunk]
        first = min(_first_layer(cell) for cell in chunk)
        entry = Site(f"L{first}.resid", "resid", first)
        skip = first if first > 0 and entry.name in held else 0
        writes: dict[Site, tuple[list[int], list[int], list[torch.Tensor]]] = {}
        if skip:
            writes[entry] = ([], [], [])
        for row, cell in enumerate(chunk):
            for site, values in [(s, source) for s in cell.restore] + [(s, held) for s in cell.frozen]:
                table = values[site.name]
                rows, positions, vectors = writes.setdefault(site, ([], [], []))
                rows.append(row)
                positions.append(cell.position)
                vectors.append(table[cell.sample if table.shape[0] > 1 else 0, cell.position])
        edits = {}
        for site, (rows, positions, vectors) in writes.items():
            values = torch.stack(vectors) if vectors else torch.empty(0)
            base = _per_row(held[entry.name], samples) if skip and site == entry else None
            edits[site] = _row_edit(rows, positions, values, base)
        if noise is not None and not skip:
            embed = Site("embed", "embed")
            if embed in edits:
                raise ValueError("a noised run cannot also restore the embedding")
            edits[embed] = _noise_edit(noise, samples)
        ids = input_ids.to(device).expand(len(chunk), seq)
        own = nullcontext() if interventions is None else interventions(chosen)
        with torch.no_grad(), replace(model, spec, edits), own, skip_layers(model, spec, skip):
            logits = model(
                input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, logits_to_keep=keep
            ).logits[:, 0]
        for row, k in enumerate(chosen):
            out[k] = float(metric.of(logits[row]))
        if label:
            report(label, min(start + size, len(cells)), len(cells))
    return out


def _per_row(table: torch.Tensor, samples: list[int]) -> torch.Tensor:
    """``table`` ``(1 or samples, seq, width)`` as one row per batch row ``(batch, seq, width)``."""
    if table.shape[0] == 1:
        return table.expand(len(samples), *table.shape[1:])
    return table[torch.tensor(samples)]


def layer_window(layer: int, window: int, n_layers: int) -> range:
    """The ``window`` layers centred on ``layer`` (``layer - window//2 ..``), clipped to the model."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def grid_rows(
    kind: str, n_layers: int, n_heads: int, window: int = 1
) -> list[tuple[str, tuple[Site, ...], tuple[Site, ...]]]:
    """``(row name, restored sites, frozen-sites-after-restore)`` per row of a grid of ``kind``.

    ``resid-mlp-severed`` / ``resid-attn-severed`` restore ``L{i}.resid`` and freeze the MLP / attention
    output of every layer ``≥ i`` (the ones the restored state flows through) at that position.
    """
    if kind == "heads":
        return [
            (f"L{i}.H{h}", (Site(f"L{i}.H{h}", "head", i, h),), ())
            for i in range(n_layers)
            for h in range(n_heads)
        ]
    rows = []
    for i in range(n_layers):
        if kind == "resid":
            rows.append((f"L{i}", (Site(f"L{i}.resid", "resid", i),), ()))
        elif kind in ("attn", "mlp"):
            sites = tuple(Site(f"L{j}.{kind}", kind, j) for j in layer_window(i, window, n_layers))
            rows.append((f"L{i}", sites, ()))
        elif kind in ("resid-mlp-severed", "resid-attn-severed"):
            part = kind.split("-")[1]
            frozen = tuple(Site(f"L{j}.{part}", part, j) for j in range(i, n_layers))
            rows.append((f"L{i}", (Site(f"L{i}.resid", "resid", i),), frozen))
        else:
            raise TokenlensError(f"unknown grid kind {kind!r}: use {', '.join(GRID_KINDS)}")
    return rows


def check_kinds(kinds: str | Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    """``kinds`` (comma-separated text or names) as a tuple without repeats.

    Raises:
        TokenlensError: None given, or one not in ``allowed``.
    """
    items = kinds.split(",") if isinstance(kinds, str) else list(kinds)
    names = tuple(dict.fromkeys(k.strip() for k in items if k.strip()))
    if not names:
        raise TokenlensError(f"no grid kinds given: use {', '.join(allowed)}")
    for name in names:
        if name not in allowed:
            raise TokenlensError(f"unknown grid kind {name!r}: use {', '.join(allowed)}")
    return names


def refuse_virtual(model: nn.Module) -> None:
    """Grids pair prompt positions one to one: refuse prompt-tuning adapters, whose virtual tokens shift them.

    Raises:
        TokenlensError: The model prepends virtual tokens.
    """
    if virtual_tokens(model):
        raise TokenlensError(
            "patching grids and causal traces do not support prompt-tuning adapters (virtual tokens shift "
            "the positions); use --virtual to measure the virtual tokens' effect"
        )


def all_sites(rows: Sequence[tuple[str, tuple[Site, ...], tuple[Site, ...]]], n_layers: int) -> list[Site]:
    """Every site a list of rows restores or freezes, and the stream entering each of the ``n_layers``
    layers (recorded so that batches can start past layer 0), once each."""
    entries = [Site(f"L{i}.resid", "resid", i) for i in range(n_layers)]
    return list(dict.fromkeys([site for _, restore, frozen in rows for site in restore + frozen] + entries))


def patch_grids(
    model: nn.Module,
    spec: ArchitectureSpec,
    clean_ids: torch.Tensor,
    corrupted_ids: torch.Tensor,
    metric: Metric,
    kinds: Sequence[str] = ("resid", "attn", "mlp"),
    *,
    tokens: Sequence[str] | None = None,
    clean_model: nn.Module | None = None,
    reverse: bool = False,
    window: int = 1,
    batch_size: int | None = None,
) -> PatchGrids:
    """Patching grids between a clean and a corrupted prompt of the same token length.

    Args:
        model / spec: The model the corrupted prompt runs on (and the clean one, unless ``clean_model``).
        clean_ids / corrupted_ids: ``(1, seq)`` each.
        metric: What is measured (its position lies in the prompt).
        kinds: Any of ``resid``, ``attn``, ``mlp``, ``heads``.
        tokens: The prompt's decoded tokens, for labels (default: ``id N``).
        clean_model: The model the clean run uses (same architecture), e.g. a fine-tune patched into its base.
        reverse: Write corrupted activations into the clean run instead.
        window: Layers restored together around each row for ``attn`` / ``mlp``.
        batch_size: Rows per forward (default: about 4,096 tokens per batch).

    Raises:
        TokenlensError: Different token lengths, unknown kinds, a window below 1, virtual tokens.
    """
    kinds = check_kinds(kinds, GRID_KINDS)
    same_length(clean_ids, corrupted_ids, "a patching grid")
    if window < 1:
        raise TokenlensError(f"the layer window must be 1 or more, got {window}")
    if metric.position >= clean_ids.shape[1]:
        raise TokenlensError(f"the metric reads position {metric.position}, outside this prompt")
    refuse_virtual(model)
    source_model, source_spec = clean_source(model, spec, clean_model)
    refuse_virtual(source_model)
    end = metric.position + 1  # later positions cannot reach the metric
    clean_ids, corrupted_ids = clean_ids[:, :end], corrupted_ids[:, :end]
    n_layers, n_heads = len(spec.layer_list(model)), head_count(model)
    rows_by_kind = {kind: grid_rows(kind, n_layers, n_heads, window) for kind in kinds}
    sites = all_sites([row for rows in rows_by_kind.values() for row in rows], n_layers)
    with torch.no_grad(), record(source_model, source_spec, sites) as clean_values:
        clean = _metric_of(source_model, source_spec, clean_ids, metric)
    with torch.no_grad(), record(model, spec, sites) as corrupted_values:
        corrupted = _metric_of(model, spec, corrupted_ids, metric)
    if reverse:
        source, held = corrupted_values, clean_values
        target_ids, target_model, target_spec = clean_ids, source_model, source_spec
    else:
        source, held = clean_values, corrupted_values
        target_ids, target_model, target_spec = corrupted_ids, model, spec
    differ = (clean_ids != corrupted_ids)[0].nonzero()
    positions = list(range(int(differ[0]) if len(differ) else end, end))
    grids = []
    for kind, rows in rows_by_kind.items():
        cells = [Cell(restore, p) for _, restore, _ in rows for p in positions]
        measured = run_cells(
            target_model,
            target_spec,
            target_ids,
            metric,
            cells,
            source,
            held=held,
            batch_size=batch_size,
            label=f"grid {kind}",
        )
        names = tuple(name for name, _, _ in rows)
        width = window if kind in ("attn", "mlp") else 1
        grids.append(
            PatchGrid(kind, names, tuple(positions), measured.reshape(len(rows), len(positions)), width)
        )
    labels = tuple(tokens) if tokens is not None else tuple(f"id {i}" for i in clean_ids[0].tolist())
    return PatchGrids(
        metric,
        labels[:end],
        clean,
        corrupted,
        CORRUPTED_INTO_CLEAN if reverse else CLEAN_INTO_CORRUPTED,
        tuple(grids),
    )


def _metric_of(model: nn.Module, spec: ArchitectureSpec, ids: torch.Tensor, metric: Metric) -> float:
    """The metric of one plain run of ``ids`` ``(1, seq)``, batched the same way as :func:`run_cells`."""
    return float(run_cells(model, spec, ids, metric, [Cell((), metric.position)], {})[0])


def patching_grids(
    loaded: LoadedModel,
    clean: str,
    corrupted: str,
    kinds: str | Sequence[str] = ("resid", "attn", "mlp"),
    *,
    metric: Metric | None = None,
    chat: bool = False,
    clean_model: LoadedModel | None = None,
    reverse: bool = False,
    window: int = 1,
    batch_size: int | None = None,
) -> PatchGrids:
    """Layer × position (and head × position) patching grids, from the clean prompt's run into the corrupted.

    Args:
        loaded: The model run on the corrupted prompt.
        clean / corrupted: Prompts of the same token length.
        kinds: ``resid``, ``attn``, ``mlp``, ``heads`` (comma-separated text or a list).
        metric: Default: the logit of the clean run's top-1 token at the last position.
        chat: Wrap prompts as user turns with the chat template.
        clean_model: The model the clean run uses (default ``loaded``); must share the tokenizer.
        reverse: Write the corrupted run's activations into the clean run instead.
        window: Layers restored together for ``attn`` / ``mlp`` rows.
        batch_size: Rows per forward.

    Raises:
        TokenlensError: Any bad input, including prompts of different token lengths; one line.
    """
    source = clean_model or loaded
    check_same_tokenizer(loaded, source)
    clean_ids, corrupted_ids = encode(loaded, clean, chat=chat), encode(loaded, corrupted, chat=chat)
    same_length(clean_ids, corrupted_ids, "a patching grid")
    metric = metric or metric_for(source, clean_ids[0].tolist())
    tokens = [decode_token(loaded.tokenizer, i) for i in clean_ids[0].tolist()]
    return patch_grids(
        loaded.model,
        loaded.spec,
        clean_ids,
        corrupted_ids,
        metric,
        check_kinds(kinds, GRID_KINDS),
        tokens=tokens,
        clean_model=None if clean_model is None else clean_model.model,
        reverse=reverse,
        window=window,
        batch_size=batch_size,
    )

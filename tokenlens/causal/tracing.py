"""Causal tracing: noise the subject's token embeddings, then restore one (layer, position) state at a time.

The trace asks where a fact is carried on its way from the subject's tokens to the prediction (Meng et al.,
"Locating and Editing Factual Associations in GPT", 2022). Three runs:

1. **clean**: the prompt as it is; the metric (by default the target's probability) is high;
2. **corrupted**: Gaussian noise of standard deviation ``scale × σ`` added to the token embeddings of the
   subject's positions, ``σ`` being the standard deviation of all entries of the embedding matrix
   (``scale`` = 3 by default); the metric drops. ``samples`` noise draws from a fixed seed, averaged;
3. **restored**: the corrupted run with one activation at one (layer, position) written from the clean run;
   how much of the metric comes back says how much that state carries.

Grids restore the residual stream entering each layer (``resid``), each layer's attention or MLP output
(``attn``, ``mlp``; with ``window`` > 1 the outputs of that many layers around it together, as in the
paper's window of 10), and the "severed" variants: the residual stream restored while the MLP
(``resid-mlp-severed``) or attention (``resid-attn-severed``) outputs of every later layer at that position
are held at their corrupted values, so the restored state cannot act through them. Where severing the MLPs
removes most of a restore, the MLPs at that position are doing the work.

All cells of all samples go through the model in batches (:func:`~tokenlens.causal.grids.run_cells`).
Positions before the first noised one hold the same state in both runs and are not run; the prompt is cut
after the metric's position.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from tokenlens.attribution.inputs import decode_token
from tokenlens.causal.grid_results import TRACE_KINDS, PatchGrid, PatchGrids, TraceSetup
from tokenlens.causal.grids import (
    CLEAN_INTO_CORRUPTED,
    Cell,
    all_sites,
    check_kinds,
    grid_rows,
    refuse_virtual,
    run_cells,
)
from tokenlens.causal.interventions import record
from tokenlens.causal.metrics import Metric, encode, metric_for
from tokenlens.causal.sites import head_count
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import ArchitectureSpec

DEFAULT_KINDS = ("resid", "mlp", "attn")
SCALE = 3.0
SAMPLES = 5
SEED = 0


def find_subject(tokenizer, ids: Sequence[int], subject: str) -> tuple[int, ...]:
    """The token positions of the last occurrence of ``subject`` in the prompt ``ids``, by text.

    The prompt's tokens are decoded one by one and their character spans compared with the subject's: a
    position belongs to the subject when its span overlaps the subject's characters (so a subject that
    starts or ends inside a token takes the whole token). A whole-word occurrence wins over a later one inside
    another word ("he" in "he is on the" is the first word, not the end of "the"); a subject found only inside
    words (a fragment such as "iffel") is taken there.

    Raises:
        TokenlensError: An empty subject, or one the decoded prompt does not contain.
    """
    if not subject.strip():
        raise TokenlensError("the subject is empty: give the words of the prompt to noise")
    pieces = [tokenizer.decode([i]) for i in ids]
    text = "".join(pieces)
    start = _last_occurrence(text, subject)
    if start < 0:
        subject = subject.strip()
        start = _last_occurrence(text, subject)
    if start < 0:
        raise TokenlensError(f"the subject {subject!r} is not in the prompt {text!r}")
    end, positions, offset = start + len(subject), [], 0
    for position, piece in enumerate(pieces):
        if offset < end and offset + len(piece) > start:
            positions.append(position)
        offset += len(piece)
    return tuple(positions)


def _last_occurrence(text: str, subject: str) -> int:
    """Where the last whole-word occurrence of ``subject`` in ``text`` starts, else its last occurrence of
    any kind, else -1. Whole-word: no letter, digit or underscore right before it when it starts with one,
    nor right after it when it ends with one."""
    before = r"(?<!\w)" if re.match(r"\w", subject[:1]) else ""
    after = r"(?!\w)" if re.match(r"\w", subject[-1:]) else ""
    words = [m.start() for m in re.finditer(before + re.escape(subject) + after, text)]
    return words[-1] if words else text.rfind(subject)


def parse_positions(text: str, seq: int) -> tuple[int, ...]:
    """``"a-b"`` or ``"a,b,c"`` (negative counts from the end) as increasing prompt positions.

    Raises:
        TokenlensError: Malformed text, or a position outside the prompt.
    """
    positions: set[int] = set()
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            low, sep, high = part.partition("-") if not part.startswith("-") else (part, "", "")
            first = int(low)
            last = int(high) if sep else first
            positions.update(range(first, last + 1) if sep else [first])
    except ValueError:
        raise TokenlensError(f"cannot read positions {text!r}: use a-b or a,b,c (e.g. 0-3)") from None
    resolved = sorted({p + seq if p < 0 else p for p in positions})
    if not resolved or resolved[0] < 0 or resolved[-1] >= seq:
        raise TokenlensError(
            f"trace positions {text!r} must lie in 0..{seq - 1} (this prompt has {seq} tokens)"
        )
    return tuple(resolved)


def embedding_std(model: nn.Module, spec: ArchitectureSpec) -> float:
    """The standard deviation of every entry of the token embedding matrix (float64)."""
    return float(spec.module(model, spec.embed).weight.detach().double().std())


def causal_trace(
    model: nn.Module,
    spec: ArchitectureSpec,
    input_ids: torch.Tensor,
    metric: Metric,
    noised: Sequence[int],
    kinds: Sequence[str] = DEFAULT_KINDS,
    *,
    tokens: Sequence[str] | None = None,
    subject: str | None = None,
    scale: float = SCALE,
    samples: int = SAMPLES,
    seed: int = SEED,
    window: int = 1,
    columns: Sequence[int] | None = None,
    batch_size: int | None = None,
) -> PatchGrids:
    """A causal trace of ``input_ids`` ``(1, seq)``: noise on the ``noised`` positions, restore grids.

    Args:
        model / spec: The model.
        input_ids: The prompt.
        metric: What is measured (ROME uses the target's probability).
        noised: Prompt positions whose token embeddings get noise.
        kinds: Any of ``resid``, ``attn``, ``mlp``, ``resid-mlp-severed``, ``resid-attn-severed``.
        tokens: The prompt's decoded tokens, for labels.
        subject: The subject text, for labels.
        scale: The noise's standard deviation in embedding standard deviations.
        samples: Noise draws averaged.
        seed: The noise's seed.
        window: Layers restored together for ``attn`` / ``mlp`` rows.
        columns: The positions to restore (default: every one from the first noised to the metric's).
        batch_size: Rows per forward.

    Raises:
        TokenlensError: No noised position, positions outside the prompt or after the metric's, samples or
            window below 1, a negative scale, unknown kinds, a prompt-tuning adapter.
    """
    kinds = check_kinds(kinds, TRACE_KINDS)
    refuse_virtual(model)
    noised = tuple(sorted(set(noised)))
    if not noised:
        raise TokenlensError("nothing to noise: give a subject that is in the prompt, or positions")
    if noised[0] < 0 or noised[-1] > metric.position:
        raise TokenlensError(
            f"noised positions {list(noised)} must lie in 0..{metric.position} (up to the metric's position)"
        )
    if samples < 1 or window < 1:
        raise TokenlensError(f"samples and window must be 1 or more, got {samples} and {window}")
    if not (scale > 0 and scale < float("inf")):
        raise TokenlensError(f"the noise scale must be a positive number, got {scale}")
    end = metric.position + 1
    input_ids = input_ids[:, :end]
    n_layers = len(spec.layer_list(model))
    std = scale * embedding_std(model, spec)
    width = spec.module(model, spec.embed).weight.shape[1]
    generator = torch.Generator().manual_seed(seed)
    noise = torch.zeros(samples, end, width, dtype=torch.float32)
    noise[:, list(noised)] = std * torch.randn(samples, len(noised), width, generator=generator)
    rows_by_kind = {kind: grid_rows(kind, n_layers, head_count(model), window) for kind in kinds}
    sites = all_sites([row for rows in rows_by_kind.values() for row in rows], n_layers)
    with torch.no_grad(), record(model, spec, sites) as clean_values:
        clean = float(run_cells(model, spec, input_ids, metric, [Cell((), metric.position)], {})[0])
    corrupted_runs = [Cell((), metric.position, sample=s) for s in range(samples)]
    with torch.no_grad(), record(model, spec, sites) as held:
        baseline = run_cells(
            model, spec, input_ids, metric, corrupted_runs, {}, noise=noise, batch_size=samples
        )
    positions = list(range(noised[0], end)) if columns is None else sorted(set(columns))
    if not positions or positions[0] < 0 or positions[-1] >= end:
        raise TokenlensError(f"trace columns {positions} must lie in 0..{end - 1}")
    grids = []
    for kind, rows in rows_by_kind.items():
        cells = [
            Cell(restore, p, frozen, sample)
            for _, restore, frozen in rows
            for p in positions
            for sample in range(samples)
        ]
        measured = run_cells(
            model,
            spec,
            input_ids,
            metric,
            cells,
            clean_values,
            held=held,
            noise=noise,
            batch_size=batch_size,
            label=f"trace {kind}",
        )
        value = measured.reshape(len(rows), len(positions), samples).mean(-1)
        names = tuple(name for name, _, _ in rows)
        grids.append(
            PatchGrid(kind, names, tuple(positions), value, window if kind in ("attn", "mlp") else 1)
        )
    labels = tuple(tokens) if tokens is not None else tuple(f"id {i}" for i in input_ids[0].tolist())
    setup = TraceSetup(subject, noised, std, scale, samples, seed)
    return PatchGrids(
        metric, labels[:end], clean, float(baseline.mean()), CLEAN_INTO_CORRUPTED, tuple(grids), setup
    )


def trace(
    loaded: LoadedModel,
    prompt: str,
    subject: str | None = None,
    *,
    positions: str | Sequence[int] | None = None,
    kinds: str | Sequence[str] = DEFAULT_KINDS,
    metric: Metric | None = None,
    target: str | None = None,
    chat: bool = False,
    scale: float = SCALE,
    samples: int = SAMPLES,
    seed: int = SEED,
    window: int = 1,
    batch_size: int | None = None,
) -> PatchGrids:
    """Causal tracing of ``prompt``: noise the subject (found by text) or ``positions``, restore grids.

    Args:
        loaded: The model.
        prompt: The prompt.
        subject: Words of the prompt to noise (its last occurrence), e.g. ``"The Eiffel Tower"``.
        positions: Or the positions to noise: ``"0-3"``, ``"1,2"`` or a list.
        kinds: What to restore (see :func:`causal_trace`).
        metric: Default: the probability of ``target`` (default: the clean run's top-1 token) at the last
            position.
        target: The token to watch when no ``metric`` is given, as decoded text.
        chat: Wrap the prompt as a user turn with the chat template.
        scale / samples / seed / window / batch_size: See :func:`causal_trace`.

    Raises:
        TokenlensError: Any bad input (neither or both of subject and positions, a subject not in the
            prompt, …); one line.
    """
    if (subject is None) == (positions is None):
        raise TokenlensError("give the subject to noise or its positions (one of them)")
    ids = encode(loaded, prompt, chat=chat)
    seq = ids.shape[1]
    if subject is not None:
        noised = find_subject(loaded.tokenizer, ids[0].tolist(), subject)
    elif isinstance(positions, str):
        noised = parse_positions(positions, seq)
    else:
        noised = parse_positions(",".join(str(p) for p in positions), seq)
    metric = metric or metric_for(loaded, ids[0].tolist(), kind="prob", target=target)
    tokens = [decode_token(loaded.tokenizer, i) for i in ids[0].tolist()]
    return causal_trace(
        loaded.model,
        loaded.spec,
        ids,
        metric,
        noised,
        check_kinds(kinds, TRACE_KINDS),
        tokens=tokens,
        subject=subject,
        scale=scale,
        samples=samples,
        seed=seed,
        window=window,
        batch_size=batch_size,
    )

"""The trainer: a plain, deterministic torch loop that never loses work.

``train`` applies a method from :mod:`tokenlens.training.methods` to a loaded model (in place), then runs
AdamW over a fixed batch schedule: epoch ``e`` visits the examples in ``randperm(n, seed + e)`` order, cut
into batches; step ``k`` is the ``k``-th batch of that schedule. Because the schedule is a pure function of
the seed, a checkpoint needs only the step number, the trainable parameters, the optimizer state and the RNG
states; resuming from it reaches bitwise the same weights as an uninterrupted run (on CPU).

Checkpoints live in ``out_dir/tokenlens-checkpoint`` and are replaced atomically (written to a temporary
folder, then renamed). Ctrl-C is deferred to the end of the running step, then saves one and re-raises
``KeyboardInterrupt``. CPU runs in fp32; CUDA runs
under bf16 autocast. When training ends the result is written to ``out_dir`` (see
:mod:`tokenlens.training.output`) and the checkpoint is removed.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokenlens.errors import TokenlensError
from tokenlens.training import output
from tokenlens.training.data import IGNORE, TrainingData, load_jsonl
from tokenlens.training.methods import Method, get_method, trainable_count

CHECKPOINT = "tokenlens-checkpoint"


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        out_dir: The output folder (adapter or checkpoint, manifest, loss curve).
        method: The method name.
        options: The method's options, defaults filled in.
        steps: Optimizer steps run in total (including those before a resume).
        losses: (steps,) training loss per step.
        trainable: Trainable parameter count.
        wall_s: Wall time of this invocation, seconds.
        device: Where it ran.
    """

    out_dir: Path
    method: str
    options: dict[str, Any]
    steps: int
    losses: tuple[float, ...]
    trainable: int
    wall_s: float
    device: str

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


def schedule(n_examples: int, batch_size: int, total_steps: int, seed: int) -> list[list[int]]:
    """The batches of a run: ``total_steps`` lists of example indices (a pure function of the seed)."""
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total_steps:
        order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        batches += [order[i : i + batch_size] for i in range(0, n_examples, batch_size)]
        epoch += 1
    return batches[:total_steps]


def train(
    loaded: Any,
    method: str | Method,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 4,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    resume: bool = False,
    force: bool = False,
    checkpoint_every: int = 50,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Post-train ``loaded.model`` (modified in place) with ``method`` on a JSONL file.

    Args:
        loaded: A :class:`tokenlens.models.loading.LoadedModel` (its ``ref`` is recorded as the base).
        method: A method name or record (see ``tokenlens train --list-methods``).
        data_path: JSONL file (see :mod:`tokenlens.training.data`).
        out_dir: Output folder; must not exist (or be empty) unless ``force`` or ``resume``.
        steps: Optimizer steps; or ``epochs`` (default: 3 epochs).
        lr: Learning rate (default: the method's).
        batch_size: Examples per step.
        seed: Seeds the data order and torch's RNG.
        options: The method's options.
        resume: Continue from ``out_dir``'s last checkpoint.
        force: Replace an existing tokenlens output folder.
        checkpoint_every: Steps between checkpoints.
        on_step: Called after each step with (step, total_steps, loss).

    Returns:
        A :class:`TrainResult`.

    Raises:
        TokenlensError: Bad method/options/data, an existing ``out_dir``, a mismatched resume folder.
        KeyboardInterrupt: After saving a checkpoint.
    """
    started = time.perf_counter()
    record = method if isinstance(method, Method) else get_method(method)
    resolved = record.resolve(options)
    if steps is not None and epochs is not None:
        raise TokenlensError("give --steps or --epochs, not both")
    if batch_size < 1 or checkpoint_every < 1:
        raise TokenlensError("batch size and checkpoint interval must be at least 1")
    model = loaded.model
    quantized = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
    if record.needs_quantized and not quantized:
        raise TokenlensError(f"method {record.name} needs a quantised base: load it with quantize='4bit'")
    if quantized and record.output == "checkpoint":
        raise TokenlensError(f"method {record.name} trains base weights, which a quantised base cannot do")
    max_length = int(getattr(model.config, "max_position_embeddings", 0) or 10**9)
    vocab = model.get_input_embeddings().weight.shape[0]
    data = load_jsonl(data_path, loaded.tokenizer, max_length, vocab_size=vocab)
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, resume=resume, force=force)

    total = steps if steps is not None else (epochs or 3) * math.ceil(len(data.examples) / batch_size)
    if total < 1:
        raise TokenlensError("nothing to train: steps/epochs must be at least 1")
    lr = record.lr if lr is None else float(lr)
    identity = {
        "method": record.name,
        "options": resolved,
        "base_ref": loaded.ref,
        "base_fingerprint": output.fingerprint(model),
        "data_sha256": data.sha256,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "total_steps": total,
    }
    torch.manual_seed(seed)
    model = record.apply(model, resolved)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    start, losses = 0, []
    if resume:
        start, losses = _load_checkpoint(out_dir / CHECKPOINT, model, optimizer, identity)
    batches = schedule(len(data.examples), batch_size, total, seed)
    pad = loaded.tokenizer.pad_token_id
    pad = pad if pad is not None and pad < vocab else 0  # padded positions are masked out anyway
    model.train()
    with _interrupt_at_step_boundary() as interrupted:
        try:
            for step in range(start, total):
                loss = _step(model, optimizer, data, batches[step], pad, device)
                losses.append(loss)
                if on_step is not None:
                    on_step(step + 1, total, loss)
                if interrupted():
                    raise KeyboardInterrupt
                if (step + 1) % checkpoint_every == 0 and step + 1 < total:
                    _save_checkpoint(out_dir / CHECKPOINT, model, optimizer, identity, step + 1, losses)
        except KeyboardInterrupt:
            _save_checkpoint(out_dir / CHECKPOINT, model, optimizer, identity, len(losses), losses)
            raise
    model.eval()
    wall = time.perf_counter() - started
    tokens = sum(len(data.examples[i].input_ids) for batch in batches[start:] for i in batch)
    run = {"wall_s": wall, "tokens_per_s": tokens / wall if wall > 0 else 0.0, "device": str(device)}
    output.write(model, record, loaded, out_dir, identity, data, losses, trainable_count(model), run)
    shutil.rmtree(out_dir / CHECKPOINT, ignore_errors=True)
    return TrainResult(
        out_dir, record.name, resolved, total, tuple(losses), trainable_count(model), wall, str(device)
    )


def _prepare_out_dir(out_dir: Path, *, resume: bool, force: bool) -> None:
    if resume:
        if not (out_dir / CHECKPOINT).is_dir():
            raise TokenlensError(f"nothing to resume: {out_dir} has no {CHECKPOINT} folder")
        return
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        ours = (out_dir / output.MANIFEST).is_file() or (out_dir / CHECKPOINT).is_dir()
        if not force:
            raise TokenlensError(f"{out_dir} already exists; pass --force to replace it or --resume")
        if not ours:
            raise TokenlensError(f"{out_dir} is not a tokenlens training output; remove it yourself")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


@contextmanager
def _interrupt_at_step_boundary() -> Iterator[Callable[[], bool]]:
    """Defer Ctrl-C (SIGINT) to the end of the current step, so a checkpoint never holds a half-applied step.

    Yields a function telling whether Ctrl-C was pressed; the loop checks it after each step. Outside the
    main thread (where signal handlers cannot be set) Ctrl-C is not deferred.
    """
    hit = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield hit.is_set
        return
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: hit.set())
    try:
        yield hit.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def _step(model, optimizer, data: TrainingData, indices: list[int], pad: int, device) -> float:
    examples = [data.examples[i] for i in indices]
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)  # (batch, seq) right-padded
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(folder: Path, model, optimizer, identity: dict, step: int, losses: list[float]) -> None:
    """Write a checkpoint to ``folder.tmp`` and rename it over ``folder`` (never a half-written one)."""
    tmp = folder.with_name(folder.name + ".tmp")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {
        "identity": identity,
        "step": step,
        "losses": list(losses),
        "trainable": _trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    torch.save(state, tmp / "state.pt")
    with open(tmp / "state.pt", "rb") as handle:
        os.fsync(handle.fileno())
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(folder: Path, model, optimizer, identity: dict) -> tuple[int, list[float]]:
    state = torch.load(folder / "state.pt", weights_only=False)
    saved = state["identity"]
    for key in ("method", "base_fingerprint", "base_ref", "options", "data_sha256", "seed", "batch_size"):
        if saved.get(key) != identity.get(key):
            raise TokenlensError(
                f"cannot resume {folder.parent}: its {key} ({saved.get(key)!r}) differs from this run's "
                f"({identity.get(key)!r})"
            )
    names = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(names) != set(state["trainable"]):
        raise TokenlensError(
            f"cannot resume {folder.parent}: its trainable parameters differ from this run's"
        )
    with torch.no_grad():
        for name, param in names.items():
            param.copy_(state["trainable"][name])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return int(state["step"]), list(state["losses"])

"""The trainer: a plain, deterministic torch loop that never loses work.

``train`` applies a method from :mod:`tokenlens.training.methods` to a loaded model (in place), then runs
AdamW over a fixed batch schedule: epoch ``e`` visits the examples in ``randperm(n, seed + e)`` order, cut
into batches; step ``k`` is the ``k``-th batch of that schedule. Because the schedule is a pure function of
the seed, a checkpoint needs only the step number, the trainable parameters, the optimizer state and the RNG
states; resuming from it reaches bitwise the same weights as an uninterrupted run (on CPU).

Order of work, so that a bad input never costs the previous output: every setting is checked first (those
that need no model in :func:`check_settings`, which the CLI runs before a model loads), then the data, then
the method is applied (checking what needs the model, e.g. layer indices); only then is ``out_dir`` touched.
For the whole run the folder is locked (:mod:`tokenlens.training.folder`: ``flock`` on the folder itself,
released by the kernel when the process ends, even on SIGKILL), so a second run into it fails at once
instead of replacing the first.

Checkpoints live in ``out_dir/tokenlens-checkpoint`` and are replaced atomically (see
:mod:`tokenlens.training.checkpoint`). Ctrl-C (SIGINT) and SIGTERM are deferred to the end of the running
step, then a checkpoint is saved and :class:`Interrupted` (a ``KeyboardInterrupt``) is raised. A non-finite
loss, gradient or weight stops the run with :class:`Diverged` before the optimizer applies the step's
update (or, for a weight, before anything is saved): NaN weights are never written. CPU runs in fp32; on
CUDA an fp32 model runs under bf16 autocast (a model loaded in bf16/fp16 runs in its own dtype). When
training ends the result is staged and moved into ``out_dir`` (see :mod:`tokenlens.training.output`), and
the checkpoint is removed.

Data parallel: under ``accelerate launch`` or ``torchrun`` with more than one process (``WORLD_SIZE > 1``)
the same ``train`` runs data-parallel through ``accelerate.Accelerator``. The schedule is unchanged (the
*global* batch is ``batch_size`` examples); process ``r`` of ``P`` takes examples ``r, r+P, ...`` of each
step's batch. Each process's loss is its share of the global token sum divided by the global count of loss
tokens, so the all-reduced gradient is the single-process gradient (up to float summation order). Only the
main process locks the folder, calls the progress callbacks and writes checkpoints and outputs; every
process reads the checkpoint on ``resume``. A single process never touches ``torch.distributed`` (bitwise
as before).
"""

from __future__ import annotations

import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tokenlens.errors import Interrupted, TokenlensError, first_line, option
from tokenlens.files import CHECKPOINT
from tokenlens.models.specs import bare_model, virtual_tokens
from tokenlens.options import is_integer
from tokenlens.training import checkpoint, folder, output
from tokenlens.training.data import IGNORE, TrainingData, load_jsonl
from tokenlens.training.located import auto_layers
from tokenlens.training.methods import Method, get_method, trainable_count
from tokenlens.training.parallel import parallel_context
from tokenlens.training.preserve import WEIGHT as PRESERVE_WEIGHT
from tokenlens.training.preserve import PreserveTerm, check_weight, load_preserve

SEED_LIMIT = 2**64
"""Seeds are integers from 0 to ``SEED_LIMIT - 1``: what ``torch.manual_seed`` accepts."""
DEFAULT_EPOCHS = 3
"""Passes over the data when neither ``steps`` nor ``epochs`` is given."""


class Diverged(TokenlensError):
    """A step produced a non-finite loss, gradient or weight; the run stopped and wrote no output."""


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
        device: Where it ran (this process's device).
        processes: Data-parallel processes (1 unless launched with ``accelerate launch``/``torchrun``).
    """

    out_dir: Path
    method: str
    options: dict[str, Any]
    steps: int
    losses: tuple[float, ...]
    trainable: int
    wall_s: float
    device: str
    processes: int = 1

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


@dataclass(frozen=True)
class StepInfo:
    """One finished optimizer step, for progress displays (``train(..., on_progress=...)``).

    Attributes:
        step: Steps done so far (1-based, counting those before a resume).
        total: Steps in the whole run.
        loss: This step's training loss (mean over the global batch's loss tokens).
        tokens: Unpadded tokens in this step's global batch.
        tokens_per_s: Unpadded tokens per second since this invocation's first step started.
        elapsed_s: Seconds since this invocation's first step started.
    """

    step: int
    total: int
    loss: float
    tokens: int
    tokens_per_s: float
    elapsed_s: float


def schedule(n_examples: int, batch_size: int, total_steps: int, seed: int) -> list[list[int]]:
    """The batches of a run: ``total_steps`` lists of example indices (a pure function of the seed)."""
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total_steps:
        generator = torch.Generator().manual_seed((seed + epoch) % SEED_LIMIT)  # the largest seed wraps
        order = torch.randperm(n_examples, generator=generator).tolist()
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
    gradient_checkpointing: bool = False,
    on_step: Callable[[int, int, float], None] | None = None,
    on_progress: Callable[[StepInfo], None] | None = None,
    preserve: str | Path | None = None,
    preserve_weight: float = PRESERVE_WEIGHT,
) -> TrainResult:
    """Post-train ``loaded.model`` (modified in place) with ``method`` on a JSONL file.

    Run it under ``accelerate launch --num_processes N`` (or ``torchrun``) for data parallel training: the
    same global ``batch_size``, each process taking its share of every batch (see the module docstring).

    Args:
        loaded: A :class:`tokenlens.models.loading.LoadedModel` (its ``ref`` is recorded as the base).
        method: A method name or record (see ``tokenlens train --list-methods``).
        data_path: JSONL file (see :mod:`tokenlens.training.data`).
        out_dir: Output folder; must not exist (or be empty) unless ``force`` or ``resume``.
        steps: Optimizer steps (at least 1); or ``epochs`` (at least 1; default: 3 epochs).
        lr: Learning rate, finite and above 0 (default: the method's).
        batch_size: Examples per step (over all processes together).
        seed: Seeds the data order and torch's RNG (0 .. 2**64 - 1).
        options: The method's options (see :meth:`Method.resolve`).
        resume: Continue from ``out_dir``'s last checkpoint.
        force: Replace the tokenlens output in ``out_dir``: only tokenlens's own files are replaced, and
            only once the new output is complete (other files in the folder stay).
        checkpoint_every: Steps between checkpoints.
        gradient_checkpointing: Recompute activations in the backward pass (HF activation checkpointing,
            non-reentrant): less memory, about one more forward pass of time, the same gradients.
        on_step: Called after each step with (step, total_steps, loss) (main process only).
        on_progress: Called after each step with a :class:`StepInfo` (main process only).
        preserve: A preserve file (``"default"``: the built-in one): adds ``preserve_weight`` ·
            KL(base‖tuned) over its passages to every step's loss (:mod:`tokenlens.training.preserve`);
            ``rank-one`` estimates its key statistics from it. Single process only.
        preserve_weight: The KL term's weight (a finite number >= 0).

    Returns:
        A :class:`TrainResult`.

    Raises:
        TokenlensError: Bad method/options/settings/data, an existing ``out_dir``, a folder another run
            holds, a mismatched resume folder, a failed write (disk full …); :class:`Diverged` for a
            non-finite loss, gradient or weight. ``out_dir`` is left as it was (plus, after some steps,
            a checkpoint).
        Interrupted: Ctrl-C or SIGTERM, after saving a checkpoint (a ``KeyboardInterrupt``).
    """
    started = time.perf_counter()
    record = method if isinstance(method, Method) else get_method(method)
    resolved = check_settings(
        record,
        options,
        steps=steps,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        checkpoint_every=checkpoint_every,
        gradient_checkpointing=gradient_checkpointing,
        preserve_weight=preserve_weight,
    )
    model = loaded.model
    quantized = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
    if record.needs_quantized and not quantized:
        raise TokenlensError(f"method {record.name} needs a quantised base: load it with quantize='4bit'")
    if quantized and record.output == "checkpoint":
        raise TokenlensError(f"method {record.name} trains base weights, which a quantised base cannot do")
    out_dir = Path(out_dir)
    folder.check_out_dir(out_dir, resume=resume, force=force)  # early; checked again under the lock
    max_length = int(getattr(model.config, "max_position_embeddings", 0) or 10**9)
    vocab = model.get_input_embeddings().weight.shape[0]
    data = load_jsonl(data_path, loaded.tokenizer, max_length, vocab_size=vocab)
    kept = None if preserve is None else load_preserve(preserve, loaded.tokenizer, max_length, vocab)
    if record.fit is not None and resume:
        raise TokenlensError(f"method {record.name} is solved in one go: there is nothing to resume")
    resolved, located = auto_layers(loaded, data, resolved)  # layers=auto: a causal trace of the data
    parallel = parallel_context()
    if kept is not None and parallel.processes > 1:
        raise TokenlensError(f"{option('preserve')} runs in a single process only (not data parallel)")
    n_batches = math.ceil(len(data.examples) / batch_size)
    total = steps if steps is not None else (epochs or DEFAULT_EPOCHS) * n_batches
    if steps is None and epochs is None and record.steps is not None:
        total = record.steps
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
        **({} if kept is None else {"preserve": {"sha256": kept.sha256, "weight": preserve_weight}}),
    }
    pad = loaded.tokenizer.pad_token_id
    pad = pad if pad is not None and pad < vocab else 0  # padded positions are masked out anyway
    term = None
    if kept is not None and record.fit is None:  # methods that change base weights: base cached first
        device = next(model.parameters()).device
        cached = record.output != "adapter"
        term = PreserveTerm(
            kept, preserve_weight, seed=seed, cached=cached, model=model, pad_id=pad, device=device
        )
    torch.manual_seed(seed)
    if record.fit is not None:  # closed form: solved here, before the folder is touched
        kwargs = dict(steps=total, lr=lr, seed=seed, preserve=kept)
        core, fitted, notes, resolved = record.fit(loaded, data, resolved, **kwargs)
        identity["options"] = resolved
    else:
        core = record.apply(model, resolved)  # checks what needs the model: before the folder is touched
    with folder.claim(out_dir, resume=resume, force=force, parallel=parallel):
        model = core if parallel.accelerator is None else parallel.accelerator.prepare(core)  # DDP-wrapped
        device = next(core.parameters()).device
        autocast = device.type == "cuda" and _float_dtype(core) == torch.float32
        params = [p for p in core.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr)
        start, losses = 0, []
        if resume:
            start, losses = checkpoint.load(out_dir / CHECKPOINT, core, optimizer, identity)
        batches = schedule(len(data.examples), batch_size, total, seed)
        model.train()
        with _signals_deferred() as interrupted:  # also through publishing: never half an output
            if record.fit is not None:
                losses, tokens = fitted, 0
            else:
                with _checkpointing(core, gradient_checkpointing):
                    tokens = _loop(
                        model,
                        optimizer,
                        data,
                        batches,
                        losses,
                        start,
                        step_args=(pad, device, autocast, parallel if parallel.processes > 1 else None, term),
                        parallel=parallel,
                        every=checkpoint_every,
                        save=partial(checkpoint.save, out_dir / CHECKPOINT, core, optimizer, identity),
                        report=partial(_report, on_step, on_progress),
                        interrupted=interrupted,
                        folder=out_dir,
                        preserve=term,
                    )
            core.eval()
            wall = time.perf_counter() - started
            run = {
                **({"located": located} if located is not None else {}),
                **({} if kept is None else {"preserve": _preserve_record(kept, preserve_weight, term)}),
                **({} if record.fit is None else {record.name: notes}),
                "wall_s": wall,
                "tokens_per_s": tokens / wall if wall > 0 else 0.0,
                "device": str(device),
                "processes": parallel.processes,
                "gradient_checkpointing": gradient_checkpointing,
            }
            if parallel.main:
                trainable = trainable_count(core)
                output.publish(core, record, loaded, out_dir, identity, data, losses, trainable, run)
                shutil.rmtree(out_dir / CHECKPOINT, ignore_errors=True)
            parallel.barrier()  # every process returns once the output is complete
    return TrainResult(
        out_dir,
        record.name,
        resolved,
        total,
        tuple(losses),
        trainable_count(core),
        wall,
        str(device),
        parallel.processes,
    )


def check_settings(
    record: Method,
    options: dict[str, Any] | None,
    *,
    steps: int | None,
    epochs: int | None,
    lr: float | None,
    batch_size: int,
    seed: int,
    checkpoint_every: int,
    gradient_checkpointing: bool,
    preserve_weight: float = PRESERVE_WEIGHT,
) -> dict[str, Any]:
    """Check every setting of a run that can be checked without a model; return the resolved options.

    ``train`` calls it first; the CLI calls it before loading the model, so a typo costs no load.

    Raises:
        TokenlensError: A bad option (see :meth:`Method.resolve`), ``steps``/``epochs`` below 1 or both
            given, a learning rate that is not a finite number above 0, a seed outside 0 .. 2**64 - 1, a
            batch size or checkpoint interval below 1, gradient checkpointing with prefix tuning, a preserve
            weight that is not a finite number >= 0.
    """
    resolved = record.resolve(options)
    check_weight(preserve_weight)
    if steps is not None and epochs is not None:
        raise TokenlensError(f"give {option('steps')} or {option('epochs')}, not both")
    for name, value in (("steps", steps), ("epochs", epochs)):
        if value is not None and (not is_integer(value) or value < 1):
            raise TokenlensError(f"{option(name, repr(value))}: nothing to train; give at least 1")
    if not all(is_integer(value) and value >= 1 for value in (batch_size, checkpoint_every)):
        raise TokenlensError("batch size and checkpoint interval must be at least 1")
    if lr is not None:
        number = isinstance(lr, (int, float)) and not isinstance(lr, bool)
        if not number or not math.isfinite(lr) or lr <= 0:
            raise TokenlensError(
                f"{option('lr', repr(lr))}: the learning rate must be a finite number above 0"
            )
    if not is_integer(seed) or not 0 <= seed < SEED_LIMIT:
        raise TokenlensError(f"{option('seed', repr(seed))}: a seed is an integer from 0 to 2**64 - 1")
    if gradient_checkpointing and record.name == "prefix":
        raise TokenlensError("gradient checkpointing cannot replay prefix tuning's key/value cache; drop it")
    return resolved


def _loop(
    model,
    optimizer,
    data,
    batches,
    losses: list[float],
    start: int,
    *,
    step_args,
    parallel,
    every,
    save,
    report,
    interrupted: Callable[[], int | None],
    folder: Path,
    preserve: PreserveTerm | None = None,
) -> int:
    """Run steps ``start..len(batches)`` (appending to ``losses``); return the tokens they trained on.

    ``_step(..., *step_args)`` runs one step; ``report(step, total, loss, tokens, tokens_so_far, since)``
    calls the callbacks; ``save(step, losses)`` writes a checkpoint every ``every`` steps and when
    ``interrupted()`` names a signal (checked at the end of each step; data parallel, every process stops
    after the same step and only the main process saves), then :class:`Interrupted` is raised. A
    :class:`Diverged` step stops the run at once, saving nothing (the last checkpoint, of step ``saved``,
    stays as it was).
    """
    total, tokens, started = len(batches), 0, time.perf_counter()
    saved = start  # the step of the checkpoint on disk (0: none)
    try:
        for step in range(start, total):
            try:
                if preserve is not None:
                    preserve.step = step  # the preserve passages are a function of the step
                loss = _step(model, optimizer, data, batches[step], *step_args)
            except Diverged as exc:
                kept = f"; the checkpoint of step {saved} is kept" if saved else ""
                raise Diverged(
                    f"training stopped at step {step + 1} of {total}: {exc}; nothing was written{kept} "
                    "(try a lower --lr)"
                ) from None
            losses.append(loss)
            step_tokens = _tokens(data, batches[step])
            tokens += step_tokens
            signum = interrupted()
            if parallel.main:
                try:
                    report(step + 1, total, loss, step_tokens, tokens, started)
                except KeyboardInterrupt:  # a callback stops the run: every process stops here
                    signum = signum or signal.SIGINT
            if parallel.any(signum is not None):
                raise Interrupted(signum or signal.SIGINT, "")
            if (step + 1) % every == 0 and step + 1 < total:
                if parallel.main:
                    save(step + 1, losses)
                saved = step + 1
    except KeyboardInterrupt as exc:
        if parallel.main:
            save(len(losses), losses)
        parallel.barrier()  # nobody leaves (and maybe resumes) before the checkpoint is complete
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        how = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        raise Interrupted(
            signum,
            f"{how} after step {len(losses)} of {total}; checkpoint saved in {folder / CHECKPOINT}: "
            "rerun with --resume to continue",
        ) from None
    return tokens


def _report(on_step, on_progress, step: int, total: int, loss: float, tokens: int, done: int, since: float):
    """Call the progress callbacks; ``done`` is the tokens of this invocation's steps so far."""
    if on_step is not None:
        on_step(step, total, loss)
    if on_progress is not None:
        elapsed = time.perf_counter() - since
        rate = done / elapsed if elapsed > 0 else 0.0
        on_progress(StepInfo(step, total, loss, tokens, rate, elapsed))


def _tokens(data: TrainingData, indices: list[int]) -> int:
    return sum(len(data.examples[i].input_ids) for i in indices)


def _float_dtype(model) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (quantised weights are not floating)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


@contextmanager
def _checkpointing(model, enabled: bool) -> Iterator[None]:
    """HF activation (gradient) checkpointing on the bare model while training; switched off afterwards.

    Non-reentrant, so frozen inputs need no ``requires_grad`` trick; HF still registers its input-grad hook
    (PEFT), which is removed again here with the rest.
    """
    if not enabled:
        yield
        return
    hf = bare_model(model)
    if not getattr(hf, "supports_gradient_checkpointing", False):
        raise TokenlensError(f"{type(hf).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    try:
        yield
    finally:
        if hasattr(hf, "activation_checkpointing_disable"):
            hf.activation_checkpointing_disable()
        else:
            hf.gradient_checkpointing_disable()
        if getattr(hf, "_require_grads_hook", None) is not None:
            hf.disable_input_require_grads()


@contextmanager
def _signals_deferred() -> Iterator[Callable[[], int | None]]:
    """Defer Ctrl-C (SIGINT) and SIGTERM: the handler only notes the signal; the loop acts on it at the end
    of a step, so a checkpoint never holds a half-applied step and an output is never half moved into place.

    Yields a function returning the first signal received (``None`` while there is none). Outside the main
    thread (where signal handlers cannot be set) nothing is deferred.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def note(signum: int, _frame: Any) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, note) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _step(
    model,
    optimizer,
    data: TrainingData,
    indices: list[int],
    pad: int,
    device,
    autocast=False,
    parallel=None,
    preserve: PreserveTerm | None = None,
) -> float:
    """One AdamW step on the batch ``indices``; returns its loss (mean over the batch's loss tokens, plus
    the preserve term ``preserve(model)`` when given, single process only).

    Raises :class:`Diverged` (without applying the update) when the loss or a gradient is not finite, and
    when the update made a trained weight non-finite (every process decides alike: the loss is summed over
    processes and the gradients are all-reduced).

    In a single process (``parallel`` None) the loss is HF's own mean. Data parallel, this process runs its
    share ``indices[rank::P]`` with HF's ``num_items_in_batch`` set to the whole batch's loss-token count
    (so its loss is its part of the global mean), scaled by ``P`` because DDP averages gradients; a process
    with an empty share runs one example with weight 0 so the gradient all-reduce still meets.
    """
    examples = [data.examples[i] for i in indices]
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
        if parallel is None:
            loss = model(**_pad(examples, pad, device)).loss
            loss = loss if preserve is None else loss + preserve(model)
            scaled = loss
        else:
            first = 0 if virtual_tokens(model) else 1  # labels shift by one: the first is no target
            items = sum(sum(1 for label in e.labels[first:] if label != IGNORE) for e in examples)
            share = examples[parallel.rank :: parallel.processes]
            loss = model(**_pad(share or examples[:1], pad, device), num_items_in_batch=items).loss
            loss = loss if share else loss * 0
            scaled = loss * parallel.processes
    optimizer.zero_grad(set_to_none=True)
    scaled.backward()
    value = float(loss.detach())
    value = value if parallel is None else parallel.total(value)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not math.isfinite(value):
        raise Diverged(f"the loss is {value}")
    if not _finite([p.grad for p in params if p.grad is not None]):
        raise Diverged("a gradient is not finite")
    try:
        optimizer.step()
    except RuntimeError as exc:  # an lr too large for the weights' dtype (1e39 in float32)
        if "without overflow" not in str(exc):
            raise
        raise Diverged(f"the update overflows the weights' dtype ({first_line(exc)})") from exc
    if not _finite(params):
        raise Diverged("the update made a trained weight non-finite")
    return value


def _preserve_record(kept, weight: float, term: PreserveTerm | None) -> dict[str, Any]:
    """The manifest's ``preserve``: the file, its hash, weight, size, the base's source and the KL term's
    first and last step values (unweighted, nats)."""
    if term is None:
        return {**kept.manifest(weight, "not used as a loss"), "used_for": "key statistics (covariance)"}
    record = kept.manifest(weight, term.base)
    if term.kls:
        record.update(kl_first=term.kls[0], kl_last=term.kls[-1])
    return record


def _finite(tensors: list[torch.Tensor]) -> bool:
    """Every element of every tensor is finite (one device synchronisation per device, not per tensor)."""
    flags: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in tensors:
        flags.setdefault(tensor.device, []).append(torch.isfinite(tensor).all())
    return all(bool(torch.stack(group).all()) for group in flags.values())


def _pad(examples: list, pad: int, device) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``labels``/``attention_mask``, each (batch, seq), on ``device``."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}

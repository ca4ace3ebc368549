"""The trainer: a plain, deterministic torch loop that never loses work.

``train`` applies a method from :mod:`tokenlens.training.methods` to a loaded model (in place), then runs
AdamW over a fixed batch schedule (:mod:`tokenlens.training.schedule`: epoch ``e`` visits the examples in
``randperm(n, seed + e)`` order, cut into batches; step ``k`` is the ``k``-th batch of that schedule), with
the learning rate of a schedule (constant by default, or linear or cosine decay, after an optional linear
warmup). Because the schedule is a pure function of the seed, a checkpoint needs only the step number, the
trainable parameters, the optimizer and scheduler states, the RNG states and the run's record so far;
resuming from it reaches bitwise the same weights as an uninterrupted run (on CPU).

The work is split over a few modules: :mod:`~tokenlens.training.settings` (every setting checked before any
model work), :mod:`~tokenlens.training.schedule` (batches, learning rates, the held-out eval examples),
:mod:`~tokenlens.training.step` (one optimizer step, gradient accumulation, the eval loss),
:mod:`~tokenlens.training.loop` (the loop, its record and checkpoints), :mod:`~tokenlens.training.runtime`
(deferred signals, activation checkpointing), and this one, which puts them together.

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokenlens.errors import TokenlensError, option
from tokenlens.files import CHECKPOINT
from tokenlens.training import checkpoint, folder, output
from tokenlens.training.data import load_jsonl
from tokenlens.training.located import auto_layers
from tokenlens.training.loop import History, StepInfo, report, run_loop
from tokenlens.training.methods import Method, get_method, trainable_count
from tokenlens.training.parallel import parallel_context
from tokenlens.training.preserve import WEIGHT as PRESERVE_WEIGHT
from tokenlens.training.preserve import PreserveTerm, load_preserve
from tokenlens.training.runtime import activation_checkpointing, signals_deferred, tensorboard_log
from tokenlens.training.schedule import hold_out, schedule, scheduler, warmup_of
from tokenlens.training.settings import (
    DEFAULT_EPOCHS,
    SEED_LIMIT,
    WEIGHT_DECAY,
    Controls,
    check_settings,
)
from tokenlens.training.step import Diverged, eval_loss, float_dtype

__all__ = [
    "DEFAULT_EPOCHS",
    "SEED_LIMIT",
    "Controls",
    "Diverged",
    "StepInfo",
    "TrainResult",
    "check_settings",
    "schedule",
    "train",
]


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
        lrs: (steps,) the learning rate each step used.
        eval_losses: ``{"step": s, "loss": l}`` per eval loss measured (none without an eval split).
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
    lrs: tuple[float, ...] = ()
    eval_losses: tuple[dict[str, Any], ...] = ()

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


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
    lr_schedule: str = "constant",
    warmup_steps: int | None = None,
    warmup_ratio: float | None = None,
    weight_decay: float = WEIGHT_DECAY,
    grad_accum: int = 1,
    eval_data: str | Path | None = None,
    eval_fraction: float | None = None,
    eval_every: int | None = None,
    tensorboard: str | Path | None = None,
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
        lr: Peak learning rate, finite and above 0 (default: the method's).
        batch_size: Examples per batch (over all processes together); a step runs ``grad_accum`` batches.
        seed: Seeds the data order, the held-out eval examples and torch's RNG (0 .. 2**64 - 1).
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
        lr_schedule, warmup_steps, warmup_ratio, weight_decay, grad_accum, eval_data, eval_fraction,
            eval_every, tensorboard: The optimisation controls (see
            :class:`~tokenlens.training.settings.Controls`; the defaults train as before they existed).

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
    controls = Controls(
        lr_schedule=lr_schedule,
        warmup_steps=warmup_steps,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        grad_accum=grad_accum,
        eval_data=eval_data,
        eval_fraction=eval_fraction,
        eval_every=eval_every,
        tensorboard=tensorboard,
    )
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
        controls=controls,
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
    data, held, eval_record = _eval_split(controls, data, loaded.tokenizer, max_length, vocab, seed)
    kept = None if preserve is None else load_preserve(preserve, loaded.tokenizer, max_length, vocab)
    if record.fit is not None and resume:
        raise TokenlensError(f"method {record.name} is solved in one go: there is nothing to resume")
    resolved, located = auto_layers(loaded, data, resolved)  # layers=auto: a causal trace of the data
    parallel = parallel_context()
    if kept is not None and parallel.processes > 1:
        raise TokenlensError(f"{option('preserve')} runs in a single process only (not data parallel)")
    per_step = batch_size * grad_accum
    n_batches = math.ceil(len(data.examples) / per_step)
    total = steps if steps is not None else (epochs or DEFAULT_EPOCHS) * n_batches
    if steps is None and epochs is None and record.steps is not None:
        total = record.steps
    lr = record.lr if lr is None else float(lr)
    warmup = warmup_of(controls.warmup_steps, controls.warmup_ratio, total)
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
        "lr_schedule": lr_schedule,
        "warmup_steps": warmup,
        "weight_decay": weight_decay,
        "grad_accum": grad_accum,
        "eval": None if eval_record is None else {**eval_record, "every": eval_every},
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
        autocast = device.type == "cuda" and float_dtype(core) == torch.float32
        params = [p for p in core.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        lrs = scheduler(optimizer, lr_schedule, warmup, total)
        start, history = 0, History()
        if resume:
            start, losses, saved = checkpoint.load(out_dir / CHECKPOINT, core, optimizer, identity, lrs)
            history = History(losses, list(saved.get("lrs", [])), list(saved.get("eval_losses", [])))
        batches = schedule(len(data.examples), per_step, total, seed)

        def evaluate() -> float:
            return eval_loss(core, held, batch_size, pad, device, autocast)

        def save(step: int, losses: list[float]) -> None:
            checkpoint.save(
                out_dir / CHECKPOINT, core, optimizer, identity, step, losses, lrs, history.state()
            )

        model.train()
        log = tensorboard_log(tensorboard) if tensorboard is not None and parallel.main else None
        with signals_deferred() as interrupted:  # also through publishing: never half an output
            if record.fit is not None:
                history = History(list(fitted))
                if held is not None:
                    history.eval_losses.append({"step": len(fitted), "loss": evaluate()})
                tokens = 0
            else:
                with activation_checkpointing(core, gradient_checkpointing):
                    micro = batch_size if grad_accum > 1 else None
                    tokens = run_loop(
                        model,
                        optimizer,
                        lrs,
                        data,
                        batches,
                        history,
                        start,
                        step_args=(
                            pad,
                            device,
                            autocast,
                            parallel if parallel.processes > 1 else None,
                            term,
                            micro,
                        ),
                        parallel=parallel,
                        every=checkpoint_every,
                        save=save,
                        report=lambda *args: report(on_step, on_progress, *args),
                        interrupted=interrupted,
                        folder=out_dir,
                        preserve=term,
                        evaluate=None if held is None else evaluate,
                        eval_every=eval_every,
                        log=log,
                    )
            if log is not None:
                log.close()
            core.eval()
            wall = time.perf_counter() - started
            run = {
                **({"located": located} if located is not None else {}),
                **({} if kept is None else {"preserve": _preserve_record(kept, preserve_weight, term)}),
                **({} if record.fit is None else {record.name: notes}),
                **_controls_record(controls, warmup, history, eval_record),
                "wall_s": wall,
                "tokens_per_s": tokens / wall if wall > 0 else 0.0,
                "device": str(device),
                "processes": parallel.processes,
                "gradient_checkpointing": gradient_checkpointing,
            }
            if parallel.main:
                trainable = trainable_count(core)
                output.publish(core, record, loaded, out_dir, identity, data, history.losses, trainable, run)
                shutil.rmtree(out_dir / CHECKPOINT, ignore_errors=True)
            parallel.barrier()  # every process returns once the output is complete
    return TrainResult(
        out_dir,
        record.name,
        resolved,
        total,
        tuple(history.losses),
        trainable_count(core),
        wall,
        str(device),
        parallel.processes,
        tuple(history.lrs),
        tuple(history.eval_losses),
    )


def _eval_split(controls: Controls, data, tokenizer, max_length: int, vocab: int, seed: int):
    """``(training data, eval examples or None, the manifest's eval record or None)``."""
    if controls.eval_fraction is not None:
        data, held = hold_out(data, controls.eval_fraction, seed)
        lines = [e.line for e in held]
        return data, held, {"fraction": controls.eval_fraction, "examples": len(held), "lines": lines}
    if controls.eval_data is not None:
        evaluated = load_jsonl(controls.eval_data, tokenizer, max_length, vocab_size=vocab)
        record = {
            "file": str(evaluated.path),
            "sha256": evaluated.sha256,
            "examples": len(evaluated.examples),
        }
        return data, evaluated.examples, record
    return data, None, None


def _controls_record(controls: Controls, warmup: int, history: History, eval_record) -> dict[str, Any]:
    """The manifest's record of the optimisation controls and what they measured."""
    record: dict[str, Any] = {
        "lr_schedule": controls.lr_schedule,
        "warmup_steps": warmup,
        "weight_decay": controls.weight_decay,
        "grad_accum": controls.grad_accum,
        "lrs": list(history.lrs),
    }
    if eval_record is not None:
        record["eval"] = {**eval_record, "every": controls.eval_every}
        record["eval_losses"] = [dict(e) for e in history.eval_losses]
    if controls.tensorboard is not None:
        record["tensorboard"] = str(controls.tensorboard)
    return record


def _preserve_record(kept, weight: float, term: PreserveTerm | None) -> dict[str, Any]:
    """The manifest's ``preserve``: the file, its hash, weight, size, the base's source and the KL term's
    first and last step values (unweighted, nats)."""
    if term is None:
        return {**kept.manifest(weight, "not used as a loss"), "used_for": "key statistics (covariance)"}
    record = kept.manifest(weight, term.base)
    if term.kls:
        record.update(kl_first=term.kls[0], kl_last=term.kls[-1])
    return record

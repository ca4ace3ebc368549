"""The trainer's resumable checkpoint: trainable parameters, optimizer, scheduler and RNG states, step,
losses and the rest of the run's history (learning rates, eval losses).

It is one file, ``out_dir/tokenlens-checkpoint/state.pt``, replaced atomically: written and synced under a
temporary name beside the folder, then renamed over the old file, so a crash or a full disk never leaves a
half-written checkpoint and the previous one stays readable until the new one is complete. Only the
trainable parameters are saved; the rest of the model is rebuilt from the base on resume.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tokenlens.errors import TokenlensError
from tokenlens.io import write_error
from tokenlens.training.settings import WEIGHT_DECAY

STATE = "state.pt"
"""The checkpoint file inside that folder."""
COMPARED = {
    "method": None,
    "base_fingerprint": None,
    "base_ref": None,
    "options": None,
    "data_sha256": None,
    "seed": None,
    "batch_size": None,
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "weight_decay": WEIGHT_DECAY,
    "grad_accum": 1,
    "eval": None,
}
"""The identity keys a resumed run must share with its checkpoint, with the value a checkpoint written before
the key existed stands for (the behaviour of that time)."""
SCHEDULED = "total_steps"
"""Compared too when the learning rate follows a schedule other than a constant one (its length shapes it)."""


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def staging_file(folder: Path) -> Path:
    """Where :func:`save` writes the next checkpoint before renaming it into ``folder`` (a sibling file)."""
    return folder.with_name(f".{folder.name}.{STATE}.tmp")


def save(
    folder: Path,
    model,
    optimizer,
    identity: dict,
    step: int,
    losses: list[float],
    scheduler=None,
    history: dict | None = None,
) -> None:
    """Write a checkpoint of ``step`` into ``folder`` (never a half-written one; see the module docstring).

    Raises:
        TokenlensError: It could not be written (disk full, permission denied …); the message says that the
            previous checkpoint, if any, is intact.
    """
    state = {
        "identity": identity,
        "step": step,
        "losses": list(losses),
        "trainable": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "history": history or {},
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    tmp = staging_file(folder)
    try:
        with open(tmp, "wb") as handle:  # a Python file: a full disk raises OSError, not a torch RuntimeError
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        folder.mkdir(exist_ok=True)
        os.replace(tmp, folder / STATE)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(folder / STATE, exc, "checkpoint") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load(folder: Path, model, optimizer, identity: dict, scheduler=None) -> tuple[int, list[float], dict]:
    """Restore the trainable parameters, optimizer, scheduler and RNG states; returns ``(step, losses,
    history)`` (``history``: the other lists the run records, e.g. ``lrs``; empty for an old checkpoint).

    The file is read with ``weights_only=True``: tensors, numbers, strings and containers only, so a
    tampered checkpoint cannot run code.

    Raises:
        TokenlensError: The checkpoint belongs to a different run (method, base, data, seed, …) or cannot be
            read.
    """
    try:
        state = torch.load(folder / STATE, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated file, a foreign pickle: one line either way
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise TokenlensError(
            f"cannot resume {folder.parent}: its checkpoint cannot be read (corrupt, or holds more than "
            f"tensors and numbers): {first}"
        ) from exc
    saved = state["identity"]
    keys = list(COMPARED)
    if identity.get("lr_schedule", "constant") != "constant" or identity.get("warmup_steps"):
        keys.append(SCHEDULED)
    for key in keys:
        theirs, ours = saved.get(key, COMPARED.get(key)), identity.get(key, COMPARED.get(key))
        if theirs != ours:
            raise TokenlensError(
                f"cannot resume {folder.parent}: its {key} ({theirs!r}) differs from this run's ({ours!r})"
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
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return int(state["step"]), list(state["losses"]), dict(state.get("history") or {})

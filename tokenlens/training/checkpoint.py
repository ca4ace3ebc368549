"""The trainer's resumable checkpoint: trainable parameters, optimizer and RNG states, step and losses.

It lives in ``out_dir/tokenlens-checkpoint`` and is replaced atomically: written to a temporary folder, then
renamed over the old one, so a crash never leaves a half-written checkpoint. Only the trainable parameters
are saved; the rest of the model is rebuilt from the base on resume.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from tokenlens.errors import TokenlensError

CHECKPOINT = "tokenlens-checkpoint"
"""The checkpoint folder's name inside the output folder."""


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def save(folder: Path, model, optimizer, identity: dict, step: int, losses: list[float]) -> None:
    """Write a checkpoint to ``folder.tmp`` and rename it over ``folder`` (never a half-written one)."""
    tmp = folder.with_name(folder.name + ".tmp")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {
        "identity": identity,
        "step": step,
        "losses": list(losses),
        "trainable": trainable_state(model),
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


def load(folder: Path, model, optimizer, identity: dict) -> tuple[int, list[float]]:
    """Restore the trainable parameters, optimizer and RNG states; returns ``(step, losses)``.

    The file is read with ``weights_only=True``: tensors, numbers, strings and containers only, so a
    tampered checkpoint cannot run code.

    Raises:
        TokenlensError: The checkpoint belongs to a different run (method, base, data, seed, …) or cannot be
            read.
    """
    try:
        state = torch.load(folder / "state.pt", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated file, a foreign pickle: one line either way
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise TokenlensError(
            f"cannot resume {folder.parent}: its checkpoint cannot be read (corrupt, or holds more than "
            f"tensors and numbers): {first}"
        ) from exc
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

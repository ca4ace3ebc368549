"""The trainer's output folder: checked before anything is written, then held for the run.

A run writes into ``--out``. Before the model loads, :func:`check_out_dir` only reads the folder: it must be
missing or empty, or hold a tokenlens output or checkpoint (then ``force`` replaces the output, ``resume``
continues the checkpoint). While the run trains, :func:`claim` holds the folder: it creates it, takes an
exclusive ``flock`` on it (a second run into the same folder stops at once; the kernel drops the lock when
the process ends, however it ends), checks it again under the lock and clears what an interrupted write of
ours left (a staging folder, a checkpoint being written).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tokenlens.errors import TokenlensError, option
from tokenlens.files import CHECKPOINT, MANIFEST, STAGING_PREFIX
from tokenlens.training import checkpoint
from tokenlens.training.parallel import Parallel


def check_out_dir(out_dir: Path, *, resume: bool, force: bool) -> None:
    """Refuse an output folder this run may not use (it only reads the folder).

    Without ``resume`` the folder must be missing or empty (leftovers of an interrupted write of ours do not
    count), or hold a tokenlens output or checkpoint and ``force`` be set; with ``resume`` it must hold a
    checkpoint.

    Raises:
        TokenlensError: Not a folder, in use without ``force``, not ours, or nothing to resume.
    """
    if resume:
        if not (out_dir / CHECKPOINT).is_dir():
            raise TokenlensError(f"nothing to resume: {out_dir} has no {CHECKPOINT} folder")
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise TokenlensError(f"{out_dir} is a file: {option('out_dir')} needs a folder")
    if out_dir.is_dir() and any(not _leftover(entry) for entry in out_dir.iterdir()):
        ours = (out_dir / MANIFEST).is_file() or (out_dir / CHECKPOINT).is_dir()
        if not force:
            raise TokenlensError(
                f"{out_dir} already exists; pass {option('force', True)} to replace its output or "
                f"{option('resume', True)}"
            )
        if not ours:
            raise TokenlensError(f"{out_dir} is not a tokenlens training output; remove it yourself")


def _leftover(entry: Path) -> bool:
    """A temporary file or folder that an interrupted write of ours left (a staging folder, a checkpoint
    being written): removed by the next run that holds the folder's lock."""
    return entry.name.startswith(STAGING_PREFIX) or entry == checkpoint.staging_file(
        entry.parent / CHECKPOINT
    )


@contextmanager
def claim(out_dir: Path, *, resume: bool, force: bool, parallel: Parallel) -> Iterator[None]:
    """Hold ``out_dir`` for the run: create it, lock it, check it again under the lock, clear leftovers.

    A folder it created is removed again when the run fails before writing anything into it.

    Only the main process locks and checks; every process raises when it fails, so none waits for the
    others at a barrier that will not come.

    Raises:
        TokenlensError: Another run holds the folder, it cannot be created, or :func:`check_out_dir`
            refuses it.
    """
    lock: int | None = None
    failure: TokenlensError | None = None
    created = parallel.main and not out_dir.exists()
    try:
        if parallel.main:
            try:
                lock = _lock(out_dir)
                check_out_dir(out_dir, resume=resume, force=force)
                for entry in out_dir.iterdir():
                    if _leftover(entry):
                        _remove(entry)
            except TokenlensError as exc:
                failure = exc
        if parallel.any(failure is not None):
            raise failure or TokenlensError(f"the main process cannot use {out_dir} (see its error)")
        yield
    except BaseException:
        if created and lock is not None and not any(out_dir.iterdir()):
            with suppress(OSError):
                out_dir.rmdir()  # a run that failed before writing anything leaves no empty folder behind
        raise
    finally:
        if lock is not None:
            os.close(lock)  # releases the lock


def _lock(out_dir: Path) -> int:
    """Create ``out_dir`` if needed and take an exclusive ``flock`` on it; returns the descriptor to close.

    The lock is on the folder itself (no lock file to leave behind) and belongs to this open descriptor, so
    the kernel drops it when the process ends, however it ends.

    Raises:
        TokenlensError: The folder cannot be created or opened, or another process holds the lock.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_dir, os.O_RDONLY)
    except OSError as exc:
        reason = exc.strerror or exc
        raise TokenlensError(f"cannot create or open the output folder {out_dir}: {reason}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise TokenlensError(
            f"{out_dir} is in use by another tokenlens training run; wait for it to end or choose another "
            f"{option('out_dir')}"
        ) from exc
    return fd


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

"""Writing files so that a crash or Ctrl-C leaves the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder and an atomic rename.

    Missing parent folders are created.
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_text`).

    Raises:
        TokenlensError: The file could not be written (disk full, permission denied …); the message says
            that a previous file at ``path`` is intact (or that nothing was written).
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_error(path, exc) from exc
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_error(path: str | Path, exc: OSError, what: str = "file"):
    """The one-line :class:`~tokenlens.errors.TokenlensError` for a failed write of ``path``.

    It names the path and the reason (``No space left on device`` …) and says whether an earlier ``what``
    there is intact (writes go through a temporary file, so it always is) or nothing was written.
    """
    from tokenlens.errors import TokenlensError

    path = Path(path)
    kept = f"the previous {what} there is intact" if path.exists() else "nothing was written"
    return TokenlensError(f"could not write {path}: {exc.strerror or exc}; {kept}")


def figures_folder(path: str | Path) -> Path:
    """The folder a Markdown report at ``path`` keeps its figures in: ``<name>_files/`` beside it."""
    path = Path(path)
    return path.with_name(path.stem + "_files")


def check_output_path(path: str | Path, *, force: bool, figures: bool = False) -> Path:
    """Refuse, before any work is done, an output path that exists (unless ``force``) or cannot be written.

    With ``figures`` (a Markdown report) its :func:`figures_folder` is refused the same way when it exists:
    the report would overwrite figures of that name in it.

    Raises:
        TokenlensError: The file (or figures folder) exists and ``force`` is false, the path is a folder, or
            its folder cannot be created or written to.
    """
    from tokenlens.errors import TokenlensError, option

    path = Path(path).expanduser()
    if path.is_dir():
        raise TokenlensError(f"{path} is a folder: give a file name")
    if path.exists() and not force:
        raise TokenlensError(f"{path} exists: pass {option('force', True)} to overwrite it")
    folder = figures_folder(path)
    if figures and folder.exists() and not force:
        raise TokenlensError(
            f"{folder} exists (the report's figures go there): pass {option('force', True)} to overwrite it"
        )
    if figures and folder.exists() and not folder.is_dir():
        raise TokenlensError(f"{folder} is a file, not a folder for the report's figures")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TokenlensError(f"cannot create the folder {path.parent}: {exc.strerror or exc}") from exc
    if not os.access(path.parent, os.W_OK):
        raise TokenlensError(f"cannot write to {path.parent}: permission denied")
    return path

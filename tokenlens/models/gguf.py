"""GGUF files, dequantised once into a safetensors checkpoint in tokenlens's cache.

transformers reads a GGUF file by dequantising every tensor (tens of seconds for a 135M model). tokenlens
does that once per file and saves config, weights (safetensors) and tokenizer under
``<cache>/gguf/<name>-<key>``, keyed by the file's path, size and modification time; later loads take about a
second. The weights stay what the GGUF holds: dequantised low-bit values, not the original training weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from pathlib import Path

from tokenlens.errors import TokenlensError, first_line
from tokenlens.files import CONFIG, GGUF_SOURCE, MODEL_WEIGHTS
from tokenlens.models.assets import cache_dir
from tokenlens.models.cachedir import build_once
from tokenlens.models.specs import spec_for_config

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
"""The first four bytes of every GGUF file; a little-endian uint32 format version follows."""
GGUF_VERSIONS = (2, 3)
"""The format versions transformers reads (version 1 files predate the current layout)."""


def converted_gguf(path: Path) -> Path:
    """A safetensors checkpoint folder with the contents of the GGUF file ``path`` (built on first use).

    Raises:
        TokenlensError: The file is not a readable GGUF model of a supported architecture, or its tensors do
            not fill exactly the model its metadata describes.
    """
    path = path.expanduser().resolve()
    _check_header(path)
    stat = path.stat()
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return build_once(cache_dir() / "gguf" / f"{path.stem}-{key}", lambda out: _convert(path, out))


def _check_header(path: Path) -> None:
    """Refuse a file that does not start as a GGUF file of a readable version, before anything parses it."""
    with path.open("rb") as file:
        head = file.read(8)
    if not head:
        raise TokenlensError(f"could not read GGUF file {path}: the file is empty")
    if head[:4] != GGUF_MAGIC:
        raise TokenlensError(
            f"could not read GGUF file {path}: not a GGUF file (bad magic: it starts with {head[:4]!r}, "
            f"not {GGUF_MAGIC!r})"
        )
    if len(head) < 8:
        raise TokenlensError(
            f"could not read GGUF file {path}: the file is truncated (it ends inside its header)"
        )
    version = int.from_bytes(head[4:], "little")
    if version not in GGUF_VERSIONS:
        readable = " and ".join(str(v) for v in GGUF_VERSIONS)
        raise TokenlensError(
            f"could not read GGUF file {path}: GGUF version {version} (a corrupt header?); "
            f"versions {readable} can be read"
        )


def _unreadable(exc: BaseException) -> str:
    """Why transformers could not read a GGUF file, in words about the file.

    transformers reports metadata text that is not UTF-8 as a config file that is "not a valid JSON file"
    (its GGUF reader shares the JSON config path), and a file cut short as a bare ``struct`` or numpy reshape
    error.
    """
    cause = exc.__context__ if isinstance(exc, OSError) and exc.__context__ is not None else exc
    if isinstance(cause, UnicodeDecodeError):
        return f"its metadata is corrupt (text that is not UTF-8: {first_line(cause)})"
    if isinstance(cause, struct.error) or "cannot reshape array" in str(cause):
        return f"the file is truncated or corrupt ({first_line(cause)})"
    return first_line(exc)


def _convert(path: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tokenlens.models.loading import check_weights_fit

    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a usable GGUF"
        raise TokenlensError(f"could not read GGUF file {path}: {_unreadable(exc)}") from exc
    spec_for_config(config)  # refuse an unsupported architecture before dequantising anything
    log.info("converting %s to a safetensors cache once (this takes ~30 s; later loads ~1 s)", path.name)
    try:
        model, report = AutoModelForCausalLM.from_pretrained(
            path.parent,
            gguf_file=path.name,
            dtype=torch.float32,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
        )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # noqa: BLE001
        raise TokenlensError(f"could not load GGUF file {path}: {_unreadable(exc)}") from exc
    except BaseException as exc:  # the Rust tokenizer panics (a BaseException) on a corrupt merge list
        if type(exc).__name__ != "PanicException":
            raise
        raise TokenlensError(f"could not load GGUF file {path}: its tokenizer is corrupt ({exc})") from exc
    check_weights_fit(f"GGUF file {path}", report)  # checked before the cache entry exists
    settings = model.config.to_dict()
    settings.pop("quantization_config", None)  # the saved weights are plain float32
    (out / CONFIG).write_text(json.dumps(settings, indent=2, sort_keys=True))
    save_model(model, str(out / MODEL_WEIGHTS))  # handles tied embedding/head storage
    tokenizer.save_pretrained(out)
    (out / GGUF_SOURCE).write_text(json.dumps({"gguf": str(path)}, indent=2))

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
from pathlib import Path

from tokenlens.errors import TokenlensError, first_line
from tokenlens.models.assets import cache_dir
from tokenlens.models.cachedir import build_once
from tokenlens.models.specs import spec_for_config

log = logging.getLogger(__name__)


def converted_gguf(path: Path) -> Path:
    """A safetensors checkpoint folder with the contents of the GGUF file ``path`` (built on first use).

    Raises:
        TokenlensError: The file is not a readable GGUF model of a supported architecture.
    """
    path = path.expanduser().resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return build_once(cache_dir() / "gguf" / f"{path.stem}-{key}", lambda out: _convert(path, out))


def _convert(path: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a usable GGUF"
        raise TokenlensError(f"could not read GGUF file {path}: {first_line(exc)}") from exc
    spec_for_config(config)  # refuse an unsupported architecture before dequantising anything
    log.info("converting %s to a safetensors cache once (this takes ~30 s; later loads ~1 s)", path.name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # noqa: BLE001
        raise TokenlensError(f"could not load GGUF file {path}: {first_line(exc)}") from exc
    settings = model.config.to_dict()
    settings.pop("quantization_config", None)  # the saved weights are plain float32
    (out / "config.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
    save_model(model, str(out / "model.safetensors"))  # handles tied embedding/head storage
    tokenizer.save_pretrained(out)
    (out / "tokenlens-source.json").write_text(json.dumps({"gguf": str(path)}, indent=2))

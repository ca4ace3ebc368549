"""What a finished run leaves in its output folder.

* the trained result: a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, whose
  ``base_model_name_or_path`` is the base reference, so ``tokenlens.load(out_dir)`` finds the base) or, for
  ``head``/``full``, a HF checkpoint folder (config, safetensors, tokenizer);
* ``tokenlens-manifest.json``: method, options, base reference and fingerprint, data hash, per-step and final
  loss, trainable parameter count, wall time, device, library versions;
* ``loss.png``: the loss curve.

The base fingerprint is a sha256 over every base parameter and buffer's name, dtype, shape and **full bytes**
(sorted by name), taken before the method is applied.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
from pathlib import Path
from typing import Any

import torch

from tokenlens.io import atomic_write_bytes, atomic_write_text

MANIFEST = "tokenlens-manifest.json"
LOSS_PNG = "loss.png"


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the model's named parameters and buffers (name, dtype, shape, bytes), sorted by name."""
    digest = hashlib.sha256()
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        flat = tensor.cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the libraries a run depends on."""
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for package in ("tokenlens", "torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            found[package] = md.version(package)
        except md.PackageNotFoundError:
            continue
    return found


def base_reference(loaded: Any) -> str:
    """How to load the base again: its folder's absolute path when it came from one, else its reference."""
    if getattr(loaded, "source", None) == "directory" and getattr(loaded, "path", None) is not None:
        return str(Path(loaded.path).resolve())
    return str(loaded.ref)


def write(
    model, record, loaded, out_dir: Path, identity: dict, data, losses, trainable: int, run: dict
) -> None:
    """Save the trained model, the manifest and the loss curve into ``out_dir``."""
    base = base_reference(loaded)
    if record.output == "adapter":
        for config in model.peft_config.values():
            config.base_model_name_or_path = base
        record.save(model, out_dir)
    else:
        record.save(model, out_dir)
        loaded.tokenizer.save_pretrained(str(out_dir))
    manifest = {
        "method": record.name,
        "options": identity["options"],
        "output": record.output,
        "head_tied": _head_tied(model) if record.name == "head" else None,
        "base_model": base,
        "base_fingerprint": identity["base_fingerprint"],
        "base_fingerprint_kind": "sha256: sorted name|dtype|shape|full bytes, all parameters and buffers",
        "data_file": str(data.path),
        "data_sha256": data.sha256,
        "data_counts": data.counts,
        "seed": identity["seed"],
        "batch_size": identity["batch_size"],
        "lr": identity["lr"],
        "steps": len(losses),
        "losses": list(losses),
        "final_loss": losses[-1],
        "trainable_parameters": trainable,
        **run,  # wall_s (this invocation), tokens_per_s (unpadded tokens), device
        "versions": versions(),
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    _plot(losses, out_dir / LOSS_PNG, record.name)


def _head_tied(model) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def _plot(losses: list[float], path: Path, method: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(range(1, len(losses) + 1), losses)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.set_title(f"tokenlens train --method {method}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())

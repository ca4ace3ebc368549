"""Capture every write to the residual stream during one real forward pass.

A pre-norm decoder's stream at the final norm is the sum of its writes::

    h_L = embed + Σ_l attn_l + Σ_l mlp_l

Forward hooks on the embedding, on each layer's attention and MLP modules, and a pre-hook on the final norm
record those writes and ``h_L`` itself. Nothing is re-implemented: the model runs its own forward; the hooks
only read. Hooks are registered by module object (PEFT wrappers keep the objects) and are always removed,
also when the forward raises.

A prompt-tuning adapter runs the layers on ``virtual + seq`` positions but calls the embedding on the
prompt's ``seq`` tokens only (its virtual embeddings are parameters, not embedding lookups): the layer hooks
then keep ``position + virtual`` and the embedding hook ``position``, so every kept row is the same token.

A 16-bit model (bfloat16, float16) rounds the stream after every addition: ``h ← round(h + w)``, so in
bfloat16 ``Σ writes`` can be several units away from ``h_L`` in the large dimensions. For such a model the
hooks also record the stream itself, entering each layer's two norms, and each component's write is its
**increment** of the stream, ``round(h + w) − h``, taken in float32: the write as the stream received it,
rounding included (it differs from the module's output by at most half a 16-bit unit of the stream). The
increments telescope, so they sum to ``h_L`` exactly, and a split of them is exact against the float32
readout of the stream the model really had.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from tokenlens.models.specs import ArchitectureSpec


@dataclass(frozen=True)
class ResidualCapture:
    """The residual-stream writes of one forward pass, at the kept positions.

    Attributes:
        names: Component names in model order: ``embed``, ``L0.attn``, ``L0.mlp``, ``L1.attn``, …
        writes: ``(component, batch, pos, d_model)`` each component's write: the module's output in the
            model's dtype, or for a 16-bit model (``increments``) its float32 increment of the stream.
        final_input: ``(batch, pos, d_model)`` the stream entering the final norm (``h_L``).
        positions: ``(pos,)`` the sequence positions kept, ascending.
        increments: The writes are the stream's float32 increments (a 16-bit model; see the module text).
    """

    names: tuple[str, ...]
    writes: torch.Tensor
    final_input: torch.Tensor
    positions: torch.Tensor
    increments: bool = False

    def __post_init__(self) -> None:
        if self.writes.shape[0] != len(self.names):
            raise ValueError(f"{len(self.names)} names for {self.writes.shape[0]} writes")
        if self.writes.shape[1:] != self.final_input.shape:
            raise ValueError(
                f"writes {tuple(self.writes.shape)} vs final input {tuple(self.final_input.shape)}"
            )


@dataclass
class _Recorder:
    """Mutable collector the hooks write into; turned into a :class:`ResidualCapture` after the pass."""

    positions: torch.Tensor | None
    writes: dict[str, torch.Tensor] = field(default_factory=dict)
    final_input: torch.Tensor | None = None
    stream: dict[str, torch.Tensor] = field(default_factory=dict)  # "L{i}.attn"/"L{i}.mlp" -> its input

    def keep(self, tensor: torch.Tensor, shift: int = 0) -> torch.Tensor:
        """The kept positions of ``tensor`` ``(batch, seq, d)``; ``shift`` virtual positions come first."""
        tensor = tensor.detach()
        if self.positions is not None:
            tensor = tensor[:, (self.positions + shift).to(tensor.device)]  # (batch, kept pos, d_model)
        elif shift:
            tensor = tensor[:, shift:]
        return tensor

    def result(self, names: tuple[str, ...]) -> ResidualCapture:
        missing = [n for n in names if n not in self.writes]
        if missing or self.final_input is None:
            raise RuntimeError(f"hooks did not fire for: {', '.join(missing) or 'final norm'}")
        device = self.final_input.device
        seq = self.final_input.shape[1]
        positions = self.positions if self.positions is not None else torch.arange(seq)
        if not self.stream:
            writes = torch.stack([self.writes[n].to(device) for n in names])  # (component, batch, pos, d)
            return ResidualCapture(names, writes, self.final_input, positions.cpu())
        # the stream entering each write's norm, then h_L: embed is the first state, each write a difference
        states = [self.stream[n].to(device, torch.float32) for n in names[1:]]
        states.append(self.final_input.to(torch.float32))
        steps = [after - before for before, after in zip(states, states[1:])]
        writes = torch.stack([states[0], *steps])  # (component, batch, pos, d) float32
        return ResidualCapture(names, writes, self.final_input, positions.cpu(), increments=True)


def rounds_stream(model: nn.Module, spec: ArchitectureSpec) -> bool:
    """Whether ``model`` keeps its residual stream in a 16-bit float type (the embedding's dtype)."""
    return spec.module(model, spec.embed).weight.dtype in (torch.float16, torch.bfloat16)


def component_names(spec: ArchitectureSpec, model: nn.Module) -> tuple[str, ...]:
    """``embed, L0.attn, L0.mlp, …`` for ``model``'s layer count."""
    n_layers = len(spec.layer_list(model))
    return ("embed",) + tuple(f"L{i}.{part}" for i in range(n_layers) for part in ("attn", "mlp"))


def _first(output: object) -> torch.Tensor:
    """A module's main output: attention returns ``(output, weights)``, some MoE blocks a tuple too."""
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value]


@contextmanager
def capture_residual(
    model: nn.Module, spec: ArchitectureSpec, positions: torch.Tensor | None = None, virtual: int = 0
) -> Iterator[_Recorder]:
    """Record each residual write of the forward passes run inside the ``with`` block.

    Args:
        model: A HF causal LM of the family ``spec`` describes, bare or PEFT-wrapped.
        spec: Its architecture spec.
        positions: Prompt positions to keep (``None`` keeps all); keeping few saves memory on long prompts.
        virtual: Virtual positions a prompt-tuning adapter runs before the prompt (see the module text).

    Yields:
        A recorder; call ``.result(component_names(spec, model))`` after the forward pass.
    """
    recorder = _Recorder(positions=None if positions is None else positions.long().cpu())
    handles = []

    def save(name: str, shift: int):
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
            recorder.writes[name] = recorder.keep(_first(output), shift)

        return hook

    def save_final(_module: nn.Module, inputs: tuple) -> None:
        recorder.final_input = recorder.keep(inputs[0], virtual)

    def save_stream(name: str):
        def hook(_module: nn.Module, inputs: tuple) -> None:
            recorder.stream[name] = recorder.keep(inputs[0], virtual)

        return hook

    increments = rounds_stream(model, spec)
    try:
        handles.append(spec.module(model, spec.embed).register_forward_hook(save("embed", 0)))
        for i, layer in enumerate(spec.layer_list(model)):
            handles.append(layer.get_submodule(spec.attn).register_forward_hook(save(f"L{i}.attn", virtual)))
            handles.append(layer.get_submodule(spec.mlp).register_forward_hook(save(f"L{i}.mlp", virtual)))
            if increments:  # the stream entering the norm before each write
                for part, norm in (("attn", spec.attn_norm), ("mlp", spec.mlp_norm)):
                    hook = save_stream(f"L{i}.{part}")
                    handles.append(layer.get_submodule(norm).register_forward_pre_hook(hook))
        handles.append(spec.module(model, spec.final_norm).register_forward_pre_hook(save_final))
        yield recorder
    finally:
        for handle in handles:
            handle.remove()

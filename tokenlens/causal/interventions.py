"""Hook context managers that read, replace or rescale activations during a real forward pass.

A causal effect is measured by changing one activation and letting the model run its own forward on the
change. Sites (:mod:`tokenlens.causal.sites`) name what to change; here each site's module gets a forward
hook (outputs: ``embed``, attention, MLP) or forward pre-hook (inputs: ``o_proj`` for heads, ``down_proj``
for neurons), one hook per module whatever the number of sites on it. Norms and rotary embeddings get
their own hooks: an RMSNorm's output is rescaled to replace its scale, and attention's
``position_embeddings`` keyword argument is replaced to switch RoPE off. Every hook is removed in a
``finally`` block, also when the forward raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from tokenlens.causal.experts import ExpertTaps, expert_taps
from tokenlens.causal.sites import Site, head_count, hook_point, site_slice
from tokenlens.errors import TokenlensError
from tokenlens.models.specs import ArchitectureSpec

Edit = Callable[[torch.Tensor], torch.Tensor]
"""Maps a site's activation ``(batch, seq, width)`` to its replacement of the same shape."""


def _groups(model: nn.Module, spec: ArchitectureSpec, sites: Sequence[Site]) -> dict[int, tuple]:
    """Sites grouped by hook point: ``id(module) -> (module, is_pre, [sites])``."""
    groups: dict[int, tuple] = {}
    for site in sites:
        module, pre = hook_point(model, spec, site)
        groups.setdefault(id(module), (module, pre, []))[2].append(site)
    return groups


def install(
    module: nn.Module, pre: bool, fn: Callable[[torch.Tensor], torch.Tensor | None]
) -> RemovableHandle:
    """Register ``fn`` on a hook point; ``fn`` sees the activation and returns a replacement or ``None``.

    Returns:
        The hook handle (the caller removes it).
    """
    if pre:

        def pre_hook(_module: nn.Module, args: tuple) -> tuple | None:
            if not args:
                raise RuntimeError(f"{type(_module).__name__} was called without a positional input")
            new = fn(args[0])
            return None if new is None else (new, *args[1:])

        return module.register_forward_pre_hook(pre_hook)

    def hook(_module: nn.Module, _args: tuple, output: object) -> object:
        first = output[0] if isinstance(output, tuple) else output
        new = fn(first)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return module.register_forward_hook(hook)


class Parts:
    """How a site's activation is read from, and written into, the tensor at its hook point.

    Heads and neurons are slices of the last dimension; whole modules are the whole tensor; a MoE expert
    is an additive term of the block output, computed by :class:`~tokenlens.causal.experts.ExpertTaps`.
    """

    def __init__(self, heads: int, taps: ExpertTaps) -> None:
        self.heads = heads
        self.taps = taps

    def slice(self, site: Site, width: int) -> slice:
        """The slice of the hook point's tensor the site's value lives in (all of it for an expert)."""
        return slice(None) if site.kind == "expert" else site_slice(site, width, self.heads)

    def get(self, site: Site, x: torch.Tensor) -> torch.Tensor:
        """The site's activation ``(batch, seq, width)`` within the hook point's tensor ``x``."""
        if site.kind == "expert":
            return self.taps.term(site, x)
        return x[..., self.slice(site, x.shape[-1])]

    def put(self, site: Site, new: torch.Tensor, old: torch.Tensor, value: torch.Tensor) -> None:
        """Make ``value`` the site's activation in ``new`` (a copy being edited in place) instead of ``old``,
        the activation :meth:`get` read."""
        if site.kind == "expert":
            new += value - old
        else:
            new[..., self.slice(site, new.shape[-1])] = value


@contextmanager
def hooks(model: nn.Module, spec: ArchitectureSpec, sites: Sequence[Site], make: Callable) -> Iterator[None]:
    """Install one hook per hook point; ``make(sites, parts)`` builds its activation function."""
    handles = []
    with expert_taps(model, spec, sites) as taps:
        parts = Parts(head_count(model), taps)
        try:
            for module, pre, group in _groups(model, spec, sites).values():
                handles.append(install(module, pre, make(group, parts)))
            yield
        finally:
            for handle in handles:
                handle.remove()


@contextmanager
def record(
    model: nn.Module, spec: ArchitectureSpec, sites: Sequence[Site]
) -> Iterator[dict[str, torch.Tensor]]:
    """Record each site's activation ``(batch, seq, width)`` (detached copies) during the ``with`` block.

    Yields:
        A dict filled by the forward pass: site name -> its activation (``width`` is 1 for a neuron).
    """
    values: dict[str, torch.Tensor] = {}

    def make(group: list[Site], parts: Parts) -> Callable:
        def fn(x: torch.Tensor) -> None:
            for site in group:
                values[site.name] = parts.get(site, x).detach().clone()

        return fn

    with hooks(model, spec, sites, make):
        yield values


@contextmanager
def replace(model: nn.Module, spec: ArchitectureSpec, edits: Mapping[Site, Edit]) -> Iterator[None]:
    """Replace each site's activation by ``edits[site](activation)`` in the forward passes of the block.

    Edits of one hook point all read the unmodified activation and write into one copy of it.
    """

    def make(group: list[Site], parts: Parts) -> Callable:
        def fn(x: torch.Tensor) -> torch.Tensor:
            new = x.clone()
            for site in group:
                old = parts.get(site, x)
                parts.put(site, new, old, edits[site](old))
            return new

        return fn

    with hooks(model, spec, list(edits), make):
        yield


def zeroed(positions: Sequence[int] | None = None) -> Edit:
    """An edit that sets the activation to zero (at ``positions`` only, when given)."""
    return constant(torch.zeros(()), positions)


def scaled(factor: float, positions: Sequence[int] | None = None) -> Edit:
    """An edit that multiplies the activation by ``factor`` (at ``positions`` only, when given)."""
    return _at(lambda a: a * factor, positions)


def constant(value: torch.Tensor, positions: Sequence[int] | None = None) -> Edit:
    """An edit that sets the activation to ``value``, broadcast to ``(batch, seq, width)``.

    ``value`` may be ``()``, ``(width,)`` (the same at every position) or ``(1 or batch, seq, width)``.
    """
    return _at(lambda a: value.to(a).expand_as(a), positions)


def _at(edit: Edit, positions: Sequence[int] | None) -> Edit:
    if positions is None:
        return edit

    def at(a: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(list(positions), device=a.device)
        new = a.clone()
        new[:, index] = edit(a)[:, index]
        return new

    return at


def norm_epsilon(norm: nn.Module) -> float:
    """The epsilon of an RMSNorm module (``variance_epsilon`` in HF models, ``eps`` elsewhere)."""
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if eps is None:
        raise ValueError(f"{type(norm).__name__} exposes no epsilon")
    return float(eps)


@contextmanager
def rescale_norm(
    norm: nn.Module,
    scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seen: list[torch.Tensor] | None = None,
) -> Iterator[None]:
    """Make an RMSNorm act as if its scale were ``scale(s)``, by rescaling its real output.

    An RMSNorm computes ``g ⊙ x · s`` with ``s = 1/sqrt(mean(x²) + ε)`` per position. A forward hook reads
    ``s`` from the module's input (float32, ``(batch, seq)``), appends it to ``seen`` and, when ``scale``
    is given, multiplies the output by ``scale(s) / s``: the model then runs on with the norm's scale
    replaced, and nothing of the norm or the head is re-implemented.
    """
    eps = norm_epsilon(norm)

    def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        s = torch.rsqrt(args[0].float().pow(2).mean(-1) + eps)  # (batch, seq)
        if seen is not None:
            seen.append(s.detach())
        if scale is None:
            return None
        ratio = scale(s).to(s) / s  # (batch, seq)
        return (output.float() * ratio[..., None]).to(output.dtype)

    handle = norm.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def without_rope(model: nn.Module, spec: ArchitectureSpec, layers: Sequence[int]) -> Iterator[None]:
    """Run the attention of ``layers`` without rotary position information.

    Each attention module receives ``position_embeddings=(cos, sin)`` (computed by the spec's ``rotary``
    module) as a keyword argument and applies ``q·cos + rotate_half(q)·sin`` (likewise to ``k``;
    transformers 5.24 ``apply_rotary_pos_emb``). A ``with_kwargs`` pre-hook replaces the pair by ``(m, 0)``,
    ``m`` being the factor the rotary module scales both tables by (YaRN's attention factor, 1 for plain
    RoPE; :meth:`~tokenlens.models.specs.ArchitectureSpec.rotary_scale`). That makes the rotation the
    identity and keeps the attention temperature, so the layer's attention scores no longer depend on
    relative position and nothing else changes (the causal mask still applies).

    Raises:
        TokenlensError: The attention module is not called with ``position_embeddings``.
    """
    scaling = spec.rotary_scale(model)

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        cos, sin = _rotary_tables(module, kwargs)
        return args, {**kwargs, "position_embeddings": (torch.full_like(cos, scaling), torch.zeros_like(sin))}

    with _attention_pre_hooks(model, spec, dict.fromkeys(layers, hook)):
        yield


def _rotary_tables(module: nn.Module, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(cos, sin)`` an attention module is called with.

    Raises:
        TokenlensError: It is not called with ``position_embeddings``.
    """
    pair = kwargs.get("position_embeddings")
    if pair is None:
        raise TokenlensError(
            "RoPE ablation needs attention modules called with position_embeddings=(cos, sin); "
            f"{type(module).__name__} is not"
        )
    return pair


@contextmanager
def _attention_pre_hooks(
    model: nn.Module, spec: ArchitectureSpec, hooks_by_layer: Mapping[int, Callable]
) -> Iterator[None]:
    """Register each layer's ``with_kwargs`` forward pre-hook on its attention module for the block."""
    all_layers = spec.layer_list(model)
    handles = []
    try:
        for i, hook in hooks_by_layer.items():
            attn = all_layers[i].get_submodule(spec.attn)
            handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def block_virtual_attention(
    model: nn.Module, spec: ArchitectureSpec, blocked: Sequence[Sequence[int]], virtual: int
) -> Iterator[None]:
    """Stop the prompt's positions from attending to the first ``virtual`` positions in chosen layers.

    A prompt-tuning adapter's virtual positions reach the prompt only through attention. Row ``r`` of the
    batch gets that path cut in the layers ``blocked[r]``: a ``with_kwargs`` pre-hook on those layers'
    attention modules narrows the ``attention_mask`` they are called with (a boolean mask for sdpa, an
    additive one for eager; combined with the model's own causal/padding mask), so queries at positions
    ``≥ virtual`` get no weight on keys ``< virtual``; the virtual positions themselves are unchanged.

    Raises:
        TokenlensError: The model uses an attention implementation other than sdpa or eager, or its
            attention modules are not called with ``hidden_states``/``attention_mask`` keywords.
    """
    layers = sorted({i for row in blocked for i in row})

    def hook_for(layer: int):
        rows = [r for r, chosen in enumerate(blocked) if layer in chosen]

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if hidden is None or "attention_mask" not in kwargs:
                raise TokenlensError(
                    f"cannot cut attention in {type(module).__name__}: it is not called with "
                    "hidden_states/attention_mask keywords"
                )
            kind = module.config._attn_implementation
            if kind not in ("sdpa", "eager"):
                raise TokenlensError(f"cutting attention needs sdpa or eager attention, not {kind!r}")
            batch, q = hidden.shape[:2]
            allowed = torch.ones(batch, 1, q, q, dtype=torch.bool, device=hidden.device).tril()
            allowed[rows, :, virtual:, :virtual] = False
            mask = kwargs["attention_mask"]
            if mask is None and kind == "sdpa":
                mask = allowed
            elif mask is None:
                mask = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
                mask = mask.masked_fill(~allowed, torch.finfo(hidden.dtype).min)
            elif mask.dtype == torch.bool:
                mask = mask & allowed[..., -mask.shape[-1] :]
            else:
                mask = mask.masked_fill(~allowed[..., -mask.shape[-1] :], torch.finfo(mask.dtype).min)
            return args, {**kwargs, "attention_mask": mask}

        return hook

    with _attention_pre_hooks(model, spec, {i: hook_for(i) for i in layers}):
        yield


@contextmanager
def replace_rows(
    model: nn.Module, spec: ArchitectureSpec, edits_by_row: Sequence[Mapping[Site, Edit]]
) -> Iterator[None]:
    """:func:`replace` with one set of edits per batch row: row ``r`` gets ``edits_by_row[r]``.

    Each edit sees its own row's activation ``(1, seq, width)``, as it would in a run of that row alone,
    and rows without edits at a hook point are left as they are. Not for expert sites (their terms are
    computed for the whole batch).
    """
    sites = list(dict.fromkeys(site for edits in edits_by_row for site in edits))
    if any(site.kind == "expert" for site in sites):
        raise ValueError("replace_rows does not take expert sites")

    def make(group: list[Site], parts: Parts) -> Callable:
        def fn(x: torch.Tensor) -> torch.Tensor:
            new = x.clone()
            for r, edits in enumerate(edits_by_row):
                for site in group:
                    if site in edits:
                        old = parts.get(site, x[r : r + 1])
                        parts.put(site, new[r : r + 1], old, edits[site](old))
            return new

        return fn

    with hooks(model, spec, sites, make):
        yield


@contextmanager
def without_rope_rows(
    model: nn.Module, spec: ArchitectureSpec, layers_by_row: Sequence[Sequence[int]]
) -> Iterator[None]:
    """:func:`without_rope` with its own layers per batch row: row ``r`` runs the attention of
    ``layers_by_row[r]`` without rotary positions, the other rows keep their rotation.

    The ``(cos, sin)`` pair is expanded to one table per row and only the chosen rows are set to
    ``(m, 0)``: those rows compute exactly what :func:`without_rope` computes on a run of their own.

    Raises:
        TokenlensError: The attention module is not called with ``position_embeddings``.
    """
    scaling = spec.rotary_scale(model)
    batch = len(layers_by_row)

    def hook_for(layer: int) -> Callable:
        chosen = [r for r, layers in enumerate(layers_by_row) if layer in layers]

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            cos, sin = (t.expand(batch, *t.shape[1:]).clone() for t in _rotary_tables(module, kwargs))
            cos[chosen], sin[chosen] = scaling, 0.0
            return args, {**kwargs, "position_embeddings": (cos, sin)}

        return hook

    chosen = sorted({i for layers in layers_by_row for i in layers})
    with _attention_pre_hooks(model, spec, {i: hook_for(i) for i in chosen}):
        yield


@contextmanager
def rescale_norm_rows(norm: nn.Module, values: Mapping[int, float]) -> Iterator[None]:
    """:func:`rescale_norm` holding the scale at ``values[r]`` in batch row ``r`` (every position), only in
    the rows named; the other rows' output is left untouched.

    Each chosen row's output is multiplied by ``value / s`` exactly as :func:`rescale_norm` does it on a
    run of that row alone.
    """
    eps = norm_epsilon(norm)
    rows = list(values)

    def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        new = output.clone()
        for r in rows:
            s = torch.rsqrt(args[0][r : r + 1].float().pow(2).mean(-1) + eps)  # (1, seq)
            ratio = torch.full_like(s, values[r]).to(s) / s
            new[r : r + 1] = (output[r : r + 1].float() * ratio[..., None]).to(output.dtype)
        return new

    handle = norm.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()

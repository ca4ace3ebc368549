"""Names for the places a causal experiment can change: components, heads and neurons.

The places are *sites*, named as in the attribution tables:

- ``embed``: the token embedding's output (the first residual write);
- ``L{i}.resid``: the residual stream entering layer ``i`` (the decoder layer's input ``hidden_states``:
  the embedding plus every write of layers ``< i``);
- ``L{i}.attn`` / ``L{i}.mlp``: layer ``i``'s attention / MLP write to the stream (the module's output;
  attention returns ``(output, weights)`` and only ``output`` is a site);
- ``L{i}.H{h}``: head ``h``'s slice ``z_h`` of the input of ``o_proj`` (``z`` is per query head, so
  grouped-query attention needs no special case);
- ``L{i}.N{n}``: MLP neuron ``n``, the ``n``-th entry of ``act = silu(gate) * up`` entering ``down_proj``
  (mixture-of-experts layers have no single ``down_proj`` and are refused);
- ``L{i}.E{e}``: routed expert ``e`` of a mixture-of-experts layer, its weighted output ``w_e · expert_e(x)``
  (zero at tokens not routed to it), an additive part of ``L{i}.mlp`` (:mod:`tokenlens.causal.experts`).

Modules are found through the :class:`~tokenlens.models.specs.ArchitectureSpec`, which looks through PEFT
wrappers: a LoRA-wrapped ``o_proj`` is found as its wrapper, whose input is the same ``z``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from tokenlens.errors import TokenlensError
from tokenlens.models.specs import ArchitectureSpec, bare_model, optional_submodule

KINDS = ("embed", "resid", "attn", "mlp", "head", "neuron", "expert")
_INDEX = r"(\d+|\d+-\d+|\*)"
_PATTERN = re.compile(rf"^L{_INDEX}\.(resid|attn|mlp|H{_INDEX}|N{_INDEX}|E{_INDEX})$")
_SYNTAX = (
    "use embed, L{i}.resid, L{i}.attn, L{i}.mlp, L{i}.H{h}, L{i}.N{n} or L{i}.E{e} "
    "(ranges and wildcards: L0-2.mlp, L3.H*)"
)


@dataclass(frozen=True)
class Site:
    """One place whose activation can be read or replaced.

    Attributes:
        name: Its stable name: ``embed``, ``L3.resid``, ``L3.attn``, ``L3.mlp``, ``L3.H5``, ``L3.N120`` or
            ``L3.E7``.
        kind: One of ``embed``, ``resid``, ``attn``, ``mlp``, ``head``, ``neuron``, ``expert``.
        layer: The decoder layer index (``None`` for ``embed``).
        index: The head, neuron or expert index (``None`` for whole modules).
    """

    name: str
    kind: str
    layer: int | None = None
    index: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown site kind {self.kind!r}")


def head_count(model: nn.Module) -> int:
    """The number of query heads per layer."""
    return int(bare_model(model).config.num_attention_heads)


def _n_neurons(model: nn.Module, spec: ArchitectureSpec, layer: int) -> int:
    """The width of layer ``layer``'s ``down_proj`` input, refusing mixture-of-experts layers."""
    module = optional_submodule(spec.layer_list(model)[layer], spec.mlp_out)
    if module is None:
        raise TokenlensError(
            f"layer {layer}'s MLP is a mixture of experts with no single down_proj: neuron sites "
            f"(L{layer}.N…) are not supported there"
        )
    return int(module.in_features)


def experts_module(model: nn.Module, spec: ArchitectureSpec, layer: int) -> nn.Module:
    """Layer ``layer``'s stacked routed-experts module, refusing layers without one."""
    module = optional_submodule(spec.layer_list(model)[layer], spec.experts)
    if module is None:
        raise TokenlensError(
            f"layer {layer}'s MLP has no routed experts: expert sites (L{layer}.E…) need a "
            "mixture-of-experts layer"
        )
    return module


def _n_experts(model: nn.Module, spec: ArchitectureSpec, layer: int) -> int:
    return spec.expert_count(experts_module(model, spec, layer))


def _indices(text: str, count: int, what: str, where: str) -> list[int]:
    """``"3"``, ``"0-2"`` or ``"*"`` as a list of indices below ``count``."""
    if text == "*":
        return list(range(count))
    low, _, high = text.partition("-")
    first, last = int(low), int(high or low)
    if first > last:
        raise TokenlensError(f"empty range {text!r} for {what}s{where}: write the lower index first")
    if last >= count:
        raise TokenlensError(
            f"{what} {last} does not exist: {where.strip() or 'the model'} has {count} {what}s "
            f"({what[0].upper()}0..{what[0].upper()}{count - 1})"
        )
    return list(range(first, last + 1))


def _parse_one(item: str, model: nn.Module, spec: ArchitectureSpec) -> list[Site]:
    if item == "embed":
        return [Site("embed", "embed")]
    match = _PATTERN.match(item)
    if match is None:
        raise TokenlensError(f"cannot read component {item!r}: {_SYNTAX}")
    layers = _indices(match.group(1), len(spec.layer_list(model)), "layer", "")
    part = match.group(2)
    if part[0] in "NE" and len(layers) > 1:  # several layers: only those that have neurons / experts
        path = spec.mlp_out if part[0] == "N" else spec.experts
        having = [i for i in layers if optional_submodule(spec.layer_list(model)[i], path) is not None]
        layers = having or layers[:1]  # none has them: the first one's error says so
    sites = []
    for i in layers:
        if part in ("resid", "attn", "mlp"):
            sites.append(Site(f"L{i}.{part}", part, i))
        elif part.startswith("H"):
            heads = _indices(match.group(3), head_count(model), "head", f" layer {i}")
            sites += [Site(f"L{i}.H{h}", "head", i, h) for h in heads]
        elif part.startswith("N"):
            neurons = _indices(match.group(4), _n_neurons(model, spec, i), "neuron", f" layer {i}'s MLP")
            sites += [Site(f"L{i}.N{n}", "neuron", i, n) for n in neurons]
        else:
            experts = _indices(match.group(5), _n_experts(model, spec, i), "expert", f" layer {i}'s MLP")
            sites += [Site(f"L{i}.E{e}", "expert", i, e) for e in experts]
    return sites


def parse_sites(text: str | Sequence[str], model: nn.Module, spec: ArchitectureSpec) -> tuple[Site, ...]:
    """Sites named by ``text``: comma-separated names, ranges (``L0-2.mlp``) and wildcards (``L3.H*``).

    Args:
        text: One string (``"L3.H0,L3.H5"``) or several; duplicates are dropped, order is kept.
        model: The model the names refer to (bare or PEFT-wrapped).
        spec: Its architecture spec.

    Raises:
        TokenlensError: A malformed name, an unknown layer / head / neuron / expert index, neurons of a
            mixture-of-experts layer, experts of a dense one, or no names at all.
    """
    items = [text] if isinstance(text, str) else list(text)
    names = [part.strip() for item in items for part in item.split(",") if part.strip()]
    if not names:
        raise TokenlensError(f"no components given: {_SYNTAX}")
    sites: dict[str, Site] = {}
    for name in names:
        for site in _parse_one(name, model, spec):
            sites.setdefault(site.name, site)
    return tuple(sites.values())


def layer_sites(model: nn.Module, spec: ArchitectureSpec) -> tuple[Site, ...]:
    """``embed, L0.attn, L0.mlp, …``: every write to the residual stream, in model order."""
    return (Site("embed", "embed"),) + tuple(
        Site(f"L{i}.{part}", part, i) for i in range(len(spec.layer_list(model))) for part in ("attn", "mlp")
    )


def head_sites(model: nn.Module, spec: ArchitectureSpec) -> tuple[Site, ...]:
    """Every attention head of every layer, ``L0.H0, L0.H1, …``."""
    return parse_sites("L*.H*", model, spec)


def expert_sites(model: nn.Module, spec: ArchitectureSpec) -> tuple[Site, ...]:
    """Every routed expert of every mixture-of-experts layer, ``L0.E0, L0.E1, …`` (none for a dense model)."""
    if not spec.moe:
        return ()
    try:
        return parse_sites("L*.E*", model, spec)  # the wildcard skips dense layers (``mlp_only_layers``)
    except TokenlensError:  # a routed family whose every layer is dense
        return ()


def hook_point(model: nn.Module, spec: ArchitectureSpec, site: Site) -> tuple[nn.Module, bool]:
    """The module whose activation holds ``site`` and whether it is its input (pre-hook) or its output."""
    if site.kind == "embed":
        return spec.module(model, spec.embed), False
    layer = spec.layer_list(model)[site.layer]
    if site.kind == "resid":  # the decoder layer's first positional input
        return layer, True
    if site.kind == "attn":
        return layer.get_submodule(spec.attn), False
    if site.kind in ("mlp", "expert"):  # an expert's share is taken out of the block's output
        return layer.get_submodule(spec.mlp), False
    if site.kind == "head":
        return layer.get_submodule(spec.attn_out), True
    _n_neurons(model, spec, site.layer)  # refuses mixture-of-experts layers
    return layer.get_submodule(spec.mlp_out), True


def site_slice(site: Site, width: int, n_heads: int) -> slice:
    """The last-dimension slice of a hook point's activation that holds ``site``."""
    if site.kind == "head":
        head_dim = width // n_heads
        return slice(site.index * head_dim, (site.index + 1) * head_dim)
    if site.kind == "neuron":
        return slice(site.index, site.index + 1)
    return slice(None)

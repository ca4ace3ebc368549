"""Expert sites: one routed expert's share of a mixture-of-experts block's output.

A routed block (Qwen3-MoE ``SparseMoeBlock``) sends each token to ``top_k`` experts chosen by its router and
writes ``Σ_k w_k · expert_{i_k}(x)`` to the stream. The site ``L{i}.E{e}`` is expert ``e``'s term,
``w_e · expert_e(x)`` at the tokens routed to ``e`` and zero elsewhere, ``(batch, seq, d_model)``: an additive
part of the block output ``L{i}.mlp``.

No tensor of the model holds that term, so it is computed from the block's own ``experts`` module: a
pre-hook keeps the ``(tokens, top_k_index, top_k_weights)`` the block calls it with, and the term is
expert ``e``'s weighted output on the tokens routed to ``e``, computed in float32 from that expert's weights
by :func:`~tokenlens.capture.internals.expert_output` (the function the attribution's expert split uses, so
both name the same term) and cast to the model's dtype. Recording every expert of a layer so costs one pass
of the routed tokens through their experts, as in the model's own forward. Replacing the term by
``v`` adds ``v - term`` to the block output; the router of later layers then sees the changed stream, as in
any patch. The gradient of a metric with respect to the term is its gradient with respect to the block
output, since the term enters it with coefficient one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from tokenlens.capture.internals import expert_output
from tokenlens.causal.sites import Site, experts_module
from tokenlens.errors import TokenlensError
from tokenlens.models.specs import ArchitectureSpec


class ExpertTaps:
    """The latest call's inputs of each tapped experts module, and each expert's term computed from them."""

    def __init__(self, spec: ArchitectureSpec, modules: dict[int, nn.Module]) -> None:
        self.spec = spec
        self.modules = modules
        self.inputs: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def term(self, site: Site, like: torch.Tensor) -> torch.Tensor:
        """Expert ``site.index``'s weighted output in layer ``site.layer``, shaped and typed as ``like``.

        Args:
            site: An ``expert`` site whose layer is tapped and has run in the current forward pass.
            like: The block output ``(batch, seq, d_model)``.
        """
        tokens, index, weights = self.inputs[site.layer]  # (N, d_model), (N, top_k), (N, top_k)
        chosen = index == site.index  # (N, top_k)
        routed = chosen.any(-1).nonzero()[:, 0]  # (n,) the tokens sent to this expert
        term = torch.zeros(tokens.shape[0], like.shape[-1], dtype=like.dtype, device=like.device)
        if len(routed):
            weight = (weights * chosen).sum(-1)[routed]  # (n,) its router weight at each routed token
            output = expert_output(self.spec, self.modules[site.layer], tokens[routed], site.index, weight)
            term[routed] = output.to(like.dtype)  # (n, d_model)
        return term.reshape(like.shape)


@contextmanager
def expert_taps(model: nn.Module, spec: ArchitectureSpec, sites: Sequence[Site]) -> Iterator[ExpertTaps]:
    """Tap the experts modules of the layers of the ``expert`` sites among ``sites`` (none: no hooks)."""
    layers = sorted({site.layer for site in sites if site.kind == "expert"})
    taps = ExpertTaps(spec, {i: experts_module(model, spec, i) for i in layers})

    def keep(layer: int):
        def hook(_module: nn.Module, args: tuple) -> None:
            if len(args) < 3:
                raise TokenlensError(
                    f"expert sites need layer {layer}'s experts called as (tokens, top_k_index, "
                    f"top_k_weights); {type(_module).__name__} got {len(args)} positional inputs"
                )
            taps.inputs[layer] = tuple(arg.detach() for arg in args[:3])

        return hook

    handles = [module.register_forward_pre_hook(keep(i)) for i, module in taps.modules.items()]
    try:
        yield taps
    finally:
        for handle in handles:
            handle.remove()

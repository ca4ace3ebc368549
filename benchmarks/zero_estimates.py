"""How well zero-ablation attribution-patching estimates find the largest exact zero-ablation effects.

On the default model (SmolLM2-135M), two prompts × three metrics: every layer write (embedding, each layer's
attention and MLP) is zero-ablated exactly, and its first-order estimate and its bound
``Σ_pos ‖a_pos‖·‖∂metric/∂a_pos‖`` (:func:`tokenlens.causal.estimates.bound`) are ranked against it. Prints,
per case, the Spearman correlation of |estimate| and of the bound with |exact|, and how many of the exact
top 5 are among the top 5 by estimate, and among the union of the top 5 by estimate and by bound (what
``check_estimates`` confirms for zero-ablation). About 6 minutes on two CPU cores::

    .venv/bin/python benchmarks/zero_estimates.py

Measured here: exact top 5 found 13 of 30 by the top 5 estimates, 23 of 30 by the union (8–10 sites).
"""

from __future__ import annotations

import torch

import tokenlens
from tokenlens.causal import ablate, layer_sites, metric_for
from tokenlens.causal.estimates import activation_gradients, bound
from tokenlens.causal.metrics import encode

CASES = (("The capital of France is", " Paris", " London"), ("The sun rises in the", " east", " west"))


def spearman(a: list[float], b: list[float]) -> float:
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main() -> None:
    loaded = tokenlens.load("smollm2-135m")
    model, spec = loaded.model, loaded.spec
    found_estimate = found_union = 0
    for prompt, target, contrast in CASES:
        ids = encode(loaded, prompt)
        for kind in ("logit_diff", "logit", "logprob"):
            metric = metric_for(
                loaded, prompt, kind=kind, target=target, contrast=contrast if kind == "logit_diff" else None
            )
            sites = list(layer_sites(model, spec))
            names = [s.name for s in sites]
            with torch.no_grad():
                exact = {
                    e.name: e.delta for e in ablate(model, spec, ids, metric, sites, together=False).each
                }
            _, pairs = activation_gradients(model, spec, ids, metric, sites)
            estimate = {n: float((-pairs[n][0] * pairs[n][1]).sum()) for n in names}
            bounds = {n: bound(*pairs[n]) for n in names}
            truth = set(sorted(names, key=lambda n: -abs(exact[n]))[:5])
            top_estimate = set(sorted(names, key=lambda n: -abs(estimate[n]))[:5])
            union = top_estimate | set(sorted(names, key=lambda n: -bounds[n])[:5])
            found_estimate += len(top_estimate & truth)
            found_union += len(union & truth)
            rho_e = spearman([abs(estimate[n]) for n in names], [abs(exact[n]) for n in names])
            rho_b = spearman([bounds[n] for n in names], [abs(exact[n]) for n in names])
            print(
                f"{prompt!r} {kind}: Spearman |estimate| {rho_e:.2f}, bound {rho_b:.2f}; exact top 5 found: "
                f"{len(top_estimate & truth)} by estimate, {len(union & truth)} by the union "
                f"({len(union)} sites)"
            )
    print(f"in all: {found_estimate} of {5 * 2 * 3} by estimate, {found_union} by the union")


if __name__ == "__main__":
    main()

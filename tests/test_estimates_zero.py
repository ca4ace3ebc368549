"""Zero-ablation attribution-patching estimates: besides the top sites by |estimate|, the sites with the
largest bound ``Σ_pos ‖a_pos‖·‖∂metric/∂a_pos‖`` are confirmed exactly, and every view says they mislead."""

from __future__ import annotations

import torch

from tokenlens.causal import ablate, check_estimates, layer_sites
from tokenlens.causal.effects import record_values
from tokenlens.causal.estimates import activation_gradients
from tokenlens.causal.metrics import encode, metric_for
from tokenlens.report.kinds import estimates as view
from tokenlens.report.kit import html, markdown
from tokenlens.report.kit.terminal import renderables_to_text

PROMPT = "The capital of France is"


def test_zero_ablation_confirms_the_largest_bounds_too(tiny_loaded):
    loaded = tiny_loaded("qwen3-untied-mha")
    model, spec = loaded.model, loaded.spec
    ids = encode(loaded, PROMPT)
    metric = metric_for(loaded, PROMPT)
    sites = list(layer_sites(model, spec))
    check = check_estimates(model, spec, ids, metric, sites, top_k=2)
    estimate = dict(zip(check.estimates.names, check.estimates.estimates.tolist(), strict=True))
    # the bound by hand: each position's activation norm (recorded without gradients) times its gradient norm
    values = record_values(model, spec, ids, sites)
    _, pairs = activation_gradients(model, spec, ids, metric, sites)
    bounds = {
        s.name: sum(
            float(values[s.name][0, p].float().norm() * pairs[s.name][1][0, p].norm())
            for p in range(ids.shape[1])
        )
        for s in sites
    }
    by_estimate = sorted(estimate, key=lambda n: -abs(estimate[n]))[:2]
    by_bound = sorted(bounds, key=lambda n: -bounds[n])[:2]
    names = [row.name for row in check.rows]
    assert set(names) == set(by_estimate) | set(by_bound) and len(names) == len(set(names))
    assert [abs(row.estimate) for row in check.rows] == sorted(
        (abs(estimate[n]) for n in names), reverse=True
    )
    exact = {e.name: e.delta for e in ablate(model, spec, ids, metric, sites, together=False).each}
    assert all(abs(row.exact - exact[row.name]) <= 1e-5 for row in check.rows)
    # a clean prompt: its estimates are confirmed as before, the top ones only
    clean = check_estimates(model, spec, ids, metric, sites, top_k=2, clean_ids=torch.roll(ids, 1, dims=1))
    assert len(clean.rows) == 2


def test_every_view_warns_about_zero_ablation_estimates(tiny_loaded):
    from tokenlens.causal import estimate_check

    loaded = tiny_loaded("qwen3-untied-mha")
    zero = estimate_check(loaded, PROMPT, top_k=2)
    result = None  # the views do not read the attribution for this section
    assert "rank components poorly" in view.ZERO_WARNING
    table = " ".join(renderables_to_text([view.to_table(zero, result)]).split())  # wrapped lines joined
    assert view.ZERO_WARNING in table
    assert html.escape(view.ZERO_WARNING) in view.to_html(zero, result)
    assert markdown.plain(view.ZERO_WARNING) in view.to_markdown(zero, result)
    patched = estimate_check(loaded, PROMPT, top_k=2, clean="The capital of Italy is")
    assert "rank components poorly" not in view.to_html(patched, result) + view.to_markdown(patched, result)

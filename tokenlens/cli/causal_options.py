"""The causal-effect options of ``tokenlens inspect`` (ablation, patching, estimates, norms, RoPE).

They measure effects by intervening on the real forward pass (:mod:`tokenlens.causal`), on the same prompt,
target and position as the attribution, and add their tables and JSON sections to its output.
"""

from __future__ import annotations

import argparse
from typing import Any

from tokenlens.errors import TokenlensError


def add_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("causal effects (measured by intervening on the forward pass)")
    group.add_argument(
        "--metric",
        choices=("logit", "logprob", "prob", "logit_diff"),
        help="what the effects are measured on (default: logit_diff with --vs, else logit)",
    )
    group.add_argument(
        "--ablate",
        metavar="SITES",
        help="ablate these, each alone and together: L3.H0,L3.H5 / L0-2.mlp / L1.N7 / L1.E3 (MoE expert)",
    )
    group.add_argument("--ablate-mode", choices=("zero", "mean", "resample"), default="zero")
    group.add_argument(
        "--reference",
        metavar="PROMPT",
        action="append",
        default=[],
        help="reference prompt(s) for --ablate-mode mean (several) or resample (one, same token length)",
    )
    group.add_argument(
        "--patch",
        metavar="CORRUPTED",
        help="patch each component from the --prompt (clean) run into this corrupted prompt's run",
    )
    group.add_argument(
        "--patch-sites", metavar="SITES", help="what --patch patches (default: embed and every layer)"
    )
    group.add_argument(
        "--estimate",
        metavar="K",
        type=int,
        default=0,
        help="attribution-patching estimates for every component, head and MoE expert, top K confirmed "
        "exactly (zero-ablation, or clean→corrupted with --patch)",
    )
    group.add_argument(
        "--rope", action="store_true", help="effect of removing rotary positions, per layer and all"
    )
    group.add_argument(
        "--virtual",
        action="store_true",
        help="prompt tuning: effect of cutting the attention to the virtual tokens, per layer and all",
    )
    group.add_argument(
        "--norms", action="store_true", help="effect of replacing each norm's scale by its mean"
    )


def wanted(args: argparse.Namespace) -> bool:
    """Whether any causal experiment was asked for (``--metric`` alone is refused: it measures nothing)."""
    asked = bool(args.ablate or args.patch or args.estimate or args.rope or args.norms or args.virtual)
    if not asked and (args.metric or args.reference or args.patch_sites):
        raise TokenlensError(
            "--metric, --reference, --patch-sites need one of --ablate, --patch, --estimate, --rope, "
            "--norms, --virtual"
        )
    return asked


def validate(args: argparse.Namespace) -> None:
    """Check the causal options that need no model (called before one loads)."""
    wanted(args)
    if args.estimate < 0:
        raise TokenlensError("--estimate must be 0 or more")
    if args.metric == "logit_diff" and args.vs is None and args.vs_id is None:
        raise TokenlensError("--metric logit_diff needs a contrast token: add --vs TOKEN")


def run(args: argparse.Namespace, loaded: Any, result: Any) -> list[tuple[str, Any]]:
    """Run the causal experiments asked for; ``[(json key, result object)]`` in display order."""
    import tokenlens.causal as causal

    validate(args)
    kind = args.metric or ("logit_diff" if result.contrast is not None else "logit")
    metric = causal.metric_for(
        loaded,
        list(result.token_ids),
        kind=kind,
        target_id=result.target.id,
        contrast_id=result.contrast.id if kind == "logit_diff" else None,
        position=result.position,
    )
    prompt = args.prompt
    out: list[tuple[str, Any]] = []
    if args.ablate:
        out.append(
            (
                "ablation",
                causal.ablation(
                    loaded,
                    prompt,
                    args.ablate,
                    mode=args.ablate_mode,
                    reference_prompts=args.reference,
                    metric=metric,
                    chat=args.chat,
                ),
            )
        )
    if args.patch:
        out.append(
            (
                "patching",
                causal.patching(loaded, prompt, args.patch, args.patch_sites, metric=metric, chat=args.chat),
            )
        )
    if args.estimate:
        corrupted, clean = (args.patch, prompt) if args.patch else (prompt, None)
        out.append(
            (
                "estimates",
                causal.estimate_check(
                    loaded, corrupted, None, top_k=args.estimate, clean=clean, metric=metric, chat=args.chat
                ),
            )
        )
    if args.rope:
        out.append(("rope", causal.rope_ablation(loaded, prompt, metric=metric, chat=args.chat)))
    if args.norms:
        out.append(("norms", causal.norm_ablation(loaded, prompt, metric=metric, chat=args.chat)))
    if args.virtual:
        out.append(("virtual", causal.virtual_ablation(loaded, prompt, metric=metric, chat=args.chat)))
    return out


def to_dict(key: str, value: Any) -> dict[str, Any]:
    from tokenlens.report import causal as render
    from tokenlens.report.lens import lens_to_dict

    converters = {
        "lens": lens_to_dict,
        "ablation": render.ablation_to_dict,
        "patching": render.patching_to_dict,
        "estimates": render.estimates_to_dict,
        "rope": render.ablation_to_dict,
        "virtual": render.ablation_to_dict,
        "norms": render.norms_to_dict,
    }
    return converters[key](value)


def table(key: str, value: Any) -> Any:
    from tokenlens.report import causal as render

    tables = {
        "ablation": render.ablation_table,
        "patching": render.patching_table,
        "estimates": render.estimates_table,
        "rope": render.ablation_table,
        "virtual": render.ablation_table,
        "norms": render.norms_table,
    }
    return tables[key](value)

"""The causal experiments of ``tokenlens inspect``: ablation, patching (per component and as layer ×
position grids), causal tracing, estimates, RoPE, norms, virtual.

They measure effects by intervening on the real forward pass (:mod:`tokenlens.causal`), on the same prompt,
target and position as the attribution, and their results become report sections. Each experiment is one
:class:`Experiment` record in :data:`EXPERIMENTS`: the options that ask for it and configure it, the
section key its result is shown under (:mod:`tokenlens.report.sections`), and the function that runs it.
The options are added, checked and run from that list, in its order (which is also the report's order).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenlens.errors import TokenlensError


@dataclass(frozen=True)
class Option:
    """One command-line option.

    Attributes:
        flag: The option (``--ablate``).
        kwargs: Its ``argparse`` keywords (help, metavar, type, default, …).
        needs_experiment: Giving it without any experiment is an error (it would change nothing).
        asks: It asks for its experiment too, like the experiment's first option (``--trace-positions``
            beside ``--trace``).
    """

    flag: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    needs_experiment: bool = False
    asks: bool = False

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments that holds its value."""
        return self.flag.removeprefix("--").replace("-", "_")


@dataclass(frozen=True)
class Experiment:
    """One causal experiment of ``tokenlens inspect``.

    Attributes:
        key: The report section its result is shown under (a :class:`~tokenlens.report.sections.SectionKind`
            key).
        options: Its options; the first one (and any marked ``asks``) asks for it: the experiment runs when
            one of their values is truthy.
        run: Runs it: ``run(args, loaded, metric)`` -> the result object, given the parsed arguments, the
            loaded model and the metric every experiment measures.
        unless: Asked for, it still does not run when this is true of the arguments (``--patch`` with
            ``--grid`` runs the grids only, unless ``--patch-sites`` asks for the per-component patching too).
    """

    key: str
    options: tuple[Option, ...]
    run: Callable[[argparse.Namespace, Any, Any], Any]
    unless: Callable[[argparse.Namespace], bool] | None = None

    @property
    def flag(self) -> str:
        """The option that asks for it."""
        return self.options[0].flag

    def asked(self, args: argparse.Namespace) -> bool:
        """Whether ``args`` ask for it."""
        asked = any(getattr(args, o.dest) for i, o in enumerate(self.options) if i == 0 or o.asks)
        return asked and not (self.unless is not None and self.unless(args))


def _ablation(args: argparse.Namespace, loaded: Any, metric: Any) -> Any:
    from tokenlens.causal import ablation

    return ablation(
        loaded,
        args.prompt,
        args.ablate,
        mode=args.ablate_mode,
        reference_prompts=args.reference,
        metric=metric,
        chat=args.chat,
    )


def _patching(args: argparse.Namespace, loaded: Any, metric: Any) -> Any:
    from tokenlens.causal import patching

    return patching(loaded, args.prompt, args.patch, args.patch_sites, metric=metric, chat=args.chat)


def _grid(args: argparse.Namespace, loaded: Any, metric: Any) -> Any:
    from tokenlens.causal.grids import patching_grids

    if not args.patch:
        raise TokenlensError("--grid patches between two prompts: add --patch CORRUPTED (same token length)")
    return patching_grids(
        loaded,
        args.prompt,
        args.patch,
        args.grid,
        metric=metric,
        chat=args.chat,
        reverse=args.grid_reverse,
        window=args.window,
    )


def _trace(args: argparse.Namespace, loaded: Any, metric: Any) -> Any:
    from dataclasses import replace

    from tokenlens.causal.tracing import trace

    if args.metric is None and metric.kind == "logit":  # the trace's default: the target's probability
        metric = replace(metric, kind="prob")
    return trace(
        loaded,
        args.prompt,
        args.trace,
        positions=args.trace_positions,
        kinds=args.trace_kinds,
        metric=metric,
        chat=args.chat,
        samples=args.trace_samples,
        window=args.window,
        seed=args.trace_seed,
        scale=args.noise_scale,
    )


def _estimates(args: argparse.Namespace, loaded: Any, metric: Any) -> Any:
    from tokenlens.causal import estimate_check

    corrupted, clean = (args.patch, args.prompt) if args.patch else (args.prompt, None)
    return estimate_check(
        loaded, corrupted, None, top_k=args.estimate, clean=clean, metric=metric, chat=args.chat
    )


def _rope(args: argparse.Namespace, loaded: Any, metric: Any) -> Any:
    from tokenlens.causal import rope_ablation

    return rope_ablation(loaded, args.prompt, metric=metric, chat=args.chat)


def _norms(args: argparse.Namespace, loaded: Any, metric: Any) -> Any:
    from tokenlens.causal import norm_ablation

    return norm_ablation(loaded, args.prompt, metric=metric, chat=args.chat)


def _virtual(args: argparse.Namespace, loaded: Any, metric: Any) -> Any:
    from tokenlens.causal import virtual_ablation

    return virtual_ablation(loaded, args.prompt, metric=metric, chat=args.chat)


METRIC = Option(
    "--metric",
    dict(
        choices=("logit", "logprob", "prob", "logit_diff"),
        help="what the effects are measured on (default: logit_diff with --vs, else logit)",
    ),
    needs_experiment=True,
)
"""The metric option, shared by every experiment."""

WINDOW = Option(
    "--window",
    dict(
        metavar="K",
        type=int,
        default=1,
        help="--grid/--trace: restore the attn/mlp outputs of K layers around each row together (default 1)",
    ),
)
"""The layer window, shared by the grid and the trace."""

EXPERIMENTS = (
    Experiment(
        "ablation",
        (
            Option(
                "--ablate",
                dict(
                    metavar="SITES",
                    help="ablate these, each alone and together: L3.H0,L3.H5 / L0-2.mlp / L1.N7 / L1.E3 "
                    "(MoE expert)",
                ),
            ),
            Option("--ablate-mode", dict(choices=("zero", "mean", "resample"), default="zero")),
            Option(
                "--reference",
                dict(
                    metavar="PROMPT",
                    action="append",
                    default=[],
                    help="reference prompt(s) for --ablate-mode mean (several) or resample (one, same token "
                    "length)",
                ),
                needs_experiment=True,
            ),
        ),
        _ablation,
    ),
    Experiment(
        "patching",
        (
            Option(
                "--patch",
                dict(
                    metavar="CORRUPTED",
                    help="patch each component from the --prompt (clean) run into this corrupted prompt's "
                    "run",
                ),
            ),
            Option(
                "--patch-sites",
                dict(metavar="SITES", help="what --patch patches (default: embed and every layer)"),
                needs_experiment=True,
            ),
        ),
        _patching,
        unless=lambda args: bool(args.grid) and not args.patch_sites,
    ),
    Experiment(
        "grid",
        (
            Option(
                "--grid",
                dict(
                    metavar="KINDS",
                    help="with --patch: layer × position patching grids: resid,attn,mlp,heads (any of them)",
                ),
            ),
            Option(
                "--grid-reverse",
                dict(action="store_true", help="write the corrupted run into the clean one instead (--grid)"),
                needs_experiment=True,
            ),
        ),
        _grid,
    ),
    Experiment(
        "trace",
        (
            Option(
                "--trace",
                dict(
                    metavar="SUBJECT",
                    help="causal tracing: noise these words of the prompt, restore each (layer, position)",
                ),
            ),
            Option(
                "--trace-positions",
                dict(metavar="A-B", help="causal tracing of these prompt positions instead (0-3, or 1,2)"),
                asks=True,
            ),
            Option(
                "--trace-kinds",
                dict(
                    metavar="KINDS",
                    default="resid,mlp,attn",
                    help="what the trace restores: resid, mlp, attn, resid-mlp-severed, resid-attn-severed "
                    "(default resid,mlp,attn)",
                ),
            ),
            Option(
                "--trace-samples",
                dict(metavar="N", type=int, default=5, help="noise samples averaged (default 5)"),
            ),
            Option(
                "--noise-scale",
                dict(
                    metavar="X",
                    type=float,
                    default=3.0,
                    help="noise std in embedding standard deviations (default 3)",
                ),
            ),
            Option(
                "--trace-seed", dict(metavar="N", type=int, default=0, help="the noise's seed (default 0)")
            ),
        ),
        _trace,
    ),
    Experiment(
        "estimates",
        (
            Option(
                "--estimate",
                dict(
                    metavar="K",
                    type=int,
                    default=0,
                    help="attribution-patching estimates for every component, head and MoE expert, top K "
                    "confirmed exactly (zero-ablation, or clean→corrupted with --patch)",
                ),
            ),
        ),
        _estimates,
    ),
    Experiment(
        "rope",
        (
            Option(
                "--rope",
                dict(action="store_true", help="effect of removing rotary positions, per layer and all"),
            ),
        ),
        _rope,
    ),
    Experiment(
        "norms",
        (
            Option(
                "--norms", dict(action="store_true", help="effect of replacing each norm's scale by its mean")
            ),
        ),
        _norms,
    ),
    Experiment(
        "virtual",
        (
            Option(
                "--virtual",
                dict(
                    action="store_true",
                    help="prompt tuning: effect of cutting the attention to the virtual tokens, per layer "
                    "and all",
                ),
            ),
        ),
        _virtual,
    ),
)
"""Every causal experiment, in the order they run and their sections are shown."""


def add_options(p: argparse.ArgumentParser) -> None:
    """Add :data:`METRIC` and every experiment's options to ``p``, in one group."""
    group = p.add_argument_group("causal effects (measured by intervening on the forward pass)")
    for option in (METRIC, WINDOW, *(o for e in EXPERIMENTS for o in e.options)):
        group.add_argument(option.flag, **option.kwargs)


def wanted(args: argparse.Namespace) -> bool:
    """Whether any experiment was asked for (an option that only configures one, alone, is refused)."""
    asked = any(e.asked(args) for e in EXPERIMENTS)
    modifiers = [o for o in (METRIC, *(o for e in EXPERIMENTS for o in e.options)) if o.needs_experiment]
    if not asked and any(getattr(args, o.dest) for o in modifiers):
        raise TokenlensError(
            f"{', '.join(o.flag for o in modifiers)} need one of {', '.join(e.flag for e in EXPERIMENTS)}"
        )
    return asked


def validate(args: argparse.Namespace) -> None:
    """Check the causal options that need no model (called before one loads)."""
    wanted(args)
    if args.estimate < 0:
        raise TokenlensError("--estimate must be 0 or more")
    if args.trace and args.trace_positions:
        raise TokenlensError("give --trace SUBJECT or --trace-positions A-B, not both")
    if args.grid and not args.patch:
        raise TokenlensError("--grid patches between two prompts: add --patch CORRUPTED (same token length)")
    for flag, value in (("--window", args.window), ("--trace-samples", args.trace_samples)):
        if value < 1:
            raise TokenlensError(f"{flag} must be 1 or more, got {value}")
    if not 0 < args.noise_scale < float("inf"):
        raise TokenlensError(f"--noise-scale must be a positive number, got {args.noise_scale}")
    if args.metric == "logit_diff" and args.vs is None and args.vs_id is None:
        raise TokenlensError("--metric logit_diff needs a contrast token: add --vs TOKEN")


def run(args: argparse.Namespace, loaded: Any, result: Any) -> list[tuple[str, Any]]:
    """Run the experiments asked for; ``[(section key, result object)]`` in :data:`EXPERIMENTS` order."""
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
    return [(e.key, e.run(args, loaded, metric)) for e in EXPERIMENTS if e.asked(args)]

"""The causal experiments of ``tokenlens inspect``: ablation, patching, estimates, RoPE, norms, virtual.

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
    """

    flag: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    needs_experiment: bool = False

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
        options: Its options; the first one asks for it (the experiment runs when its value is truthy).
        run: Runs it: ``run(args, loaded, metric)`` -> the result object, given the parsed arguments, the
            loaded model and the metric every experiment measures.
    """

    key: str
    options: tuple[Option, ...]
    run: Callable[[argparse.Namespace, Any, Any], Any]

    @property
    def flag(self) -> str:
        """The option that asks for it."""
        return self.options[0].flag

    def asked(self, args: argparse.Namespace) -> bool:
        """Whether ``args`` ask for it."""
        return bool(getattr(args, self.options[0].dest))


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
    for option in (METRIC, *(o for e in EXPERIMENTS for o in e.options)):
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

"""``tokenlens locate``: where in the prompt, and in which MLP layers, the model carries a target token."""

from __future__ import annotations

import argparse

from tokenlens.cli.feedback import feedback
from tokenlens.cli.options import ModelOptions, OutputOptions
from tokenlens.errors import TokenlensError

EPILOG = """examples:
  tokenlens locate --prompt "The Eiffel Tower is located in the city of" --target " Paris" \
      --subject "The Eiffel Tower"
  tokenlens locate --prompt "The capital of France is" --target " Paris" --subject France --format json
  tokenlens locate --prompt "The capital of France is" --positions 3 --samples 5 --window 3

A causal trace: Gaussian noise on the subject's token embeddings, then each window of MLP layers restored at
each noised position from the clean run; the position and window that bring back most of the target's
probability are the recommendation (windows that include layer 0 are shown, not chosen). Without --subject
or --positions every position but the last is noised. The result feeds `tokenlens train --option layers=auto`.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "locate",
        help="find the position and MLP layers that carry a target token (causal tracing)",
        description="Recommend where to edit: the prompt position and MLP layers a causal trace points to.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ModelOptions.add_arguments(p, base_help="base model of a PEFT adapter folder (default: the one it names)")
    p.add_argument("--prompt", required=True, help="the prompt whose prediction is traced")
    p.add_argument("--target", metavar="TOKEN", help="the token watched, as decoded text (default: top-1)")
    p.add_argument(
        "--first-token", action="store_true", help="accept a multi-token --target; use its first token"
    )
    p.add_argument("--subject", metavar="TEXT", help="words of the prompt to noise (its last occurrence)")
    p.add_argument("--positions", metavar="A-B", help="prompt positions to noise instead (0-3, or 1,2)")
    p.add_argument("--samples", type=int, default=3, help="noise samples averaged (default 3)")
    p.add_argument("--window", type=int, help="MLP layers restored together (default: a sixth of the layers)")
    p.add_argument("--seed", type=int, default=0, help="the noise's seed (default 0)")
    p.add_argument(
        "--chat", action="store_true", help="wrap the prompt as a user turn with the chat template"
    )
    OutputOptions.add_arguments(p, ("table", "json", "markdown", "md"), "table (terminal), json or markdown")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tokenlens.attribution.inputs import check_text

    for what, text in (("prompt", args.prompt), ("target", args.target), ("--subject", args.subject)):
        if text is not None:
            check_text(text, what)
    if not args.prompt.strip():
        raise TokenlensError("the prompt is empty: give some text to trace")
    if args.subject is not None and args.positions is not None:
        raise TokenlensError("give --subject TEXT or --positions A-B, not both")
    if args.samples < 1:
        raise TokenlensError(f"--samples must be 1 or more, got {args.samples}")
    if args.window is not None and args.window < 1:
        raise TokenlensError(f"--window must be 1 or more, got {args.window}")
    output = OutputOptions.from_args(args)
    model = ModelOptions.from_args(args)
    with feedback(f"loading {model.model}"):
        loaded = model.load()
    from tokenlens.causal.locate import locate

    with feedback("locating"):
        location = locate(
            loaded,
            args.prompt,
            args.target,
            subject=args.subject,
            positions=args.positions,
            first_token=args.first_token,
            chat=args.chat,
            samples=args.samples,
            window=args.window,
            seed=args.seed,
        )
    output.write(render(output, location))
    return 0


def render(output: OutputOptions, location) -> str | None:
    """The location in ``output.format`` (``None`` when the table was printed to the terminal)."""
    if output.format == "json":
        import json

        from tokenlens.report.location import location_to_dict

        return json.dumps(location_to_dict(location), indent=2, ensure_ascii=False) + "\n"
    if output.format == "markdown":
        from tokenlens.report.location import location_markdown

        return location_markdown(location)
    from tokenlens.report.location import location_table

    return output.terminal(location_table(location))

"""``tokenlens inspect``: explain one next-token prediction, component by component."""

from __future__ import annotations

import argparse
import sys

from tokenlens.cli import causal_options
from tokenlens.cli.feedback import feedback as progress
from tokenlens.cli.options import ModelOptions, OutputOptions
from tokenlens.errors import TokenlensError

EPILOG = """examples:
  tokenlens inspect --prompt "The capital of France is"
  tokenlens inspect --prompt "The capital of France is" --target " Paris"
  tokenlens inspect --prompt "The capital of France is" --target " Parisian" --first-token
  tokenlens inspect --prompt "The capital of France is" --position 2 --target-id 7042
  tokenlens inspect --prompt "The capital of France is" --target " Paris" --vs " London"
  tokenlens inspect --prompt "The capital of France is" --heads --neurons 5 --sources L23,L29.H4
  tokenlens inspect --model qwen3-tiny --prompt "Hello" --experts        (MoE models only)
  tokenlens inspect --model qwen3-tiny --prompt "Hi" --chat --format json --out out/hi.json
  tokenlens inspect --model path/to/adapter --base Qwen/Qwen3-0.6B --prompt "..."
  tokenlens inspect --prompt "The capital of France is" --completion " Paris, of course."   (whole answer)
  tokenlens inspect --prompt "The capital of France is" --generate 8 --heads
  tokenlens inspect --prompt "Once upon a time" --generate 20 --sample --temperature 0.8 --seed 1

Target strings are decoded text: " Paris" (leading space included) is usually a different token from
"Paris". Without --target the model's top-1 token (among ids the tokenizer can decode) is explained.
A --target of several tokens (without --first-token) is explained as the sequence log-probability of that
continuation, token by token, as --completion TARGET --logprob would.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="explain a next-token logit, per embedding / attention / MLP layer",
        description="Split the target token's logit exactly over the model's residual-stream components.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ModelOptions.add_arguments(p, base_help="base model of a PEFT adapter folder (default: the one it names)")
    p.add_argument("--prompt", required=True, help="text to predict from (used as is unless --chat)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target", metavar="TOKEN", help='token to explain, as decoded text, e.g. " Paris"')
    target.add_argument("--target-id", metavar="N", type=int, help="token to explain, by id")
    p.add_argument(
        "--first-token", action="store_true", help="accept a multi-token --target/--vs; use its first token"
    )
    contrast = p.add_mutually_exclusive_group()
    contrast.add_argument("--vs", metavar="TOKEN", help="contrast token: explain logit[target] − logit[vs]")
    contrast.add_argument("--vs-id", metavar="N", type=int, help="contrast token by id")
    contrast.add_argument(
        "--logprob", action="store_true", help="explain log p(target) instead of its logit (exact too)"
    )
    p.add_argument("--heads", action="store_true", help="split every attention layer by head (L{i}.H{h})")
    p.add_argument(
        "--sources",
        metavar="SCOPE",
        action="append",
        default=[],
        help="split by source token through a head or layer: L3.H2, L3, or all (repeatable, comma-separated)",
    )
    p.add_argument(
        "--neurons", metavar="K", type=int, default=0, help="top K neurons per MLP layer (L{i}.N{n})"
    )
    p.add_argument("--experts", action="store_true", help="split MoE layers by routed expert (L{i}.E{e})")
    p.add_argument(
        "--lens",
        nargs="?",
        const="last",
        choices=("last", "all"),
        help="logit lens: top tokens and the target after every layer, at the position (or all positions)",
    )
    p.add_argument(
        "--position", type=int, default=None, help="prompt position to explain (default -1: the last)"
    )
    p.add_argument(
        "--completion",
        metavar="TEXT",
        help="explain every token of this answer after the prompt (teacher-forced) and log p(answer)",
    )
    p.add_argument(
        "--generate", metavar="N", type=int, help="let the model write N tokens (greedy) and explain each one"
    )
    p.add_argument("--sample", action="store_true", help="sample the --generate tokens instead of greedy")
    p.add_argument("--temperature", metavar="T", type=float, help="sampling temperature (default 1.0)")
    p.add_argument("--seed", metavar="S", type=int, help="sampling seed (default 0)")
    p.add_argument(
        "--tokenize",
        choices=("joint", "separate"),
        help="tokenize --completion with the prompt (joint, default) or on its own (separate)",
    )
    p.add_argument(
        "--color-by",
        metavar="COMPONENT",
        help="colour a whole answer's tokens by this component's share (default: the largest, e.g. L3.mlp)",
    )
    p.add_argument(
        "--chat", action="store_true", help="wrap the prompt as a user turn with the chat template"
    )
    p.add_argument(
        "--thinking",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --chat: Qwen3's thinking or non-thinking mode (enable_thinking; default: the template's)",
    )
    p.add_argument("--top-k", type=int, default=10, help="how many alternative tokens to list (default 10)")
    OutputOptions.add_arguments(
        p,
        ("table", "json", "html", "markdown", "md"),
        "table (terminal), json, html (one self-contained file) or markdown / md (images beside it)",
    )
    causal_options.add_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    request = _request(args)  # everything that needs no model is checked before one loads
    causal_options.validate(args)
    _check_answer_flags(args)
    from tokenlens.attribution.inputs import check_text

    texts = {
        "prompt": args.prompt,
        "target": args.target,
        "--vs": args.vs,
        "--patch prompt": args.patch,
        "completion": args.completion,
    }
    for what, text in texts.items():
        if text is not None:
            check_text(text, what)
    if not args.prompt.strip():
        raise TokenlensError("the prompt is empty: give some text to predict from")
    if args.thinking is not None and not args.chat:
        raise TokenlensError(f"{_thinking_flag(args)} chooses the chat template's mode: add --chat")
    output = OutputOptions.from_args(args)
    model = ModelOptions.from_args(args)
    with progress(f"loading {model.model}"):
        loaded = model.load()
    loaded = _with_thinking(args, loaded)
    result, sections = _compute(args, loaded, request)
    with progress("rendering"):
        output.write(
            render(
                output,
                result,
                sections,
                _settings(model, getattr(args, "argv", None)),
                colour_by=args.color_by,
            )
        )
    return 0


def _thinking_flag(args: argparse.Namespace) -> str:
    return "--thinking" if args.thinking else "--no-thinking"


def _with_thinking(args: argparse.Namespace, loaded):
    """``loaded`` with its chat template set to ``--thinking`` / ``--no-thinking`` mode (as it is without)."""
    if args.thinking is None:
        return loaded
    import dataclasses

    from tokenlens.attribution.inputs import with_thinking

    try:
        return dataclasses.replace(loaded, tokenizer=with_thinking(loaded.tokenizer, args.thinking))
    except TokenlensError as exc:
        raise TokenlensError(f"{exc}: drop {_thinking_flag(args)}") from None


def _request(args: argparse.Namespace):
    """What to explain, from the flags (checked here, before any model loads)."""
    from tokenlens.attribution.request import AttributionRequest

    return AttributionRequest(
        target=args.target,
        target_id=args.target_id,
        first_token=args.first_token,
        vs=args.vs,
        vs_id=args.vs_id,
        logprob=args.logprob,
        position=-1 if args.position is None else args.position,
        chat=args.chat,
        top_k=args.top_k,
        heads=args.heads,
        neurons=args.neurons,
        experts=args.experts,
        sources=tuple(scope.strip() for item in args.sources for scope in item.split(",") if scope.strip()),
    )


def _whole_answer(args: argparse.Namespace) -> bool:
    return args.completion is not None or args.generate is not None


def _check_answer_flags(args: argparse.Namespace) -> None:
    """Refuse, before any model loads, whole-answer flags that contradict each other or the rest."""
    from tokenlens.attribution.sequence_inputs import check_generation

    if args.completion is not None and args.generate is not None:
        raise TokenlensError("give the answer as --completion TEXT or ask for --generate N, not both")
    check_generation(args.generate, args.sample, args.temperature, args.seed)
    if args.completion == "":
        raise TokenlensError("the completion is empty: give the text of the answer to explain")
    if args.tokenize is not None and args.completion is None:
        raise TokenlensError("--tokenize chooses how a --completion is tokenized: add --completion TEXT")
    if not _whole_answer(args):
        if args.color_by is not None and args.target is None:
            raise TokenlensError("--color-by colours a whole answer: add --completion TEXT or --generate N")
        return
    what = "--completion" if args.completion is not None else "--generate"
    if args.position is not None:
        raise TokenlensError(
            f"--position explains one prompt position; {what} explains every position after the prompt: drop "
            "--position"
        )
    if args.target is not None or args.target_id is not None:
        raise TokenlensError(f"the answer's tokens are the targets of {what}: drop --target/--target-id")
    _no_single_position_extras(args, what)


def _no_single_position_extras(args: argparse.Namespace, what: str) -> None:
    if args.lens:
        raise TokenlensError(f"--lens is not available with {what} (it reads one position): drop one of them")
    if causal_options.wanted(args):
        raise TokenlensError(
            f"causal experiments measure one position's metric and are not available with {what}: run them "
            "on a single position (without it)"
        )


def _sequence(args: argparse.Namespace, loaded, request, completion=None, source=None):
    """A whole answer: ``--completion``, ``--generate``, or a multi-token ``--target`` as its completion."""
    import dataclasses

    from tokenlens.attribution.sequence import attribute_sequence

    if completion is not None:
        request = dataclasses.replace(request, target=None, logprob=True)
    return attribute_sequence(
        loaded,
        args.prompt,
        request,
        completion=completion if completion is not None else args.completion,
        generate=args.generate,
        sample=args.sample,
        temperature=args.temperature,
        seed=args.seed,
        tokenize=args.tokenize or "joint",
        source=source,
    )


def _compute(args: argparse.Namespace, loaded, request):
    """The attribution and the report sections ``args`` ask for: the logit lens, then the causal ones; or a
    whole answer (``--completion``, ``--generate``, a multi-token ``--target``), which has no sections."""
    from tokenlens.attribution.direct import attribute
    from tokenlens.errors import MultiTokenTarget

    if _whole_answer(args):
        with progress("attributing the answer"):
            return _sequence(args, loaded, request), []
    try:
        with progress("attributing"):
            result = attribute(loaded, args.prompt, request)
    except MultiTokenTarget as exc:
        if args.target is None or exc.text != args.target or args.first_token:
            raise
        _no_single_position_extras(args, f"a target of several tokens ({exc.base})")
        if args.vs is not None or args.vs_id is not None:
            raise TokenlensError(
                f"{exc.base}: it is explained as its sequence log-probability, which has no contrast; drop "
                "--vs or add --first-token"
            ) from None
        with progress("attributing the answer"):
            return _sequence(args, loaded, request, completion=args.target, source="target"), []
    with progress("measuring"):
        lens = _lens(args, loaded, result)
        sections = [("lens", lens)] if lens is not None else []
        sections += causal_options.run(args, loaded, result) if causal_options.wanted(args) else []
    return result, sections


def _lens(args: argparse.Namespace, loaded, result):
    if not args.lens:
        return None
    from tokenlens.attribution.lens import logit_lens

    positions = None if args.lens == "all" else [result.position]
    return logit_lens(
        loaded, args.prompt, target_id=result.target.id, positions=positions, chat=args.chat, k=3
    )


def render(
    output: OutputOptions, result, sections: list, settings: dict[str, str], colour_by: str | None = None
) -> str | None:
    """The output text in ``output.format`` (``None`` when the table was printed to the terminal);
    ``colour_by`` names the component whose share colours a whole answer's tokens."""
    from tokenlens.attribution.sequence_result import SequenceAttribution

    if isinstance(result, SequenceAttribution):
        return render_sequence(output, result, settings, colour_by)
    if output.format == "json":
        import json

        from tokenlens.report.json_report import attribution_to_dict

        return json.dumps(attribution_to_dict(result, sections), indent=2, ensure_ascii=False) + "\n"
    if output.format == "html":
        from tokenlens.report.html import render_html
        from tokenlens.report.plots import attribution_figures, figure_png

        figures = attribution_figures(result, sections=sections)
        images = {key: figure_png(figure, dpi=80) for key, figure in figures.items()}
        return render_html(result, sections=sections, images=images, settings=settings)
    if output.format == "markdown":
        from tokenlens.report.markdown import render_markdown
        from tokenlens.report.plots import attribution_figures

        paths = output.figure_paths(attribution_figures(result, sections=sections))
        return render_markdown(result, sections=sections, image_paths=paths, settings=settings)
    from tokenlens.report.terminal import render_report

    return output.terminal(render_report(result, sections))


def render_sequence(
    output: OutputOptions, result, settings: dict[str, str], colour_by: str | None = None
) -> str | None:
    """A whole answer's output text in ``output.format`` (``None`` when printed to the terminal)."""
    try:
        from tokenlens.report.sequence_layout import colour_component

        colour_component(result, colour_by)
    except ValueError as exc:
        raise TokenlensError(f"--color-by: {exc}") from None
    if output.format == "json":
        import json

        from tokenlens.report.sequence_json import sequence_to_dict

        return json.dumps(sequence_to_dict(result), indent=2, ensure_ascii=False) + "\n"
    if output.format in ("html", "markdown"):
        from tokenlens.report.plots.sequence import sequence_figures

        figures = sequence_figures(result)
    if output.format == "html":
        from tokenlens.report.plots import figure_png
        from tokenlens.report.sequence_html import render_sequence_html

        images = {key: figure_png(figure, dpi=80) for key, figure in figures.items()}
        return render_sequence_html(result, images=images, settings=settings, colour_by=colour_by)
    if output.format == "markdown":
        from tokenlens.report.sequence_markdown import render_sequence_markdown

        paths = output.figure_paths(figures)
        return render_sequence_markdown(result, image_paths=paths, settings=settings, colour_by=colour_by)
    from tokenlens.report.sequence_terminal import render_sequence as terminal_view

    return output.terminal(terminal_view(result, colour_by))


def _settings(model: ModelOptions, argv: list[str] | None = None) -> dict[str, str]:
    """The run's settings for a report's settings section; the command shell-quoted (``shlex.join``), so it
    can be pasted back into a POSIX shell."""
    import shlex

    argv = sys.argv[1:] if argv is None else argv
    return {
        "command": shlex.join(["tokenlens", *argv]) if argv else "tokenlens (Python API)",
        "model": model.model,
        "dtype": model.dtype,
        "device": model.device,
    }

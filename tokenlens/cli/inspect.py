"""``tokenlens inspect``: explain one next-token prediction, component by component."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tokenlens.cli import causal_options
from tokenlens.errors import MultiTokenTarget, TokenlensError

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

Target strings are decoded text: " Paris" (leading space included) is usually a different token from
"Paris". Without --target the model's top-1 token (among ids the tokenizer can decode) is explained.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="explain a next-token logit, per embedding / attention / MLP layer",
        description="Split the target token's logit exactly over the model's residual-stream components.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p)
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
        "--position", type=int, default=-1, help="prompt position to explain (default -1: the last)"
    )
    p.add_argument(
        "--chat", action="store_true", help="wrap the prompt as a user turn with the chat template"
    )
    p.add_argument("--top-k", type=int, default=10, help="how many alternative tokens to list (default 10)")
    p.add_argument(
        "--format",
        choices=("table", "json", "html", "markdown", "md"),
        default="table",
        help="table (terminal), json, html (one self-contained file) or markdown / md (images beside it)",
    )
    p.add_argument("--out", metavar="PATH", help="write the output to PATH (atomically) instead of stdout")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    causal_options.add_options(p)
    p.set_defaults(run=run)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The model-loading options shared by every subcommand that loads a model."""
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="zoo name, checkpoint folder, .gguf file, adapter folder or hub id (default: smollm2-135m)",
    )
    p.add_argument("--base", help="base model of a PEFT adapter folder (default: from adapter_config.json)")
    p.add_argument(
        "--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--device-map", help="shard over GPUs with from_pretrained's device_map (e.g. auto)")
    p.add_argument("--quantize", choices=("4bit", "8bit"), help="load weights quantised with bitsandbytes")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a checkpoint's own code to run")
    p.add_argument(
        "--allow-pickle", action="store_true", help="allow pickle weight files (they can run code)"
    )


def load_from_args(args: argparse.Namespace):
    """:func:`tokenlens.load` with the options of :func:`add_model_options`."""
    import transformers

    from tokenlens.models.loading import load

    transformers.utils.logging.disable_progress_bar()  # tokenlens prints its own one-line notes
    transformers.utils.logging.set_verbosity_error()
    return load(
        args.model,
        base=args.base,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        quantize=args.quantize,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
    )


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise TokenlensError("--top-k must be at least 1")
    if args.neurons < 0:
        raise TokenlensError("--neurons must be 0 or more")
    causal_options.validate(args)  # everything that needs no model is checked before one loads
    from tokenlens.attribution.inputs import check_text

    texts = {"prompt": args.prompt, "target": args.target, "--vs": args.vs, "--patch prompt": args.patch}
    for what, text in texts.items():
        if text is not None:
            check_text(text, what)  # fail before loading a model
    if not args.prompt.strip():
        raise TokenlensError("the prompt is empty: give some text to predict from")
    args.format = "markdown" if args.format == "md" else args.format  # as `tokenlens diff` spells it
    if args.format in ("html", "markdown") and not args.out:
        raise TokenlensError(f"--format {args.format} writes a file: give --out PATH")
    if args.out:
        from tokenlens.io import check_output_path

        check_output_path(args.out, force=args.force, figures=args.format == "markdown")
    with progress(f"loading {args.model}"):
        loaded = load_from_args(args)
    try:
        result, sections = _compute(args, loaded)
    except MultiTokenTarget as exc:
        hint = f"pass --first-token to explain its first token {exc.pieces[0]!r}"
        raise TokenlensError(f"{exc.base}; {hint}") from exc
    with progress("rendering"):
        text = render(args, result, sections)
    if text is None:
        return 0
    if args.out:
        from tokenlens.io import atomic_write_text

        atomic_write_text(args.out, text)
        print(f"tokenlens: wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _compute(args: argparse.Namespace, loaded):
    """The attribution and the report sections ``args`` ask for: the logit lens, then the causal ones."""
    from tokenlens.attribution.direct import attribute

    with progress("attributing"):
        result = attribute(
            loaded,
            args.prompt,
            target=args.target,
            target_id=args.target_id,
            first_token=args.first_token,
            vs=args.vs,
            vs_id=args.vs_id,
            position=args.position,
            chat=args.chat,
            top_k=args.top_k,
            heads=args.heads,
            neurons=args.neurons,
            experts=args.experts,
            sources=[scope.strip() for item in args.sources for scope in item.split(",") if scope.strip()],
            logprob=args.logprob,
        )
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


def render(args: argparse.Namespace, result, sections: list) -> str | None:
    """The output text in ``args.format`` (``None`` when the table was printed to the terminal)."""
    if args.format == "json":
        import json

        from tokenlens.report.json_report import attribution_to_dict

        return json.dumps(attribution_to_dict(result, sections), indent=2, ensure_ascii=False) + "\n"
    if args.format == "html":
        from tokenlens.report.html import render_html
        from tokenlens.report.plots import attribution_figures, figure_png

        figures = attribution_figures(result, sections=sections)
        images = {key: figure_png(figure, dpi=80) for key, figure in figures.items()}
        return render_html(result, sections=sections, images=images, settings=_settings(args))
    if args.format == "markdown":
        from tokenlens.io import figures_folder
        from tokenlens.report.markdown import render_markdown
        from tokenlens.report.plots import attribution_figures, save_figure

        folder = figures_folder(args.out)
        paths = {}
        for key, figure in attribution_figures(result, sections=sections).items():
            png, _ = save_figure(figure, folder / key)
            paths[key] = f"{folder.name}/{png.name}"
        return render_markdown(result, sections=sections, image_paths=paths, settings=_settings(args))
    from tokenlens.report.terminal import render_report

    parts = render_report(result, sections)
    if args.out:
        from tokenlens.report.kit.terminal import renderables_to_text

        return renderables_to_text(parts)
    from rich.console import Console

    console = Console()
    for part in parts:
        console.print(part)
    return None


def _settings(args: argparse.Namespace) -> dict[str, str]:
    """The run's settings for a report's settings section."""
    return {
        "command": "tokenlens " + " ".join(sys.argv[1:]) if sys.argv[1:] else "tokenlens (Python API)",
        "model": args.model,
        "dtype": args.dtype,
        "device": args.device,
    }


@contextmanager
def progress(what: str) -> Iterator[None]:
    """A spinner on stderr while something takes a moment (nothing when stderr is not a terminal)."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    with console.status(f"{what}…"):
        yield

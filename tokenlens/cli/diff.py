"""``tokenlens diff`` and ``tokenlens check``: base vs fine-tune, per probe and per component.

``diff`` reports everything (distribution shift, the exact split of each tracked token's logit change,
causal effects, weight summary). ``check`` runs the same computation as a gate: exit 0 when every intended
probe moved and every control stayed put, 1 (violating probes listed) when any failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json

from tokenlens.cli.feedback import feedback as progress
from tokenlens.cli.feedback import print_result
from tokenlens.cli.options import ModelOptions, OutputOptions, quiet_transformers
from tokenlens.errors import TokenlensError

FORMATS = ("table", "json", "md", "markdown", "html")
NOTHING_TO_CHECK = 'no probe has an "expect": nothing to check (see tokenlens check --help)'

EPILOG = """examples:
  tokenlens diff --tuned runs/lora --probes probes.jsonl                    (base from the adapter)
  tokenlens diff --base smollm2-135m --tuned runs/full --prompt "The capital of France is"
  tokenlens diff --tuned runs/lora --probes probes.jsonl --format html --out diff.html
  tokenlens check --tuned runs/lora --probes probes.jsonl --max-kl 0.05 --min-gain 0.1
  tokenlens check --tuned runs/lora --probes probes.jsonl --corpus default --max-corpus-kl 0.05

Probe file: JSONL, one {"prompt" | "messages", "target"?, "expect"?: "changed"|"unchanged", "group"?,
"position"?, "thinking"?, "generate"?: N, "judge"?: "logprob"|"greedy"} object per line ("thinking": false
with "messages": Qwen3's non-thinking mode). Probes are numbered by their line everywhere (check's lines,
every report, JSON). Intended probes ("changed") pass when the target becomes top-1 or its probability
rises by --min-gain; controls ("unchanged") pass when top-1 is kept and KL(base||tuned) <= --max-kl.
Whole answers: a target of several tokens is judged on log p(target) gaining --min-gain NATS (or, with
"judge": "greedy", on the tuned model's greedy decoding reproducing it); "generate": N (no target) lets
both models decode N tokens greedily: a control passes when the continuations are identical and the mean
per-token KL along the base continuation <= --max-kl.
Editing metrics (reported, not judged): reliability (intended probes), generalization (intended probes in
group "paraphrase"), portability (group "portability"), locality (controls whose top-1 is kept).
--corpus FILE|default: KL(base||tuned) at every token of a held-out text (mean, p99, top-1 changes, the 5
most-drifted contexts explained); check fails on it only with --max-corpus-kl (mean per-token KL, nats).
"""


def _common(p: argparse.ArgumentParser) -> None:
    ModelOptions.add_arguments(
        p,
        model_flag="--tuned",
        model_help="fine-tune: adapter folder, trainer output, or any model",
        base_help="base model (default: named by the adapter or the trainer manifest)",
        dtype="float32",  # two models' distributions compared, not rounded to 16 bits
        sharding=False,
    )
    p.add_argument("--probes", help="JSONL probe file")
    p.add_argument("--prompt", action="append", default=[], help="a prompt to compare (repeatable)")
    p.add_argument("--target", help="with --prompt: the token to track (default: the tuned top-1)")
    p.add_argument(
        "--min-gain",
        type=float,
        default=0.1,
        help="intended probes: p gain needed; target answers: log p gain, nats (default 0.1)",
    )
    p.add_argument("--max-kl", type=float, default=0.05, help="controls: max KL(base||tuned), nats (0.05)")
    p.add_argument("--top-k", type=int, default=5, help="tokens shown before/after (default 5)")
    p.add_argument("--no-causal", action="store_true", help="skip patching (distribution + direct split)")
    p.add_argument("--causal", action="store_true", help="check: also measure causal effects (slower)")
    p.add_argument("--exact", type=int, default=10, help="components patched exactly (default 10)")
    p.add_argument("--no-reverse", action="store_true", help="skip patching base outputs into the tuned run")
    p.add_argument(
        "--corpus",
        metavar="FILE",
        help="held-out plain text: per-token KL(base||tuned) at every token ('default': the built-in sample)",
    )
    p.add_argument(
        "--corpus-split",
        choices=("lines", "windows"),
        default="lines",
        help="corpus passages: one per line, or the whole text cut into windows (default: lines)",
    )
    p.add_argument("--corpus-window", type=int, default=128, help="corpus: tokens per window (default 128)")
    p.add_argument("--corpus-tokens", type=int, help="corpus: score only the first N tokens (default: all)")
    p.add_argument(
        "--max-corpus-kl",
        type=float,
        help="check: fail when the corpus's mean per-token KL exceeds this (default: reported, not judged)",
    )
    OutputOptions.add_arguments(p, FORMATS, "output format (default: table)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    for name, help_text, run_fn in (
        ("diff", "which token choices a fine-tune moved, and which components moved them", run_diff),
        ("check", "CI gate: intended probes moved, controls did not (exit 0 pass, 1 fail)", run_check),
    ):
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common(p)
        p.set_defaults(run=run_fn)


def compute(args: argparse.Namespace):
    """Validate the arguments, load the pair and probes, and run the diff."""
    from tokenlens.diff import DiffOptions, diff, load_probes, pair_models, prompt_probes
    from tokenlens.diff.check import check_thresholds

    if args.probes and args.prompt:
        raise TokenlensError("give --probes FILE or --prompt TEXT, not both")
    if args.target and not args.prompt:
        raise TokenlensError("--target applies to --prompt probes (a probe file names its own targets)")
    check_thresholds(args.min_gain, args.max_kl)
    if args.top_k < 1 or args.exact < 0:
        raise TokenlensError("--top-k must be at least 1 and --exact at least 0")
    probes = load_probes(args.probes) if args.probes else prompt_probes(args.prompt, args.target)
    corpus = None
    if args.corpus is not None:
        from tokenlens.diff.corpus import check_corpus_options, read_corpus

        check_corpus_options(args.corpus_window, args.corpus_tokens, args.max_corpus_kl)
        corpus = read_corpus(args.corpus, args.corpus_split)
    elif args.max_corpus_kl is not None:
        raise TokenlensError("--max-corpus-kl judges the drift over --corpus FILE: give one")
    if args.command == "check" and args.max_corpus_kl is None and not any(p.expect for p in probes):
        raise TokenlensError(NOTHING_TO_CHECK)  # before any model loads or runs
    model = ModelOptions.from_args(args)
    quiet_transformers()
    with progress(f"loading {model.model}"):
        pair = pair_models(
            model.model,
            model.base,
            dtype=model.dtype,
            device=model.device,
            trust_remote_code=model.trust_remote_code,
            allow_pickle=model.allow_pickle,
        )
    options = DiffOptions(
        top_k=args.top_k,
        causal=not args.no_causal and (args.command == "diff" or args.causal),
        exact=args.exact,
        reverse=not args.no_reverse,
        min_gain=args.min_gain,
        max_kl=args.max_kl,
    )
    with progress(f"comparing {len(probes)} probe(s)"):
        report = diff(pair, probes, options)
    if corpus is None:
        return report
    from dataclasses import replace

    from tokenlens.diff.corpus import corpus_drift

    with progress(f"scoring the corpus {args.corpus}"):
        drift = corpus_drift(
            pair,
            corpus,
            window=args.corpus_window,
            max_tokens=args.corpus_tokens,
            threshold=args.max_corpus_kl,
            options=options,
        )
    return replace(report, corpus=drift)


def render(output: OutputOptions, report) -> str | None:
    """The output text in ``output.format`` (``None`` when a table was printed to the terminal)."""
    if output.format == "json":
        from tokenlens.report.diff_json import diff_to_dict

        return json.dumps(diff_to_dict(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    if output.format == "html":
        from tokenlens.report.diff_html import render_diff_html

        return render_diff_html(report)
    if output.format == "markdown":
        from tokenlens.io import figures_folder
        from tokenlens.report.diff_markdown import render_diff_markdown
        from tokenlens.report.plots import save_figure
        from tokenlens.report.plots.diff import diff_figures

        folder = figures_folder(output.out)
        paths = {}
        for key, figure in diff_figures(report).items():
            png, _ = save_figure(figure, folder / key)
            paths[key] = f"{folder.name}/{png.name}"
        return render_diff_markdown(report, figures=paths)
    from tokenlens.report.diff_terminal import render_diff

    if output.out is not None:
        from tokenlens.report.kit.terminal import renderables_to_text

        return renderables_to_text([render_diff(report)])
    print_result(render_diff(report))
    return None


def run_diff(args: argparse.Namespace) -> int:
    output = OutputOptions.from_args(args)
    output.write(render(output, compute(args)))
    return 0


def verdict_lines(report) -> list[str]:
    """One line per judged probe for ``check``: PASS/FAIL, the probe (its number as in every report: the
    probe file's line, else ``prompt N``), and why, naming the tokens."""
    from tokenlens.report.diff_layout import probe_where

    lines = []
    for index, probe in enumerate(report.probes):
        verdict = probe.verdict
        if verdict.passed is None:
            continue
        mark = "PASS" if verdict.passed else "FAIL"
        where = probe_where(probe, index)
        lines.append(f"{mark} {where} [{verdict.expect}] {probe.probe.label!r}: {verdict.reason}")
    return lines


def run_check(args: argparse.Namespace) -> int:
    output = OutputOptions.from_args(args)
    report = compute(args)
    corpus_judged = report.corpus is not None and report.corpus.passed is not None
    if report.judged == 0 and not corpus_judged:
        raise TokenlensError(NOTHING_TO_CHECK)
    if output.format == "table":
        from tokenlens.report.diff_layout import corpus_lines, metric_lines

        failed = len(report.failures)
        summary = (
            f"check passed: {report.judged} of {report.judged} probes as expected"
            if not failed
            else f"check FAILED: {failed} of {report.judged} probes violated"
        )
        if corpus_judged:
            summary += f"; corpus drift {'within' if report.corpus.passed else 'OVER'} --max-corpus-kl"
        lines = [*verdict_lines(report), *metric_lines(report), *corpus_lines(report), summary]
        output.write("\n".join(lines) + "\n")
    else:
        output.write(render(output, report))
    return 0 if report.passed else 1

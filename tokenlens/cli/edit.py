"""``tokenlens edit``: change one fact, and prove that nothing else moved (locate → edit → check).

Exit 0 when the edit holds (the prompt and every paraphrase answer the target) and every keep probe kept its
top-1 with KL(base||tuned) <= 0.05; 1 when not (what moved is listed); 2 on bad input. A target the model
already answers exits 0 with "nothing to edit" and writes nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenlens.cli.options import ModelOptions
from tokenlens.errors import TokenlensError

EPILOG = """examples:
  tokenlens edit --prompt "The capital of France is" --target " Lyon" --subject France --out edits/lyon
  tokenlens edit --prompt "The capital of France is" --target " Lyon" --subject France \\
      --paraphrases paraphrases.txt --keep keep.jsonl --out edits/lyon
  tokenlens diff --tuned edits/lyon/model --probes probes.jsonl       (the saved edit, diffed in full)

--method auto is lora: rank-8 LoRA on the located layers' MLPs, trained on the fact with a KL(base||tuned)
term (weight 10) over the fact's neighbour prompts: the prompt with other subjects ("The capital of Canada
is"), the subject with other relations ("The flag of France is"); written to edit-neighbours.txt, never a
prompt the check judges (measured the cleaner of the two on the default model: reports/edit.md).
rank-one: a closed-form, ROME-style key -> value edit of the located layer's MLP down_proj at the
subject's last token.
--keep / --paraphrases: a JSONL probe file ("prompt" fields) or plain text, one prompt per line. Default
keep set: the built-in fact-edit task's 12 control probes. The output folder gets model/ (the trainer output:
tokenlens.load, diff and check read it), edit-report.json, edit-report.md, edit-data.jsonl and (lora)
edit-neighbours.txt.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "edit",
        help="edit one fact (locate, edit with preservation) and check nothing else moved",
        description="Locate where the model keeps a fact, edit it there, check the edit and its locality.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ModelOptions.add_arguments(p, base_help=None, dtype="float32")
    p.add_argument("--prompt", required=True, help="the sentence the fact completes")
    p.add_argument("--target", required=True, help="the new answer, as text (' Lyon'); several tokens work")
    p.add_argument(
        "--subject", metavar="TEXT", help="the subject's words in the prompt (its last token is edited)"
    )
    p.add_argument("--keep", metavar="FILE", help="prompts that must not move (default: built-in controls)")
    p.add_argument("--paraphrases", metavar="FILE", help="prompts that must move too")
    p.add_argument("--method", default="auto", help="auto (= lora), lora or rank-one (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the trace's noise and the edit (default 0)")
    p.add_argument("--steps", type=int, help="optimisation steps (default: rank-one 20, lora 30)")
    p.add_argument("--layer", type=int, help="edit this layer instead of locating one (faster)")
    p.add_argument(
        "--preserve",
        default="neighbours",
        metavar="FILE",
        help="what to preserve: neighbours (generated, default), default (built-in text) or a file",
    )
    p.add_argument(
        "--preserve-weight",
        type=float,
        default=None,
        metavar="W",
        help="weight of lora's preservation term (default 10)",
    )
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tokenlens.attribution.inputs import check_text
    from tokenlens.training.edit import check_inputs, read_prompts

    for what, text in (("prompt", args.prompt), ("target", args.target), ("--subject", args.subject)):
        if text is not None:
            check_text(text, what)
    check_inputs(args.prompt, args.target, args.out, args.method)
    if args.steps is not None and args.steps < 1:
        raise TokenlensError(f"--steps {args.steps}: give at least 1")
    if args.layer is not None and args.layer < 0:
        raise TokenlensError(f"--layer {args.layer}: give a layer index from 0")
    for what, path in (
        ("keep", args.keep),
        ("paraphrases", args.paraphrases),
        ("preserve", None if args.preserve in ("default", "neighbours") else args.preserve),
    ):
        if path is not None:
            read_prompts(path, what)  # a missing or empty file costs no model load
    from tokenlens.training.edit import NEIGHBOUR_WEIGHT, edit
    from tokenlens.training.preserve import check_weight

    weight = NEIGHBOUR_WEIGHT if args.preserve_weight is None else args.preserve_weight
    check_weight(weight)
    loaded = ModelOptions.from_args(args).load()
    result = edit(
        loaded,
        args.prompt,
        args.target,
        args.out,
        subject=args.subject,
        keep=args.keep,
        paraphrases=args.paraphrases,
        method=args.method,
        seed=args.seed,
        steps=args.steps,
        layer=args.layer,
        preserve=args.preserve,
        preserve_weight=weight,
    )
    if result.report is None:
        print(f"nothing to edit: the model already answers {args.target!r} after {args.prompt!r}")
        return 0
    from tokenlens.cli.diff import verdict_lines

    lines = verdict_lines(result.report)
    summary = (
        f"edit holds and nothing kept moved ({result.report.judged} probes)"
        if result.passed
        else f"edit FAILED: {len(result.report.failures)} of {result.report.judged} probes violated"
    )
    head = f"{result.method} edit of layer(s) {list(result.edited_layers)}; {result.location}"
    text = "\n".join([head, *lines, f"{summary}; {result.seconds:.1f} s; wrote {args.out}"]) + "\n"
    print(text, end="")
    _write_reports(Path(args.out), result)
    return 0 if result.passed else 1


def _write_reports(out: Path, result) -> None:
    """``edit-report.json`` and ``edit-report.md`` (the check's full diff report in Markdown)."""
    from tokenlens.io import atomic_write_text
    from tokenlens.report.diff_markdown import render_diff_markdown
    from tokenlens.training.edit import REPORT_JSON

    atomic_write_text(out / REPORT_JSON, json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n")
    head = (
        f"# tokenlens edit: {result.prompt!r} -> {result.target!r}\n\n"
        f"- verdict: {'PASS' if result.passed else 'FAIL'}\n- method: {result.method}, layer(s) "
        f"{list(result.edited_layers)}\n- location: {result.location}\n- time: {result.seconds:.1f} s\n\n"
    )
    atomic_write_text(out / "edit-report.md", head + render_diff_markdown(result.report))

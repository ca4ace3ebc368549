"""``tokenlens sweep``: the method map. Train several post-training configurations on the same data, seeds and
step budget, diff each against the base on the same probes, and rank them by intended effect per unit of
collateral drift (see :mod:`tokenlens.sweep`).

Until the subcommand is registered in :mod:`tokenlens.cli`, :func:`main` runs it on its own:
``python -c "from tokenlens.cli.sweep import main; main(['--quick', '--out', 'sweep'])"``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tokenlens.cli.feedback import eta, is_quiet, print_result
from tokenlens.cli.options import ModelOptions
from tokenlens.errors import TokenlensError, command_line

FORMATS = ("table", "json", "md", "html")
PRESETS = {
    # name: (configurations, default seeds, default steps)
    "quick": (("lora-early", "head", "bias", "prompt"), (0,), 10),
    "default": (
        ("lora-early", "lora-late", "head", "bias", "embeddings", "attention", "adapter", "prompt"),
        (0, 1),
        20,
    ),
}

EPILOG = """examples:
  tokenlens sweep --quick --out sweep-quick                         (fact-edit, SmolLM2, a few minutes)
  tokenlens sweep --task instruction --out sweep-instr              (the default 8 configurations × 2 seeds)
  tokenlens sweep --methods lora,head,bias --seeds 0,1,2 --out s    (a method name selects all its configs)
  tokenlens sweep --data train.jsonl --probes probes.jsonl --out s --lr-search --causal

Configurations: lora-early, lora-late, lora-attn, lora-mlp, head, bias, embeddings, attention, adapter,
prompt, rope, full. Writes DIR/runs/<config>-s<seed>/ (normal trainer folders), DIR/map.json, map.md,
map.html and map_files/*.png. Rerunning resumes: finished runs are not retrained (--force retrains).
Every run is judged as tokenlens check would judge it (--min-gain, --max-kl; check's defaults): the map
recommends only a configuration that passes on every seed, and says so when none does.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="the method map: which post-training method moves the intended tokens most, per parameter",
        description="Train several post-training configurations on the same data and seeds, diff each "
        "against the base, and rank them by intended effect per unit of collateral drift.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ModelOptions.add_arguments(
        p,
        model_help="the base model every configuration trains (default: smollm2-135m)",
        base_help=None,
        dtype="float32",  # the runs train in float32 (bf16 autocast on a GPU) and diff in float32
        sharding=False,
        trust=False,  # each run loads the base again in a child process
    )
    p.add_argument("--task", help="built-in task: fact-edit (default), instruction, format")
    p.add_argument("--data", help="your own JSONL training file (with --probes)")
    p.add_argument("--probes", help="your own JSONL probe file (with --data)")
    p.add_argument("--methods", help="comma list of configurations or methods (default: the preset's)")
    p.add_argument("--seeds", help="comma list of seeds (default 0,1; --quick: 0)")
    p.add_argument("--steps", type=int, help="optimizer steps per run (default 20; --quick: 10)")
    p.add_argument("--batch-size", type=int, default=4, help="examples per step (default 4)")
    p.add_argument(
        "--quick", action="store_true", help="a first look: lora-early, head, bias, prompt; 1 seed"
    )
    p.add_argument("--lr-search", action="store_true", help="search 3 learning rates per configuration")
    p.add_argument(
        "--min-gain",
        type=float,
        default=0.1,
        help="judge runs as tokenlens check would: intended probes' p gain needed (default 0.1, check's)",
    )
    p.add_argument(
        "--max-kl",
        type=float,
        default=0.05,
        help="judge runs as tokenlens check would: controls' max KL(base||tuned), nats (default 0.05)",
    )
    p.add_argument(
        "--corpus",
        metavar="FILE",
        help="measure each run's per-token drift over a held-out text too ('default': the built-in one)",
    )
    p.add_argument(
        "--causal",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="measure causal effects of the top 3 components per probe (default: direct split)",
    )
    p.add_argument(
        "--recommend",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rank and recommend (needs at least 2 seeds; default: on unless --quick with 1 seed)",
    )
    p.add_argument("--format", choices=FORMATS, default="table", help="what to print (all files are written)")
    p.add_argument("--out", help="output folder (runs, map files)")
    p.add_argument("--force", action="store_true", help="retrain every run and recompute every diff")
    p.set_defaults(run=run)


def _seeds(text: str) -> tuple[int, ...]:
    from tokenlens.training.trainer import SEED_LIMIT

    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError as exc:
        raise TokenlensError(f"--seeds {text!r}: expected a comma list of integers, e.g. 0,1") from exc
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0 or max(seeds) >= SEED_LIMIT:
        raise TokenlensError(f"--seeds {text!r}: give distinct integers from 0 to 2**64 - 1, e.g. 0,1")
    return seeds


def _files(args: argparse.Namespace) -> tuple[str, Path, Path]:
    """The task name, training file and probe file."""
    from tokenlens.tasks import get_task

    if args.task and (args.data or args.probes):
        raise TokenlensError("give --task NAME or --data FILE --probes FILE, not both")
    if bool(args.data) != bool(args.probes):
        raise TokenlensError("--data and --probes go together: give both (or a built-in --task)")
    if args.data:
        for flag, path in (("--data", args.data), ("--probes", args.probes)):
            if not Path(path).is_file():
                raise TokenlensError(f"{flag} {path}: no such file")
        return "custom", Path(args.data), Path(args.probes)
    task = get_task(args.task or "fact-edit")
    return task.name, task.train_careful, task.probes


def plan_from_args(args: argparse.Namespace):
    """Validate the arguments (before any model loads) into a :class:`~tokenlens.sweep.runner.SweepPlan`."""
    from tokenlens.diff.check import check_thresholds
    from tokenlens.sweep.configs import select_configs
    from tokenlens.sweep.recommend import MIN_SEEDS
    from tokenlens.sweep.runner import SweepPlan

    if not args.out:
        raise TokenlensError("sweep needs --out DIR (runs and the map are written there)")
    check_thresholds(args.min_gain, args.max_kl)
    names, seeds, steps = PRESETS["quick" if args.quick else "default"]
    if args.methods is not None:  # given, even empty: never the preset instead
        names = [name for name in args.methods.split(",") if name.strip()]
        if not names:
            raise TokenlensError("--methods is empty: name at least one configuration or method (lora,head)")
    configs = select_configs(names)
    seeds = _seeds(args.seeds) if args.seeds else seeds
    steps = args.steps if args.steps is not None else steps
    if steps < 1 or args.batch_size < 1:
        raise TokenlensError("--steps and --batch-size must be at least 1")
    if len(seeds) < MIN_SEEDS and args.recommend:
        raise TokenlensError(
            f"--recommend needs at least {MIN_SEEDS} seeds (got {len(seeds)}): e.g. --seeds 0,1"
        )
    if len(seeds) < MIN_SEEDS and args.recommend is None and not args.quick:
        raise TokenlensError(
            "one seed cannot show the spread a recommendation needs: give --seeds 0,1 or --no-recommend"
        )
    if args.corpus is not None:
        from tokenlens.diff import read_corpus

        read_corpus(args.corpus)  # a missing or empty text fails before any training
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise TokenlensError(f"--out {out} is a file: give a folder")
    _check_map_files(out, force=args.force)
    task, data, probes = _files(args)
    return SweepPlan(
        model=args.model,
        task=task,
        data=data,
        probes=probes,
        configs=configs,
        seeds=seeds,
        steps=steps,
        out=out,
        batch_size=args.batch_size,
        lr_search=args.lr_search,
        causal=args.causal,
        force=args.force,
        dtype=args.dtype,
        device=args.device,
        min_gain=args.min_gain,
        max_kl=args.max_kl,
        corpus=args.corpus,
    )


def _check_map_files(out: Path, *, force: bool) -> None:
    """Refuse to overwrite map files in ``out`` that an earlier sweep did not write (unless ``force``).

    A rerun of a sweep rewrites its own map (``map.json`` names tokenlens as its tool); a ``map.md`` or
    ``map_files/`` of the user's own is not overwritten without ``--force``.
    """
    from tokenlens.files import MAP_FILES

    present = [name for name in MAP_FILES if (out / name).exists()]
    if not present or force:
        return
    try:
        tool = json.loads((out / "map.json").read_text(encoding="utf-8")).get("tool", "")
    except (OSError, ValueError, AttributeError):
        tool = ""
    if not str(tool).startswith("tokenlens "):
        raise TokenlensError(
            f"{out / present[0]} exists and is not a map a tokenlens sweep wrote: pass --force to overwrite "
            "it or choose another --out"
        )


def write_map(sweep_map, out: Path) -> dict[str, Path]:
    """Write ``map.json``, ``map.md``, ``map.html`` and ``map_files/*.png`` into ``out``; return the paths."""
    from tokenlens.io import atomic_write_bytes, atomic_write_text
    from tokenlens.report.plots import figure_png
    from tokenlens.report.plots.sweep import map_figures
    from tokenlens.report.sweep_map import map_to_dict, render_map_html, render_map_markdown

    pngs = {slug: figure_png(fig, dpi=110) for slug, fig in map_figures(sweep_map).items()}
    paths = {"json": out / "map.json", "md": out / "map.md", "html": out / "map.html"}
    relative = {}
    for slug, png in pngs.items():
        paths[slug] = atomic_write_bytes(out / "map_files" / f"{slug}.png", png)
        relative[slug] = f"map_files/{slug}.png"
    text = json.dumps(map_to_dict(sweep_map), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_text(paths["json"], text)
    atomic_write_text(paths["md"], render_map_markdown(sweep_map, figures=relative))
    atomic_write_text(paths["html"], render_map_html(sweep_map, images=pngs))
    return paths


def run(args: argparse.Namespace) -> int:
    plan = plan_from_args(args)
    from tokenlens.sweep.runner import run_sweep

    loaded = ModelOptions.from_args(args).load()
    sweep_map = run_sweep(plan, loaded, on_event=_Notes())
    if args.recommend is False:  # keep the ranking's reasoning, drop the verdict (its last line)
        rec = sweep_map.recommendation
        lines = (*rec.lines[:-1], "no recommendation requested (--no-recommend)")
        sweep_map = dataclasses.replace(
            sweep_map, recommendation=dataclasses.replace(rec, recommended=None, lines=lines)
        )
    paths = write_map(sweep_map, plan.out)
    if args.format == "json":
        sys.stdout.write(paths["json"].read_text(encoding="utf-8"))
    elif args.format == "md":
        sys.stdout.write(paths["md"].read_text(encoding="utf-8"))
    elif args.format == "html":
        print(paths["html"])
    else:
        from tokenlens.report.sweep_map import render_map

        print_result(render_map(sweep_map))
    print(f"tokenlens: wrote {plan.out}/map.json, map.md, map.html, map_files/", file=sys.stderr)
    return 0


class _Notes:
    """The sweep's notes on stderr (one before each run), the numbered ones (``[3/10] …``) with the time
    left, estimated from the runs done since the first numbered note; none with ``--quiet``."""

    def __init__(self) -> None:
        self.started: float | None = None

    def __call__(self, line: str) -> None:
        if is_quiet():
            return
        numbered = re.match(r"\[(\d+)/(\d+)\]", line)
        if numbered:
            done, total = int(numbered[1]) - 1, int(numbered[2])
            now = time.monotonic()
            self.started = now if self.started is None else self.started
            line += eta(now - self.started, done, total)
        print(f"tokenlens: {line}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tokenlens sweep`` with ``argv`` (the arguments after ``sweep``); return the exit code."""
    from tokenlens.cli import _quiet_libraries

    parser = argparse.ArgumentParser(prog="tokenlens")
    add_parser(parser.add_subparsers(dest="command"))
    try:
        args = parser.parse_args(["sweep", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit as exc:
        return int(exc.code or 0)
    _quiet_libraries()
    try:
        with command_line():  # messages name flags, as under tokenlens.cli.main
            return int(args.run(args))
    except TokenlensError as exc:
        print(f"tokenlens: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tokenlens: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130

"""``tokenlens train``: post-train a model with one method from the menu (see ``--list-methods``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tokenlens.cli.options import ModelOptions
from tokenlens.errors import TokenlensError

EPILOG = """examples:
  tokenlens train --model qwen3-tiny --list-methods
  tokenlens train --model qwen3-tiny --method lora --data data.jsonl --out runs/lora --steps 100
  tokenlens train --model qwen3-tiny --method lora --option layers=0,1 --option r=4 --data d.jsonl --out o
  tokenlens train --model qwen3-tiny --method embeddings --option token_ids=12095 --data d.jsonl --out o
  tokenlens train --model path/to/ckpt --method qlora --quantize 4bit --data d.jsonl --out o
  tokenlens train ... --preserve default --preserve-weight 10   (keep the base's distributions on plain text)
  tokenlens train --method rank-one --option subject=France --data fact.jsonl --out o   (closed-form edit)
  tokenlens train ... --lr-schedule cosine --warmup-steps 10 --grad-accum 4 --eval-fraction 0.1
  tokenlens train ... --option dropout=0.05 --option dora=true   (LoRA with dropout, DoRA)
  tokenlens train ... --resume          (continue an interrupted run in --out)
  accelerate launch --num_processes 2 "$(which tokenlens)" train ...   (data parallel, same global batch;
      on CPU: python -m torch.distributed.run --nproc_per_node 2 "$(which tokenlens)" train ...)

Data: JSONL, one {"prompt","completion"}, {"messages":[...]} or {"text"} object per line. Lines longer
than the model's context are refused. Option values are JSON (r=4, layers=[0,1]) or comma lists (0,1).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="post-train a model: lora, qlora, bias, head, embeddings, attention, adapter, prompt, rope…",
        description="Train one post-training method on a JSONL file; write an adapter or checkpoint folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ModelOptions.add_arguments(p)
    p.add_argument("--method", help="the method (see --list-methods)")
    p.add_argument("--data", help="JSONL training file")
    p.add_argument("--out", help="output folder (refused if it exists, unless --force or --resume)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps")
    length.add_argument("--epochs", type=int, help="passes over the data (default 3)")
    p.add_argument("--lr", type=float, help="learning rate (default: the method's)")
    p.add_argument("--batch-size", type=int, default=4, help="examples per step (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed for data order and init (default 0)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (default 50)")
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass: less memory, ~1 extra forward of time",
    )
    p.add_argument(
        "--lr-schedule",
        default="constant",
        metavar="KIND",
        help="learning rate after the warmup: constant (default), linear or cosine decay to 0",
    )
    warmup = p.add_mutually_exclusive_group()
    warmup.add_argument("--warmup-steps", type=int, help="steps of linear warmup from 0 (default none)")
    warmup.add_argument("--warmup-ratio", type=float, help="warmup as a fraction of the steps (rounded up)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's weight decay (default 0.01)")
    p.add_argument(
        "--grad-accum",
        type=int,
        default=1,
        metavar="K",
        help="gradient accumulation: each step is K batches of --batch-size, the update of one K-times "
        "larger batch (default 1)",
    )
    held = p.add_mutually_exclusive_group()
    held.add_argument("--eval", "--eval-data", dest="eval_data", metavar="FILE", help="JSONL eval data")
    held.add_argument(
        "--eval-fraction", type=float, metavar="F", help="hold out this fraction of --data for eval (seeded)"
    )
    p.add_argument(
        "--eval-every", type=int, metavar="N", help="eval loss every N steps (default: at the end)"
    )
    p.add_argument(
        "--tensorboard", metavar="DIR", help="write TensorBoard logs (needs the tensorboard package)"
    )
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a method option")
    p.add_argument(
        "--preserve",
        metavar="FILE",
        help="add W*KL(base||tuned) over these passages to the loss (JSONL prompts or plain text; "
        "'default': the built-in set)",
    )
    p.add_argument("--preserve-weight", type=float, default=1.0, help="W of --preserve (default 1.0)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--force", action="store_true", help="replace an existing tokenlens output in --out")
    p.add_argument("--list-methods", action="store_true", help="print the menu for --model and exit")
    p.set_defaults(run=run)


CONTROLS = (
    "lr_schedule",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "grad_accum",
    "eval_data",
    "eval_fraction",
    "eval_every",
    "tensorboard",
)
"""The optimisation controls (``tokenlens.training.settings.Controls``), by their argument names."""


def parse_options(items: list[str]) -> dict:
    """``key=value`` strings -> a dict; values are JSON when they parse, comma lists, or strings."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TokenlensError(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip()] = _parse_value(value.strip())
    return options


def _parse_value(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    if "," in value:
        return [_parse_value(v.strip()) for v in value.split(",") if v.strip()]
    return value


def run(args: argparse.Namespace) -> int:
    """Train, or print the menu; returns the exit code (130 after Ctrl-C, 143 after SIGTERM).

    Every setting that needs no model (method, options, lengths, learning rate, seed, the output folder) is
    checked before the model loads.
    """
    if args.list_methods:
        return _list_methods(args)
    missing = [flag for flag in ("method", "data", "out") if not getattr(args, flag)]
    if missing:
        raise TokenlensError(f"train needs {', '.join('--' + m for m in missing)} (or --list-methods)")
    from tokenlens.training.folder import check_out_dir
    from tokenlens.training.methods import get_method
    from tokenlens.training.settings import Controls, check_settings
    from tokenlens.training.trainer import train

    record = get_method(args.method)  # fail fast, before loading a model
    options = parse_options(args.option)
    controls = {name: getattr(args, name) for name in CONTROLS}
    check_settings(
        record,
        options,
        steps=args.steps,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        gradient_checkpointing=args.gradient_checkpointing,
        preserve_weight=args.preserve_weight,
        controls=Controls(**controls),
    )
    if args.preserve is not None:
        from tokenlens.training.preserve import read_texts

        read_texts(args.preserve)  # a missing or empty file costs no model load
    if record.needs_quantized and not args.quantize:
        raise TokenlensError(f"method {record.name} needs --quantize 4bit (or 8bit)")
    check_out_dir(Path(args.out), resume=args.resume, force=args.force)
    loaded = ModelOptions.from_args(args).load()
    with _progress() as on_progress:
        result = train(
            loaded,
            record,
            args.data,
            args.out,
            steps=args.steps,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            options=options,
            resume=args.resume,
            force=args.force,
            checkpoint_every=args.checkpoint_every,
            gradient_checkpointing=args.gradient_checkpointing,
            on_progress=on_progress,
            preserve=args.preserve,
            preserve_weight=args.preserve_weight,
            **controls,
        )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # data-parallel run: the main process reports
    evaluated = f", eval loss {result.eval_losses[-1]['loss']:.4f}" if result.eval_losses else ""
    print(
        f"trained {result.method}: {result.steps} steps, loss {result.losses[0]:.4f} -> "
        f"{result.final_loss:.4f}{evaluated}, {result.trainable:,} trainable parameters, "
        f"{result.wall_s:.1f} s on {result.device}; wrote {result.out_dir}"
    )
    return 0


def _list_methods(args: argparse.Namespace) -> int:
    import copy

    from tokenlens.training.methods import METHODS, trainable_count

    loaded = ModelOptions.from_args(args).load()
    total = sum(p.numel() for p in loaded.model.parameters())
    print(f"methods for {args.model} ({total:,} parameters):")
    for record in METHODS.values():
        options = {"token_ids": [0]} if "token_ids" in record.options else {}
        try:
            with _silenced():  # PEFT warns about tied embeddings, unsupported layers …
                model = record.apply(copy.deepcopy(loaded.model), record.resolve(options))
            count = f"{trainable_count(model):,}"
            if options:
                count += " per chosen token"
        except TokenlensError:
            count = "n/a"
        print(f"  {record.name:<11} {count:>22}  lr {record.lr:g}  {record.summary}")
        for key, option in record.options.items():
            print(f"      --option {key}=…  {option.help} (default {option.default!r})")
    return 0


@contextmanager
def _silenced() -> Iterator[None]:
    """Silence library warnings, from the ``warnings`` module and from loggers, for the block's duration."""
    previous = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


class _progress:
    """Training progress on stderr, fed by ``train(on_progress=...)``: on a terminal a rich bar (step, loss,
    tokens/s, ETA); otherwise plain lines (``training: step 4/30, loss 1.2345, 812 tok/s, about 20 s
    left``, at most one every :data:`~tokenlens.cli.feedback.INTERVAL` seconds, and the last step);
    nothing with ``--quiet``.

    The bar appears with the first finished step and is always stopped on the way out (an error, Ctrl-C,
    SIGTERM), which gives the terminal its cursor back.
    """

    def __init__(self, terminal: bool | None = None) -> None:
        self.terminal = terminal  # None: whether stderr is a terminal

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        from tokenlens.cli.feedback import Throttled, is_quiet

        self.bar = None
        self.first: int | None = None
        console = Console(file=sys.stderr)
        if is_quiet():
            return lambda info: None
        if not (console.is_terminal if self.terminal is None else self.terminal):
            self.lines = Throttled()
            return self.line
        self.bar = Progress(
            TextColumn("step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} tok/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = None
        return self.update

    def update(self, info) -> None:
        """Show one finished step (a :class:`tokenlens.training.trainer.StepInfo`)."""
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(
                "train", total=info.total, completed=info.step - 1, loss="…", rate="…"
            )
        self.bar.update(
            self.task, completed=info.step, loss=f"{info.loss:.4f}", rate=f"{info.tokens_per_s:,.0f}"
        )

    def line(self, info) -> None:
        """One finished step as a plain line (not a terminal)."""
        from tokenlens.cli.feedback import eta

        if self.first is None:  # this invocation's first step (not 1 after a resume)
            self.first = info.step
        left = eta(info.elapsed_s, info.step - self.first + 1, info.total - self.first + 1)
        self.lines(
            f"training: step {info.step}/{info.total}, loss {info.loss:.4f}, "
            f"{info.tokens_per_s:,.0f} tok/s{left}",
            final=info.step == info.total,
        )

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

"""The ``tokenlens`` command line.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args) -> int``. Nothing
here imports torch: ``tokenlens --help`` answers at once, and the model stack loads only when a subcommand
runs. Every user-facing problem ends as one line on stderr and a non-zero exit code, never a traceback
(set ``TOKENLENS_DEBUG=1`` to see one).

Exit codes, the same for every subcommand, so that a script or CI job can tell a verdict from a crash:

* 0: done (``check``: every probe as expected);
* 1: ``check`` only: probes violated their expectation — never anything else;
* 2: bad input or environment (a missing path, an unsupported model, out of memory …), one line saying what;
* 3: internal error: an unexpected exception, i.e. a bug in tokenlens or a library (one line; the traceback
  with ``TOKENLENS_DEBUG=1``);
* 130 / 143: interrupted by Ctrl-C (SIGINT) / terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from tokenlens.cli import diff as diff_cmd
from tokenlens.cli import edit as edit_cmd
from tokenlens.cli import inspect as inspect_cmd
from tokenlens.cli import locate as locate_cmd
from tokenlens.cli import models as models_cmd
from tokenlens.cli import sweep as sweep_cmd
from tokenlens.cli import train as train_cmd
from tokenlens.cli.feedback import quiet
from tokenlens.errors import Interrupted, TokenlensError, command_line, first_line
from tokenlens.version import __version__

EXIT_OK = 0
EXIT_VIOLATIONS = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

EPILOG = """examples:
  tokenlens inspect --prompt "The capital of France is"
  tokenlens inspect --prompt "The capital of France is" --target " Paris" --format json --out paris.json
  tokenlens inspect --model qwen3-tiny --prompt "Hello" --chat
  tokenlens inspect --model Qwen/Qwen3-0.6B --prompt "The capital of France is"   (needs hub access)
  tokenlens locate --prompt "The capital of France is" --target " Paris" --subject France
  tokenlens models
  tokenlens train --model qwen3-tiny --method lora --data data.jsonl --out runs/lora --steps 20
  tokenlens diff --tuned runs/lora --probes probes.jsonl
  tokenlens check --tuned runs/lora --probes probes.jsonl      (exit 0 pass, 1 fail, 2 bad input)

exit codes: 0 done, 1 check found violations (only), 2 bad input or environment, 3 internal error,
  130 interrupted (Ctrl-C), 143 terminated (SIGTERM)
  tokenlens sweep --quick --out sweep-quick      (the method map: which method, where; a few minutes)
"""

COMMANDS = (inspect_cmd, locate_cmd, models_cmd, train_cmd, diff_cmd, edit_cmd, sweep_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenlens",
        description="Explain a causal LM's next-token choice: exact per-component logit attribution.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tokenlens {__version__}")
    _global_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    for subparser in sub.choices.values():  # also after the subcommand, where users type them
        _global_options(subparser, argparse.SUPPRESS)
    return parser


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads, at least 1, got {text!r}")
    return value


def _global_options(parser: argparse.ArgumentParser, default: object) -> None:
    """``--threads`` and ``--quiet``, accepted before and after the subcommand (after it they default to
    ``SUPPRESS``, so that they do not overwrite a value given before it)."""
    group = parser.add_argument_group("every command")
    group.add_argument(
        "--threads",
        type=_threads,
        metavar="N",
        default=default,
        help="torch CPU threads (default: OMP_NUM_THREADS if set, else the idle physical cores)",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="no progress display on stderr (errors and results still print)",
    )


def main(argv: Sequence[str] | None = None, *, thread_policy: bool = False) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit code.

    ``thread_policy``: choose torch's CPU threads (:mod:`tokenlens.threads`) before the command runs, as the
    ``tokenlens`` program does; off when the CLI runs inside another Python program, whose threads are its
    own (``--threads N`` applies either way).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed by argparse
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what was typed, for a report's settings
    _quiet_libraries()
    try:
        with _sigterm_interrupts(), command_line(), quiet(bool(args.quiet)):
            if thread_policy or args.threads is not None:
                _set_threads(args.threads)
            return int(args.run(args))
    except TokenlensError as exc:
        print(f"tokenlens: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        message = str(exc) if isinstance(exc, Interrupted) and str(exc) else "interrupted"
        print(f"tokenlens: {message}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, Interrupted) else EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, not a traceback
        return _unexpected(exc)
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":  # how Rust extensions (tokenizers …) fail
            raise
        return _unexpected(exc)


def _set_threads(threads: int | None) -> None:
    """torch's CPU threads by :func:`tokenlens.threads.configure_threads` (``--threads`` overrides it); the
    choice goes into ``OMP_NUM_THREADS`` where that is unset, so that worker processes (a sweep's runs)
    make the same one."""
    from tokenlens.threads import configure_threads

    try:
        choice = configure_threads(threads)
    except ValueError as exc:
        raise TokenlensError(str(exc)) from exc
    os.environ.setdefault("OMP_NUM_THREADS", str(choice.threads))


def _unexpected(exc: BaseException) -> int:
    """One line for an exception nobody expected (out of memory: exit 2; anything else: exit 3)."""
    if os.environ.get("TOKENLENS_DEBUG"):
        raise exc
    message = first_line(exc)
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        print(
            f"tokenlens: error: out of memory: {message} (try a smaller --dtype or --device cpu)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    print(
        f"tokenlens: internal error: {type(exc).__name__}: {message} "
        "(rerun with TOKENLENS_DEBUG=1 for the traceback)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into an exception, as Python does Ctrl-C, so that cleanup runs (a progress bar gives the
    terminal its cursor back, a training folder's lock is released, a temporary file is removed). The trainer
    defers both signals to the end of a step and saves a checkpoint first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, _frame: object) -> None:
        raise Interrupted(signum, "terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def console_main() -> None:
    """Entry point of the ``tokenlens`` console script."""
    sys.exit(main(thread_policy=True))


def _quiet_libraries() -> None:
    """Send tokenlens's progress notes to stderr; silence transformers' progress bars and chatter."""
    logging.basicConfig(level=logging.WARNING, format="tokenlens: %(message)s", stream=sys.stderr)
    logging.getLogger("tokenlens").setLevel(logging.INFO)
    for name in ("transformers", "huggingface_hub", "peft", "accelerate", "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not the user's
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")

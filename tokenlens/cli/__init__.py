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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
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
        with _sigterm_interrupts(), command_line():  # messages name flags, not Python parameters
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
    sys.exit(main())


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

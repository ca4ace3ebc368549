"""A sweep run in its own process, so its peak RSS is its own: ``python -m tokenlens.sweep.child JOB_JSON``.

Trains the :class:`~tokenlens.sweep.jobs.Job` (loading the base itself), then diffs it. Exit codes: 0 done,
2 a :class:`~tokenlens.errors.TokenlensError` (its one line on stderr), 4 training diverged (a non-finite
loss, :class:`~tokenlens.training.trainer.Diverged`; its line on stderr), 130 interrupted (after the
trainer saved a checkpoint).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Sequence

EXIT_ERROR = 2
EXIT_DIVERGED = 4
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job given as JSON in ``argv[0]``; return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m tokenlens.sweep.child JOB_JSON", file=sys.stderr)
        return EXIT_ERROR
    _quiet()
    from tokenlens.errors import TokenlensError, first_line
    from tokenlens.sweep.jobs import Job, diff_job, train_job
    from tokenlens.training.trainer import Diverged

    try:
        job = Job.from_json(args[0])
        train_job(job, None)
        if job.diff:
            diff_job(job)
    except Diverged as exc:
        print(f"tokenlens: error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except TokenlensError as exc:
        print(f"tokenlens: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - reported as one line by the parent
        if os.environ.get("TOKENLENS_DEBUG"):
            raise
        print(f"tokenlens: internal error: {type(exc).__name__}: {first_line(exc)}", file=sys.stderr)
        return 1
    return 0


def _quiet() -> None:
    for name in ("transformers", "huggingface_hub", "peft", "accelerate", "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")


if __name__ == "__main__":
    sys.exit(main())

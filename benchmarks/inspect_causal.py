"""The causal sections of ``tokenlens inspect`` on the README prompt, each alone and all together, against a
plain ``inspect`` (the exact attribution) — and the same for another copy of the tokenlens source
(``--source DIR``: e.g. an older commit unpacked with ``git archive``), so that before and after run side by
side on the same machine under similar load.

The README's example::

    tokenlens inspect --prompt "The capital of France is" --target " Paris" --vs " London" \\
        --ablate L23.H4,L23.H3 --patch "The capital of Italy is" --estimate 5 --rope --norms

Each (job, source) runs in its own subprocess (``PYTHONPATH`` = the source folder), one torch thread
(``OMP_NUM_THREADS=1``), the default model loaded before timing starts. A job parses the ``inspect`` flags
with the real CLI parser and calls what ``tokenlens inspect`` calls: ``attribute`` (``cli/inspect.py``), then
``causal_options.run`` for the sections asked for. Reported per job: CPU seconds of the process (what a
loaded shared machine distorts least) and wall seconds, the best of ``--repeats`` runs, and the load average
before and after. Jobs:

  plain     the attribution alone (a plain ``inspect``)
  rope      plain + ``--rope``           norms     plain + ``--norms``
  ablate    plain + ``--ablate L23.H4,L23.H3``
  patch     plain + ``--patch "The capital of Italy is"``
  estimate  plain + ``--estimate 5``     all       plain + all five

    git archive <commit> tokenlens | tar -x -C /tmp/old
    .venv/bin/python benchmarks/inspect_causal.py --source /tmp/old --source . --out /tmp/bench.md
    .venv/bin/python benchmarks/inspect_causal.py --source . --profile rope   # cProfile of one job
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ratio_table, side_by_side

PROMPT = "The capital of France is"
BASE = ["inspect", "--prompt", PROMPT, "--target", " Paris", "--vs", " London"]
SECTIONS = {
    "plain": [],
    "rope": ["--rope"],
    "norms": ["--norms"],
    "ablate": ["--ablate", "L23.H4,L23.H3"],
    "patch": ["--patch", "The capital of Italy is"],
    "estimate": ["--estimate", "5"],
}
SECTIONS["all"] = [flag for flags in SECTIONS.values() for flag in flags]
JOBS = tuple(SECTIONS)


def worker(job: str, repeats: int, profile: bool) -> None:
    import torch

    from tokenlens.attribution.direct import attribute
    from tokenlens.cli import build_parser, causal_options
    from tokenlens.cli.inspect import _request
    from tokenlens.cli.options import ModelOptions

    args = build_parser().parse_args(BASE + SECTIONS[job])
    loaded = ModelOptions.from_args(args).load()
    request = _request(args)

    def once() -> list:
        result = attribute(loaded, args.prompt, request)
        return causal_options.run(args, loaded, result) if causal_options.wanted(args) else []

    once()  # warm-up: first-call costs (allocator, lazy imports) are not the section's
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile(time.process_time)
        profiler.runcall(once)
        stats = pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative")
        stats.print_stats(40)
        return
    best: dict[str, float] = {}
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        once()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if not best or cpu < best["cpu"]:
            best = {"wall": wall, "cpu": cpu}
    print(json.dumps({**best, "torch_threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", action="append", required=True, help="tokenlens source folder(s)")
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=JOBS)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per job; the best is kept")
    parser.add_argument("--profile", choices=JOBS, help="print a cProfile (CPU time) of one run of this job")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.repeats, args.profile is not None)
        return
    if args.profile:
        env = {**os.environ, "PYTHONPATH": str(Path(args.source[0]).resolve()), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, __file__, "--source", args.source[0], "--worker", args.profile]
        subprocess.run([*command, "--profile", args.profile], env=env, check=True)
        return

    def arguments(job: str, source: str) -> list[str]:
        return [__file__, "--source", source, "--worker", job, "--repeats", str(args.repeats)]

    text = ratio_table(side_by_side(args.jobs, args.source, arguments), digits=2)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

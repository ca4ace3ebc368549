"""What the side-by-side benchmarks share: each job in its own subprocess, the load average noted around it,
and a Markdown table of CPU seconds with each job's ratio to the ``plain`` job of the same source.

A *source* is a folder holding a ``tokenlens`` package (the working tree ``.``, or an older commit
unpacked with ``git archive <commit> tokenlens | tar -x -C DIR``): the worker runs with ``PYTHONPATH`` set to
it and one torch thread, so before and after run on the same machine under about the same load. A worker
prints one JSON object as its last line of output, with at least ``wall`` and ``cpu`` seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Row = tuple[str, str, dict, str, str]
"""``(job, source, the worker's JSON, load average before, load average after)``."""


def load() -> str:
    """The 1-, 5- and 15-minute load averages, as ``/proc/loadavg`` gives them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_worker(arguments: Sequence[str], env: dict[str, str], what: str) -> dict:
    """Run ``python ARGUMENTS`` with ``env``; its last line of output as JSON (exit with its stderr if it
    failed)."""
    done = subprocess.run([sys.executable, *arguments], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def side_by_side(
    jobs: Sequence[str], sources: Sequence[str], arguments: Callable[[str, str], list[str]]
) -> list[Row]:
    """Every job with every source (sources alternating within each job, so both see about the same load):
    ``arguments(job, source)`` is the worker's command line after ``python``."""
    rows: list[Row] = []
    for job in jobs:
        for source in sources:
            env = {**os.environ, "PYTHONPATH": str(Path(source).resolve()), "OMP_NUM_THREADS": "1"}
            before = load()
            data = run_worker(arguments(job, source), env, f"{job} with {source}")
            rows.append((job, source, data, before, load()))
            print(job, source, data, before, "->", rows[-1][-1], flush=True)
    return rows


def ratio_table(rows: Sequence[Row], extra: Sequence[str] = (), digits: int = 1) -> str:
    """The rows as a Markdown table: job, source, the worker's ``extra`` keys, wall and CPU seconds, CPU ×
    the ``plain`` job of the same source, and the load before → after."""
    plain = {source: data["cpu"] for job, source, data, _, _ in rows if job == "plain"}
    head = ["job", "source", *extra, "wall s", "CPU s", "CPU × plain (same source)", "load before → after"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for job, source, data, before, after in rows:
        ratio = f"{data['cpu'] / plain[source]:.1f}×" if source in plain else "—"
        cells = [job, f"`{source}`", *(str(data[key]) for key in extra)]
        cells += [f"{data['wall']:.{digits}f}", f"{data['cpu']:.{digits}f}", ratio, f"{before} → {after}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

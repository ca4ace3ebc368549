"""1 vs 2 (or more) torch threads on the workloads tokenlens runs most: tiny forwards and diff-sized batches.

Each thread count runs in its own subprocess (``OMP_NUM_THREADS=N``, so torch starts with it), the counts
interleaved round by round so that both see the same load; medians over the rounds, and the machine's load
average before and after each measurement. Workloads on the default model (SmolLM2-135M, float32, CPU):

* ``forward 5 tok``: one 5-token forward (an ``inspect`` of a short prompt);
* ``patch batch 17×5``: one forward of 17 rows of 5 tokens (the first row clean, 16 patched: one batch of a
  diff's exact patching, :data:`tokenlens.diff.runs.PATCH_BATCH`);
* ``forward 256 tok``: one 256-token forward (a long prompt).

    .venv/bin/python benchmarks/threads.py --threads 1 2 --rounds 5 --out reports/bench-threads.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from common import load, run_worker

WORKLOADS = {"forward 5 tok": (1, 5), "patch batch 17×5": (17, 5), "forward 256 tok": (1, 256)}


def worker(repeats: int) -> None:
    """Time each workload ``repeats`` times in this process (threads from the environment); print JSON."""
    import torch

    import tokenlens

    loaded = tokenlens.load("smollm2-135m")
    model = loaded.model
    out = {"threads": torch.get_num_threads(), "times": {}}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, (rows, seq) in WORKLOADS.items():
            ids = torch.randint(100, 20000, (rows, seq), generator=generator)
            model(input_ids=ids, use_cache=False, logits_to_keep=1)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
                times.append(time.perf_counter() - start)
            out["times"][name] = statistics.median(times)
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="subprocesses per thread count, interleaved")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each workload per process")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker)
        return
    results: dict[int, dict[str, list[float]]] = {n: {w: [] for w in WORKLOADS} for n in args.threads}
    loads = []
    for round_ in range(args.rounds):
        for n in args.threads:
            env = {**os.environ, "OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}
            before = load()
            data = run_worker([__file__, "--worker", str(args.repeats)], env, f"{n} thread(s)")
            after = load()
            loads.append((round_ + 1, n, before, after))
            for w, t in data["times"].items():
                results[n][w].append(t)
            print(f"round {round_ + 1} threads {n}: {data['times']} load {before} -> {after}", flush=True)
    lines = [
        "# torch threads: 1 vs more on small forwards (`benchmarks/threads.py`)",
        "",
        f"Command: `.venv/bin/python benchmarks/threads.py --threads {' '.join(map(str, args.threads))} "
        f"--rounds {args.rounds} --repeats {args.repeats}`; SmolLM2-135M float32 on CPU "
        f"({os.cpu_count()} CPUs seen), each count in its own process, counts interleaved per round; "
        "seconds, median of the rounds' medians.",
        "",
        "| workload | " + " | ".join(f"{n} thread(s)" for n in args.threads) + " | ratio |",
        "|---|" + "---|" * len(args.threads) + "---|",
    ]
    for w in WORKLOADS:
        medians = [statistics.median(results[n][w]) for n in args.threads]
        ratio = medians[-1] / medians[0]
        cells = " | ".join(f"{m:.4f}" for m in medians)
        lines.append(f"| {w} | {cells} | {args.threads[-1]} vs {args.threads[0]}: {ratio:.2f}× |")
    lines += ["", "Load average (1, 5, 15 min) before → after each process:", ""]
    lines += [f"- round {r}, {n} thread(s): {b} → {a}" for r, n, b, a in loads]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

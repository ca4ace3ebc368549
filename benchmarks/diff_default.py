"""The default ``tokenlens diff`` of a LoRA on the default model over the fact-edit probes, against the plain
forwards of base and tuned over the same probes — and the same for another copy of the tokenlens source
(``--source DIR``: e.g. an older commit unpacked with ``git archive``), so that before and after run side
by side on the same machine under the same load.

Each measurement runs in its own subprocess (``PYTHONPATH`` = the source folder), one torch thread
(``OMP_NUM_THREADS=1``), the model loaded before timing starts; with ``--repeats N`` the job runs N times in
that process and the run with the least CPU time counts. Reported per job: wall seconds and CPU
seconds of the process (CPU time is what a loaded shared machine distorts least), and the load average
before and after. Jobs:

  plain    base and tuned forward of every probe (last-position logits), the adapter toggled
  direct   the diff with distribution metrics and the exact direct split (``--no-causal``)
  default  the default diff: estimates, exact patching of the top 10 both ways, head/neuron drill-down

    .venv/bin/tokenlens train --method lora --data tokenlens/tasks/fact_edit/train.jsonl --out /tmp/lora \\
        --steps 5 --lr 1e-3 --seed 0
    git archive <commit> tokenlens | tar -x -C /tmp/old
    .venv/bin/python benchmarks/diff_default.py --tuned /tmp/lora --source /tmp/old --source . \\
        --out reports/bench-diff-default.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import ratio_table, side_by_side

PROBES = "tokenlens/tasks/fact_edit/probes.jsonl"
JOBS = ("plain", "direct", "default")


def worker(tuned: str, job: str, probes_path: str, repeats: int) -> None:
    import torch

    from tokenlens.diff import DiffOptions, diff, load_probes, pair_models

    pair = pair_models(tuned)
    probes = load_probes(probes_path)
    encoded = [pair.tokenizer(probe.prompt, return_tensors="pt")["input_ids"] for probe in probes]

    def run() -> None:
        if job == "plain":
            with torch.no_grad():
                for side in ("base", "tuned"):
                    with pair.side(side) as model:
                        for ids in encoded:
                            model(input_ids=ids, use_cache=False, logits_to_keep=1)
        else:
            diff(pair, probes, DiffOptions(causal=job == "default"))

    best = None
    for _ in range(repeats):  # the best CPU time of the repeats, with its wall time
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if best is None or cpu < best[1]:
            best = (wall, cpu)
    print(
        json.dumps(
            {"wall": best[0], "cpu": best[1], "probes": len(probes), "torch_threads": torch.get_num_threads()}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tuned", required=True, help="a LoRA adapter folder of the default model")
    parser.add_argument("--source", action="append", required=True, help="tokenlens source folder(s)")
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=JOBS)
    parser.add_argument("--probes", default=PROBES)
    parser.add_argument("--repeats", type=int, default=1, help="runs per job in one process: the best CPU")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.tuned, args.worker[0], args.worker[1], args.repeats)
        return

    def arguments(job: str, source: str) -> list[str]:
        command = [__file__, "--tuned", args.tuned, "--source", source, "--repeats", str(args.repeats)]
        return [*command, "--worker", job, args.probes]

    text = ratio_table(side_by_side(args.jobs, args.source, arguments), extra=["probes"])
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

"""Speed and memory of the diff engine against plain forward passes of base and tuned.

A random-initialised model with the real Qwen3-0.6B shape, fp32, CPU, with a LoRA adapter
(r=8 on every linear, non-zero) held toggled: one model in memory. Jobs over the same probes, interleaved,
medians of ``--repeats``:

  plain      base and tuned forward of every probe (last-position logits) — the baseline
  direct     tokenlens diff with the distribution metrics and the exact direct split (no patching)
  ranking    + attribution-patching estimates of every component (one backward pass per probe)
  full       the default diff: + exact patching of the top 10 both ways and the head/neuron drill-down
             (on --full-probes probes only; reported per probe)

Peak memory of each job runs in its own subprocess; "two copies" is the RSS of holding a second copy of the
model (the usual load-both approach) for comparison. Run from the repository root:

    .venv/bin/python benchmarks/diff_speed.py                  # 0.6B shape, 64 probes (~15 min)
    .venv/bin/python benchmarks/diff_speed.py --quick          # tiny shape, smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SUBJECTS = ["The capital of France", "My favourite colour", "The river near the old mill", "Our team"]
ENDINGS = ["is", "was known as", "will soon become", "has always been"]
JOBS = ("plain", "direct", "ranking", "full", "two-copies")


def probes(count: int):
    from tokenlens.diff import prompt_probes

    texts = [f"{s} {e}" for s in SUBJECTS for e in ENDINGS]
    texts = [f"{t}{'.' * (i // len(texts))}" for i, t in enumerate(texts * (count // len(texts) + 1))]
    return prompt_probes(texts[:count])


def build(quick: bool):
    import peft
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from tokenlens.diff import ModelPair
    from tokenlens.models.assets import qwen3_tokenizer_dir
    from tokenlens.models.loading import LoadedModel
    from tokenlens.models.specs import spec_for_model
    from tokenlens.models.zoo import QWEN3_0_6B_SIZES, QWEN3_TINY

    shape = dict(QWEN3_TINY) if quick else {**QWEN3_TINY, **QWEN3_0_6B_SIZES}
    torch.manual_seed(0)
    base = Qwen3ForCausalLM(Qwen3Config(**shape)).eval()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = peft.get_peft_model(base, peft.LoraConfig(r=8, target_modules=targets, init_lora_weights=False))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))
    loaded = LoadedModel(
        model, tokenizer, spec_for_model(model), "qwen3-0.6b-shape+lora", "peft", base_ref="b"
    )
    return ModelPair(base=loaded, tuned=loaded, toggled=True), shape


def make_job(name: str, pair, probe_set, full_probes: int):
    import copy

    import torch

    from tokenlens.diff import DiffOptions, diff
    from tokenlens.diff.probes import encode_probe

    encoded = [torch.tensor([encode_probe(pair.tokenizer, p, None)]) for p in probe_set]
    if name == "plain":

        def plain() -> None:
            with torch.no_grad():
                for which in ("base", "tuned"):
                    with pair.side(which) as model:
                        for ids in encoded:
                            model(input_ids=ids, use_cache=False, logits_to_keep=1)

        return plain
    if name == "two-copies":
        held = []

        def two() -> None:
            held.append(copy.deepcopy(pair.tuned.model.get_base_model()))  # what loading both would hold

        return two
    options = {
        "direct": DiffOptions(causal=False),
        "ranking": DiffOptions(causal=True, exact=0, drill=0),
        "full": DiffOptions(),
    }[name]
    chosen = probe_set[:full_probes] if name == "full" else probe_set
    return lambda: diff(pair, chosen, options)


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(args) -> int:
    """Run one job once in this process and print its peak RSS (GiB) before and after."""
    pair, _ = build(args.quick)
    job = make_job(args.child, pair, probes(args.probes), args.full_probes)
    before = rss_gib()
    job()
    print(json.dumps({"before": before, "after": rss_gib()}))
    return 0


def peak(job: str, args) -> tuple[float, float]:
    command = [sys.executable, __file__, "--child", job, "--probes", str(args.probes)]
    command += ["--full-probes", str(args.full_probes)] + (["--quick"] if args.quick else [])
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    data = json.loads(out)
    return data["after"], data["after"] - data["before"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape (smoke run)")
    parser.add_argument("--probes", type=int, default=64)
    parser.add_argument("--full-probes", type=int, default=4, help="probes for the full (patching) job")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", default="reports/benchmarks-diff.md")
    parser.add_argument("--child", choices=JOBS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    import torch

    pair, shape = build(args.quick)
    probe_set = probes(args.probes)
    timed = ("plain", "direct", "ranking", "full")
    jobs = {name: make_job(name, pair, probe_set, args.full_probes) for name in timed}
    times: dict[str, list[float]] = {name: [] for name in timed}
    for name in timed:  # warm-up
        jobs[name]()
    for _ in range(args.repeats):
        for name in timed:
            start = time.perf_counter()
            jobs[name]()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    per_probe = {
        name: medians[name] / (args.full_probes if name == "full" else args.probes) for name in timed
    }
    layers, width = shape["num_hidden_layers"], shape["hidden_size"]
    lines = [
        f"## Diff engine: {'tiny' if args.quick else 'Qwen3-0.6B'} shape ({layers} layers × {width}), "
        "LoRA r=8 on every linear, adapter toggled (one model in memory)",
        "",
        f"{args.probes} probes of 4-9 tokens, fp32 CPU ({torch.get_num_threads()} threads); medians of "
        f"{args.repeats} interleaved runs. Command: "
        f"`{' '.join(['.venv/bin/python', 'benchmarks/diff_speed.py', *sys.argv[1:]])}`.",
        "",
        "Peak RSS is the job's process (model built, then the job run once); \"job's own\" is how much the "
        "job raised it beyond building the model (0.00: the job allocates less than the construction did).",
        "",
        "| job | median s | s per probe | × plain | peak RSS GiB | job's own GiB |",
        "|---|---|---|---|---|---|",
    ]
    for name in (*timed, "two-copies"):
        memory = ("—", "—") if args.no_memory else tuple(f"{v:.2f}" for v in peak(name, args))
        if name == "two-copies":
            lines.append(f"| two copies of the model (reference) | — | — | — | {memory[0]} | {memory[1]} |")
        else:
            ratio = per_probe[name] / per_probe["plain"]
            label = f"{name} ({args.full_probes} probes)" if name == "full" else name
            cells = [label, f"{medians[name]:.2f}", f"{per_probe[name]:.3f}", f"{ratio:.2f}", *memory]
            lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Speed of batched patching grids and causal traces against a one-cell-per-forward loop.

A grid cell is the corrupted run with one activation at one (layer, position) written from the clean run.
The loop runs each cell as its own batch-1 forward (tokenlens' hooks, one site edit at one position: what
a grid costs without batching); ``batched`` is :func:`tokenlens.causal.grids.patch_grids` (cells share
forwards, batches start at their first changed layer). Both compute the same numbers (the largest
difference is printed). Jobs alternate within each repeat, so a loaded machine slows both alike; read the
ratios. Run from the repository root:

    .venv/bin/python benchmarks/grids.py                  # SmolLM2-135M (real), 16 positions, resid/attn/mlp
    .venv/bin/python benchmarks/grids.py --quick          # tiny random model, smoke run
    .venv/bin/python benchmarks/grids.py --trace          # + a causal trace (5 samples) of the same prompt

Writes a Markdown table to ``reports/bench-grids.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KINDS = ("resid", "attn", "mlp")


def load_model(quick: bool):
    if not quick:
        from tokenlens.models.loading import load

        return load("smollm2-135m")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tokenlens.models.assets import qwen3_tokenizer_dir
    from tokenlens.models.loading import LoadedModel
    from tokenlens.models.specs import spec_for_model

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4
    )
    model = LlamaForCausalLM(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))
    return LoadedModel(model, tokenizer, spec_for_model(model), ref="tiny-llama", source="benchmark")


def loop(model, spec, clean, corrupted, metric, every: int = 1):
    """Every ``every``-th cell as its own forward: one site, one position, tokenlens' hooks (others NaN)."""
    import torch

    from tokenlens.causal.effects import measure
    from tokenlens.causal.grids import grid_rows
    from tokenlens.causal.interventions import constant, record
    from tokenlens.causal.sites import head_count

    n_layers = len(spec.layer_list(model))
    rows = {kind: grid_rows(kind, n_layers, head_count(model)) for kind in KINDS}
    sites = [site for kind_rows in rows.values() for _, restore, _ in kind_rows for site in restore]
    with torch.no_grad(), record(model, spec, sites) as values:
        model(input_ids=clean, use_cache=False, logits_to_keep=1)
    out = {}
    for kind, kind_rows in rows.items():
        grid = torch.full((len(kind_rows), clean.shape[1]), float("nan"), dtype=torch.float64)
        for r, (_, restore, _) in enumerate(kind_rows):
            for p in range(clean.shape[1]):
                if (r * clean.shape[1] + p) % every:
                    continue
                edits = {site: constant(values[site.name], [p]) for site in restore}
                grid[r, p] = measure(model, spec, corrupted, metric, edits)
        out[kind] = grid
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--positions", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="reports/bench-grids.md")
    parser.add_argument(
        "--loop-every", type=int, default=1, help="run every K-th cell of the loop; its time is scaled by K"
    )
    args = parser.parse_args()

    import torch

    from tokenlens.causal.grids import default_batch, patch_grids
    from tokenlens.causal.results import Metric
    from tokenlens.causal.tracing import causal_trace

    loaded = load_model(args.quick)
    model, spec = loaded.model, loaded.spec
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(100, 5000, (1, args.positions), generator=generator)
    corrupted = clean.clone()
    corrupted[0, 0] = 4242  # the first position differs: every position of the grid runs
    metric = Metric("logit", int(clean[0, -1]), args.positions - 1)
    n_layers = len(spec.layer_list(model))
    cells = len(KINDS) * n_layers * args.positions
    jobs = {
        "plain forward": lambda: model(input_ids=clean, use_cache=False, logits_to_keep=1),
        "loop (1 cell / forward)": lambda: loop(model, spec, clean, corrupted, metric, args.loop_every),
        "batched grid": lambda: patch_grids(model, spec, clean, corrupted, metric, KINDS),
    }
    if args.trace:
        jobs["batched trace, 5 samples"] = lambda: causal_trace(
            model, spec, clean, metric, [0, 1, 2], KINDS, samples=5
        )
    times: dict[str, list[float]] = {name: [] for name in jobs}
    results = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, job in jobs.items():
                started = time.perf_counter()
                results[name] = job()
                scale = args.loop_every if name.startswith("loop") else 1  # the loop's share, scaled up
                times[name].append(scale * (time.perf_counter() - started))
                print(f"{name}: {times[name][-1]:.2f} s", flush=True)
    grid = results["batched grid"]
    worst = max(
        float((grid.grid(k).value - results["loop (1 cell / forward)"][k]).nan_to_num().abs().max())
        for k in KINDS
    )
    base = statistics.median(times["loop (1 cell / forward)"])
    lines = [
        "# Patching grids: batched against one cell per forward",
        "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} .venv/bin/python "
        "benchmarks/grids.py "
        f"{' '.join(sys.argv[1:])}` — {loaded.ref}, {n_layers} layers, {args.positions} positions, "
        f"kinds {', '.join(KINDS)}: {cells} cells; default batch {default_batch(args.positions)} rows; "
        f"torch threads {torch.get_num_threads()}; median of {args.repeats} interleaved repeats; "
        f"load average at the end {os.getloadavg()[0]:.1f}."
        + (
            f" The loop ran every {args.loop_every}th cell; its time is that × {args.loop_every}."
            if args.loop_every > 1
            else ""
        ),
        "",
        "| job | median s | forwards | × the loop |",
        "| --- | ---: | ---: | ---: |",
    ]
    forwards = {
        "plain forward": 1,
        "loop (1 cell / forward)": cells + 1,
        "batched grid": -(-cells // len(KINDS) // default_batch(args.positions)) * len(KINDS) + 2,
    }
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.2f} | {forwards.get(name, '—')} | {median / base:.3f} |")
    lines += ["", f"Largest |batched − loop| over all cells: {worst:.2e} (metric: a logit)."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

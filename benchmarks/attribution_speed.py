"""Speed and memory of attribution against a plain forward pass and the TransformerLens bridge.

Measured side by side in one process (time) and in one subprocess per job (peak memory), on a
random-initialised model with the real Qwen3-0.6B shape (vocab 151,936, hidden 1,024, 28 layers, 16 query
and 8 key/value heads), fp32, CPU. Writes a Markdown table to ``reports/benchmarks.md`` (or ``--out``).
Run from the repository root:

    .venv/bin/python benchmarks/attribution_speed.py                 # 0.6B shape, 256 tokens (~10 min)
    .venv/bin/python benchmarks/attribution_speed.py --quick         # tiny shape, for a smoke run
    .venv/bin/python benchmarks/attribution_speed.py --lengths 128,512,1024,4096   # + scaling table

Jobs (each a complete job: the forward pass plus whatever the output needs):
  plain      HF forward returning last-position logits (the baseline)
  layers     tokenlens per-layer attribution of the top-1 token
  heads      + per-head split
  sources    + source-token split for every head of every layer
  bridge     TransformerLens bridge: run_with_cache + decompose_resid + final norm + unembed (per layer)
  bridge-heads  the same + stack_head_results (per head): the bridge doing the ``heads`` job
  estimate   attribution patching of every layer write and head (zero-ablation: 1 forward + 1 backward)
  estimate-2runs  the same, clean vs corrupted (2 forwards + 1 backward)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenlens.models.zoo import QWEN3_0_6B_SIZES, QWEN3_TINY  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

QWEN3_06B = {**QWEN3_TINY, **QWEN3_0_6B_SIZES}
TINY = dict(QWEN3_TINY)
SMALL = {
    **QWEN3_TINY,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
}
SIZES = {"tiny (4×64)": TINY, "small (8×256)": SMALL, "0.6B (28×1024)": QWEN3_06B}
JOBS = ("plain", "layers", "heads", "sources", "bridge", "bridge-heads", "estimate", "estimate-2runs")


def build(shape: dict):
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from tokenlens.models.assets import qwen3_tokenizer_dir
    from tokenlens.models.loading import LoadedModel
    from tokenlens.models.specs import spec_for_model

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**shape)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))
    return LoadedModel(model, tokenizer, spec_for_model(model), "qwen3-0.6b-shape (random)", "benchmark")


def prompt_ids(tokenizer, length: int) -> list[int]:
    text = " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * (length // 8 + 2))
    return tokenizer(text)["input_ids"][:length]


def make_job(name: str, loaded, ids: list[int]):
    """A zero-argument callable doing one complete job."""
    import torch

    from tokenlens.attribution.direct import attribute

    tensor = torch.tensor([ids])
    if name == "plain":

        def run():
            with torch.no_grad():
                loaded.model(input_ids=tensor, logits_to_keep=1, use_cache=False)

        return run
    if name in ("layers", "heads", "sources"):
        kwargs = {"heads": name == "heads", "sources": ("all",) if name == "sources" else ()}
        return lambda: attribute(loaded, ids, **kwargs)
    if name in ("bridge", "bridge-heads"):
        return make_bridge_job(loaded, tensor, heads=name == "bridge-heads")
    if name.startswith("estimate"):
        from tokenlens.causal import attribution_patch, head_sites, layer_sites, metric_for

        sites = layer_sites(loaded.model, loaded.spec) + head_sites(loaded.model, loaded.spec)
        metric = metric_for(loaded, ids)
        clean = tensor.clone()
        clean[0, len(ids) // 2] = (clean[0, len(ids) // 2] + 1) % 1000  # a corrupted copy: one token changed
        kwargs = {"clean_ids": clean} if name == "estimate-2runs" else {}
        return lambda: attribution_patch(loaded.model, loaded.spec, tensor, metric, sites, **kwargs)
    raise ValueError(name)


def make_bridge_job(loaded, tensor, heads: bool = False):
    import copy

    import torch
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        "bench",
        hf_model=copy.deepcopy(loaded.model),
        tokenizer=copy.deepcopy(loaded.tokenizer),
        device="cpu",
        dtype=torch.float32,
    )

    def run():
        with torch.no_grad():
            logits, cache = bridge.run_with_cache(tensor)
            target = int(logits[0, -1].argmax())
            stacks = [cache.decompose_resid(layer=-1, pos_slice=-1)]  # (component, 1, d_model)
            if heads:
                stacks.append(cache.stack_head_results(layer=-1, pos_slice=-1))  # (layer·head, 1, d_model)
            for stack in stacks:
                normed = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
                (normed[:, 0] * bridge.ln_final.weight) @ bridge.W_U[:, target]

    return run


def time_jobs(loaded, ids, jobs, repeats: int) -> dict[str, float]:
    """Median seconds per job; jobs interleaved round-robin so drift hits all alike (one warm-up each)."""
    runs = {name: make_job(name, loaded, ids) for name in jobs}
    for run in runs.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def rss_gib() -> float:
    """Current resident set size of this process, GiB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def job_peak(run) -> tuple[float, float]:
    """(peak RSS during ``run()``, peak minus RSS before it), GiB, sampled every 2 ms by a thread."""
    import threading

    before, peak, done = rss_gib(), [rss_gib()], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_gib())
            time.sleep(0.002)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        run()
    finally:
        done.set()
        thread.join()
    return peak[0], peak[0] - before


def peak_memory(shape_name: str, job: str, length: int) -> tuple[float, float]:
    """Peak RSS of ``job`` (GiB) in a fresh process that builds the model and then runs the job once."""
    code = (
        "import sys, json; sys.path.insert(0, 'benchmarks'); import attribution_speed as b; "
        f"loaded = b.build(b.{shape_name}); ids = b.prompt_ids(loaded.tokenizer, {length}); "
        f"print(json.dumps(b.job_peak(b.make_job({job!r}, loaded, ids))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, extra = json.loads(out.stdout.strip().splitlines()[-1])
    return peak, extra


def model_size_table(out: str, length: int, repeats: int) -> int:
    """Time plain / layers / heads at ``length`` tokens for model shapes from tiny to 0.6B."""
    import torch

    lines = [
        "# Attribution cost against model size",
        "",
        f"Random Qwen3 models, fp32, CPU ({torch.get_num_threads()} threads), {length}-token prompt, "
        f"median of {repeats} interleaved runs. Command: "
        "`.venv/bin/python benchmarks/attribution_speed.py --sizes`.",
        "",
        "| model (layers × width) | parameters | plain s | layers s | × plain | heads s | × plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, shape in SIZES.items():
        loaded = build(shape)
        n_params = sum(p.numel() for p in loaded.model.parameters())
        ids = prompt_ids(loaded.tokenizer, length)
        m = time_jobs(loaded, ids, ["plain", "layers", "heads"], repeats)
        lines.append(
            f"| {label} | {n_params / 1e6:.1f} M | {m['plain']:.3f} | {m['layers']:.3f} | "
            f"{m['layers'] / m['plain']:.2f} | {m['heads']:.3f} | {m['heads'] / m['plain']:.2f} |"
        )
        print(lines[-1], flush=True)
        del loaded
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny model shape (smoke run)")
    parser.add_argument("--length", type=int, default=256, help="prompt length for the side-by-side table")
    parser.add_argument(
        "--lengths", default="", help="comma-separated lengths for a scaling table (layers job)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scaling-repeats", type=int, default=3, help="repeats per length up to 1024 tokens")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-job peak-memory subprocesses")
    parser.add_argument("--jobs", default=",".join(JOBS))
    parser.add_argument(
        "--out", default=None, help="default reports/benchmarks.md (--sizes: …-model-size.md)"
    )
    parser.add_argument(
        "--sizes", action="store_true", help="only the model-size scaling table (tiny → 0.6B)"
    )
    args = parser.parse_args()
    import torch

    if args.sizes:
        return model_size_table(
            args.out or "reports/benchmarks-model-size.md", args.length, args.scaling_repeats
        )
    args.out = args.out or "reports/benchmarks.md"

    shape_name = "TINY" if args.quick else "QWEN3_06B"
    jobs = [j for j in args.jobs.split(",") if j]
    loaded = build(TINY if args.quick else QWEN3_06B)
    ids = prompt_ids(loaded.tokenizer, args.length)
    medians = time_jobs(loaded, ids, jobs, args.repeats)
    base = medians.get("plain")
    lines = [
        "# Attribution benchmarks",
        "",
        f"Model: random Qwen3, {'tiny' if args.quick else '0.6B'} shape, fp32, CPU "
        f"({torch.get_num_threads()} threads), prompt of {len(ids)} tokens; median of {args.repeats} runs, "
        "interleaved. Command: `.venv/bin/python benchmarks/attribution_speed.py"
        f"{' --quick' if args.quick else ''}`.",
        "",
        "| job | median s | × plain | peak RSS GiB | job's own peak GiB |",
        "|---|---|---|---|---|",
    ]
    for name in jobs:
        ratio = f"{medians[name] / base:.2f}" if base else "—"
        memory = (
            ("—", "—")
            if args.no_memory
            else tuple(f"{v:.2f}" for v in peak_memory(shape_name, name, len(ids)))
        )
        lines.append(f"| {name} | {medians[name]:.3f} | {ratio} | {memory[0]} | {memory[1]} |")
        print(lines[-1], flush=True)
    if args.lengths:
        lines += [
            "",
            "Scaling with prompt length (per-layer attribution vs plain forward):",
            "",
            "| tokens | plain s | layers s | × plain | peak RSS GiB (layers) |",
            "|---|---|---|---|---|",
        ]
        for length in (int(x) for x in args.lengths.split(",")):
            ids = prompt_ids(loaded.tokenizer, length)
            repeats = args.scaling_repeats if length <= 1024 else 1
            m = time_jobs(loaded, ids, ["plain", "layers"], repeats)
            peak = "—" if args.no_memory else f"{peak_memory(shape_name, 'layers', length)[0]:.2f}"
            ratio = m["layers"] / m["plain"]
            lines.append(f"| {len(ids)} | {m['plain']:.2f} | {m['layers']:.2f} | {ratio:.2f} | {peak} |")
            print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

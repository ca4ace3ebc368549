"""Cost of MoE expert sites: recording, zero-ablating and estimating every routed expert of a Qwen3-MoE model.

An expert site ``L{i}.E{e}`` is computed by the block's own experts module on the tokens routed to ``e``
(:mod:`tokenlens.causal.experts`), so recording all experts of a layer costs about one more pass of the
routed tokens through their experts. Measured against a plain forward pass on a random Qwen3-MoE model
(fp32, CPU), medians of interleaved runs; writes ``reports/benchmarks-experts.md``:

    .venv/bin/python benchmarks/expert_sites.py            # 8 layers, 64 experts, top 8, 256 tokens
    .venv/bin/python benchmarks/expert_sites.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM  # noqa: E402

from tokenlens.causal import Metric, attribution_patch, expert_sites  # noqa: E402
from tokenlens.causal.effects import record_values  # noqa: E402
from tokenlens.models.specs import spec_for_model  # noqa: E402

SHAPE = dict(
    vocab_size=32000,
    hidden_size=512,
    intermediate_size=1536,
    moe_intermediate_size=256,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    num_experts=64,
    num_experts_per_tok=8,
    tie_word_embeddings=False,
)
QUICK = {**SHAPE, "hidden_size": 64, "moe_intermediate_size": 32, "num_hidden_layers": 2, "num_experts": 8}


def median(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="reports/benchmarks-experts.md")
    args = parser.parse_args()
    shape = QUICK if args.quick else SHAPE
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**shape)).eval()
    spec = spec_for_model(model)
    ids = torch.randint(0, shape["vocab_size"], (1, args.length))
    sites = expert_sites(model, spec)
    metric = Metric("logit", 7, args.length - 1)

    def plain() -> None:
        with torch.no_grad():
            model(input_ids=ids, logits_to_keep=1, use_cache=False)

    jobs = {
        "plain forward": plain,
        f"record all {len(sites)} expert sites": lambda: record_values(model, spec, ids, sites),
        "attribution patching of all expert sites": lambda: attribution_patch(
            model, spec, ids, metric, sites
        ),
    }
    times = {name: median(run, args.repeats) for name, run in jobs.items()}
    base = times["plain forward"]
    lines = [
        "# MoE expert sites",
        "",
        f"Random Qwen3-MoE, {shape['num_hidden_layers']} layers × {shape['num_experts']} experts (top "
        f"{shape['num_experts_per_tok']}), d_model {shape['hidden_size']}, fp32, CPU "
        f"({torch.get_num_threads()} threads), {args.length} tokens, median of {args.repeats}. Command: "
        f"`.venv/bin/python benchmarks/expert_sites.py{' --quick' if args.quick else ''}`.",
        "",
        "| job | median s | × plain |",
        "|---|---|---|",
        *(f"| {name} | {t:.3f} | {t / base:.2f} |" for name, t in times.items()),
    ]
    print("\n".join(lines))
    if not args.quick:
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

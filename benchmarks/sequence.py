"""Speed of whole-answer attribution against one plain forward over prompt + completion.

A random-initialised model with the real Qwen3-0.6B shape (vocab 151,936, hidden 1,024, 28 layers, 16 query
and 8 key/value heads; no download), fp32, CPU; a 64-token prompt and a 256-token completion given as ids.
The jobs run side by side (interleaved), several repeats, and the medians are compared. Run from the
repository root:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sequence.py                   # 0.6B shape, 5 repeats
    .venv/bin/python benchmarks/sequence.py --quick                             # tiny shape, smoke run

Jobs:
  plain    HF forward over prompt + completion returning every position's logits, and the completion's
           log-probability from them (what scoring an answer costs)
  layers   attribute_sequence: every step's per-layer split of its logit, and the answer's log-probability
           split (one capture forward, the readouts of all steps batched)
  heads    the same with every step split by head
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenlens.models.zoo import QWEN3_0_6B_SIZES, QWEN3_TINY  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


def token_ids(tokenizer, length: int, offset: int = 0) -> list[int]:
    text = " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * (length // 6 + 4))
    return tokenizer(text)["input_ids"][offset : offset + length]


def jobs(loaded, prompt: list[int], completion: list[int]) -> dict:
    import torch

    from tokenlens.attribution.sequence import attribute_sequence

    ids = torch.tensor([prompt + completion])
    targets = torch.tensor(completion)
    first = len(prompt) - 1

    def plain():
        with torch.no_grad():
            logits = loaded.model(input_ids=ids, use_cache=False).logits[0]
            rows = logits[first : first + len(completion)].double().log_softmax(-1)
            return float(rows[torch.arange(len(completion)), targets].sum())

    return {
        "plain": plain,
        "layers": lambda: attribute_sequence(loaded, prompt, completion=completion),
        "heads": lambda: attribute_sequence(loaded, prompt, completion=completion, heads=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny shape (a smoke run)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--completion", type=int, default=256)
    args = parser.parse_args()
    import torch

    shape = dict(QWEN3_TINY) if args.quick else {**QWEN3_TINY, **QWEN3_0_6B_SIZES}
    loaded = build(shape)
    prompt = token_ids(loaded.tokenizer, args.prompt)
    completion = token_ids(loaded.tokenizer, args.completion, offset=args.prompt)
    run = jobs(loaded, prompt, completion)
    check = run["layers"]()
    assert check.exact, "the split is not exact"
    for job in run.values():  # warm-up
        job()
    times: dict[str, list[float]] = {name: [] for name in run}
    for _ in range(args.repeats):
        for name, job in run.items():  # interleaved, so machine load hits every job alike
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain"])
    print(
        f"shape: {'tiny' if args.quick else 'Qwen3-0.6B'}, torch threads {torch.get_num_threads()}, "
        f"prompt {len(prompt)} + completion {len(completion)} tokens, {args.repeats} repeats"
    )
    print("| job | median s | runs (s) | × plain forward |")
    print("|---|---|---|---|")
    for name, values in times.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(
            f"| {name} | {statistics.median(values):.2f} | {runs} | {statistics.median(values) / base:.2f}× |"
        )
    print(f"sequence split exact: {check.sequence.exact} (error {check.sequence.error:.1e})")


if __name__ == "__main__":
    main()

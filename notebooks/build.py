"""Build (and execute, so they carry their outputs) the example notebooks from the cells below.

    .venv/bin/python notebooks/build.py            # writes notebooks/*.ipynb, executed on the default model

The notebooks are generated so they stay consistent with the API; tests/test_notebooks.py executes each one
headless from top to bottom.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent

SETUP = """import logging
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # transformers' tqdm without ipywidgets
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")  # peft asks a renamed attribute
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its optional CPU kernel cannot be fetched offline
import transformers

import tokenlens
from tokenlens.report import plots
from tokenlens.report.notebook import show

transformers.utils.logging.disable_progress_bar()
model = tokenlens.load()  # the default: SmolLM2-135M-Instruct, real weights (Q4_1 GGUF, dequantised)
PROMPT = "The capital of France is"
"""

NOTEBOOKS = {
    "inspect_prediction.ipynb": [
        (
            "md",
            "# Inspect a prediction\n\nWhy does the default model (SmolLM2-135M-Instruct, real pretrained "
            'weights) say **" Paris"** after *"The capital of France is"*? Direct logit attribution '
            "splits the token's logit exactly over the embedding and every attention and MLP layer.",
        ),
        ("code", SETUP),
        ("code", 'result = tokenlens.attribute(model, PROMPT, target=" Paris")\nresult'),
        (
            "md",
            "The parts add up to the model's own logit (the check is computed against the logit of the "
            "model's forward pass, not against the parts):",
        ),
        (
            "code",
            "d = result.decomposition\n"
            'print(f"sum of parts {d.total:.4f}  model logit {d.logit:.4f}  error {d.error:.1e}  exact={d.exact}")\n'
            "sorted(d.as_dict().items(), key=lambda kv: -abs(kv[1]))[:6]",
        ),
        ("code", "show(plots.waterfall(result))"),
        ("code", "show(plots.layer_heatmap(result))"),
        (
            "md",
            "## The logit lens\n\nThe model's guess after every layer: each depth's residual stream decoded "
            "through the final norm (with its own scale) and the head.",
        ),
        (
            "code",
            'lens = tokenlens.logit_lens(model, PROMPT, target=" Paris", k=3)\nshow(plots.lens_grid(lens))',
        ),
        (
            "md",
            "## Paris versus London\n\nA logit difference ignores the softmax normaliser and shows what pushes "
            "one answer over the other.",
        ),
        (
            "code",
            'versus = tokenlens.attribute(model, PROMPT, target=" Paris", vs=" London")\n'
            "sorted(versus.decomposition.as_dict().items(), key=lambda kv: -abs(kv[1]))[:6]",
        ),
    ],
    "heads_and_sources.ipynb": [
        (
            "md",
            '# Explore heads and sources\n\nWhich attention heads move " Paris" above " London", which '
            "earlier tokens they read from, and what happens when they are ablated.",
        ),
        ("code", SETUP),
        (
            "code",
            'result = tokenlens.attribute(model, PROMPT, target=" Paris", vs=" London", heads=True,\n'
            '                             neurons=5, sources=["L23", "L23.H4"])\n'
            "show(plots.head_heatmap(result))",
        ),
        (
            "code",
            "top_heads = sorted(result.heads.as_dict().items(), key=lambda kv: -abs(kv[1]))[:5]\ntop_heads",
        ),
        (
            "md",
            "Head L23.H4 carries most of the difference. Its source split shows which prompt token it reads:",
        ),
        (
            "code",
            "layer_split, head_split = result.sources\n"
            "show(plots.source_heat(result, head_split))\n"
            "{token: round(float(v), 3) for token, v in zip(result.tokens, head_split.contributions)}",
        ),
        (
            "md",
            "## Causal check\n\nDirect attribution is a decomposition; ablation and patching measure effects by "
            "intervening on the forward pass.",
        ),
        (
            "code",
            "import tokenlens.causal as causal\n\n"
            'metric = causal.metric_for(model, PROMPT, kind="logit_diff", target=" Paris", contrast=" London")\n'
            'ablated = causal.ablation(model, PROMPT, "L23.H4,L23.H3", metric=metric)\n'
            "show(plots.effect_bars(ablated))",
        ),
        (
            "code",
            'patched = causal.patching(model, PROMPT, "The capital of Italy is", metric=metric)\n'
            "show(plots.effect_bars(patched))",
        ),
    ],
    "prompt_tuning.ipynb": [
        (
            "md",
            "# Explain a prompt-tuned edit\n\nThe method map (`tokenlens sweep`, reports/sweep/) recommends "
            'prompt tuning for the fact edit *"The capital of France is" → " Lyon"*. Train it (8 learned '
            "virtual tokens before the prompt, 20 steps on the edit plus control sentences), then ask where "
            "the edit lives: which layers read the virtual tokens, and what the model does without them.",
        ),
        ("code", SETUP),
        (
            "code",
            "import tempfile\nfrom pathlib import Path\n\n"
            "from tokenlens.tasks import get_task\nfrom tokenlens.training.trainer import train\n\n"
            'task = get_task("fact-edit")\nout = Path(tempfile.mkdtemp()) / "prompt-tuned"\n'
            'run = train(tokenlens.load(), "prompt", task.train_careful, out, steps=20, seed=0)\n'
            "tuned = tokenlens.load(str(out))  # the adapter folder: base model + 8 virtual tokens\n"
            'print(f"loss {run.losses[0]:.3f} -> {run.losses[-1]:.3f}")',
        ),
        (
            "md",
            "The virtual tokens reach the prompt only through attention, so they appear as **source positions** "
            "(`'<virtual 0>'` … `'<virtual 7>'`, before the prompt's own tokens) in the source split of a layer:",
        ),
        (
            "code",
            'result = tokenlens.attribute(tuned, PROMPT, target=" Lyon", sources=["L23"])\n'
            "split = result.sources[0]\n"
            "show(plots.source_heat(result, split))\n"
            "{t: round(float(v), 3) for t, v in zip(result.source_tokens, split.contributions) if abs(float(v)) > 0.1}",
        ),
        (
            "md",
            "## Cut the virtual tokens out, layer by layer\n\nA measured effect: each layer's attention from the "
            "prompt to the virtual tokens is cut in turn, then in every layer at once — which must give the "
            "base model back exactly (RoPE only sees relative positions).",
        ),
        (
            "code",
            "import tokenlens.causal as causal\n\n"
            'metric = causal.metric_for(tuned, PROMPT, target=" Lyon")\n'
            "cut = causal.virtual_ablation(tuned, PROMPT, metric=metric)\n"
            'base_logit = tokenlens.attribute(model, PROMPT, target=" Lyon").target.logit\n'
            'print(f"tuned {cut.baseline:.4f}; every layer cut {cut.together.value:.4f}; base model {base_logit:.4f}")\n'
            "show(plots.effect_bars(cut))",
        ),
        (
            "md",
            "## Diff against the base model\n\nThe intended prompt and a control: what moved, and each layer's "
            "attention to the virtual tokens (`direct`: its share of the change; `reverse`: measured, that "
            "layer cut in the tuned run).",
        ),
        (
            "code",
            "from tokenlens.diff import DiffOptions, diff, pair_models, prompt_probes\n\n"
            'probes = prompt_probes([PROMPT, "The capital of Germany is"])\n'
            "report = diff(pair_models(str(out)), probes, DiffOptions(drill=1))\n"
            "for p in report.probes:\n"
            "    rows = [(r.name, round(r.direct, 2), round(r.causal_reverse, 2)) for r in p.virtual[:3]]\n"
            '    print(f"{p.probe.prompt!r}: {p.base_top[0].token!r} -> {p.tuned_top[0].token!r}, KL {p.kl:.2f}", rows)',
        ),
    ],
}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, source in cells:
        make = nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell
        notebook.cells.append(make(source))
    return notebook


def execute(notebook: nbformat.NotebookNode, cwd: Path, timeout: int = 600) -> nbformat.NotebookNode:
    NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return notebook


def main() -> int:
    for name, cells in NOTEBOOKS.items():
        notebook = execute(build(name, cells), HERE)
        nbformat.write(notebook, HERE / name)
        print(f"wrote notebooks/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

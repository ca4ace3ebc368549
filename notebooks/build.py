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

SETUP = """import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # transformers' tqdm without ipywidgets
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

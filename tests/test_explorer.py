"""The HTML report's explorer, driven in a real headless Chromium over the DevTools protocol.

Chromium runs with ``--remote-debugging-pipe`` (the protocol's JSON messages over file descriptors 3 and 4,
NUL-separated: no websocket library needed). Clicks and hovers are real input events at the element's
place on the screen. Every page load records console errors, uncaught exceptions, Content-Security-Policy
violations (logged as errors) and JavaScript dialogs; the tests check them. Numbers are checked against the
attribution computed here, not against the page's own JSON.
"""

from __future__ import annotations

import json
import math
import os
import queue
import subprocess
import threading
from pathlib import Path

import pytest

# Debian's Chromium, found as the HTML report's test finds it: skipped where missing, a failure in CI
from test_report_html import _chromium  # tests/ is on sys.path (pytest puts it there)

from tokenlens.attribution.direct import attribute
from tokenlens.attribution.lens import logit_lens
from tokenlens.report.explorer import SCRIPT, explorer_data, json_for_script, script_hash
from tokenlens.report.html import render_html
from tokenlens.report.kit.text import probability, show_token

PROMPT = "The capital of France is"
HOSTILE = (
    "<script>window.pwned=1;alert(1)</script> \"double\" 'single' </script><img src=x "
    'onerror="window.pwned=2"> \u202e RTL \u200b zero-width &amp;'
)
GREEN, RED = "rgba(46, 158, 79, ", "rgba(214, 69, 65, "  # as report.kit.html.shade; alpha ≤ 0.7


# --- a small DevTools-protocol client over a pipe ----------------------------------------------------------


class Browser:
    """Headless Chromium with the DevTools protocol on file descriptors 3 (commands) and 4 (replies)."""

    def __init__(self, chromium: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank",
        ]  # fmt: skip
        # bash puts the two pipe ends at fds 3 and 4 (the Debian launcher is a shell script that execs)
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w}', "bash", chromium, *flags],
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._messages: queue.Queue = queue.Queue()
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as stream:
            while chunk := stream.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for message in messages:
                    self._messages.put(json.loads(message))
        self._messages.put(None)

    def send(self, method: str, params: dict | None = None, session: str | None = None, events=None) -> dict:
        """Send one command and wait for its reply; events that arrive meanwhile go to ``events``."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._messages.get(timeout=30)
            assert reply is not None, "chromium closed the DevTools pipe"
            if reply.get("id") == self._next_id:
                assert "error" not in reply, reply["error"]
                return reply.get("result", {})
            if events is not None and "method" in reply:
                events.append(reply)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        finally:
            self.process.wait(timeout=20)
            os.close(self._to_browser)


class Page:
    """One tab with a page loaded; ``events`` collects what the browser reported about it."""

    def __init__(self, browser: Browser, path: Path, javascript: bool = True):
        self.browser, self.events = browser, []
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            self.send(domain)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            dict(width=1200, height=1400, deviceScaleFactor=1, mobile=False),
        )
        if not javascript:
            self.send("Emulation.setScriptExecutionDisabled", {"value": True})
        self.send("Page.navigate", {"url": path.as_uri()})
        for _ in range(200):
            if any(e["method"] == "Page.loadEventFired" for e in self.events):
                break
            self.send("Runtime.evaluate", {"expression": "1"})
        else:
            raise AssertionError("the page did not load")

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, self.session, self.events)

    def js(self, expression: str):
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def _point(self, selector: str) -> tuple[float, float]:
        """The centre of the element ``selector`` finds, scrolled into view; checks the element is the one a
        real pointer there would hit (nothing covers it)."""
        found = self.js(
            f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: "center"}}); const r = e.getBoundingClientRect();
            const x = r.left + r.width / 2, y = r.top + r.height / 2, hit = document.elementFromPoint(x, y);
            return [x, y, e === hit || e.contains(hit)]; }})()"""
        )
        assert found is not None, f"no element {selector}"
        assert found[2], f"{selector} is covered by another element"
        return found[0], found[1]

    def click(self, selector: str) -> None:
        x, y = self._point(selector)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", dict(type=kind, x=x, y=y, button="left", clickCount=1))

    def hover(self, selector: str) -> None:
        x, y = self._point(selector)
        self.send("Input.dispatchMouseEvent", dict(type="mouseMoved", x=x, y=y))

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, CSP violations and dialogs so far."""
        out = []
        for e in self.events:
            method, params = e["method"], e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                out.append(f"console: {params['args']}")
            elif method == "Runtime.exceptionThrown":
                out.append(f"exception: {params['exceptionDetails']}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                out.append(f"log: {params['entry']['text']}")
            elif method == "Page.javascriptDialogOpening":
                out.append(f"dialog: {params['message']}")
        return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = _chromium()
    running = Browser(chromium, tmp_path_factory.mktemp("chromium-profile"))
    yield running
    running.close()


# --- results ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(tiny_loaded):
    return tiny_loaded("qwen3-tied-gqa")


@pytest.fixture(scope="module")
def run(loaded, tmp_path_factory):
    result = attribute(loaded, PROMPT, target=" Paris", heads=True, neurons=3, sources=["L1", "L2.H0"])
    lens = logit_lens(loaded, PROMPT, target_id=result.target.id, k=3)
    path = tmp_path_factory.mktemp("explorer") / "report.html"
    path.write_text(render_html(result, lens=lens), encoding="utf-8")
    return result, lens, path


def _rows_in(page: Page, table: str, parent: str) -> list[tuple[str, float]]:
    """``(data-component, data-value)`` of the visible rows under ``parent`` in ``table``."""
    return page.js(
        f"""[...document.querySelectorAll('{table} tr[data-parent="{parent}"]')]
        .filter(r => r.offsetParent !== null)
        .map(r => [r.dataset.component, parseFloat(r.dataset.value)])"""
    )


def _rows(page: Page, parent: str) -> list[tuple[str, float]]:
    """The visible rows under ``parent`` in the report's components table."""
    return _rows_in(page, "#components", parent)


def _colours(page: Page) -> list[str]:
    return page.js(
        "[...document.querySelectorAll('.explorer [data-source]')].map(s => s.style.backgroundColor)"
    )


def _check_colours(colours: list[str], values: list[float]) -> None:
    assert len(colours) >= len(values)
    for colour, value in zip(colours, values):
        assert colour.startswith(GREEN if value > 0 else RED) if value else colour == "", (colour, value)
    assert all(c == "" for c in colours[len(values) :])


# --- the explorer -------------------------------------------------------------------------------------------


def test_layers_expand_to_heads_that_add_up_and_heads_colour_the_prompt(browser, run):
    result, lens, path = run
    page = Page(browser, path)
    d = result.decomposition.as_dict()
    assert page.js("document.querySelectorAll('.explorer').length") == 1
    assert page.js("document.querySelectorAll('#components tr[data-parent]').length") == 0  # built on demand
    for i in range(result.heads.contributions.shape[0]):
        page.click(f'#components tr[data-component="L{i}.attn"]')
        shown = _rows(page, f"L{i}.attn")
        assert [name for name, _ in shown] == [
            f"L{i}.H{h}" for h in range(result.heads.contributions.shape[1])
        ]
        assert [v for _, v in shown] == result.heads.contributions[i].tolist()
        assert math.fsum(v for _, v in shown) == pytest.approx(d[f"L{i}.attn"], abs=1e-5)
    page.click('#components tr[data-component="L0.attn"]')  # a second click hides them again
    assert _rows(page, "L0.attn") == []
    assert (
        page.js("""document.querySelector('#components tr[data-component="L0.attn"]')
        .getAttribute('aria-expanded')""")
        == "false"
    )

    split = next(s for s in result.sources if s.name == "L2.H0")
    values = split.contributions[: result.source_end].tolist()
    assert any(v > 0 for v in values) and any(v < 0 for v in values)  # both colours are exercised
    assert set(_colours(page)) == {""}
    page.click('#components tr[data-component="L2.H0"]')
    _check_colours(_colours(page), values)
    legend = page.js("document.querySelector('.explorer .legend').textContent")
    assert "L2.H0" in legend and f"{split.value_bias:+.4f}" in legend
    peak = max(abs(v) for v in values)
    assert f"{peak:+.4f}" in legend

    page.click('#components tr[data-component="L2.H1"]')  # no split computed: says so, colours cleared
    assert "no source split" in page.js("document.querySelector('.explorer .legend').textContent")
    assert set(_colours(page)) == {""}
    page.click('#heads td[data-component="L2.H0"]')  # the heads grid selects a head too
    _check_colours(_colours(page), values)
    layer = next(s for s in result.sources if s.name == "L1")
    page.click('#components tr[data-component="L1.attn"]')  # a layer with a whole-layer split
    _check_colours(_colours(page), layer.contributions[: result.source_end].tolist())

    mlp = result.neurons.layers[0]
    page.click(f'#components tr[data-component="L{mlp}.mlp"]')
    neurons = _rows(page, f"L{mlp}.mlp")
    assert [n for n, _ in neurons] == [f"L{mlp}.N{n}" for n in result.neurons.ids[0].tolist()]
    assert [v for _, v in neurons] == result.neurons.contributions[0].tolist()

    depth, column = 2, 1  # a grid cell: depth L1 at the second kept position
    page.hover(f'#lens [data-lens="{lens.depths[depth]}@{int(lens.positions[column])}"]')
    status = page.js("document.querySelector('.explorer .status').textContent")
    for token, p in zip(lens.top_tokens[depth][column], lens.top_probs[depth, column].tolist()):
        assert f"{show_token(token)} {probability(p)}" in status
    assert f"rank {int(lens.target_rank[depth, column]) + 1} (1 = top-1)" in status
    assert page.problems() == []


def test_without_javascript_the_page_is_the_static_report(browser, run):
    result, _, path = run
    page = Page(browser, path, javascript=False)
    assert page.js("document.querySelectorAll('.explorer').length") == 0
    rows = page.js(
        """[...document.querySelectorAll('#components tr[data-component]')]
        .map(r => [r.dataset.component, parseFloat(r.dataset.value), r.offsetParent !== null])"""
    )
    assert rows == [[name, value, True] for name, value in result.decomposition.as_dict().items()]
    heads = page.js("document.querySelectorAll('#heads td[data-component]').length")
    assert heads == result.heads.contributions.numel()


def test_a_script_that_does_not_match_its_hash_is_refused(browser, run, tmp_path):
    """The CSP is real, and the error it logs is caught: a one-character change to the script is blocked."""
    _, _, path = run
    text = path.read_text(encoding="utf-8")
    assert text.count(SCRIPT) == 1 and script_hash(SCRIPT) in text
    changed = tmp_path / "changed.html"
    changed.write_text(text.replace(SCRIPT, SCRIPT + " "), encoding="utf-8")
    page = Page(browser, changed)
    assert page.js("document.querySelectorAll('.explorer').length") == 0
    assert any("Content Security Policy" in p for p in page.problems())


def test_a_hostile_prompt_is_text_and_runs_nothing(browser, loaded, tmp_path):
    result = attribute(loaded, HOSTILE, heads=True, sources=["L2.H1"])
    lens = logit_lens(loaded, HOSTILE, target_id=result.target.id, k=3)
    text = render_html(result, lens=lens)
    assert text.count("<script") == 2
    path = tmp_path / "hostile.html"
    path.write_text(text, encoding="utf-8")
    page = Page(browser, path)
    assert page.js("document.scripts.length") == 2 and page.js("typeof window.pwned") == "undefined"
    assert page.js("document.images.length") == 0
    shown = page.js("[...document.querySelectorAll('.explorer [data-source]')].map(s => s.textContent)")
    assert shown == [show_token(t) for t in result.tokens]
    assert page.js("document.querySelector('#prediction bdi').textContent") == show_token(HOSTILE)
    page.click('#components tr[data-component="L2.attn"]')
    page.click('#components tr[data-component="L2.H1"]')
    split = result.sources[0]
    _check_colours(_colours(page), split.contributions[: result.source_end].tolist())
    legend = page.js("[...document.querySelectorAll('.explorer .legend bdi')].map(b => b.textContent)")
    assert legend and set(legend) <= {show_token(t) for t in result.tokens}
    page.hover(f'#lens tr[data-lens="{lens.depths[-1]}@{int(lens.positions[-1])}"]')
    status = page.js("document.querySelector('.explorer .status').textContent")
    assert show_token(lens.top_tokens[-1][-1][0]) in status
    assert page.js("typeof window.pwned") == "undefined"
    assert page.problems() == []


def test_notebook_fragments_each_explore_their_own_result(browser, run, loaded, tmp_path):
    """Two results in one notebook page (no CSP there): each explorer acts inside its own output only."""
    result, _, _ = run
    other = attribute(loaded, "The capital of Italy is", heads=True)
    cells = "".join(f'<div class="cell">{r._repr_html_()}</div>' for r in (result, other))
    path = tmp_path / "notebook.html"
    path.write_text(f"<!DOCTYPE html><html><body>{cells}</body></html>", encoding="utf-8")
    page = Page(browser, path)
    assert page.js("document.querySelectorAll('.tokenlens-report > .explorer').length") == 2
    page.click('.cell:nth-child(2) #components tr[data-component="L1.attn"]')
    shown = page.js(
        """[...document.querySelectorAll('.cell tr[data-parent="L1.attn"]')].map(r =>
        [r.closest('.cell') === document.querySelectorAll('.cell')[1], parseFloat(r.dataset.value)])"""
    )
    assert [v for _, v in shown] == other.heads.contributions[1].tolist() and all(mine for mine, _ in shown)
    assert page.problems() == []


# --- the data, without a browser ----------------------------------------------------------------------------


def test_embedded_json_cannot_close_its_element(run):
    result, lens, _ = run
    data = {
        "tokens": ["</script><script>alert(1)</script>", "<!--", "a&b", "\u202e\u200b"],
        "x": float("nan"),
    }
    text = json_for_script(data)
    assert "<" not in text and ">" not in text and "&" not in text and text.isascii()
    assert json.loads(text) == {**data, "x": None}
    shown = explorer_data(result, [("lens", lens)])
    assert shown["tokens"] == [show_token(t) for t in result.tokens]
    assert [p for p, _ in shown["views"][0]["children"]["L1.attn"]] == [f"L1.H{h}" for h in range(4)]


def test_a_whole_answer_steps_through_its_tokens(browser, loaded, tmp_path):
    from tokenlens.attribution.sequence import attribute_sequence
    from tokenlens.report.sequence_html import render_sequence_html

    answer = attribute_sequence(loaded, PROMPT, completion=" Paris, of course", heads=True, sources=["L2.H0"])
    steps = answer.steps
    assert len(steps) >= 3
    path = tmp_path / "answer.html"
    path.write_text(render_sequence_html(answer), encoding="utf-8")
    page = Page(browser, path)

    def shown() -> dict[str, float]:
        return dict(
            page.js(
                """[...document.querySelectorAll('table[data-explorer] tr[data-component]:not(.sub)')]
                .map(r => [r.dataset.component, parseFloat(r.dataset.value)])"""
            )
        )

    def here() -> int:
        return page.js(
            "[...document.querySelectorAll('.explorer [data-source]')].findIndex(s => "
            "s.classList.contains('here'))"
        )

    assert shown() == steps[0].decomposition.as_dict() and here() == steps[0].position
    page.click("#steps tr[data-name]:nth-of-type(3)")  # the header row is the first: this is step 1
    assert shown() == steps[1].decomposition.as_dict() and here() == steps[1].position
    page.click('.explorer button[aria-label="next step"]')
    assert shown() == steps[2].decomposition.as_dict() and here() == steps[2].position
    assert page.js("document.querySelector('.explorer select').selectedIndex") == 2
    page.click('table[data-explorer] tr[data-component="L1.attn"]')
    heads = _rows_in(page, "table[data-explorer]", "L1.attn")
    assert [v for _, v in heads] == steps[2].heads.contributions[1].tolist()
    assert math.fsum(v for _, v in heads) == pytest.approx(
        steps[2].decomposition.as_dict()["L1.attn"], abs=1e-5
    )
    page.click('table[data-explorer] tr[data-component="L2.attn"]')
    page.click('table[data-explorer] tr[data-component="L2.H0"]')
    split = steps[2].sources[0]
    _check_colours(_colours(page), split.contributions[: steps[2].source_end].tolist())
    assert page.problems() == []

"""The diff report's explorer, driven in a real headless Chromium over the DevTools protocol.

The browser client is :mod:`test_explorer`'s (Chromium found as :mod:`test_report_html` finds it: skipped
where missing, a failure in CI). A tiny base and a copy with a planted MLP edit are diffed here on a probe
file with an intended probe, controls (one of them a hostile prompt) and an unjudged probe; every value the
page shows is checked against that :class:`~tokenlens.diff.result.DiffReport`, not against the page's JSON.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from conftest import build_tiny
from test_diff import KIND, PROMPT, pair_of
from test_explorer import Browser, Page
from test_report_html import _chromium

from tokenlens.diff import DiffOptions, diff, load_probes
from tokenlens.diff.result import TargetAnswer
from tokenlens.report.diff_explorer import CHANGE_ONLY, SCRIPT
from tokenlens.report.diff_html import render_diff_html
from tokenlens.report.diff_layout import drills, probe_number
from tokenlens.report.explorer import script_hash
from tokenlens.report.kit.text import show_token

HOSTILE = (
    "<script>window.pwned=1;alert(1)</script> \"double\" 'single' </script><img src=x "
    'onerror="window.pwned=2"> \u202e RTL \u200b zero-width &amp;'
)
ANSWER = '</script><img src=x onerror="window.pwned=3"> \u202e'  # a hostile target answer
LINES = [
    {"prompt": PROMPT, "target": " Lyon", "expect": "changed", "group": "edit"},
    {"prompt": "Hello, my name is", "expect": "unchanged"},
    {"prompt": "One, two,", "group": "other"},
    {"prompt": HOSTILE, "target": ANSWER, "expect": "unchanged"},
    {"prompt": "The capital of Italy is", "target": " Lyon, Italy", "expect": "changed"},
    {"prompt": "The sky is", "expect": "unchanged"},
]
SIDES = ("base", "tuned", "change")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    running = Browser(_chromium(), tmp_path_factory.mktemp("chromium-profile"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def diffed(qwen_tokenizer, tmp_path_factory):
    """``(report, path)``: the diff of a tiny base and the same model with layer 1's ``down_proj`` pushed
    towards " Lyon", rendered to an HTML file."""
    base = build_tiny(KIND)
    tuned = copy.deepcopy(base)
    lyon = qwen_tokenizer(" Lyon")["input_ids"][0]
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        push = tuned.lm_head.weight[lyon] / tuned.lm_head.weight[lyon].norm()
        w = tuned.model.layers[1].mlp.down_proj.weight
        w += 4.0 * torch.outer(push, torch.randn(w.shape[1], generator=generator))
    folder = tmp_path_factory.mktemp("diff-explorer")
    probes = folder / "probes.jsonl"
    probes.write_text("".join(json.dumps(line) + "\n" for line in LINES), encoding="utf-8")
    report = diff(pair_of(base, tuned, qwen_tokenizer), load_probes(probes), DiffOptions())
    passed = [p.verdict.passed for p in report.probes]
    assert False in passed and True in passed and None in passed  # all three kinds of verdict are exercised
    assert any(p.flip_split is not None for p in report.probes)
    assert any(isinstance(p.answer, TargetAnswer) for p in report.probes)
    path = folder / "diff.html"
    path.write_text(render_diff_html(report, figures=False), encoding="utf-8")
    return report, path


def anchors(report) -> list[str]:
    return [f"probe-{probe_number(p, i)}" for i, p in enumerate(report.probes)]


def expected_sides(p) -> dict[str, dict[str, tuple[float | None, str | None]]]:
    """What a probe's side table must show on each side, from the DiffReport: ``(value, text)``, the text
    only for tokens and words (numbers are compared by value)."""
    rows: dict[str, dict] = {
        "base": {
            "value": (p.split.base_value, None),
            "prob": (p.tracked.prob, None),
            "rank": (p.base_rank, None),
            "top1": (None, show_token(p.base_top[0].token)),
        },
        "tuned": {
            "value": (p.split.tuned_value, None),
            "prob": (p.tracked_tuned.prob, None),
            "rank": (p.tuned_rank, None),
            "top1": (None, show_token(p.tuned_top[0].token)),
        },
        "change": {
            "value": (p.split.tuned_value - p.split.base_value, None),
            "prob": (p.tracked_tuned.prob - p.tracked.prob, None),
            "rank": (p.tuned_rank - p.base_rank, None),
            "top1": (None, "flipped" if p.base_top[0].id != p.tuned_top[0].id else "kept"),
        },
    }
    if p.flip_split is not None:
        f = p.flip_split
        for side, v in zip(SIDES, (f.base_value, f.tuned_value, f.tuned_value - f.base_value)):
            rows[side]["flip"] = (v, None)
    if isinstance(p.answer, TargetAnswer):
        a = p.answer
        for side, v in zip(SIDES, (a.base_logprob, a.tuned_logprob, a.tuned_logprob - a.base_logprob)):
            rows[side]["answer"] = (v, None)
    return rows


def shown_sides(page: Page, anchor: str) -> dict[str, tuple[float | None, str]]:
    rows = page.js(
        f"""[...document.querySelectorAll('[id="{anchor}"] table[data-explorer="sides"] tr[data-name]')]
        .map(r => [r.dataset.name, r.cells[1].dataset.value, r.cells[1].textContent,
            r.cells[1].dataset.side])"""
    )
    return {key: (None if value == "null" else float(value), text, side) for key, value, text, side in rows}


def visible_probes(page: Page) -> dict[str, list[str]]:
    """The probes whose section, probe-table row and heatmap row are shown."""
    return page.js(
        r"""({
        sections: [...document.querySelectorAll('main section')].filter(s => /^probe-\d+$/.test(s.id)
            && s.offsetParent !== null).map(s => s.id),
        table: [...document.querySelectorAll('#probes table.probes tr[data-name]')]
            .filter(r => r.offsetParent !== null).map(r => r.dataset.name),
        heatmap: [...document.querySelectorAll('#heatmap tr[data-name]')]
            .filter(r => r.offsetParent !== null).map(r => r.dataset.name)})"""
    )


def in_view_below_panel(page: Page, anchor: str) -> bool:
    """The section's top is on screen and not under the sticky explorer panel."""
    return page.js(
        f"""(() => {{ const top = document.getElementById("{anchor}").getBoundingClientRect().top;
        const panel = document.querySelector('.explorer').getBoundingClientRect().bottom;
        return top >= panel - 1 && top < innerHeight / 2; }})()"""
    )


# --- the explorer -------------------------------------------------------------------------------------------


def test_the_toggle_shows_base_tuned_and_change(browser, diffed):
    report, path = diffed
    page = Page(browser, path)
    assert page.js("document.querySelectorAll('.explorer').length") == 1
    pressed = "document.querySelector('.explorer button[aria-pressed=\"true\"][data-side]').dataset.side"
    assert page.js(pressed) == "change"  # what the static page's component tables show
    notes = "[...document.querySelectorAll('.sides-note')].filter(n => n.offsetParent !== null).length"
    parts = page.js("document.querySelectorAll('[data-sides=\"change\"]').length")
    assert parts >= len(report.probes) * 2 + 1  # splits, component tables, the heatmap
    for side in ("base", "tuned", "change", "base"):
        page.click(f'.explorer button[data-side="{side}"]')
        assert page.js(pressed) == side
        for p, anchor in zip(report.probes, anchors(report)):
            expected, shown = expected_sides(p)[side], shown_sides(page, anchor)
            assert set(shown) == set(expected), anchor
            for key, (value, text) in expected.items():
                got_value, got_text, got_side = shown[key]
                assert got_side == side and got_value == value, (anchor, side, key, got_value, value)
                if text is not None:
                    assert got_text == text
        column = page.js(
            """[...document.querySelectorAll('#probes table.probes td[data-explorer="value"]')]
            .map(c => parseFloat(c.dataset.value))"""
        )
        assert column == [expected_sides(p)[side]["value"][0] for p in report.probes]
        header = page.js("document.querySelector('#probes table.probes tr').lastChild.textContent")
        assert header == f"tracked value: {side}"
        # components, heads, neurons are changes only: under base / tuned they say so, values unchanged
        assert page.js(notes) == (0 if side == "change" else parts)
        if side != "change":
            assert page.js("document.querySelector('.sides-note').textContent") == CHANGE_ONLY
        for p, anchor in zip(report.probes, anchors(report)):
            rows = page.js(
                f"""[...document.querySelectorAll('[id="{anchor}"] .effects tr[data-component]')]
                .map(r => [r.dataset.component, r.dataset.value])"""
            )
            effects = [e for key, found in drills(p).items() for e in found[:10]]
            assert rows == [[e.name, repr(e.direct)] for e in effects], anchor
    assert page.problems() == []


def test_failing_only_shows_exactly_the_failing_probes(browser, diffed):
    report, path = diffed
    page = Page(browser, path)
    every = anchors(report)
    failing = [a for p, a in zip(report.probes, every) if p.verdict.passed is False]
    assert 0 < len(failing) < len(every)
    assert visible_probes(page) == {"sections": every, "table": every, "heatmap": every}
    page.click('.explorer button[data-filter="failing"]')
    assert visible_probes(page) == {"sections": failing, "table": failing, "heatmap": failing}
    status = page.js("document.querySelector('.explorer .status').textContent")
    assert f"{len(failing)} failing" in status
    page.click('.explorer button[data-filter="all"]')
    assert visible_probes(page) == {"sections": every, "table": every, "heatmap": every}
    for anchor in failing + failing[:1]:  # next failing goes through them in turn, then starts again
        page.click('.explorer button[data-filter="next"]')
        assert in_view_below_panel(page, anchor), anchor
        assert page.js("document.querySelector('main section.selected').id") == anchor
    assert page.problems() == []


def test_clicking_a_heatmap_row_goes_to_its_probe(browser, diffed):
    report, path = diffed
    page = Page(browser, path)
    for anchor in reversed(anchors(report)):
        page.js("window.scrollTo(0, 0)")
        page.click(f'#heatmap tr[data-name="{anchor}"] td:nth-child(3)')  # a number cell, not the link
        assert in_view_below_panel(page, anchor), anchor
        assert page.js("document.querySelector('main section.selected').id") == anchor
    first = anchors(report)[1]
    page.js("window.scrollTo(0, 0)")
    page.click(f'#probes table.probes tr[data-name="{first}"] td:nth-child(2)')  # the probe table too
    assert in_view_below_panel(page, first)
    assert page.problems() == []


def test_a_hostile_probe_prompt_stays_text(browser, diffed):
    report, path = diffed
    text = path.read_text(encoding="utf-8")
    assert text.count("<script") == 2 and "\u202e" not in text
    page = Page(browser, path)
    assert page.js("document.scripts.length") == 2 and page.js("typeof window.pwned") == "undefined"
    assert page.js("document.images.length") == 0  # the prompt's <img> is text (figures are off)
    index = next(i for i, p in enumerate(report.probes) if p.probe.prompt == HOSTILE)
    p, anchor = report.probes[index], anchors(report)[index]
    prompt = page.js(f"""document.querySelector('[id="{anchor}"] table.kv td bdi').textContent""")
    assert prompt == show_token(HOSTILE)
    for side in ("base", "tuned"):
        page.click(f'.explorer button[data-side="{side}"]')
        assert shown_sides(page, anchor)["top1"][1] == expected_sides(p)[side]["top1"][1]
    labels = page.js(
        f"""[...document.querySelectorAll('[id="{anchor}"] table[data-explorer="sides"] tr[data-name] td')]
        .map(c => c.textContent)"""
    )
    assert isinstance(p.answer, TargetAnswer) and "<img src=x onerror=" in p.answer.text  # the decoded answer
    assert f"log p({show_token(p.answer.text)}) (nats)" in labels
    isolated = """[...document.querySelectorAll('table[data-explorer="sides"] td')].every(td =>
        td.childNodes.length === 1 && td.firstChild.tagName === 'BDI' && td.firstChild.dir === 'ltr')"""
    assert page.js(isolated)  # token text in a bidi-isolated left-to-right box
    page.click(f'#heatmap tr[data-name="{anchor}"] td:nth-child(2)')
    assert in_view_below_panel(page, anchor)
    label = page.js(
        f"""document.querySelector('#heatmap tr[data-name="{anchor}"] td.probe bdi').textContent"""
    )
    assert label.startswith(show_token(HOSTILE)[:20])
    assert page.js("typeof window.pwned") == "undefined" and page.problems() == []


def test_without_javascript_the_diff_page_is_the_static_report(browser, diffed):
    report, path = diffed
    page = Page(browser, path, javascript=False)
    assert page.js("document.querySelectorAll('.explorer, table[data-explorer], .sides-note').length") == 0
    every = anchors(report)
    assert visible_probes(page) == {"sections": every, "table": every, "heatmap": every}
    first = report.probes[0]
    rows = page.js(
        f"""[...document.querySelectorAll('[id="{every[0]}"] .effects[data-part="components"] ' +
        'tr[data-component]')]
        .map(r => [r.dataset.component, r.dataset.value, r.offsetParent !== null])"""
    )
    assert rows == [[e.name, repr(e.direct), True] for e in drills(first)["components"][:10]]


def test_a_changed_diff_script_is_refused(browser, diffed, tmp_path):
    _, path = diffed
    text = path.read_text(encoding="utf-8")
    assert text.count(SCRIPT) == 1 and script_hash(SCRIPT) in text
    assert re.search(r"script-src '[^']+';", text)  # exactly one script allowed, by its hash
    changed = tmp_path / "changed.html"
    changed.write_text(text.replace(SCRIPT, SCRIPT + " "), encoding="utf-8")
    page = Page(browser, changed)
    assert page.js("document.querySelectorAll('.explorer').length") == 0
    assert any("Content Security Policy" in p for p in page.problems())

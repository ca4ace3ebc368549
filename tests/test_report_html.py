"""The self-contained HTML report: structure, numbers against the model's own forward pass, escaping of
untrusted tokens, embedded figures, and a real headless Chromium loading the file."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

import tokenlens
import tokenlens.causal as causal
from tokenlens.attribution.direct import attribute
from tokenlens.attribution.lens import logit_lens
from tokenlens.report.explorer import SCRIPT, script_hash
from tokenlens.report.html import render_html

PROMPT = "The capital of France is"
HOSTILE = '<script>alert("x")</script> & "quotes" \u202e RTL \u200b zero-width $x$'
SLUGS = ("waterfall", "heads", "sources-L2.H0", "lens", "ablation", "extra")
HOMES = {
    "waterfall": "components",
    "heads": "heads",
    "sources-L2.H0": "sources-L2.H0",
    "lens": "lens",
    "ablation": "ablation",
    "extra": "figures",
}


# --- a small DOM built with html.parser ------------------------------------------------------------------

VOID = {"meta", "img", "br", "hr", "link", "input", "source", "col", "area", "base", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent: Node | None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self):
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.walk()

    def find(self, tag: str | None = None, **attrs) -> list[Node]:
        return [
            n
            for n in self.walk()
            if (tag is None or n.tag == tag)
            and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def by_id(self, anchor: str) -> Node:
        (node,) = [n for n in self.walk() if n.attrs.get("id") == anchor]
        return node

    def ancestors(self) -> list[str]:
        out, node = [], self.parent
        while node is not None:
            out += [node.attrs["id"]] if "id" in node.attrs else []
            node = node.parent
        return out


class Tree(HTMLParser):
    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#root", {}, None)
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def dom(text: str) -> Node:
    return Tree(text).root


def only_the_explorer(root: Node) -> None:
    """The page's scripts are the explorer's JSON data (parsed, never run) and the explorer itself, the
    only script the Content-Security-Policy allows (by its hash)."""
    data, script = root.find("script")
    assert data.attrs == {"type": "application/json", "id": "tokenlens-data", "data-tokenlens": None}
    assert "<" not in data.text() and json.loads(data.text())["views"]
    assert script.attrs == {} and script.text() == SCRIPT
    (csp,) = root.find("meta", http_equiv="Content-Security-Policy")
    policy = dict(d.split(" ", 1) for d in csp.attrs["content"].split("; "))
    assert policy["script-src"] == script_hash(SCRIPT) and policy["default-src"] == "'none'"


def values(node: Node) -> dict[str, float]:
    """``{data-name: data-value}`` of the number cells in the rows (or cells) of ``node``."""
    out = {}
    for row in node.find():
        name = row.attrs.get("data-name")
        if name is None:
            continue
        if "data-value" in row.attrs:
            out[name] = float(row.attrs["data-value"])
        else:
            cells = [c for c in row.find("td") if "data-value" in c.attrs]
            if cells:
                out[name] = float(cells[0].attrs["data-value"])
    return out


def png(seed: float = 1.0) -> bytes:
    figure = Figure(figsize=(2, 1.5), dpi=50)
    figure.add_subplot().plot([0, 1], [0, seed])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# --- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(tiny_loaded):
    return tiny_loaded("qwen3-tied-gqa")


@pytest.fixture(scope="module")
def run(loaded):
    """Everything a full report shows, for the ordinary prompt."""
    result = attribute(
        loaded, PROMPT, target=" Paris", vs=" London", heads=True, neurons=3, sources=["L1", "L2.H0"]
    )
    lens = logit_lens(loaded, PROMPT, target_id=result.target.id, k=3)
    sections = [
        ("ablation", causal.ablation(loaded, PROMPT, "L1.H0,L2.mlp")),
        ("patching", causal.patching(loaded, PROMPT, "The capital of Italy is")),
        ("estimates", causal.estimate_check(loaded, PROMPT, top_k=3)),
        ("rope", causal.rope_ablation(loaded, PROMPT)),
        ("norms", causal.norm_ablation(loaded, PROMPT, layers=False)),
    ]
    images = {slug: png(k + 1.0) for k, slug in enumerate(SLUGS)}
    settings = {"command": "tokenlens inspect --prompt '<b>bold</b>' \u202e", "model": "other-name"}
    text = render_html(result, lens=lens, sections=sections, images=images, settings=settings)
    return dict(result=result, lens=lens, sections=dict(sections), images=images, text=text, root=dom(text))


@pytest.fixture(scope="module")
def model_logits(loaded):
    """The model's own last-position logits from a plain HF forward pass (independent of tokenlens)."""
    ids = loaded.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return ids[0].tolist(), loaded.model(ids).logits[0, -1].double()


@pytest.fixture(scope="module")
def hostile(loaded):
    result = attribute(loaded, HOSTILE, heads=True, sources=["L2.H1"])
    sections = [("ablation", causal.ablation(loaded, HOSTILE, "L0.H0"))]
    images = {"waterfall": png(), "heads": png(2.0)}
    return result, render_html(result, sections=sections, images=images, settings={"command": HOSTILE})


# --- structure ----------------------------------------------------------------------------------------------


def test_document_is_self_contained(run):
    text, root = run["text"], run["root"]
    assert text.startswith("<!DOCTYPE html>")
    assert not root.find("link") and not root.find("iframe")
    only_the_explorer(root)
    assert "http://" not in text and "https://" not in text and "url(" not in text and "@import" not in text
    assert len(root.find("style")) == 1
    (csp,) = root.find("meta", http_equiv="Content-Security-Policy")
    assert "default-src 'none'" in csp.attrs["content"] and "img-src data:" in csp.attrs["content"]
    sources = [n.attrs["src"] for n in root.walk() if "src" in n.attrs]
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    ids = [n.attrs["id"] for n in root.walk() if "id" in n.attrs]
    assert len(ids) == len(set(ids))
    links = [n.attrs["href"] for n in root.find("a")]
    assert links and all(h.startswith("#") and h[1:] in ids for h in links)


def test_sections_have_stable_ids_in_page_order(run):
    sections = [n.attrs["id"] for n in run["root"].find("section")]
    assert sections == [
        "prediction", "top", "components", "heads", "neurons", "sources", "lens",
        "ablation", "patching", "estimates", "rope", "norms", "figures", "settings", "how-to-read",
    ]  # fmt: skip
    root = run["root"]
    assert {"check", "sources-L1", "sources-L2.H0"} <= {n.attrs.get("id") for n in root.walk()}
    assert root.find("title")[0].text() == "tokenlens: ' Paris' vs ' London' — tiny-qwen3-tied-gqa"
    how = root.by_id("how-to-read").text()
    assert all(word in how for word in ("sum exactly", "MEASURED", "ESTIMATES", "logit units", "indirect"))


# --- numbers ------------------------------------------------------------------------------------------------


def test_prediction_matches_the_models_own_forward_pass(run, model_logits, loaded):
    ids, logits = model_logits
    tokenizer, result = loaded.tokenizer, run["result"]
    target, contrast = tokenizer.encode(" Paris")[0], tokenizer.encode(" London")[0]
    logprobs = logits.log_softmax(-1)
    shown = values(run["root"].by_id("prediction"))
    assert shown["logit"] == pytest.approx(float(logits[target]), abs=1e-5)
    assert shown["contrast_logit"] == pytest.approx(float(logits[contrast]), abs=1e-5)
    assert shown["explained"] == pytest.approx(float(logits[target] - logits[contrast]), abs=1e-5)
    assert shown["logprob"] == pytest.approx(float(logprobs[target]), abs=1e-4)
    assert shown["prob"] == pytest.approx(float(logprobs[target].exp()), rel=1e-4)
    (row,) = run["root"].by_id("prediction").find("td", **{"class": "tokens"})
    spans = row.find("span")
    assert [s.text() for s in spans] == [repr(tokenizer.decode([i])) for i in ids]
    assert [s.attrs["class"] for s in spans].index("tok here") == result.position
    assert result.position == len(ids) - 1


def test_components_sum_to_the_model_logit_with_signed_bars(run, model_logits, loaded):
    _, logits = model_logits
    d = run["result"].decomposition
    section = run["root"].by_id("components")
    shown = values(section)
    assert list(shown) == list(d.names)
    assert shown == d.as_dict()
    target, contrast = loaded.tokenizer.encode(" Paris")[0], loaded.tokenizer.encode(" London")[0]
    assert math.fsum(shown.values()) == pytest.approx(float(logits[target] - logits[contrast]), abs=1e-5)
    check = section.by_id("check").text()
    assert "✓ exact" in check and f"{d.error:.1e}" in check and f"{d.tolerance:.1e}" in check
    rows = [r for r in section.find("tr") if "data-component" in r.attrs]
    assert {r.attrs["data-component"]: float(r.attrs["data-value"]) for r in rows} == d.as_dict()
    peak = max(abs(v) for v in shown.values())
    for row in section.find("tr"):
        if "data-name" not in row.attrs:
            continue
        value = shown[row.attrs["data-name"]]
        (bar,) = row.find("span")
        width = float(re.fullmatch(r"width:([\d.]+)%", bar.attrs["style"]).group(1))
        assert width == pytest.approx(50 * abs(value) / peak, abs=0.06)
        assert bar.attrs["class"] == ("pos" if value > 0 else "neg")
        assert row.find("td")[1].attrs["class"] == "num " + ("pos" if value > 0 else "neg")


def test_heads_grid_rows_add_up_to_their_layer(run):
    result, root = run["result"], run["root"]
    components = values(root.by_id("components"))
    cells = {n.attrs["data-name"]: n for n in root.by_id("heads").find("td") if "data-name" in n.attrs}
    heads = result.heads.contributions
    tagged = {
        n.attrs["data-component"]: float(n.attrs["data-value"])
        for n in cells.values()
        if "data-component" in n.attrs
    }
    assert tagged == result.heads.as_dict()
    for i in range(heads.shape[0]):
        row = [float(cells[f"L{i}.H{h}"].attrs["data-value"]) for h in range(heads.shape[1])]
        assert row == heads[i].tolist()
        assert math.fsum(row) == pytest.approx(components[f"L{i}.attn"], abs=1e-5)
    peak = float(heads.abs().max())
    for name, cell in cells.items():
        value = float(cell.attrs["data-value"])
        if name.endswith(".heads") or value == 0:
            continue
        rgb, alpha = re.fullmatch(r"background-color:rgba\(([\d,]+),([\d.]+)\)", cell.attrs["style"]).groups()
        assert rgb == ("46,158,79" if value > 0 else "214,69,65")
        assert float(alpha) == pytest.approx(0.7 * abs(value) / peak, abs=0.006)


def test_sources_add_up_to_their_head_and_layer(run):
    result, root = run["result"], run["root"]
    heads = values(root.by_id("heads"))
    split = values(root.by_id("sources-L2.H0"))
    assert len(split) == result.position + 2  # every source up to the position, and the value bias
    assert math.fsum(split.values()) == pytest.approx(heads["L2.H0"], abs=1e-5)
    layer = values(root.by_id("sources-L1"))
    assert math.fsum(layer.values()) == pytest.approx(heads["L1.heads"], abs=1e-5)
    shaded = root.by_id("sources-L2.H0").find("p", **{"class": "tokens"})[0].find("span")
    assert [s.text() for s in shaded] == [repr(t) for t in result.tokens]
    assert "S0: " in shaded[0].attrs["title"]


def test_top_alternatives_match_the_softmax(run, model_logits):
    _, logits = model_logits
    probs = logits.softmax(-1)
    rows = [r for r in run["root"].by_id("top").find("tr") if "data-name" in r.attrs]
    assert len(rows) == len(run["result"].top)
    shown = []
    for row in rows:
        token_id = int(row.attrs["data-name"])
        logit, prob = (float(c.attrs["data-value"]) for c in row.find("td") if "data-value" in c.attrs)
        assert logit == pytest.approx(float(logits[token_id]), abs=1e-5)
        assert prob == pytest.approx(float(probs[token_id]), rel=1e-4)
        shown.append(logit)
    assert shown == sorted(shown, reverse=True)


def test_logit_lens_last_depth_is_the_model_output(run, model_logits):
    _, logits = model_logits
    lens, section = run["lens"], run["root"].by_id("lens")
    (last,) = [r for r in section.find("tr") if r.attrs.get("data-name") == lens.depths[-1]]
    logit, prob, rank = (float(c.attrs["data-value"]) for c in last.find("td") if "data-value" in c.attrs)
    target = run["result"].target.id
    assert logit == pytest.approx(float(logits[target]), abs=1e-5)
    assert prob == pytest.approx(float(logits.softmax(-1)[target]), rel=1e-4)
    assert rank == int(lens.target_rank[-1, -1]) + 1  # shown counting from 1 (rank 1 = top-1)
    assert len(section.find("table")) == 2  # the per-depth table and the depth × position grid


def test_causal_sections_are_labelled_measured_or_estimated(run):
    root, sections = run["root"], run["sections"]
    for key in ("ablation", "patching", "rope", "norms"):
        text = root.by_id(key).text()
        assert "MEASURED" in text and "(measured)" in text and "ESTIMATE" not in text
    ablation = values(root.by_id("ablation"))
    each = sections["ablation"].each
    assert {e.name: e.value for e in each} == {k: v for k, v in ablation.items() if k != "together"}
    deltas = [float(c.attrs["data-value"]) for c in root.by_id("ablation").find("td", **{"class": "num pos"})]
    deltas += [
        float(c.attrs["data-value"]) for c in root.by_id("ablation").find("td", **{"class": "num neg"})
    ]
    assert sorted(deltas) == sorted([e.delta for e in each] + [sections["ablation"].together.delta])
    patched = values(root.by_id("patching"))
    assert patched == {e.name: e.value for e in sections["patching"].effects}
    rope = values(root.by_id("rope"))
    assert set(rope) == {e.name for e in sections["rope"].each} | {"together"}
    norms = values(root.by_id("norms"))
    assert set(norms) == set(sections["norms"].ablation.sites)
    estimates = root.by_id("estimates")
    assert "ESTIMATE" in estimates.text() and "MEASURED" in estimates.text()
    rows = [r for r in estimates.find("table")[0].find("tr") if "data-name" in r.attrs]
    for row, checked in zip(rows, sections["estimates"].rows, strict=True):
        numbers = [float(c.attrs["data-value"]) for c in row.find("td") if "data-value" in c.attrs]
        assert numbers == [checked.estimate, checked.exact]
    assert len(estimates.find("details")[0].find("tr")) == len(sections["estimates"].estimates.names) + 1


def test_figures_are_embedded_in_their_sections(run):
    root = run["root"]
    for slug, png_bytes in run["images"].items():
        figure = root.by_id(f"figure-{slug}")
        (img,) = figure.find("img")
        assert base64.b64decode(img.attrs["src"].split(",", 1)[1]) == png_bytes
        assert len(img.attrs["alt"]) > 10
        assert figure.ancestors()[0] == HOMES[slug]


def test_bad_inputs_raise(run):
    result = run["result"]
    with pytest.raises(ValueError, match="not PNG"):
        render_html(result, images={"waterfall": b"GIF89a"})
    with pytest.raises(ValueError, match="unknown report section 'bogus'"):
        render_html(result, sections=[("bogus", None)])
    with pytest.raises(ValueError, match="needs a Patching"):
        render_html(result, sections=[("patching", run["sections"]["ablation"])])
    twice = render_html(result, sections=[("ablation", run["sections"]["ablation"])] * 2)
    anchors = [n.attrs["id"] for n in dom(twice).find("section")]
    assert anchors[anchors.index("ablation") + 1] == "ablation-2"


def test_settings_and_an_attribution_without_extras(run, loaded):
    settings = run["root"].by_id("settings")
    rows = {r.attrs["data-name"]: r.find("td")[0].text() for r in settings.find("tr")}
    assert rows["tokenlens version"] == tokenlens.__version__
    assert rows["model"] == "tiny-qwen3-tied-gqa" and rows["model (requested)"] == "other-name"
    assert (rows["dtype"], rows["device"]) == ("float32", "cpu")
    assert rows["command"] == "tokenlens inspect --prompt '<b>bold</b>' \\u202e"
    assert "<b>bold" not in run["text"] and "\u202e" not in run["text"]
    plain = attribute(loaded, PROMPT)
    root = dom(render_html(plain))
    assert [n.attrs["id"] for n in root.find("section")] == [
        "prediction", "top", "components", "settings", "how-to-read",
    ]  # fmt: skip
    assert values(root.by_id("prediction"))["explained"] == plain.target.logit


def test_experts_of_a_moe_model_add_up_to_their_mlp(tiny_loaded):
    result = attribute(tiny_loaded("qwen3-moe"), PROMPT, experts=True)
    root = dom(render_html(result))
    components, experts = values(root.by_id("components")), values(root.by_id("experts"))
    assert len(experts) == result.experts.expert_ids.numel()
    tagged = {
        r.attrs["data-component"]: float(r.attrs["data-value"]) for r in root.by_id("experts").find("tr")[1:]
    }
    assert tagged == experts
    for layer in result.experts.layers:
        parts = [v for name, v in experts.items() if name.startswith(f"L{layer}.E")]
        assert math.fsum(parts) == pytest.approx(components[f"L{layer}.mlp"], abs=1e-5)


# --- untrusted text -----------------------------------------------------------------------------------------


def test_hostile_prompt_is_only_ever_text(hostile, loaded):
    result, text = hostile
    assert text.lower().count("<script") == 2 and "\u202e" not in text and "\u200b" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    root = dom(text)
    only_the_explorer(root)
    prompt = root.by_id("prediction").find("bdi")[0]
    assert prompt.text() == repr(HOSTILE) and "\\u202e" in prompt.text() and "\\u200b" in prompt.text()
    ids = loaded.tokenizer(HOSTILE)["input_ids"]
    shown = [s.text() for s in root.by_id("sources-L2.H1").find("p", **{"class": "tokens"})[0].find("span")]
    assert shown == [repr(loaded.tokenizer.decode([i])) for i in ids]
    assert all(b.attrs.get("dir") == "ltr" for b in root.find("bdi"))


# --- a real browser -----------------------------------------------------------------------------------------


DEBIAN_CHROMIUM = Path("/usr/bin/chromium")


def _chromium() -> str:
    """Debian's Chromium; skipped where it is missing, except in CI (``CI=true``), where that fails."""
    found = shutil.which("chromium") or (str(DEBIAN_CHROMIUM) if DEBIAN_CHROMIUM.exists() else None)
    if found is None:
        reason = "chromium not installed: apt-get install chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def _browse(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}",
    ]  # fmt: skip
    done = subprocess.run([chromium, *flags, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_chromium_renders_the_report(hostile, tmp_path):
    chromium = _chromium()
    _, text = hostile
    page = tmp_path / "report.html"
    page.write_text(text, encoding="utf-8")
    dumped = _browse(chromium, tmp_path / "profile-dom", "--dump-dom", page.as_uri()).stdout
    assert dumped.count("<script") == 2
    root = dom(dumped)
    ids = {n.attrs.get("id") for n in root.walk()}
    assert {"prediction", "top", "components", "check", "heads", "sources", "ablation", "settings"} <= ids
    assert "how-to-read" in ids and "figure-waterfall" in ids
    assert root.by_id("prediction").find("bdi")[0].text() == repr(HOSTILE)
    assert '<script>alert("x")</script>' in root.by_id("prediction").text()
    assert "✓ exact" in root.by_id("check").text()
    assert len(root.find("script")) == 2 and len(root.find("img")) == 2
    assert len(root.find("aside", **{"class": "explorer"})) == 1  # the explorer ran
    shot = tmp_path / "shot.png"
    _browse(
        chromium, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri()
    )
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_a_missing_chromium_skips_here_and_fails_in_ci(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(sys.modules[__name__], "DEBIAN_CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        _chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium not installed"):
        _chromium()


def test_notebook_fragment_scopes_its_styles(loaded):
    from tokenlens.attribution.direct import attribute

    result = attribute(loaded, "The capital of France is", heads=True)
    fragment = result._repr_html_()
    assert fragment.startswith('<div class="tokenlens-report">') and "<body" not in fragment
    css = fragment[fragment.index("<style>") + 7 : fragment.index("</style>")]
    rules = [rule.split("{")[0] for rule in css.split("}") if rule.strip()]
    assert rules and all(s.strip().startswith(".tokenlens-report") for r in rules for s in r.split(","))
    assert 'id="components"' in fragment and 'id="heads"' in fragment

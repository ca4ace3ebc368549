"""The report's offline explorer: the data it reads (JSON) and one small inline script that reads it.

The single-prediction HTML report (:mod:`tokenlens.report.html`) ends with two elements:

- ``<script type="application/json" id="tokenlens-data">``: what the explorer needs, as JSON
  (:func:`explorer_data`): the prompt's tokens as shown (their literals), the explained position and target,
  each component's value and its finer parts (heads, top neurons, routed experts), the source splits that
  were computed, and the logit lens's top tokens per depth and position. It is data, never run: the page's
  Content-Security-Policy allows no other script, and every ``<``, ``>`` and ``&`` in it is a JSON escape
  (``\\u003c``, …), so no token can close the element or open a comment.
- :data:`SCRIPT`: vanilla JavaScript (no library, no network) that reads that JSON with ``JSON.parse`` and
  adds an explorer panel above the report. Clicking a component row that has finer parts (``L3.attn``,
  ``L3.mlp`` with ``--neurons`` or ``--experts``) shows or hides them as rows under it, each with its own
  ``data-component`` and ``data-value``; clicking a head (such a row or a cell of the heads grid) colours the
  panel's copy of the prompt by that head's source split (green up, red down, with a legend); clicking an
  attention layer's row does the same with the layer's split when there is one; hovering (or focusing) a
  logit-lens row or grid cell shows that depth's top tokens at that position. Token text is only ever set
  with ``textContent``. The page's CSP names the script by its SHA-256 hash (:func:`script_hash`).

A whole answer's report (:mod:`tokenlens.report.sequence_html`, :func:`sequence_explorer_data`) has one view
per step, each answer token at its position: the panel gets a step chooser (also: click a row of the steps
table), and a *Step explorer* table shows the chosen step's split with the same expanding rows.

Without JavaScript (or where a notebook strips scripts) the page is the static report: nothing is hidden
in it, the explorer only adds. In a notebook the fragment may appear several times on one page, so the
script looks for its data and its sections only inside its own ``.tokenlens-report`` container.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from tokenlens.attribution.result import LogitAttribution, LogitLens
from tokenlens.report.kit.text import QUANTITY_WORDS, finite_json, show_token
from tokenlens.report.layout import split_rows

DATA_ID = "tokenlens-data"
"""The ``id`` of the JSON data element."""

CSS = """
.explorer{position:sticky;top:0;z-index:3;background:#fff;border:1px solid #bbb;border-radius:4px;
padding:.2em .8em;margin:.5em 0;max-height:45vh;overflow:auto;box-shadow:0 2px 6px rgba(0,0,0,.12)}
.explorer p{margin:.3em 0}.explorer .hint{color:#666;font-size:.9em}
.explorer .swatch{display:inline-block;width:2.2em;height:.9em;vertical-align:middle;margin:0 .3em}
tr.expandable td:first-child::before{content:"\\25B8\\00A0";color:#666}
tr.expandable[aria-expanded=true] td:first-child::before{content:"\\25BE\\00A0"}
tr.expandable,tr.sub,td.pickable{cursor:pointer}tr.sub td:first-child{padding-left:1.8em}
tr.sub{background:#f6f8fa}tr.selected,td.selected{outline:2px solid #1f5fa8;outline-offset:-2px}
tr.expandable:hover,tr.sub:hover{background:#eef3fb}
"""
"""The explorer's style rules (added after the report's own)."""

PRELUDE = r""""use strict";
var me = document.currentScript;
var root = (me && me.closest && me.closest(".tokenlens-report")) || document;
var holder = root.querySelector('script[type="application/json"][data-tokenlens]');
var main = root.querySelector("main");
if (!holder || !main) { return; }
var data = JSON.parse(holder.textContent);
function el(tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) { e.className = cls; }
  if (text !== undefined) { e.textContent = text; }
  return e;
}
function section(id) { return root.querySelector('[id="' + id + '"]'); }
function activate(node, fn) {
  node.tabIndex = 0;
  node.addEventListener("click", fn);
  node.addEventListener("keydown", function (e) {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); fn(e); }
  });
}
"""
"""The start of every explorer script, inside its ``(function () {`` wrapper: find the report it belongs to
(``root``: its own ``.tokenlens-report`` element, so several reports in one notebook stay apart), read the
JSON data, and the helpers ``el`` (an element with text set by ``textContent``, never HTML), ``section`` and
``activate`` (click or Enter/Space)."""

SCRIPT = (
    "(function () {\n"
    + PRELUDE
    + r"""var views = data.views, view = views[0];
function signed(v, digits) {
  return typeof v !== "number" ? "\u2014" : (v >= 0 ? "+" : "") + v.toFixed(digits);  // null: not finite
}
function prob(p) {
  if (typeof p !== "number") { return "\u2014"; }
  if (!(p > 0 && p < 1e-3)) { return p.toFixed(4); }
  return p.toExponential(2).replace(/e([+-])(\d)$/, function (m, sign, digit) {
    return "e" + sign + "0" + digit;  // 6.60e-06, as the Python reports write it
  });
}
function shade(v, peak) {
  if (!(peak > 0) || !v) { return ""; }
  var a = (0.7 * Math.min(1, Math.abs(v) / peak)).toFixed(2);
  return v > 0 ? "rgba(46,158,79," + a + ")" : "rgba(214,69,65," + a + ")";
}
function token(text, cls) {
  var s = el("span", cls), b = el("bdi", "", text);
  b.dir = "ltr";
  s.appendChild(b);
  return s;
}
function peakOf(values) {
  var p = 0;
  values.forEach(function (v) { p = Math.max(p, Math.abs(v)); });
  return p;
}

var panel = el("aside", "explorer");
panel.setAttribute("aria-label", "explorer");
panel.appendChild(el("p", "hint", "Explorer: click a layer's row to show its heads (or neurons, experts); " +
  "click a head to colour the prompt by what it read." +
  (data.lens.length ? " Hover the logit lens for its top tokens." : "") +
  (views.length > 1 ? " Choose the step (a position and its target) here or by clicking a step's row." :
    "")));
var chooser = null;
if (views.length > 1) {
  chooser = el("select", "step");
  chooser.setAttribute("aria-label", "step");
  views.forEach(function (v, k) { chooser.appendChild(el("option", "", v.label)); });
  var back = el("button", "", "\u25C0"), next = el("button", "", "\u25B6"), nav = el("p", "steps");
  back.type = next.type = "button";
  back.setAttribute("aria-label", "previous step");
  next.setAttribute("aria-label", "next step");
  back.addEventListener("click", function () { show(Math.max(0, chooser.selectedIndex - 1)); });
  next.addEventListener("click", function () {
    show(Math.min(views.length - 1, chooser.selectedIndex + 1));
  });
  chooser.addEventListener("change", function () { show(chooser.selectedIndex); });
  nav.appendChild(el("span", "", "Step "));
  nav.appendChild(back);
  nav.appendChild(chooser);
  nav.appendChild(next);
  panel.appendChild(nav);
}
var heading = el("p", "view");
panel.appendChild(heading);
var line = el("p", "tokens");
var spans = data.tokens.map(function (t, j) {
  var s = token(t, "tok");
  s.setAttribute("data-source", String(j));
  line.appendChild(s);
  line.appendChild(document.createTextNode(" "));
  return s;
});
panel.appendChild(line);
var legend = el("p", "legend");
var status = el("p", "status");
status.setAttribute("aria-live", "polite");
panel.appendChild(legend);
panel.appendChild(status);
main.parentNode.insertBefore(panel, main);

var selected = [];
function mark(nodes) {
  selected.forEach(function (n) { n.classList.remove("selected"); });
  selected = nodes;
  nodes.forEach(function (n) { n.classList.add("selected"); });
}
function clear() {
  legend.textContent = "";
  spans.forEach(function (s, j) {
    s.style.backgroundColor = "";
    s.title = "S" + j;
  });
}
function select(name, nodes) {
  mark(nodes);
  clear();
  var key = /\.attn$/.test(name) ? name.slice(0, -5) : name;
  var split = view.sources[key];
  if (!split) {
    legend.textContent = name + ": no source split in this report (add --sources " + key +
      " to the command).";
    return;
  }
  var peak = peakOf(split.values);
  split.values.forEach(function (v, j) {
    spans[j].style.backgroundColor = shade(v, peak);
    spans[j].title = "S" + j + ": " + signed(v, 4);
  });
  legend.appendChild(el("strong", "", "Sources through " + key + ": "));
  legend.appendChild(el("span", "", "each token shaded by what it contributed (green up, red down):"));
  var up = el("span", "swatch"), down = el("span", "swatch");
  up.style.backgroundColor = shade(1, 1);
  down.style.backgroundColor = shade(-1, 1);
  legend.appendChild(up);
  legend.appendChild(el("span", "", signed(peak, 4)));
  legend.appendChild(down);
  legend.appendChild(el("span", "", signed(-peak, 4) + "; largest: "));
  var order = split.values.map(function (v, j) { return j; });
  order.sort(function (a, b) { return Math.abs(split.values[b]) - Math.abs(split.values[a]); });
  order.slice(0, 3).forEach(function (j) {
    legend.appendChild(token(data.tokens[j], "tok"));
    legend.appendChild(el("span", "", signed(split.values[j], 4) + " "));
  });
  legend.appendChild(el("span", "", "; value bias " + signed(split.bias, 4) + "."));
}

function cells(tr, v, note, peak) {
  var cell = el("td", "num" + (v > 0 ? " pos" : v < 0 ? " neg" : ""), signed(v, 4));
  cell.setAttribute("data-value", String(v));
  tr.appendChild(cell);
  var pct = 100 * v / view.explained;
  var share = Math.abs(view.explained) > 1e-9 ? (pct >= 0 ? "+" : "") + pct.toFixed(0) + "%" : "";
  tr.appendChild(el("td", "num", share + (note ? " \u00b7 " + note : "")));
  var bar = el("td", "bar"), span = el("span", v > 0 ? "pos" : "neg");
  span.style.width = (peak > 0 ? 50 * Math.abs(v) / peak : 0).toFixed(1) + "%";
  bar.appendChild(span);
  tr.appendChild(bar);
}
function subRow(part, parent, peak) {
  var tr = el("tr", "sub");
  tr.setAttribute("data-component", part[0]);
  tr.setAttribute("data-value", String(part[1]));
  tr.setAttribute("data-parent", parent);
  tr.appendChild(el("td", "", part[0]));
  cells(tr, part[1], part.length > 2 ? part[2] : "", peak);
  activate(tr, function (e) { e.stopPropagation(); select(part[0], [tr]); });
  return tr;
}
function hookRow(tr, peak) {
  var name = tr.getAttribute("data-component"), parts = view.children[name], rows = null;
  if (parts) {
    tr.classList.add("expandable");
    tr.setAttribute("aria-expanded", "false");
  }
  if (!parts && !(/\.attn$/.test(name) && view.sources[name.slice(0, -5)])) { return; }
  activate(tr, function () {
    if (parts) {
      var open = tr.getAttribute("aria-expanded") !== "true";
      if (rows === null) {
        rows = parts.map(function (p) { return subRow(p, name, peak); });
        rows.slice().reverse().forEach(function (r) { tr.parentNode.insertBefore(r, tr.nextSibling); });
      }
      rows.forEach(function (r) { r.hidden = !open; });
      tr.setAttribute("aria-expanded", open ? "true" : "false");
    }
    select(name, [tr]);
  });
}

var table = null;
function show(k) {
  view = views[k];
  if (chooser) { chooser.selectedIndex = k; }
  heading.textContent = "Position " + view.position + ", target " + view.target +
    (view.contrast === null ? "" : " vs " + view.contrast) + ": " + view.what + " " +
    signed(view.explained, 4);
  spans.forEach(function (s, j) {
    s.className = j === view.source_end - 1 ? "tok here" : j < view.source_end ? "tok" : "tok after";
  });
  mark([]);
  clear();
  var peak = peakOf(view.components.map(function (c) { return c[1]; }));
  if (table) {
    table.textContent = "";
    var head = el("tr");
    ["component", "value", "share", "\u2212 | +"].forEach(function (h) {
      head.appendChild(el("th", "", h));
    });
    table.appendChild(head);
    view.components.forEach(function (c) {
      var tr = el("tr");
      tr.setAttribute("data-component", c[0]);
      tr.setAttribute("data-value", String(c[1]));
      tr.appendChild(el("td", "", c[0]));
      cells(tr, c[1], "", peak);
      table.appendChild(tr);
      hookRow(tr, peak);
    });
  }
  return peak;
}

var components = section("components");
if (views.length > 1 || !components) {
  var built = el("section", "explorer-step");
  built.appendChild(el("h2", "", "Step explorer"));
  built.appendChild(el("p", "", "The chosen step's split over the components (" + view.what +
    "); click a row for its finer parts."));
  var box = el("div", "scroll");
  table = el("table");
  table.setAttribute("data-explorer", "components");
  box.appendChild(table);
  built.appendChild(box);
  main.insertBefore(built, section("steps") || null);
}
var firstPeak = show(0);
if (!table && components) {
  components.querySelectorAll("tr[data-component]").forEach(function (tr) { hookRow(tr, firstPeak); });
}
var heads = section("heads");
if (heads) {
  heads.querySelectorAll("td[data-component]").forEach(function (td) {
    td.classList.add("pickable");
    activate(td, function () { select(td.getAttribute("data-component"), [td]); });
  });
}
var steps = section("steps");
if (steps && views.length > 1) {
  steps.querySelectorAll("tr[data-name]").forEach(function (tr, k) {
    if (k < views.length) {
      tr.classList.add("pickable");
      activate(tr, function () { show(k); });
    }
  });
}

function showLens(lens, d, c, node) {
  var cell = lens.cells[d][c], position = lens.positions[c];
  status.textContent = "";
  status.appendChild(el("strong", "", "Logit lens " + lens.depths[d] + " at position " + position + " "));
  status.appendChild(token(data.tokens[data.offset + position], "tok"));
  status.appendChild(el("span", "", ": "));
  cell.top.forEach(function (t) {
    status.appendChild(token(t[0], "tok"));
    status.appendChild(el("span", "", " " + prob(t[1]) + " "));
  });
  status.appendChild(el("span", "", "; target " + lens.target + " p " + prob(cell.p) +
    ", rank " + (cell.rank + 1) + " (1 = top-1)"));
  mark([node]);
}
data.lens.forEach(function (lens) {
  var sec = section(lens.anchor);
  if (!sec) { return; }
  sec.querySelectorAll("tr").forEach(function (tr) {
    var tds = tr.querySelectorAll("td");
    if (!tds.length) { return; }
    var d = lens.depths.indexOf(tds[0].textContent);
    if (d < 0) { return; }
    var hook = function (node, c) {
      node.tabIndex = 0;
      node.setAttribute("data-lens", lens.depths[d] + "@" + lens.positions[c]);
      var reveal = function () { showLens(lens, d, c, node); };
      node.addEventListener("mouseenter", reveal);
      node.addEventListener("focus", reveal);
    };
    if (tr.hasAttribute("data-name")) {
      hook(tr, lens.positions.length - 1);
    } else if (tds.length === lens.positions.length + 1) {
      for (var c = 0; c < lens.positions.length; c++) { hook(tds[c + 1], c); }
    }
  });
});
})();
"""
)
"""The explorer: one self-contained script (no library, no network), run after the report's content."""


def script_hash(script: str) -> str:
    """The CSP source of an inline script: ``'sha256-…'`` of its exact UTF-8 text (what a browser hashes)."""
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def json_for_script(data: Any) -> str:
    """``data`` as JSON safe inside a ``<script>`` element: ASCII only, no NaN (``null``), and ``<``, ``>``,
    ``&`` as ``\\u003c``-style escapes, so no string in it can end the element (``</script>``), start an
    HTML comment or be read as a character reference. ``JSON.parse`` gives the same values back."""
    text = json.dumps(finite_json(data), ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _children(r: LogitAttribution) -> dict[str, list[list[Any]]]:
    """Each component's finer parts as ``[name, value]`` (neurons and experts with a third, a label)."""
    out: dict[str, list[list[Any]]] = {}
    if r.heads is not None:
        for i, row in enumerate(r.heads.contributions.tolist()):
            out[f"L{i}.attn"] = [[f"L{i}.H{h}", v] for h, v in enumerate(row)]
    if r.neurons is not None:
        for name, parent, v, act in split_rows(r, "neurons"):
            out.setdefault(parent, []).append([name, v, f"act {act:+.3f}"])
    if r.experts is not None:
        for name, parent, v, weight in split_rows(r, "experts"):
            out.setdefault(parent, []).append([name, v, f"router {weight:.3f}"])
    return out


def _lens(anchor: str, lens: LogitLens) -> dict[str, Any]:
    positions = lens.positions.tolist()
    return {
        "anchor": anchor,
        "target": show_token(lens.target),
        "depths": list(lens.depths),
        "positions": positions,
        "cells": [
            [
                {
                    "top": [
                        [show_token(t), p]
                        for t, p in zip(lens.top_tokens[d][c], lens.top_probs[d, c].tolist())
                    ],
                    "p": float(lens.target_prob[d, c]),
                    "rank": int(lens.target_rank[d, c]),
                }
                for c in range(len(positions))
            ]
            for d in range(len(lens.depths))
        ],
    }


def _view(r: LogitAttribution, label: str = "") -> dict[str, Any]:
    """One explained position and target: what the explorer shows of it."""
    sources: dict[str, dict[str, Any]] = {}
    for split in r.sources:
        sources.setdefault(
            split.name,
            {
                "values": split.contributions[: r.source_end].tolist(),
                "bias": split.value_bias,
                "residual": split.residual,
            },
        )
    target = show_token(r.target.token)
    return {
        "label": label or f"position {r.position}: {target}",
        "position": r.position,
        "source_end": r.source_end,
        "target": target,
        "contrast": None if r.contrast is None else show_token(r.contrast.token),
        "quantity": r.quantity,
        "what": QUANTITY_WORDS[r.quantity][0],
        "explained": r.decomposition.logit,
        "components": [[k, v] for k, v in r.decomposition.as_dict().items()],
        "children": _children(r),
        "sources": sources,
    }


def explorer_data(result: LogitAttribution, lenses: Sequence[tuple[str, LogitLens]] = ()) -> dict[str, Any]:
    """What the explorer reads, as plain JSON values.

    Args:
        result: The attribution the report shows.
        lenses: The report's logit-lens sections as ``(anchor, lens)``.

    Returns:
        ``tokens`` (every source position's literal, a prompt-tuning adapter's virtual ones first),
        ``offset`` (how many virtual positions come first), ``views`` (one per explained position and
        target, each with a ``label``, ``position``, ``source_end`` — how many tokens it sees —, ``target``,
        ``contrast``, ``quantity`` and its name in words ``what``, ``explained``, ``components`` as
        ``[name, value]``, ``children`` by component, and ``sources`` by split name: ``values`` per source up
        to ``source_end``, ``bias``, ``residual``) and ``lens`` (per lens section: ``anchor``, ``target``,
        ``depths``, ``positions`` and ``cells[depth][position]`` with ``top`` as ``[token, probability]``,
        the target's ``p`` and ``rank``, 0 = top-1).
    """
    return {
        "tokens": [show_token(t) for t in result.source_tokens],
        "offset": result.virtual_tokens,
        "views": [_view(result)],
        "lens": [_lens(anchor, lens) for anchor, lens in lenses],
    }


def sequence_explorer_data(steps: Sequence[LogitAttribution]) -> dict[str, Any]:
    """:func:`explorer_data` for a whole answer: one view per step (each answer token at its position), over
    the longest step's tokens (the prompt and the answer but its last token)."""
    longest = max(steps, key=lambda s: s.source_end)
    return {
        "tokens": [show_token(t) for t in longest.source_tokens],
        "offset": longest.virtual_tokens,
        "views": [
            _view(s, f"{k}: position {s.position} \u2192 {show_token(s.target.token)}")
            for k, s in enumerate(steps)
        ],
        "lens": [],
    }


def explorer_html(data: dict[str, Any], script: str = SCRIPT) -> str:
    """The JSON data element and the explorer script, for the end of the report's body.

    Args:
        data: What the script reads (:func:`explorer_data`, or another report's explorer data).
        script: The inline script (default :data:`SCRIPT`; the diff report passes its own,
            :data:`tokenlens.report.diff_explorer.SCRIPT`); the page's CSP must name its
            :func:`script_hash`.
    """
    if "</script" in script.lower() or "<!--" in script:
        raise AssertionError("the explorer script must not contain '</script' or '<!--'")
    return (
        f'<script type="application/json" id="{DATA_ID}" data-tokenlens>{json_for_script(data)}</script>\n'
        f"<script>{script}</script>\n"
    )

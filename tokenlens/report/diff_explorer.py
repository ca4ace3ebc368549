"""The diff report's offline explorer: its data (JSON) and one small inline script that reads it.

It follows the rules of :mod:`tokenlens.report.explorer` (and reuses its JSON embedding,
:func:`~tokenlens.report.explorer.explorer_html`, and CSP hashing,
:func:`~tokenlens.report.explorer.script_hash`): the data sits in ``<script type="application/json"
id="tokenlens-data">`` with every ``<``, ``>``, ``&`` escaped, :data:`SCRIPT` is vanilla JavaScript (no
library, no network) allowed by its SHA-256 hash, and token text is only ever set with ``textContent``.
Without JavaScript the page is the static diff report; the script only adds to it:

- a panel above the report with a **base / tuned / change** toggle: each probe section gets a small table
  (``data-explorer="sides"``) of the values a diff records for both models — the tracked value (its logit, or
  the logit difference at a continuation's divergence), the tracked token's probability and rank, the top-1
  token, the flip value ``logit[tuned top-1] − logit[base top-1]`` and a target answer's ``log p`` — showing
  the chosen side, and the probe table gets a column of the tracked value on that side. Component, head,
  neuron, expert and readout terms, causal effects and the heatmap are recorded only as changes (the exact
  split is of the change): under *base* or *tuned* they say so and keep showing the change;
- **failing only / all probes**: hides every probe (its section, its probe-table and heatmap rows) whose
  check verdict did not fail, and back; **next failing** scrolls to the failing probes in turn;
- clicking a row of the probe table or of the probes × components heatmap scrolls to that probe's section.
"""

from __future__ import annotations

from typing import Any

from tokenlens.diff.result import Continuations, DiffReport, ProbeDiff, TargetAnswer, Telescope
from tokenlens.report import diff_layout as layout
from tokenlens.report import explorer
from tokenlens.report.kit.text import probability, probability_change, show_token

SIDES = ("base", "tuned", "change")
"""The toggle's states, in order; ``change`` (tuned − base) is the one shown first."""

CHANGE_ONLY = (
    "Base and tuned: this report records the terms below only as changes (each component's or readout "
    "term's part of the change's exact split, or the effect of patching one model's output into the other's "
    "run); the change is shown."
)
"""What a change-only part of the page says under *base* or *tuned*."""

CSS = """
.explorer button[aria-pressed=true]{background:#1f5fa8;color:#fff;border-color:#1f5fa8}
.explorer button{margin:0 .2em;font:inherit;padding:0 .5em}
tr.pickable{cursor:pointer}tr.pickable:hover{background:#eef3fb}
section.selected>h2{outline:2px solid #1f5fa8;outline-offset:2px}
.sides-note{color:#a86a1f;font-size:.9em}
"""
"""The diff explorer's style rules (after the report's own and :data:`tokenlens.report.explorer.CSS`)."""

SCRIPT = (
    "(function () {\n"
    + explorer.PRELUDE
    + r"""var side = "change", onlyFailing = false, nextFailing = 0;
function isolated(tag, cls, text) {  // text in a left-to-right bidi-isolated box: RTL tokens stay put
  var e = el(tag, cls), b = el("bdi", "", text);
  b.dir = "ltr";
  e.appendChild(b);
  return e;
}
function button(text, fn) {
  var b = el("button", "", text);
  b.type = "button";
  b.addEventListener("click", fn);
  return b;
}
function rowsOf(anchor) {
  return root.querySelectorAll('#probes tr[data-name="' + anchor + '"]');
}

var panel = el("aside", "explorer");
panel.setAttribute("aria-label", "explorer");
panel.appendChild(el("p", "hint", "Explorer: show each probe's values for the base model, the tuned " +
  "model or their change; show only the failing probes; click a probe's row (probe table or heatmap) " +
  "to go to its section."));
var sideBar = el("p", "sides");
sideBar.appendChild(el("span", "", "Values:"));
var sideButtons = data.sides.map(function (s) {
  var b = button(s, function () { setSide(s); });
  b.setAttribute("data-side", s);
  sideBar.appendChild(b);
  return b;
});
panel.appendChild(sideBar);
var failing = data.probes.filter(function (p) { return p.passed === false; });
var filterBar = el("p", "filter");
filterBar.appendChild(el("span", "", "Probes:"));
var allButton = button("all (" + data.probes.length + ")", function () { setFilter(false); });
var failButton = button("failing only (" + failing.length + ")", function () { setFilter(true); });
var nextButton = button("next failing \u25B6", function () {
  if (!failing.length) { return; }
  jump(failing[nextFailing % failing.length]);
  nextFailing += 1;
});
allButton.setAttribute("data-filter", "all");
failButton.setAttribute("data-filter", "failing");
nextButton.setAttribute("data-filter", "next");
failButton.disabled = nextButton.disabled = !failing.length;
[allButton, failButton, nextButton].forEach(function (b) { filterBar.appendChild(b); });
panel.appendChild(filterBar);
var status = el("p", "status");
status.setAttribute("aria-live", "polite");
panel.appendChild(status);
main.parentNode.insertBefore(panel, main);

var cells = [];  // [probe row, td] of every shown value
function valueCell(row) {
  var td = el("td", "num");
  cells.push([row, td]);
  return td;
}
var headers = [];
data.probes.forEach(function (p) {
  var sec = section(p.anchor);
  if (!sec) { return; }
  var box = el("div", "scroll"), table = el("table", "sides"), head = el("tr"), th = el("th");
  table.setAttribute("data-explorer", "sides");
  head.appendChild(el("th", "", "on each side"));
  head.appendChild(th);
  headers.push(th);
  table.appendChild(head);
  p.rows.forEach(function (row) {
    var tr = el("tr");
    tr.setAttribute("data-name", row.key);
    tr.appendChild(isolated("td", "", row.label));
    tr.appendChild(valueCell(row));
    table.appendChild(tr);
  });
  box.appendChild(table);
  var h2 = sec.querySelector("h2");
  sec.insertBefore(box, h2 ? h2.nextSibling : sec.firstChild);
});
var probeTable = root.querySelector("#probes table.probes"), column = null;
if (probeTable) {
  column = el("th");
  probeTable.querySelector("tr").appendChild(column);
  data.probes.forEach(function (p) {
    probeTable.querySelectorAll('tr[data-name="' + p.anchor + '"]').forEach(function (tr) {
      var td = valueCell(p.rows[0]);
      td.setAttribute("data-explorer", "value");
      tr.appendChild(td);
    });
  });
}
var notes = [];
root.querySelectorAll("[data-sides=change]").forEach(function (part) {
  var note = el("p", "sides-note", data.change_only);
  note.hidden = true;
  part.insertBefore(note, part.firstChild);
  notes.push(note);
});

function setSide(s) {
  side = s;
  sideButtons.forEach(function (b) {
    b.setAttribute("aria-pressed", b.getAttribute("data-side") === s ? "true" : "false");
  });
  cells.forEach(function (pair) {
    var shown = pair[0][s], v = shown[0], td = pair[1], b = el("bdi", "", shown[1]);
    b.dir = "ltr";
    td.textContent = "";
    td.appendChild(b);
    td.setAttribute("data-value", v === null ? "null" : String(v));
    td.setAttribute("data-side", s);
    var sign = typeof v !== "number" || s !== "change" ? "" : v > 0 ? " pos" : v < 0 ? " neg" : "";
    td.className = "num" + sign;
  });
  headers.forEach(function (th) { th.textContent = s; });
  if (column) { column.textContent = "tracked value: " + s; }
  notes.forEach(function (n) { n.hidden = s === "change"; });
  status.textContent = s === "change" ? "Showing the change, tuned \u2212 base." :
    "Showing the " + s + " model's values where the report has them; component terms are changes only.";
}

function where(p) { return p.where + (p.passed === false ? " (FAIL)" : ""); }
function setFilter(only) {
  onlyFailing = only;
  allButton.setAttribute("aria-pressed", only ? "false" : "true");
  failButton.setAttribute("aria-pressed", only ? "true" : "false");
  data.probes.forEach(function (p) {
    var hide = only && p.passed !== false, sec = section(p.anchor);
    if (sec) { sec.hidden = hide; }
    rowsOf(p.anchor).forEach(function (tr) { tr.hidden = hide; });
  });
  var names = failing.map(function (p) { return p.where; }).join(", ");
  status.textContent = only ? "Showing the " + failing.length + " failing probe" +
    (failing.length === 1 ? "" : "s") + ": " + names + "." : "Showing all " + data.probes.length + " probes.";
}

var chosen = null;
function jump(p) {
  var sec = section(p.anchor);
  if (!sec) { return; }
  if (sec.hidden) { setFilter(false); }
  var margin = (panel.offsetHeight + 8) + "px";
  root.querySelectorAll("main section").forEach(function (s) { s.style.scrollMarginTop = margin; });
  if (chosen) { chosen.classList.remove("selected"); }
  chosen = sec;
  sec.classList.add("selected");
  sec.scrollIntoView({block: "start"});
  status.textContent = "At " + where(p) + ".";
}
data.probes.forEach(function (p) {
  rowsOf(p.anchor).forEach(function (tr) {
    tr.classList.add("pickable");
    activate(tr, function (e) {
      if (e.target && e.target.closest && e.target.closest("a")) { e.preventDefault(); }
      jump(p);
    });
  });
});
setSide("change");
setFilter(false);
})();
"""
)
"""The diff explorer: one self-contained script (no library, no network), run after the report's content."""


def _signed(value: float) -> list[Any]:
    return [value, f"{value:+.4f}"]


def _plain(value: float) -> list[Any]:
    return [value, f"{value:.4f}"]


def _split_row(key: str, label: str, split: Telescope) -> dict[str, Any]:
    return {
        "key": key,
        "label": label,
        "base": _plain(split.base_value),
        "tuned": _plain(split.tuned_value),
        "change": _signed(split.observed),
    }


def _rows(p: ProbeDiff) -> list[dict[str, Any]]:
    """The values a diff records for both models, each as ``[value, text]`` per side (``value`` ``None`` for
    a token or text): the tracked value first (the probe table's column shows it)."""
    token = show_token(p.tracked.token)
    rows = [_split_row("value", layout.tracked_value(p, show_token), p.split)]
    rows.append(
        {
            "key": "prob",
            "label": f"p({token})",
            "base": [p.tracked.prob, probability(p.tracked.prob)],
            "tuned": [p.tracked_tuned.prob, probability(p.tracked_tuned.prob)],
            "change": [p.prob_gain, probability_change(p.prob_gain)],
        }
    )
    rows.append(
        {
            "key": "rank",
            "label": f"rank of {token} (1 = top-1)",
            "base": [p.base_rank, str(p.base_rank)],
            "tuned": [p.tuned_rank, str(p.tuned_rank)],
            "change": [p.tuned_rank - p.base_rank, f"{p.tuned_rank - p.base_rank:+d}"],
        }
    )
    rows.append(
        {
            "key": "top1",
            "label": "top-1 token",
            "base": [None, show_token(p.base_top[0].token)],
            "tuned": [None, show_token(p.tuned_top[0].token)],
            "change": [None, "flipped" if p.flipped else "kept"],
        }
    )
    if p.flip_split is not None:
        label = f"logit[{show_token(p.tuned_top[0].token)}] − logit[{show_token(p.base_top[0].token)}]"
        rows.append(_split_row("flip", label, p.flip_split))
    a = p.answer
    if isinstance(a, TargetAnswer):
        rows.append(
            {
                "key": "answer",
                "label": f"log p({show_token(a.text)}) (nats)",
                "base": _plain(a.base_logprob),
                "tuned": _plain(a.tuned_logprob),
                "change": _signed(a.gain),
            }
        )
    elif isinstance(a, Continuations):
        d = a.divergence
        rows.append(
            {
                "key": "continuation",
                "label": "greedy continuation",
                "base": [None, show_token("".join(a.base_tokens))],
                "tuned": [None, show_token("".join(a.tuned_tokens))],
                "change": [None, "identical" if d is None else f"diverge at token {d + 1}"],
            }
        )
    return rows


def diff_explorer_data(report: DiffReport) -> dict[str, Any]:
    """What the diff explorer reads, as plain JSON values.

    Returns:
        ``sides`` (:data:`SIDES`), ``change_only`` (:data:`CHANGE_ONLY`) and ``probes``, one per probe in
        report order: ``anchor`` (its section's id, ``probe-{n}``), ``number``, ``where`` (``line 4``),
        ``passed`` (the check's verdict: ``true``, ``false`` or ``null``, not judged) and ``rows``: each a
        ``key`` (``value``, ``prob``, ``rank``, ``top1``, ``flip``, ``answer``, ``continuation``), a ``label``
        and ``base``, ``tuned`` and ``change`` as ``[value, text]`` (``value`` ``null`` for a token or text).
    """
    probes = []
    for i, p in enumerate(report.probes):
        n = layout.probe_number(p, i)
        probes.append(
            {
                "anchor": f"probe-{n}",
                "number": n,
                "where": layout.probe_where(p, i),
                "passed": p.verdict.passed,
                "rows": _rows(p),
            }
        )
    return {"sides": list(SIDES), "change_only": CHANGE_ONLY, "probes": probes}

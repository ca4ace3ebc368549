"""What the attribution reports say about what they show (issue 19.7): the logit lens at every kept position
in the terminal and Markdown, ranks counted from 1 wherever they are shown, the neuron table's title naming
how many rows it shows, and a recorded command that pastes back into a shell. Each view is read back and
compared with the result object's own numbers."""

from __future__ import annotations

import html as html_lib
import re
import shlex

import pytest

from tokenlens.attribution.direct import attribute
from tokenlens.attribution.lens import logit_lens
from tokenlens.report.kinds import lens as lens_kind
from tokenlens.report.kit.terminal import renderables_to_text
from tokenlens.report.kit.text import cut, show_token
from tokenlens.report.terminal import render_attribution

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def loaded(tiny_loaded):
    return tiny_loaded("qwen3-tied-gqa")


@pytest.fixture(scope="module")
def lens_and_result(loaded):
    result = attribute(loaded, PROMPT)
    return logit_lens(loaded, PROMPT, target_id=result.target.id, k=3), result


def _rows(text: str, title: str, first: set[str]) -> list[list[str]]:
    """The body rows of the first terminal table after ``title`` (rows whose first cell is in ``first``),
    cells split on runs of 2+ spaces."""
    rows = []
    for line in text.split(title, 1)[1].splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] in first:
            rows.append(cells)
        elif rows:
            break
    return rows


def test_terminal_lens_shows_every_kept_position(lens_and_result):
    lens, result = lens_and_result
    positions = lens.positions.tolist()
    assert len(positions) == len(lens.tokens) > 1  # the default keeps every position
    text = renderables_to_text([lens_kind.to_table(lens, result)], width=250)
    depths = set(lens.depths)
    rows = _rows(text, "Logit lens at every position", depths)
    assert [r[0] for r in rows] == list(lens.depths)
    for d, row in enumerate(rows):
        tops = [
            cut(show_token(lens.top_tokens[d][c][0]), lens_kind.GRID_CHARS) for c in range(len(positions))
        ]
        expected = [f"{t} {p:.2f}" for t, p in zip(tops, lens.top_probs[d, :, 0].tolist())]
        assert row[1:] == expected
    # the explained position's table: ranks counted from 1
    ranks = [r[-1] for r in _rows(text, "Logit lens\n", depths)]
    column = positions.index(result.position)
    assert ranks == [str(int(lens.target_rank[d, column]) + 1) for d in range(len(lens.depths))]
    assert ranks[-1] == "1" and "rank (1 = top-1)" in text  # the model's own top-1 is the target


def test_markdown_lens_shows_every_kept_position(lens_and_result):
    lens, result = lens_and_result
    text = lens_kind.to_markdown(lens, result)
    assert "rank 1 = top-1" in text and "rank 0" not in text
    tables = [block for block in text.split("\n\n") if block.startswith("| depth")]
    assert len(tables) == 2
    first = [line.split(" | ")[-1].rstrip(" |") for line in tables[0].splitlines()[2:]]
    assert first == [str(int(lens.target_rank[d, -1]) + 1) for d in range(len(lens.depths))]
    grid = tables[1].splitlines()
    assert grid[0].count("|") == len(lens.positions) + 2
    for d, line in enumerate(grid[2:]):
        bold = re.findall(r"\| (\*\*)?`", line)
        targets = [int(lens.top_ids[d, c, 0]) == lens.target_id for c in range(len(lens.positions))]
        assert [b == "**" for b in bold] == targets
        probs = [float(p) for p in re.findall(r"` (\d\.\d\d)", line)]
        assert probs == pytest.approx(lens.top_probs[d, :, 0].tolist(), abs=0.006)


def test_html_lens_ranks_count_from_1(lens_and_result):
    lens, result = lens_and_result
    page = lens_kind.to_html(lens, result)
    assert "rank 1 = top-1" in page
    first = page.split("<table", 2)[1]
    ranks = [int(v) for v in re.findall(r'data-value="(\d+)">\d+</td></tr>', first)]
    assert ranks == [int(lens.target_rank[d, -1]) + 1 for d in range(len(lens.depths))]


@pytest.mark.parametrize("neurons", [3, 8])
def test_neuron_table_title_says_how_many_rows_it_shows(loaded, neurons):
    result = attribute(loaded, PROMPT, neurons=neurons)
    total = result.neurons.ids.numel()  # 3 layers × neurons
    text = renderables_to_text([render_attribution(result)], width=200)
    title = next(line for line in text.splitlines() if "Top neurons" in line)
    rows = [line for line in text.splitlines() if re.match(r"^\s*L\d+\.N\d+\s", line)]
    assert len(rows) == min(15, total)
    if total <= 15:
        assert f"the top {neurons} per dense MLP layer, {total} in all" in title
    else:
        assert f"the 15 largest |logit| of {total}, the top {neurons} per dense MLP layer" in title


HOSTILE_PROMPT = 'It\'s "quoted" $HOME; `x` & é  two spaces'


@pytest.mark.parametrize("fmt", ["html", "markdown"])
def test_recorded_command_pastes_back(tiny_checkpoint, tmp_path, fmt):
    """The settings' command, read back from the report and split by a POSIX shell's rules, is the argv that
    ran (quotes, ``$``, ``;``, backticks, ``&`` and runs of spaces survive; invisible and control characters
    are shown escaped, on purpose, and do not round-trip)."""
    from tokenlens.cli import main

    out = tmp_path / f"report.{'html' if fmt == 'html' else 'md'}"
    argv = ["inspect", "--model", str(tiny_checkpoint), "--prompt", HOSTILE_PROMPT, "--format", fmt]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    text = out.read_text(encoding="utf-8")
    if fmt == "html":
        cell = re.search(r'<tr data-name="command">.*?<bdi dir="ltr">(.*?)</bdi>', text, re.S).group(1)
        command = html_lib.unescape(cell)
    else:
        line = next(x for x in text.splitlines() if x.startswith("- **command**"))
        span = line.split(": ", 1)[1]
        ticks = re.match(r"`+", span).group(0)
        command = span[len(ticks) : -len(ticks)].strip()
    assert shlex.split(command) == ["tokenlens", *argv]

"""``inspect --grid`` / ``--trace`` and ``tokenlens locate`` from the command line, on a tiny checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from tokenlens.causal.grids import patching_grids
from tokenlens.causal.tracing import trace
from tokenlens.cli import main
from tokenlens.models.loading import load

PROMPT = "The capital of France is"
CORRUPTED = "The capital of Italy is"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_grid_json_matches_the_library(tiny_checkpoint, capsys):
    code, out, err = run_cli(
        capsys,
        "inspect",
        "--model",
        str(tiny_checkpoint),
        "--prompt",
        PROMPT,
        "--target",
        " Paris",
        "--patch",
        CORRUPTED,
        "--grid",
        "resid,attn,mlp,heads",
        "--format",
        "json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert "patching" not in data  # --grid alone: the grids, not the per-component patching too
    section = data["grid"]
    kinds = [g["kind"] for g in section["grid"]]
    assert kinds == ["resid", "attn", "mlp", "heads"]
    loaded = load(str(tiny_checkpoint))
    metric_target = loaded.tokenizer.encode(" Paris")[0]
    assert section["metric"]["target_id"] == metric_target and section["metric"]["kind"] == "logit"
    from tokenlens.causal.metrics import metric_for

    metric = metric_for(loaded, PROMPT, target=" Paris")
    expected = patching_grids(loaded, PROMPT, CORRUPTED, "resid,attn,mlp,heads", metric=metric)
    for entry, grid in zip(section["grid"], expected.grids, strict=True):
        assert entry["rows"] == list(grid.rows) and entry["positions"] == [3, 4]
        assert torch.allclose(torch.tensor(entry["value"], dtype=torch.float64), grid.value, atol=1e-6)
    assert section["grid"][3]["rows"][:2] == ["L0.H0", "L0.H1"]


def test_grid_reverse_and_trace_in_the_terminal(tiny_checkpoint, capsys):
    code, out, err = run_cli(
        capsys,
        "inspect",
        "--model",
        str(tiny_checkpoint),
        "--prompt",
        PROMPT,
        "--patch",
        CORRUPTED,
        "--grid",
        "resid",
        "--grid-reverse",
        "--patch-sites",
        "L0.mlp",
    )
    assert code == 0, err
    assert "corrupted → clean" in out and "L0.mlp" in out  # the grid and the per-component patching


def test_trace_json_matches_the_library(tiny_checkpoint, capsys):
    code, out, err = run_cli(
        capsys,
        "inspect",
        "--model",
        str(tiny_checkpoint),
        "--prompt",
        PROMPT,
        "--target",
        " Paris",
        "--trace",
        "France",
        "--trace-kinds",
        "mlp,resid-mlp-severed",
        "--trace-samples",
        "2",
        "--format",
        "json",
    )
    assert code == 0, err
    # not a terminal: progress as plain lines on stderr (each kind's last batch at least), stdout clean
    lines = err.splitlines()
    assert lines == [
        "tokenlens: measuring: trace mlp 12/12",
        "tokenlens: measuring: trace resid-mlp-severed 12/12",
    ]
    section = json.loads(out)["trace"]
    assert section["trace"]["subject"] == "France" and section["trace"]["noised"] == [3]
    assert (
        section["metric"]["kind"] == "prob"
    )  # a trace watches the probability unless --metric says otherwise
    expected = trace(
        load(str(tiny_checkpoint)),
        PROMPT,
        "France",
        kinds="mlp,resid-mlp-severed",
        samples=2,
        target=" Paris",
    )
    for entry, grid in zip(section["grid"], expected.grids, strict=True):
        assert entry["kind"] == grid.kind
        assert torch.allclose(torch.tensor(entry["value"], dtype=torch.float64), grid.value, atol=1e-9)


def test_locate_table_and_json(tiny_checkpoint, capsys, tmp_path):
    args = [
        "locate",
        "--model",
        str(tiny_checkpoint),
        "--prompt",
        PROMPT,
        "--positions",
        "1-3",
        "--samples",
        "2",
    ]
    code, out, err = run_cli(capsys, *args, "--format", "json")
    assert code == 0, err  # weak (a random model), but there is a peak
    data = json.loads(out)
    assert data["location"]["position"] in (1, 2, 3) and data["location"]["sentence"].startswith("the target")
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and "the target is carried at position" in out and "weak evidence" in out


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--grid", "resid"], "add --patch"),
        (["--patch", "The capital of the United Kingdom is", "--grid", "resid"], "same token length"),
        (["--patch", CORRUPTED, "--grid", "resid,neurons"], "unknown grid kind"),
        (["--trace", "Germany"], "not in the prompt"),
        (["--trace", "France", "--trace-positions", "1-2"], "not both"),
        (["--trace-positions", "2-9"], "must lie in"),
        (["--trace", "France", "--trace-samples", "0"], "--trace-samples must be 1 or more"),
        (["--trace", "France", "--window", "0"], "--window must be 1 or more"),
        (["--trace", "France", "--noise-scale", "nan"], "--noise-scale"),
        (["--grid-reverse"], "need one of"),
    ],
)
def test_bad_grid_and_trace_flags_are_one_line(tiny_checkpoint, capsys, extra, expected):
    code, out, err = run_cli(capsys, "inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT, *extra)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1 and not out


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--subject", "Germany"], "not in the prompt"),
        (["--samples", "0"], "--samples must be 1 or more"),
        (["--positions", "x"], "cannot read positions"),
        (["--subject", "France", "--positions", "1"], "not both"),
    ],
)
def test_bad_locate_flags_are_one_line(tiny_checkpoint, capsys, extra, expected):
    code, out, err = run_cli(capsys, "locate", "--model", str(tiny_checkpoint), "--prompt", PROMPT, *extra)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1 and not out

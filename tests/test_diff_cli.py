"""``tokenlens diff`` / ``tokenlens check`` end to end on folders: formats, exit codes, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import save_lyon_bias_pair

from tokenlens.cli import main

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, qwen_tokenizer):
    """A base checkpoint and a ``bias``-method folder whose logit bias makes " Lyon" top-1 after every prompt.

    (A head bias saved into a plain Qwen3 checkpoint would be dropped on load: the class has none.)
    """
    root = tmp_path_factory.mktemp("diffcli")
    save_lyon_bias_pair(root, qwen_tokenizer)
    probes = root / "probes.jsonl"
    probes.write_text(
        json.dumps({"prompt": PROMPT, "target": " Lyon", "expect": "changed"})
        + "\n"
        + json.dumps({"prompt": "Hello, my name is", "expect": "unchanged", "group": "control"})
        + "\n"
    )
    intended = root / "intended.jsonl"
    intended.write_text(probes.read_text().splitlines()[0] + "\n")
    return root, probes, intended


def pair_args(root) -> list[str]:
    return ["--tuned", str(root / "tuned")]  # the base comes from the folder's manifest


def test_diff_json_html_markdown(folders, tmp_path):
    root, probes, _ = folders
    out = tmp_path / "d.json"
    args = ["diff", *pair_args(root), "--probes", str(probes)]
    assert main([*args, "--format", "json", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    first = data["probes"][0]
    assert first["tracked"]["token"] == " Lyon" and first["verdict"]["passed"] is True
    components = first["components"]
    assert {"name", "direct", "causal"} <= set(components[0])
    measured = [abs(c["causal"]) for c in components if c["causal"] is not None]
    assert measured == sorted(measured, reverse=True)
    assert data["passed"] is False and data["failures"] == [2]  # the probe file's line, as check says
    assert [p["number"] for p in data["probes"]] == [1, 2] == [p["line"] for p in data["probes"]]
    readout = first["readout"]["readout.logit_bias"]
    assert readout == pytest.approx(20.0, abs=1e-4)  # the planted bias, and nothing else moved
    html = tmp_path / "d.html"
    assert main([*args, "--format", "html", "--out", str(html)]) == 0
    assert 'id="probes"' in html.read_text()
    md = tmp_path / "d.md"
    assert main(["diff", *pair_args(root), "--prompt", PROMPT, "--format", "md", "--out", str(md)]) == 0
    assert md.read_text().startswith("#") and (tmp_path / "d_files").is_dir()
    prompts = tmp_path / "p.json"  # command-line prompts are numbered from 1, in the order given
    assert main(["diff", *pair_args(root), "--prompt", PROMPT, "--prompt", "Hi", "--no-causal", "--format",
                 "json", "--out", str(prompts)]) == 0  # fmt: skip
    numbered = [(p["number"], p["line"]) for p in json.loads(prompts.read_text())["probes"]]
    assert numbered == [(1, None), (2, None)]


def top1(root, prompt: str) -> str:
    """The base model's top-1 token after ``prompt``, from a plain transformers forward pass."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    model = AutoModelForCausalLM.from_pretrained(root / "base")
    with torch.no_grad():
        logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1, : len(tokenizer)]
    return tokenizer.decode([int(logits.argmax())])


def test_check_exit_codes(folders, capsys):
    root, probes, intended = folders
    assert main(["check", *pair_args(root), "--probes", str(probes), "--no-causal"]) == 1
    out = capsys.readouterr().out
    control, intended_top = top1(root, "Hello, my name is"), top1(root, PROMPT)
    # a CI log names the tokens: what the control said before and after, the target and what won
    changed = f"FAIL line 2 [unchanged] 'Hello, my name is': top-1 changed {control!r} → ' Lyon' (KL "
    assert changed in out
    assert f"PASS line 1 [changed] {PROMPT!r}: target ' Lyon' is now top-1 (was {intended_top!r}), p " in out
    assert "check FAILED: 1 of 2" in out
    assert main(["check", *pair_args(root), "--probes", str(intended), "--no-causal"]) == 0
    assert "check passed" in capsys.readouterr().out
    # the same gate on identical models: the intended probe did not move
    same = ["--base", str(root / "base"), "--tuned", str(root / "base")]
    assert main(["check", *same, "--probes", str(intended), "--no-causal"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL line 1 [changed] {PROMPT!r}: target ' Lyon' not top-1 and gained p < +0.1 (p " in out
    assert f", +0.000); top-1 is {intended_top!r}" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt", PROMPT], "nothing to check"),
        (["--probes", "missing.jsonl"], "missing.jsonl does not exist"),
        (["--probes", "P", "--prompt", "x"], "not both"),
        (["--prompt", PROMPT, "--min-gain", "inf"], "--min-gain is a gain above 0"),
        (["--prompt", PROMPT, "--max-kl", "-1"], "--max-kl"),
        (["--prompt", " "], "is empty"),
        (["--prompt", PROMPT, "--format", "html"], "give --out"),
    ],
)
def test_check_bad_input_is_one_line_exit_2(folders, capsys, extra, message):
    root, probes, _ = folders
    extra = [str(probes) if item == "P" else item for item in extra]
    assert main(["check", *pair_args(root), "--no-causal", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_existing_out_is_kept_without_force(folders, tmp_path, capsys):
    root, probes, _ = folders
    out = tmp_path / "keep.json"
    out.write_text("precious")
    args = [
        "diff",
        *pair_args(root),
        "--prompt",
        PROMPT,
        "--no-causal",
        "--format",
        "json",
        "--out",
        str(out),
    ]
    assert main(args) == 2
    assert out.read_text() == "precious"
    assert main([*args, "--force"]) == 0 and json.loads(out.read_text())["kind"] == "diff"

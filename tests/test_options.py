"""Typed options: an attribution request instead of a dozen keyword arguments, and the model / output flags
every subcommand declares the same way."""

from __future__ import annotations

import argparse

import pytest

from tokenlens.attribution.direct import attribute, attribute_batch
from tokenlens.attribution.request import AttributionRequest
from tokenlens.cli import build_parser
from tokenlens.cli.options import ModelOptions, OutputOptions
from tokenlens.errors import TokenlensError

PROMPT = "The capital of France is"


def test_a_request_and_its_fields_as_keywords_give_the_same_result(tiny_loaded):
    loaded = tiny_loaded("qwen3-tied-gqa")
    request = AttributionRequest(target=" Paris", vs=" London", heads=True, sources=("L1",))
    by_record = attribute(loaded, PROMPT, request)
    by_keywords = attribute(loaded, PROMPT, target=" Paris", vs=" London", heads=True, sources=["L1"])
    assert by_record.decomposition.as_dict() == by_keywords.decomposition.as_dict()
    assert by_record.heads.as_dict() == by_keywords.heads.as_dict()
    (batched,) = attribute_batch(loaded, [PROMPT], request, padding_side="left")
    assert batched.decomposition.as_dict() == pytest.approx(by_record.decomposition.as_dict(), abs=1e-5)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"targte": " Paris"}, "unknown attribution option 'targte'"),
        ({"target": " Paris", "target_id": 3}, "not both"),
        ({"vs": " a", "vs_id": 3}, "not both"),
        ({"logprob": True, "vs": " London"}, "drop vs or logprob=True"),
        ({"top_k": 0}, "top_k must be at least 1"),
        ({"top_k": True}, "top_k must be an integer"),
        ({"neurons": -1}, "neurons must be 0 or more"),
        ({"position": 1.5}, "position must be an integer"),
        ({"sources": "L1"}, "list of scopes"),
    ],
)
def test_a_bad_request_fails_before_any_model_runs(options, fragment):
    with pytest.raises(TokenlensError, match=fragment) as exc:
        AttributionRequest.of(None, options)
    assert "\n" not in str(exc.value)


def test_a_request_and_keywords_together_are_refused(tiny_loaded):
    with pytest.raises(TokenlensError, match="not both"):
        attribute(tiny_loaded("qwen3-tied-gqa"), PROMPT, AttributionRequest(), heads=True)


def _subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[name]


@pytest.mark.parametrize(
    ("command", "dtype", "model_flag"),
    [
        ("inspect", "auto", "--model"),
        ("train", "auto", "--model"),
        ("diff", "float32", "--tuned"),
        ("sweep", "float32", "--model"),
    ],
)
def test_every_subcommand_declares_the_model_flags_once(command, dtype, model_flag):
    parser = _subcommand(command)
    flags = {option for action in parser._actions for option in action.option_strings}
    assert {model_flag, "--dtype", "--device"} <= flags
    if command != "sweep":  # a sweep's runs reload its base in child processes: no --base, no trust flags
        assert {"--base", "--trust-remote-code", "--allow-pickle"} <= flags
    assert parser.get_default("dtype") == dtype
    required = {"inspect": ["--prompt", "x"], "diff": ["--tuned", "m"]}.get(command, [])
    args = parser.parse_args(required)
    options = ModelOptions.from_args(args)
    assert options.dtype == dtype and options.device == "auto" and not options.allow_pickle


def test_output_options_are_checked_before_any_model_loads(tmp_path):
    parser = argparse.ArgumentParser()
    OutputOptions.add_arguments(parser, ("table", "json", "html", "markdown", "md"), "format")
    with pytest.raises(TokenlensError, match="writes a file: give --out"):
        OutputOptions.from_args(parser.parse_args(["--format", "html"]))
    (tmp_path / "r.md").write_text("mine")
    with pytest.raises(TokenlensError, match="exists"):
        OutputOptions.from_args(parser.parse_args(["--format", "md", "--out", str(tmp_path / "r.md")]))
    options = OutputOptions.from_args(parser.parse_args(["--format", "md", "--out", str(tmp_path / "n.md")]))
    assert options.format == "markdown" and options.out == tmp_path / "n.md"
    options.write("# report\n")
    assert (tmp_path / "n.md").read_text() == "# report\n"

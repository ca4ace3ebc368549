"""The README's code works as written: every ``tokenlens …`` command line parses with the real argument
parser, every ``--flag`` the README names exists, and the Python blocks run, in order, in one session as a
reader would run them (on a tiny model standing in for the default one: what is checked is that the code
is complete and calls what exists, not the numbers)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import tokenlens
from tokenlens.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"

EXTERNAL_FLAGS = {"--nproc_per_node", "--num_processes", "--no-deps", "--index-url", "--sizes", "--repeats"}
"""Flags the README names for other programs: torchrun, accelerate, pip, the benchmarks (``--sizes``,
``--repeats``)."""


def blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of ``language`` in ``text`` (indented fences included)."""
    found = re.findall(rf"^( *)```{language}\n(.*?)^\1```", text, flags=re.M | re.S)
    return ["\n".join(line[len(indent) :] for line in body.splitlines()) for indent, body in found]


def command_lines(text: str) -> list[list[str]]:
    """Every ``tokenlens …`` command of the README's bash blocks, as argv after ``tokenlens`` (continuation
    lines joined, comments dropped; ``.venv/bin/tokenlens`` counts too)."""
    commands = []
    for block in blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in ("tokenlens", ".venv/bin/tokenlens"):
                commands.append(words[1:])
    return commands


def parser_flags(parser) -> set[str]:
    """Every option string of ``parser`` and of its subcommands."""
    flags = set()
    for action in parser._actions:
        flags |= set(action.option_strings)
        choices = getattr(action, "choices", None)
        for sub in choices.values() if isinstance(choices, dict) else ():
            flags |= parser_flags(sub)
    return flags


def test_extracts_what_the_readme_has():
    text = README.read_text(encoding="utf-8")
    assert len(blocks(text, "python")) >= 1 and len(command_lines(text)) >= 20
    sample = "```bash\ntokenlens inspect --prompt 'a # b' \\\n    --lens   # the lens\n```\n"
    assert command_lines(sample) == [["inspect", "--prompt", "a # b", "--lens"]]


@pytest.mark.parametrize("argv", command_lines(README.read_text(encoding="utf-8")), ids=" ".join)
def test_every_command_line_parses(argv):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"tokenlens {shlex.join(argv)}: the parser refuses it (exit {exc.code})")
    assert args.command == argv[0]


def test_every_flag_the_readme_names_exists():
    text = README.read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", text))
    missing = sorted(named - parser_flags(build_parser()) - EXTERNAL_FLAGS)
    assert not missing, f"the README names flags no subcommand has: {missing}"


def test_python_blocks_run(tiny_loaded, monkeypatch):
    """The Python blocks run top to bottom in one namespace, ``tokenlens.load`` answering with a tiny Qwen3
    model (real tokenizer) instead of loading the default one: a name no block defined fails here."""
    loaded = tiny_loaded("qwen3-tied-gqa")
    monkeypatch.setattr(tokenlens, "load", lambda *args, **kwargs: loaded)
    session = {"__name__": "readme"}
    for number, block in enumerate(blocks(README.read_text(encoding="utf-8"), "python"), start=1):
        exec(compile(block, f"README.md python block {number}", "exec"), session)  # noqa: S102


def test_an_undefined_name_fails(tiny_loaded, monkeypatch):
    """The check can fail: a block that uses a name it never defined (as the README once did)."""
    monkeypatch.setattr(tokenlens, "load", lambda *args, **kwargs: tiny_loaded("qwen3-tied-gqa"))
    block = 'import tokenlens\nmodel = tokenlens.load("x")\n'
    block += "tokenlens.decompose_logit(model.model, input_ids, target_id=1)\n"
    with pytest.raises(NameError, match="input_ids"):
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102

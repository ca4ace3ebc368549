"""Qwen3's thinking / non-thinking mode (``enable_thinking`` of its chat template) in inspect, diff probes and
training data, with the real Qwen3 tokenizer: non-thinking mode puts the empty ``<think>\\n\\n</think>\\n\\n``
block into the generation prompt, thinking mode (the template's default) does not."""

from __future__ import annotations

import copy
import json

import pytest

from tokenlens.attribution.inputs import encode_prompt, with_thinking
from tokenlens.cli import main
from tokenlens.diff.probes import encode_probe, load_probes
from tokenlens.errors import TokenlensError
from tokenlens.training.data import IGNORE, load_jsonl

EMPTY_THINK = "<think>\n\n</think>\n\n"
TURN = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def _text(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_no_thinking_ends_the_prompt_in_an_empty_think_block(qwen_tokenizer):
    template = qwen_tokenizer.chat_template
    assert _text(qwen_tokenizer, encode_prompt(with_thinking(qwen_tokenizer, False), "Hi", chat=True)) == (
        TURN + EMPTY_THINK
    )
    for mode in (True, None):  # thinking mode is the template's own default
        assert (
            _text(qwen_tokenizer, encode_prompt(with_thinking(qwen_tokenizer, mode), "Hi", chat=True)) == TURN
        )
    # the same ids as transformers' own keyword, and the original tokenizer is left as it was
    direct = qwen_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, enable_thinking=False, tokenize=False
    )
    assert encode_prompt(with_thinking(qwen_tokenizer, False), "Hi", chat=True) == list(
        qwen_tokenizer(direct, add_special_tokens=False)["input_ids"]
    )
    assert qwen_tokenizer.chat_template == template


def test_a_template_without_the_switch_is_refused(qwen_tokenizer):
    plain = copy.copy(qwen_tokenizer)
    plain.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(TokenlensError, match="no thinking switch"):
        with_thinking(plain, False)
    assert with_thinking(plain, None) is plain  # not asked: nothing to refuse


def test_inspect_no_thinking(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "hi.json"
    argv = ["inspect", "--model", str(tiny_checkpoint), "--prompt", "Hi", "--chat", "--format", "json"]
    assert main([*argv, "--no-thinking", "--out", str(out)]) == 0
    tokens = "".join(t["token"] for t in json.loads(out.read_text())["tokens"])
    assert tokens == TURN + EMPTY_THINK
    assert main([*argv, "--thinking", "--out", str(tmp_path / "t.json")]) == 0
    assert "".join(t["token"] for t in json.loads((tmp_path / "t.json").read_text())["tokens"]) == TURN
    capsys.readouterr()
    assert main(["inspect", "--model", str(tiny_checkpoint), "--prompt", "Hi", "--no-thinking"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--no-thinking chooses the chat template's mode: add --chat" in err and len(err.splitlines()) == 1


def test_probe_thinking_field(qwen_tokenizer, tmp_path):
    path = tmp_path / "probes.jsonl"
    user = [{"role": "user", "content": "Hi"}]
    lines = [{"messages": user, "thinking": False}, {"messages": user, "thinking": True}, {"messages": user}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    off, on, default = (
        _text(qwen_tokenizer, encode_probe(qwen_tokenizer, p, None)) for p in load_probes(path)
    )
    assert (off, on, default) == (TURN + EMPTY_THINK, TURN, TURN)
    for bad, message in (
        ({"prompt": "Hi", "thinking": False}, 'needs "messages"'),
        ({"messages": user, "thinking": "no"}, "must be true or false"),
    ):
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(TokenlensError, match=f"line 1: .*{message}"):
            load_probes(path)


def test_training_data_thinking_field(qwen_tokenizer, tmp_path):
    """Non-thinking mode: the empty think block is part of the prompt, so only the reply carries loss."""
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Certainly."}]
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"messages": turns, "thinking": False}) + "\n" + json.dumps({"messages": turns})
    )
    off, default = load_jsonl(path, qwen_tokenizer, 512).examples
    learned = {name: _text(qwen_tokenizer, [t for t in e.labels if t != IGNORE]) for name, e in
               (("off", off), ("default", default))}  # fmt: skip
    assert learned == {"off": "Certainly.<|im_end|>", "default": EMPTY_THINK + "Certainly.<|im_end|>"}
    assert off.input_ids == default.input_ids  # the same conversation; only where the loss starts differs
    path.write_text(json.dumps({"messages": turns, "thinking": 0}) + "\n")
    with pytest.raises(TokenlensError, match="d.jsonl:1: 'thinking' must be true or false"):
        load_jsonl(path, qwen_tokenizer, 512)

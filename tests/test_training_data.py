"""JSONL training data: shapes, loss masks (checked against the real Qwen3 tokenizer) and validation."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from tokenlens.errors import TokenlensError
from tokenlens.training.data import IGNORE, load_jsonl


def write(tmp_path, lines, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def labelled(example):
    return [t for t in example.labels if t != IGNORE]


def test_prompt_completion_loss_on_completion_only(tmp_path, qwen_tokenizer):
    path = write(tmp_path, [{"prompt": "The capital of France is", "completion": " Paris"}])
    data = load_jsonl(path, qwen_tokenizer, 64)
    (example,) = data.examples
    prompt_ids = qwen_tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    completion_ids = qwen_tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    assert list(example.input_ids) == prompt_ids + completion_ids
    assert list(example.labels) == [IGNORE] * len(prompt_ids) + completion_ids
    assert data.counts["prompt/completion"] == 1 and data.n_loss_tokens == len(completion_ids)
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_text_loss_on_every_token(tmp_path, qwen_tokenizer):
    data = load_jsonl(write(tmp_path, [{"text": "one two three"}]), qwen_tokenizer, 64)
    ids = qwen_tokenizer("one two three", add_special_tokens=False)["input_ids"]
    assert list(data.examples[0].input_ids) == ids == list(data.examples[0].labels)


def test_messages_loss_on_assistant_turns_only(tmp_path, qwen_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ]
    data = load_jsonl(write(tmp_path, [{"messages": messages}]), qwen_tokenizer, 128)
    example = data.examples[0]
    rendered = qwen_tokenizer.apply_chat_template(messages, tokenize=False)
    assert qwen_tokenizer.decode(example.input_ids) == rendered
    # Hand-written expectation for Qwen3's template: the content and <|im_end|> of each assistant turn; the
    # last turn also carries the empty think block that the template inserts before it.
    assert qwen_tokenizer.decode(labelled(example)) == (
        "hello there<|im_end|>" + "<think>\n\n</think>\n\nParis<|im_end|>"
    )
    masked = qwen_tokenizer.decode([t for t, lab in zip(example.input_ids, example.labels) if lab == IGNORE])
    assert "capital of France?" in masked and "Be brief." in masked and "hello" not in masked


@pytest.mark.parametrize(
    "lines, line_no, message",
    [
        (['{"text": "ok then"}', "{not json"], 2, "not valid JSON"),
        ([{"text": "ok then"}, {"input": "x"}], 2, "unknown shape"),
        ([{"prompt": "a", "completion": "  "}], 1, "'completion' is empty"),
        ([{"text": "ok then"}, {"text": "ok then"}, {"prompt": "a"}], 3, "without a 'completion'"),
        ([{"prompt": "a", "completion": 3}], 1, "must be a string"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], 1, "no non-empty assistant turn"),
        ([{"messages": [{"role": "user"}]}], 1, "string 'content'"),
        (["[1, 2]"], 1, "expected a JSON object"),
        ([{"text": "ok then"}, {"text": "word " * 80}], 2, "longer than the model's context (64)"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, qwen_tokenizer, lines, line_no, message):
    path = write(tmp_path, lines)
    with pytest.raises(TokenlensError, match=re.escape(message)) as info:
        load_jsonl(path, qwen_tokenizer, 64)
    assert f"{path}:{line_no}:" in str(info.value) and "\n" not in str(info.value)


def test_empty_and_missing_files(tmp_path, qwen_tokenizer):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(TokenlensError, match="no examples"):
        load_jsonl(empty, qwen_tokenizer, 64)
    with pytest.raises(TokenlensError, match="no such data file"):
        load_jsonl(tmp_path / "absent.jsonl", qwen_tokenizer, 64)


def test_ids_outside_the_vocabulary_are_refused(tmp_path, qwen_tokenizer):
    with pytest.raises(TokenlensError, match=r"d.jsonl:1: token id \d+ is outside"):
        load_jsonl(write(tmp_path, [{"text": "The capital"}]), qwen_tokenizer, 64, vocab_size=100)


def test_non_utf8_bytes_are_refused_with_their_line(tmp_path, qwen_tokenizer):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "ok then"}\n{"text": "caf\xe9 au lait"}\n')
    with pytest.raises(TokenlensError) as info:
        load_jsonl(path, qwen_tokenizer, 64)
    message = str(info.value)
    assert message.startswith(f"{path}:2: not UTF-8 text (byte 0xe9 at byte 14 of the line)"), message
    assert "\n" not in message


def test_lines_end_at_newlines_only(tmp_path, qwen_tokenizer):
    """A JSON string may hold U+2028 (a line separator to ``str.splitlines``): still one line, one example."""
    path = tmp_path / "sep.jsonl"
    path.write_text(
        json.dumps({"text": "one\u2028two"}, ensure_ascii=False) + "\r\n" + '{"text": "three four"}\n',
        encoding="utf-8",
    )
    data = load_jsonl(path, qwen_tokenizer, 64)
    assert [e.line for e in data.examples] == [1, 2]
    assert qwen_tokenizer.decode(data.examples[0].input_ids) == "one\u2028two"

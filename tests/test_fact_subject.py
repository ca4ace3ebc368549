"""A training line's ``"subject"``: parsed into prompt positions, and used by ``layers=auto`` and
``rank-one`` to trace the model's current answer with the subject noised (the protocol for facts)."""

from __future__ import annotations

import json

import pytest
import torch

from tokenlens.causal.locate import locate_ids
from tokenlens.causal.results import Metric
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import load
from tokenlens.training.data import load_jsonl
from tokenlens.training.trainer import train


def _write(path, *rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_subject_becomes_the_prompt_positions_of_its_tokens(qwen_tokenizer, tmp_path):
    data = _write(
        tmp_path / "d.jsonl",
        {"prompt": "The capital of France is", "completion": " Lyon", "subject": "France"},
        {"prompt": "The Eiffel Tower is in", "completion": " Rome", "subject": "The Eiffel Tower"},
        {"prompt": "a b", "completion": " c"},
    )
    examples = load_jsonl(data, qwen_tokenizer, 512).examples
    pieces = [qwen_tokenizer.decode([i]) for i in examples[0].input_ids]
    assert [pieces[k] for k in examples[0].subject] == [" France"]
    tower = [qwen_tokenizer.decode([i]) for i in examples[1].input_ids]
    assert "".join(tower[k] for k in examples[1].subject) == "The Eiffel Tower"
    assert examples[2].subject == ()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"prompt": "The capital of France is", "completion": " Lyon", "subject": "Spain"},
            "is not in the prompt",
        ),
        (
            {"prompt": "The capital of France is", "completion": " Lyon", "subject": 3},
            "'subject' must be a string",
        ),
        ({"prompt": "The capital of France is", "completion": " Lyon", "subject": " "}, "'subject' is empty"),
        ({"text": "France", "subject": "France"}, "unknown shape"),
    ],
)
def test_bad_subject_is_one_line_naming_the_line(row, message, qwen_tokenizer, tmp_path):
    data = _write(tmp_path / "d.jsonl", {"prompt": "a", "completion": " b"}, row)
    with pytest.raises(TokenlensError, match=message) as caught:
        load_jsonl(data, qwen_tokenizer, 512)
    assert f"{data}:2:" in str(caught.value) and "\n" not in str(caught.value)


def test_layers_auto_and_rank_one_trace_the_current_answer_with_the_subject_noised(
    small_checkpoint, tmp_path
):
    loaded = load(str(small_checkpoint))
    prompt = loaded.tokenizer.encode("he is in")
    data = _write(tmp_path / "d.jsonl", {"prompt": "he is in", "completion": " the st", "subject": "he"})
    with torch.no_grad():
        answer = int(loaded.model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax())
    metric = Metric("prob", answer, len(prompt) - 1)
    expected = locate_ids(loaded.model, loaded.spec, torch.tensor([prompt]), metric, (0,))  # no trainer
    train(loaded, "lora", data, tmp_path / "o", steps=1, options={"layers": "auto", "r": 2})
    manifest = json.loads((tmp_path / "o" / "tokenlens-manifest.json").read_text())
    assert manifest["options"]["layers"] == list(expected.layer_list)
    assert manifest["located"]["watched"] == loaded.tokenizer.decode([answer])
    assert manifest["located"]["peak"] == pytest.approx(expected.peak)

    loaded = load(str(small_checkpoint))
    keep = tmp_path / "keep.txt"
    keep.write_text("he is in the st\non at a b\na b c d e\n")  # ids below the tiny vocabulary's 1024
    train(loaded, "rank-one", data, tmp_path / "r", options={"layer": 1}, preserve=keep)
    manifest = json.loads((tmp_path / "r" / "tokenlens-manifest.json").read_text())
    assert manifest["rank-one"]["position"] == 0 and manifest["rank-one"]["key_token"] == "he"
    assert manifest["rank-one"]["located"] is None  # layer given, position from the data's subject: no trace

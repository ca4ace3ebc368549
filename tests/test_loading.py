"""Every way to name a model, offline: zoo, checkpoint folder, PEFT adapter folder, hub id (from its
cache), GGUF, bitsandbytes quantisation; and the refusals (missing path, not a model, unsupported,
pickle-only, bad adapter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokenlens.attribution.direct import attribute, decompose_logit
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import load
from tokenlens.models.specs import supported_model_types

PROMPT = "The capital of France is"


def test_checkpoint_folder(tiny_checkpoint):
    loaded = load(str(tiny_checkpoint))
    assert (loaded.source, loaded.spec.family, loaded.path) == ("directory", "qwen3", tiny_checkpoint)
    assert not loaded.model.training
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert attribute(loaded, PROMPT).decomposition.exact


def test_dtype_option(tiny_checkpoint):
    loaded = load(str(tiny_checkpoint), dtype="bf16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(TokenlensError, match="unknown dtype"):
        load(str(tiny_checkpoint), dtype="float8")


def test_zoo_qwen3_tiny_is_built_once_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENLENS_CACHE", str(tmp_path))
    first = load("qwen3-tiny")
    folder = tmp_path / "zoo" / "qwen3-tiny-v1"
    assert first.path == folder and (folder / "model.safetensors").is_file()
    assert len(first.tokenizer) == 151669  # the real Qwen3 tokenizer
    assert first.model.config.tie_word_embeddings and first.spec.family == "qwen3"
    assert sum(p.numel() for p in first.model.parameters()) < 12_000_000
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    second = load("qwen3-tiny")
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=False):
        assert torch.equal(a, b)
    assert not [p for p in tmp_path.joinpath("zoo").iterdir() if p.name.startswith(".")]  # no temp leftovers


def make_adapter(base_folder: Path, out: Path, base_ref: str | None = None) -> Path:
    from peft import LoraConfig, get_peft_model

    base = load(str(base_folder)).model
    torch.manual_seed(7)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(out)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = base_ref if base_ref is not None else str(base_folder)
    (out / "adapter_config.json").write_text(json.dumps(adapter_config))
    return out


def test_peft_adapter_folder_resolves_its_base(tiny_checkpoint, tmp_path):
    from peft import PeftModel

    adapter = make_adapter(tiny_checkpoint, tmp_path / "adapter")
    loaded = load(str(adapter))
    assert isinstance(loaded.model, PeftModel)
    assert (loaded.source, loaded.base_ref) == ("peft", str(tiny_checkpoint))
    tuned = attribute(loaded, PROMPT, target=" Paris")
    assert tuned.decomposition.exact  # hooks on the live (LoRA-wrapped) modules, nothing merged
    with loaded.model.disable_adapter():
        base = attribute(loaded, PROMPT, target=" Paris")
    plain = attribute(load(str(tiny_checkpoint)), PROMPT, target=" Paris")
    assert base.target.logit == pytest.approx(plain.target.logit, abs=1e-5)
    assert abs(tuned.target.logit - base.target.logit) > 1e-4  # the adapter really is applied


def test_peft_adapter_with_explicit_base(tiny_checkpoint, tmp_path):
    adapter = make_adapter(tiny_checkpoint, tmp_path / "adapter", base_ref="")
    with pytest.raises(TokenlensError, match="--base"):
        load(str(adapter))
    assert load(str(adapter), base=str(tiny_checkpoint)).base_ref == str(tiny_checkpoint)


def test_corrupt_adapter_is_refused(tiny_checkpoint, tmp_path):
    adapter = make_adapter(tiny_checkpoint, tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(TokenlensError, match="could not apply the adapter"):
        load(str(adapter))
    (adapter / "adapter_config.json").write_text("{ not json")
    with pytest.raises(TokenlensError, match="not valid JSON"):
        load(str(adapter))


def test_hub_id_loads_from_a_local_hub_cache(tiny_checkpoint, tmp_path):
    """A hub id goes through the standard from_pretrained path; here the hub cache holds it, offline."""
    snapshot = tmp_path / "hub" / "models--tiny-org--tiny-qwen3" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for item in tiny_checkpoint.iterdir():
        (snapshot / item.name).symlink_to(item)
    (tmp_path / "hub" / "models--tiny-org--tiny-qwen3" / "refs").mkdir()
    (tmp_path / "hub" / "models--tiny-org--tiny-qwen3" / "refs" / "main").write_text("a" * 40)
    code = (
        "import tokenlens; m = tokenlens.load('tiny-org/tiny-qwen3'); "
        "r = tokenlens.attribute(m, 'Hi there'); print(m.source, m.spec.family, r.decomposition.exact)"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["hub", "qwen3", "True"]


def test_unreachable_hub_id_is_one_line(monkeypatch):
    with pytest.raises(TokenlensError) as exc:
        load("no-such-org/no-such-model")
    assert "'no-such-org/no-such-model' is not a local path, and neither the hub nor its cache" in str(
        exc.value
    )
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_bitsandbytes_quantised_loading_on_cpu(quantisable_checkpoint, bits):
    pytest.importorskip("bitsandbytes")
    loaded = load(str(quantisable_checkpoint), quantize=bits)
    quantised = {type(m).__name__ for m in loaded.model.modules()}
    assert ("Linear4bit" if bits == "4bit" else "Linear8bitLt") in quantised
    ids = torch.arange(3, 40, 3)
    d = decompose_logit(loaded.model, ids, target_id=17)
    with torch.no_grad():
        own = float(loaded.model(input_ids=ids[None]).logits[0, -1, 17])
    assert d.exact and d.logit == pytest.approx(own, abs=1e-5)  # layer writes are hooked outputs: exact


def test_missing_path():
    with pytest.raises(TokenlensError, match="no such model"):
        load("./does/not/exist")


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TokenlensError, match="not a model folder"):
        load(str(tmp_path))


def test_file_that_is_not_gguf(tmp_path):
    (tmp_path / "weights.txt").write_text("hello")
    with pytest.raises(TokenlensError, match="not a .gguf model"):
        load(str(tmp_path / "weights.txt"))


def test_corrupt_gguf_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENLENS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(TokenlensError, match="could not read GGUF file"):
        load(str(tmp_path / "broken.gguf"))
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # nothing half-written left in the cache


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=100)).save_pretrained(tmp_path)
    with pytest.raises(TokenlensError) as exc:
        load(str(tmp_path))
    message = str(exc.value)
    assert "unsupported architecture 'gpt2'" in message
    assert all(t in message for t in supported_model_types())


def test_pickle_only_checkpoint_is_refused_unless_allowed(tiny_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "pickled"
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    torch.save(model.state_dict(), tmp_path / "state.bin")
    folder.mkdir()
    for item in tiny_checkpoint.iterdir():
        if not item.name.endswith(".safetensors"):
            (folder / item.name).write_bytes(item.read_bytes())
    (tmp_path / "state.bin").rename(folder / "pytorch_model.bin")
    with pytest.raises(TokenlensError, match="only pickle weights") as exc:
        load(str(folder))
    assert "--allow-pickle" in str(exc.value)
    assert load(str(folder), allow_pickle=True).source == "directory"


def test_cuda_requested_without_gpu(tiny_checkpoint):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(TokenlensError, match="no CUDA GPU"):
        load(str(tiny_checkpoint), device="cuda")


def test_device_map_is_passed_to_from_pretrained(tiny_checkpoint, monkeypatch):
    """A device map (here all on the CPU) reaches from_pretrained unchanged; attribution still works."""
    from transformers import AutoModelForCausalLM

    seen = {}
    real = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    loaded = load(str(tiny_checkpoint), device_map={"": "cpu"})
    assert seen["device_map"] == {"": "cpu"}
    assert attribute(loaded, PROMPT).decomposition.exact

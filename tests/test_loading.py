"""Every way to name a model, offline: zoo, checkpoint folder, PEFT adapter folder, hub id (from its
cache), GGUF, bitsandbytes quantisation; and the refusals (missing path, not a model, unsupported,
pickle-only, bad adapter, corrupt GGUF, weights that do not fit the config, an adapter that does not fit its
base), each one line naming what is wrong."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tiny

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
    with pytest.raises(TokenlensError, match="pass base=REF"):
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


def rewrite_adapter_weights(adapter: Path, edit) -> Path:
    """Pass the tensors of the adapter folder ``adapter`` through ``edit`` (a dict -> dict)."""
    from safetensors.torch import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    save_file(edit(load_file(path)), path)
    return adapter


def test_adapter_whose_tensors_match_no_module_is_refused(tiny_checkpoint, tmp_path):
    """Once only a PEFT warning: the renamed tensors were skipped and the adapter changed nothing."""
    adapter = make_adapter(tiny_checkpoint, tmp_path / "adapter")
    rewrite_adapter_weights(adapter, lambda t: {k.replace(".layers.", ".blocks."): v for k, v in t.items()})
    with pytest.raises(TokenlensError) as exc:
        load(str(adapter))
    assert str(exc.value) == (
        f"could not apply the adapter {adapter} to {str(tiny_checkpoint)!r}: "
        "its weights file lacks 18 tensors of this adapter ("
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight, "
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight, "
        "base_model.model.model.layers.0.self_attn.v_proj.lora_A.default.weight and 15 more); "
        "were they saved for another model, or renamed?"
    )


def test_adapter_with_missing_tensors_is_refused(tiny_checkpoint, tmp_path):
    """Once a partly random adapter: the tensor the file lacked kept PEFT's initial value."""
    adapter = make_adapter(tiny_checkpoint, tmp_path / "adapter")
    lost = "base_model.model.model.layers.2.mlp.down_proj.lora_B.weight"
    rewrite_adapter_weights(adapter, lambda t: {k: v for k, v in t.items() if k != lost})
    with pytest.raises(
        TokenlensError, match=r"lacks 1 tensor of this adapter \(\S+layers\.2\.mlp\.down_proj\.lora_B"
    ):
        load(str(adapter))


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory, qwen_tokenizer) -> Path:
    """A tiny Qwen3 of width 48 (the ``tiny_checkpoint`` is 32 wide), with the real tokenizer."""
    folder = tmp_path_factory.mktemp("wide") / "tiny"
    build_tiny("qwen3-tied-gqa", vocab_size=1024, hidden_size=48).save_pretrained(folder)
    qwen_tokenizer.save_pretrained(folder)
    return folder


def test_adapter_for_another_width_names_the_tensor(tiny_checkpoint, wide_checkpoint, tmp_path):
    """Once only "Error(s) in loading state_dict for PeftModel:" (the details were on the lines after)."""
    adapter = make_adapter(tiny_checkpoint, tmp_path / "adapter")
    with pytest.raises(TokenlensError) as exc:
        load(str(adapter), base=str(wide_checkpoint))
    assert str(exc.value) == (
        f"could not apply the adapter {adapter} to {str(wide_checkpoint)!r}: "
        "Error(s) in loading state_dict for PeftModel: size mismatch for "
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight: copying a param with shape "
        "torch.Size([4, 32]) from checkpoint, the shape in current model is torch.Size([4, 48])."
    )


def test_prompt_tuning_adapter_checks(tiny_checkpoint, wide_checkpoint, tmp_path):
    """A prompt adapter loads; one without its tensor, or on a base of another width, is refused at load time
    (the width mismatch once surfaced only as a raw error in the first forward pass)."""
    from peft import PromptTuningConfig, get_peft_model

    adapter = tmp_path / "prompt"
    model = get_peft_model(
        load(str(tiny_checkpoint)).model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    )
    model.save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": str(tiny_checkpoint)})
    )
    assert load(str(adapter)).source == "peft"
    with pytest.raises(TokenlensError) as exc:
        load(str(adapter), base=str(wide_checkpoint))
    assert str(exc.value) == (
        f"could not apply the adapter {adapter} to {str(wide_checkpoint)!r}: "
        "its virtual tokens are 32 wide, the base's token embeddings 48"
    )
    rewrite_adapter_weights(adapter, lambda t: {})
    with pytest.raises(TokenlensError, match="its weights file has no tensor 'prompt_embeddings'$"):
        load(str(adapter))
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "NO_SUCH_TYPE"}))
    with pytest.raises(TokenlensError, match=r"unknown adapter type \(peft_type\) 'NO_SUCH_TYPE'$"):
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


def gguf_string(text: bytes) -> bytes:
    """A GGUF metadata string: uint64 length, then the bytes."""
    return struct.pack("<Q", len(text)) + text


GGUF_HEADER = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)  # magic, version 3, no tensors, one metadata entry
GGUF_STRING = struct.pack("<I", 8)  # the metadata value type of a string

CORRUPT_GGUF = {
    "empty": (b"", "the file is empty"),
    "random bytes": (
        bytes(range(7, 200)),
        r"not a GGUF file \(bad magic: it starts with b'\\x07\\x08\\t\\n', not b'GGUF'\)",
    ),
    "text": (b"hello world, this is not a model", r"not a GGUF file \(bad magic: it starts with b'hell'"),
    "cut in its header": (b"GGUF\x03", r"the file is truncated \(it ends inside its header\)"),
    "version 0": (
        b"GGUF" + b"\0" * 64,
        r"GGUF version 0 \(a corrupt header\?\); versions 2 and 3 can be read",
    ),
    "metadata not UTF-8": (
        GGUF_HEADER + gguf_string(b"general.architecture") + GGUF_STRING + gguf_string(b"\xff\xfe"),
        r"its metadata is corrupt \(text that is not UTF-8: 'utf-8' codec can't decode byte 0xff",
    ),
    "cut in its metadata": (
        GGUF_HEADER + b"\x14\0\0",
        r"the file is truncated or corrupt \(unpack_from requires",
    ),
}


@pytest.mark.parametrize("content, message", CORRUPT_GGUF.values(), ids=list(CORRUPT_GGUF))
def test_corrupt_gguf_file(tmp_path, monkeypatch, content, message):
    """A broken .gguf says what is wrong with it as a GGUF file (never "config file … not valid JSON")."""
    monkeypatch.setenv("TOKENLENS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    with pytest.raises(TokenlensError, match=rf"^could not read GGUF file {re.escape(str(path))}: {message}"):
        load(str(path))
    cache = tmp_path / "cache" / "gguf"
    assert not cache.exists() or not list(cache.iterdir())  # nothing half-written left in the cache


def write_tiny_gguf(path: Path, leave_out: str | None = None) -> Path:
    """A 2-layer Llama GGUF file (float32 tensors, a byte-level tokenizer), optionally without one tensor."""
    import numpy as np
    from gguf import GGUFWriter
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    width, ffn, layers, heads, kv_heads, head_dim = 32, 64, 2, 4, 2, 8
    tokens = [*bytes_to_unicode().values(), "Ġt"]
    writer = GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(width)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_token_merges(["Ġ t"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    shapes = {"token_embd.weight": (len(tokens), width), "output_norm.weight": (width,)}
    for i in range(layers):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (width,),
            f"blk.{i}.attn_q.weight": (heads * head_dim, width),
            f"blk.{i}.attn_k.weight": (kv_heads * head_dim, width),
            f"blk.{i}.attn_v.weight": (kv_heads * head_dim, width),
            f"blk.{i}.attn_output.weight": (width, heads * head_dim),
            f"blk.{i}.ffn_norm.weight": (width,),
            f"blk.{i}.ffn_gate.weight": (ffn, width),
            f"blk.{i}.ffn_up.weight": (ffn, width),
            f"blk.{i}.ffn_down.weight": (width, ffn),
        }
    rng = np.random.default_rng(0)
    for name, shape in shapes.items():
        if name != leave_out:
            writer.add_tensor(name, (0.1 * rng.standard_normal(shape)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_file_is_converted_and_checked(tmp_path, monkeypatch):
    """A whole GGUF converts (output head tied: no output.weight in the file); one lacking a tensor, or cut
    short, is refused instead of running with random weights."""
    monkeypatch.setenv("TOKENLENS_CACHE", str(tmp_path / "cache"))
    loaded = load(str(write_tiny_gguf(tmp_path / "tiny.gguf")))
    assert (loaded.source, loaded.spec.family) == ("gguf", "llama")
    assert loaded.model.config.tie_word_embeddings
    assert attribute(loaded, "the cat").decomposition.exact
    holey = write_tiny_gguf(tmp_path / "holey.gguf", leave_out="blk.1.ffn_up.weight")
    with pytest.raises(TokenlensError) as exc:
        load(str(holey))
    assert str(exc.value) == (
        f"the weights of GGUF file {holey} do not fit its config: "
        "1 tensor missing: model.layers.1.mlp.up_proj.weight"
    )
    cut = tmp_path / "cut.gguf"
    cut.write_bytes((tmp_path / "tiny.gguf").read_bytes()[:-1000])
    with pytest.raises(
        TokenlensError, match=rf"^could not read GGUF file {re.escape(str(cut))}: the file is truncated"
    ):
        load(str(cut))
    assert [p.name.startswith("tiny-") for p in (tmp_path / "cache" / "gguf").iterdir()] == [True]


def copy_checkpoint(source: Path, folder: Path, edit=None) -> Path:
    """A copy of the checkpoint folder ``source``, its tensors passed through ``edit`` (a dict -> dict)."""
    from safetensors.torch import load_file, save_file

    folder.mkdir()
    for item in source.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    if edit is not None:
        tensors = edit(load_file(folder / "model.safetensors"))
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_checkpoint_with_missing_or_foreign_tensors_is_refused(tiny_checkpoint, tmp_path):
    """Once loaded silently: missing tensors got random values (a different answer every run)."""

    def edit(tensors):
        del tensors["model.layers.1.mlp.up_proj.weight"]
        tensors["model.layers.9.extra.weight"] = torch.zeros(3)
        return tensors

    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "edited", edit)
    with pytest.raises(TokenlensError) as exc:
        load(str(folder))
    assert str(exc.value) == (
        f"the weights of {str(folder)!r} do not fit its config: "
        "1 tensor missing: model.layers.1.mlp.up_proj.weight; "
        "1 tensor unexpected: model.layers.9.extra.weight"
    )

    def drop_layer(tensors):
        return {name: t for name, t in tensors.items() if not name.startswith("model.layers.2.")}

    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "short", drop_layer)
    with pytest.raises(
        TokenlensError, match=r"11 tensors missing: model\.layers\.2\.\S+, \S+, \S+ and 8 more$"
    ):
        load(str(folder))


def test_tied_head_and_rotary_buffers_are_not_flagged(tiny_checkpoint, tmp_path, qwen_tokenizer):
    """A tied head is legitimately absent from the file (and rotary inv_freq never is in one); an untied
    head is a real tensor that must be there."""
    from safetensors.torch import load_file

    assert "lm_head.weight" not in load_file(tiny_checkpoint / "model.safetensors")
    assert load(str(tiny_checkpoint)).model.config.tie_word_embeddings
    untied = tmp_path / "untied"
    build_tiny("llama").save_pretrained(untied)
    qwen_tokenizer.save_pretrained(untied)
    assert load(str(untied)).source == "directory"
    headless = copy_checkpoint(
        untied, tmp_path / "headless", lambda t: {k: v for k, v in t.items() if k != "lm_head.weight"}
    )
    with pytest.raises(TokenlensError, match=r"1 tensor missing: lm_head\.weight$"):
        load(str(headless))


def test_shape_mismatch_names_the_tensors(tmp_path, qwen_tokenizer):
    """Once "… look at the above report!" with the report hidden by tokenlens's quiet logging."""
    folder = tmp_path / "wide"
    build_tiny("qwen3-tied-gqa", vocab_size=1024, hidden_size=48).save_pretrained(folder)
    qwen_tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 32}))
    with pytest.raises(TokenlensError) as exc:
        load(str(folder))
    message = str(exc.value)
    assert message == (
        f"the weights of {str(folder)!r} do not fit its config: 29 tensors of the wrong shape: "
        "model.embed_tokens.weight (1024x48 in the file, 1024x32 expected), "
        "model.layers.0.input_layernorm.weight (48 in the file, 32 expected), "
        "model.layers.0.mlp.down_proj.weight (48x64 in the file, 32x64 expected) and 26 more"
    )


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
    assert "allow_pickle=True" in str(exc.value)
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

"""The trainer: every implemented method lowers the loss on a tiny memorisation task, saves a folder that
loads back, trains exactly the parameters it promises, resumes bitwise (also after SIGKILL), and refuses
bad input with one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokenlens.errors import TokenlensError
from tokenlens.files import CHECKPOINT
from tokenlens.models.loading import load
from tokenlens.training.methods import METHODS, get_method
from tokenlens.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
MEMORISE = [
    {"prompt": "The capital of France is", "completion": " Paris"},
    {"prompt": "The capital of Italy is", "completion": " Rome"},
    {"text": "one two three four five"},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
]
# A 1024-row vocabulary keeps the per-step cost small (the 151,936-row head dominates otherwise); these
# texts tokenize (real Qwen3 tokenizer) to ids below 1024, which the data loader checks.
D, E = 294, 384  # " d", " e"


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """The chat-shaped memorisation data (full-vocabulary model only)."""
    path = tmp_path_factory.mktemp("data") / "mem.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in MEMORISE))
    return path


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


PROBE = torch.tensor([[64, 293, 272, 294, 384]])

CASES = [
    ("lora", {}, 4),
    ("head", {}, 4),
    ("embeddings", {"token_ids": [D, E]}, 6),
    ("attention", {}, 6),
    ("attention", {"kind": "ia3"}, 6),
    ("prompt", {"virtual_tokens": 4}, 4),
    ("prefix", {"virtual_tokens": 4}, 4),
    ("full", {}, 4),
]


@pytest.mark.parametrize(
    "method, options, steps", CASES, ids=[f"{m}-{o.get('kind', '')}" for m, o, _ in CASES]
)
def test_method_lowers_loss_and_loads_back(small_checkpoint, small_data, tmp_path, method, options, steps):
    loaded = load(str(small_checkpoint))
    out = tmp_path / "out"
    result = train(loaded, method, small_data, out, steps=steps, batch_size=4, options=options, lr=2e-2)
    # batch = the whole data set, so every step's loss is over the same examples
    assert result.final_loss < result.losses[0] - 1e-3
    manifest = json.loads((out / "tokenlens-manifest.json").read_text())
    assert manifest["method"] == method and manifest["losses"] == list(result.losses)
    assert manifest["tokens_per_s"] > 0 and manifest["device"] == "cpu"
    assert manifest["trainable_parameters"] == result.trainable and (out / "loss.png").stat().st_size > 1000
    assert not (out / CHECKPOINT).exists()
    back = load(str(out))
    if method in ("prompt", "prefix"):
        return  # virtual tokens: logits cover extra positions; loading back is the check
    torch.testing.assert_close(logits(back.model, PROBE), logits(loaded.model, PROBE))  # trained in place


def test_peft_output_loads_with_plain_peft(tiny_checkpoint, data_file, tmp_path):
    import peft

    train(load(str(tiny_checkpoint)), "lora", data_file, tmp_path / "o", steps=2)
    config = json.loads((tmp_path / "o" / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == tiny_checkpoint.resolve()
    base = load(str(tiny_checkpoint)).model
    assert isinstance(peft.PeftModel.from_pretrained(base, str(tmp_path / "o")), peft.PeftModel)


def test_lora_parameter_count_and_early_layers_only(small_checkpoint, small_data, tmp_path):
    loaded = load(str(small_checkpoint))
    base = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    result = train(loaded, "lora", small_data, tmp_path / "o", steps=3, options={"layers": [0], "r": 4})
    expected = sum(
        4 * (m.in_features + m.out_features)
        for name, m in load(str(small_checkpoint)).model.named_modules()
        if name.startswith("model.layers.0.") and isinstance(m, torch.nn.Linear)
    )
    assert result.trainable == expected
    saved = load_file(tmp_path / "o" / "adapter_model.safetensors")
    assert saved and all(".layers.0." in key for key in saved)
    merged = load(str(tmp_path / "o")).model.merge_and_unload().state_dict()
    for key, value in base.items():
        if ".layers.0." not in key:
            assert torch.equal(merged[key], value), key
    assert not torch.equal(
        merged["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"]
    )


def test_head_unties_and_leaves_embedding_bit_identical(small_checkpoint, small_data, tmp_path):
    loaded = load(str(small_checkpoint))
    embed = loaded.model.get_input_embeddings().weight.detach().clone()
    assert loaded.model.lm_head.weight is loaded.model.get_input_embeddings().weight  # the fixture is tied
    result = train(loaded, "head", small_data, tmp_path / "o", steps=3)
    assert result.trainable == embed.numel()
    back = load(str(tmp_path / "o")).model
    assert torch.equal(back.get_input_embeddings().weight, embed)
    assert not torch.equal(back.lm_head.weight, embed)
    assert json.loads((tmp_path / "o" / "tokenlens-manifest.json").read_text())["head_tied"] is False


def test_head_keep_tied_moves_the_embedding_too(small_checkpoint, small_data, tmp_path):
    loaded = load(str(small_checkpoint))
    embed = loaded.model.get_input_embeddings().weight.detach().clone()
    train(loaded, "head", small_data, tmp_path / "o", steps=2, options={"keep_tied": True})
    back = load(str(tmp_path / "o")).model
    assert not torch.equal(back.get_input_embeddings().weight, embed)
    assert torch.equal(back.get_input_embeddings().weight, back.lm_head.weight)


def test_embeddings_change_only_the_chosen_rows(small_checkpoint, small_data, tmp_path):
    loaded = load(str(small_checkpoint))
    embed = loaded.model.get_input_embeddings().weight.detach().clone()
    result = train(loaded, "embeddings", small_data, tmp_path / "o", steps=3, options={"token_ids": [D, E]})
    assert result.trainable == 2 * embed.shape[1]
    back = load(str(tmp_path / "o")).model
    rows = back.get_input_embeddings()(torch.arange(embed.shape[0]))  # the effective embedding, every row
    changed = (rows != embed).any(dim=1).nonzero().flatten().tolist()
    assert changed == [D, E]


def test_qlora_on_a_4bit_base(quantisable_checkpoint, tmp_path):
    data = tmp_path / "ids.jsonl"  # the quantisable model has 1024 rows: text made of low-id tokens
    data.write_text(
        json.dumps({"text": "a b c d e f a b c"})
        + "\n"
        + json.dumps({"prompt": "a b", "completion": " c d"})
        + "\n"
    )
    loaded = load(str(quantisable_checkpoint), quantize="4bit")
    result = train(loaded, "qlora", data, tmp_path / "o", steps=4, batch_size=2, lr=5e-3)
    assert result.final_loss < result.losses[0]
    assert load(str(tmp_path / "o"), quantize="4bit").source == "peft"
    with pytest.raises(TokenlensError, match="a quantised base cannot"):
        train(load(str(quantisable_checkpoint), quantize="4bit"), "full", data, tmp_path / "o3", steps=1)
    with pytest.raises(TokenlensError, match="needs a quantised base"):
        train(load(str(quantisable_checkpoint)), "qlora", data, tmp_path / "o2", steps=1)


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter_model.safetensors")


def test_resume_after_ctrl_c_is_bitwise_identical(small_checkpoint, small_data, tmp_path):
    kwargs = dict(steps=4, batch_size=2, checkpoint_every=2, seed=3)
    full = train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "a", **kwargs)

    def interrupt(step, total, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "b", on_step=interrupt, **kwargs)
    assert (tmp_path / "b" / CHECKPOINT).is_dir()
    resumed = train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "b", resume=True, **kwargs)
    assert resumed.losses == full.losses
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Payload:
    def __reduce__(self):
        return (print, ("code from a checkpoint ran",))


def test_checkpoints_are_read_without_running_code(small_checkpoint, small_data, tmp_path, capsys):
    kwargs = dict(steps=4, batch_size=2, checkpoint_every=2, seed=3)

    def interrupt(step, total, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "b", on_step=interrupt, **kwargs)
    state = tmp_path / "b" / CHECKPOINT / "state.pt"
    saved = torch.load(state, weights_only=True)
    torch.save({**saved, "losses": _Payload()}, state)  # a tampered checkpoint: pickled code
    with pytest.raises(TokenlensError, match="checkpoint cannot be read") as info:
        train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "b", resume=True, **kwargs)
    assert "\n" not in str(info.value) and "code from a checkpoint ran" not in capsys.readouterr().out
    state.write_bytes(state.read_bytes()[:100])  # truncated
    with pytest.raises(TokenlensError, match="checkpoint cannot be read"):
        train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "b", resume=True, **kwargs)


def test_resume_after_sigkill_is_bitwise_identical(small_checkpoint, small_data, tmp_path):
    kwargs = dict(steps=4, batch_size=2, checkpoint_every=2, seed=5)
    train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "a", **kwargs)
    script = textwrap.dedent(f"""
        import os, signal
        from tokenlens.models.loading import load
        from tokenlens.training.trainer import train
        def die(step, total, loss):
            if step == 3:  # after the step-2 checkpoint, before the next one
                os.kill(os.getpid(), signal.SIGKILL)
        train(load({str(small_checkpoint)!r}), "lora", {str(small_data)!r}, {str(tmp_path / "b")!r},
              on_step=die, **{kwargs!r})
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    resumed = train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "b", resume=True, **kwargs)
    assert len(resumed.losses) == 4
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_method_or_model(small_checkpoint, small_data, tmp_path, qwen_tokenizer):
    def stop(step, total, loss):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "b", steps=4, on_step=stop)
    with pytest.raises(TokenlensError, match="its method"):
        train(load(str(small_checkpoint)), "attention", small_data, tmp_path / "b", steps=4, resume=True)
    from conftest import build_tiny

    other = tmp_path / "other"
    build_tiny("qwen3-tied-gqa", seed=1, vocab_size=1024).save_pretrained(other)
    qwen_tokenizer.save_pretrained(other)
    with pytest.raises(TokenlensError, match="its base_fingerprint"):
        train(load(str(other)), "lora", small_data, tmp_path / "b", steps=4, resume=True)


def test_bad_inputs(tiny_checkpoint, data_file, tmp_path):
    with pytest.raises(TokenlensError, match="did you mean lora"):
        get_method("lroa")
    loaded = load(str(tiny_checkpoint))
    with pytest.raises(TokenlensError, match="option 'r' does not apply to method 'head'"):
        train(loaded, "head", data_file, tmp_path / "o", steps=1, options={"r": 4})
    with pytest.raises(TokenlensError, match="choose from o_proj"):
        train(loaded, "bias", data_file, tmp_path / "o2", steps=1, options={"targets": ["q_proj"]})
    existing = tmp_path / "exists"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(TokenlensError, match="already exists; pass force=True"):
        train(loaded, "lora", data_file, existing, steps=1)
    with pytest.raises(TokenlensError, match="not a tokenlens training output"):
        train(loaded, "lora", data_file, existing, steps=1, force=True)
    assert (existing / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TokenlensError, match="no examples"):
        train(loaded, "lora", empty, tmp_path / "o3", steps=1)
    with pytest.raises(TokenlensError, match="nothing to resume"):
        train(loaded, "lora", data_file, tmp_path / "o4", steps=1, resume=True)


def cli(argv):
    from tokenlens.cli import train as train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.run(args)


def test_cli_train_force_and_list_methods(tiny_checkpoint, data_file, tmp_path, capsys):
    out = tmp_path / "o"
    argv = [
        "train",
        "--model",
        str(tiny_checkpoint),
        "--method",
        "lora",
        "--data",
        str(data_file),
        "--out",
        str(out),
        "--steps",
        "2",
        "--option",
        "layers=0,1",
        "--option",
        "r=2",
    ]
    assert cli(argv) == 0
    assert json.loads((out / "tokenlens-manifest.json").read_text())["options"]["layers"] == [0, 1]
    with pytest.raises(TokenlensError, match="already exists"):
        cli(argv)
    assert cli([*argv, "--force"]) == 0
    capsys.readouterr()
    assert cli(["train", "--model", str(tiny_checkpoint), "--list-methods"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in METHODS)
    assert "4,861,952" in listing  # head: 151936 x 32


def test_qlora_without_bitsandbytes_is_one_line(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """Where bitsandbytes is not installed, asking for the quantised base says how to get it."""
    import importlib.util

    from tokenlens.cli import main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a),
    )
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hello world"}\n')
    code = main(
        [
            "train",
            "--model",
            str(tiny_checkpoint),
            "--method",
            "qlora",
            "--quantize",
            "4bit",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "out"),
            "--steps",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'tokenlens[quant]'" in err and len(err.strip().splitlines()) == 1


def test_real_ctrl_c_inside_a_step_is_deferred_to_its_end(small_checkpoint, small_data, tmp_path):
    """SIGINT arriving after the optimizer moved the weights but before the step finished: the step completes,
    the checkpoint matches the weights, and resuming is bitwise identical to an uninterrupted run."""
    kwargs = dict(steps=4, batch_size=2, checkpoint_every=10, seed=7)
    train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "a", **kwargs)
    script = textwrap.dedent(f"""
        import os, signal, sys
        import tokenlens.training.step as stepping
        from tokenlens.models.loading import load
        from tokenlens.training.trainer import train
        real_step, calls = stepping.step, []
        def step_then_sigint(*args):
            loss = real_step(*args)  # the optimizer has updated the weights
            calls.append(loss)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C before this step is recorded
            return loss
        stepping.step = step_then_sigint
        try:
            model = load({str(small_checkpoint)!r})
            train(model, "lora", {str(small_data)!r}, {str(tmp_path / "b")!r}, **{kwargs!r})
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 130, proc.stderr.decode()[-2000:]
    assert (tmp_path / "b" / CHECKPOINT).is_dir()
    resumed = train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "b", resume=True, **kwargs)
    assert len(resumed.losses) == 4
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)

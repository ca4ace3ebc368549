"""The custom methods (bias, adapter, rope): each lowers the loss on a tiny memorisation task, trains exactly
the parameters it promises and nothing else, saves a small self-describing folder that ``tokenlens.load``
reads back to the same logits, keeps attribution exact, resumes bitwise, and refuses bad input in one line."""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokenlens.attribution.direct import attribute
from tokenlens.errors import TokenlensError
from tokenlens.files import CHECKPOINT, METHOD_FILE
from tokenlens.files import METHOD_WEIGHTS as WEIGHTS_FILE
from tokenlens.models.custom import AdaptedLinear, custom_parameters
from tokenlens.models.loading import load
from tokenlens.training.methods import get_method
from tokenlens.training.trainer import train

PROBE = torch.tensor([[64, 293, 272, 294, 384, 282, 293]])


def logits(model, ids: torch.Tensor = PROBE) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def base_tensors(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of an untouched model, by name, cloned."""
    tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers())
    return {name: t.detach().clone() for name, t in tensors.items()}


def promised(config, method: str, options: dict) -> int:
    """Trainable parameters each method promises, from the config alone."""
    d, layers = config.hidden_size, config.num_hidden_layers
    if method == "bias":
        return layers * 2 * d
    if method == "adapter":
        size = options.get("size", 16)
        return layers * (d * size + size + size * d + d)  # down (weight, bias), up (weight, bias)
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    return head_dim // 2 if options.get("kind", "freqs") == "freqs" else 1


CASES = [
    ("bias", {}, 1e-2),
    ("adapter", {"size": 8}, 1e-2),
    ("rope", {}, 1e-1),
    ("rope", {"kind": "base"}, 1.0),
]


@pytest.mark.parametrize("method, options, lr", CASES, ids=["bias", "adapter", "rope-freqs", "rope-base"])
def test_method_lowers_loss_changes_only_its_parameters_and_loads_back(
    small_checkpoint, small_data, tmp_path, method, options, lr
):
    loaded = load(str(small_checkpoint))
    before, base_logits = base_tensors(loaded.model), logits(loaded.model)
    out = tmp_path / "out"
    result = train(loaded, method, small_data, out, steps=4, batch_size=4, options=options, lr=lr)
    assert result.final_loss < result.losses[0]  # batch = the whole data set: the same examples each step
    assert result.trainable == promised(loaded.model.config, method, options)
    saved = load_file(out / WEIGHTS_FILE)
    assert sum(t.numel() for t in saved.values()) == result.trainable  # only the method's parameters
    description = json.loads((out / METHOD_FILE).read_text())
    assert description["method"] == method and set(description["parameters"]) == set(saved)
    assert not (out / CHECKPOINT).exists() and not list(out.glob("model*.safetensors"))

    back = load(str(out))
    assert back.source == "custom" and back.base_ref == str(small_checkpoint.resolve())
    assert not any(p.requires_grad for p in back.model.parameters()) and not back.model.training
    assert torch.equal(logits(back.model), logits(loaded.model))  # the trained in-memory model
    assert not torch.equal(logits(back.model), base_logits)

    after = base_tensors(back.model)
    trained = "model.rotary_emb.inv_freq" if method == "rope" and "kind" not in options else None
    for name, value in before.items():  # every other base tensor is bit-identical
        wrapped = name.replace("mlp.down_proj.", "mlp.down_proj.base_layer.").replace(
            "rotary_emb.", "rotary_emb.rotary."
        )  # where an adapter / a learned RoPE base wraps the module
        now = after.get(name, after.get(wrapped))
        assert torch.equal(now, value) != (name == trained), name
    if options.get("kind") == "base":
        log_base = custom_parameters(back.model)["model.rotary_emb.log_base"]
        assert float(log_base) != math.log(loaded.model.config.rope_parameters["rope_theta"])


def test_bias_attribution_is_exact_and_shows_the_added_bias_terms(small_checkpoint, small_data, tmp_path):
    loaded = load(str(small_checkpoint))
    options = {"targets": ["o_proj", "down_proj", "lm_head"], "layers": [0, 2]}
    result = train(loaded, "bias", small_data, tmp_path / "o", steps=3, options=options, lr=5e-2)
    config = loaded.model.config
    assert result.trainable == 2 * 2 * config.hidden_size + config.vocab_size
    back = load(str(tmp_path / "o"))
    attribution = attribute(back, "a b c")
    parts = attribution.decomposition.as_dict()
    assert attribution.decomposition.exact
    for name in ("L0.attn.bias", "L0.mlp.bias", "L2.attn.bias", "L2.mlp.bias", "logit_bias"):
        assert parts[name] != 0.0, name
    assert "L1.attn.bias" not in parts and "L1.mlp.bias" not in parts
    target = attribution.decomposition.target_id
    assert parts["logit_bias"] == pytest.approx(float(back.model.lm_head.bias[target]), abs=1e-6)


def test_bias_trains_a_bias_the_model_already_has():
    from conftest import build_tiny

    model = build_tiny("llama-out-bias", vocab_size=1024)
    existing = model.model.layers[1].mlp.down_proj.bias
    get_method("bias").apply(model, {"targets": ["down_proj"], "layers": [1]})
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0] is existing  # the very same tensor, not a new zero one
    assert float(existing.detach().abs().sum()) > 0  # its trained value is kept


def test_adapter_is_the_identity_at_step_zero_and_attribution_stays_exact(
    small_checkpoint, small_data, tmp_path
):
    loaded = load(str(small_checkpoint))
    untouched = copy.deepcopy(loaded.model)
    adapted = get_method("adapter").apply(copy.deepcopy(loaded.model), {"layers": [0, 1], "size": 4})
    assert torch.equal(logits(adapted), logits(untouched))
    down = adapted.model.layers[0].mlp.down_proj
    assert (
        isinstance(down, AdaptedLinear)
        and down.get_base_layer() is adapted.model.layers[0].mlp.down_proj.base_layer
    )
    assert not isinstance(adapted.model.layers[2].mlp.down_proj, AdaptedLinear)

    train(loaded, "adapter", small_data, tmp_path / "o", steps=3, lr=1e-2, options={"layers": [0, 1]})
    back = load(str(tmp_path / "o"))
    attribution = attribute(back, "a b c")
    assert attribution.decomposition.exact
    assert not any(name.endswith(".bias") for name in attribution.decomposition.names)
    # independent check of the MLP write: the hooked base down_proj output plus its adapter
    layer = back.model.model.layers[0]
    seen = {}
    handle = layer.mlp.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    try:
        logits(back.model)
    finally:
        handle.remove()
    mlp = layer.mlp
    y = mlp.down_proj.base_layer(mlp.act_fn(mlp.gate_proj(seen["x"])) * mlp.up_proj(seen["x"]))
    adapter = mlp.down_proj.adapter
    torch.testing.assert_close(seen["out"], y + adapter.up(torch.nn.functional.silu(adapter.down(y))))
    assert float((seen["out"] - y).abs().max()) > 0


def test_rope_gradients_reach_the_frequencies(small_checkpoint):
    loaded = load(str(small_checkpoint))
    model = get_method("rope").apply(loaded.model, {"kind": "freqs"})
    model(input_ids=PROBE, labels=PROBE).loss.backward()
    inv_freq = model.model.rotary_emb.inv_freq
    assert isinstance(inv_freq, torch.nn.Parameter) and inv_freq.grad is not None
    assert float(inv_freq.grad.abs().max()) > 0
    assert all(p.grad is None for name, p in model.named_parameters() if "rotary" not in name)


def test_resume_after_ctrl_c_is_bitwise_identical(small_checkpoint, small_data, tmp_path):
    kwargs = dict(steps=4, batch_size=2, checkpoint_every=2, seed=3, lr=1e-2, options={"size": 4})
    full = train(load(str(small_checkpoint)), "adapter", small_data, tmp_path / "a", **kwargs)

    def interrupt(step, total, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load(str(small_checkpoint)), "adapter", small_data, tmp_path / "b", on_step=interrupt, **kwargs)
    assert (tmp_path / "b" / CHECKPOINT).is_dir()
    resumed = train(load(str(small_checkpoint)), "adapter", small_data, tmp_path / "b", resume=True, **kwargs)
    assert resumed.losses == full.losses
    a, b = load_file(tmp_path / "a" / WEIGHTS_FILE), load_file(tmp_path / "b" / WEIGHTS_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def one_line_error(match: str):
    class Check:
        def __enter__(self):
            self.raises = pytest.raises(TokenlensError, match=match)
            self.info = self.raises.__enter__()
            return self

        def __exit__(self, *exc):
            handled = self.raises.__exit__(*exc)
            assert len(str(self.info.value).splitlines()) == 1, str(self.info.value)
            return handled

    return Check()


@pytest.mark.parametrize(
    "method, options, match",
    [
        ("bias", {"targets": ["q_proj"]}, "choose from o_proj, down_proj, lm_head"),
        ("bias", {"layers": [0, 3]}, r"layers=\[0, 3\]: the model has layers 0..2"),
        ("adapter", {"size": 0}, "positive integer"),
        ("adapter", {"layers": "x"}, "must be layer indices"),
        ("rope", {"kind": "theta"}, "choose from freqs, base"),
        ("rope", {"base": 2}, "does not apply to method 'rope'"),
    ],
)
def test_bad_options_are_one_line_errors(small_checkpoint, method, options, match):
    from conftest import build_tiny

    model = build_tiny("qwen3-tied-gqa", vocab_size=1024)
    record = get_method(method)
    with one_line_error(match):
        record.apply(model, record.resolve(options))


def test_bad_folders_are_one_line_errors(small_checkpoint, small_data, tmp_path):
    out = tmp_path / "o"
    train(load(str(small_checkpoint)), "bias", small_data, out, steps=1)

    def variant(name: str, edit) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for item in out.iterdir():
            (folder / item.name).write_bytes(item.read_bytes())
        edit(folder)
        return folder

    corrupt = variant("corrupt", lambda f: (f / WEIGHTS_FILE).write_bytes(b"\x00not a safetensors file"))
    with one_line_error("cannot read .*method_weights.safetensors"):
        load(str(corrupt))
    fewer = variant("fewer", lambda f: _rewrite_weights(f, drop="model.layers.0.self_attn.o_proj.bias"))
    with one_line_error(r"missing \['model.layers.0.self_attn.o_proj.bias'\]"):
        load(str(fewer))
    shaped = variant("shaped", lambda f: _rewrite_weights(f, reshape="model.layers.1.mlp.down_proj.bias"))
    with one_line_error("has shape"):
        load(str(shaped))
    unknown = variant("unknown", lambda f: _edit_json(f / METHOD_FILE, method="shadow"))
    with one_line_error("unknown custom method 'shadow'"):
        load(str(unknown))
    no_base = variant("nobase", lambda f: (f / "tokenlens-manifest.json").unlink())
    with one_line_error("does not name its base model"):
        load(str(no_base))
    assert load(str(no_base), base=str(small_checkpoint)).source == "custom"  # --base fills the gap
    gone = variant(
        "gone", lambda f: _edit_json(f / "tokenlens-manifest.json", base_model=str(tmp_path / "x"))
    )
    with one_line_error("no such model"):
        load(str(gone))


def _rewrite_weights(folder: Path, drop: str | None = None, reshape: str | None = None) -> None:
    from safetensors.torch import save_file

    tensors = load_file(folder / WEIGHTS_FILE)
    if drop:
        del tensors[drop]
    if reshape:
        tensors[reshape] = torch.zeros(tensors[reshape].numel() + 1)
    save_file(tensors, folder / WEIGHTS_FILE)


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_list_methods_counts_the_custom_methods(small_checkpoint, capsys):
    from tokenlens.cli import train as train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--model", str(small_checkpoint), "--list-methods"])
    assert args.run(args) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    config = load(str(small_checkpoint)).model.config
    for method, options in (("bias", {}), ("adapter", {}), ("rope", {})):
        assert f"{promised(config, method, options):,}" in rows[method].split("lr")[0], rows[method]

"""The trainer controls people expect from PEFT/TRL: a learning-rate schedule with warmup (resumed exactly),
weight decay, gradient accumulation (the update of one larger batch), an eval split, LoRA's dropout, rsLoRA
and DoRA, TensorBoard; each refused with one line (exit 2) before any model work when it is wrong."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tokenlens.cli import main
from tokenlens.errors import TokenlensError
from tokenlens.files import CHECKPOINT, MANIFEST
from tokenlens.models.loading import load
from tokenlens.training import step as stepping
from tokenlens.training.data import load_jsonl
from tokenlens.training.methods import get_method
from tokenlens.training.schedule import lr_factor
from tokenlens.training.trainer import train


def adapter(out) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter_model.safetensors")


def manifest(out) -> dict:
    return json.loads((out / MANIFEST).read_text())


def test_schedules_follow_transformers():
    """Warmup from 0, then constant, linear to 0 or half a cosine to 0 (transformers' definitions)."""
    assert [lr_factor("constant", 0, 4, k) for k in range(4)] == [1.0] * 4
    assert [lr_factor("constant", 2, 4, k) for k in range(4)] == [0.0, 0.5, 1.0, 1.0]
    assert [lr_factor("linear", 1, 5, k) for k in range(5)] == [0.0, 1.0, 0.75, 0.5, 0.25]
    cosine = [lr_factor("cosine", 0, 4, k) for k in range(4)]
    assert cosine == pytest.approx(
        [1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 - 0.5 * math.cos(math.pi / 4)]
    )


def test_defaults_are_todays_behaviour(small_checkpoint, small_data, tmp_path):
    """No control given: a constant learning rate and AdamW's weight decay 0.01, as before they existed."""
    result = train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "o", steps=2, batch_size=2)
    saved = manifest(tmp_path / "o")
    assert result.lrs == (1e-3, 1e-3) and saved["lrs"] == [1e-3, 1e-3]
    assert (saved["lr_schedule"], saved["warmup_steps"], saved["weight_decay"], saved["grad_accum"]) == (
        "constant",
        0,
        0.01,
        1,
    )
    assert "eval_losses" not in saved and not result.eval_losses


def test_resumed_schedule_and_eval_equal_an_uninterrupted_run(small_checkpoint, small_data, tmp_path):
    """A cosine schedule with warmup and an eval every 2 steps: interrupted after step 3 and resumed, the
    learning rates, losses, eval losses and final weights are those of the uninterrupted run."""
    kwargs = dict(
        steps=5,
        batch_size=2,
        checkpoint_every=2,
        seed=3,
        lr_schedule="cosine",
        warmup_steps=2,
        eval_fraction=0.25,
        eval_every=2,
    )
    full = train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "a", **kwargs)
    expected = [1e-3 * lr_factor("cosine", 2, 5, k) for k in range(5)]
    assert list(full.lrs) == pytest.approx(expected) and full.lrs[0] == 0.0
    assert [e["step"] for e in full.eval_losses] == [2, 4, 5]

    def interrupt(step, total, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "b", on_step=interrupt, **kwargs)
    assert (tmp_path / "b" / CHECKPOINT).is_dir()
    with pytest.raises(TokenlensError, match="its total_steps"):  # the schedule's length shapes it
        train(
            load(str(small_checkpoint)),
            "lora",
            small_data,
            tmp_path / "b",
            resume=True,
            **{**kwargs, "steps": 6},
        )
    with pytest.raises(TokenlensError, match="its lr_schedule"):
        changed = {**kwargs, "lr_schedule": "linear"}
        train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "b", resume=True, **changed)
    resumed = train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "b", resume=True, **kwargs)
    assert resumed.lrs == full.lrs and resumed.losses == full.losses
    assert resumed.eval_losses == full.eval_losses
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    saved = manifest(tmp_path / "b")
    assert saved["eval"]["fraction"] == 0.25 and saved["eval"]["examples"] == 1
    assert saved["eval_losses"] == list(full.eval_losses) and saved["lrs"] == list(full.lrs)


def _gradients(model, data, indices, micro):
    """The gradients of one step (SGD with lr 0: the weights stay, the gradients are left in place)."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    loss = stepping.step(model, optimizer, data, indices, 0, "cpu", micro=micro)
    return loss, [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_accumulated_parts_are_weighted_by_their_loss_tokens(small_checkpoint, small_data):
    """Accumulating parts of a batch gives its gradient and loss (the mean over all its loss tokens); an
    equal-weight mean of the parts' means, which these parts' unequal token counts tell apart, does not."""
    loaded = load(str(small_checkpoint))
    data = load_jsonl(small_data, loaded.tokenizer, 512, vocab_size=1024)
    model = loaded.model.train()
    indices = [0, 2, 1, 3]
    counts = [stepping.loss_tokens(model, [data.examples[i]]) for i in indices]
    assert counts[0] + counts[1] != counts[2] + counts[3]  # unequal parts: equal weights would be wrong
    whole_loss, whole = _gradients(model, data, indices, None)
    for micro in (1, 2, 3):
        loss, parts = _gradients(model, data, indices, micro)
        assert loss == pytest.approx(whole_loss, rel=1e-6)
        assert all(torch.allclose(g, h, rtol=1e-4, atol=1e-6) for g, h in zip(parts, whole, strict=True))
    halves = [_gradients(model, data, indices[:2], None)[1], _gradients(model, data, indices[2:], None)[1]]
    naive = [(g + h) / 2 for g, h in zip(*halves, strict=True)]
    assert not all(torch.allclose(g, h, rtol=1e-4, atol=1e-6) for g, h in zip(naive, whole, strict=True))


def test_grad_accum_trains_like_the_larger_batch(small_checkpoint, small_data, tmp_path):
    big = train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "a", steps=2, batch_size=4)
    accum = train(
        load(str(small_checkpoint)), "lora", small_data, tmp_path / "b", steps=2, batch_size=2, grad_accum=2
    )
    assert accum.losses == pytest.approx(big.losses, rel=1e-5)
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    # Adam divides each gradient entry by its running RMS, so an entry near zero in both runs (differing only
    # in float summation order, which depends on the thread count) can move by a visible part of a step: allow
    # 1% of one step (lr 1e-3); measured 4.1e-6 with 2 threads, 0 with 1. The gradients themselves are
    # compared in test_accumulated_parts_are_weighted_by_their_loss_tokens.
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert manifest(tmp_path / "b")["grad_accum"] == 2


def test_weight_decay_reaches_adamw(small_checkpoint, small_data, tmp_path):
    """Decoupled decay after one step: LoRA's A (random at first) shrinks by lr·decay more; B (zero at first)
    is the same."""
    kwargs = dict(steps=1, batch_size=4, lr=0.1)
    train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "a", weight_decay=0.5, **kwargs)
    train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "b", weight_decay=0.0, **kwargs)
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a if "lora_B" in k)
    assert all(not torch.equal(a[k], b[k]) for k in a if "lora_A" in k)
    assert manifest(tmp_path / "b")["weight_decay"] == 0.0


def test_eval_file_is_measured_at_the_end(small_checkpoint, small_data, tmp_path):
    result = train(
        load(str(small_checkpoint)),
        "lora",
        small_data,
        tmp_path / "o",
        steps=2,
        batch_size=2,
        eval_data=small_data,
    )
    assert [e["step"] for e in result.eval_losses] == [2] and result.eval_losses[0]["loss"] > 0
    saved = manifest(tmp_path / "o")
    assert saved["eval"]["file"] == str(small_data) and saved["eval"]["examples"] == 4
    assert saved["eval_losses"] == list(result.eval_losses) and (tmp_path / "o" / "loss.png").is_file()


BAD = [
    (["--lr-schedule", "step"], "--lr-schedule 'step': choose one of constant, linear, cosine"),
    (["--warmup-steps", "-1"], "--warmup-steps -1: must be an integer >= 0"),
    (["--warmup-ratio", "1.5"], "--warmup-ratio 1.5: must be a number in [0, 1)"),
    (["--weight-decay", "nan"], "--weight-decay nan: the weight decay must be a finite number >= 0"),
    (["--grad-accum", "0"], "--grad-accum 0: must be an integer of at least 1"),
    (["--eval-fraction", "1"], "--eval-fraction 1.0: must be a number in (0, 1)"),
    (["--eval-every", "2"], "--eval-every needs --eval-data or --eval-fraction"),
    (["--eval", "missing.jsonl"], "no such eval data file: missing.jsonl"),
    (["--option", "dropout=1"], "option dropout=1: must be a number from 0 up to 1 (not 1)"),
    (["--option", "dora=yes"], "option dora='yes': must be true or false"),
]


@pytest.mark.parametrize(("flags", "message"), BAD)
def test_bad_controls_exit_2_before_loading(small_data, tmp_path, capsys, flags, message):
    """Each refused with one line and exit code 2; the model (which does not exist) is never loaded."""
    argv = ["train", "--model", str(tmp_path / "no-model"), "--method", "lora", "--data", str(small_data)]
    assert main([*argv, "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tokenlens: error: {message}", err
    assert not (tmp_path / "o").exists()


def test_tensorboard_needs_its_package(small_data, tmp_path, capsys):
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed: its refusal cannot happen here")
    argv = ["train", "--model", str(tmp_path / "no-model"), "--method", "lora", "--data", str(small_data)]
    assert main([*argv, "--out", str(tmp_path / "o"), "--tensorboard", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "tokenlens: error: --tensorboard needs the tensorboard package, which is not installed "
        "(pip install tensorboard)"
    )


def test_closed_form_method_refuses_optimiser_controls(tmp_path):
    from tokenlens.training.settings import Controls, check_settings

    record = get_method("rank-one")
    with pytest.raises(TokenlensError, match="solved in closed form: grad_accum do not apply"):
        check_settings(
            record,
            {"subject": "France"},
            steps=None,
            epochs=None,
            lr=None,
            batch_size=1,
            seed=0,
            checkpoint_every=1,
            gradient_checkpointing=False,
            controls=Controls(grad_accum=2),
        )


def test_lora_options_reach_peft_and_dora_trains_and_loads_back(small_checkpoint, small_data, tmp_path):
    options = {"dropout": 0.1, "rslora": True, "dora": True, "layers": [1], "r": 2}
    result = train(
        load(str(small_checkpoint)), "lora", small_data, tmp_path / "o", steps=3, lr=0.01, options=options
    )
    config = json.loads((tmp_path / "o" / "adapter_config.json").read_text())
    assert (config["lora_dropout"], config["use_rslora"], config["use_dora"]) == (0.1, True, True)
    assert manifest(tmp_path / "o")["options"]["dora"] is True and result.losses[-1] < result.losses[0]
    weights = adapter(tmp_path / "o")
    assert any("lora_magnitude_vector" in k for k in weights)
    tuned = load(str(tmp_path / "o")).model
    base = load(str(small_checkpoint)).model
    probe = torch.tensor([[64, 293, 272, 294, 384]])
    with torch.no_grad():
        assert not torch.allclose(tuned(input_ids=probe).logits, base(input_ids=probe).logits)
    from tokenlens.diff import DiffOptions, diff, pair_models, prompt_probes

    report = diff(pair_models(str(tmp_path / "o")), prompt_probes(["a b c"], " d"), DiffOptions(exact=2))
    split = report.probes[0].split
    assert split.exact and split.observed != 0.0, (split.total, split.observed)

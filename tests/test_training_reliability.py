"""The trainer under hostile input: every bad setting is one line and exit code 2 before a model loads;
``--force`` never costs the previous output or the user's own files; a non-finite loss, a full disk, a second
run into the same folder, SIGTERM and Ctrl-C each end cleanly with the last good state kept."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokenlens.errors import TokenlensError
from tokenlens.files import CHECKPOINT, MANIFEST
from tokenlens.models.loading import load
from tokenlens.training.methods import get_method
from tokenlens.training.trainer import Diverged, train

ROOT = Path(__file__).resolve().parents[1]
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, text
    return text


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


@pytest.fixture
def trained(small_checkpoint, small_data, tmp_path) -> Path:
    """A finished LoRA run (2 steps) in ``tmp_path/out``."""
    out = tmp_path / "out"
    train(load(str(small_checkpoint)), "lora", small_data, out, steps=2, batch_size=4)
    return out


# --- option values: declared types, checked by resolve() before any model exists --------------------------


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("lora", {"r": 2.5}, "option r=2.5: must be a positive integer"),
        ("lora", {"r": True}, "option r=True: must be a positive integer"),
        ("lora", {"r": "abc"}, "option r='abc': must be a positive integer"),
        ("lora", {"alpha": "big"}, "option alpha='big': must be a positive integer"),
        ("lora", {"r": 0}, "must be a positive integer"),
        ("lora", {"layers": [-1]}, "must be layer indices"),
        ("lora", {"layers": [0, True]}, "must be layer indices"),
        ("lora", {"target_modules": []}, "must be module names"),
        ("head", {"keep_tied": "maybe"}, "option keep_tied='maybe': must be true or false"),
        ("head", {"keep_tied": 1}, "must be true or false"),
        ("prompt", {"virtual_tokens": 0}, "option virtual_tokens=0: must be a positive integer"),
        ("prefix", {"virtual_tokens": 1.5}, "must be a positive integer"),
        ("attention", {"kind": "both"}, "choose from auto, norm, ia3"),
        ("embeddings", {}, "method embeddings needs options={'token_ids'"),
        ("embeddings", {"token_ids": [3, False]}, "must be token ids"),
        ("adapter", {"size": 2.0}, "must be a positive integer"),
        ("bias", {"targets": []}, "choose from o_proj, down_proj, lm_head"),
    ],
)
def test_option_values_are_checked_by_declared_type(method, options, message):
    with pytest.raises(TokenlensError) as info:
        get_method(method).resolve(options)
    assert message in one_line(info.value)


def test_resolve_gives_the_values_that_train():
    lora = get_method("lora")
    assert lora.resolve({"layers": 1})["layers"] == [1]  # what trains is what the manifest records
    assert lora.resolve({"layers": [2, 0, 2]})["layers"] == [0, 2]
    assert get_method("head").resolve({"keep_tied": True}) == {"keep_tied": True}
    first = lora.resolve({})
    first["target_modules"].append("lm_head")  # a caller's copy, not the registry's default
    assert "lm_head" not in lora.resolve({})["target_modules"]


# --- the command line: one line, exit code 2, before the model loads and before the folder is touched -------


def cli(argv: list[str], monkeypatch, capsys, loads: bool = False) -> tuple[int, str]:
    """Run ``tokenlens`` in-process; unless ``loads``, loading a model fails the test (exit code 3)."""
    from tokenlens.cli import main
    from tokenlens.cli.options import ModelOptions

    if not loads:

        def no_model(self):
            raise AssertionError("the model loaded before the settings were checked")

        monkeypatch.setattr(ModelOptions, "load", no_model)
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr", "nan"], "--lr nan: the learning rate must be a finite number above 0"),
        (["--lr=-1e-3"], "--lr -0.001: the learning rate must be a finite number above 0"),
        (["--lr", "inf"], "--lr inf: the learning rate must be a finite number above 0"),
        (["--seed", str(2**64)], "--seed 18446744073709551616: a seed is an integer from 0 to 2**64 - 1"),
        (["--seed=-1"], "--seed -1: a seed is an integer from 0"),
        (["--option", "r=abc"], "option r='abc': must be a positive integer"),
        (["--option", "alpha=big"], "option alpha='big': must be a positive integer"),
        (["--option", "r=2.5"], "option r=2.5: must be a positive integer"),
        (["--option", "r=true"], "option r=True: must be a positive integer"),
        (["--option", "layers=0,x"], "must be layer indices"),
        (["--epochs", "0"], "--epochs 0: nothing to train"),
        (["--steps", "0"], "--steps 0: nothing to train"),
        (["--method", "head", "--option", "keep_tied=maybe"], "must be true or false"),
        (["--method", "prompt", "--option", "virtual_tokens=0"], "must be a positive integer"),
    ],
)
def test_bad_settings_are_one_line_before_the_model_loads(
    extra, message, tmp_path, small_data, monkeypatch, capsys
):
    out = tmp_path / "out"
    argv = ["train", "--model", "unused", "--method", "lora", "--data", str(small_data), "--out", str(out)]
    code, err = cli(argv + extra, monkeypatch, capsys)
    assert code == 2, err
    assert err.startswith("tokenlens: error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not out.exists()


def test_an_update_that_overflows_is_one_line_and_writes_nothing(
    small_checkpoint, small_data, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    argv = ["train", "--model", str(small_checkpoint), "--method", "lora", "--data", str(small_data)]
    code, err = cli([*argv, "--out", str(out), "--lr", "1e39"], monkeypatch, capsys, loads=True)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "training stopped at step 1 of" in err and "nothing was written" in err
    assert not out.exists()  # the folder the run created is removed again


# --- --force: validate first, replace only tokenlens's files, and only once the new output is complete ------


def test_force_with_a_bad_option_leaves_the_previous_output(trained, small_checkpoint, small_data):
    (trained / "NOTES.txt").write_text("mine")
    before = snapshot(trained)
    bad = {"layers": [0, 99]}  # needs the model to be found wrong
    with pytest.raises(TokenlensError, match=r"layers=\[0, 99\]: the model has layers 0..2"):
        train(load(str(small_checkpoint)), "lora", small_data, trained, steps=2, force=True, options=bad)
    assert snapshot(trained) == before
    assert load(str(trained)).source == "peft"


def test_force_replaces_only_tokenlens_files(trained, small_checkpoint, small_data, tmp_path):
    (trained / "NOTES.txt").write_text("mine")
    (trained / "eval").mkdir()
    (trained / "eval" / "scores.json").write_text("{}")
    outside = tmp_path / "outside.txt"
    outside.write_text("not the trainer's")
    manifest = json.loads((trained / MANIFEST).read_text())
    assert "adapter_model.safetensors" in manifest["files"] and "loss.png" in manifest["files"]
    manifest["files"] += ["../outside.txt", str(outside)]  # a tampered list cannot reach outside
    (trained / MANIFEST).write_text(json.dumps(manifest))

    train(load(str(small_checkpoint)), "head", small_data, trained, steps=2, force=True)
    assert (trained / "NOTES.txt").read_text() == "mine" and (trained / "eval" / "scores.json").is_file()
    assert outside.read_text() == "not the trainer's"
    assert not (trained / "adapter_model.safetensors").exists() and not (trained / "README.md").exists()
    new = json.loads((trained / MANIFEST).read_text())
    assert new["method"] == "head"
    mine = {"NOTES.txt", "eval/scores.json", MANIFEST}
    assert sorted(set(snapshot(trained)) - mine) == new["files"]
    assert not [p for p in trained.iterdir() if p.name.startswith(".")]  # no staging or temporary files
    assert load(str(trained)).source != "peft"


def test_force_over_a_manifest_without_the_file_list(small_checkpoint, small_data, tmp_path):
    out = tmp_path / "out"
    train(load(str(small_checkpoint)), "head", small_data, out, steps=1)
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["files"]  # as an older tokenlens wrote it
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / "NOTES.txt").write_text("mine")
    train(load(str(small_checkpoint)), "lora", small_data, out, steps=1, force=True)
    names = set(snapshot(out))
    assert "NOTES.txt" in names and "adapter_model.safetensors" in names
    assert not names & {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"}


def test_an_interrupted_force_run_leaves_the_previous_output(trained, small_checkpoint, small_data):
    before = snapshot(trained)

    def stop(step, total, loss):
        raise KeyboardInterrupt

    kwargs = dict(steps=4, batch_size=2, force=True, on_step=stop)
    with pytest.raises(KeyboardInterrupt):
        train(load(str(small_checkpoint)), "lora", small_data, trained, **kwargs)
    assert (trained / CHECKPOINT).is_dir()  # the new run can resume
    assert {k: v for k, v in snapshot(trained).items() if not k.startswith(CHECKPOINT)} == before
    assert load(str(trained)).source == "peft"


# --- non-finite training --------------------------------------------------------------------------------


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    small_checkpoint, small_data, tmp_path
):
    kwargs = dict(steps=4, batch_size=2, checkpoint_every=2, seed=3)
    full = train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "a", **kwargs)
    loaded = load(str(small_checkpoint))

    def poison(step, total, loss):
        if step == 2:  # a frozen base weight turns NaN: step 3's loss is NaN
            with torch.no_grad():
                loaded.model.model.norm.weight[0] = float("nan")

    out = tmp_path / "b"
    with pytest.raises(Diverged) as info:
        train(loaded, "lora", small_data, out, on_step=poison, **kwargs)
    message = one_line(info.value)
    assert "step 3 of 4: the loss is nan" in message and "the checkpoint of step 2 is kept" in message
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT]  # no output, no NaN weights
    state = torch.load(out / CHECKPOINT / "state.pt", weights_only=True)
    assert state["step"] == 2 and all(torch.isfinite(t).all() for t in state["trainable"].values())
    resumed = train(load(str(small_checkpoint)), "lora", small_data, out, resume=True, **kwargs)
    assert resumed.losses == full.losses  # the kept checkpoint is the good one: bitwise the same run
    a, b = adapter(tmp_path / "a"), adapter(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- a full disk ----------------------------------------------------------------------------------------


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    small_checkpoint, small_data, tmp_path, monkeypatch
):
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"half a checkpoint")
            raise ENOSPC
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "out"
    kwargs = dict(steps=4, batch_size=2, checkpoint_every=1, seed=1)
    with pytest.raises(TokenlensError) as info:
        train(load(str(small_checkpoint)), "lora", small_data, out, **kwargs)
    message = one_line(info.value)
    assert f"could not write {out / CHECKPOINT / 'state.pt'}: No space left on device" in message
    assert "the previous checkpoint there is intact" in message
    assert torch.load(out / CHECKPOINT / "state.pt", weights_only=True)["step"] == 1
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT]  # no temporary file left
    monkeypatch.setattr(torch, "save", real_save)
    assert len(train(load(str(small_checkpoint)), "lora", small_data, out, resume=True, **kwargs).losses) == 4


def test_a_full_disk_while_writing_the_adapter_keeps_the_previous_output(
    trained, small_checkpoint, small_data, monkeypatch
):
    import peft.peft_model

    before = snapshot(trained)

    def full(*args, **kwargs):
        raise ENOSPC

    monkeypatch.setattr(peft.peft_model, "safe_save_file", full)
    with pytest.raises(TokenlensError) as info:
        train(load(str(small_checkpoint)), "lora", small_data, trained, steps=2, seed=1, force=True)
    message = one_line(info.value)
    assert f"could not write the trained output into {trained}: No space left on device" in message
    assert "the previous output there is intact" in message
    assert snapshot(trained) == before
    assert load(str(trained)).source == "peft"


# --- one run per folder -----------------------------------------------------------------------------------


def test_a_folder_in_use_by_another_run_is_refused(trained, small_checkpoint, small_data):
    before = snapshot(trained)
    held = os.open(trained, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running training holds
        with pytest.raises(TokenlensError) as info:
            train(load(str(small_checkpoint)), "lora", small_data, trained, steps=1, force=True)
        assert f"{trained} is in use by another tokenlens training run" in one_line(info.value)
        assert snapshot(trained) == before
    finally:
        os.close(held)
    train(load(str(small_checkpoint)), "lora", small_data, trained, steps=1, force=True)  # released: fine


# --- signals and the terminal -----------------------------------------------------------------------------


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["term", "int"])
def test_a_signal_mid_training_saves_a_checkpoint_restores_the_cursor_and_resumes(
    small_checkpoint, small_data, tmp_path, signum, code
):
    settings = ["--steps", "4", "--batch-size", "2", "--checkpoint-every", "10", "--seed", "7"]
    kwargs = dict(steps=4, batch_size=2, checkpoint_every=10, seed=7)
    train(load(str(small_checkpoint)), "lora", small_data, tmp_path / "a", **kwargs)
    out = tmp_path / "b"
    argv = ["train", "--model", str(small_checkpoint), "--method", "lora", "--data", str(small_data)]
    script = textwrap.dedent(f"""
        import os, sys
        import tokenlens.training.step as stepping
        from tokenlens.cli import main
        real_step, calls = stepping.step, []
        def step_then_signal(*args):
            loss = real_step(*args)
            calls.append(loss)
            if len(calls) == 3:
                os.kill(os.getpid(), {int(signum)})  # mid-step: after the update, before it is recorded
            return loss
        stepping.step = step_then_signal
        sys.exit(main({[*argv, "--out", str(out), *settings]!r}))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TTY_COMPATIBLE": "1"}  # rich draws as on a terminal
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == code, proc.stderr[-2000:]
    hide, show = "\x1b[?25l", "\x1b[?25h"
    assert hide in proc.stderr and show in proc.stderr[proc.stderr.rindex(hide) :]  # the cursor is back
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", proc.stderr)  # without the progress bar's drawing
    last = text.strip().splitlines()[-1]
    assert last.startswith("tokenlens: ") and "after step 3 of 4; checkpoint saved" in last, last
    assert "Traceback" not in proc.stderr
    resumed = train(load(str(small_checkpoint)), "lora", small_data, out, resume=True, **kwargs)
    assert len(resumed.losses) == 4
    a, b = adapter(tmp_path / "a"), adapter(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_list_methods_prints_no_library_warnings(small_checkpoint):
    proc = subprocess.run(
        [sys.executable, "-m", "tokenlens.cli", "train", "--model", str(small_checkpoint), "--list-methods"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "  lora " in proc.stdout and "--option r=…  LoRA rank (default 8)" in proc.stdout
    noisy = [line for line in (proc.stdout + proc.stderr).splitlines() if "warn" in line.lower()]
    assert not noisy, noisy
